//! Watching and signalling a running VMM through a pidfd.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::state::ExitReason;

/// A failure to reach a process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// `pidfd_open` failed for a reason other than the process being gone.
    #[error("cannot open a pidfd for pid {pid}")]
    Pidfd {
        /// The pid.
        pid: i32,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// Sending a signal failed.
    #[error("cannot send signal {signal} to pid {pid}")]
    Signal {
        /// The pid.
        pid: i32,
        /// The signal number.
        signal: i32,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// Setting a resource limit on the process failed.
    #[error("cannot set a resource limit of pid {pid}")]
    Limit {
        /// The pid.
        pid: i32,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// `/proc/<pid>/stat` could not be read or parsed.
    #[error("cannot read the start time of pid {pid}")]
    StartTime {
        /// The pid.
        pid: i32,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A VMM process we hold a pidfd for.
///
/// The exit is observed by a background task that waits for the pidfd to
/// turn readable; for our own children it also reaps them and records the
/// exit code or signal. Dropping a `VmmProcess` does not kill the VMM: VMs
/// outlive the handle (and the manager) by design.
#[derive(Debug, Clone)]
pub struct VmmProcess {
    pid: i32,
    start_time: u64,
    pidfd: Arc<OwnedFd>,
    exit: watch::Receiver<Option<ExitReason>>,
}

impl VmmProcess {
    /// Starts watching `child`, a process this process spawned and has not
    /// reaped. Must be called from within a tokio runtime.
    pub(crate) fn watch_child(pid: i32) -> Result<Self, ProcessError> {
        let pidfd = open_pidfd(pid)?.ok_or(ProcessError::Pidfd {
            pid,
            source: std::io::Error::from_raw_os_error(libc_esrch()),
        })?;
        let start_time = read_start_time(pid)?;
        Ok(Self::watch(pid, start_time, pidfd, true))
    }

    /// Finds a process by pid and start time, as recorded by an earlier
    /// manager. Returns `None` when no such process lives (it exited, or the
    /// pid now belongs to another process). Must be called from within a
    /// tokio runtime; [`FoundProcess::find`] is the part that may run on the
    /// blocking pool.
    pub fn attach(pid: i32, start_time: u64) -> Result<Option<Self>, ProcessError> {
        Ok(FoundProcess::find(pid, start_time)?.map(FoundProcess::watch))
    }

    fn watch(pid: i32, start_time: u64, pidfd: OwnedFd, reap: bool) -> Self {
        let (tx, rx) = watch::channel(None);
        let pidfd = Arc::new(pidfd);
        let watcher_fd = pidfd.clone();
        tokio::spawn(async move {
            // Once no handle is left, nobody can learn the exit: stop
            // watching, and leave the reaping to whoever attaches next.
            tokio::select! {
                reason = wait_exit(&watcher_fd, reap) => {
                    tx.send_replace(Some(reason));
                }
                _ = tx.closed() => {}
            }
        });
        VmmProcess {
            pid,
            start_time,
            pidfd,
            exit: rx,
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The process start time in clock ticks since boot (`/proc/<pid>/stat`
    /// field 22): with the pid, it identifies the process across restarts.
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    /// How the process ended, if it has.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.borrow().clone()
    }

    /// Waits until the process has ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future loses nothing; the exit is recorded
    /// by the background watcher either way.
    pub async fn wait(&self) -> ExitReason {
        let mut rx = self.exit.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or(ExitReason::Unknown),
            // The watcher task only goes away with the runtime.
            Err(_) => ExitReason::Unknown,
        }
    }

    /// Waits up to `timeout` for the process to end.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, like [`wait`](Self::wait).
    pub async fn wait_timeout(&self, timeout: Duration) -> Option<ExitReason> {
        tokio::time::timeout(timeout, self.wait()).await.ok()
    }

    /// Sends `signal` through the pidfd. A process that has already exited
    /// is not an error: the signal had nothing left to do.
    pub fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        match rustix::process::pidfd_send_signal(self.pidfd.as_fd(), signal) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(ProcessError::Signal {
                pid: self.pid,
                signal: signal.as_raw(),
                source: e.into(),
            }),
        }
    }
}

async fn wait_exit(pidfd: &Arc<OwnedFd>, reap: bool) -> ExitReason {
    // SAFETY: the AsyncFd owns a reference to the pidfd, so the descriptor
    // stays open, naming the same pidfd, for as long as it is registered;
    // nothing closes an `OwnedFd` while a reference to it lives.
    let registered =
        unsafe { AsyncFd::register_with_interest(pidfd.clone(), tokio::io::Interest::READABLE) };
    let Ok(async_fd) = registered else {
        return ExitReason::Unknown;
    };
    // A pidfd polls readable once the process has terminated.
    if async_fd.readable().await.is_err() {
        return ExitReason::Unknown;
    }
    if !reap {
        return ExitReason::Unknown;
    }
    match rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED) {
        Ok(Some(status)) => {
            if let Some(code) = status.exit_status() {
                ExitReason::Code(code)
            } else if let Some(sig) = status.terminating_signal() {
                ExitReason::Signal(sig)
            } else {
                ExitReason::Unknown
            }
        }
        _ => ExitReason::Unknown,
    }
}

/// Opens a pidfd; `Ok(None)` if the process does not exist.
fn open_pidfd(pid: i32) -> Result<Option<OwnedFd>, ProcessError> {
    let Some(raw) = Pid::from_raw(pid) else {
        return Ok(None);
    };
    match rustix::process::pidfd_open(raw, PidfdFlags::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::SRCH) => Ok(None),
        Err(e) => Err(ProcessError::Pidfd {
            pid,
            source: e.into(),
        }),
    }
}

/// This process's pid, asked of the kernel once.
fn own_pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

fn libc_esrch() -> i32 {
    rustix::io::Errno::SRCH.raw_os_error()
}

/// Reads field 22 (starttime) of `/proc/<pid>/stat`.
pub(crate) fn read_start_time(pid: i32) -> Result<u64, ProcessError> {
    read_stat(pid).map(|stat| stat.start_time)
}

/// A process found by pid and start time and held by a pidfd, not yet
/// watched: the half of [`VmmProcess::attach`] that makes only blocking
/// system calls, so that many can be found on the blocking pool at once.
#[derive(Debug)]
pub struct FoundProcess {
    pid: i32,
    start_time: u64,
    pidfd: OwnedFd,
    is_child: bool,
}

impl FoundProcess {
    /// The process with this pid and start time, if it still runs.
    pub fn find(pid: i32, start_time: u64) -> Result<Option<FoundProcess>, ProcessError> {
        // Open the pidfd first and check the start time second: if they
        // match, the pidfd refers to the recorded process and can't be
        // fooled by pid reuse afterwards.
        let Some(pidfd) = open_pidfd(pid)? else {
            return Ok(None);
        };
        // One read of /proc/<pid>/stat says who it is, whose child and
        // whether it has exited: re-attaching many VMs reads it once each.
        let stat = match read_stat(pid) {
            Ok(stat) if stat.start_time == start_time => stat,
            Ok(_) => return Ok(None),
            Err(ProcessError::StartTime { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        // A manager re-opened inside the process that spawned the VMM (tests,
        // or a service that restarts its manager) can still reap it.
        let is_child = stat.parent == Some(own_pid());
        if stat.exited {
            // It has exited; only its parent's wait is missing. Ours, if we
            // are the parent: reap it rather than leave it.
            if is_child {
                let _ = rustix::process::waitid(
                    WaitId::PidFd(pidfd.as_fd()),
                    WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
                );
            }
            return Ok(None);
        }
        Ok(Some(FoundProcess {
            pid,
            start_time,
            pidfd,
            is_child,
        }))
    }

    /// Whether the process with this pid and start time still runs, without
    /// holding it (no pidfd): for a look that acts on nothing, where a pid
    /// reused a moment later does no harm.
    pub fn is_running(pid: i32, start_time: u64) -> bool {
        read_stat(pid).is_ok_and(|stat| stat.start_time == start_time && !stat.exited)
    }

    /// Starts watching it. Must be called from within a tokio runtime.
    pub fn watch(self) -> VmmProcess {
        VmmProcess::watch(self.pid, self.start_time, self.pidfd, self.is_child)
    }
}

/// What [`FoundProcess::find`] needs of `/proc/<pid>/stat`.
struct ProcStat {
    start_time: u64,
    parent: Option<u32>,
    /// Exited but not reaped (state `Z`, or `X` while it is being reaped).
    exited: bool,
}

fn read_stat(pid: i32) -> Result<ProcStat, ProcessError> {
    use std::io::Read;
    let err = |source| ProcessError::StartTime { pid, source };
    // The line is a few hundred bytes: read it into a buffer on the stack,
    // without the size probes (statx, lseek) of `read_to_end`.
    let mut file = std::fs::File::open(format!("/proc/{pid}/stat")).map_err(err)?;
    let mut buf = [0u8; 1024];
    let mut len = 0;
    while let Some(rest) = buf.get_mut(len..).filter(|rest| !rest.is_empty()) {
        match file.read(rest).map_err(err)? {
            0 => break,
            n => len += n,
        }
        // The kernel hands the whole line over at once; it ends with a
        // newline, so no read is needed to learn that nothing follows.
        if buf.get(len.wrapping_sub(1)) == Some(&b'\n') {
            break;
        }
    }
    let stat = String::from_utf8_lossy(buf.get(..len).unwrap_or_default());
    let start_time = parse_stat_field(&stat, 22)
        .ok_or_else(|| err(std::io::Error::other("malformed /proc/<pid>/stat")))?;
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    Ok(ProcStat {
        start_time,
        parent: parse_stat_field(&stat, 4).and_then(|p| u32::try_from(p).ok()),
        exited: matches!(state, Some("Z" | "X")),
    })
}

/// Field `n` (1-based, as in proc(5)) of a stat line. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted from the
/// last `)`.
fn parse_stat_field(stat: &str, n: usize) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "1234 (fire cracker) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 10";
        assert_eq!(parse_stat_field(stat, 4), Some(1));
        assert_eq!(parse_stat_field(stat, 22), Some(987654));
        assert_eq!(parse_stat_field("garbage", 22), None);
    }

    #[test]
    fn own_start_time_is_readable_and_stable() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert_eq!(read_start_time(me).unwrap(), read_start_time(me).unwrap());
    }

    #[tokio::test]
    #[allow(clippy::zombie_processes)] // the pidfd watcher reaps it
    async fn child_exit_code_is_observed() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let proc = VmmProcess::watch_child(i32::try_from(child.id()).unwrap()).unwrap();
        let reason = proc.wait_timeout(Duration::from_secs(10)).await;
        assert_eq!(reason, Some(ExitReason::Code(7)));
    }

    #[tokio::test]
    #[allow(clippy::zombie_processes)] // the pidfd watcher reaps it
    async fn signal_through_pidfd_is_observed() {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let proc = VmmProcess::watch_child(i32::try_from(child.id()).unwrap()).unwrap();
        assert_eq!(proc.exit_reason(), None);
        proc.signal(Signal::KILL).unwrap();
        let reason = proc.wait_timeout(Duration::from_secs(10)).await;
        assert_eq!(reason, Some(ExitReason::Signal(9)));
        // Signalling a process that is gone is not an error.
        proc.signal(Signal::TERM).unwrap();
    }

    #[tokio::test]
    async fn attach_refuses_a_mismatched_start_time() {
        let me = i32::try_from(std::process::id()).unwrap();
        let start = read_start_time(me).unwrap();
        assert!(VmmProcess::attach(me, start + 1).unwrap().is_none());
        assert!(VmmProcess::attach(me, start).unwrap().is_some());
    }

    #[tokio::test]
    async fn attach_to_a_missing_pid_finds_nothing() {
        // pid_max is at most 2^22, so this pid can't exist.
        assert!(VmmProcess::attach(i32::MAX - 1, 0).unwrap().is_none());
    }
}

/// Pids of processes started with `--api-sock <socket>`: how a restarted
/// manager finds a VMM whose pid it never got to record (it crashed between
/// spawn and the first record write).
pub fn find_by_api_socket(socket: &std::path::Path) -> Vec<i32> {
    let wanted = socket.as_os_str().as_encoded_bytes();
    scan_api_sockets(|arg| arg == wanted)
}

/// Pids of processes whose root directory is `root` or under it: the
/// VMMs of a jail, whose `--api-sock` is relative to it.
pub fn find_rooted_in(root: &std::path::Path) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    // A jailed process pivoted into its chroot in a mount namespace of its
    // own, where `readlink /proc/<pid>/root` says `/`; the directory it
    // names is still the chroot, so compare inodes.
    let Ok(wanted) = std::fs::metadata(root).map(|m| (m.dev(), m.ino())) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/root"))
                .is_ok_and(|m| (m.dev(), m.ino()) == wanted)
        })
        .collect()
}

/// Pids of processes started with an `--api-sock` anywhere under `dir`:
/// every VMM of a state directory, for sweeping a throwaway one.
pub fn find_under(dir: &std::path::Path) -> Vec<i32> {
    use std::os::unix::ffi::OsStrExt;
    scan_api_sockets(|arg| std::path::Path::new(std::ffi::OsStr::from_bytes(arg)).starts_with(dir))
}

/// Pids whose command line has `--api-sock X` with `matches(X)`.
fn scan_api_sockets(matches: impl Fn(&[u8]) -> bool) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.windows(2)
                .any(|w| w[0] == b"--api-sock" && matches(w[1]))
        })
        .collect()
}

#[cfg(test)]
mod find_tests {
    use super::*;

    #[test]
    fn process_is_found_by_its_api_socket_argument() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        // `read` is a shell builtin, so no forked child shares the cmdline;
        // the flags after the script land in $0.. where sh ignores them.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("read line")
            .arg("--api-sock")
            .arg(&sock)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // spawn() returns once exec has closed our CLOEXEC pipe, a moment
        // before the kernel has laid out the new argv: poll briefly.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut found = find_by_api_socket(&sock);
        while found.is_empty() && std::time::Instant::now() < deadline {
            std::thread::yield_now();
            found = find_by_api_socket(&sock);
        }
        let under = find_under(dir.path());
        drop(child.stdin.take());
        child.wait().unwrap();
        let me = i32::try_from(child.id()).unwrap();
        assert_eq!(found, [me]);
        assert_eq!(under, [me]);
        assert!(find_by_api_socket(&dir.path().join("other.sock")).is_empty());
        assert!(find_under(dir.path()).is_empty(), "the child has exited");
    }
}
