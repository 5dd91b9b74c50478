//! From an HTTP request (method, path, body) to a typed [`Action`].
//!
//! This mirrors Firecracker's `src/firecracker/src/api_server/parsed_request.rs`
//! and `request/*.rs`: the path is split on `/` after trimming the leading
//! slashes, the first token picks the resource, a body is "absent" when the
//! request has none (Content-Length 0), and every failure here is a 400 with
//! Firecracker's own `fault_message`. Nothing in this module knows about the
//! VM state: whether an action is allowed now is [`crate::vmm`]'s job.

use firehost_api::{
    ActionType, Balloon, BalloonStartCmd, BalloonStatsUpdate, BalloonUpdate, BootSource, CpuConfig,
    Drive, EntropyDevice, Logger, MachineConfiguration, MemoryHotplugConfig,
    MemoryHotplugSizeUpdate, Metrics, MmdsConfig, NetworkInterface, PartialDrive,
    PartialNetworkInterface, PartialPmem, Pmem, SerialDevice, SnapshotCreateParams,
    SnapshotLoadParams, Vsock,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The HTTP methods Firecracker's server accepts (micro-http knows no others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
}

impl Method {
    /// Parses an HTTP method; `None` for anything Firecracker's server refuses.
    pub fn from_http(method: &str) -> Option<Self> {
        match method {
            "GET" => Some(Self::Get),
            "PUT" => Some(Self::Put),
            "PATCH" => Some(Self::Patch),
            "DELETE" => Some(Self::Delete),
            _ => None,
        }
    }

    /// The method as it appears on the request line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }
}

/// Body of `PATCH /machine-config`: every field optional (Firecracker's
/// `MachineConfigUpdate`). `firehost-api` has no all-optional variant of
/// [`MachineConfiguration`], so the fake keeps this one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// New vCPU count.
    #[serde(default)]
    pub vcpu_count: Option<u8>,
    /// New memory size in MiB.
    #[serde(default)]
    pub mem_size_mib: Option<u64>,
    /// New SMT setting.
    #[serde(default)]
    pub smt: Option<bool>,
    /// New static CPU template.
    #[serde(default)]
    pub cpu_template: Option<firehost_api::CpuTemplate>,
    /// New dirty page tracking setting.
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    /// New huge pages setting.
    #[serde(default)]
    pub huge_pages: Option<firehost_api::HugePages>,
}

impl MachineConfigUpdate {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

impl From<MachineConfiguration> for MachineConfigUpdate {
    /// A PUT replaces the whole configuration: absent optional fields take
    /// Firecracker's defaults rather than keeping the previous values.
    fn from(c: MachineConfiguration) -> Self {
        Self {
            vcpu_count: Some(c.vcpu_count),
            mem_size_mib: Some(c.mem_size_mib),
            smt: Some(c.smt.unwrap_or(false)),
            cpu_template: c.cpu_template,
            track_dirty_pages: Some(c.track_dirty_pages.unwrap_or(false)),
            huge_pages: Some(c.huge_pages.unwrap_or_default()),
        }
    }
}

/// Which kind of device `DELETE` unplugs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// `/drives/{id}`.
    Block,
    /// `/pmem/{id}`.
    Pmem,
    /// `/network-interfaces/{id}`.
    Net,
}

/// One API request, parsed. One variant per operation of the spec.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `GET /`.
    GetInstanceInfo,
    /// `GET /version`.
    GetVersion,
    /// `GET /vm/config`.
    GetFullVmConfig,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `GET /mmds`.
    GetMmds,
    /// `GET /balloon`.
    GetBalloon,
    /// `GET /balloon/statistics`.
    GetBalloonStats,
    /// `GET /balloon/hinting/status`.
    GetBalloonHintingStatus,
    /// `GET /hotplug/memory`.
    GetMemoryHotplug,
    /// `PUT /actions` with `InstanceStart`.
    InstanceStart,
    /// `PUT /actions` with `FlushMetrics`.
    FlushMetrics,
    /// `PUT /actions` with `SendCtrlAltDel`.
    SendCtrlAltDel,
    /// `PUT /balloon`.
    PutBalloon(Balloon),
    /// `PUT /boot-source`.
    PutBootSource(BootSource),
    /// `PUT /cpu-config`.
    PutCpuConfig(Box<CpuConfig>),
    /// `PUT /drives/{id}`.
    PutDrive(Drive),
    /// `PUT /pmem/{id}`.
    PutPmem(Pmem),
    /// `PUT /logger`.
    PutLogger(Logger),
    /// `PUT /serial`.
    PutSerial(SerialDevice),
    /// `PUT /machine-config` (already turned into a full update).
    PutMachineConfig(MachineConfigUpdate),
    /// `PATCH /machine-config`.
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /metrics`.
    PutMetrics(Metrics),
    /// `PUT /mmds`.
    PutMmds(serde_json::Value),
    /// `PATCH /mmds`.
    PatchMmds(serde_json::Value),
    /// `PUT /mmds/config`.
    PutMmdsConfig(MmdsConfig),
    /// `PUT /network-interfaces/{id}`.
    PutNetworkInterface(NetworkInterface),
    /// `PUT /snapshot/create`.
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/load`.
    LoadSnapshot(SnapshotLoadParams),
    /// `PUT /vsock`.
    PutVsock(Vsock),
    /// `PUT /entropy`.
    PutEntropy(EntropyDevice),
    /// `PUT /hotplug/memory`.
    PutMemoryHotplug(MemoryHotplugConfig),
    /// `PATCH /hotplug/memory`.
    PatchMemoryHotplug(MemoryHotplugSizeUpdate),
    /// `PATCH /balloon`.
    PatchBalloon(BalloonUpdate),
    /// `PATCH /balloon/statistics`.
    PatchBalloonStatistics(BalloonStatsUpdate),
    /// `PATCH /balloon/hinting/start`.
    StartBalloonHinting(BalloonStartCmd),
    /// `PATCH /balloon/hinting/stop`.
    StopBalloonHinting,
    /// `PATCH /drives/{id}`.
    PatchDrive(PartialDrive),
    /// `PATCH /network-interfaces/{id}`.
    PatchNetworkInterface(PartialNetworkInterface),
    /// `PATCH /pmem/{id}`.
    PatchPmem(PartialPmem),
    /// `PATCH /vm` with `Paused`.
    Pause,
    /// `PATCH /vm` with `Resumed`.
    Resume,
    /// `DELETE /drives|pmem|network-interfaces/{id}`.
    HotUnplug(DeviceKind, String),
}

/// A request refused before it reaches the VMM; each message is Firecracker's.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The resource id in the path is missing.
    #[error("The ID cannot be empty.")]
    EmptyId,
    /// A message of Firecracker's with no variant of its own.
    #[error("{0}")]
    Generic(String),
    /// The resource id has characters other than alphanumerics and `_`.
    #[error("API Resource IDs can only contain alphanumeric characters and underscores.")]
    InvalidId,
    /// No such method + path.
    #[error("Invalid request method and/or path: {} {}.", .1.as_str(), .0)]
    InvalidPathMethod(String, Method),
    /// The JSON body does not fit the endpoint's model.
    #[error("An error occurred when deserializing the json body of a request: {0}.")]
    SerdeJson(#[from] serde_json::Error),
}

fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, RequestError> {
    Ok(serde_json::from_slice(body)?)
}

/// Parses `body` as `T`, with the errors Firecracker's own struct `S` gives.
///
/// serde names fields in declaration order ("missing field", "expected one of
/// ..."), and Firecracker's structs declare them in another order than
/// `firehost-api`'s. `S` (a [`shape`]) checks the field names in Firecracker's
/// order; `T` checks the values. Of two errors, the one earlier in the body wins,
/// as it would in Firecracker's single pass.
fn json_as<S: DeserializeOwned, T: DeserializeOwned>(body: &[u8]) -> Result<T, RequestError> {
    let shape_error = serde_json::from_slice::<S>(body).err();
    match (shape_error, serde_json::from_slice::<T>(body)) {
        (None, value) => Ok(value?),
        (Some(shape), Ok(_)) => Err(shape.into()),
        (Some(shape), Err(value)) => {
            if (value.line(), value.column()) < (shape.line(), shape.column()) {
                Err(value.into())
            } else {
                Err(shape.into())
            }
        }
    }
}

/// The field names (and which are required) of Firecracker v1.16.1's request
/// structs where they differ from `firehost-api`'s, in Firecracker's order.
/// Values are not checked here ([`IgnoredAny`]); see [`json_as`].
#[allow(dead_code)] // the fields exist for their names
mod shape {
    use serde::Deserialize;
    use serde::de::IgnoredAny;

    type Opt = Option<IgnoredAny>;

    /// `MachineConfig` (`PUT /machine-config`).
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct MachineConfig {
        vcpu_count: IgnoredAny,
        mem_size_mib: IgnoredAny,
        smt: Opt,
        cpu_template: Opt,
        track_dirty_pages: Opt,
        huge_pages: Opt,
    }

    /// `BootSourceConfig`.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct BootSource {
        kernel_image_path: IgnoredAny,
        initrd_path: Opt,
        boot_args: Opt,
    }

    /// `NetworkInterfaceConfig`.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct NetworkInterface {
        iface_id: IgnoredAny,
        host_dev_name: IgnoredAny,
        guest_mac: Opt,
        mtu: Opt,
        rx_rate_limiter: Opt,
        tx_rate_limiter: Opt,
    }

    /// `LoggerConfig`.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Logger {
        log_path: Opt,
        level: Opt,
        show_level: Opt,
        show_log_origin: Opt,
        module: Opt,
    }

    /// `MetricsConfig`: Firecracker ignores unknown fields here.
    #[derive(Deserialize)]
    pub struct Metrics {
        pub metrics_path: std::path::PathBuf,
    }

    /// `VsockDeviceConfig`.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Vsock {
        vsock_id: Opt,
        guest_cid: IgnoredAny,
        uds_path: IgnoredAny,
    }

    /// `CreateSnapshotParams`.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SnapshotCreate {
        snapshot_type: Opt,
        snapshot_path: IgnoredAny,
        mem_file_path: IgnoredAny,
    }

    /// `LoadSnapshotConfig`.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SnapshotLoad {
        snapshot_path: IgnoredAny,
        mem_file_path: Opt,
        mem_backend: Opt,
        enable_diff_snapshots: Opt,
        track_dirty_pages: Opt,
        resume_vm: Opt,
        network_overrides: Opt,
        vsock_override: Opt,
        clock_realtime: Opt,
    }

    /// `MemoryHotplugConfig`.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct MemoryHotplug {
        total_size_mib: IgnoredAny,
        block_size_mib: Opt,
        slot_size_mib: Opt,
    }

    /// `CustomCpuTemplate` on `x86_64`.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CpuConfig {
        kvm_capabilities: Opt,
        cpuid_modifiers: Opt,
        msr_modifiers: Opt,
    }
}

fn checked_id(id: Option<&str>) -> Result<&str, RequestError> {
    let id = id.ok_or(RequestError::EmptyId)?;
    if id.is_empty() {
        return Err(RequestError::EmptyId);
    }
    if !id.chars().all(|c| c == '_' || c.is_alphanumeric()) {
        return Err(RequestError::InvalidId);
    }
    Ok(id)
}

fn id_mismatch() -> RequestError {
    RequestError::Generic("The id from the path does not match the id from the body!".into())
}

fn iface_mismatch(path: &str, body: &str) -> RequestError {
    RequestError::Generic(format!(
        "The id from the path [{path}] does not match the id from the body [{body}]!"
    ))
}

fn empty(method: Method) -> RequestError {
    RequestError::Generic(
        match method {
            Method::Get => "GET request cannot have a body.",
            Method::Put => "Empty PUT request.",
            Method::Patch => "Empty PATCH request.",
            Method::Delete => "Empty Delete request.",
        }
        .into(),
    )
}

/// Parses one request. `body` is `None` when the request has no body.
///
/// # Examples
///
/// ```
/// use fake_firecracker::action::{parse, Action, Method};
///
/// let a = parse(Method::Put, "/actions", Some(br#"{"action_type":"InstanceStart"}"#)).unwrap();
/// assert_eq!(a, Action::InstanceStart);
///
/// let err = parse(Method::Get, "/nope", None).unwrap_err();
/// assert_eq!(err.to_string(), "Invalid request method and/or path: GET nope.");
/// ```
pub fn parse(method: Method, path: &str, body: Option<&[u8]>) -> Result<Action, RequestError> {
    let mut tokens = path.trim_start_matches('/').split_terminator('/');
    let resource = tokens.next().unwrap_or("");
    let next = tokens.next();
    use Method::*;
    match (method, resource, body) {
        (Get, "", None) => Ok(Action::GetInstanceInfo),
        (Get, "balloon", None) => match next {
            None => Ok(Action::GetBalloon),
            Some("statistics") => Ok(Action::GetBalloonStats),
            Some("hinting") => match tokens.next() {
                Some("status") => Ok(Action::GetBalloonHintingStatus),
                Some(other) => Err(RequestError::Generic(format!(
                    "Unrecognized GET request path `/hinting/{other}`."
                ))),
                None => Err(RequestError::Generic(
                    "Unrecognized GET request path `/hinting/`.".into(),
                )),
            },
            Some(other) => Err(RequestError::Generic(format!(
                "Unrecognized GET request path `{other}`."
            ))),
        },
        (Get, "version", None) => Ok(Action::GetVersion),
        (Get, "vm", None) if next == Some("config") => Ok(Action::GetFullVmConfig),
        (Get, "machine-config", None) => Ok(Action::GetMachineConfig),
        (Get, "mmds", None) => Ok(Action::GetMmds),
        (Get, "hotplug", None) if next == Some("memory") => Ok(Action::GetMemoryHotplug),
        (Get, _, Some(_)) => Err(empty(Get)),
        (Put, "actions", Some(b)) => {
            let info: firehost_api::InstanceActionInfo = json(b)?;
            Ok(match info.action_type {
                ActionType::FlushMetrics => Action::FlushMetrics,
                ActionType::InstanceStart => Action::InstanceStart,
                ActionType::SendCtrlAltDel => Action::SendCtrlAltDel,
            })
        }
        (Put, "balloon", Some(b)) => Ok(Action::PutBalloon(json(b)?)),
        (Put, "boot-source", Some(b)) => {
            Ok(Action::PutBootSource(json_as::<shape::BootSource, _>(b)?))
        }
        (Put, "cpu-config", Some(b)) => Ok(Action::PutCpuConfig(Box::new(json_as::<
            shape::CpuConfig,
            _,
        >(b)?))),
        (Put, "drives", Some(b)) => {
            let id = checked_id(next)?;
            let drive: Drive = json(b)?;
            if drive.drive_id != id {
                return Err(id_mismatch());
            }
            Ok(Action::PutDrive(drive))
        }
        (Put, "pmem", Some(b)) => {
            let id = checked_id(next)?;
            let pmem: Pmem = json(b)?;
            if pmem.id != id {
                return Err(id_mismatch());
            }
            Ok(Action::PutPmem(pmem))
        }
        (Put, "logger", Some(b)) => Ok(Action::PutLogger(json_as::<shape::Logger, _>(b)?)),
        (Put, "serial", Some(b)) => Ok(Action::PutSerial(json(b)?)),
        (Put, "machine-config", Some(b)) => {
            let config: MachineConfiguration = json_as::<shape::MachineConfig, _>(b)?;
            Ok(Action::PutMachineConfig(config.into()))
        }
        (Put, "metrics", Some(b)) => {
            let m: shape::Metrics = json(b)?;
            Ok(Action::PutMetrics(Metrics {
                metrics_path: m.metrics_path,
            }))
        }
        (Put, "mmds", Some(b)) => match next {
            None => Ok(Action::PutMmds(json(b)?)),
            Some("config") => Ok(Action::PutMmdsConfig(json(b)?)),
            Some(other) => Err(RequestError::Generic(format!(
                "Unrecognized PUT request path `{other}`."
            ))),
        },
        (Put, "network-interfaces", Some(b)) => {
            let id = checked_id(next)?;
            let iface: NetworkInterface = json_as::<shape::NetworkInterface, _>(b)?;
            if iface.iface_id != id {
                return Err(iface_mismatch(id, &iface.iface_id));
            }
            Ok(Action::PutNetworkInterface(iface))
        }
        (Put, "snapshot", Some(b)) => match next {
            Some("create") => Ok(Action::CreateSnapshot(json_as::<shape::SnapshotCreate, _>(
                b,
            )?)),
            Some("load") => {
                let params: SnapshotLoadParams = json_as::<shape::SnapshotLoad, _>(b)?;
                match (&params.mem_backend, &params.mem_file_path) {
                    (Some(_), Some(_)) => Err(RequestError::SerdeJson(serde::de::Error::custom(
                        "too many fields: either `mem_backend` or `mem_file_path` exclusively is required",
                    ))),
                    (None, None) => Err(RequestError::SerdeJson(serde::de::Error::custom(
                        "missing field: either `mem_backend` or `mem_file_path` is required",
                    ))),
                    _ => Ok(Action::LoadSnapshot(params)),
                }
            }
            Some(other) => Err(RequestError::InvalidPathMethod(
                format!("/snapshot/{other}"),
                Put,
            )),
            None => Err(RequestError::Generic(
                "Missing snapshot operation type.".into(),
            )),
        },
        (Put, "vsock", Some(b)) => Ok(Action::PutVsock(json_as::<shape::Vsock, _>(b)?)),
        (Put, "entropy", Some(b)) => Ok(Action::PutEntropy(json(b)?)),
        (Put, "hotplug", Some(b)) if next == Some("memory") => Ok(Action::PutMemoryHotplug(
            json_as::<shape::MemoryHotplug, _>(b)?,
        )),
        (Put, _, None) => Err(empty(Put)),
        (Patch, "balloon", body) => match (next, body) {
            (Some("statistics"), Some(b)) => Ok(Action::PatchBalloonStatistics(json(b)?)),
            (Some("hinting"), body) => match tokens.next() {
                Some("start") => Ok(Action::StartBalloonHinting(match body {
                    None => BalloonStartCmd::default(),
                    Some(b) => json(b)?,
                })),
                Some("stop") => Ok(Action::StopBalloonHinting),
                Some(other) => Err(RequestError::Generic(format!(
                    "Unrecognized PATCH request path `/hinting/{other}`."
                ))),
                None => Err(RequestError::Generic(
                    "Unrecognized PATCH request path `/hinting/`.".into(),
                )),
            },
            (_, Some(b)) => Ok(Action::PatchBalloon(json(b)?)),
            (_, None) => Err(empty(Patch)),
        },
        (Patch, "drives", Some(b)) => {
            let id = checked_id(next)?;
            let update: PartialDrive = json(b)?;
            if update.drive_id != id {
                return Err(id_mismatch());
            }
            Ok(Action::PatchDrive(update))
        }
        (Patch, "machine-config", Some(b)) => {
            let update: MachineConfigUpdate = json(b)?;
            if update.is_empty() {
                return Err(empty(Patch));
            }
            Ok(Action::PatchMachineConfig(update))
        }
        (Patch, "mmds", Some(b)) => Ok(Action::PatchMmds(json(b)?)),
        (Patch, "network-interfaces", Some(b)) => {
            let id = checked_id(next)?;
            let update: PartialNetworkInterface = json(b)?;
            if update.iface_id != id {
                return Err(iface_mismatch(id, &update.iface_id));
            }
            Ok(Action::PatchNetworkInterface(update))
        }
        (Patch, "pmem", Some(b)) => {
            let id = checked_id(next)?;
            let update: PartialPmem = json(b)?;
            if update.id != id {
                return Err(id_mismatch());
            }
            Ok(Action::PatchPmem(update))
        }
        (Patch, "vm", Some(b)) => {
            let vm: firehost_api::Vm = json(b)?;
            Ok(match vm.state {
                firehost_api::VmState::Paused => Action::Pause,
                firehost_api::VmState::Resumed => Action::Resume,
            })
        }
        (Patch, "hotplug", Some(b)) if next == Some("memory") => {
            Ok(Action::PatchMemoryHotplug(json(b)?))
        }
        (Patch, _, None) => Err(empty(Patch)),
        (Delete, "drives", None) => Ok(Action::HotUnplug(
            DeviceKind::Block,
            checked_id(next)?.to_owned(),
        )),
        (Delete, "pmem", None) => Ok(Action::HotUnplug(
            DeviceKind::Pmem,
            checked_id(next)?.to_owned(),
        )),
        (Delete, "network-interfaces", None) => Ok(Action::HotUnplug(
            DeviceKind::Net,
            checked_id(next)?.to_owned(),
        )),
        (Delete, _, Some(_)) => Err(empty(Delete)),
        (method, unknown, _) => Err(RequestError::InvalidPathMethod(unknown.to_owned(), method)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_errors_carry_firecrackers_messages() {
        let cases: &[(Method, &str, Option<&[u8]>, &str)] = &[
            (
                Method::Get,
                "/nope",
                None,
                "Invalid request method and/or path: GET nope.",
            ),
            (
                Method::Get,
                "/",
                Some(b"{}"),
                "GET request cannot have a body.",
            ),
            (Method::Put, "/actions", None, "Empty PUT request."),
            (Method::Patch, "/vm", None, "Empty PATCH request."),
            (
                Method::Put,
                "/drives",
                Some(b"{}"),
                "The ID cannot be empty.",
            ),
            (
                Method::Put,
                "/drives/a-b",
                Some(b"{}"),
                "API Resource IDs can only contain alphanumeric characters and underscores.",
            ),
            (
                Method::Put,
                "/drives/rootfs",
                Some(br#"{"drive_id":"other","is_root_device":true}"#),
                "The id from the path does not match the id from the body!",
            ),
            (
                Method::Put,
                "/snapshot",
                Some(b"{}"),
                "Missing snapshot operation type.",
            ),
            (
                Method::Put,
                "/snapshot/bogus",
                Some(b"{}"),
                "Invalid request method and/or path: PUT /snapshot/bogus.",
            ),
            (
                Method::Patch,
                "/machine-config",
                Some(b"{}"),
                "Empty PATCH request.",
            ),
        ];
        for (method, path, body, message) in cases {
            let err = parse(*method, path, *body).unwrap_err();
            assert_eq!(err.to_string(), *message, "{method:?} {path}");
        }
    }

    #[test]
    fn unknown_fields_are_deserialization_errors() {
        let err = parse(
            Method::Put,
            "/actions",
            Some(br#"{"action_type":"InstanceStart","x":1}"#),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "An error occurred when deserializing the json body of a request: unknown field `x`"
            ),
            "{err}"
        );
    }

    #[test]
    fn snapshot_load_needs_exactly_one_memory_source() {
        let err = parse(
            Method::Put,
            "/snapshot/load",
            Some(br#"{"snapshot_path":"/s"}"#),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "An error occurred when deserializing the json body of a request: missing field: either `mem_backend` or `mem_file_path` is required."
        );
    }
}
