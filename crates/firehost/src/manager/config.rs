//! How a [`Manager`](super::Manager) runs its VMs.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::console::DEFAULT_CONSOLE_LINES;
use crate::net::host::NetworkConfig;
use crate::spec::HostDefaults;
use crate::vmm::spawn::DEFAULT_NOFILE_LIMIT;
use crate::vmm::{LogLevel, SeccompPolicy};

/// Where the state directory lives when nothing else is said.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/firehost";

/// Where VM consoles go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsoleTarget {
    /// Into the in-memory ring only. The console is lost if the manager
    /// exits while the VM runs on.
    #[default]
    Ring,
    /// Into the ring and into `console.log` in the VM's directory.
    RingAndFile,
    /// Straight into `console.log` in the VM's directory, with no pipe to
    /// the manager: for VMs that outlive the process that started them
    /// (the CLI uses this).
    File,
}

/// The deadlines of a manager's waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// From spawn until the API socket accepts connections.
    pub api_socket: Duration,
    /// One API request, connect included.
    pub request: Duration,
    /// Stop: how long the guest gets to shut down after Ctrl-Alt-Del, and
    /// the VMM after SIGTERM (each), unless the stop call says otherwise.
    pub stop_grace: Duration,
    /// Stop: how long to wait for the exit after SIGKILL before reporting
    /// an error.
    pub after_kill: Duration,
    /// Opening: how long to wait for another manager to release the state
    /// directory. Zero fails at once.
    pub lock: Duration,
    /// How long a VMM adopted from an earlier manager gets to answer its
    /// first request (`GET /`). A VMM that is alive but does not answer in
    /// time is reported busy (it may be writing a snapshot), never killed.
    pub probe: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            api_socket: Duration::from_secs(5),
            request: Duration::from_secs(10),
            stop_grace: Duration::from_secs(10),
            after_kill: Duration::from_secs(10),
            lock: Duration::ZERO,
            probe: Duration::from_millis(500),
        }
    }
}

/// How much a manager does when it opens a state directory that VMs
/// already live in (see [`Manager`](super::Manager)'s recovery section).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recovery {
    /// Read every VM's record at open: re-attach to the live VMs (pid,
    /// start time and pidfd; no API round trip), reap what dead ones and
    /// half-made ones left, reconcile the network. The choice of a
    /// long-lived service: it pays once, at open, in proportion to the
    /// number of VMs.
    #[default]
    Full,
    /// Read nothing at open. A VM is loaded (and reaped if it died) the
    /// first time it is named; every VM is loaded, and what dead ones left
    /// reaped, on the first [`list`](super::Manager::list) or the first
    /// operation that needs the whole host (the network, jail uids). The
    /// choice of short-lived processes that touch one VM (the CLI): their
    /// cost does not grow with the number of VMs.
    Lazy,
    /// Like [`Lazy`](Self::Lazy), but loading never changes anything: no
    /// process is killed, no record rewritten, nothing reaped, the network
    /// not reconciled. A VM that died is reported failed without being
    /// cleaned up. For commands that only look (`ls`, `inspect`).
    /// Explicit operations still act.
    ReadOnly,
}

/// A manager's configuration: where state lives, which binary to run, the
/// host's defaults for VM specs, and how VMMs are started.
///
/// # Examples
///
/// ```
/// use firehost::manager::ManagerConfig;
///
/// let mut config = ManagerConfig::new("/tmp/firehost-doc", "/usr/local/bin/firecracker");
/// config.defaults.mem_mib = 256;
/// config.console_lines = 500;
/// ```
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Records, sockets and consoles live here (created 0700).
    pub state_dir: PathBuf,
    /// The Firecracker binary: a path, or a bare name looked up in `PATH`
    /// when the manager opens.
    pub firecracker: PathBuf,
    /// Fallbacks for unset [`VmSpec`](crate::VmSpec) fields.
    pub defaults: HostDefaults,
    /// Where consoles go.
    pub console: ConsoleTarget,
    /// Lines kept in each VM's console ring.
    pub console_lines: usize,
    /// When set, Firecracker logs at this level into `firecracker.log` in
    /// the VM's directory.
    pub vmm_log: Option<LogLevel>,
    /// When set, Firecracker writes metrics into `metrics.json` in the VM's
    /// directory.
    pub vmm_metrics: bool,
    /// The seccomp filter Firecracker installs. Anything but the default
    /// is logged as a warning at every spawn.
    pub seccomp: SeccompPolicy,
    /// Pass `--boot-timer`: Firecracker logs how long the guest took to
    /// boot (the guest must write to the boot-timer port).
    pub boot_timer: bool,
    /// `RLIMIT_NOFILE` of each VMM.
    pub nofile_limit: u64,
    /// The VMM's whole environment (nothing is inherited from the manager).
    pub vmm_env: Vec<(OsString, OsString)>,
    /// Deadlines.
    pub timeouts: Timeouts,
    /// The default network: bridge, subnet, uplink, DNS, allowed host
    /// services. Nothing on the host changes until a VM asks for a network.
    pub network: NetworkConfig,
    /// Run each restore's userfaultfd page server in a helper process of
    /// its own (see [`crate::snapshot::uffd::PageServerProgram`]) instead
    /// of in this process, so restored VMs outlive this process. `None`
    /// (the default): in this process.
    pub page_server_program: Option<crate::snapshot::uffd::PageServerProgram>,
    /// The bound of every file written for a guest: the console file, and
    /// with [`ConsoleTarget::File`] Firecracker's log and metrics (see
    /// [`crate::bounded_log`]). Default 8 MiB per file (twice that with its
    /// rotated predecessor).
    pub log_limits: crate::bounded_log::LogLimits,
    /// With [`ConsoleTarget::File`], run each VM's log keeper (see
    /// [`crate::vmm::keeper`]) in a process of its own, so its files keep
    /// filling after this process exits. `None` (the default): a thread of
    /// this process.
    pub log_keeper_program: Option<crate::vmm::keeper::KeeperProgram>,
    /// Jail VMs with Firecracker's jailer (see [`crate::jail`]): those
    /// whose spec asks, or all with [`JailConfig::always`]. `None`: a spec
    /// asking for a jail is refused.
    ///
    /// [`JailConfig::always`]: crate::jail::JailConfig::always
    pub jail: Option<crate::jail::JailConfig>,
    /// What opening the state directory does to the VMs already in it.
    pub recovery: Recovery,
    /// What to do when the host settings recorded in the state directory
    /// (network and jail: see [`crate::manager::settings`]) differ from
    /// `network` and `jail`.
    pub settings: SettingsPolicy,
    /// Keep each warm pool at its size in the background (default true).
    /// Off, pools are filled only by
    /// [`Manager::pool_fill`](super::Manager::pool_fill): for short-lived
    /// managers, such as the CLI's, whose background work would die with
    /// the process.
    pub pool_refill: bool,
}

/// What [`Manager::open`](super::Manager::open) does with host settings
/// that differ from the ones recorded in the state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SettingsPolicy {
    /// Refuse to open ([`ManagerError::SettingsDiffer`]): VMs live on the
    /// recorded network, and a manager with another subnet or bridge would
    /// rewrite it under them.
    ///
    /// [`ManagerError::SettingsDiffer`]: super::ManagerError::SettingsDiffer
    #[default]
    Require,
    /// Use the recorded settings in place of the configuration's.
    Adopt,
    /// Record the configuration's settings in place of the old ones;
    /// refused ([`ManagerError::SettingsInUse`]) while a live VM depends on
    /// a setting that changes.
    ///
    /// [`ManagerError::SettingsInUse`]: super::ManagerError::SettingsInUse
    Change,
}

impl ManagerConfig {
    /// A configuration with firehost's defaults for everything but the two
    /// things a host must say.
    pub fn new(state_dir: impl Into<PathBuf>, firecracker: impl Into<PathBuf>) -> Self {
        ManagerConfig {
            state_dir: state_dir.into(),
            firecracker: firecracker.into(),
            defaults: HostDefaults::default(),
            console: ConsoleTarget::default(),
            console_lines: DEFAULT_CONSOLE_LINES,
            vmm_log: None,
            vmm_metrics: false,
            seccomp: SeccompPolicy::Default,
            boot_timer: false,
            nofile_limit: DEFAULT_NOFILE_LIMIT,
            vmm_env: Vec::new(),
            timeouts: Timeouts::default(),
            network: NetworkConfig::default(),
            page_server_program: None,
            log_limits: crate::bounded_log::LogLimits::default(),
            log_keeper_program: None,
            jail: None,
            recovery: Recovery::default(),
            settings: SettingsPolicy::default(),
            pool_refill: true,
        }
    }
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig::new(DEFAULT_STATE_DIR, "firecracker")
    }
}

pub use crate::fsutil::find_binary;
