//! `Exec`: run a process and stream its input and output.
//!
//! # The process
//!
//! `argv[0]` is looked up in the child's `PATH` when it has no `/` (and
//! `PATH` defaults to [`DEFAULT_PATH`], since the kernel starts PID 1
//! without one). Its environment is the agent's own minus anything that
//! looks like the token ([`is_token_related`]), then the `SetEnv`
//! variables, then the request's (see [`child_env`]). It starts in `cwd`
//! (default `/`), as `uid`/`gid` when given, in a session and process group
//! of its own (`setsid` before `exec`), so that `Signal`, the timeout and a
//! lost connection reach everything it started, and nothing in the guest
//! can signal the agent by accident through a shared group.
//!
//! With `tty`, the process gets a [pseudo-terminal](crate::pty) as stdin,
//! stdout, stderr and controlling terminal (stdout and stderr merge, as on
//! any terminal). Without it, stdout and stderr are pipes and stdin is a
//! pipe when the host will send input, else `/dev/null`.
//!
//! # The session
//!
//! After `Started { pid }`, three things run at once:
//!
//! - the session task writes output frames ([`CHUNK`] bytes at most) as
//!   they arrive and waits for the process to exit;
//! - an inbound task reads the connection: `Stdin` frames and `Eof` go to
//!   the process, `Signal` goes to its process group, `Resize` to its
//!   terminal. When the connection closes, it kills the group at once
//!   (`SIGKILL`), without waiting for the session task, which may be stuck
//!   writing to a host that no longer reads;
//! - with `timeout_ms`, a timer kills the group when it runs out, and
//!   `Exited` then says `timed_out`.
//!
//! Stdin has backpressure: the inbound task waits until the process takes
//! each frame, so a `Signal` sent after a large input waits behind it.
//!
//! When the process exits, the output pipes usually close at once; if
//! something it started in the background still holds them, the agent
//! reads on for [`OUTPUT_DRAIN_TIMEOUT`] and then stops, so an exec never
//! hangs on a daemon it spawned. Then `Exited` goes out, last. Processes
//! left behind by a process that exited normally are not killed: they were
//! started on purpose. A connection that closes before `Exited` kills the
//! whole group, leftovers included.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use firehost_proto::{AgentMessage, CHUNK, ClientMessage, ExecRequest, FrameKind, Secret};
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::error::RequestError;
use crate::log::debug;
use crate::pty::{self, Pty, PtyMaster};
use crate::server::Agent;
use crate::session::{Reader, Writer, send_frame};

/// `PATH` for a process when neither the agent's environment nor the
/// request has one (the kernel starts PID 1 without it).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long output is still read after the process exited, for background
/// processes that keep its pipes open.
pub const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Output chunks queued between the readers and the session task; keeps a
/// fast writer from filling the agent's memory when the host reads slowly.
const OUTPUT_QUEUE: usize = 8;

/// What the kernel's tty layer takes as end of input (`VEOF`, Ctrl-D) in
/// canonical mode: how `Eof` reaches a process on a terminal, whose input
/// cannot be closed while its output is still read.
const TTY_EOF: u8 = 0x04;

/// Whether an environment variable of the agent's must not reach a process:
/// its name mentions both "firehost" and "token", in any case (the token's
/// boot argument `firehost.token`, a `FIREHOST_TOKEN` given to a service…).
pub fn is_token_related(name: &OsStr) -> bool {
    let name = name.to_string_lossy().to_ascii_lowercase();
    name.contains("firehost") && name.contains("token")
}

/// Checks variables from the host: names non-empty, without `=` or NUL;
/// values without NUL (neither can be passed to `execve`).
pub fn validate_env(vars: &BTreeMap<String, Secret>) -> Result<(), RequestError> {
    for (name, value) in vars {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(RequestError::bad_request(format!(
                "invalid environment variable name {name:?}"
            )));
        }
        if value.0.contains('\0') {
            // The name is fine to show; the value is not.
            return Err(RequestError::bad_request(format!(
                "the value of environment variable {name} contains a NUL byte"
            )));
        }
    }
    Ok(())
}

/// A process's environment: `inherited` (the agent's) without
/// token-related variables, then `set_env`, then `request` (later wins),
/// then `PATH` (and, on a terminal, `TERM=xterm`) where still missing.
pub fn child_env(
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
    set_env: &BTreeMap<String, Secret>,
    request: &BTreeMap<String, Secret>,
    tty: bool,
) -> BTreeMap<OsString, OsString> {
    let mut env: BTreeMap<OsString, OsString> = inherited
        .into_iter()
        .filter(|(name, _)| !is_token_related(name))
        .collect();
    for (name, value) in set_env.iter().chain(request) {
        env.insert(name.into(), value.0.clone().into());
    }
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    if tty {
        env.entry("TERM".into()).or_insert_with(|| "xterm".into());
    }
    env
}

/// Sends `signal` to the process group `pgid`; unknown signal numbers are
/// ignored (and logged), as is a group that is already gone.
fn signal_group(pgid: Pid, signal: i32) {
    match Signal::from_named_raw(signal) {
        Some(sig) => {
            let _ = rustix::process::kill_process_group(pgid, sig);
        }
        None => debug!("ignoring unknown signal {signal}"),
    }
}

/// Kills the process group when dropped, unless disarmed: whatever way the
/// session ends before `Exited` (an error, the task dropped at shutdown),
/// the processes do not outlive it.
struct KillGroupOnDrop {
    pgid: Pid,
    armed: bool,
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = rustix::process::kill_process_group(self.pgid, Signal::KILL);
        }
    }
}

/// Aborts a task when dropped, so that helpers die with their session.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where stdin frames go.
enum Input {
    /// Nowhere: no stdin was asked for, or it was closed.
    Closed,
    /// The stdin pipe.
    Pipe(ChildStdin),
    /// The terminal.
    Pty(Arc<PtyMaster>),
}

/// Runs `req` for the session whose connection is `r`/`w`: answers
/// `Started`, streams, answers `Exited`.
///
/// # Cancel safety
///
/// Dropping the future kills the process group (unless `Exited` was
/// already being sent).
pub async fn run(
    agent: &Agent,
    req: ExecRequest,
    r: Reader,
    w: &mut Writer,
) -> Result<(), RequestError> {
    let program = match req.argv.first() {
        Some(p) if !p.is_empty() => p.clone(),
        _ => return Err(RequestError::bad_request("argv is empty")),
    };
    if req.argv.iter().any(|a| a.contains('\0')) {
        return Err(RequestError::bad_request("an argument contains a NUL byte"));
    }
    validate_env(&req.env)?;
    let cwd = req.cwd.clone().unwrap_or_else(|| "/".to_owned());
    check_cwd(&program, &cwd).await?;

    let env = child_env(std::env::vars_os(), &agent.env(), &req.env, req.tty);
    let mut cmd = Command::new(&program);
    cmd.args(&req.argv[1..])
        .env_clear()
        .envs(env)
        .current_dir(&cwd);
    if let Some(uid) = req.uid {
        cmd.uid(uid);
    }
    if let Some(gid) = req.gid {
        cmd.gid(gid);
    }
    let exec_failed = |source: io::Error| RequestError::ExecFailed {
        program: program.clone(),
        source,
    };
    let pty = if req.tty {
        let pty = Pty::open(pty::DEFAULT_SIZE.0, pty::DEFAULT_SIZE.1).map_err(exec_failed)?;
        if req.uid.is_some() {
            // Let a process that drops privileges reopen its own terminal
            // (/dev/tty), as login does.
            std::os::unix::fs::fchown(&pty.slave, req.uid, None).map_err(exec_failed)?;
        }
        cmd.stdin(Stdio::from(pty.slave.try_clone().map_err(exec_failed)?))
            .stdout(Stdio::from(pty.slave.try_clone().map_err(exec_failed)?))
            .stderr(Stdio::from(pty.slave.try_clone().map_err(exec_failed)?));
        Some(pty)
    } else {
        cmd.stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        None
    };
    let tty = req.tty;
    // SAFETY: the closure runs in the forked child between fork and exec,
    // where only async-signal-safe calls are allowed: setsid and ioctl are
    // plain system calls, and it allocates nothing (an error becomes an
    // io::Error from the raw errno).
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::setsid()?;
            if tty {
                // SAFETY: std has already dup2'ed the terminal's slave onto
                // fd 0 when pre_exec closures run; it stays open across the
                // call.
                let stdin = BorrowedFd::borrow_raw(0);
                rustix::process::ioctl_tiocsctty(stdin)?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(exec_failed)?;
    // The command holds the parent's copies of the terminal's slave; while
    // they are open, the master never sees the end of the output.
    drop(cmd);
    let (master, slave) = match pty {
        Some(Pty { master, slave }) => (Some(Arc::new(master)), Some(slave)),
        None => (None, None),
    };
    drop(slave);
    let pid = child
        .id()
        .ok_or_else(|| exec_failed(io::Error::other("the process vanished at once")))?;
    let pgid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| exec_failed(io::Error::other("the kernel gave an invalid pid")))?;
    let mut guard = KillGroupOnDrop { pgid, armed: true };
    debug!("exec `{program}`: pid {pid}");
    crate::session::send(w, &AgentMessage::Started { pid }).await?;

    let (out_tx, mut out_rx) = mpsc::channel::<(FrameKind, Vec<u8>)>(OUTPUT_QUEUE);
    let mut readers = JoinSet::new();
    let input = match &master {
        Some(master) => {
            let (reader_master, tx) = (Arc::clone(master), out_tx.clone());
            readers.spawn(async move { pump_pty(&reader_master, tx).await });
            if req.stdin {
                Input::Pty(Arc::clone(master))
            } else {
                Input::Closed
            }
        }
        None => {
            if let Some(stdout) = child.stdout.take() {
                readers.spawn(pump(stdout, FrameKind::Stdout, out_tx.clone()));
            }
            if let Some(stderr) = child.stderr.take() {
                readers.spawn(pump(stderr, FrameKind::Stderr, out_tx.clone()));
            }
            child.stdin.take().map_or(Input::Closed, Input::Pipe)
        }
    };
    drop(out_tx);
    let inbound = AbortOnDrop(tokio::spawn(inbound(r, input, master.clone(), pgid)));
    let timed_out = Arc::new(AtomicBool::new(false));
    let timer = req.timeout_ms.map(|ms| {
        let timed_out = Arc::clone(&timed_out);
        AbortOnDrop(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            timed_out.store(true, Ordering::SeqCst);
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        }))
    });

    let mut status = None;
    let mut drain_until: Option<Instant> = None;
    loop {
        tokio::select! {
            chunk = out_rx.recv() => match chunk {
                Some((kind, data)) => send_frame(w, kind, &data).await?,
                None => break,
            },
            exit = child.wait(), if status.is_none() => {
                let exit = exit.map_err(|source| RequestError::Io {
                    op: "wait for",
                    path: program.clone(),
                    source,
                })?;
                // The exit is final: a timer firing now would only hit
                // processes the exec left behind on purpose.
                if let Some(timer) = &timer {
                    timer.0.abort();
                }
                status = Some(exit);
                drain_until = Some(Instant::now() + OUTPUT_DRAIN_TIMEOUT);
            },
            () = sleep_until(drain_until), if drain_until.is_some() => {
                debug!("exec `{program}` (pid {pid}): its output is still held open; not waiting for it");
                readers.abort_all();
                while let Ok((kind, data)) = out_rx.try_recv() {
                    send_frame(w, kind, &data).await?;
                }
                break;
            },
        }
    }
    let status = match status {
        Some(status) => status,
        None => child.wait().await.map_err(|source| RequestError::Io {
            op: "wait for",
            path: program.clone(),
            source,
        })?,
    };
    // From here on the host may close the connection at any time; that
    // must not kill what the process left running, so the inbound task
    // (which kills on close) goes first.
    let mut inbound = inbound;
    inbound.0.abort();
    let _ = (&mut inbound.0).await;
    guard.armed = false;
    drop(timer);
    let timed_out = timed_out.load(Ordering::SeqCst);
    debug!(
        "exec `{program}` (pid {pid}): exited with code {:?}, signal {:?}{}",
        status.code(),
        status.signal(),
        if timed_out { " (timed out)" } else { "" }
    );
    crate::session::send(
        w,
        &AgentMessage::Exited {
            code: status.code(),
            signal: status.signal(),
            timed_out,
        },
    )
    .await?;
    Ok(())
}

/// Sleeps until `deadline`, or forever without one (the `select!` branch is
/// disabled then anyway).
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Fails early, with a clearer message than `exec`'s ENOENT, when the
/// working directory is missing or not a directory.
async fn check_cwd(program: &str, cwd: &str) -> Result<(), RequestError> {
    let bad_cwd = |source| RequestError::BadCwd {
        program: program.to_owned(),
        cwd: cwd.to_owned(),
        source,
    };
    let md = tokio::fs::metadata(cwd).await.map_err(bad_cwd)?;
    if md.is_dir() {
        Ok(())
    } else {
        Err(bad_cwd(io::Error::from_raw_os_error(libc::ENOTDIR)))
    }
}

/// Copies a pipe into output chunks until it closes.
async fn pump(
    mut src: impl AsyncRead + Unpin,
    kind: FrameKind,
    tx: mpsc::Sender<(FrameKind, Vec<u8>)>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match src.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send((kind, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Copies a terminal's output into `Stdout` chunks until every slave
/// descriptor is closed.
async fn pump_pty(master: &PtyMaster, tx: mpsc::Sender<(FrameKind, Vec<u8>)>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match master.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx
                    .send((FrameKind::Stdout, buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Reads the connection during an exec: stdin, signals, resizes; kills the
/// process group when the connection closes or breaks.
async fn inbound(mut r: Reader, mut input: Input, master: Option<Arc<PtyMaster>>, pgid: Pid) {
    loop {
        let frame = match firehost_proto::read_frame(&mut r).await {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => {
                debug!(
                    "connection closed before process group {} exited: killing it",
                    pgid.as_raw_nonzero()
                );
                let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
                return;
            }
        };
        match frame.kind {
            FrameKind::Stdin => {
                let written = match &mut input {
                    Input::Closed => Ok(()),
                    Input::Pipe(stdin) => stdin.write_all(&frame.payload).await,
                    Input::Pty(master) => master.write_all(&frame.payload).await,
                };
                if written.is_err() {
                    // The process closed its stdin (or died): what else the
                    // host sends has nowhere to go.
                    input = Input::Closed;
                }
            }
            FrameKind::Eof => {
                if let Input::Pty(master) = &input {
                    let _ = master.write_all(&[TTY_EOF]).await;
                }
                // Dropping the pipe's write end is its end of file.
                input = Input::Closed;
            }
            FrameKind::Control => match firehost_proto::decode::<ClientMessage>(&frame) {
                Ok(ClientMessage::Signal { signal }) => signal_group(pgid, signal),
                Ok(ClientMessage::Resize { rows, cols }) => match &master {
                    Some(master) => {
                        if let Err(e) = master.resize(rows, cols) {
                            debug!("cannot resize the terminal: {e}");
                        }
                    }
                    None => debug!("ignoring a resize for an exec without a tty"),
                },
                Ok(_) => debug!("ignoring a request in the middle of an exec"),
                Err(e) => debug!("ignoring a malformed message in the middle of an exec: {e}"),
            },
            other => debug!("ignoring a {other:?} frame in the middle of an exec"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, Secret> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Secret((*v).to_owned())))
            .collect()
    }

    #[test]
    fn token_related_names_are_recognised() {
        let cases = [
            ("firehost.token", true),
            ("FIREHOST_TOKEN", true),
            ("FIREHOST_AGENT_TOKEN", true),
            ("Firehost_Token_File", true),
            ("TOKEN", false),
            ("FIREHOST_HOME", false),
            ("PATH", false),
        ];
        for (name, expected) in cases {
            assert_eq!(is_token_related(OsStr::new(name)), expected, "{name}");
        }
    }

    #[test]
    fn the_request_wins_over_set_env_which_wins_over_the_agent() {
        let inherited = [
            ("A", "agent"),
            ("B", "agent"),
            ("C", "agent"),
            ("FIREHOST_TOKEN", "s3cr3t"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let set = secrets(&[("B", "set"), ("C", "set")]);
        let request = secrets(&[("C", "request")]);
        let env = child_env(inherited, &set, &request, false);
        let get = |k: &str| env.get(OsStr::new(k)).map(|v| v.to_str().unwrap());
        assert_eq!(get("A"), Some("agent"));
        assert_eq!(get("B"), Some("set"));
        assert_eq!(get("C"), Some("request"));
        assert_eq!(get("FIREHOST_TOKEN"), None);
        assert_eq!(get("PATH"), Some(DEFAULT_PATH));
        assert_eq!(get("TERM"), None);
    }

    #[test]
    fn path_and_term_are_kept_when_given() {
        let inherited = [("PATH", "/opt/bin"), ("TERM", "vt100")]
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = child_env(inherited, &BTreeMap::new(), &BTreeMap::new(), true);
        assert_eq!(env[OsStr::new("PATH")], "/opt/bin");
        assert_eq!(env[OsStr::new("TERM")], "vt100");
        let env = child_env([], &BTreeMap::new(), &BTreeMap::new(), true);
        assert_eq!(env[OsStr::new("TERM")], "xterm");
    }

    #[test]
    fn invalid_variables_are_refused_without_showing_values() {
        assert!(validate_env(&secrets(&[("OK", "fine")])).is_ok());
        for bad in [
            secrets(&[("", "x")]),
            secrets(&[("A=B", "x")]),
            secrets(&[("A\0", "x")]),
        ] {
            assert!(validate_env(&bad).is_err());
        }
        let err = validate_env(&secrets(&[("KEY", "s3cr3t\0")])).unwrap_err();
        assert!(!err.wire_message().contains("s3cr3t"), "{err}");
    }
}
