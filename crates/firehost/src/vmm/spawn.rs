//! Building Firecracker's command line and starting the process.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::keeper::{KeeperJob, KeeperProgram};
use super::process::{ProcessError, VmmProcess};
use crate::VmId;
use crate::bounded_log::{BoundedLog, LogLimits};
use crate::console::{ConsoleRing, ConsoleStream};

/// Open-file limit set in the VMM when nothing else is configured: enough
/// for many devices and connections, far below a host's hard limit.
pub const DEFAULT_NOFILE_LIMIT: u64 = 4096;

/// Firecracker's log level (`--level`): the API's logger levels.
pub use crate::api::models::LogLevel;

/// Which seccomp filter Firecracker installs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompPolicy {
    /// Firecracker's built-in filter (the safe default).
    #[default]
    Default,
    /// A compiled filter file (`--seccomp-filter`).
    Filter(PathBuf),
    /// No filter at all (`--no-seccomp`): only for debugging.
    Disabled,
}

/// Where the VMM's stdout (the guest's serial console) and stderr go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleMode {
    /// Pipes read by the manager into the VM's [`ConsoleRing`]. The console
    /// is lost if the manager exits while the VM runs on.
    Ring,
    /// Like `Ring`, and every byte is also appended to this file.
    RingAndFile(PathBuf),
    /// Straight into this file (appending), with no pipe to the manager:
    /// for VMs that must outlive the process that started them, such as
    /// those the CLI starts. The tail is read back from the file.
    File(PathBuf),
}

/// Everything needed to start one Firecracker process.
#[derive(Debug, Clone)]
pub struct VmmCommand {
    /// The `firecracker` binary (or a stand-in that takes the same flags).
    pub binary: PathBuf,
    /// `--api-sock`.
    pub api_socket: PathBuf,
    /// `--id`.
    pub id: VmId,
    /// `--log-path`: Firecracker's own log.
    pub log_path: Option<PathBuf>,
    /// `--level`.
    pub log_level: Option<LogLevel>,
    /// `--module`.
    pub log_module: Option<String>,
    /// `--show-level`.
    pub log_show_level: bool,
    /// `--show-log-origin`.
    pub log_show_origin: bool,
    /// `--metrics-path`.
    pub metrics_path: Option<PathBuf>,
    /// `--seccomp-filter` / `--no-seccomp`.
    pub seccomp: SeccompPolicy,
    /// `--boot-timer`: log the guest boot time.
    pub boot_timer: bool,
    /// `RLIMIT_NOFILE` (soft and hard) set on the child as it starts.
    pub nofile_limit: u64,
    /// The child's whole environment: nothing is inherited, so secrets in
    /// the manager's environment never reach the VMM.
    pub env: Vec<(OsString, OsString)>,
    /// Where stdout and stderr go.
    pub console: ConsoleMode,
    /// Start Firecracker through this jailer. The paths above are then as
    /// Firecracker sees them inside the chroot, `binary` is the jailer's
    /// `--exec-file`, and the open-file limit is the jailer's to set.
    pub jailer: Option<crate::jail::JailerCommand>,
    /// The bound of every file written for the guest (the console file,
    /// and what [`kept`](Self::kept) names).
    pub log_limits: LogLimits,
    /// FIFOs the VMM writes (its log and metrics paths, as host paths) and
    /// the bounded file each is copied into by the [`keeper`](super::keeper).
    pub kept: Vec<(PathBuf, PathBuf)>,
    /// With [`ConsoleMode::File`]: the program that runs the keeper in a
    /// process of its own; `None` runs it on a thread of this process.
    pub keeper: Option<KeeperProgram>,
    /// Start the VMM in the network namespace pinned at this path (a jailed
    /// VMM joins its namespace through the jailer's `--netns` instead).
    pub netns: Option<PathBuf>,
}

/// Why a VMM could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The binary could not be executed.
    #[error("cannot execute {binary:?}")]
    Exec {
        /// The binary.
        binary: PathBuf,
        /// The errno from exec.
        #[source]
        source: std::io::Error,
    },
    /// The console file could not be opened.
    #[error("cannot open console file {path:?}")]
    ConsoleFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The process started but could not be watched.
    #[error("cannot watch the VMM process")]
    Watch(#[from] ProcessError),
    /// The network namespace to start the VMM in could not be joined.
    #[error("cannot start the VMM in network namespace {path:?}")]
    Netns {
        /// The pinned namespace.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Spawns `cmd` from a thread of its own that has joined the network
/// namespace pinned at `path`: a child starts in its parent thread's
/// namespace, and a namespace change is per thread, so no other thread of
/// the manager moves (and `cmd` still spawns with `posix_spawn`).
fn spawn_in_netns(cmd: &mut Command, path: &Path) -> Result<std::io::Result<Child>, SpawnError> {
    let netns_err = |source: std::io::Error| SpawnError::Netns {
        path: path.to_owned(),
        source,
    };
    let namespace = std::fs::File::open(path).map_err(netns_err)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                rustix::thread::move_into_link_name_space(
                    namespace.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| netns_err(e.into()))?;
                Ok(cmd.spawn())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl VmmCommand {
    /// A command with firehost's defaults: built-in seccomp filter, no log,
    /// no metrics, console into the ring.
    pub fn new(binary: impl Into<PathBuf>, api_socket: impl Into<PathBuf>, id: VmId) -> Self {
        VmmCommand {
            binary: binary.into(),
            api_socket: api_socket.into(),
            id,
            log_path: None,
            log_level: None,
            log_module: None,
            log_show_level: false,
            log_show_origin: false,
            metrics_path: None,
            seccomp: SeccompPolicy::Default,
            boot_timer: false,
            nofile_limit: DEFAULT_NOFILE_LIMIT,
            env: Vec::new(),
            console: ConsoleMode::Ring,
            jailer: None,
            log_limits: LogLimits::default(),
            kept: Vec::new(),
            keeper: None,
            netns: None,
        }
    }

    /// Firecracker's arguments, in the order Firecracker documents them.
    ///
    /// # Examples
    ///
    /// ```
    /// use firehost::{VmId, vmm::VmmCommand};
    ///
    /// let cmd = VmmCommand::new("/usr/bin/firecracker", "/run/vm/api.sock", "vm1".parse().unwrap());
    /// assert_eq!(cmd.args(), ["--api-sock", "/run/vm/api.sock", "--id", "vm1"]);
    /// ```
    pub fn args(&self) -> Vec<OsString> {
        match &self.jailer {
            Some(jailer) => jailer.args(&self.firecracker_args(false)),
            None => self.firecracker_args(true),
        }
    }

    /// The program to execute: the jailer, or Firecracker itself.
    pub fn program(&self) -> &Path {
        match &self.jailer {
            Some(jailer) => &jailer.jailer,
            None => &self.binary,
        }
    }

    /// Firecracker's own arguments; `--id` only when it is started
    /// directly (the jailer passes its own).
    fn firecracker_args(&self, with_id: bool) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--api-sock".into(), self.api_socket.clone().into()];
        if with_id {
            args.extend(["--id".into(), self.id.firecracker_id().into()]);
        }
        if let Some(path) = &self.log_path {
            args.extend(["--log-path".into(), path.clone().into()]);
        }
        if let Some(level) = self.log_level {
            args.extend(["--level".into(), level.as_str().into()]);
        }
        if let Some(module) = &self.log_module {
            args.extend(["--module".into(), module.into()]);
        }
        if self.log_show_level {
            args.push("--show-level".into());
        }
        if self.log_show_origin {
            args.push("--show-log-origin".into());
        }
        if let Some(path) = &self.metrics_path {
            args.extend(["--metrics-path".into(), path.clone().into()]);
        }
        match &self.seccomp {
            SeccompPolicy::Default => {}
            SeccompPolicy::Filter(path) => {
                args.extend(["--seccomp-filter".into(), path.clone().into()])
            }
            SeccompPolicy::Disabled => args.push("--no-seccomp".into()),
        }
        if self.boot_timer {
            args.push("--boot-timer".into());
        }
        args
    }

    /// Starts the VMM. Its output goes to `ring` (and files) as
    /// [`ConsoleMode`] says; the returned handle watches its exit.
    ///
    /// The child runs in a process group of its own, so a terminal's Ctrl-C
    /// aimed at the manager does not reach the VMs.
    pub fn spawn(&self, ring: &ConsoleRing) -> Result<VmmProcess, SpawnError> {
        let mut cmd = Command::new(self.program());
        cmd.args(self.args())
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        let mut kept_pipe = None;
        match &self.console {
            ConsoleMode::Ring | ConsoleMode::RingAndFile(_) => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            ConsoleMode::File(path) => {
                // A pipe to the keeper, never the file itself: the keeper
                // bounds what lands on disk.
                let console_err = |source: std::io::Error| SpawnError::ConsoleFile {
                    path: path.clone(),
                    source,
                };
                let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .map_err(|e| console_err(e.into()))?;
                let dup = write.try_clone().map_err(console_err)?;
                cmd.stdout(write).stderr(dup);
                kept_pipe = Some(read);
            }
        }
        // A process group of its own keeps a terminal's Ctrl-C (sent to the
        // foreground group) away from the VMs. Unlike setsid in a pre_exec
        // hook, this lets std spawn with posix_spawn (vfork) instead of
        // fork, which in a large multi-threaded manager is several times
        // faster.
        cmd.process_group(0);
        let spawned = match self.netns.as_ref().filter(|_| self.jailer.is_none()) {
            Some(path) => spawn_in_netns(&mut cmd, path)?,
            None => cmd.spawn(),
        };
        // The write ends of the console pipe go with `cmd`: only the VMM
        // may hold them, or the keeper would never see the pipe end.
        drop(cmd);
        let mut child = spawned.map_err(|source| SpawnError::Exec {
            binary: self.program().to_owned(),
            source,
        })?;
        let pid = i32::try_from(child.id()).expect("pids fit in i32");
        // The open-file limit is set on the child right after exec rather
        // than before it (which would need fork): the window is the first
        // microseconds of Firecracker's start-up, long before its API or any
        // guest can open files.
        let limited = match self.jailer {
            // The jailer sets its own (`--resource-limit no-file`) just
            // before it execs Firecracker, which would undo ours.
            Some(_) => Ok(()),
            None => set_nofile_limit(pid, self.nofile_limit),
        };
        let process = match limited
            .map_err(SpawnError::from)
            .and_then(|()| VmmProcess::watch_child(pid).map_err(SpawnError::from))
        {
            Ok(p) => p,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        if let (Some(read), ConsoleMode::File(path)) = (kept_pipe, &self.console) {
            let job = KeeperJob {
                console: Some(path.clone()),
                fifos: self.kept.clone(),
                limits: self.log_limits,
            };
            start_keeper(self.keeper.as_ref(), read, job, ring);
        } else if !self.kept.is_empty() {
            // The console goes to the ring: a thread keeps the log and
            // metrics FIFOs until the VMM exits (as the ring, it stops with
            // this process; Firecracker then drops what it cannot write).
            let job = KeeperJob {
                console: None,
                fifos: self.kept.clone(),
                limits: self.log_limits,
            };
            match rustix::process::Pid::from_raw(pid)
                .map(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()))
            {
                Some(Ok(pidfd)) => keeper_thread(None, Some(pidfd), job, ring),
                _ => {
                    tracing::warn!(vm = %self.id, "cannot watch the VMM: its log and metrics are not kept")
                }
            }
        }
        let tee = match &self.console {
            ConsoleMode::RingAndFile(path) => match BoundedLog::open(path, self.log_limits) {
                Ok(log) => Some(Arc::new(std::sync::Mutex::new(log))),
                Err(e) => {
                    tracing::warn!(vm = %self.id, path = %path.display(), error = %e, "console file not written");
                    None
                }
            },
            _ => None,
        };
        if let Some(out) = child.stdout.take() {
            pump(out.into(), ConsoleStream::Serial, ring.clone(), tee.clone());
        }
        if let Some(err) = child.stderr.take() {
            pump(err.into(), ConsoleStream::Vmm, ring.clone(), tee);
        }
        // `child` is dropped without waiting: the pidfd watcher reaps it.
        Ok(process)
    }
}

fn set_nofile_limit(pid: i32, limit: u64) -> Result<(), ProcessError> {
    let target = rustix::process::Pid::from_raw(pid);
    let rlimit = rustix::process::Rlimit {
        current: Some(limit),
        maximum: Some(limit),
    };
    rustix::process::prlimit(target, rustix::process::Resource::Nofile, rlimit)
        .map(drop)
        .map_err(|e| ProcessError::Limit {
            pid,
            source: e.into(),
        })
}

/// Runs the keeper for a VMM's console pipe: in a process of its own when
/// there is a program (which outlives this one), else on a thread. Either
/// counts as a writer of `ring` until it ends, so a console tail taken
/// after the VMM exits ([`ConsoleRing::drained`]) waits for its last bytes.
fn start_keeper(
    program: Option<&KeeperProgram>,
    read: OwnedFd,
    job: KeeperJob,
    ring: &ConsoleRing,
) {
    if let Some(program) = program {
        let stdin = match read.try_clone() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand the console to the keeper; using a thread");
                return keeper_thread(Some(read), None, job, ring);
            }
        };
        let mut command = Command::new(&program.program);
        command
            .args(&program.args)
            .args(job.args())
            .env_clear()
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Away from the terminal's Ctrl-C, like the VMM.
            .process_group(0);
        let started = command
            .spawn()
            .map_err(|e| e.to_string())
            .and_then(|child| {
                let pid = i32::try_from(child.id()).expect("pids fit in i32");
                VmmProcess::watch_child(pid).map_err(|e| e.to_string())
            });
        match started {
            Ok(keeper) => {
                // Watched to its end, which reaps it; it ends with its VMM.
                ring.open_stream();
                let ring = ring.clone();
                tokio::spawn(async move {
                    keeper.wait().await;
                    ring.close_stream(ConsoleStream::Serial);
                });
                return;
            }
            Err(e) => {
                tracing::warn!(program = %program.program.display(), error = %e, "cannot start the log keeper; using a thread");
            }
        }
    }
    keeper_thread(Some(read), None, job, ring);
}

fn keeper_thread(
    console: Option<OwnedFd>,
    until: Option<OwnedFd>,
    job: KeeperJob,
    ring: &ConsoleRing,
) {
    ring.open_stream();
    let ring = ring.clone();
    let ended = ring.clone();
    let spawned = std::thread::Builder::new()
        .name("firehost-log-keeper".into())
        .spawn(move || {
            if let Err(e) = super::keeper::run(console, until, &job) {
                tracing::warn!(job = ?job, error = %e, "log keeper stopped");
            }
            ended.close_stream(ConsoleStream::Serial);
        });
    if let Err(e) = spawned {
        ring.close_stream(ConsoleStream::Serial);
        tracing::warn!(error = %e, "cannot start the log keeper thread: the console is not kept");
    }
}

/// Copies one output pipe into the ring (and the tee file) until it closes.
fn pump(fd: OwnedFd, stream: ConsoleStream, ring: ConsoleRing, tee: Option<SharedLog>) {
    ring.open_stream();
    tokio::spawn(async move {
        let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
            ring.close_stream(stream);
            return;
        };
        let mut tee = tee;
        let mut buf = vec![0u8; 4096];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    ring.push(stream, &buf[..n]);
                    // A few KB into the page cache: short enough to do here.
                    let written = tee.as_ref().map(|log| {
                        log.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .write(&buf[..n])
                    });
                    if let Some(Err(_)) = written {
                        tee = None;
                    }
                }
            }
        }
        ring.close_stream(stream);
    });
}

/// The console file both output pipes append to.
type SharedLog = Arc<std::sync::Mutex<BoundedLog>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> VmmCommand {
        VmmCommand::new("/bin/fc", "/s.sock", VmId::new("a").unwrap())
    }

    #[test]
    fn every_option_maps_to_its_flag() {
        let mut c = cmd();
        c.log_path = Some("/l".into());
        c.log_level = Some(LogLevel::Debug);
        c.metrics_path = Some("/m".into());
        c.seccomp = SeccompPolicy::Filter("/f.bpf".into());
        c.boot_timer = true;
        assert_eq!(
            c.args(),
            [
                "--api-sock",
                "/s.sock",
                "--id",
                "a",
                "--log-path",
                "/l",
                "--level",
                "Debug",
                "--metrics-path",
                "/m",
                "--seccomp-filter",
                "/f.bpf",
                "--boot-timer"
            ]
        );
        c.seccomp = SeccompPolicy::Disabled;
        assert!(c.args().iter().any(|a| a == "--no-seccomp"));
        assert!(!c.args().iter().any(|a| a == "--seccomp-filter"));
    }

    #[tokio::test]
    async fn child_gets_only_the_given_env_and_the_nofile_limit() {
        // A stand-in "VMM" that reports what it was started with.
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fc");
        std::fs::write(
            &script,
            "#!/bin/sh\necho env=$(env | grep -v -e ^PWD= -e ^SHLVL= -e ^_= | tr '\\n' ' ')\n\
             echo nofile=$(ulimit -n)\necho err >&2\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let mut c = cmd();
        c.binary = script;
        c.env = vec![("ONLY".into(), "this".into())];
        c.nofile_limit = 1234;
        let ring = ConsoleRing::new(10);
        let proc = c.spawn(&ring).unwrap();
        proc.wait().await;
        let has = |text: &'static str| {
            let ring = ring.clone();
            async move {
                tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    ring.wait_for_line(|l| l.clone().into_text() == text),
                )
                .await
                .is_ok()
            }
        };
        assert!(has("env=ONLY=this").await, "{:?}", ring.tail_text(10));
        assert!(has("nofile=1234").await, "{:?}", ring.tail_text(10));
        assert!(has("[vmm] err").await, "{:?}", ring.tail_text(10));
    }

    #[tokio::test]
    async fn missing_binary_is_an_exec_error() {
        let mut c = cmd();
        c.binary = "/nonexistent/firecracker".into();
        let err = c.spawn(&ConsoleRing::new(1)).unwrap_err();
        assert!(matches!(err, SpawnError::Exec { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_namespace_that_cannot_be_joined_starts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cmd();
        c.binary = "/bin/sh".into();
        for netns in [dir.path().join("missing"), dir.path().to_owned()] {
            c.netns = Some(netns.clone());
            let err = c.spawn(&ConsoleRing::new(1)).unwrap_err();
            assert!(
                matches!(&err, SpawnError::Netns { path, .. } if *path == netns),
                "{err:?}"
            );
        }
    }
}
