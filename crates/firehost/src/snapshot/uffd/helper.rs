//! A page server in a process of its own, so a restored VM outlives the
//! process that restored it.
//!
//! An in-process [`PageServer`] ends with its process: a short-lived command
//! (the CLI) or a crashed service would leave its VMs hanging on their next
//! missing page. With [`PageServerProgram`] set in the manager's
//! configuration, each restore instead starts a *helper*: a small process
//! that runs one [`PageServer`] for one VM, lives exactly as long as that
//! VM's VMM (it watches it through a pidfd), and then exits. The manager
//! records its pid, so a manager that re-opens the state directory keeps
//! the VM running instead of killing it.
//!
//! The helper is any program that calls [`run_helper`] (the CLI does, as
//! its hidden `page-server` command). The conversation is small and local:
//!
//! 1. The manager writes one JSON [`HelperRequest`] line to the helper's
//!    stdin and closes it.
//! 2. The helper binds the socket and writes `listening` on stdout; the
//!    manager then asks Firecracker to load the snapshot.
//! 3. Once Firecracker's handshake is accepted it writes `connected` (or
//!    `failed: <reason>` at any point, and exits non-zero).
//! 4. In populate mode it writes the [`DETACHED_MARKER`] file next to the
//!    socket and `detached` once every page is in, and exits: the VM needs
//!    nobody any more.
//! 5. Otherwise it serves until the VMM exits, stores the working set it
//!    recorded in the bundle (if the bundle has none), and exits.
//!
//! Its stderr goes to a log file in the VM's directory. Nothing in the
//! conversation is secret.
//!
//! # If the helper is told to stop while the VM runs
//!
//! On `SIGTERM` or `SIGINT` it fences the VM's memory (see the [module
//! docs](super)) so the guest fails loudly on its next missing page. Where
//! the kernel cannot fence (no `UFFDIO_POISON`, before Linux 6.6) or the
//! server failed, it kills the VMM instead: a VM that would hang forever is
//! worse than one that is gone. A helper killed outright (`SIGKILL`) can do
//! neither; a manager that re-opens the state directory then finds the VM
//! without its helper and kills it.

use std::ffi::OsString;
use std::io::{BufRead, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;

use super::{FenceOutcome, PageServer, PageServerError, PageServerOptions, PageServerPhase};
use super::{ServeMode, WorkingSet};
use crate::snapshot::MEMORY_FILE;
use crate::vmm::VmmProcess;

/// The file a populate helper creates, next to its socket, once the VM no
/// longer depends on it.
pub const DETACHED_MARKER: &str = "uffd.detached";

/// The largest request a helper reads.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// How to start a page-server helper: a program that calls [`run_helper`],
/// and the arguments that make it do so.
///
/// ```
/// use firehost::snapshot::uffd::PageServerProgram;
/// // The firehost CLI is such a program.
/// let program = PageServerProgram::new("/usr/local/bin/firehost", ["page-server"]);
/// assert_eq!(program.args.len(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageServerProgram {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

impl PageServerProgram {
    /// A program and its arguments.
    pub fn new(
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> PageServerProgram {
        PageServerProgram {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
        }
    }
}

/// What a helper serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HelperMode {
    /// [`ServeMode::OnDemand`], recording the working set.
    OnDemand,
    /// [`ServeMode::Populate`].
    Populate,
    /// [`ServeMode::Prefetch`] of the bundle's working set; without one,
    /// as `OnDemand`.
    Prefetch,
}

/// The one message a manager sends a helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperRequest {
    /// The socket to bind (it must not exist).
    pub socket: PathBuf,
    /// The bundle directory: the memory file is read from it and the
    /// working set stored in it.
    pub bundle: PathBuf,
    /// The mode.
    pub mode: HelperMode,
    /// Pages to record, at most, when recording.
    pub record_limit: usize,
    /// The VMM's pid and start time: the helper serves it and lives as
    /// long as it does.
    pub vmm_pid: i32,
    /// See `vmm_pid`.
    pub vmm_start_time: u64,
    /// How long Firecracker has to connect and send its handshake.
    pub handshake_timeout_ms: u64,
    /// The uid and gid to give the socket (a jailed Firecracker's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_owner: Option<(u32, u32)>,
}

impl HelperMode {
    /// The server options for this mode over `bundle` (blocking: reads the
    /// bundle's working set for `Prefetch`).
    pub(crate) fn options(self, bundle: &Path, record_limit: usize) -> PageServerOptions {
        let working_set = match self {
            HelperMode::Prefetch => WorkingSet::read(bundle).ok().flatten(),
            _ => None,
        };
        match (self, working_set) {
            (HelperMode::Populate, _) => PageServerOptions::new(ServeMode::Populate),
            (HelperMode::Prefetch, Some(set)) => PageServerOptions::new(ServeMode::Prefetch(set)),
            _ => PageServerOptions::new(ServeMode::OnDemand).record(record_limit),
        }
    }
}

/// A line a helper writes on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HelperEvent {
    Listening,
    Connected,
    Detached,
    Failed(String),
}

impl HelperEvent {
    fn line(&self) -> String {
        match self {
            HelperEvent::Listening => "listening\n".into(),
            HelperEvent::Connected => "connected\n".into(),
            HelperEvent::Detached => "detached\n".into(),
            // One line, whatever the error's text holds.
            HelperEvent::Failed(why) => format!("failed: {}\n", why.replace('\n', " ")),
        }
    }

    fn parse(line: &str) -> HelperEvent {
        match line.trim_end() {
            "listening" => HelperEvent::Listening,
            "connected" => HelperEvent::Connected,
            "detached" => HelperEvent::Detached,
            other => HelperEvent::Failed(
                other
                    .strip_prefix("failed: ")
                    .unwrap_or(other)
                    .chars()
                    .take(1000)
                    .collect(),
            ),
        }
    }
}

/// The helper's side: reads a [`HelperRequest`] from stdin, serves, and
/// returns when the VM no longer needs it. Call it from a program's `main`
/// (see [`PageServerProgram`]); it builds its own runtime, so it must not
/// run inside one.
///
/// Errors are also reported to the manager on stdout.
pub fn run_helper() -> Result<(), PageServerError> {
    let mut stdout = std::io::stdout();
    let result = read_request().and_then(|request| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| helper_failed(format!("cannot build a runtime: {e}")))?;
        runtime.block_on(serve(&request, &mut stdout))
    });
    if let Err(e) = &result {
        // The manager may be gone; nobody else would read this.
        let _ = stdout.write_all(HelperEvent::Failed(error_chain(e)).line().as_bytes());
    }
    result
}

fn read_request() -> Result<HelperRequest, PageServerError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .take(MAX_REQUEST_BYTES)
        .read_line(&mut line)
        .map_err(|e| helper_failed(format!("cannot read the request: {e}")))?;
    serde_json::from_str(&line).map_err(|e| helper_failed(format!("malformed request: {e}")))
}

fn helper_failed(message: String) -> PageServerError {
    PageServerError::Helper { message }
}

async fn serve(request: &HelperRequest, out: &mut impl Write) -> Result<(), PageServerError> {
    use tokio::signal::unix::{SignalKind, signal};
    let signal_err = |e: std::io::Error| helper_failed(format!("cannot watch signals: {e}"));
    let mut term = signal(SignalKind::terminate()).map_err(signal_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_err)?;
    let vmm = VmmProcess::attach(request.vmm_pid, request.vmm_start_time)
        .map_err(|e| helper_failed(format!("cannot watch the VMM: {e}")))?
        .ok_or_else(|| helper_failed(format!("VMM {} is not running", request.vmm_pid)))?;
    let mut options = request
        .mode
        .options(&request.bundle, request.record_limit)
        .handshake_timeout(Duration::from_millis(request.handshake_timeout_ms));
    options.socket_owner = request.socket_owner;
    let populate = options.mode == ServeMode::Populate;
    let server = PageServer::bind(
        request.socket.clone(),
        &request.bundle.join(MEMORY_FILE),
        options,
    )?;
    emit(out, &HelperEvent::Listening);
    let handshake = Duration::from_millis(request.handshake_timeout_ms);
    tokio::select! {
        connected = server.wait_connected(handshake) => { connected?; }
        _ = vmm.wait() => return finish(server, &vmm, request).await,
    }
    emit(out, &HelperEvent::Connected);
    let stopped = async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    tokio::select! {
        _ = vmm.wait() => {}
        _ = stopped => {}
        detached = server.wait_detached(Duration::MAX), if populate => {
            detached?;
            mark_detached(&request.socket)?;
            emit(out, &HelperEvent::Detached);
        }
    }
    finish(server, &vmm, request).await
}

/// Stops the server; kills the VMM if it was left unfenced; stores the
/// working set.
async fn finish(
    server: PageServer,
    vmm: &VmmProcess,
    request: &HelperRequest,
) -> Result<(), PageServerError> {
    let report = server.shutdown().await;
    let phase = match &report {
        Ok(report) => report.phase.clone(),
        Err(e) => PageServerPhase::Failed(e.clone()),
    };
    if left_unfenced(&phase) && vmm.exit_reason().is_none() {
        eprintln!("page server: the VM's memory could not be fenced ({phase:?}); killing its VMM");
        let _ = vmm.signal(rustix::process::Signal::KILL);
    }
    let report = report?;
    if let Some(set) = report.working_set {
        store_working_set(&request.bundle, set)
            .await
            .map_err(|e| helper_failed(format!("cannot store the working set: {e}")))?;
    }
    Ok(())
}

/// Whether a server that ended in `phase` may have left its VM waiting
/// forever on a missing page.
pub(crate) fn left_unfenced(phase: &PageServerPhase) -> bool {
    matches!(
        phase,
        PageServerPhase::Failed(_)
            | PageServerPhase::Stopped {
                fence: FenceOutcome::Unsupported { .. } | FenceOutcome::Failed { .. }
            }
    )
}

/// Stores `set` as the bundle's working set unless it has one already; an
/// empty set is not stored. Returns whether it was stored.
pub(crate) async fn store_working_set(
    bundle: &Path,
    set: WorkingSet,
) -> Result<bool, crate::snapshot::BundleError> {
    if set.pages.is_empty() {
        return Ok(false);
    }
    let bundle = bundle.to_owned();
    tokio::task::spawn_blocking(move || match WorkingSet::read(&bundle) {
        Ok(None) => set.write(&bundle).map(|()| true),
        Ok(Some(_)) => Ok(false),
        Err(e) => Err(e),
    })
    .await
    .expect("working-set writes do not panic")
}

fn mark_detached(socket: &Path) -> Result<(), PageServerError> {
    let marker = detached_marker(socket);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&marker)
        .map(drop)
        .map_err(|e| helper_failed(format!("cannot create {}: {e}", marker.display())))
}

/// The detached marker that belongs to a helper's socket.
pub(crate) fn detached_marker(socket: &Path) -> PathBuf {
    socket.with_file_name(DETACHED_MARKER)
}

fn emit(out: &mut impl Write, event: &HelperEvent) {
    // The manager that started us may have exited (a CLI does, once the VM
    // is up): a closed pipe is not our problem.
    let _ = out
        .write_all(event.line().as_bytes())
        .and_then(|()| out.flush());
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The manager's handle on a running helper.
#[derive(Debug)]
pub(crate) struct Helper {
    process: VmmProcess,
    /// The helper's stdout, while this manager started it.
    events: Option<tokio::io::Lines<tokio::io::BufReader<tokio::net::unix::pipe::Receiver>>>,
    socket: PathBuf,
    /// Whether it populates (and so will detach); assumed of an adopted
    /// helper, whose mode is not recorded.
    populate: bool,
}

impl Helper {
    /// Starts a helper for `request`, logging to `log`, and waits until it
    /// listens. On error nothing is left running.
    pub(crate) async fn start(
        program: &PageServerProgram,
        request: &HelperRequest,
        log: &Path,
        timeout: Duration,
    ) -> Result<Helper, PageServerError> {
        let (process, stdout) = spawn(program, request, log).map_err(|e| with_log(e, log))?;
        let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout)
            .map_err(|e| helper_failed(format!("cannot read the helper's output: {e}")))?;
        let mut helper = Helper {
            process,
            events: Some(tokio::io::BufReader::new(reader).lines()),
            socket: request.socket.clone(),
            populate: request.mode == HelperMode::Populate,
        };
        match helper.next_event(timeout).await {
            Ok(HelperEvent::Listening) => Ok(helper),
            Ok(other) => {
                helper.kill().await;
                Err(with_log(unexpected(other, "listening"), log))
            }
            Err(e) => {
                helper.kill().await;
                Err(with_log(e, log))
            }
        }
    }

    /// Finds the helper an earlier manager recorded; `None` if it is gone.
    pub(crate) fn adopt(pid: i32, start_time: u64, socket: PathBuf) -> Option<Helper> {
        let process = VmmProcess::attach(pid, start_time).ok().flatten()?;
        Some(Helper {
            process,
            events: None,
            socket,
            populate: true,
        })
    }

    /// The helper process.
    pub(crate) fn process(&self) -> &VmmProcess {
        &self.process
    }

    /// The socket Firecracker connects to.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// Waits until Firecracker's handshake was accepted.
    pub(crate) async fn wait_connected(
        &mut self,
        timeout: Duration,
    ) -> Result<(), PageServerError> {
        match self.next_event(timeout).await? {
            HelperEvent::Connected => Ok(()),
            other => Err(unexpected(other, "connected")),
        }
    }

    /// Waits until a populate helper has detached (and exited).
    pub(crate) async fn wait_detached(&mut self, timeout: Duration) -> Result<(), PageServerError> {
        if !self.populate {
            return Err(PageServerError::NotPopulating);
        }
        let waited = tokio::time::timeout(timeout, self.process.wait()).await;
        if waited.is_err() {
            return Err(PageServerError::Timeout {
                waited_for: super::Wait::Detach,
                timeout,
            });
        }
        if detached_marker(&self.socket).exists() {
            return Ok(());
        }
        // Its last words say why, when we still hear them.
        match self.next_event(Duration::from_millis(100)).await {
            Ok(HelperEvent::Failed(why)) => Err(helper_failed(why)),
            _ => Err(PageServerError::Ended {
                waited_for: super::Wait::Detach,
                phase: "helper exited",
            }),
        }
    }

    /// Waits up to `grace` for the helper to exit on its own (it does once
    /// the VMM is gone), then kills it.
    pub(crate) async fn retire(self, grace: Duration) {
        if self.process.wait_timeout(grace).await.is_none() {
            tracing::warn!(
                pid = self.process.pid(),
                "page-server helper outlived its VMM; killing it"
            );
            self.kill().await;
        }
    }

    /// Kills the helper and reaps it (a failed restore, whose VMM is about
    /// to be killed too).
    pub(crate) async fn kill(&self) {
        let _ = self.process.signal(rustix::process::Signal::KILL);
        let _ = self.process.wait_timeout(Duration::from_secs(5)).await;
    }

    async fn next_event(&mut self, timeout: Duration) -> Result<HelperEvent, PageServerError> {
        let Some(events) = self.events.as_mut() else {
            return Err(helper_failed(
                "the helper's output is not ours to read".into(),
            ));
        };
        let line = tokio::time::timeout(timeout, events.next_line()).await;
        match line {
            Err(_) => Err(helper_failed(format!(
                "the helper said nothing for {timeout:?}"
            ))),
            Ok(Err(e)) => Err(helper_failed(format!("cannot read the helper: {e}"))),
            Ok(Ok(None)) => Err(helper_failed("the helper exited without a word".into())),
            Ok(Ok(Some(line))) => Ok(HelperEvent::parse(&line)),
        }
    }
}

/// Adds the last line the helper logged to a helper failure: the log is in
/// the VM's directory, which a failed restore removes.
fn with_log(e: PageServerError, log: &Path) -> PageServerError {
    let PageServerError::Helper { message } = e else {
        return e;
    };
    let last = std::fs::read_to_string(log).ok().and_then(|text| {
        let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
        Some(line.chars().take(500).collect::<String>())
    });
    match last {
        Some(line) => helper_failed(format!("{message}; it logged: {line}")),
        None => PageServerError::Helper { message },
    }
}

fn unexpected(event: HelperEvent, wanted: &str) -> PageServerError {
    match event {
        HelperEvent::Failed(why) => helper_failed(why),
        other => helper_failed(format!("the helper said {other:?} where {wanted} was due")),
    }
}

/// Spawns the helper with the request on its stdin, its stdout piped back
/// and its stderr appended to `log`.
fn spawn(
    program: &PageServerProgram,
    request: &HelperRequest,
    log: &Path,
) -> Result<(VmmProcess, OwnedFd), PageServerError> {
    let spawn_err = |e: std::io::Error| PageServerError::HelperSpawn {
        program: program.program.clone(),
        source: Arc::new(e),
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .map_err(spawn_err)?;
    let mut command = Command::new(&program.program);
    command
        .args(&program.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        // Like the VMM: out of the terminal's foreground group, so a Ctrl-C
        // aimed at the manager does not reach the VM's memory.
        .process_group(0);
    let mut child = command.spawn().map_err(spawn_err)?;
    let pid = i32::try_from(child.id()).expect("pids fit in i32");
    let mut line = serde_json::to_vec(request).expect("requests always serialise");
    line.push(b'\n');
    let watched = child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(&line)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => {
                helper_failed("the helper exited without reading its request".into())
            }
            _ => spawn_err(e),
        })
        .and_then(|()| {
            VmmProcess::watch_child(pid)
                .map_err(|e| helper_failed(format!("cannot watch the helper: {e}")))
        });
    match watched {
        Ok(process) => {
            let stdout = child.stdout.take().expect("stdout is piped");
            // `child` is dropped without waiting: the pidfd watcher reaps it.
            Ok((process, stdout.into()))
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_lines() {
        for event in [
            HelperEvent::Listening,
            HelperEvent::Connected,
            HelperEvent::Detached,
            HelperEvent::Failed("no memory file: gone".into()),
        ] {
            assert_eq!(HelperEvent::parse(&event.line()), event);
        }
    }

    #[test]
    fn a_failure_is_one_line() {
        let line = HelperEvent::Failed("two\nlines".into()).line();
        assert_eq!(line.matches('\n').count(), 1);
        assert_eq!(
            HelperEvent::parse(&line),
            HelperEvent::Failed("two lines".into())
        );
    }

    #[test]
    fn an_unknown_line_is_a_failure() {
        assert_eq!(
            HelperEvent::parse("what\n"),
            HelperEvent::Failed("what".into())
        );
    }

    #[test]
    fn only_unfenced_ends_call_for_a_kill() {
        use rustix::io::Errno;
        let stopped = |fence| PageServerPhase::Stopped { fence };
        assert!(left_unfenced(&stopped(FenceOutcome::Unsupported {
            errno: Errno::INVAL
        })));
        assert!(left_unfenced(&stopped(FenceOutcome::Failed {
            errno: Errno::IO
        })));
        assert!(left_unfenced(&PageServerPhase::Failed(
            PageServerError::NoMappings
        )));
        assert!(!left_unfenced(&stopped(FenceOutcome::Poisoned {
            pages: 3
        })));
        assert!(!left_unfenced(&stopped(FenceOutcome::PeerGone)));
        assert!(!left_unfenced(&stopped(FenceOutcome::NotNeeded)));
        assert!(!left_unfenced(&PageServerPhase::Detached));
        assert!(!left_unfenced(&PageServerPhase::PeerExited));
    }

    #[test]
    fn the_marker_sits_beside_the_socket() {
        assert_eq!(
            detached_marker(Path::new("/run/vm1/uffd.sock")),
            Path::new("/run/vm1/uffd.detached")
        );
    }
}
