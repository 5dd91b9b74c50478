//! Waiting for a VMM's API socket to accept connections.
//!
//! Firecracker binds its socket a few milliseconds after exec. We watch the
//! socket's directory with inotify, so the first connect attempt after a
//! failure happens the moment the socket file appears, rather than on the
//! next tick of a timer (tokio's timers have millisecond resolution, coarser
//! than the whole wait). Between `bind` and `listen` a connect is refused
//! with no further file event, so that gap is bridged by a short, bounded
//! back-off (never by spinning: on a small host a spinning waiter starves
//! the very VMM it waits for). Everything happens under a deadline, and the
//! wait ends early if the process dies.

use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::inotify;
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;
use tokio::time::Instant;

use super::process::VmmProcess;
use crate::state::ExitReason;

const FIRST_SLEEP: Duration = Duration::from_micros(200);
const MAX_SLEEP: Duration = Duration::from_millis(5);

/// The API socket did not come up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    // Watch before the first attempt, so a socket created in between still
    // produces an event. Without inotify, the back-off alone does the job.
    let mut watch = socket.parent().and_then(|dir| DirWatch::new(dir).ok());
    let mut sleep = FIRST_SLEEP;
    loop {
        match UnixStream::connect(socket).await {
            Ok(stream) => return Ok(stream),
            Err(e) if is_retryable(&e) => {}
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
        let socket_exists = socket.exists();
        tokio::select! {
            // No file yet: the next chance is when one appears.
            () = next_event(&mut watch), if !socket_exists => {}
            // The file exists but refuses (bound, not yet listening), or
            // there is no inotify: retry soon.
            () = back_off(&mut sleep), if socket_exists || watch.is_none() => {}
            () = tokio::time::sleep_until(deadline) => {}
            exit = process.wait() => {
                return Err(ReadyError::Exited { socket: socket.to_owned(), exit });
            }
        }
    }
}

fn is_retryable(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), NotFound | ConnectionRefused | WouldBlock)
}

async fn back_off(sleep: &mut Duration) {
    tokio::time::sleep(*sleep).await;
    *sleep = (*sleep * 2).min(MAX_SLEEP);
}

async fn next_event(watch: &mut Option<DirWatch>) {
    match watch {
        Some(w) => {
            if w.changed().await.is_err() {
                // inotify broke: fall back to the back-off.
                *watch = None;
            }
        }
        None => std::future::pending().await,
    }
}

/// An inotify watch for entries created in (or moved into) one directory.
struct DirWatch {
    fd: Option<AsyncFd<OwnedFd>>,
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        // Closing an inotify instance waits for an RCU grace period in the
        // kernel: milliseconds, more than the whole readiness wait. Close it
        // on the blocking pool so the VM's create doesn't pay for it.
        if let (Some(fd), Ok(runtime)) = (self.fd.take(), tokio::runtime::Handle::try_current()) {
            let raw = fd.into_inner();
            runtime.spawn_blocking(move || drop(raw));
        }
    }
}

impl DirWatch {
    fn new(dir: &Path) -> std::io::Result<Self> {
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        inotify::add_watch(
            &fd,
            dir,
            inotify::WatchFlags::CREATE | inotify::WatchFlags::MOVED_TO,
        )?;
        // SAFETY: the AsyncFd owns `fd` from here on, so it stays open and
        // names the same inotify instance for the AsyncFd's lifetime.
        let fd = unsafe {
            AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
                .map_err(|e| e.into_parts().1)?
        };
        Ok(DirWatch { fd: Some(fd) })
    }

    /// Waits for at least one event and drains all pending ones.
    async fn changed(&mut self) -> std::io::Result<()> {
        let fd = self.fd.as_mut().expect("present until drop");
        loop {
            let mut guard = fd.readable().await?;
            let mut buf = [MaybeUninit::<u8>::uninit(); 1024];
            let mut reader = inotify::Reader::new(guard.get_inner(), &mut buf);
            let mut any = false;
            loop {
                match reader.next() {
                    Ok(_) => any = true,
                    Err(rustix::io::Errno::AGAIN) => {
                        guard.clear_ready();
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if any {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watch_wakes_when_a_file_appears() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = DirWatch::new(dir.path()).unwrap();
        let path = dir.path().join("api.sock");
        let creator = tokio::spawn(async move {
            let _listener = tokio::net::UnixListener::bind(&path).unwrap();
            std::future::pending::<()>().await;
        });
        tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .expect("an event")
            .unwrap();
        assert!(dir.path().join("api.sock").exists());
        creator.abort();
    }
}
