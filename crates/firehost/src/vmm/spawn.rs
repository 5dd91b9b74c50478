//! Building Firecracker's command line and starting the process.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::process::{ProcessError, VmmProcess};
use crate::VmId;
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
            metrics_path: None,
            seccomp: SeccompPolicy::Default,
            boot_timer: false,
            nofile_limit: DEFAULT_NOFILE_LIMIT,
            env: Vec::new(),
            console: ConsoleMode::Ring,
            jailer: None,
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
        match &self.console {
            ConsoleMode::Ring | ConsoleMode::RingAndFile(_) => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            ConsoleMode::File(path) => {
                let file = open_console_file(path)?;
                let dup = file.try_clone().map_err(|source| SpawnError::ConsoleFile {
                    path: path.clone(),
                    source,
                })?;
                cmd.stdout(file).stderr(dup);
            }
        }
        // A process group of its own keeps a terminal's Ctrl-C (sent to the
        // foreground group) away from the VMs. Unlike setsid in a pre_exec
        // hook, this lets std spawn with posix_spawn (vfork) instead of
        // fork, which in a large multi-threaded manager is several times
        // faster.
        cmd.process_group(0);
        let mut child = cmd.spawn().map_err(|source| SpawnError::Exec {
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
        let tee = match &self.console {
            ConsoleMode::RingAndFile(path) => Some(path.clone()),
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

fn open_console_file(path: &Path) -> Result<std::fs::File, SpawnError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| SpawnError::ConsoleFile {
            path: path.to_owned(),
            source,
        })
}

/// Copies one output pipe into the ring (and the tee file) until it closes.
fn pump(fd: OwnedFd, stream: ConsoleStream, ring: ConsoleRing, tee: Option<PathBuf>) {
    ring.open_stream();
    tokio::spawn(async move {
        let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
            ring.close_stream(stream);
            return;
        };
        let mut tee = match tee {
            Some(path) => tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .await
                .ok(),
            None => None,
        };
        let mut buf = vec![0u8; 4096];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    ring.push(stream, &buf[..n]);
                    if let Some(file) = tee.as_mut() {
                        use tokio::io::AsyncWriteExt;
                        if file.write_all(&buf[..n]).await.is_err() {
                            tee = None;
                        }
                    }
                }
            }
        }
        ring.close_stream(stream);
    });
}

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
}
