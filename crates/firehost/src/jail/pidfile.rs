//! Finding Firecracker's pid when the jailer does not exec into it in the
//! process the manager spawned.
//!
//! With `--new-pid-ns` the jailer clones Firecracker into a new PID
//! namespace; with `--daemonize` it forks twice. Either way it writes
//! Firecracker's pid (as the host sees it) to `<chroot>/<exec name>.pid`,
//! and the process the manager spawned exits, with `--daemonize` before the
//! file is written. So the manager watches the chroot with inotify (set up
//! before the spawn, so no write is missed) and reads the file once it is
//! closed after writing.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::inotify;
use tokio::io::unix::AsyncFd;

use super::JailError;
use super::command::read_pid_file;

/// A watch on a jail's chroot for its pid file.
#[derive(Debug)]
pub struct PidFileWatch {
    inotify: AsyncFd<OwnedFd>,
    path: PathBuf,
}

impl PidFileWatch {
    /// Starts watching `chroot` for `pid_file` (a path inside it). Call it
    /// before spawning the jailer. Must be called within a tokio runtime.
    pub fn new(chroot: &Path, pid_file: PathBuf) -> Result<PidFileWatch, JailError> {
        let err = |e: std::io::Error| JailError::Stage {
            op: "watch",
            path: chroot.to_owned(),
            source: e,
        };
        let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)
            .map_err(|e| err(e.into()))?;
        inotify::add_watch(
            &fd,
            chroot,
            inotify::WatchFlags::CLOSE_WRITE | inotify::WatchFlags::MOVED_TO,
        )
        .map_err(|e| err(e.into()))?;
        // SAFETY: `fd` is an open inotify descriptor that the AsyncFd owns
        // from here on, so it stays open and names the same file
        // description for the AsyncFd's lifetime.
        let inotify = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| err(e.into()))?;
        Ok(PidFileWatch {
            inotify,
            path: pid_file,
        })
    }

    /// Waits up to `timeout` for the pid file to hold a pid.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the watch stays; call again.
    pub async fn wait(&self, timeout: Duration) -> Result<i32, JailError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // The file may have been written before this call, or be
            // created but not yet written: read, then wait for a write.
            if let Ok(pid) = read_pid_file(&self.path) {
                return Ok(pid);
            }
            let ready = tokio::time::timeout_at(deadline, self.inotify.readable()).await;
            let Ok(Ok(mut guard)) = ready else {
                return Err(JailError::PidFile {
                    path: self.path.clone(),
                });
            };
            drain(self.inotify.get_ref());
            guard.clear_ready();
        }
    }
}

/// Reads every pending event; which file it names does not matter (the
/// loop reads the pid file again).
fn drain(fd: &OwnedFd) {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    let mut reader = inotify::Reader::new(fd.as_fd(), &mut buf);
    while reader.next().is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pid_written_after_the_watch_starts_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firecracker.pid");
        let watch = PidFileWatch::new(dir.path(), path.clone()).unwrap();
        let writer = {
            let path = path.clone();
            tokio::spawn(async move {
                // Created empty first, as a writer does, then written.
                let mut f = tokio::fs::File::create(&path).await.unwrap();
                tokio::io::AsyncWriteExt::write_all(&mut f, b"4321")
                    .await
                    .unwrap();
            })
        };
        let pid = watch.wait(Duration::from_secs(10)).await.unwrap();
        assert_eq!(pid, 4321);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_pid_file_that_never_comes_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let watch = PidFileWatch::new(dir.path(), dir.path().join("x.pid")).unwrap();
        let err = watch.wait(Duration::from_millis(50)).await.unwrap_err();
        assert!(matches!(err, JailError::PidFile { .. }), "{err:?}");
    }
}
