//! Why a request failed, and what the host is told.
//!
//! Every failure inside a session is a [`RequestError`]; the session turns
//! it into an [`AgentMessage::Error`](firehost_proto::AgentMessage::Error)
//! with [`RequestError::code`] and [`RequestError::wire_message`] and then
//! closes. The message carries the cause chain because the host has no
//! other way to learn it.

use std::error::Error as _;
use std::io;

use firehost_proto::{ErrorCode, FrameError, PROTOCOL_VERSION};

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The connection failed, or carried something that is not this
    /// protocol.
    #[error("the connection failed")]
    Frame(#[from] FrameError),
    /// The host speaks another protocol version.
    #[error(
        "protocol version {theirs} is not supported; this agent speaks version {PROTOCOL_VERSION}"
    )]
    VersionMismatch {
        /// The version the host sent.
        theirs: u32,
    },
    /// The token did not match.
    #[error("bad token")]
    BadToken,
    /// The host closed the connection in the middle of the request.
    #[error("the connection closed before {during}")]
    Closed {
        /// What was still expected.
        during: &'static str,
    },
    /// The request is malformed or out of order.
    #[error("bad request: {reason}")]
    BadRequest {
        /// What is wrong with it.
        reason: String,
    },
    /// A path does not exist.
    #[error("{op} {path}: not found")]
    NotFound {
        /// The operation (`open`, `stat`…).
        op: &'static str,
        /// The path.
        path: String,
    },
    /// The agent may not touch a path.
    #[error("{op} {path}: permission denied")]
    PermissionDenied {
        /// The operation.
        op: &'static str,
        /// The path.
        path: String,
    },
    /// Any other I/O failure on a path.
    #[error("{op} {path}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A directory has more entries than one message can carry.
    #[error("directory {path} has {entries} entries, more than one message holds")]
    TooManyEntries {
        /// The directory.
        path: String,
        /// How many entries it has.
        entries: usize,
    },
    /// The process could not be started.
    #[error("cannot run `{program}`")]
    ExecFailed {
        /// `argv[0]`.
        program: String,
        /// Why (from `fork`/`exec`, or the working directory).
        #[source]
        source: io::Error,
    },
    /// The working directory of an exec is unusable.
    #[error("cannot run `{program}` in {cwd}")]
    BadCwd {
        /// `argv[0]`.
        program: String,
        /// The working directory.
        cwd: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `Shutdown` without PID 1 or `--allow-shutdown`.
    #[error("shutdown is only allowed when the agent is PID 1 or runs with --allow-shutdown")]
    ShutdownNotAllowed,
}

impl RequestError {
    /// A failed file operation, with the code its errno deserves.
    pub fn fs(op: &'static str, path: &str, source: io::Error) -> Self {
        let path = path.to_owned();
        match source.kind() {
            io::ErrorKind::NotFound => RequestError::NotFound { op, path },
            io::ErrorKind::PermissionDenied => RequestError::PermissionDenied { op, path },
            _ => RequestError::Io { op, path, source },
        }
    }

    /// A malformed or out-of-order request.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        RequestError::BadRequest {
            reason: reason.into(),
        }
    }

    /// The wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::Frame(
                FrameError::Malformed(_)
                | FrameError::Unexpected(_)
                | FrameError::TooLarge { .. }
                | FrameError::UnknownKind(_),
            )
            | RequestError::BadRequest { .. } => ErrorCode::BadRequest,
            // Io, Truncated and whatever a newer protocol crate adds: the
            // connection, not the request, is at fault.
            RequestError::Frame(_)
            | RequestError::Closed { .. }
            | RequestError::Io { .. }
            | RequestError::TooManyEntries { .. } => ErrorCode::Io,
            RequestError::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            RequestError::BadToken => ErrorCode::BadToken,
            RequestError::NotFound { .. } => ErrorCode::NotFound,
            RequestError::PermissionDenied { .. } | RequestError::ShutdownNotAllowed => {
                ErrorCode::PermissionDenied
            }
            RequestError::ExecFailed { .. } | RequestError::BadCwd { .. } => ErrorCode::ExecFailed,
        }
    }

    /// The message for the host: this error and its causes, on one line.
    pub fn wire_message(&self) -> String {
        let mut message = self.to_string();
        let mut cause = self.source();
        while let Some(e) = cause {
            message.push_str(": ");
            message.push_str(&e.to_string());
            cause = e.source();
        }
        message
    }

    /// Whether the connection itself is gone (nobody would read an answer).
    pub fn is_disconnect(&self) -> bool {
        matches!(
            self,
            RequestError::Frame(FrameError::Io(_) | FrameError::Truncated)
                | RequestError::Closed { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_picks_the_code() {
        let cases = [
            (libc::ENOENT, ErrorCode::NotFound),
            (libc::EACCES, ErrorCode::PermissionDenied),
            (libc::EPERM, ErrorCode::PermissionDenied),
            (libc::EISDIR, ErrorCode::Io),
            (libc::ENOSPC, ErrorCode::Io),
        ];
        for (errno, code) in cases {
            let e = RequestError::fs("open", "/x", io::Error::from_raw_os_error(errno));
            assert_eq!(e.code(), code, "errno {errno}");
        }
    }

    #[test]
    fn the_wire_message_carries_the_cause() {
        let e = RequestError::ExecFailed {
            program: "nope".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        let message = e.wire_message();
        assert!(message.starts_with("cannot run `nope`: "), "{message}");
        assert!(message.contains("No such file"), "{message}");
        assert_eq!(e.code(), ErrorCode::ExecFailed);
    }
}
