//! The `--json` contract.
//!
//! With `--json`, every command that succeeds prints exactly one JSON
//! object on one line on stdout. The objects are this CLI's own types, not
//! the library's, so the library can change without breaking scripts.
//!
//! **Stability.** Fields are added, never renamed, removed or retyped.
//! Consumers must ignore fields they don't know. Enumerated strings
//! (`state`, `status`) may gain new values. A field documented as
//! "or null" is always present.
//!
//! **Errors.** A command that fails prints nothing on stdout, one line on
//! stderr (`firehost: <error>: <cause>…`) and exits non-zero (see
//! [`Exit`](crate::exit::Exit)). Two commands print their report on stdout
//! and *then* fail: `doctor` (exit 2 if a check failed) and `quickstart`
//! (exit 2 with `"ready": false` if something is missing).
//!
//! Paths are strings (non-UTF-8 bytes replaced by U+FFFD); times are
//! milliseconds since the Unix epoch (`_ms` integers) or durations in
//! milliseconds (`_ms` floats).
//!
//! # The VM object ([`VmJson`])
//!
//! Printed by `run`, `inspect`, `pause`, `resume` and `stop`, and as each
//! element of `ls`'s `vms`:
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `name` | string | the VM's name |
//! | `state` | string | `created`, `running`, `paused`, `stopped` or `failed` |
//! | `pid` | integer or null | the VMM's pid while it runs |
//! | `api_socket` | string | Firecracker's API socket |
//! | `dir` | string | the VM's directory in the state directory |
//! | `console_file` | string or null | where the serial console is written |
//! | `log_file` | string or null | Firecracker's own log, when it exists |
//! | `vcpus` | integer | vCPU count |
//! | `mem_mib` | integer | guest memory, MiB |
//! | `smt` | boolean | simultaneous multithreading |
//! | `kernel` | string | canonical kernel path |
//! | `initrd` | string or null | canonical initrd path |
//! | `rootfs` | string or null | canonical root filesystem path |
//! | `rootfs_read_only` | boolean | root filesystem attached read-only |
//! | `boot_args` | string | kernel command line |
//! | `created_at_ms` | integer | creation time |
//! | `exit` | object or null | for `stopped` and `failed` VMs: how the VMM ended, `{"code": integer or null, "signal": integer or null}`; both null when no firehost process saw the exit |
//! | `console_tail` | array of strings or null | for `failed` VMs: the last console lines when the VMM died |
//!
//! # Per command
//!
//! | command | object |
//! | --- | --- |
//! | `run`, `inspect`, `pause`, `resume`, `stop` | the VM object, after the operation |
//! | `ls` | `{"vms": [VM object…]}`, sorted by name |
//! | `rm` | [`RemovedJson`]: `{"name": string, "removed": true, "stopped": boolean}`; `stopped` is true when `-f` had to stop the VM first |
//! | `snapshot` | [`SnapshotJson`]: `{"name", "vm", "dir", "firecracker_version": string, "vmstate_bytes", "memory_bytes", "created_at_ms": integer, "vm_state": string}`; `vm_state` is the VM's state afterwards |
//! | `console` | [`ConsoleJson`]: `{"name": string, "lines": [string…]}`, oldest first; VMM stderr lines start with `[vmm] ` |
//! | `doctor` | [`DoctorJson`]: `{"ok": boolean, "checks": [check…]}` |
//! | `quickstart` | [`QuickstartJson`], below |
//!
//! A check ([`CheckJson`]) is `{"name": string, "status": "ok" | "warn" |
//! "fail", "detail": string, "fix": string or null}`; the names are those
//! of [`firehost::doctor`] (`kvm`, `firecracker`, `jailer`, `host_kernel`,
//! `tun`, `nft`, `cgroup`, `userfaultfd`, `state_dir`).
//!
//! `quickstart` prints `{"ready": boolean, "missing": [{"what": string,
//! "fix": string}…], "checks": [check…], "state_dir": string, "vm": string
//! or null, "timings_ms": object or null, "console_tail": [string…]}`. When
//! `ready` is false, `missing` says what to supply and nothing was started
//! (`vm` and `timings_ms` are null). Otherwise `timings_ms` is
//! `{"create_ms", "start_ms": float, "first_output_ms": float or null,
//! "stop_ms", "destroy_ms", "total_ms": float}` and `state_dir` (the
//! temporary one) no longer exists.

use std::path::Path;

use firehost::doctor::{Check, CheckStatus};
use firehost::snapshot::SnapshotInfo;
use firehost::{ExitReason, VmInfo, VmState};
use serde::Serialize;

/// A VM. See the [module docs](self).
#[derive(Debug, Clone, Serialize)]
pub struct VmJson {
    /// Its name.
    pub name: String,
    /// `created`, `running`, `paused`, `stopped` or `failed`.
    pub state: &'static str,
    /// The VMM's pid while it runs.
    pub pid: Option<i32>,
    /// Firecracker's API socket.
    pub api_socket: String,
    /// The VM's directory.
    pub dir: String,
    /// The console file.
    pub console_file: Option<String>,
    /// Firecracker's log file, when it exists.
    pub log_file: Option<String>,
    /// vCPU count.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// SMT on.
    pub smt: bool,
    /// Kernel path.
    pub kernel: String,
    /// Initrd path.
    pub initrd: Option<String>,
    /// Root filesystem path.
    pub rootfs: Option<String>,
    /// Root filesystem read-only.
    pub rootfs_read_only: bool,
    /// Kernel command line.
    pub boot_args: String,
    /// Creation time, ms since the epoch.
    pub created_at_ms: u64,
    /// How the VMM ended, for stopped and failed VMs.
    pub exit: Option<ExitJson>,
    /// The console when the VMM died, for failed VMs.
    pub console_tail: Option<Vec<String>>,
}

/// How a VMM ended: an exit code, a signal, or neither when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExitJson {
    /// The exit code.
    pub code: Option<i32>,
    /// The terminating signal.
    pub signal: Option<i32>,
}

impl From<&ExitReason> for ExitJson {
    fn from(exit: &ExitReason) -> Self {
        match exit {
            ExitReason::Code(c) => ExitJson {
                code: Some(*c),
                signal: None,
            },
            ExitReason::Signal(s) => ExitJson {
                code: None,
                signal: Some(*s),
            },
            _ => ExitJson {
                code: None,
                signal: None,
            },
        }
    }
}

/// Where the library puts Firecracker's log in a VM's directory (with
/// `ManagerConfig::vmm_log`, which the CLI sets).
const VMM_LOG_FILE: &str = "firecracker.log";

/// A path as a JSON string.
pub fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl From<&VmInfo> for VmJson {
    fn from(vm: &VmInfo) -> Self {
        let (exit, console_tail) = match &vm.state {
            VmState::Stopped { exit } => (Some(exit.into()), None),
            VmState::Failed { exit, console_tail } => {
                (Some(exit.into()), Some(console_tail.clone()))
            }
            _ => (None, None),
        };
        VmJson {
            name: vm.id.to_string(),
            state: vm.state.name(),
            pid: vm.pid,
            api_socket: path(&vm.api_socket),
            dir: path(&vm.dir),
            console_file: vm.console_file.as_deref().map(path),
            log_file: Some(vm.dir.join(VMM_LOG_FILE))
                .filter(|p| p.is_file())
                .as_deref()
                .map(path),
            vcpus: vm.spec.vcpus,
            mem_mib: vm.spec.mem_mib,
            smt: vm.spec.smt,
            kernel: path(&vm.spec.kernel),
            initrd: vm.spec.initrd.as_deref().map(path),
            rootfs: vm.spec.rootfs.as_deref().map(path),
            rootfs_read_only: vm.spec.rootfs_read_only,
            boot_args: vm.spec.boot_args.clone(),
            created_at_ms: vm.created_at_ms,
            exit,
            console_tail,
        }
    }
}

/// `ls`.
#[derive(Debug, Clone, Serialize)]
pub struct ListJson {
    /// Every VM, sorted by name.
    pub vms: Vec<VmJson>,
}

/// `rm`.
#[derive(Debug, Clone, Serialize)]
pub struct RemovedJson {
    /// The VM's name.
    pub name: String,
    /// Always true: a VM that could not be removed is an error.
    pub removed: bool,
    /// `-f` stopped the VM first.
    pub stopped: bool,
}

/// `snapshot`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotJson {
    /// The snapshot's name.
    pub name: String,
    /// The VM it was taken from.
    pub vm: String,
    /// The bundle directory.
    pub dir: String,
    /// The Firecracker version that wrote it (only it can load it).
    pub firecracker_version: String,
    /// Size of the vmstate file.
    pub vmstate_bytes: u64,
    /// Size of the memory file.
    pub memory_bytes: u64,
    /// Creation time, ms since the epoch.
    pub created_at_ms: u64,
    /// The VM's state after the snapshot.
    pub vm_state: &'static str,
}

impl SnapshotJson {
    /// The snapshot `info`, and the state its VM was left in.
    pub fn new(info: &SnapshotInfo, vm_state: &'static str) -> Self {
        SnapshotJson {
            name: info.name.to_string(),
            vm: info.manifest.source_vm.to_string(),
            dir: path(&info.dir),
            firecracker_version: info.manifest.firecracker_version.clone(),
            vmstate_bytes: info.manifest.vmstate_bytes,
            memory_bytes: info.manifest.memory_bytes,
            created_at_ms: info.manifest.created_at_ms,
            vm_state,
        }
    }
}

/// `console`.
#[derive(Debug, Clone, Serialize)]
pub struct ConsoleJson {
    /// The VM's name.
    pub name: String,
    /// The last lines, oldest first.
    pub lines: Vec<String>,
}

/// One doctor check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckJson {
    /// The check's stable name.
    pub name: String,
    /// `ok`, `warn` or `fail`.
    pub status: &'static str,
    /// What was found.
    pub detail: String,
    /// What to do about a warning or failure.
    pub fix: Option<String>,
}

impl From<&Check> for CheckJson {
    fn from(c: &Check) -> Self {
        CheckJson {
            name: c.name.to_owned(),
            status: match c.status {
                CheckStatus::Ok => "ok",
                CheckStatus::Warn => "warn",
                CheckStatus::Fail => "fail",
            },
            detail: c.detail.clone(),
            fix: c.fix.clone(),
        }
    }
}

/// `doctor`.
#[derive(Debug, Clone, Serialize)]
pub struct DoctorJson {
    /// No check failed.
    pub ok: bool,
    /// Every check, in a fixed order.
    pub checks: Vec<CheckJson>,
}

impl DoctorJson {
    /// The report of `checks`.
    pub fn new(checks: &[Check]) -> Self {
        DoctorJson {
            ok: !firehost::doctor::has_failures(checks),
            checks: checks.iter().map(CheckJson::from).collect(),
        }
    }
}

/// Something quickstart needs and did not find.
#[derive(Debug, Clone, Serialize)]
pub struct MissingJson {
    /// What is missing, and what was found instead.
    pub what: String,
    /// How to supply it.
    pub fix: String,
}

/// Quickstart's timings, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct TimingsJson {
    /// Create (spawn and configure the VMM).
    pub create_ms: f64,
    /// Start (`InstanceStart`).
    pub start_ms: f64,
    /// From start until the first console line, if one came within 10 s.
    pub first_output_ms: Option<f64>,
    /// Stop.
    pub stop_ms: f64,
    /// Destroy.
    pub destroy_ms: f64,
    /// The whole command.
    pub total_ms: f64,
}

/// `quickstart`.
#[derive(Debug, Clone, Serialize)]
pub struct QuickstartJson {
    /// Everything needed was there, and the VM ran.
    pub ready: bool,
    /// What is missing, when not ready.
    pub missing: Vec<MissingJson>,
    /// The doctor checks.
    pub checks: Vec<CheckJson>,
    /// The temporary state directory (removed at the end).
    pub state_dir: String,
    /// The VM's name, when one ran.
    pub vm: Option<String>,
    /// Timings, when a VM ran.
    pub timings_ms: Option<TimingsJson>,
    /// The console's last lines.
    pub console_tail: Vec<String>,
}

/// Milliseconds of `d`, to 0.01 ms.
pub fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}
