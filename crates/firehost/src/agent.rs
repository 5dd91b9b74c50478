//! The host side of the guest agent: run commands in a VM, move files,
//! wait until the guest is ready.
//!
//! An [`AgentClient`] reaches `firehost-agent` in the guest through the
//! VM's vsock device ([`crate::vsock::connect`]); every call is a session of
//! its own on a fresh connection (the protocol is in [`firehost_proto`]), so
//! calls run concurrently and a stuck one never blocks another.
//!
//! # Examples
//!
//! ```no_run
//! # async fn demo(manager: firehost::Manager, id: firehost::VmId) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use firehost::agent::ExecRequest;
//!
//! let agent = manager.agent(&id).await?;
//! agent.wait_ready(Duration::from_secs(10)).await?;
//! let out = agent.output(ExecRequest::new(["uname", "-r"]), None).await?;
//! assert!(out.status.success());
//! println!("{}", String::from_utf8_lossy(&out.stdout));
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firehost_proto::{AgentMessage, CHUNK, ClientMessage, FrameError, FrameKind, PROTOCOL_VERSION};
pub use firehost_proto::{
    DEFAULT_PORT, ErrorCode, ExecRequest, FileKind, FileStat, Secret, Token, WriteFileRequest,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::vsock::{self, VsockError};

/// How long a call waits for the agent to accept, unless told otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The agent could not be reached through the vsock device.
    #[error(transparent)]
    Connect(#[from] VsockError),
    /// The agent refused: bad token, version mismatch, a failed request.
    #[error("the agent refused ({code:?}): {message}")]
    Refused {
        /// Its error code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The connection broke or carried something that is not the protocol.
    #[error("agent connection failed")]
    Frame(#[from] FrameError),
    /// The agent said something out of turn.
    #[error("the agent answered out of turn: {0}")]
    Protocol(String),
    /// The session ended before the request finished (the agent or the
    /// guest went away).
    #[error("the agent closed the session before {0}")]
    Closed(&'static str),
    /// The agent did not become ready in time.
    #[error("the agent was not ready after {0:?}")]
    NotReady(Duration),
    /// The request does not fit in one protocol frame: argv and env
    /// together are limited to [`firehost_proto::MAX_PAYLOAD`] bytes as
    /// JSON. Nothing was sent. Pass large inputs through stdin
    /// ([`AgentClient::output`]) or a file ([`AgentClient::write_file`]).
    #[error(
        "the request is {len} bytes, over the agent protocol's {max}-byte limit; \
         pass large inputs through stdin or a file"
    )]
    RequestTooLarge {
        /// Its size as JSON.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A local stream (a file being sent or received) failed.
    #[error("local I/O failed")]
    Io(#[source] std::io::Error),
}

/// How a process in the guest ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitStatus {
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// It was killed because its timeout passed.
    pub timed_out: bool,
}

impl ExitStatus {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Everything a finished process wrote (up to the client's output limit,
/// [`AgentClient::with_output_limit`]), and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Output {
    /// Its stdout (with a tty: everything), at most the output limit.
    pub stdout: Vec<u8>,
    /// Its stderr, at most the output limit.
    pub stderr: Vec<u8>,
    /// How it ended.
    pub status: ExitStatus,
    /// Bytes of stdout read past the limit and dropped (the newest ones:
    /// `stdout` keeps the first bytes).
    pub stdout_dropped: u64,
    /// Bytes of stderr read past the limit and dropped.
    pub stderr_dropped: u64,
}

impl Output {
    /// An output with nothing dropped.
    pub fn new(stdout: Vec<u8>, stderr: Vec<u8>, status: ExitStatus) -> Self {
        Output {
            stdout,
            stderr,
            status,
            stdout_dropped: 0,
            stderr_dropped: 0,
        }
    }

    /// Whether either stream was cut at the output limit.
    pub fn truncated(&self) -> bool {
        self.stdout_dropped > 0 || self.stderr_dropped > 0
    }
}

/// How much of each stream [`AgentClient::output`] keeps unless told
/// otherwise: 16 MiB. A guest is untrusted; without a bound it could make
/// the host buffer output until it runs out of memory.
pub const DEFAULT_OUTPUT_LIMIT: usize = 16 << 20;

/// Refuses a request that does not fit in one protocol frame
/// ([`AgentError::RequestTooLarge`]).
pub(crate) fn check_request_size(request: &ClientMessage) -> Result<(), AgentError> {
    let len = serde_json::to_vec(request).map_err(FrameError::from)?.len();
    if len > firehost_proto::MAX_PAYLOAD {
        return Err(AgentError::RequestTooLarge {
            len,
            max: firehost_proto::MAX_PAYLOAD,
        });
    }
    Ok(())
}

/// Appends `bytes` to `kept` up to `limit`, counting the rest in `dropped`.
fn keep_up_to(kept: &mut Vec<u8>, dropped: &mut u64, limit: usize, bytes: &[u8]) {
    let room = limit.saturating_sub(kept.len()).min(bytes.len());
    kept.extend_from_slice(&bytes[..room]);
    *dropped += (bytes.len() - room) as u64;
}

/// What an exec session delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Bytes from stdout (or the tty).
    Stdout(Vec<u8>),
    /// Bytes from stderr.
    Stderr(Vec<u8>),
    /// The process ended; nothing follows.
    Exited(ExitStatus),
}

/// The agent's answer to a health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// It serves requests.
    pub ready: bool,
    /// How long it has run.
    pub uptime: Duration,
    /// Its version.
    pub agent_version: String,
}

/// A handle on one VM's agent. Cheap to clone.
#[derive(Clone)]
pub struct AgentClient {
    uds: PathBuf,
    port: u32,
    token: Token,
    connect_timeout: Duration,
    output_limit: usize,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("uds", &self.uds)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

type Reader = BufReader<OwnedReadHalf>;
type Writer = BufWriter<OwnedWriteHalf>;

impl AgentClient {
    /// A client for the agent on vsock port `port` behind the device socket
    /// `uds`, proving itself with `token`.
    pub fn new(uds: impl Into<PathBuf>, port: u32, token: Token) -> Self {
        AgentClient {
            uds: uds.into(),
            port,
            token,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            output_limit: DEFAULT_OUTPUT_LIMIT,
        }
    }

    /// How long each call waits for the agent to accept.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many bytes of each stream [`AgentClient::output`] keeps
    /// (default [`DEFAULT_OUTPUT_LIMIT`]). Past it the output is still read,
    /// so the process runs to its end, but dropped and counted in
    /// [`Output::stdout_dropped`] / [`Output::stderr_dropped`].
    ///
    /// ```
    /// # use firehost::agent::{AgentClient, Token};
    /// let agent = AgentClient::new("/tmp/v.sock", 52, Token("t".into()))
    ///     .with_output_limit(1 << 20);
    /// ```
    pub fn with_output_limit(mut self, bytes: usize) -> Self {
        self.output_limit = bytes;
        self
    }

    /// The device socket.
    pub fn socket(&self) -> &Path {
        &self.uds
    }

    /// Opens a session: connect, `Hello`, `Welcome`.
    async fn session(&self, timeout: Duration) -> Result<(Reader, Writer), AgentError> {
        let stream = vsock::connect(&self.uds, self.port, timeout).await?;
        let (r, w) = stream.into_split();
        let (mut r, mut w) = (BufReader::new(r), BufWriter::new(w));
        let hello = ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            token: self.token.clone(),
        };
        firehost_proto::send(&mut w, &hello).await?;
        match answer(&mut r, "the handshake").await? {
            AgentMessage::Welcome { .. } => Ok((r, w)),
            other => Err(unexpected(&other)),
        }
    }

    /// A session with `request` sent.
    async fn request(&self, request: &ClientMessage) -> Result<(Reader, Writer), AgentError> {
        // Checked before connecting, so a refused request costs nothing.
        check_request_size(request)?;
        let (r, mut w) = self.session(self.connect_timeout).await?;
        firehost_proto::send(&mut w, request).await?;
        Ok((r, w))
    }

    /// Asks the agent how it is.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn health(&self) -> Result<Health, AgentError> {
        let (mut r, _w) = self.request(&ClientMessage::Health).await?;
        match answer(&mut r, "the health answer").await? {
            AgentMessage::Health {
                ready,
                uptime_ms,
                agent_version,
            } => Ok(Health {
                ready,
                uptime: Duration::from_millis(uptime_ms),
                agent_version,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Waits until the agent answers a health check with `ready`, for at
    /// most `timeout` (a guest that is still booting does not accept
    /// connections yet; the wait retries). A refusal (bad token, version
    /// mismatch) ends the wait at once.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only asks.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Health, AgentError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = async {
                let (mut r, mut w) = self.session(left).await?;
                firehost_proto::send(&mut w, &ClientMessage::Health).await?;
                answer(&mut r, "the health answer").await
            };
            match tokio::time::timeout(left, attempt).await {
                Ok(Ok(AgentMessage::Health {
                    ready: true,
                    uptime_ms,
                    agent_version,
                })) => {
                    return Ok(Health {
                        ready: true,
                        uptime: Duration::from_millis(uptime_ms),
                        agent_version,
                    });
                }
                Ok(Err(e @ AgentError::Refused { .. })) => return Err(e),
                // Up but not ready yet, or the connection broke while the
                // guest was coming up: ask again shortly.
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20).min(left)).await;
                }
                _ => return Err(AgentError::NotReady(timeout)),
            }
        }
    }

    /// Starts a process. Read its output with [`ExecSession::next`]; feed
    /// stdin (when `request.stdin`) with [`ExecSession::write_stdin`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped after the request was sent, the process may
    /// have started; its session closes with the connection, which makes the
    /// agent kill it.
    pub async fn exec(&self, request: ExecRequest) -> Result<ExecSession, AgentError> {
        let (mut r, w) = self.request(&ClientMessage::Exec(request)).await?;
        match answer(&mut r, "the process started").await? {
            AgentMessage::Started { pid } => Ok(ExecSession {
                input: ExecInput { w },
                output: ExecOutput { r, done: false },
                pid,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs a process to its end, feeding it `stdin` (if given) while
    /// collecting its output: at most the output limit of each stream
    /// ([`AgentClient::with_output_limit`]); the rest is read and dropped,
    /// and counted in the [`Output`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped midway, the connection closes, which makes the
    /// agent kill the process; its output so far is lost.
    pub async fn output(
        &self,
        mut request: ExecRequest,
        stdin: Option<Vec<u8>>,
    ) -> Result<Output, AgentError> {
        request.stdin = stdin.is_some();
        let (mut input, mut output, _pid) = self.exec(request).await?.split();
        let feed = async move {
            if let Some(data) = stdin {
                input.write_stdin(&data).await?;
                input.close_stdin().await?;
            }
            // Keep the write half open until the process ends: closing it
            // would end the session and kill the process.
            Ok::<ExecInput, AgentError>(input)
        };
        let limit = self.output_limit;
        let collect = async {
            let mut out = Output::new(Vec::new(), Vec::new(), ExitStatus::default());
            loop {
                match output.next().await? {
                    Some(ExecEvent::Stdout(b)) => {
                        keep_up_to(&mut out.stdout, &mut out.stdout_dropped, limit, &b)
                    }
                    Some(ExecEvent::Stderr(b)) => {
                        keep_up_to(&mut out.stderr, &mut out.stderr_dropped, limit, &b)
                    }
                    Some(ExecEvent::Exited(status)) => {
                        out.status = status;
                        return Ok::<Output, AgentError>(out);
                    }
                    None => return Err(AgentError::Closed("the process exited")),
                }
            }
        };
        let (fed, collected) = tokio::join!(feed, collect);
        let out = collected?;
        // A process that exits without reading all its stdin breaks the
        // pipe; that is its business, not an error of the session.
        drop(fed);
        Ok(out)
    }

    /// Writes `contents` to `path` in the guest (atomically: a temporary
    /// file renamed into place) and returns the size written. Streams: the
    /// file is never held in memory whole.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, but never leaves a partial file: the agent writes a
    /// temporary file and renames it only when the whole stream has arrived;
    /// dropped midway, nothing changes in the guest.
    pub async fn write_file<R: AsyncRead + Unpin>(
        &self,
        request: WriteFileRequest,
        mut contents: R,
    ) -> Result<u64, AgentError> {
        let (mut r, mut w) = self.request(&ClientMessage::WriteFile(request)).await?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = contents.read(&mut buf).await.map_err(AgentError::Io)?;
            if n == 0 {
                break;
            }
            firehost_proto::write_frame(&mut w, FrameKind::Data, &buf[..n]).await?;
        }
        firehost_proto::write_frame(&mut w, FrameKind::Eof, &[]).await?;
        w.flush().await.map_err(AgentError::Io)?;
        match answer(&mut r, "the file was written").await? {
            AgentMessage::Written { bytes } => Ok(bytes),
            other => Err(unexpected(&other)),
        }
    }

    /// Copies `path` from the guest into `sink`; returns its description
    /// (as the agent saw it when it opened the file) and the bytes copied.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped midway, `sink` holds part of the file.
    pub async fn read_file<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        mut sink: W,
    ) -> Result<(FileStat, u64), AgentError> {
        let (mut r, _w) = self
            .request(&ClientMessage::ReadFile {
                path: path.to_owned(),
            })
            .await?;
        let stat = match answer(&mut r, "the file's description").await? {
            AgentMessage::FileInfo(stat) => stat,
            other => return Err(unexpected(&other)),
        };
        let mut copied = 0u64;
        // One buffer for every frame: no allocation per 64 KiB.
        let mut payload = Vec::with_capacity(CHUNK);
        loop {
            let kind = firehost_proto::read_frame_into(&mut r, &mut payload)
                .await?
                .ok_or(AgentError::Closed("the end of the file"))?;
            match kind {
                FrameKind::Data => {
                    sink.write_all(&payload).await.map_err(AgentError::Io)?;
                    copied += payload.len() as u64;
                }
                FrameKind::Eof => break,
                FrameKind::Control => {
                    let frame = firehost_proto::Frame {
                        kind,
                        payload: std::mem::take(&mut payload),
                    };
                    return Err(match firehost_proto::decode::<AgentMessage>(&frame)? {
                        AgentMessage::Error { code, message } => {
                            AgentError::Refused { code, message }
                        }
                        other => unexpected(&other),
                    });
                }
                other => return Err(AgentError::Protocol(format!("a {other:?} frame"))),
            }
        }
        sink.flush().await.map_err(AgentError::Io)?;
        Ok((stat, copied))
    }

    /// Describes `path` in the guest (a final symlink is not followed).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn stat(&self, path: &str) -> Result<FileStat, AgentError> {
        let (mut r, _w) = self
            .request(&ClientMessage::Stat {
                path: path.to_owned(),
            })
            .await?;
        match answer(&mut r, "the description").await? {
            AgentMessage::FileInfo(stat) => Ok(stat),
            other => Err(unexpected(&other)),
        }
    }

    /// Lists a directory in the guest, sorted by name.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn list(&self, path: &str) -> Result<Vec<FileStat>, AgentError> {
        let (mut r, _w) = self
            .request(&ClientMessage::List {
                path: path.to_owned(),
            })
            .await?;
        match answer(&mut r, "the listing").await? {
            AgentMessage::Entries { entries } => Ok(entries),
            other => Err(unexpected(&other)),
        }
    }

    /// Sets environment variables (secrets, say) for every later exec.
    /// The values never reach a log on either side.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped after the request was sent, the variables may
    /// or may not be set; setting them again is harmless.
    pub async fn set_env(&self, vars: BTreeMap<String, Secret>) -> Result<(), AgentError> {
        let (mut r, _w) = self.request(&ClientMessage::SetEnv { vars }).await?;
        match answer(&mut r, "the environment was set").await? {
            AgentMessage::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Mixes fresh randomness from the host into the guest kernel's pool
    /// and reseeds its CRNG, so that a clone's random numbers differ from
    /// its siblings' (see `manager/restore.rs`). The bytes come from the
    /// host's `getrandom`; they never reach a log.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped after the request was sent, the guest may
    /// or may not have reseeded; reseeding again is harmless.
    pub async fn reseed(&self) -> Result<(), AgentError> {
        let entropy = random_hex::<64>().map_err(AgentError::Io)?;
        let request = ClientMessage::Reseed {
            entropy: Secret(entropy),
        };
        let (mut r, _w) = self.request(&request).await?;
        match answer(&mut r, "the CRNG was reseeded").await? {
            AgentMessage::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Makes the agent demand `token` from the next session on, in place of
    /// the one it has (this client's, which opens this session). Used to
    /// give each clone of a snapshot a token of its own: the guest keeps
    /// the token it booted with in its memory, the same in every clone.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped after the request was sent, the agent may
    /// demand either token; the manager records the new one before it asks
    /// (see `Manager::agent`).
    pub async fn rekey(&self, token: &Token) -> Result<(), AgentError> {
        let request = ClientMessage::Rekey {
            token: token.clone(),
        };
        let (mut r, _w) = self.request(&request).await?;
        match answer(&mut r, "the token was replaced").await? {
            AgentMessage::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Asks the guest to power off (or reboot).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once sent, the guest shuts down whether or not the
    /// answer is awaited.
    pub async fn shutdown(&self, reboot: bool) -> Result<(), AgentError> {
        let (mut r, _w) = self.request(&ClientMessage::Shutdown { reboot }).await?;
        match answer(&mut r, "the shutdown was accepted").await? {
            AgentMessage::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

/// A running process in the guest.
#[derive(Debug)]
pub struct ExecSession {
    input: ExecInput,
    output: ExecOutput,
    pid: u32,
}

/// The sending half of an exec session: stdin, signals, tty size.
#[derive(Debug)]
pub struct ExecInput {
    w: Writer,
}

/// The receiving half of an exec session: output and the exit status.
#[derive(Debug)]
pub struct ExecOutput {
    r: Reader,
    done: bool,
}

impl ExecSession {
    /// The process's pid in the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Splits the session so that stdin can be fed while output is read
    /// (on separate tasks, or joined). Dropping the input half ends the
    /// session: the agent then kills the process.
    pub fn split(self) -> (ExecInput, ExecOutput, u32) {
        (self.input, self.output, self.pid)
    }

    /// See [`ExecInput::write_stdin`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped midway, part of `data` may have been sent; the
    /// session is then out of step and should be dropped.
    pub async fn write_stdin(&mut self, data: &[u8]) -> Result<(), AgentError> {
        self.input.write_stdin(data).await
    }

    /// See [`ExecInput::close_stdin`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, as [`write_stdin`](Self::write_stdin).
    pub async fn close_stdin(&mut self) -> Result<(), AgentError> {
        self.input.close_stdin().await
    }

    /// See [`ExecInput::signal`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, as [`write_stdin`](Self::write_stdin).
    pub async fn signal(&mut self, signal: i32) -> Result<(), AgentError> {
        self.input.signal(signal).await
    }

    /// See [`ExecOutput::next`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped midway, part of a frame may have been read and
    /// the session is out of step; drop it.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>, AgentError> {
        self.output.next().await
    }
}

impl ExecInput {
    /// Sends bytes to the process's stdin.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped midway, part of `data` may have been sent; the
    /// session is then out of step and should be dropped.
    pub async fn write_stdin(&mut self, data: &[u8]) -> Result<(), AgentError> {
        for chunk in data.chunks(CHUNK) {
            firehost_proto::write_frame(&mut self.w, FrameKind::Stdin, chunk).await?;
        }
        self.w.flush().await.map_err(AgentError::Io)
    }

    /// Closes the process's stdin.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, as [`write_stdin`](Self::write_stdin).
    pub async fn close_stdin(&mut self) -> Result<(), AgentError> {
        firehost_proto::write_frame(&mut self.w, FrameKind::Eof, &[]).await?;
        self.w.flush().await.map_err(AgentError::Io)
    }

    /// Sends `signal` to the process (and its process group).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, as [`write_stdin`](Self::write_stdin).
    pub async fn signal(&mut self, signal: i32) -> Result<(), AgentError> {
        firehost_proto::send(&mut self.w, &ClientMessage::Signal { signal }).await?;
        Ok(())
    }

    /// Resizes the process's tty.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, as [`write_stdin`](Self::write_stdin).
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), AgentError> {
        firehost_proto::send(&mut self.w, &ClientMessage::Resize { rows, cols }).await?;
        Ok(())
    }
}

impl ExecOutput {
    /// The next piece of output, or the exit status; `None` after the exit
    /// status.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a frame may be half read.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>, AgentError> {
        if self.done {
            return Ok(None);
        }
        let frame = firehost_proto::read_frame(&mut self.r)
            .await?
            .ok_or(AgentError::Closed("the process exited"))?;
        match frame.kind {
            FrameKind::Stdout => Ok(Some(ExecEvent::Stdout(frame.payload))),
            FrameKind::Stderr => Ok(Some(ExecEvent::Stderr(frame.payload))),
            FrameKind::Control => match firehost_proto::decode::<AgentMessage>(&frame)? {
                AgentMessage::Exited {
                    code,
                    signal,
                    timed_out,
                } => {
                    self.done = true;
                    Ok(Some(ExecEvent::Exited(ExitStatus {
                        code,
                        signal,
                        timed_out,
                    })))
                }
                AgentMessage::Error { code, message } => Err(AgentError::Refused { code, message }),
                other => Err(unexpected(&other)),
            },
            other => Err(AgentError::Protocol(format!("a {other:?} frame"))),
        }
    }
}

/// Reads the next control message; an `Error` becomes `Refused`.
async fn answer(r: &mut Reader, waiting_for: &'static str) -> Result<AgentMessage, AgentError> {
    match firehost_proto::receive::<_, AgentMessage>(r).await? {
        None => Err(AgentError::Closed(waiting_for)),
        Some(AgentMessage::Error { code, message }) => Err(AgentError::Refused { code, message }),
        Some(message) => Ok(message),
    }
}

fn unexpected(message: &AgentMessage) -> AgentError {
    AgentError::Protocol(format!("{message:?}"))
}

/// A fresh random token: 32 bytes from the kernel's CSPRNG, as hex.
pub fn new_token() -> std::io::Result<Token> {
    random_hex::<32>().map(Token)
}

/// `N` bytes from the kernel's CSPRNG, as lowercase hex.
fn random_hex<const N: usize>() -> std::io::Result<String> {
    let mut bytes = [0u8; N];
    let mut filled = 0;
    while filled < bytes.len() {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())
                .map_err(std::io::Error::from)?;
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
