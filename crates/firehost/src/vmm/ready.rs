//! Waiting for a VMM's API socket to accept connections.
//!
//! Firecracker binds its socket a few milliseconds after exec. There is no
//! event to wait on short of inotify on the parent directory, and the socket
//! must also *accept*, not just exist, so we retry `connect` with an
//! exponential back-off that starts below a millisecond and is capped low,
//! under a deadline, and give up early if the process dies.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::time::Instant;

use super::process::VmmProcess;
use crate::state::ExitReason;

const FIRST_RETRY: Duration = Duration::from_micros(100);
const MAX_RETRY: Duration = Duration::from_millis(5);

/// The API socket did not come up.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    /// The deadline passed first.
    #[error("API socket {socket:?} did not accept connections within {waited:?}")]
    Timeout {
        /// The socket.
        socket: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// The VMM exited first.
    #[error("the VMM exited ({exit}) before its API socket {socket:?} accepted connections")]
    Exited {
        /// The socket.
        socket: PathBuf,
        /// How it ended.
        exit: ExitReason,
    },
    /// Connecting failed in a way retrying won't fix.
    #[error("cannot connect to API socket {socket:?}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

/// Connects to `socket` as soon as it accepts, or fails at `timeout` or when
/// `process` exits. The connected stream is returned so the first API
/// request doesn't pay for a second connect.
///
/// # Cancel safety
///
/// Cancel safe: nothing but a connection attempt is in flight.
pub async fn wait_for_api_socket(
    socket: &Path,
    process: &VmmProcess,
    timeout: Duration,
) -> Result<UnixStream, ReadyError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut delay = FIRST_RETRY;
    loop {
        match UnixStream::connect(socket).await {
            Ok(stream) => return Ok(stream),
            Err(e) if retryable(&e) => {}
            Err(source) => {
                return Err(ReadyError::Connect {
                    socket: socket.to_owned(),
                    source,
                });
            }
        }
        if let Some(exit) = process.exit_reason() {
            return Err(ReadyError::Exited {
                socket: socket.to_owned(),
                exit,
            });
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ReadyError::Timeout {
                socket: socket.to_owned(),
                waited: now - start,
            });
        }
        let wake = (now + delay).min(deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            exit = process.wait() => {
                return Err(ReadyError::Exited { socket: socket.to_owned(), exit });
            }
        }
        delay = (delay * 2).min(MAX_RETRY);
    }
}

fn retryable(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), NotFound | ConnectionRefused | WouldBlock)
}
