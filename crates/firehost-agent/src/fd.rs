//! Registering owned descriptors with tokio.

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;

/// Registers `fd` (already non-blocking) with the runtime's reactor.
///
/// Must be called inside a tokio runtime.
pub(crate) fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is an open descriptor that stays open until it is
    // dropped, and its as_raw_fd always returns that same descriptor; the
    // AsyncFd owns it from here on and nothing swaps it out.
    Ok(unsafe { AsyncFd::register(fd) }?)
}
