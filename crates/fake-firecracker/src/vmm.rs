//! The VMM state machine: which [`Action`] is allowed in which state, what it
//! changes, and the exact error Firecracker v1.16.1 answers when it is refused.
//!
//! ```text
//!             PUT /actions InstanceStart
//! NotStarted ─────────────────────────────▶ Running ◀──PATCH /vm Resumed──┐
//!     │        PUT /snapshot/load                │                          │
//!     └──────────────────▶ Paused ◀──PATCH /vm Paused──┘────────────────────┘
//!                 (or Running with resume_vm)
//! ```
//!
//! The rules come from `src/vmm/src/rpc_interface.rs`: `PrebootApiController`
//! answers "The requested operation is not supported before starting the microVM."
//! to runtime-only actions, `RuntimeApiController` answers "... after starting the
//! microVM." to configuration actions, and `PUT /snapshot/load` is refused once any
//! boot-specific resource has been configured. Errors are wrapped the way
//! `VmmActionError` wraps them ("Boot source error: ...", "Drive config error: ...").
//!
//! Everything Firecracker checks on the host at configuration time that the fake can
//! check without privileges is checked: the kernel, initrd and drive files are opened
//! at PUT time, the vsock socket is bound, log and metrics files are opened.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use firehost_api::{
    Balloon, BootSource, CpuConfig, CpuTemplate, Drive, EntropyDevice, HugePages, LogLevel,
    MemoryBackendType, MemoryHotplugConfig, MmdsConfig, NetworkInterface, Pmem, SerialDevice,
    SnapshotCreateParams, SnapshotLoadParams, SnapshotType, Vsock,
};
use serde::{Deserialize, Serialize};

use crate::action::{Action, MachineConfigUpdate};
use crate::console::{self, Console};
use crate::guest::{Guest, GuestTouch};
use crate::memory::{self, GuestMemory};
use crate::telemetry::{Level, MetricsInitError, Telemetry};
use crate::view::{self, BalloonView, DriveView, EntropyView, MmdsConfigView, NetView};

/// The version the fake claims to be.
pub const FIRECRACKER_VERSION: &str = "1.16.1";
/// The snapshot data format version of Firecracker v1.16.1 (`persist::SNAPSHOT_VERSION`).
pub const SNAPSHOT_VERSION: &str = "10.0.0";
/// Firecracker's kernel command line when `boot_args` is absent.
pub const DEFAULT_KERNEL_CMDLINE: &str = "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce";
/// Firecracker's default guest memory size.
pub const DEFAULT_MEM_SIZE_MIB: u64 = 128;
/// Firecracker's `MAX_SUPPORTED_VCPUS`.
pub const MAX_SUPPORTED_VCPUS: u8 = 32;
/// How long the fake guest takes to shut down after Ctrl-Alt-Del.
pub const GUEST_SHUTDOWN_DELAY: Duration = Duration::from_millis(20);
/// Marker at the top of the fake's vmstate files.
const VMSTATE_MAGIC: &str = "fake-firecracker-vmstate";

/// The lifecycle state reported by `GET /`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Configuring; `InstanceStart` or snapshot load not yet done.
    NotStarted,
    /// vCPUs running.
    Running,
    /// vCPUs paused.
    Paused,
}

impl VmState {
    fn api(self) -> firehost_api::InstanceState {
        match self {
            Self::NotStarted => firehost_api::InstanceState::NotStarted,
            Self::Running => firehost_api::InstanceState::Running,
            Self::Paused => firehost_api::InstanceState::Paused,
        }
    }
}

/// `MachineConfigError`, with Firecracker's messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineConfigError {
    /// Memory size zero or not a multiple of the page size.
    #[error("The memory size (MiB) is either 0, or not a multiple of the configured page size.")]
    InvalidMemorySize,
    /// Bad vCPU count.
    #[error(
        "The number of vCPUs must be greater than 0, less than {MAX_SUPPORTED_VCPUS} and must be 1 or an even number if SMT is enabled."
    )]
    InvalidVcpuCount,
    /// Memory smaller than the balloon.
    #[error("The memory size (MiB) is smaller than the previously set balloon device target size.")]
    IncompatibleBalloonSize,
}

/// Every error an action can answer; the `Display` text is the `fault_message`.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// A runtime-only action before `InstanceStart`.
    #[error("The requested operation is not supported before starting the microVM.")]
    NotSupportedPreBoot,
    /// A configuration action after `InstanceStart`.
    #[error("The requested operation is not supported after starting the microVM.")]
    NotSupportedPostBoot,
    /// `PUT /boot-source` failures.
    #[error("Boot source error: {0}")]
    BootSource(String),
    /// `PUT /drives` failures.
    #[error("Drive config error: {0}")]
    Drive(String),
    /// `PUT /pmem` failures.
    #[error("Pmem config error: {0}")]
    Pmem(String),
    /// Machine configuration failures.
    #[error("Machine config error: {0}")]
    MachineConfig(#[from] MachineConfigError),
    /// `PUT /network-interfaces` failures.
    #[error("Network config error: {0}")]
    Network(String),
    /// `PUT /vsock` failures.
    #[error("Vsock config error: {0}")]
    Vsock(String),
    /// `PUT /balloon` and `GET /balloon` failures.
    #[error("Balloon config error: {0}")]
    BalloonConfig(String),
    /// Runtime balloon failures.
    #[error("Balloon update error: {0}")]
    BalloonUpdate(String),
    /// `PUT /logger` failures.
    #[error("Logger error: Failed to open target file: {0}")]
    Logger(io::Error),
    /// `PUT /metrics` failures.
    #[error("Metrics error: {0}")]
    Metrics(#[from] MetricsInitError),
    /// `PUT /mmds/config` failures.
    #[error("MMMDS config error: {0}")]
    MmdsConfig(String),
    /// MMDS data store failures.
    #[error("MMDS error: {0}")]
    Mmds(String),
    /// The MMDS data store's size limit (answered with 413).
    #[error("MMDS limit exceeded error: {0}")]
    MmdsLimit(String),
    /// `InstanceStart` failures.
    #[error("Start microvm error: {0}")]
    StartMicrovm(String),
    /// `PUT /snapshot/create` failures.
    #[error("Create snapshot error: {0}")]
    CreateSnapshot(String),
    /// `PUT /snapshot/load` failures.
    #[error("Load snapshot error: {0}")]
    LoadSnapshot(String),
    /// Failures inside the running VMM.
    #[error("Internal VMM error: {0}")]
    InternalVmm(String),
    /// Memory hotplug configuration failures.
    #[error("Memory hotplug config error: {0}")]
    MemoryHotplugConfig(String),
    /// Memory hotplug update failures.
    #[error("Memory hotplug update error: {0}")]
    MemoryHotplugUpdate(String),
    /// Hot(un)plug without `--enable-pci`.
    #[error("PCI is not enabled")]
    PciNotEnabled,
    /// Hot-unplug of an unknown device.
    #[error("Device not found")]
    DeviceNotFound,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// 204 No Content.
    Empty,
    /// 200 with this JSON body.
    Json(String),
}

/// Something the process must do after answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The guest booted: print the console banner.
    Booted {
        /// Where the console goes.
        console: Console,
        /// The lines to print.
        lines: Vec<String>,
    },
    /// The process must exit.
    Exit {
        /// Exit status.
        code: u8,
        /// Delay before exiting.
        after: Duration,
        /// Console lines printed just before exiting.
        lines: Vec<String>,
        /// Where those lines go.
        console: Console,
    },
}

impl Effect {
    /// An exit with no delay: the VMM dies of this request (a failed
    /// snapshot load), so its API serves nothing after this answer.
    pub fn ends_the_api(&self) -> bool {
        matches!(self, Effect::Exit { after, .. } if after.is_zero())
    }
}

/// The answer to one action plus what must happen after it.
#[derive(Debug)]
pub struct Outcome {
    /// The answer.
    pub result: Result<Reply, ActionError>,
    /// Effects to apply once the answer is sent.
    pub effects: Vec<Effect>,
}

impl From<Result<Reply, ActionError>> for Outcome {
    fn from(result: Result<Reply, ActionError>) -> Self {
        Self {
            result,
            effects: Vec::new(),
        }
    }
}

/// The machine configuration, always complete (Firecracker's `MachineConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// vCPUs.
    pub vcpu_count: u8,
    /// Memory, MiB.
    pub mem_size_mib: u64,
    /// SMT.
    pub smt: bool,
    /// Static CPU template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// Dirty page tracking.
    pub track_dirty_pages: bool,
    /// Huge pages.
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: DEFAULT_MEM_SIZE_MIB,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
        }
    }
}

impl MachineConfig {
    /// Applies an update with `MachineConfig::update`'s checks.
    pub fn update(&self, u: &MachineConfigUpdate) -> Result<Self, MachineConfigError> {
        let vcpu_count = u.vcpu_count.unwrap_or(self.vcpu_count);
        let smt = u.smt.unwrap_or(self.smt);
        if vcpu_count == 0 || vcpu_count > MAX_SUPPORTED_VCPUS {
            return Err(MachineConfigError::InvalidVcpuCount);
        }
        if smt && vcpu_count > 1 && vcpu_count % 2 == 1 {
            return Err(MachineConfigError::InvalidVcpuCount);
        }
        let mem_size_mib = u.mem_size_mib.unwrap_or(self.mem_size_mib);
        let huge_pages = u.huge_pages.unwrap_or(self.huge_pages);
        let page_ok = match huge_pages {
            HugePages::None => true,
            HugePages::Hugetlbfs2M => mem_size_mib.is_multiple_of(2),
        };
        if mem_size_mib == 0 || !page_ok {
            return Err(MachineConfigError::InvalidMemorySize);
        }
        let cpu_template = match u.cpu_template {
            None => self.cpu_template,
            Some(CpuTemplate::None) => None,
            Some(other) => Some(other),
        };
        Ok(Self {
            vcpu_count,
            mem_size_mib,
            smt,
            cpu_template,
            track_dirty_pages: u.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            huge_pages,
        })
    }
}

/// Everything configured so far, and what a snapshot carries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Resources {
    /// `PUT /boot-source`.
    pub boot_source: Option<BootSource>,
    /// Machine configuration.
    pub machine_config: MachineConfig,
    /// Block devices, the root device first.
    pub drives: Vec<Drive>,
    /// Pmem devices.
    pub pmem: Vec<Pmem>,
    /// Network interfaces.
    pub network_interfaces: Vec<NetworkInterface>,
    /// Vsock device.
    pub vsock: Option<Vsock>,
    /// Balloon device.
    pub balloon: Option<Balloon>,
    /// Entropy device.
    pub entropy: Option<EntropyDevice>,
    /// MMDS configuration.
    pub mmds_config: Option<MmdsConfig>,
    /// MMDS contents (`None`: data store not created yet).
    pub mmds: Option<serde_json::Value>,
    /// Memory hotplug device.
    pub memory_hotplug: Option<MemoryHotplugConfig>,
    /// Custom CPU template (not saved in snapshots, as in Firecracker).
    #[serde(skip)]
    pub cpu_config: Option<CpuConfig>,
    /// Serial output (not saved in snapshots, as in Firecracker).
    #[serde(skip)]
    pub serial: Option<SerialDevice>,
}

/// The vmstate file the fake writes on snapshot create.
#[derive(Debug, Serialize, Deserialize)]
struct VmStateFile {
    magic: String,
    version: String,
    /// Whether the memory file holds every page or only the dirty ones.
    #[serde(default)]
    snapshot_type: SnapshotType,
    resources: Resources,
}

/// Options fixed at start-up.
#[derive(Debug, Clone, Default)]
pub struct VmmOptions {
    /// `--id`.
    pub id: String,
    /// `--enable-pci`.
    pub pci_enabled: bool,
    /// MMDS data store limit, bytes.
    pub mmds_size_limit: usize,
    /// `FAKE_FC_EXIT_ON_START`.
    pub exit_on_start: Option<u8>,
    /// `FAKE_FC_CONSOLE_FLOOD`.
    pub console_flood: Option<u64>,
    /// `FAKE_FC_BALLOON_DRIVER`: the guest has a virtio-balloon driver.
    pub balloon_driver: bool,
    /// `FAKE_FC_IGNORE_CTRL_ALT_DEL`.
    pub ignore_ctrl_alt_del: bool,
    /// `FAKE_FC_GUEST_TOUCH`.
    pub guest_touch: GuestTouch,
}

/// The VMM: state, resources, logger and metrics.
#[derive(Debug)]
pub struct Vmm {
    options: VmmOptions,
    state: VmState,
    boot_path: bool,
    resources: Resources,
    /// Logger and metrics.
    pub telemetry: Telemetry,
    /// The stand-in guest's agent, once the guest has booted.
    agent: Option<crate::vsock::Agent>,
    /// The connection to the `Uffd` page server, never closed (as Firecracker).
    uffd: Option<UnixStream>,
    /// The vCPUs and their memory, once booted or restored.
    guest: Option<Guest>,
    /// TAP devices attached by network interfaces, by interface id.
    taps: std::collections::HashMap<String, std::os::fd::OwnedFd>,
}

fn not_found_io(path: &Path, e: io::Error) -> String {
    format!("{e} {}", path.display())
}

impl Vmm {
    /// A fresh, unconfigured VMM.
    pub fn new(options: VmmOptions, telemetry: Telemetry) -> Self {
        Self {
            options,
            state: VmState::NotStarted,
            boot_path: false,
            resources: Resources::default(),
            telemetry,
            agent: None,
            uffd: None,
            guest: None,
            taps: std::collections::HashMap::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> VmState {
        self.state
    }

    /// Sets the initial MMDS contents (`--metadata`).
    pub fn set_initial_mmds(&mut self, value: serde_json::Value) {
        self.resources.mmds = Some(value);
    }

    /// Handles one action.
    pub fn handle(&mut self, action: Action) -> Outcome {
        if self.state == VmState::NotStarted {
            self.handle_preboot(action)
        } else {
            self.handle_runtime(action)
        }
    }

    /// Where the guest's serial output goes.
    pub fn console(&self) -> Console {
        match self
            .resources
            .serial
            .as_ref()
            .and_then(|s| s.serial_out_path.clone())
        {
            Some(p) => Console::File(p),
            None => Console::Stdout,
        }
    }

    fn handle_common(&mut self, action: &Action) -> Option<Result<Reply, ActionError>> {
        Some(match action {
            Action::GetInstanceInfo => Ok(json_reply(&view::InstanceInfoView {
                id: &self.options.id,
                state: self.state.api(),
                vmm_version: FIRECRACKER_VERSION,
                app_name: "Firecracker",
            })),
            Action::GetVersion => Ok(json_reply(&firehost_api::FirecrackerVersion {
                firecracker_version: FIRECRACKER_VERSION.into(),
            })),
            Action::GetMachineConfig => Ok(json_reply(&self.resources.machine_config)),
            Action::GetFullVmConfig => Ok(json_reply(&self.full_config())),
            _ => return None,
        })
    }

    fn handle_preboot(&mut self, action: Action) -> Outcome {
        if let Some(r) = self.handle_common(&action) {
            return r.into();
        }
        let res = &mut self.resources;
        let result = match action {
            Action::PutBootSource(cfg) => {
                self.boot_path = true;
                set_boot_source(res, cfg)
            }
            Action::PutLogger(cfg) => {
                let level = cfg.level.map(|l| match l {
                    LogLevel::Error => Some(Level::Error),
                    LogLevel::Warning => Some(Level::Warn),
                    LogLevel::Info => Some(Level::Info),
                    LogLevel::Debug | LogLevel::Trace => Some(Level::Debug),
                    #[allow(unreachable_patterns)]
                    _ => None,
                });
                self.telemetry
                    .configure_logger(
                        cfg.log_path.as_deref(),
                        level,
                        cfg.show_level,
                        cfg.show_log_origin,
                    )
                    .map(|()| Reply::Empty)
                    .map_err(ActionError::Logger)
            }
            Action::PutMetrics(cfg) => self
                .telemetry
                .configure_metrics(&cfg.metrics_path)
                .map(|()| Reply::Empty)
                .map_err(ActionError::from),
            Action::PutSerial(cfg) => {
                res.serial = Some(cfg);
                Ok(Reply::Empty)
            }
            Action::GetBalloon => match &res.balloon {
                Some(b) => Ok(json_reply(&view::BalloonView::from(b))),
                None => Err(ActionError::BalloonConfig(
                    "No balloon device found.".into(),
                )),
            },
            Action::GetMmds => Ok(mmds_reply(res.mmds.get_or_insert(serde_json::Value::Null))),
            Action::PutDrive(drive) => {
                self.boot_path = true;
                insert_drive(res, drive)
            }
            Action::PutPmem(pmem) => {
                self.boot_path = true;
                insert_pmem(res, pmem)
            }
            Action::PutNetworkInterface(iface) => {
                self.boot_path = true;
                put_net(&mut self.taps, res, iface)
            }
            Action::LoadSnapshot(params) => return self.load_snapshot(params),
            Action::PatchMmds(value) => {
                // Only a PUT (or an MMDS configuration) creates the store.
                let limit = self.options.mmds_size_limit;
                match res.mmds.as_mut() {
                    Some(store) => patch_mmds(store, value, limit),
                    None => Err(ActionError::Mmds(
                        "The MMDS data store is not initialized.".into(),
                    )),
                }
            }
            Action::PutCpuConfig(cfg) => {
                res.cpu_config = Some(*cfg);
                Ok(Reply::Empty)
            }
            Action::PutMmds(value) => {
                let limit = self.options.mmds_size_limit;
                put_mmds(
                    res.mmds.get_or_insert(serde_json::Value::Null),
                    value,
                    limit,
                )
            }
            Action::PutBalloon(cfg) => {
                self.boot_path = true;
                set_balloon(res, cfg)
            }
            Action::PutVsock(cfg) => {
                self.boot_path = true;
                // As Firecracker: the old device goes first, with its
                // socket file; a replacement that fails leaves none.
                if let Some(old) = res.vsock.take()
                    && let Err(e) = std::fs::remove_file(&old.uds_path)
                {
                    return Outcome::from(Err(ActionError::Vsock(format!(
                        "Cannot create backend for vsock device: Error binding to the host-side Unix socket: {e}"
                    ))));
                }
                match bind_vsock(&cfg.uds_path) {
                    Ok(listener) => {
                        crate::vsock::serve(listener, cfg.uds_path.clone());
                        res.vsock = Some(cfg);
                        Ok(Reply::Empty)
                    }
                    Err(e) => Err(e),
                }
            }
            Action::PutMmdsConfig(cfg) => {
                self.boot_path = true;
                set_mmds_config(res, cfg)
            }
            Action::InstanceStart => return self.start_microvm(),
            Action::PutMachineConfig(u) | Action::PatchMachineConfig(u) => {
                self.boot_path = true;
                update_machine_config(res, &u)
            }
            Action::PutEntropy(cfg) => {
                self.boot_path = true;
                res.entropy = Some(cfg);
                Ok(Reply::Empty)
            }
            Action::PutMemoryHotplug(cfg) => {
                self.boot_path = true;
                res.memory_hotplug = Some(cfg);
                Ok(Reply::Empty)
            }
            Action::CreateSnapshot(_)
            | Action::FlushMetrics
            | Action::Pause
            | Action::Resume
            | Action::GetBalloonStats
            | Action::GetMemoryHotplug
            | Action::PatchBalloon(_)
            | Action::PatchBalloonStatistics(_)
            | Action::PatchDrive(_)
            | Action::PatchMemoryHotplug(_)
            | Action::PatchNetworkInterface(_)
            | Action::PatchPmem(_)
            | Action::StartBalloonHinting(_)
            | Action::GetBalloonHintingStatus
            | Action::StopBalloonHinting
            | Action::HotUnplug(..)
            | Action::SendCtrlAltDel => Err(ActionError::NotSupportedPreBoot),
            Action::GetInstanceInfo
            | Action::GetVersion
            | Action::GetMachineConfig
            | Action::GetFullVmConfig => unreachable!("answered by handle_common"),
        };
        result.into()
    }

    fn handle_runtime(&mut self, action: Action) -> Outcome {
        if let Some(r) = self.handle_common(&action) {
            return r.into();
        }
        let result = match action {
            Action::CreateSnapshot(params) => self.create_snapshot(&params),
            Action::FlushMetrics => self
                .telemetry
                .write_metrics()
                .map(|()| Reply::Empty)
                .map_err(|e| ActionError::InternalVmm(format!("Error writing metrics: {e}"))),
            Action::GetBalloon => match &self.resources.balloon {
                Some(b) => Ok(json_reply(&view::BalloonView::from(b))),
                None => Err(ActionError::InternalVmm(
                    "Failed perform action on device: Device not found".into(),
                )),
            },
            Action::GetBalloonStats => match &self.resources.balloon {
                Some(b) if b.stats_polling_interval_s.unwrap_or(0) > 0 => Ok(Reply::Json(
                    balloon_stats(b, self.resources.machine_config.mem_size_mib, self.options.balloon_driver),
                )),
                Some(_) => Err(ActionError::InternalVmm(
                    "Balloon: Received stats query when stats are disabled.".into(),
                )),
                None => Err(ActionError::InternalVmm(
                    "Failed perform action on device: Device not found".into(),
                )),
            },
            Action::GetMemoryHotplug => match &self.resources.memory_hotplug {
                Some(cfg) => Ok(json_reply(&serde_json::json!({
                    "total_size_mib": cfg.total_size_mib,
                    "slot_size_mib": cfg.slot_size_mib,
                    "block_size_mib": cfg.block_size_mib,
                    "plugged_size_mib": 0,
                    "requested_size_mib": 0,
                }))),
                None => Err(ActionError::InternalVmm(
                    "Failed perform action on device: Device not found".into(),
                )),
            },
            Action::GetMmds => match &self.resources.mmds {
                Some(v) if self.resources.mmds_config.is_some() => Ok(mmds_reply(v)),
                _ => Err(ActionError::Mmds(
                    "The MMDS data store is not initialized.".into(),
                )),
            },
            Action::PatchMmds(value) => {
                let limit = self.options.mmds_size_limit;
                match (&mut self.resources.mmds, &self.resources.mmds_config) {
                    (Some(v), Some(_)) => patch_mmds(v, value, limit),
                    _ => Err(ActionError::Mmds(
                        "The MMDS data store is not initialized.".into(),
                    )),
                }
            }
            Action::PutMmds(value) => {
                let limit = self.options.mmds_size_limit;
                match (&mut self.resources.mmds, &self.resources.mmds_config) {
                    (Some(v), Some(_)) => put_mmds(v, value, limit),
                    _ => Err(ActionError::Mmds(
                        "The MMDS data store is not initialized.".into(),
                    )),
                }
            }
            Action::PutDrive(_) | Action::PutPmem(_) | Action::PutNetworkInterface(_)
                if !self.options.pci_enabled =>
            {
                Err(ActionError::PciNotEnabled)
            }
            Action::PutDrive(drive) => insert_drive(&mut self.resources, drive),
            Action::PutPmem(pmem) => insert_pmem(&mut self.resources, pmem),
            Action::PutNetworkInterface(iface) => put_net(&mut self.taps, &mut self.resources, iface),
            Action::HotUnplug(..) if !self.options.pci_enabled => Err(ActionError::PciNotEnabled),
            Action::HotUnplug(kind, id) => self.hot_unplug(kind, &id),
            Action::Pause => {
                self.state = VmState::Paused;
                if let Some(g) = &self.guest {
                    g.pause();
                }
                Ok(Reply::Empty)
            }
            Action::Resume => {
                self.state = VmState::Running;
                if let Some(g) = &self.guest {
                    g.resume();
                }
                Ok(Reply::Empty)
            }
            Action::SendCtrlAltDel => {
                let mut outcome = Outcome::from(Ok(Reply::Empty));
                if !self.options.ignore_ctrl_alt_del && self.state == VmState::Running {
                    outcome.effects.push(Effect::Exit {
                        code: 0,
                        after: GUEST_SHUTDOWN_DELAY,
                        lines: vec![console::SHUTDOWN_LINE.to_owned()],
                        console: self.console(),
                    });
                } else if self.state == VmState::Running {
                    // What a guest without a Ctrl-Alt-Del handler would not
                    // say; tests wait for it instead of for nothing.
                    let _ = self.console().write_lines(&[console::IGNORED_CTRL_ALT_DEL_LINE.to_owned()]);
                }
                return outcome;
            }
            Action::PatchBalloon(u) => match &mut self.resources.balloon {
                // Without a guest driver the device never activates.
                Some(_) if !self.options.balloon_driver => Err(ActionError::BalloonUpdate(
                    "Balloon: Device not activated yet.".into(),
                )),
                Some(b) => {
                    let memory = self.resources.machine_config.mem_size_mib;
                    if u64::from(u.amount_mib) > memory {
                        Err(ActionError::BalloonUpdate(format!(
                            "Balloon: Requested memory should be less than {}MiB",
                            memory + 1
                        )))
                    } else {
                        b.amount_mib = u.amount_mib;
                        Ok(Reply::Empty)
                    }
                }
                None => Err(ActionError::BalloonUpdate(
                    "Failed perform action on device: Device not found".into(),
                )),
            },
            Action::PatchBalloonStatistics(u) => match &mut self.resources.balloon {
                Some(b)
                    if (b.stats_polling_interval_s.unwrap_or(0) == 0)
                        != (u.stats_polling_interval_s == 0) =>
                {
                    Err(ActionError::BalloonUpdate(
                        "Balloon: Statistics cannot be enabled/disabled after activation.".into(),
                    ))
                }
                Some(b) => {
                    b.stats_polling_interval_s = Some(u.stats_polling_interval_s);
                    Ok(Reply::Empty)
                }
                None => Err(ActionError::BalloonUpdate(
                    "Failed perform action on device: Device not found".into(),
                )),
            },
            Action::StartBalloonHinting(_)
            | Action::StopBalloonHinting
            | Action::GetBalloonHintingStatus => {
                let status = matches!(action, Action::GetBalloonHintingStatus);
                match &self.resources.balloon {
                    None => Err(ActionError::BalloonUpdate(
                        "Failed perform action on device: Device not found".into(),
                    )),
                    Some(b) if b.free_page_hinting != Some(true) => {
                        Err(ActionError::BalloonUpdate(
                            "Balloon: Attempting to use hinting when not enabled".into(),
                        ))
                    }
                    Some(_) if status => Ok(Reply::Json(
                        r#"{"host_cmd":0,"guest_cmd":null}"#.to_owned(),
                    )),
                    Some(_) if !self.options.balloon_driver => Err(ActionError::BalloonUpdate(
                        "Balloon: Device not activated yet.".into(),
                    )),
                    Some(_) => Ok(Reply::Empty),
                }
            }
            Action::PatchDrive(u) => {
                match self
                    .resources
                    .drives
                    .iter_mut()
                    .find(|d| d.drive_id == u.drive_id)
                {
                    None => Err(ActionError::Drive(
                        "Unable to patch the block device: Failed perform action on device: Device not found Please verify the request arguments.".into(),
                    )),
                    Some(d) => {
                        if let Some(path) = &u.path_on_host
                            && let Err(e) = File::open(path)
                        {
                            return Outcome::from(Err(ActionError::Drive(format!(
                                "Unable to patch the block device: Block: Virtio backend error: Error manipulating the backing file: {} Please verify the request arguments.",
                                not_found_io(path, e)
                            ))));
                        }
                        if let Some(p) = u.path_on_host {
                            d.path_on_host = Some(p);
                        }
                        if let Some(r) = u.rate_limiter {
                            d.rate_limiter = Some(r);
                        }
                        Ok(Reply::Empty)
                    }
                }
            }
            Action::PatchNetworkInterface(u) => match self
                .resources
                .network_interfaces
                .iter_mut()
                .find(|n| n.iface_id == u.iface_id)
            {
                None => Err(ActionError::Network(
                    "Unable to update the net device: Failed perform action on device: Device not found".into(),
                )),
                Some(n) => {
                    if let Some(r) = u.rx_rate_limiter {
                        n.rx_rate_limiter = Some(r);
                    }
                    if let Some(r) = u.tx_rate_limiter {
                        n.tx_rate_limiter = Some(r);
                    }
                    Ok(Reply::Empty)
                }
            },
            Action::PatchPmem(u) => match self.resources.pmem.iter_mut().find(|p| p.id == u.id) {
                None => Err(ActionError::Pmem(
                    "Unable to patch the pmem device: Failed perform action on device: Device not found Please verify the request arguments.".into(),
                )),
                Some(p) => {
                    if let Some(r) = u.rate_limiter {
                        p.rate_limiter = Some(r);
                    }
                    Ok(Reply::Empty)
                }
            },
            Action::PatchMemoryHotplug(_) => match &self.resources.memory_hotplug {
                Some(_) => Ok(Reply::Empty),
                None => Err(ActionError::MemoryHotplugUpdate(
                    "Failed perform action on device: Device not found".into(),
                )),
            },
            Action::PutBootSource(_)
            | Action::PutLogger(_)
            | Action::PutMetrics(_)
            | Action::PutSerial(_)
            | Action::LoadSnapshot(_)
            | Action::PutCpuConfig(_)
            | Action::PutBalloon(_)
            | Action::PutVsock(_)
            | Action::PutMmdsConfig(_)
            | Action::PutEntropy(_)
            | Action::PutMemoryHotplug(_)
            | Action::InstanceStart
            | Action::PutMachineConfig(_)
            | Action::PatchMachineConfig(_) => Err(ActionError::NotSupportedPostBoot),
            Action::GetInstanceInfo
            | Action::GetVersion
            | Action::GetMachineConfig
            | Action::GetFullVmConfig => unreachable!("answered by handle_common"),
        };
        result.into()
    }

    fn hot_unplug(
        &mut self,
        kind: crate::action::DeviceKind,
        id: &str,
    ) -> Result<Reply, ActionError> {
        use crate::action::DeviceKind;
        let res = &mut self.resources;
        let removed = match kind {
            DeviceKind::Block => {
                if res
                    .drives
                    .iter()
                    .any(|d| d.drive_id == id && d.is_root_device)
                {
                    return Err(ActionError::InternalVmm("Cannot unplug root device".into()));
                }
                let before = res.drives.len();
                res.drives.retain(|d| d.drive_id != id);
                before != res.drives.len()
            }
            DeviceKind::Pmem => {
                let before = res.pmem.len();
                res.pmem.retain(|p| p.id != id);
                before != res.pmem.len()
            }
            DeviceKind::Net => {
                let before = res.network_interfaces.len();
                res.network_interfaces.retain(|n| n.iface_id != id);
                before != res.network_interfaces.len()
            }
        };
        if removed {
            Ok(Reply::Empty)
        } else {
            Err(ActionError::DeviceNotFound)
        }
    }

    fn start_microvm(&mut self) -> Outcome {
        let Some(boot) = &self.resources.boot_source else {
            return Outcome::from(Err(ActionError::StartMicrovm(
                "Cannot start microvm without kernel configuration.".into(),
            )));
        };
        // Firecracker re-opens nothing here: it holds the files it opened at PUT time.
        let boot_args = boot
            .boot_args
            .clone()
            .unwrap_or_else(|| DEFAULT_KERNEL_CMDLINE.to_owned());
        let mem = match GuestMemory::anonymous(self.resources.machine_config.mem_size_mib << 20) {
            Ok(m) => m,
            Err(e) => {
                return Outcome::from(Err(ActionError::StartMicrovm(format!(
                    "Failed to allocate guest memory: {e}"
                ))));
            }
        };
        self.guest = Some(Guest::boot(
            Arc::new(mem),
            memory::id_hash(&self.options.id),
            self.console(),
        ));
        self.state = VmState::Running;
        self.start_guest_agent(&boot_args);
        self.telemetry.log(
            Level::Info,
            "main",
            "Successfully started microvm that was configured from one single json",
        );
        let _ = self.telemetry.write_metrics();
        let mc = &self.resources.machine_config;
        let console = self.console();
        let mut effects = vec![Effect::Booted {
            console: console.clone(),
            lines: console::boot_lines(&boot_args, mc.vcpu_count, mc.mem_size_mib),
        }];
        if let Some(bytes) = self.options.console_flood {
            console::flood(console.clone(), bytes);
        }
        if let Some(code) = self.options.exit_on_start {
            effects.push(Effect::Exit {
                code,
                after: GUEST_SHUTDOWN_DELAY,
                lines: vec![
                    "Kernel panic - not syncing: fake guest crash (FAKE_FC_EXIT_ON_START)".into(),
                ],
                console,
            });
        }
        Outcome {
            result: Ok(Reply::Empty),
            effects,
        }
    }

    fn create_snapshot(&mut self, params: &SnapshotCreateParams) -> Result<Reply, ActionError> {
        if self.state != VmState::Paused {
            return Err(ActionError::CreateSnapshot(
                "Cannot save the microVM state: Operation not allowed: save/restore unavailable while running".into(),
            ));
        }
        let diff = params.snapshot_type == Some(SnapshotType::Diff);
        let state = VmStateFile {
            magic: VMSTATE_MAGIC.into(),
            version: SNAPSHOT_VERSION.into(),
            snapshot_type: params.snapshot_type.unwrap_or_default(),
            resources: self.resources.clone(),
        };
        let text = serde_json::to_vec(&state).map_err(|e| {
            ActionError::CreateSnapshot(format!("Cannot serialize the microVM state: {e}"))
        })?;
        let backing = |op: &str, e: io::Error| {
            ActionError::CreateSnapshot(format!(
                "Cannot perform {op} on the snapshot backing file: {e}"
            ))
        };
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&params.snapshot_path)
            .map_err(|e| backing("open", e))?;
        f.write_all(&text).map_err(|e| backing("write", e))?;
        f.flush().map_err(|e| backing("flush", e))?;

        self.snapshot_memory_to_file(&params.mem_file_path, diff)?;
        Ok(Reply::Empty)
    }

    /// Firecracker's `snapshot_memory_to_file`: the file keeps its content when it
    /// already has the memory's size (a diff merges into it), is emptied
    /// otherwise; a full snapshot writes every page, a diff only the dirty ones.
    fn snapshot_memory_to_file(&mut self, path: &Path, diff: bool) -> Result<(), ActionError> {
        let mem = |op: &str, e: io::Error| {
            ActionError::CreateSnapshot(format!(
                "Cannot perform {op} on the memory backing file: {e}"
            ))
        };
        let expected = self.resources.machine_config.mem_size_mib << 20;
        let existed = path.exists();
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| mem("open", e))?;
        if existed {
            let len = file.metadata().map_err(|e| mem("get_metadata", e))?.len();
            if len != expected {
                file.set_len(0).map_err(|e| mem("truncate", e))?;
            }
        }
        file.set_len(expected).map_err(|e| mem("set_length", e))?;
        let Some(guest) = &self.guest else {
            return Ok(());
        };
        guest.quiesce();
        let memory = guest.memory();
        let write =
            |e: io::Error| ActionError::CreateSnapshot(format!("Cannot write memory file: {e}"));
        if diff {
            let track = self.resources.machine_config.track_dirty_pages;
            let pages = memory.diff_pages(track).map_err(|e| {
                ActionError::CreateSnapshot(format!("Cannot get dirty bitmap: {e}"))
            })?;
            memory.dump(&file, Some(&pages)).map_err(write)?;
            if track {
                // Reading KVM's dirty log clears it.
                memory.reset_dirty();
            }
        } else {
            memory.dump(&file, None).map_err(write)?;
            memory.reset_dirty();
        }
        Ok(())
    }

    fn load_snapshot(&mut self, params: SnapshotLoadParams) -> Outcome {
        if self.boot_path {
            self.telemetry.log(
                Level::Info,
                "fc_vmm",
                "Loading a microVM snapshot not allowed after configuring boot-specific resources.",
            );
            return Outcome::from(Err(ActionError::LoadSnapshot(
                "Loading a microVM snapshot not allowed after configuring boot-specific resources."
                    .into(),
            )));
        }
        match self.restore(&params) {
            Ok(()) => {
                self.state = if params.resume_vm == Some(true) {
                    VmState::Running
                } else {
                    VmState::Paused
                };
                let mut outcome = Outcome::from(Ok(Reply::Empty));
                if self.state == VmState::Running {
                    if let Some(g) = &self.guest {
                        g.resume();
                    }
                    let boot_args = self
                        .resources
                        .boot_source
                        .as_ref()
                        .and_then(|b| b.boot_args.clone())
                        .unwrap_or_default();
                    self.start_guest_agent(&boot_args);
                    outcome.effects.push(Effect::Booted {
                        console: self.console(),
                        lines: console::resume_lines(),
                    });
                }
                outcome
            }
            // A failed restore is fatal in Firecracker: it answers, then exits with 1.
            Err(message) => Outcome {
                result: Err(ActionError::LoadSnapshot(format!(
                    "Failed to restore from snapshot: {message}"
                ))),
                effects: vec![Effect::Exit {
                    code: 1,
                    after: Duration::ZERO,
                    lines: Vec::new(),
                    console: self.console(),
                }],
            },
        }
    }

    fn restore(&mut self, params: &SnapshotLoadParams) -> Result<(), String> {
        let text = std::fs::read(&params.snapshot_path).map_err(|e| {
            format!("Failed to get snapshot state from file: Failed to open snapshot file: {e}")
        })?;
        let state: VmStateFile = serde_json::from_slice(&text)
            .ok()
            .filter(|s: &VmStateFile| s.magic == VMSTATE_MAGIC)
            .ok_or_else(|| {
                "Failed to get snapshot state from file: Failed to load snapshot state from file: Magic value does not match arch: 0"
                    .to_owned()
            })?;
        let mut resources = state.resources;
        for o in params.network_overrides.iter().flatten() {
            let iface = resources
                .network_interfaces
                .iter_mut()
                .find(|n| n.iface_id == o.iface_id)
                .ok_or("Failed to get snapshot state from file: Unknown Network Device.")?;
            iface.host_dev_name = o.host_dev_name.clone();
        }
        for iface in &resources.network_interfaces {
            let tap = crate::tap::attach(&iface.host_dev_name).map_err(|e| {
                format!(
                    "Failed to restore network devices: {}",
                    crate::tap::open_error(&iface.host_dev_name, &e)
                )
            })?;
            self.taps.insert(iface.iface_id.clone(), tap);
        }
        if let Some(o) = &params.vsock_override {
            let vsock = resources
                .vsock
                .as_mut()
                .ok_or("Failed to get snapshot state from file: Unknown Vsock Device.")?;
            vsock.uds_path = o.uds_path.clone();
        }
        if let Some(vsock) = &resources.vsock {
            // Firecracker binds the (overridden) socket while it restores
            // the device: its directory must exist by then.
            let listener = UnixListener::bind(&vsock.uds_path).map_err(|e| {
                format!(
                    "Failed to restore devices: Vsock: Error binding to the host-side Unix socket: {e}"
                )
            })?;
            crate::vsock::serve(listener, vsock.uds_path.clone());
        }
        let (backend_type, backend_path) = match (&params.mem_backend, &params.mem_file_path) {
            (Some(b), _) => (b.backend_type, b.backend_path.clone()),
            (None, Some(p)) => (MemoryBackendType::File, p.clone()),
            (None, None) => unreachable!("checked when parsing"),
        };
        let mem_bytes = resources.machine_config.mem_size_mib << 20;
        let memory = match backend_type {
            MemoryBackendType::File => {
                let from_file = |e: String| {
                    format!(
                        "Failed to load guest memory: Error creating guest memory from file: {e}"
                    )
                };
                let file = File::open(&backend_path)
                    .map_err(|e| from_file(format!("Failed to load guest memory: {e}")))?;
                let len = file
                    .metadata()
                    .map_err(|e| from_file(format!("Failed to load guest memory: {e}")))?
                    .len();
                if len < mem_bytes {
                    return Err(from_file(
                        "Failed to restore guest memory: Cannot create guest memory".into(),
                    ));
                }
                GuestMemory::from_file(&file, mem_bytes)
                    .map_err(|e| from_file(format!("Failed to restore guest memory: {e}")))?
            }
            MemoryBackendType::Uffd => {
                let (memory, stream) =
                    GuestMemory::from_uffd(&backend_path, mem_bytes).map_err(|e| {
                        format!("Failed to load guest memory: Error creating guest memory from uffd: {e}")
                    })?;
                self.uffd = Some(stream);
                memory
            }
        };
        // Firecracker updates a few device pages while it restores, so a `Uffd`
        // load only completes once the page server answers.
        for offset in memory::RESTORE_TOUCHED_OFFSETS {
            memory.touch(offset);
        }
        resources.machine_config.track_dirty_pages =
            params.track_dirty_pages == Some(true) || params.enable_diff_snapshots == Some(true);
        self.guest = Some(Guest::restored(
            Arc::new(memory),
            self.console(),
            self.options.guest_touch,
        ));
        // Firecracker keeps the metadata service's configuration in a
        // snapshot, not its data store (docs/snapshotting): a restored VM
        // with a configuration has an empty store.
        resources.mmds = resources
            .mmds_config
            .as_ref()
            .map(|_| serde_json::Value::Object(serde_json::Map::new()));
        resources.serial = self.resources.serial.take();
        self.resources = resources;
        Ok(())
    }

    fn full_config(&self) -> FullConfigView<'_> {
        let r = &self.resources;
        FullConfigView {
            balloon: r.balloon.as_ref().map(BalloonView::from),
            drives: r.drives.iter().map(DriveView::from).collect(),
            boot_source: r.boot_source.as_ref().map_or_else(
                || BootSourceView {
                    kernel_image_path: String::new(),
                    initrd_path: None,
                    boot_args: None,
                },
                |b| BootSourceView {
                    kernel_image_path: b.kernel_image_path.display().to_string(),
                    initrd_path: b.initrd_path.as_ref().map(|p| p.display().to_string()),
                    boot_args: b.boot_args.clone(),
                },
            ),
            cpu_config: None,
            logger: None,
            machine_config: Some(&r.machine_config),
            metrics: None,
            mmds_config: r.mmds_config.as_ref().map(MmdsConfigView::from),
            network_interfaces: r.network_interfaces.iter().map(NetView::from).collect(),
            vsock: r.vsock.as_ref(),
            entropy: r.entropy.as_ref().map(EntropyView::from),
            pmem: &r.pmem,
            memory_hotplug: r.memory_hotplug.as_ref(),
        }
    }
}

impl Vmm {
    /// Starts the stand-in guest's agent when the VM has a vsock device
    /// and `FAKE_FC_AGENT` names one (see [`crate::vsock`]).
    fn start_guest_agent(&mut self, boot_args: &str) {
        let Some(vsock) = &self.resources.vsock else {
            return;
        };
        match crate::vsock::start_agent(&vsock.uds_path, boot_args) {
            Ok(agent) => self.agent = agent,
            Err(e) => self.telemetry.log(
                Level::Error,
                "fc_vmm",
                &format!("fake guest: cannot start the agent: {e}"),
            ),
        }
    }
}

fn bind_vsock(uds_path: &Path) -> Result<UnixListener, ActionError> {
    UnixListener::bind(uds_path).map_err(|e| {
        ActionError::Vsock(format!(
            "Cannot create backend for vsock device: Error binding to the host-side Unix socket: {e}"
        ))
    })
}

fn set_boot_source(res: &mut Resources, cfg: BootSource) -> Result<Reply, ActionError> {
    File::open(&cfg.kernel_image_path)
        .map_err(|e| ActionError::BootSource(format!("The kernel file cannot be opened: {e}")))?;
    if let Some(initrd) = &cfg.initrd_path {
        File::open(initrd).map_err(|e| {
            ActionError::BootSource(format!(
                "The initrd file cannot be opened due to invalid path or invalid permissions. {e}"
            ))
        })?;
    }
    res.boot_source = Some(cfg);
    Ok(Reply::Empty)
}

fn update_machine_config(
    res: &mut Resources,
    u: &MachineConfigUpdate,
) -> Result<Reply, ActionError> {
    let updated = res.machine_config.update(u)?;
    if let Some(b) = &res.balloon
        && u64::from(b.amount_mib) > updated.mem_size_mib
    {
        return Err(MachineConfigError::IncompatibleBalloonSize.into());
    }
    res.machine_config = updated;
    Ok(Reply::Empty)
}

fn insert_drive(res: &mut Resources, drive: Drive) -> Result<Reply, ActionError> {
    if drive.is_root_device && res.pmem.iter().any(|p| p.root_device == Some(true)) {
        return Err(ActionError::Drive(
            "Attempt to add block as a root device while the root device defined as a pmem device"
                .into(),
        ));
    }
    let position = res.drives.iter().position(|d| d.drive_id == drive.drive_id);
    let has_root = res.drives.first().is_some_and(|d| d.is_root_device);
    if drive.is_root_device && has_root && position != Some(0) {
        return Err(ActionError::Drive(
            "A root block device already exists!".into(),
        ));
    }
    match (&drive.path_on_host, &drive.socket) {
        (Some(path), _) => {
            let read_only = drive.is_read_only.unwrap_or(false);
            OpenOptions::new()
                .read(true)
                .write(!read_only)
                .open(path)
                .map_err(|e| {
                    ActionError::Drive(format!(
                        "Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: {}",
                        not_found_io(path, e)
                    ))
                })?;
        }
        (None, Some(socket)) => {
            UnixStream::connect(socket).map_err(|e| {
                ActionError::Drive(format!(
                    "Unable to create the virtio block device: Vhost user backend error: Vhost-user error: {e}"
                ))
            })?;
        }
        (None, None) => {
            return Err(ActionError::Drive(
                "Unable to create the virtio block device: Invalid block config.".into(),
            ));
        }
    }
    match position {
        None if drive.is_root_device => res.drives.insert(0, drive),
        None => res.drives.push(drive),
        Some(i) => {
            let root = drive.is_root_device;
            res.drives[i] = drive;
            if i != 0 && root {
                res.drives.swap(0, i);
            }
        }
    }
    Ok(Reply::Empty)
}

fn insert_pmem(res: &mut Resources, pmem: Pmem) -> Result<Reply, ActionError> {
    let root = pmem.root_device == Some(true);
    if root && res.drives.iter().any(|d| d.is_root_device) {
        return Err(ActionError::Pmem(
            "Attempt to add pmem as a root device while the root device defined as a block device"
                .into(),
        ));
    }
    if root
        && res
            .pmem
            .iter()
            .any(|p| p.root_device == Some(true) && p.id != pmem.id)
    {
        return Err(ActionError::Pmem("A root pmem device already exist".into()));
    }
    File::open(&pmem.path_on_host)
        .map_err(|e| ActionError::Pmem(format!("Error accessing underlying file: {e}")))?;
    match res.pmem.iter().position(|p| p.id == pmem.id) {
        Some(i) => res.pmem[i] = pmem,
        None => res.pmem.push(pmem),
    }
    Ok(Reply::Empty)
}

/// Opens the interface's TAP (when it exists), then records the interface.
fn put_net(
    taps: &mut std::collections::HashMap<String, std::os::fd::OwnedFd>,
    res: &mut Resources,
    iface: NetworkInterface,
) -> Result<Reply, ActionError> {
    check_mac_free(res, &iface)?;
    // As Firecracker: an update drops the old device (and its TAP) first,
    // so a failed update leaves none, and the new one goes to the end.
    if let Some(i) = res
        .network_interfaces
        .iter()
        .position(|n| n.iface_id == iface.iface_id)
    {
        res.network_interfaces.swap_remove(i);
        taps.remove(&iface.iface_id);
        if let Some(mmds) = &res.mmds_config
            && mmds.network_interfaces.contains(&iface.iface_id)
        {
            res.mmds_config = None;
        }
    }
    if let Some(mtu) = iface.mtu
        && !(68..=65535).contains(&mtu)
    {
        return Err(ActionError::Network(format!(
            "Could not create the network device: MTU {mtu} is out of range [68, 65535]"
        )));
    }
    let tap = crate::tap::attach(&iface.host_dev_name)
        .map_err(|e| ActionError::Network(crate::tap::open_error(&iface.host_dev_name, &e)))?;
    taps.insert(iface.iface_id.clone(), tap);
    res.network_interfaces.push(iface);
    Ok(Reply::Empty)
}

/// Refuses a MAC another interface has.
fn check_mac_free(res: &Resources, iface: &NetworkInterface) -> Result<(), ActionError> {
    if let Some(mac) = &iface.guest_mac
        && res
            .network_interfaces
            .iter()
            .any(|n| n.iface_id != iface.iface_id && n.guest_mac.as_ref() == Some(mac))
    {
        return Err(ActionError::Network(format!(
            "The MAC address is already in use: {mac}"
        )));
    }
    Ok(())
}

fn set_balloon(res: &mut Resources, cfg: Balloon) -> Result<Reply, ActionError> {
    if u64::from(cfg.amount_mib) > res.machine_config.mem_size_mib {
        return Err(ActionError::BalloonConfig(
            "Amount of pages requested is too large.".into(),
        ));
    }
    res.balloon = Some(cfg);
    Ok(Reply::Empty)
}

fn set_mmds_config(res: &mut Resources, mut cfg: MmdsConfig) -> Result<Reply, ActionError> {
    if let Some(ip) = &cfg.ipv4_address
        && !ip.is_link_local()
    {
        return Err(ActionError::MmdsConfig(
            "The MMDS IPv4 address is not link local.".into(),
        ));
    }
    // Firecracker keeps the interfaces as a set.
    let mut seen = std::collections::HashSet::new();
    cfg.network_interfaces.retain(|id| seen.insert(id.clone()));
    if cfg.network_interfaces.is_empty() {
        return Err(ActionError::MmdsConfig(
            "The list of network interface IDs that allow forwarding MMDS requests is empty."
                .into(),
        ));
    }
    if cfg
        .network_interfaces
        .iter()
        .any(|id| !res.network_interfaces.iter().any(|n| &n.iface_id == id))
    {
        return Err(ActionError::MmdsConfig(
            "The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface."
                .into(),
        ));
    }
    res.mmds.get_or_insert(serde_json::Value::Null);
    res.mmds_config = Some(cfg);
    Ok(Reply::Empty)
}

fn mmds_reply(value: &serde_json::Value) -> Reply {
    match value {
        serde_json::Value::Null => Reply::Json("{}".into()),
        v => Reply::Json(v.to_string()),
    }
}

fn check_mmds_size(value: &serde_json::Value, limit: usize) -> Result<(), ActionError> {
    if value.to_string().len() > limit {
        return Err(ActionError::MmdsLimit(
            "The MMDS patch request doesn't fit.".into(),
        ));
    }
    Ok(())
}

fn put_mmds(
    store: &mut serde_json::Value,
    value: serde_json::Value,
    limit: usize,
) -> Result<Reply, ActionError> {
    check_mmds_size(&value, limit)?;
    *store = value;
    Ok(Reply::Empty)
}

fn patch_mmds(
    store: &mut serde_json::Value,
    patch: serde_json::Value,
    limit: usize,
) -> Result<Reply, ActionError> {
    let mut merged = store.clone();
    merge_patch(&mut merged, patch);
    check_mmds_size(&merged, limit)?;
    *store = merged;
    Ok(Reply::Empty)
}

/// RFC 7396 JSON merge patch, which Firecracker's MMDS PATCH applies.
fn merge_patch(target: &mut serde_json::Value, patch: serde_json::Value) {
    match patch {
        serde_json::Value::Object(map) => {
            if !target.is_object() {
                *target = serde_json::Value::Object(serde_json::Map::new());
            }
            if let serde_json::Value::Object(t) = target {
                for (k, v) in map {
                    if v.is_null() {
                        t.remove(&k);
                    } else {
                        merge_patch(t.entry(k).or_insert(serde_json::Value::Null), v);
                    }
                }
            }
        }
        other => *target = other,
    }
}

/// `GET /balloon/statistics` in Firecracker's field order. Without a
/// guest driver nothing was inflated and the guest reported nothing.
fn balloon_stats(b: &Balloon, mem_size_mib: u64, driver: bool) -> String {
    #[derive(Serialize)]
    struct Stats {
        target_pages: u64,
        actual_pages: u64,
        target_mib: u32,
        actual_mib: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        total_memory: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        available_memory: Option<u64>,
    }
    let target_pages = u64::from(b.amount_mib) * 256;
    let stats = Stats {
        target_pages,
        actual_pages: if driver { target_pages } else { 0 },
        target_mib: b.amount_mib,
        actual_mib: if driver { b.amount_mib } else { 0 },
        total_memory: driver.then_some(mem_size_mib << 20),
        available_memory: driver
            .then(|| mem_size_mib.saturating_sub(u64::from(b.amount_mib)) << 20),
    };
    serde_json::to_string(&stats).unwrap_or_else(|_| "{}".to_owned())
}

fn json_reply<T: Serialize>(value: &T) -> Reply {
    Reply::Json(serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned()))
}

/// `GET /vm/config` in Firecracker's field order (`VmmConfig`, kebab-case, nulls kept).
#[derive(Serialize)]
struct FullConfigView<'a> {
    balloon: Option<BalloonView>,
    drives: Vec<DriveView>,
    #[serde(rename = "boot-source")]
    boot_source: BootSourceView,
    #[serde(rename = "cpu-config")]
    cpu_config: Option<()>,
    logger: Option<()>,
    #[serde(rename = "machine-config")]
    machine_config: Option<&'a MachineConfig>,
    metrics: Option<()>,
    #[serde(rename = "mmds-config")]
    mmds_config: Option<MmdsConfigView>,
    #[serde(rename = "network-interfaces")]
    network_interfaces: Vec<NetView>,
    vsock: Option<&'a Vsock>,
    entropy: Option<EntropyView>,
    pmem: &'a [Pmem],
    #[serde(rename = "memory-hotplug")]
    memory_hotplug: Option<&'a MemoryHotplugConfig>,
}

#[derive(Serialize)]
struct BootSourceView {
    kernel_image_path: String,
    initrd_path: Option<String>,
    boot_args: Option<String>,
}

/// Applies a `--config-file` document: the same actions, in Firecracker's order,
/// then `InstanceStart`.
pub fn config_file_actions(text: &str) -> Result<Vec<Action>, serde_json::Error> {
    let c: firehost_api::FullVmConfiguration = serde_json::from_str(text)?;
    let mut actions = Vec::new();
    if let Some(l) = c.logger {
        actions.push(Action::PutLogger(l));
    }
    if let Some(m) = c.metrics {
        actions.push(Action::PutMetrics(m));
    }
    if let Some(m) = c.machine_config {
        actions.push(Action::PutMachineConfig(m.into()));
    }
    if let Some(cpu) = c.cpu_config {
        actions.push(Action::PutCpuConfig(Box::new(cpu)));
    }
    if let Some(b) = c.boot_source {
        actions.push(Action::PutBootSource(b));
    }
    for d in c.drives.into_iter().flatten() {
        actions.push(Action::PutDrive(d));
    }
    for p in c.pmem.into_iter().flatten() {
        actions.push(Action::PutPmem(p));
    }
    for n in c.network_interfaces.into_iter().flatten() {
        actions.push(Action::PutNetworkInterface(n));
    }
    if let Some(v) = c.vsock {
        actions.push(Action::PutVsock(v));
    }
    if let Some(b) = c.balloon {
        actions.push(Action::PutBalloon(b));
    }
    if let Some(e) = c.entropy {
        actions.push(Action::PutEntropy(e));
    }
    if let Some(m) = c.mmds_config {
        actions.push(Action::PutMmdsConfig(m));
    }
    if let Some(m) = c.memory_hotplug {
        actions.push(Action::PutMemoryHotplug(m));
    }
    actions.push(Action::InstanceStart);
    Ok(actions)
}

/// Reads the data format version of a vmstate file (`--describe-snapshot`).
///
/// The error is Firecracker's `SnapshotError`: its `Display` (logged) and its
/// `Debug` (inside `PrintSnapshotDataFormat(...)` on stderr). A file that is not
/// the fake's vmstate gets the answer Firecracker gives for a file that is not
/// its own format.
pub fn describe_snapshot(path: &Path) -> Result<String, (String, String)> {
    let text = std::fs::read(path).map_err(|e| {
        (
            format!("When printing Snapshot Data format: Unable to open snapshot state file: {e}"),
            format!("OpenSnapshot({e:?})"),
        )
    })?;
    let state: VmStateFile = serde_json::from_slice(&text).map_err(|_| {
        (
            "When printing Snapshot Data format: Invalid data format version of snapshot file: An error occurred during bitcode serialization: bitcode error".to_owned(),
            "SnapshotVersion(Bitcode(Error(\"bitcode error\")))".to_owned(),
        )
    })?;
    Ok(format!("v{}", state.version))
}

/// Where a path's parent must exist for a file to be created there.
pub fn parent_dir(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmm() -> Vmm {
        Vmm::new(
            VmmOptions {
                id: "t".into(),
                mmds_size_limit: 51_200,
                ..Default::default()
            },
            Telemetry::new("t"),
        )
    }

    #[test]
    fn machine_config_rules_match_firecracker() {
        let cases: &[(MachineConfigUpdate, Option<MachineConfigError>)] = &[
            (
                MachineConfigUpdate {
                    vcpu_count: Some(0),
                    ..Default::default()
                },
                Some(MachineConfigError::InvalidVcpuCount),
            ),
            (
                MachineConfigUpdate {
                    vcpu_count: Some(33),
                    ..Default::default()
                },
                Some(MachineConfigError::InvalidVcpuCount),
            ),
            (
                MachineConfigUpdate {
                    vcpu_count: Some(3),
                    smt: Some(true),
                    ..Default::default()
                },
                Some(MachineConfigError::InvalidVcpuCount),
            ),
            (
                MachineConfigUpdate {
                    vcpu_count: Some(1),
                    smt: Some(true),
                    ..Default::default()
                },
                None,
            ),
            (
                MachineConfigUpdate {
                    mem_size_mib: Some(0),
                    ..Default::default()
                },
                Some(MachineConfigError::InvalidMemorySize),
            ),
            (
                MachineConfigUpdate {
                    mem_size_mib: Some(129),
                    huge_pages: Some(HugePages::Hugetlbfs2M),
                    ..Default::default()
                },
                Some(MachineConfigError::InvalidMemorySize),
            ),
            (
                MachineConfigUpdate {
                    vcpu_count: Some(32),
                    mem_size_mib: Some(4096),
                    ..Default::default()
                },
                None,
            ),
        ];
        for (update, expected) in cases {
            assert_eq!(
                MachineConfig::default().update(update).err(),
                *expected,
                "{update:?}"
            );
        }
    }

    #[test]
    fn runtime_actions_are_refused_before_boot() {
        let mut v = vmm();
        let err = v.handle(Action::Pause).result.unwrap_err();
        assert_eq!(
            err.to_string(),
            "The requested operation is not supported before starting the microVM."
        );
    }

    #[test]
    fn instance_start_needs_a_kernel() {
        let mut v = vmm();
        let err = v.handle(Action::InstanceStart).result.unwrap_err();
        assert_eq!(
            err.to_string(),
            "Start microvm error: Cannot start microvm without kernel configuration."
        );
        assert_eq!(v.state(), VmState::NotStarted);
    }

    #[test]
    fn mmds_patch_merges() {
        let mut store = serde_json::json!({"a": {"b": 1, "c": 2}});
        merge_patch(&mut store, serde_json::json!({"a": {"b": null, "d": 3}}));
        assert_eq!(store, serde_json::json!({"a": {"c": 2, "d": 3}}));
    }
}
