//! The state directory's lock: one manager per directory.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use rustix::fs::FlockOperation;

use super::error::ManagerError;

/// Holds `flock(LOCK_EX)` on `<state>/lock` for as long as it lives. The
/// kernel drops the lock when the process dies, so a crashed manager never
/// leaves a stale lock behind.
#[derive(Debug)]
pub(crate) struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes the lock, retrying until `timeout` if another manager has it.
    pub(crate) async fn acquire(state_dir: &Path, timeout: Duration) -> Result<Self, ManagerError> {
        let path = state_dir.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| ManagerError::Io {
                op: "open",
                path: path.clone(),
                source,
            })?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(1);
        loop {
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    if tokio::time::Instant::now() >= deadline {
                        let mut text = String::new();
                        let _ = file.read_to_string(&mut text);
                        return Err(ManagerError::Locked {
                            state_dir: state_dir.to_owned(),
                            holder: text.trim().parse().ok(),
                        });
                    }
                    tokio::time::sleep(delay.min(deadline - tokio::time::Instant::now())).await;
                    delay = (delay * 2).min(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(ManagerError::Io {
                        op: "lock",
                        path,
                        source: e.into(),
                    });
                }
            }
        }
        // Record who holds it, for the error message of the next one.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        Ok(StateLock { _file: file })
    }
}
