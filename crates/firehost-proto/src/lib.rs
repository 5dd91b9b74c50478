//! The protocol between firehost on the host and `firehost-agent` in the
//! guest.
//!
//! # Transport
//!
//! Any reliable byte stream: a vsock connection (on the host, a unix socket
//! to Firecracker's vsock device after the `CONNECT <port>` handshake), a
//! unix socket or loopback TCP (for tests). The agent listens on vsock port
//! [`DEFAULT_PORT`] unless told otherwise. One connection carries one
//! **session**: a handshake, then one request and what follows from it.
//! Concurrent work uses concurrent connections.
//!
//! # Frames
//!
//! ```text
//! +----------------+--------+------------------+
//! | length: u32 LE | kind   | payload          |
//! | (payload only) | u8     | length bytes     |
//! +----------------+--------+------------------+
//! ```
//!
//! A payload is at most [`MAX_PAYLOAD`] bytes; a longer length, or an
//! unknown kind, is an error before anything is allocated
//! ([`FrameError`]). [`FrameKind::Control`] frames hold one JSON message
//! ([`ClientMessage`] from the host, [`AgentMessage`] from the agent); the
//! other kinds carry raw bytes of one stream, and [`FrameKind::Eof`] ends a
//! stream (its payload is empty).
//!
//! # Sessions
//!
//! 1. **Handshake.** The host sends [`ClientMessage::Hello`] with
//!    [`PROTOCOL_VERSION`] and the VM's token; the agent answers
//!    [`AgentMessage::Welcome`], or an [`AgentMessage::Error`] with
//!    [`ErrorCode::VersionMismatch`] or [`ErrorCode::BadToken`] and closes.
//! 2. **Request**, one per session:
//!    - [`ClientMessage::Exec`]: the agent answers `Started { pid }` (or an
//!      error); then the host sends `Stdin` frames and one `Eof` (when it
//!      asked for stdin) and may send `Signal` or `Resize` control
//!      messages at any time; the agent sends `Stdout` and `Stderr` frames
//!      as output arrives (with a tty, everything is `Stdout`), then
//!      `Exited`. Closing the connection before `Exited` kills the process.
//!    - [`ClientMessage::WriteFile`]: the host sends `Data` frames and one
//!      `Eof`; the agent writes a temporary file beside the target, syncs
//!      it, sets mode and owner and renames it into place, then answers
//!      `Written { bytes }`. A session that ends before `Eof` leaves the
//!      target untouched.
//!    - [`ClientMessage::ReadFile`]: the agent answers `FileInfo`, then
//!      `Data` frames and one `Eof` (or an error).
//!    - `Stat`, `List`, `SetEnv`, `Health`, `Reseed`, `Rekey`, `Shutdown`:
//!      one answer each (`FileInfo`, `Entries`, `Done`, `Health`, `Done`,
//!      `Done`, `Done`). An agent older than `Reseed` and `Rekey` answers
//!      them with a `bad_request` error.
//!
//! Errors during a request are an [`AgentMessage::Error`], after which the
//! agent closes the session.
//!
//! # The token
//!
//! The host makes a random token per VM and gives it to the guest on the
//! kernel command line as `firehost.token=<hex>` ([`TOKEN_BOOT_ARG`]). It
//! proves to the agent that a connection comes from the host that started
//! the VM rather than from a stray client (a process in the guest that
//! connects to the agent over vsock loopback must also know it). It is not
//! a secret from the guest's own root: `/proc/cmdline` is readable in the
//! guest. [`Token`] and [`Secret`] print as `***` in `Debug`, so neither
//! reaches a log by accident.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The vsock port the agent listens on by default.
pub const DEFAULT_PORT: u32 = 10_000;

/// The kernel command-line key that carries the token.
pub const TOKEN_BOOT_ARG: &str = "firehost.token";

/// The largest payload of one frame: 1 MiB. Streams are cut into frames of
/// at most [`CHUNK`] bytes; control messages are far smaller.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// How many bytes of a stream one frame carries at most, when sending.
pub const CHUNK: usize = 64 << 10;

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// One JSON message.
    Control = 1,
    /// Bytes for the process's stdin (host to agent).
    Stdin = 2,
    /// Bytes the process wrote to stdout (or to its tty).
    Stdout = 3,
    /// Bytes the process wrote to stderr.
    Stderr = 4,
    /// File contents, either way.
    Data = 5,
    /// The end of the stream this session carries in this direction.
    Eof = 6,
}

impl FrameKind {
    /// The kind of a wire byte.
    pub fn from_byte(b: u8) -> Option<FrameKind> {
        Some(match b {
            1 => FrameKind::Control,
            2 => FrameKind::Stdin,
            3 => FrameKind::Stdout,
            4 => FrameKind::Stderr,
            5 => FrameKind::Data,
            6 => FrameKind::Eof,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it holds.
    pub kind: FrameKind,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The header announces (or a caller tried to send) more than
    /// [`MAX_PAYLOAD`] bytes.
    #[error("frame of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge {
        /// The announced length.
        len: u64,
    },
    /// The kind byte is not a [`FrameKind`].
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The stream ended inside a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// A control frame's payload is not a message of this protocol.
    #[error("malformed control message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A control message was expected and another kind came.
    #[error("expected a control message, got a {0:?} frame")]
    Unexpected(FrameKind),
    /// The stream failed.
    #[error("connection failed")]
    Io(#[from] std::io::Error),
}

/// Reads one frame; `Ok(None)` when the stream ends cleanly between
/// frames.
///
/// # Cancel safety
///
/// Not cancel safe: dropped midway, part of a frame has been consumed.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut payload = Vec::new();
    Ok(read_frame_into(r, &mut payload)
        .await?
        .map(|kind| Frame { kind, payload }))
}

/// Reads one frame's payload into `payload` (replacing its contents, and
/// reusing its allocation: a stream of frames costs no allocation per
/// frame) and returns its kind; `Ok(None)` at a clean end of stream.
///
/// # Cancel safety
///
/// Not cancel safe, like [`read_frame`].
pub async fn read_frame_into<R: AsyncRead + Unpin>(
    r: &mut R,
    payload: &mut Vec<u8>,
) -> Result<Option<FrameKind>, FrameError> {
    let mut header = [0u8; 5];
    let mut filled = 0;
    while filled < header.len() {
        let n = r.read(&mut header[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += n;
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let kind = FrameKind::from_byte(header[4]).ok_or(FrameError::UnknownKind(header[4]))?;
    let len = usize::try_from(len).map_err(|_| FrameError::TooLarge { len: len.into() })?;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge { len: len as u64 });
    }
    payload.resize(len, 0);
    r.read_exact(payload).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Some(kind))
}

/// Writes one frame (not flushed).
///
/// A `payload` longer than [`MAX_PAYLOAD`] is refused with
/// [`FrameError::TooLarge`] before anything is written, so the stream stays
/// usable (streams are sent in [`CHUNK`]s; control messages are small
/// unless a caller puts megabytes of argv or env into one).
///
/// # Cancel safety
///
/// Not cancel safe: dropped midway, part of the frame may have been written
/// and the stream is out of step; drop the stream too.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: FrameKind,
    payload: &[u8],
) -> Result<(), FrameError> {
    let too_large = || FrameError::TooLarge {
        len: payload.len() as u64,
    };
    if payload.len() > MAX_PAYLOAD {
        return Err(too_large());
    }
    let len = u32::try_from(payload.len()).map_err(|_| too_large())?;
    let mut header = [0u8; 5];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4] = kind as u8;
    w.write_all(&header).await?;
    w.write_all(payload).await?;
    Ok(())
}

/// Writes one control message and flushes.
///
/// # Cancel safety
///
/// Not cancel safe, as [`write_frame`].
pub async fn send<W: AsyncWrite + Unpin, M: Serialize>(
    w: &mut W,
    message: &M,
) -> Result<(), FrameError> {
    let json = serde_json::to_vec(message)?;
    write_frame(w, FrameKind::Control, &json).await?;
    w.flush().await?;
    Ok(())
}

/// Parses a control frame's payload as `M`.
pub fn decode<M: for<'de> Deserialize<'de>>(frame: &Frame) -> Result<M, FrameError> {
    if frame.kind != FrameKind::Control {
        return Err(FrameError::Unexpected(frame.kind));
    }
    Ok(serde_json::from_slice(&frame.payload)?)
}

/// Reads the next frame, which must be a control message `M`; `Ok(None)`
/// at a clean end of stream.
///
/// # Cancel safety
///
/// Not cancel safe: dropped midway, part of a frame may have been read and
/// the stream is out of step; drop the stream too.
pub async fn receive<R: AsyncRead + Unpin, M: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> Result<Option<M>, FrameError> {
    match read_frame(r).await? {
        Some(frame) => decode(&frame).map(Some),
        None => Ok(None),
    }
}

/// The longest token a `Rekey` may set.
pub const MAX_TOKEN_LEN: usize = 256;

/// The least randomness a `Reseed` carries, in bytes: a full CRNG seed.
pub const MIN_RESEED_BYTES: usize = 32;
/// The most randomness a `Reseed` carries, in bytes.
pub const MAX_RESEED_BYTES: usize = 512;

/// A string that must not reach a log: `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The per-VM token (see the [crate docs](crate)). `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Token(pub String);

impl Token {
    /// Compares in time that depends on the lengths only, not on where the
    /// first difference is.
    pub fn matches(&self, other: &Token) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Reads `firehost.token=<value>` from a kernel command line.
    ///
    /// ```
    /// use firehost_proto::Token;
    ///
    /// let t = Token::from_cmdline("console=ttyS0 firehost.token=abc123 quiet").unwrap();
    /// assert!(t.matches(&Token("abc123".into())));
    /// assert!(Token::from_cmdline("console=ttyS0").is_none());
    /// ```
    pub fn from_cmdline(cmdline: &str) -> Option<Token> {
        cmdline.split_ascii_whitespace().find_map(|arg| {
            arg.strip_prefix(TOKEN_BOOT_ARG)?
                .strip_prefix('=')
                .filter(|v| !v.is_empty())
                .map(|v| Token(v.to_owned()))
        })
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// What the host sends in control frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Opens every session.
    Hello {
        /// [`PROTOCOL_VERSION`].
        version: u32,
        /// The VM's token.
        token: Token,
    },
    /// Runs a process.
    Exec(ExecRequest),
    /// Sends a signal to the session's running process.
    Signal {
        /// The signal number (`SIGTERM` is 15).
        signal: i32,
    },
    /// Resizes the session's tty.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Writes a file from the `Data` frames that follow, atomically.
    WriteFile(WriteFileRequest),
    /// Streams a file back.
    ReadFile {
        /// Absolute path in the guest.
        path: String,
    },
    /// Describes a path (without following a final symlink).
    Stat {
        /// Absolute path in the guest.
        path: String,
    },
    /// Lists a directory.
    List {
        /// Absolute path in the guest.
        path: String,
    },
    /// Sets environment variables for every later exec (on top of the
    /// agent's own environment; an exec's own `env` wins).
    SetEnv {
        /// The variables.
        vars: BTreeMap<String, Secret>,
    },
    /// Asks whether the agent is ready.
    Health,
    /// Mixes randomness from the host into the guest kernel's pool and
    /// reseeds its CRNG (`RNDADDENTROPY`, then `RNDRESEEDCRNG`): every
    /// clone of one snapshot resumes with the same random state, which
    /// kernels without `VMGenID` support do not change by themselves.
    /// Answered with `Done`.
    Reseed {
        /// [`MIN_RESEED_BYTES`] to [`MAX_RESEED_BYTES`] bytes of
        /// randomness, as lowercase hex.
        entropy: Secret,
    },
    /// Makes the agent demand this token, in place of the one that opened
    /// this session, from the next session on (a clone's own token).
    /// Answered with `Done`.
    Rekey {
        /// The new token: 16 to [`MAX_TOKEN_LEN`] printable ASCII
        /// characters.
        token: Token,
    },
    /// Powers the guest off (or reboots it), after syncing filesystems.
    Shutdown {
        /// Reboot instead of powering off.
        reboot: bool,
    },
}

/// A process to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The program and its arguments; the program is looked up in `PATH`
    /// when it has no `/`.
    pub argv: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, Secret>,
    /// Working directory (default `/`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Run as this user (default: the agent's).
    #[serde(default)]
    pub uid: Option<u32>,
    /// Run as this group (default: the agent's).
    #[serde(default)]
    pub gid: Option<u32>,
    /// The host will send stdin; otherwise stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// Run on a pseudo-terminal (stdout and stderr merged).
    #[serde(default)]
    pub tty: bool,
    /// Kill the process (SIGKILL) after this long; `Exited` then says
    /// `timed_out`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl ExecRequest {
    /// `argv` with every option at its default.
    pub fn new(argv: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            cwd: None,
            uid: None,
            gid: None,
            stdin: false,
            tty: false,
            timeout_ms: None,
        }
    }
}

/// A file to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFileRequest {
    /// Absolute path in the guest.
    pub path: String,
    /// Permission bits (e.g. `0o644`).
    pub mode: u32,
    /// Owner (default: the agent's user).
    #[serde(default)]
    pub uid: Option<u32>,
    /// Group (default: the agent's group).
    #[serde(default)]
    pub gid: Option<u32>,
    /// Create missing parent directories (mode 0755).
    #[serde(default)]
    pub create_dirs: bool,
}

/// What the agent sends in control frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// The handshake succeeded.
    Welcome {
        /// [`PROTOCOL_VERSION`] as the agent speaks it.
        version: u32,
        /// The agent's build version.
        agent_version: String,
    },
    /// The request failed; the agent closes the session after this.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// A human-readable description.
        message: String,
    },
    /// The process runs.
    Started {
        /// Its pid in the guest.
        pid: u32,
    },
    /// The process ended; no more output follows.
    Exited {
        /// Its exit code, if it exited.
        code: Option<i32>,
        /// The signal that ended it, if one did.
        signal: Option<i32>,
        /// It was killed because `timeout_ms` passed.
        timed_out: bool,
    },
    /// A file was written and renamed into place.
    Written {
        /// Its size.
        bytes: u64,
    },
    /// A path's description (before a read file's data, or for `Stat`).
    FileInfo(FileStat),
    /// A directory's entries, sorted by name.
    Entries {
        /// The entries.
        entries: Vec<FileStat>,
    },
    /// Done (for `SetEnv`, `Reseed`, `Rekey` and `Shutdown`).
    Done,
    /// The answer to `Health`.
    Health {
        /// The agent serves requests.
        ready: bool,
        /// Milliseconds since the agent started.
        uptime_ms: u64,
        /// The agent's build version.
        agent_version: String,
    },
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The token did not match.
    BadToken,
    /// The versions differ.
    VersionMismatch,
    /// The request is malformed or out of order.
    BadRequest,
    /// A path does not exist.
    NotFound,
    /// The agent may not do it.
    PermissionDenied,
    /// The process could not be started.
    ExecFailed,
    /// Any other I/O failure.
    Io,
}

/// The kind of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (device, fifo, socket).
    Other,
}

/// A path's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// The path (for `List`, the entry's name).
    pub path: String,
    /// Its kind.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, milliseconds since the Unix epoch.
    pub mtime_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        rt().block_on(async {
            let mut buf = Vec::new();
            write_frame(&mut buf, FrameKind::Stdout, b"hello")
                .await
                .unwrap();
            send(&mut buf, &ClientMessage::Health).await.unwrap();
            write_frame(&mut buf, FrameKind::Eof, b"").await.unwrap();
            let mut r = &buf[..];
            let f = read_frame(&mut r).await.unwrap().unwrap();
            assert_eq!(
                (f.kind, f.payload.as_slice()),
                (FrameKind::Stdout, &b"hello"[..])
            );
            let m: ClientMessage = receive(&mut r).await.unwrap().unwrap();
            assert_eq!(m, ClientMessage::Health);
            let f = read_frame(&mut r).await.unwrap().unwrap();
            assert_eq!(f.kind, FrameKind::Eof);
            assert!(read_frame(&mut r).await.unwrap().is_none());
        });
    }

    #[test]
    fn an_oversized_payload_is_refused_before_anything_is_written() {
        rt().block_on(async {
            let mut sink = Vec::new();
            let big = vec![0u8; MAX_PAYLOAD + 1];
            let err = write_frame(&mut sink, FrameKind::Data, &big)
                .await
                .unwrap_err();
            assert!(
                matches!(err, FrameError::TooLarge { len } if len == big.len() as u64),
                "{err:?}"
            );
            assert!(sink.is_empty(), "{} bytes were written", sink.len());
            let huge =
                ClientMessage::Exec(ExecRequest::new(["sh", "-c", &"x".repeat(MAX_PAYLOAD)]));
            let err = send(&mut sink, &huge).await.unwrap_err();
            assert!(matches!(err, FrameError::TooLarge { .. }), "{err:?}");
            assert!(sink.is_empty());
        });
    }

    #[test]
    fn oversized_unknown_and_truncated_frames_are_errors() {
        rt().block_on(async {
            let mut too_big = u32::try_from(MAX_PAYLOAD + 1)
                .unwrap()
                .to_le_bytes()
                .to_vec();
            too_big.push(1);
            let err = read_frame(&mut &too_big[..]).await.unwrap_err();
            assert!(matches!(err, FrameError::TooLarge { .. }), "{err:?}");
            let unknown = [0, 0, 0, 0, 99];
            let err = read_frame(&mut &unknown[..]).await.unwrap_err();
            assert!(matches!(err, FrameError::UnknownKind(99)), "{err:?}");
            let truncated = [5, 0, 0, 0, 3, b'a'];
            let err = read_frame(&mut &truncated[..]).await.unwrap_err();
            assert!(matches!(err, FrameError::Truncated), "{err:?}");
            let half_header = [5, 0];
            let err = read_frame(&mut &half_header[..]).await.unwrap_err();
            assert!(matches!(err, FrameError::Truncated), "{err:?}");
        });
    }

    #[test]
    fn secrets_and_tokens_never_print() {
        let hello = ClientMessage::Hello {
            version: 1,
            token: Token("s3cr3t-token".into()),
        };
        let mut env = BTreeMap::new();
        env.insert("API_KEY".to_owned(), Secret("s3cr3t-value".into()));
        let set = ClientMessage::SetEnv { vars: env };
        for shown in [format!("{hello:?}"), format!("{set:?}")] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
        }
        assert!(Token("a".into()).matches(&Token("a".into())));
        assert!(!Token("a".into()).matches(&Token("b".into())));
        assert!(!Token("a".into()).matches(&Token("ab".into())));
    }

    #[test]
    fn messages_have_a_stable_wire_form() {
        let json = serde_json::to_value(ClientMessage::Exec(ExecRequest::new(["true"]))).unwrap();
        assert_eq!(json["type"], "exec");
        assert_eq!(json["argv"][0], "true");
        let json = serde_json::to_value(AgentMessage::Exited {
            code: Some(0),
            signal: None,
            timed_out: false,
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "exited", "code": 0, "signal": null, "timed_out": false})
        );
    }

    proptest! {
        // The decoder never panics and never allocates past the limit,
        // whatever arrives.
        #[test]
        fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            rt().block_on(async {
                let mut r = &bytes[..];
                while let Ok(Some(frame)) = read_frame(&mut r).await {
                    prop_assert!(frame.payload.len() <= MAX_PAYLOAD);
                    let _ = decode::<ClientMessage>(&frame);
                    let _ = decode::<AgentMessage>(&frame);
                }
                Ok(())
            })?;
        }

        #[test]
        fn any_frame_round_trips(kind in 1u8..=6, payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            rt().block_on(async {
                let kind = FrameKind::from_byte(kind).unwrap();
                let mut buf = Vec::new();
                write_frame(&mut buf, kind, &payload).await.unwrap();
                let frame = read_frame(&mut &buf[..]).await.unwrap().unwrap();
                prop_assert_eq!(frame, Frame { kind, payload });
                Ok(())
            })?;
        }
    }
}
