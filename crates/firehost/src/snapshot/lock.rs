//! The `flock` that marks a bundle directory as being written.

use std::os::fd::OwnedFd;
use std::path::Path;

/// Takes an exclusive `flock` on `dir`; with `try_only`, returns `None`
/// instead of waiting when another holder has it.
pub(crate) fn lock_dir(dir: &Path, try_only: bool) -> std::io::Result<Option<OwnedFd>> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let op = if try_only {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::LockExclusive
    };
    match rustix::fs::flock(&fd, op) {
        Ok(()) => Ok(Some(fd)),
        Err(rustix::io::Errno::WOULDBLOCK) if try_only => Ok(None),
        Err(e) => Err(e.into()),
    }
}
