//! The record file's own types: the JSON layout on disk, kept apart from
//! the library's API types so that either can change without the other.
//!
//! Every type here is private to the record. Values with a syntax of
//! their own (ids, names, MACs, interface names) are stored as strings
//! and checked again when read, so a hand-edited file cannot smuggle in a
//! value the API types would refuse. The API types are reached only
//! through the two conversions, [`RecordFile::from_record`] and
//! [`RecordFile::into_record`].
//!
//! # Formats
//!
//! - **1** (firehost 0.1): the VMM's `pid` and `start_time` as two
//!   top-level fields.
//! - **2**: the two together as `vmm: {pid, start_time}`, since one means
//!   nothing without the other (a pid alone may name a later process).
//!
//! An older file is brought up to date as JSON ([`upgrade`]) before it is
//! parsed, so only the current layout has types. A new format adds a step
//! there and a fixture under `testdata/`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CopyMethod, HelperProcess, OwnDrive, PendingSnapshot, VmRecord, VmVsock};
use crate::VmId;
use crate::id::SnapshotName;
use crate::jail::{JailSpec, VmJail};
use crate::mmds::{MmdsSpec, MmdsVersion};
use crate::net::host::PeerGroup;
use crate::net::host::{GuestAddress, NetSpec, VmNet};
use crate::net::ipam::MacAddr;
use crate::net::netns::VmNetns;
use crate::net::{IfName, firewall};
use crate::spec::{
    BalloonSpec, DriveCache, DriveIo, DriveSpec, EntropySpec, IoEngine, LogSpec, MemoryHotplugSpec,
    NicSpec, PmemSpec, ResolvedCpuTemplate, ResolvedSpec,
};
use crate::state::{ExitReason, VmState};
use crate::vmm::ConsoleMode;
use crate::vocab::{Bucket, RateLimit};
use crate::vocab::{EgressPolicy, EgressRule, EgressTarget};
use crate::vsock::VsockSpec;

/// The format this build writes.
pub const CURRENT: u32 = 2;

/// Brings `file`, a record of format `format`, to the current layout.
/// Formats newer than [`CURRENT`] are the caller's to refuse.
pub fn upgrade(file: &mut serde_json::Map<String, Value>, format: u32) {
    if format < 2 {
        let pid = file.remove("pid").filter(|v| !v.is_null());
        let start_time = file.remove("start_time").filter(|v| !v.is_null());
        let vmm = match (pid, start_time) {
            (Some(pid), Some(start_time)) => serde_json::json!({
                "pid": pid,
                "start_time": start_time,
            }),
            // One without the other names no process for certain.
            _ => Value::Null,
        };
        file.insert("vmm".into(), vmm);
    }
    file.insert("format".into(), CURRENT.into());
}

/// A record file in the current format.
#[derive(Debug, Serialize, Deserialize)]
pub struct RecordFile {
    format: u32,
    id: String,
    /// The VM's name, when a rename made it differ from `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// The warm pool of a VM made for one and not claimed yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pool: Option<String>,
    committed: bool,
    spec: SpecFile,
    #[serde(flatten)]
    state: StateFile,
    #[serde(default)]
    vmm: Option<ProcessFile>,
    api_socket: PathBuf,
    console: ConsoleFile,
    created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restored_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    page_server_attached: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    page_server_helper: Option<ProcessFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    net: Option<NetFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vsock: Option<VsockFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jail: Option<JailFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending_snapshot: Option<PendingSnapshotFile>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    stop_requested: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    own_drives: Vec<OwnDriveFile>,
}

#[derive(Debug, Serialize, Deserialize)]
struct OwnDriveFile {
    drive: String,
    path: PathBuf,
    copy: CopyFile,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CopyFile {
    Reflink,
    Extents,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum StateFile {
    Created,
    Running,
    Paused,
    Stopped {
        exit: ExitFile,
    },
    Failed {
        exit: ExitFile,
        console_tail: Vec<String>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ExitFile {
    Code(i32),
    Signal(i32),
    Unknown,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ProcessFile {
    pub pid: i32,
    pub start_time: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ConsoleFile {
    Ring,
    RingAndFile(PathBuf),
    File(PathBuf),
}

#[derive(Debug, Serialize, Deserialize)]
struct SpecFile {
    kernel: PathBuf,
    #[serde(default)]
    initrd: Option<PathBuf>,
    #[serde(default)]
    rootfs: Option<PathBuf>,
    rootfs_read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rootfs_io: Option<DriveIoFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rootfs_partuuid: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    rootfs_shared: bool,
    vcpus: u8,
    mem_mib: u32,
    smt: bool,
    boot_args: String,
    #[serde(default)]
    extra_drives: Vec<DriveFile>,
    track_dirty_pages: bool,
    graceful_shutdown: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    net: Option<NetSpecFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    extra_nics: Vec<NicFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entropy: Option<EntropyFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    balloon: Option<BalloonFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cpu_template: Option<CpuTemplateFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    log: Option<LogFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pmem: Vec<PmemFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    serial_limit: Option<BucketFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    memory_hotplug: Option<HotplugFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vsock: Option<VsockSpecFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mmds: Option<MmdsFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jail: Option<JailSpecFile>,
}

#[derive(Debug, Serialize, Deserialize)]
struct DriveFile {
    id: String,
    path: PathBuf,
    #[serde(default)]
    read_only: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    shared: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    io: Option<DriveIoFile>,
}

#[derive(Debug, Serialize, Deserialize)]
struct DriveIoFile {
    #[serde(default, skip_serializing_if = "is_default")]
    cache: CacheFile,
    #[serde(default, skip_serializing_if = "is_default")]
    engine: EngineFile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<LimitFile>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CacheFile {
    #[default]
    Unsafe,
    Writeback,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum EngineFile {
    #[default]
    Sync,
    Async,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

#[derive(Debug, Serialize, Deserialize)]
struct LimitFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bandwidth: Option<BucketFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ops: Option<BucketFile>,
}

#[derive(Debug, Serialize, Deserialize)]
struct BucketFile {
    size: u64,
    refill_time_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    one_time_burst: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PmemFile {
    id: String,
    path: PathBuf,
    read_only: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    root: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<LimitFile>,
}

#[derive(Debug, Serialize, Deserialize)]
struct HotplugFile {
    total_mib: u64,
    slot_mib: u64,
    block_mib: u64,
    #[serde(default)]
    requested_mib: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct LogFile {
    level: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    module: Option<String>,
    #[serde(default)]
    show_level: bool,
    #[serde(default)]
    show_origin: bool,
}

impl LogFile {
    fn of(log: &LogSpec) -> LogFile {
        LogFile {
            level: log.level.as_str().to_owned(),
            module: log.module.clone(),
            show_level: log.show_level,
            show_origin: log.show_origin,
        }
    }

    fn read(self) -> Result<LogSpec, Invalid> {
        let level = serde_json::from_value(Value::String(self.level.clone()))
            .map_err(|_| format!("log level {:?} is unknown", self.level))?;
        let log = LogSpec {
            level,
            module: self.module,
            show_level: self.show_level,
            show_origin: self.show_origin,
        };
        // Checked as a spec's would be: it goes on the VMM's command line.
        if let Some(module) = &log.module {
            crate::spec::check_log_module(module).map_err(|e| e.to_string())?;
        }
        Ok(log)
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CpuTemplateFile {
    Static(String),
    Custom { path: PathBuf, config: Value },
}

impl CpuTemplateFile {
    fn of(template: &ResolvedCpuTemplate) -> CpuTemplateFile {
        match template {
            ResolvedCpuTemplate::Static(t) => CpuTemplateFile::Static(t.to_string()),
            ResolvedCpuTemplate::Custom { path, config } => CpuTemplateFile::Custom {
                path: path.clone(),
                config: config.clone(),
            },
        }
    }

    fn read(self) -> Result<ResolvedCpuTemplate, Invalid> {
        Ok(match self {
            CpuTemplateFile::Static(name) => ResolvedCpuTemplate::Static(
                name.parse()
                    .map_err(|()| format!("CPU template {name:?} is unknown"))?,
            ),
            CpuTemplateFile::Custom { path, config } => {
                serde_json::from_value::<firehost_api::CpuConfig>(config.clone())
                    .map_err(|e| format!("the custom CPU template is invalid: {e}"))?;
                ResolvedCpuTemplate::Custom { path, config }
            }
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct BalloonFile {
    amount_mib: u32,
    deflate_on_oom: bool,
    #[serde(default)]
    stats_interval_s: u16,
    #[serde(default)]
    free_page_hinting: bool,
    #[serde(default)]
    free_page_reporting: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct EntropyFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<LimitFile>,
}

impl BucketFile {
    fn of(b: &Bucket) -> BucketFile {
        BucketFile {
            size: b.size,
            refill_time_ms: b.refill_time_ms,
            one_time_burst: b.one_time_burst,
        }
    }

    /// The bucket, unchecked (see [`LimitFile::read`] and `read_checked`).
    fn bucket(self) -> Bucket {
        Bucket {
            size: self.size,
            refill_time_ms: self.refill_time_ms,
            one_time_burst: self.one_time_burst,
        }
    }

    /// The bucket, refused if Firecracker would not enforce it.
    fn read_checked(self) -> Result<Bucket, Invalid> {
        let bucket = self.bucket();
        bucket
            .validate()
            .map_err(|e| format!("a rate limit is invalid: {e}"))?;
        Ok(bucket)
    }
}

impl LimitFile {
    /// `None` for no limit at all, so unlimited devices write nothing.
    fn of(limit: &RateLimit) -> Option<LimitFile> {
        (!limit.is_unlimited()).then(|| LimitFile {
            bandwidth: limit.bandwidth.as_ref().map(BucketFile::of),
            ops: limit.ops.as_ref().map(BucketFile::of),
        })
    }

    fn read(file: Option<LimitFile>) -> Result<RateLimit, Invalid> {
        let Some(file) = file else {
            return Ok(RateLimit::default());
        };
        let limit = RateLimit {
            bandwidth: file.bandwidth.map(BucketFile::bucket),
            ops: file.ops.map(BucketFile::bucket),
        };
        limit
            .validate()
            .map_err(|e| format!("a rate limit is invalid: {e}"))?;
        Ok(limit)
    }
}

impl DriveIoFile {
    fn of(io: &DriveIo) -> Option<DriveIoFile> {
        (!io.is_default()).then(|| DriveIoFile {
            cache: match io.cache {
                DriveCache::Unsafe => CacheFile::Unsafe,
                DriveCache::Writeback => CacheFile::Writeback,
            },
            engine: match io.engine {
                IoEngine::Sync => EngineFile::Sync,
                IoEngine::Async => EngineFile::Async,
            },
            limit: LimitFile::of(&io.limit),
        })
    }

    fn read(file: Option<DriveIoFile>) -> Result<DriveIo, Invalid> {
        let Some(file) = file else {
            return Ok(DriveIo::default());
        };
        Ok(DriveIo {
            cache: match file.cache {
                CacheFile::Unsafe => DriveCache::Unsafe,
                CacheFile::Writeback => DriveCache::Writeback,
            },
            engine: match file.engine {
                EngineFile::Sync => IoEngine::Sync,
                EngineFile::Async => IoEngine::Async,
            },
            limit: LimitFile::read(file.limit)?,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct NetSpecFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    publish: Vec<PortFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    peer_groups: Vec<String>,
    kernel_ip_arg: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    netns: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rx_limit: Option<LimitFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tx_limit: Option<LimitFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    egress: Option<EgressFile>,
}

/// An egress policy: absent when open. Rules are kept in the text forms
/// their parsers read, and the policy is checked again on the way in.
#[derive(Debug, Serialize, Deserialize)]
struct EgressFile {
    default: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rules: Vec<EgressRuleFile>,
}

#[derive(Debug, Serialize, Deserialize)]
struct EgressRuleFile {
    action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    net: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
}

impl EgressFile {
    fn of(policy: &EgressPolicy) -> Option<EgressFile> {
        (!policy.is_open()).then(|| EgressFile {
            default: policy.default_action().to_string(),
            rules: policy
                .rules()
                .iter()
                .map(|r| {
                    let (net, domain) = match &r.target {
                        EgressTarget::Net(m) => (Some(m.to_string()), None),
                        EgressTarget::Domain(d) => (None, Some(d.to_string())),
                    };
                    EgressRuleFile {
                        action: r.action.to_string(),
                        net,
                        domain,
                    }
                })
                .collect(),
        })
    }

    fn read(file: Option<EgressFile>) -> Result<EgressPolicy, Invalid> {
        let Some(file) = file else {
            return Ok(EgressPolicy::open());
        };
        let rules = file
            .rules
            .into_iter()
            .map(|r| {
                let action = parse("egress action", &r.action)?;
                let target = match (r.net, r.domain) {
                    (Some(net), None) => EgressTarget::Net(parse("egress rule", &net)?),
                    (None, Some(domain)) => EgressTarget::Domain(parse("egress domain", &domain)?),
                    _ => {
                        return Err("an egress rule names both or neither of net and domain".into());
                    }
                };
                Ok(EgressRule { action, target })
            })
            .collect::<Result<Vec<_>, Invalid>>()?;
        EgressPolicy::new(parse("egress default", &file.default)?, rules)
            .map_err(|e| format!("egress policy is invalid: {e}"))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct PortFile {
    proto: ProtoFile,
    host_port: u16,
    guest_port: u16,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ProtoFile {
    Tcp,
    Udp,
}

#[derive(Debug, Serialize, Deserialize)]
struct NicFile {
    iface_id: String,
    tap: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    guest_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rx_limit: Option<LimitFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tx_limit: Option<LimitFile>,
}

#[derive(Debug, Serialize, Deserialize)]
struct VsockSpecFile {
    guest_cid: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct MmdsFile {
    version: MmdsVersionFile,
    data: Value,
}

#[derive(Debug, Serialize, Deserialize)]
enum MmdsVersionFile {
    V1,
    V2,
}

#[derive(Debug, Serialize, Deserialize)]
struct JailSpecFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cpus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cpu_quota_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cpu_weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    memory_max_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pids_max: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fsize_max_bytes: Option<u64>,
}

/// A VM's place on the default network. Also read on its own from a
/// damaged record (see [`super::Salvaged`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct NetFile {
    ip: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
    mac: String,
    tap: String,
    iface_id: String,
    dns: Vec<Ipv4Addr>,
    #[serde(default)]
    published: Vec<PortFile>,
    #[serde(default)]
    peer_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    netns: Option<NetnsFile>,
    /// A translated guest's own address: absent in records written before
    /// clones had namespaces, which had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    guest: Option<GuestFile>,
    /// The policy in force: absent when open (and in records written
    /// before policies existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    egress: Option<EgressFile>,
}

#[derive(Debug, Serialize, Deserialize)]
struct GuestFile {
    ip: Ipv4Addr,
    mac: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct NetnsFile {
    path: PathBuf,
    host_port: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct VsockFile {
    uds_path: PathBuf,
    guest_cid: u32,
    token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

/// A VM's jail. Also read on its own from a damaged record (see
/// [`super::Salvaged`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct JailFile {
    jail_id: String,
    chroot: PathBuf,
    uid: u32,
    gid: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cgroups: Vec<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PendingSnapshotFile {
    name: String,
    paused_vm: bool,
}

/// Why a file that parsed is still not a record: a value the API types
/// refuse.
pub type Invalid = String;

fn parse<T: std::str::FromStr>(what: &str, text: &str) -> Result<T, Invalid>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| format!("{what} {text:?} is invalid: {e}"))
}

fn parse_opt<T: std::str::FromStr>(what: &str, text: Option<&str>) -> Result<Option<T>, Invalid>
where
    T::Err: std::fmt::Display,
{
    text.map(|t| parse(what, t)).transpose()
}

fn parse_all<T: std::str::FromStr>(what: &str, texts: &[String]) -> Result<Vec<T>, Invalid>
where
    T::Err: std::fmt::Display,
{
    texts.iter().map(|t| parse(what, t)).collect()
}

impl RecordFile {
    /// The file that stores `record`.
    pub fn from_record(record: &VmRecord) -> RecordFile {
        RecordFile {
            format: CURRENT,
            id: record.id.to_string(),
            name: (record.name != record.id).then(|| record.name.to_string()),
            pool: record.pool.as_ref().map(ToString::to_string),
            committed: record.committed,
            spec: SpecFile::from(&record.spec),
            state: StateFile::from(&record.state),
            vmm: record
                .pid
                .zip(record.start_time)
                .map(|(pid, start_time)| ProcessFile { pid, start_time }),
            api_socket: record.api_socket.clone(),
            console: ConsoleFile::from(&record.console),
            created_at_ms: record.created_at_ms,
            restored_from: record.restored_from.as_ref().map(ToString::to_string),
            last_snapshot: record.last_snapshot.as_ref().map(ToString::to_string),
            page_server_attached: record.page_server_attached,
            page_server_helper: record.page_server_helper.map(|h| ProcessFile {
                pid: h.pid,
                start_time: h.start_time,
            }),
            net: record.net.as_ref().map(NetFile::from),
            vsock: record.vsock.as_ref().map(|v| VsockFile {
                uds_path: v.uds_path.clone(),
                guest_cid: v.guest_cid,
                token: v.token.0.clone(),
                next_token: v.next_token.as_ref().map(|t| t.0.clone()),
            }),
            jail: record.jail.as_ref().map(JailFile::from),
            pending_snapshot: record
                .pending_snapshot
                .as_ref()
                .map(|p| PendingSnapshotFile {
                    name: p.name.to_string(),
                    paused_vm: p.paused_vm,
                }),
            stop_requested: record.stop_requested,
            own_drives: record
                .own_drives
                .iter()
                .map(|d| OwnDriveFile {
                    drive: d.drive.clone(),
                    path: d.path.clone(),
                    copy: match d.copy {
                        CopyMethod::Reflink => CopyFile::Reflink,
                        CopyMethod::Extents => CopyFile::Extents,
                    },
                })
                .collect(),
        }
    }

    /// The record this file stores, every value checked.
    pub fn into_record(self) -> Result<VmRecord, Invalid> {
        let vmm = self.vmm;
        let id = parse::<VmId>("VM id", &self.id)?;
        Ok(VmRecord {
            name: match &self.name {
                Some(name) => parse::<VmId>("VM name", name)?,
                None => id.clone(),
            },
            pool: parse_opt::<crate::id::PoolName>("pool name", self.pool.as_deref())?,
            id,
            committed: self.committed,
            spec: self.spec.into_spec()?,
            state: self.state.into(),
            pid: vmm.map(|p| p.pid),
            start_time: vmm.map(|p| p.start_time),
            api_socket: self.api_socket,
            console: self.console.into(),
            created_at_ms: self.created_at_ms,
            restored_from: parse_opt::<SnapshotName>(
                "snapshot name",
                self.restored_from.as_deref(),
            )?,
            last_snapshot: parse_opt::<SnapshotName>(
                "snapshot name",
                self.last_snapshot.as_deref(),
            )?,
            page_server_attached: self.page_server_attached,
            page_server_helper: self.page_server_helper.map(|h| HelperProcess {
                pid: h.pid,
                start_time: h.start_time,
            }),
            net: self.net.map(NetFile::into_net).transpose()?,
            vsock: self.vsock.map(|v| VmVsock {
                uds_path: v.uds_path,
                guest_cid: v.guest_cid,
                token: firehost_proto::Token(v.token),
                next_token: v.next_token.map(firehost_proto::Token),
            }),
            jail: self.jail.map(JailFile::into_jail),
            pending_snapshot: self
                .pending_snapshot
                .map(|p| {
                    Ok::<_, Invalid>(PendingSnapshot {
                        name: parse("snapshot name", &p.name)?,
                        paused_vm: p.paused_vm,
                    })
                })
                .transpose()?,
            stop_requested: self.stop_requested,
            own_drives: self
                .own_drives
                .into_iter()
                .map(|d| OwnDrive {
                    drive: d.drive,
                    path: d.path,
                    copy: match d.copy {
                        CopyFile::Reflink => CopyMethod::Reflink,
                        CopyFile::Extents => CopyMethod::Extents,
                    },
                })
                .collect(),
        })
    }
}

impl From<&VmState> for StateFile {
    fn from(state: &VmState) -> Self {
        match state {
            VmState::Created => StateFile::Created,
            VmState::Running => StateFile::Running,
            VmState::Paused => StateFile::Paused,
            VmState::Stopped { exit } => StateFile::Stopped { exit: exit.into() },
            VmState::Failed { exit, console_tail } => StateFile::Failed {
                exit: exit.into(),
                console_tail: console_tail.clone(),
            },
        }
    }
}

impl From<StateFile> for VmState {
    fn from(state: StateFile) -> Self {
        match state {
            StateFile::Created => VmState::Created,
            StateFile::Running => VmState::Running,
            StateFile::Paused => VmState::Paused,
            StateFile::Stopped { exit } => VmState::Stopped { exit: exit.into() },
            StateFile::Failed { exit, console_tail } => VmState::Failed {
                exit: exit.into(),
                console_tail,
            },
        }
    }
}

impl From<&ExitReason> for ExitFile {
    fn from(exit: &ExitReason) -> Self {
        match exit {
            ExitReason::Code(code) => ExitFile::Code(*code),
            ExitReason::Signal(signal) => ExitFile::Signal(*signal),
            ExitReason::Unknown => ExitFile::Unknown,
        }
    }
}

impl From<ExitFile> for ExitReason {
    fn from(exit: ExitFile) -> Self {
        match exit {
            ExitFile::Code(code) => ExitReason::Code(code),
            ExitFile::Signal(signal) => ExitReason::Signal(signal),
            ExitFile::Unknown => ExitReason::Unknown,
        }
    }
}

impl From<&ConsoleMode> for ConsoleFile {
    fn from(console: &ConsoleMode) -> Self {
        match console {
            ConsoleMode::Ring => ConsoleFile::Ring,
            ConsoleMode::RingAndFile(path) => ConsoleFile::RingAndFile(path.clone()),
            ConsoleMode::File(path) => ConsoleFile::File(path.clone()),
        }
    }
}

impl From<ConsoleFile> for ConsoleMode {
    fn from(console: ConsoleFile) -> Self {
        match console {
            ConsoleFile::Ring => ConsoleMode::Ring,
            ConsoleFile::RingAndFile(path) => ConsoleMode::RingAndFile(path),
            ConsoleFile::File(path) => ConsoleMode::File(path),
        }
    }
}

impl From<&ResolvedSpec> for SpecFile {
    fn from(spec: &ResolvedSpec) -> Self {
        SpecFile {
            kernel: spec.kernel.clone(),
            initrd: spec.initrd.clone(),
            rootfs: spec.rootfs.clone(),
            rootfs_read_only: spec.rootfs_read_only,
            rootfs_io: DriveIoFile::of(&spec.rootfs_io),
            rootfs_partuuid: spec.rootfs_partuuid.clone(),
            rootfs_shared: spec.rootfs_shared,
            vcpus: spec.vcpus,
            mem_mib: spec.mem_mib,
            smt: spec.smt,
            boot_args: spec.boot_args.clone(),
            extra_drives: spec
                .extra_drives
                .iter()
                .map(|d| DriveFile {
                    id: d.id.clone(),
                    path: d.path.clone(),
                    read_only: d.read_only,
                    shared: d.shared,
                    io: DriveIoFile::of(&d.io),
                })
                .collect(),
            track_dirty_pages: spec.track_dirty_pages,
            graceful_shutdown: spec.graceful_shutdown,
            net: spec.net.as_ref().map(|n| NetSpecFile {
                ip: n.ip,
                mac: n.mac.map(|m| m.to_string()),
                publish: n.publish.iter().map(PortFile::from).collect(),
                peer_groups: n.peer_groups.iter().map(ToString::to_string).collect(),
                kernel_ip_arg: n.kernel_ip_arg,
                netns: n.netns,
                rx_limit: LimitFile::of(&n.rx_limit),
                tx_limit: LimitFile::of(&n.tx_limit),
                egress: EgressFile::of(&n.egress),
            }),
            extra_nics: spec
                .extra_nics
                .iter()
                .map(|n| NicFile {
                    iface_id: n.iface_id.clone(),
                    tap: n.tap.to_string(),
                    guest_mac: n.guest_mac.map(|m| m.to_string()),
                    rx_limit: LimitFile::of(&n.rx_limit),
                    tx_limit: LimitFile::of(&n.tx_limit),
                })
                .collect(),
            entropy: spec.entropy.as_ref().map(|e| EntropyFile {
                limit: LimitFile::of(&e.limit),
            }),
            cpu_template: spec.cpu_template.as_ref().map(CpuTemplateFile::of),
            log: spec.log.as_ref().map(LogFile::of),
            pmem: spec
                .pmem
                .iter()
                .map(|p| PmemFile {
                    id: p.id.clone(),
                    path: p.path.clone(),
                    read_only: p.read_only,
                    root: p.root,
                    limit: LimitFile::of(&p.limit),
                })
                .collect(),
            serial_limit: spec.serial_limit.as_ref().map(BucketFile::of),
            memory_hotplug: spec.memory_hotplug.map(|h| HotplugFile {
                total_mib: h.total_mib,
                slot_mib: h.slot_mib,
                block_mib: h.block_mib,
                requested_mib: h.requested_mib,
            }),
            balloon: spec.balloon.map(|b| BalloonFile {
                amount_mib: b.amount_mib,
                deflate_on_oom: b.deflate_on_oom,
                stats_interval_s: b.stats_interval_s,
                free_page_hinting: b.free_page_hinting,
                free_page_reporting: b.free_page_reporting,
            }),
            vsock: spec.vsock.as_ref().map(|v| VsockSpecFile {
                guest_cid: v.guest_cid,
            }),
            mmds: spec.mmds.as_ref().map(|m| MmdsFile {
                version: match m.version {
                    MmdsVersion::V1 => MmdsVersionFile::V1,
                    MmdsVersion::V2 => MmdsVersionFile::V2,
                },
                data: m.data.clone(),
            }),
            jail: spec.jail.as_ref().map(|j| JailSpecFile {
                uid: j.uid,
                gid: j.gid,
                cpus: j.cpus.clone(),
                cpu_quota_percent: j.cpu_quota_percent,
                cpu_weight: j.cpu_weight,
                memory_max_mib: j.memory_max_mib,
                pids_max: j.pids_max,
                fsize_max_bytes: j.fsize_max_bytes,
            }),
        }
    }
}

impl SpecFile {
    fn into_spec(self) -> Result<ResolvedSpec, Invalid> {
        Ok(ResolvedSpec {
            kernel: self.kernel,
            initrd: self.initrd,
            rootfs: self.rootfs,
            rootfs_read_only: self.rootfs_read_only,
            rootfs_io: DriveIoFile::read(self.rootfs_io)?,
            rootfs_partuuid: match self.rootfs_partuuid {
                Some(p) => {
                    crate::spec::check_partuuid(&p).map_err(|e| e.to_string())?;
                    Some(p)
                }
                None => None,
            },
            rootfs_shared: self.rootfs_shared,
            vcpus: self.vcpus,
            mem_mib: self.mem_mib,
            smt: self.smt,
            boot_args: self.boot_args,
            extra_drives: self
                .extra_drives
                .into_iter()
                .map(|d| {
                    Ok(DriveSpec {
                        id: d.id,
                        path: d.path,
                        read_only: d.read_only,
                        shared: d.shared,
                        io: DriveIoFile::read(d.io)?,
                    })
                })
                .collect::<Result<_, Invalid>>()?,
            track_dirty_pages: self.track_dirty_pages,
            graceful_shutdown: self.graceful_shutdown,
            net: self
                .net
                .map(|n| {
                    Ok::<_, Invalid>(NetSpec {
                        ip: n.ip,
                        mac: parse_opt::<MacAddr>("MAC", n.mac.as_deref())?,
                        publish: n.publish.into_iter().map(Into::into).collect(),
                        peer_groups: parse_all::<PeerGroup>("peer group", &n.peer_groups)?,
                        kernel_ip_arg: n.kernel_ip_arg,
                        netns: n.netns,
                        rx_limit: LimitFile::read(n.rx_limit)?,
                        tx_limit: LimitFile::read(n.tx_limit)?,
                        egress: EgressFile::read(n.egress)?,
                    })
                })
                .transpose()?,
            extra_nics: self
                .extra_nics
                .into_iter()
                .map(|n| {
                    Ok(NicSpec {
                        iface_id: n.iface_id,
                        tap: parse::<IfName>("interface name", &n.tap)?,
                        guest_mac: parse_opt::<MacAddr>("MAC", n.guest_mac.as_deref())?,
                        rx_limit: LimitFile::read(n.rx_limit)?,
                        tx_limit: LimitFile::read(n.tx_limit)?,
                    })
                })
                .collect::<Result<_, Invalid>>()?,
            entropy: self
                .entropy
                .map(|e| {
                    Ok::<_, Invalid>(EntropySpec {
                        limit: LimitFile::read(e.limit)?,
                    })
                })
                .transpose()?,
            cpu_template: self.cpu_template.map(CpuTemplateFile::read).transpose()?,
            log: self.log.map(LogFile::read).transpose()?,
            pmem: self
                .pmem
                .into_iter()
                .map(|p| {
                    Ok(PmemSpec {
                        id: p.id,
                        path: p.path,
                        read_only: p.read_only,
                        root: p.root,
                        limit: LimitFile::read(p.limit)?,
                    })
                })
                .collect::<Result<_, Invalid>>()?,
            serial_limit: self
                .serial_limit
                .map(BucketFile::read_checked)
                .transpose()?,
            memory_hotplug: self
                .memory_hotplug
                .map(|h| {
                    let spec = MemoryHotplugSpec {
                        total_mib: h.total_mib,
                        slot_mib: h.slot_mib,
                        block_mib: h.block_mib,
                        requested_mib: h.requested_mib,
                    };
                    spec.validate().map_err(|e| e.to_string())?;
                    Ok::<_, Invalid>(spec)
                })
                .transpose()?,
            balloon: self.balloon.map(|b| BalloonSpec {
                amount_mib: b.amount_mib,
                deflate_on_oom: b.deflate_on_oom,
                stats_interval_s: b.stats_interval_s,
                free_page_hinting: b.free_page_hinting,
                free_page_reporting: b.free_page_reporting,
            }),
            vsock: self.vsock.map(|v| VsockSpec {
                guest_cid: v.guest_cid,
            }),
            mmds: self.mmds.map(|m| MmdsSpec {
                version: match m.version {
                    MmdsVersionFile::V1 => MmdsVersion::V1,
                    MmdsVersionFile::V2 => MmdsVersion::V2,
                },
                data: m.data,
            }),
            jail: self.jail.map(|j| JailSpec {
                uid: j.uid,
                gid: j.gid,
                cpus: j.cpus,
                cpu_quota_percent: j.cpu_quota_percent,
                cpu_weight: j.cpu_weight,
                memory_max_mib: j.memory_max_mib,
                pids_max: j.pids_max,
                fsize_max_bytes: j.fsize_max_bytes,
            }),
        })
    }
}

impl From<&firewall::PortMapping> for PortFile {
    fn from(port: &firewall::PortMapping) -> Self {
        PortFile {
            proto: match port.proto {
                firewall::Proto::Tcp => ProtoFile::Tcp,
                firewall::Proto::Udp => ProtoFile::Udp,
            },
            host_port: port.host_port,
            guest_port: port.guest_port,
        }
    }
}

impl From<PortFile> for firewall::PortMapping {
    fn from(port: PortFile) -> Self {
        firewall::PortMapping {
            proto: match port.proto {
                ProtoFile::Tcp => firewall::Proto::Tcp,
                ProtoFile::Udp => firewall::Proto::Udp,
            },
            host_port: port.host_port,
            guest_port: port.guest_port,
        }
    }
}

impl From<&VmNet> for NetFile {
    fn from(net: &VmNet) -> Self {
        NetFile {
            ip: net.ip,
            prefix_len: net.prefix_len,
            gateway: net.gateway,
            mac: net.mac.to_string(),
            tap: net.tap.to_string(),
            iface_id: net.iface_id.clone(),
            dns: net.dns.clone(),
            published: net.published.iter().map(PortFile::from).collect(),
            peer_groups: net.peer_groups.iter().map(ToString::to_string).collect(),
            netns: net.netns.as_ref().map(|n| NetnsFile {
                path: n.path.clone(),
                host_port: n.host_port.to_string(),
            }),
            guest: net.guest.map(|g| GuestFile {
                ip: g.ip,
                mac: g.mac.to_string(),
            }),
            egress: EgressFile::of(&net.egress),
        }
    }
}

impl NetFile {
    /// The network attachment this stores, every value checked.
    pub fn into_net(self) -> Result<VmNet, Invalid> {
        Ok(VmNet {
            ip: self.ip,
            prefix_len: self.prefix_len,
            gateway: self.gateway,
            mac: parse("MAC", &self.mac)?,
            tap: parse("interface name", &self.tap)?,
            iface_id: self.iface_id,
            dns: self.dns,
            published: self.published.into_iter().map(Into::into).collect(),
            peer_groups: parse_all("peer group", &self.peer_groups)?,
            netns: self
                .netns
                .map(|n| {
                    Ok::<_, Invalid>(VmNetns {
                        path: n.path,
                        host_port: parse("interface name", &n.host_port)?,
                    })
                })
                .transpose()?,
            guest: self
                .guest
                .map(|g| {
                    Ok::<_, Invalid>(GuestAddress {
                        ip: g.ip,
                        mac: parse("MAC", &g.mac)?,
                    })
                })
                .transpose()?,
            egress: EgressFile::read(self.egress)?,
        })
    }
}

impl From<&VmJail> for JailFile {
    fn from(jail: &VmJail) -> Self {
        JailFile {
            jail_id: jail.jail_id.clone(),
            chroot: jail.chroot.clone(),
            uid: jail.uid,
            gid: jail.gid,
            cgroups: jail.cgroups.clone(),
        }
    }
}

impl JailFile {
    /// The jail this stores.
    pub fn into_jail(self) -> VmJail {
        VmJail {
            jail_id: self.jail_id,
            chroot: self.chroot,
            uid: self.uid,
            gid: self.gid,
            cgroups: self.cgroups,
        }
    }
}
