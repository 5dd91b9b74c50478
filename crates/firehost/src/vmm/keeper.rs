//! The log keeper: copies what a VMM writes for its guest into bounded
//! files, for VMs whose output goes to files ([`ConsoleMode::File`]).
//!
//! The VMM's stdout and stderr (the guest's serial console and
//! Firecracker's own messages) are a pipe whose read end the keeper holds,
//! and Firecracker's log and metrics paths are FIFOs the keeper reads;
//! every byte lands in a [`BoundedLog`], so a guest that floods its console
//! or provokes log lines cannot fill the host's disk.
//!
//! The keeper lives exactly as long as the VMM: when the console pipe
//! reaches its end (every process that could write to it is gone), or the
//! VMM's pidfd says it exited (for VMs whose console goes to the manager's
//! ring, where only the log and metrics are kept), it drains the FIFOs and
//! exits. Run in a process of its own
//! ([`KeeperProgram`]: the CLI's hidden `log-keeper` command, or the
//! library's `firehost-log-keeper`), the files keep filling after the
//! process that started the VM exits. Without one, a thread of the
//! manager's process does the same job, and output written after the
//! manager exits is lost (the VMM ignores the broken pipe).
//!
//! [`ConsoleMode::File`]: super::ConsoleMode::File

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::event::{PollFd, PollFlags};

use crate::bounded_log::{BoundedLog, LogLimits};

/// A program that runs the keeper: `program args… --console OUT
/// --max-bytes N [--fifo FIFO=OUT]…`, with the console pipe as its stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeeperProgram {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments before the keeper's own.
    pub args: Vec<OsString>,
}

impl KeeperProgram {
    /// A program and its arguments.
    ///
    /// ```
    /// use firehost::vmm::keeper::KeeperProgram;
    /// // The firehost CLI is such a program.
    /// let program = KeeperProgram::new("/usr/local/bin/firehost", ["log-keeper"]);
    /// assert_eq!(program.args.len(), 1);
    /// ```
    pub fn new(
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> KeeperProgram {
        KeeperProgram {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
        }
    }
}

/// What one keeper copies where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeeperJob {
    /// The file the console pipe goes to; `None` when the console goes
    /// elsewhere (the manager's ring) and only FIFOs are kept.
    pub console: Option<PathBuf>,
    /// FIFOs the VMM writes (its log, its metrics) and the file each goes to.
    pub fifos: Vec<(PathBuf, PathBuf)>,
    /// The bound of each file.
    pub limits: LogLimits,
}

impl KeeperJob {
    /// The keeper's own arguments for this job.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(console) = &self.console {
            args.push("--console".into());
            args.push(console.clone().into());
        }
        args.push("--max-bytes".into());
        args.push(self.limits.max_bytes.to_string().into());
        for (fifo, out) in &self.fifos {
            let mut pair = fifo.clone().into_os_string();
            pair.push("=");
            pair.push(out);
            args.push("--fifo".into());
            args.push(pair);
        }
        args
    }

    /// Parses [`args`](Self::args) back.
    ///
    /// # Errors
    ///
    /// A flag that is unknown, repeated where it may not be, or without
    /// its value, as a message.
    pub fn from_args(args: impl IntoIterator<Item = OsString>) -> Result<KeeperJob, String> {
        let mut args = args.into_iter();
        let (mut console, mut max_bytes, mut fifos) = (None, None, Vec::new());
        while let Some(flag) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| format!("{} needs a value", flag.to_string_lossy()))
            };
            match flag.to_str() {
                Some("--console") => console = Some(PathBuf::from(value()?)),
                Some("--max-bytes") => {
                    let text = value()?;
                    let n = text
                        .to_str()
                        .and_then(|t| t.parse::<u64>().ok())
                        .ok_or_else(|| format!("--max-bytes {text:?} is not a number"))?;
                    max_bytes = Some(n);
                }
                Some("--fifo") => {
                    let pair = value()?;
                    use std::os::unix::ffi::OsStrExt;
                    let bytes = pair.as_bytes();
                    let at = bytes
                        .iter()
                        .position(|&b| b == b'=')
                        .ok_or_else(|| format!("--fifo {pair:?} is not FIFO=FILE"))?;
                    let fifo = std::ffi::OsStr::from_bytes(&bytes[..at]);
                    let out = std::ffi::OsStr::from_bytes(&bytes[at + 1..]);
                    fifos.push((PathBuf::from(fifo), PathBuf::from(out)));
                }
                _ => return Err(format!("unknown argument {flag:?}")),
            }
        }
        Ok(KeeperJob {
            console,
            fifos,
            limits: LogLimits {
                max_bytes: max_bytes.unwrap_or(LogLimits::DEFAULT_MAX_BYTES),
            },
        })
    }
}

/// Copies `console` (the read end of the VMM's output pipe, into the job's
/// console file) and the job's FIFOs into their bounded files until the
/// pipe ends or `until` (the VMM's pidfd) turns readable, then drains the
/// FIFOs and returns. With neither, it returns at once.
///
/// # Errors
///
/// A file cannot be opened, or reading or writing fails.
pub fn run(
    console: Option<OwnedFd>,
    until: Option<OwnedFd>,
    job: &KeeperJob,
) -> std::io::Result<()> {
    if console.is_none() && until.is_none() {
        return Ok(());
    }
    let mut console = match (console, &job.console) {
        (Some(fd), Some(path)) => {
            Some((std::fs::File::from(fd), BoundedLog::open(path, job.limits)?))
        }
        _ => None,
    };
    let mut fifos = Vec::new();
    for (fifo, out) in &job.fifos {
        // Read and write, non-blocking: the open never waits for the VMM,
        // and the FIFO never reads as ended while the keeper holds it.
        let fd = rustix::fs::open(
            fifo,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        fifos.push((std::fs::File::from(fd), BoundedLog::open(out, job.limits)?));
    }
    // Small: one keeper per VM, and the VMM writes a line at a time.
    let mut buf = vec![0u8; 8 * 1024];
    // Poll order: the console (if kept), the pidfd (if given), the FIFOs.
    let leading = usize::from(console.is_some()) + usize::from(until.is_some());
    loop {
        let mut polled: Vec<PollFd<'_>> = console
            .iter()
            .map(|(pipe, _)| pipe.as_fd())
            .chain(until.iter().map(|fd| fd.as_fd()))
            .chain(fifos.iter().map(|(f, _)| f.as_fd()))
            .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN))
            .collect();
        match rustix::event::poll(&mut polled, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = polled.iter().map(|p| !p.revents().is_empty()).collect();
        drop(polled);
        let mut ended = false;
        if let Some((pipe, log)) = console.as_mut()
            && ready[0]
        {
            match pipe.read(&mut buf) {
                // Every writer is gone: the VMM has exited.
                Ok(0) => ended = true,
                Ok(n) => log.write(&buf[..n])?,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // A readable pidfd: the VMM has exited.
        if until.is_some() && ready[leading - 1] {
            ended = true;
        }
        for ((fifo, log), ready) in fifos.iter_mut().zip(&ready[leading..]) {
            if *ready {
                drain(fifo, log, &mut buf)?;
            }
        }
        if ended {
            break;
        }
    }
    for (fifo, log) in &mut fifos {
        drain(fifo, log, &mut buf)?;
    }
    Ok(())
}

/// Copies what a non-blocking FIFO holds now.
fn drain(fifo: &mut std::fs::File, log: &mut BoundedLog, buf: &mut [u8]) -> std::io::Result<()> {
    loop {
        match fifo.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => log.write(&buf[..n])?,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Makes a FIFO at `path` (mode 0600) for the VMM to write its log or
/// metrics into, replacing a file an earlier run left there.
///
/// # Errors
///
/// It cannot be made.
pub fn make_fifo(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )?;
    Ok(())
}

/// The keeper program's `main`: the job from `args`, the console pipe on
/// stdin.
///
/// # Errors
///
/// Bad arguments (as a message), or [`run`]'s errors.
pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> Result<(), String> {
    let job = KeeperJob::from_args(args)?;
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("stdin: {e}"))?;
    let what = job
        .console
        .as_ref()
        .map_or_else(|| "the log keeper".to_owned(), |p| p.display().to_string());
    run(Some(stdin), None, &job).map_err(|e| format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn arguments_round_trip() {
        let job = KeeperJob {
            console: Some("/s/vms/a/console.log".into()),
            fifos: vec![("/s/vms/a/fc.fifo".into(), "/s/vms/a/firecracker.log".into())],
            limits: LogLimits { max_bytes: 4096 },
        };
        assert_eq!(KeeperJob::from_args(job.args()).unwrap(), job);
        assert!(KeeperJob::from_args(["--fifo".into(), "nope".into()]).is_err());
        assert!(KeeperJob::from_args(["--max-bytes".into()]).is_err());
    }

    #[test]
    fn a_flooding_writer_is_kept_within_the_bound_and_the_fifo_is_drained() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("log.fifo");
        make_fifo(&fifo).unwrap();
        let job = KeeperJob {
            console: Some(dir.path().join("console.log")),
            fifos: vec![(fifo.clone(), dir.path().join("firecracker.log"))],
            limits: LogLimits {
                max_bytes: 64 * 1024,
            },
        };
        let (read, write) = rustix::pipe::pipe().unwrap();
        let keeper = {
            let job = job.clone();
            std::thread::spawn(move || run(Some(read), None, &job))
        };
        // The "VMM": 4 MiB of console and a log line through the FIFO.
        let mut log_writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        log_writer.write_all(b"a log line\n").unwrap();
        let mut console = std::fs::File::from(write);
        for _ in 0..1024 {
            console.write_all(&[b'z'; 4096]).unwrap();
        }
        drop((console, log_writer));
        keeper.join().unwrap().unwrap();
        let on_disk = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let console_file = job.console.as_ref().unwrap();
        let console_bytes =
            on_disk(console_file) + on_disk(&crate::bounded_log::rotated(console_file));
        assert!(console_bytes <= 2 * 64 * 1024 + 200, "{console_bytes}");
        assert!(crate::bounded_log::read_dropped(console_file) >= (4 << 20) - 2 * 64 * 1024);
        let log = std::fs::read_to_string(dir.path().join("firecracker.log")).unwrap();
        assert_eq!(log, "a log line\n");
    }

    #[test]
    fn with_only_fifos_it_ends_when_the_process_exits() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("metrics.fifo");
        make_fifo(&fifo).unwrap();
        let job = KeeperJob {
            console: None,
            fifos: vec![(fifo.clone(), dir.path().join("metrics.json"))],
            limits: LogLimits::default(),
        };
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("echo '{{\"m\":1}}' > {}", fifo.display()))
            .spawn()
            .unwrap();
        let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
        run(None, Some(pidfd), &job).unwrap();
        child.wait().unwrap();
        let kept = std::fs::read_to_string(dir.path().join("metrics.json")).unwrap();
        assert_eq!(kept, "{\"m\":1}\n");
    }
}
