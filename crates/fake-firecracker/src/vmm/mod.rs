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
//!
//! This module dispatches each action by state; what an action does to one
//! resource lives in that resource's module, as in Firecracker's own `vmm`
//! crate: `machine` (machine config, boot source), `drives` (block and
//! pmem), `net`, `vsock`, `balloon`, `mmds` and `snapshot` (create
//! and load); `config_file` turns `--config-file` into actions.

mod balloon;
mod config_file;
mod drives;
mod limits;
mod machine;
mod mmds;
mod net;
mod snapshot;
mod vsock;

pub use config_file::config_file_actions;
pub use machine::{MachineConfig, MachineConfigError};
pub use snapshot::describe_snapshot;

use std::fs::File;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use firehost_api::{
    Balloon, BootSource, CpuConfig, Drive, EntropyDevice, LogLevel, MemoryHotplugConfig,
    MmdsConfig, NetworkInterface, Pmem, SerialDevice, Vsock,
};
use serde::{Deserialize, Serialize};

use crate::action::Action;
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
                machine::set_boot_source(res, cfg)
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
            Action::GetMmds => Ok(mmds::mmds_reply(
                res.mmds.get_or_insert(serde_json::Value::Null),
            )),
            Action::PutDrive(drive) => {
                self.boot_path = true;
                drives::insert_drive(res, drive)
            }
            Action::PutPmem(pmem) => {
                self.boot_path = true;
                drives::insert_pmem(res, pmem)
            }
            Action::PutNetworkInterface(iface) => {
                self.boot_path = true;
                net::put_net(&mut self.taps, res, iface)
            }
            Action::LoadSnapshot(params) => return self.load_snapshot(params),
            Action::PatchMmds(value) => {
                // Only a PUT (or an MMDS configuration) creates the store.
                let limit = self.options.mmds_size_limit;
                match res.mmds.as_mut() {
                    Some(store) => mmds::patch_mmds(store, value, limit),
                    None => Err(ActionError::Mmds(
                        "The MMDS data store is not initialized.".into(),
                    )),
                }
            }
            Action::PutCpuConfig(cfg) => {
                // A custom template replaces a static one, as in Firecracker.
                res.cpu_config = Some(*cfg);
                res.machine_config.cpu_template = None;
                Ok(Reply::Empty)
            }
            Action::PutMmds(value) => {
                let limit = self.options.mmds_size_limit;
                mmds::put_mmds(
                    res.mmds.get_or_insert(serde_json::Value::Null),
                    value,
                    limit,
                )
            }
            Action::PutBalloon(cfg) => {
                self.boot_path = true;
                balloon::set_balloon(res, cfg)
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
                match vsock::bind_vsock(&cfg.uds_path) {
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
                mmds::set_mmds_config(res, cfg)
            }
            Action::InstanceStart => return self.start_microvm(),
            Action::PutMachineConfig(u) | Action::PatchMachineConfig(u) => {
                self.boot_path = true;
                machine::update_machine_config(res, &u)
            }
            Action::PutEntropy(mut cfg) => {
                self.boot_path = true;
                cfg.rate_limiter = limits::configured(cfg.rate_limiter);
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
                .flush_metrics()
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
                    balloon::balloon_stats(
                        b,
                        self.resources.machine_config.mem_size_mib,
                        self.options.balloon_driver.then(|| self.balloon_pages()),
                    ),
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
                Some(v) if self.resources.mmds_config.is_some() => Ok(mmds::mmds_reply(v)),
                _ => Err(ActionError::Mmds(
                    "The MMDS data store is not initialized.".into(),
                )),
            },
            Action::PatchMmds(value) => {
                let limit = self.options.mmds_size_limit;
                match (&mut self.resources.mmds, &self.resources.mmds_config) {
                    (Some(v), Some(_)) => mmds::patch_mmds(v, value, limit),
                    _ => Err(ActionError::Mmds(
                        "The MMDS data store is not initialized.".into(),
                    )),
                }
            }
            Action::PutMmds(value) => {
                let limit = self.options.mmds_size_limit;
                match (&mut self.resources.mmds, &self.resources.mmds_config) {
                    (Some(v), Some(_)) => mmds::put_mmds(v, value, limit),
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
            Action::PutDrive(drive) => drives::insert_drive(&mut self.resources, drive),
            Action::PutPmem(pmem) => drives::insert_pmem(&mut self.resources, pmem),
            Action::PutNetworkInterface(iface) => net::put_net(&mut self.taps, &mut self.resources, iface),
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
                self.sync_balloon();
                // A guest loaded paused runs for the first time now: its
                // agent starts, as it would on a load that resumes.
                if self.agent.is_none() {
                    self.start_guest_agent(&self.boot_args());
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
                        self.sync_balloon();
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
                        d.rate_limiter = limits::patched(d.rate_limiter, u.rate_limiter);
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
                    n.rx_rate_limiter = limits::patched(n.rx_rate_limiter, u.rx_rate_limiter);
                    n.tx_rate_limiter = limits::patched(n.tx_rate_limiter, u.tx_rate_limiter);
                    Ok(Reply::Empty)
                }
            },
            Action::PatchPmem(u) => match self.resources.pmem.iter_mut().find(|p| p.id == u.id) {
                None => Err(ActionError::Pmem(
                    "Unable to patch the pmem device: Failed perform action on device: Device not found Please verify the request arguments.".into(),
                )),
                Some(p) => {
                    p.rate_limiter = limits::patched(p.rate_limiter, u.rate_limiter);
                    Ok(Reply::Empty)
                }
            },
            Action::PatchMemoryHotplug(_) => match &self.resources.memory_hotplug {
                // The fake's guest has no virtio-mem driver: the device never
                // activates, as in a guest without one.
                Some(_) => Err(ActionError::MemoryHotplugUpdate(
                    "Failed to create memory hotplug device: Device is not active".into(),
                )),
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

    /// The guest's balloon driver, when it has one, fills or empties the
    /// balloon to its target while the guest runs.
    fn sync_balloon(&mut self) {
        if !self.options.balloon_driver || self.state != VmState::Running {
            return;
        }
        let failed = match (&self.resources.balloon, &self.guest) {
            (Some(b), Some(g)) => {
                let pages = usize::try_from(b.amount_mib).unwrap_or(usize::MAX) * 256;
                let held = g.memory().balloon_pages();
                if pages > held {
                    self.telemetry.counters.balloon_inflates += 1;
                } else if pages < held {
                    self.telemetry.counters.balloon_deflates += 1;
                }
                g.memory().set_balloon(pages).err()
            }
            _ => None,
        };
        if let Some(e) = failed {
            self.telemetry.log(
                Level::Error,
                "balloon",
                &format!("discard_range failed: {e}"),
            );
        }
    }

    /// Writes a metrics line with a group for each drive and NIC.
    pub(crate) fn flush_metrics(&mut self) -> std::io::Result<()> {
        let devices = crate::telemetry::MetricDevices {
            drives: self
                .resources
                .drives
                .iter()
                .map(|d| d.drive_id.clone())
                .collect(),
            nics: self
                .resources
                .network_interfaces
                .iter()
                .map(|n| n.iface_id.clone())
                .collect(),
        };
        self.telemetry.write_metrics(&devices)
    }

    /// Pages the guest's balloon holds.
    fn balloon_pages(&self) -> usize {
        self.guest
            .as_ref()
            .map_or(0, |g| g.memory().balloon_pages())
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
        self.sync_balloon();
        self.start_guest_agent(&boot_args);
        self.telemetry.log(
            Level::Info,
            "main",
            "Successfully started microvm that was configured from one single json",
        );
        let _ = self.flush_metrics();
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
    /// The guest's kernel command line, as configured (or restored).
    fn boot_args(&self) -> String {
        self.resources
            .boot_source
            .as_ref()
            .and_then(|b| b.boot_args.clone())
            .unwrap_or_default()
    }

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
}
