//! Unix socket paths and their length limit.
//!
//! A unix socket address holds at most 108 bytes of path, the terminating
//! NUL included, so a longer path cannot be bound or connected to: the
//! kernel refuses it, or some libraries truncate it silently. Every socket
//! firehost binds or hands to Firecracker (the API socket, the vsock
//! device and the ports it derives, the page server's) is checked here,
//! before anything is created.

use std::path::{Path, PathBuf};

/// The longest path a unix socket address can hold (`sun_path` less the
/// terminating NUL).
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

/// A socket path that is too long.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("socket path {} is {len} bytes; unix sockets allow {MAX_SOCKET_PATH_BYTES}", path.display())]
pub struct SocketPathTooLong {
    /// The path.
    pub path: PathBuf,
    /// Its length, with what will be appended to it.
    pub len: usize,
}

/// Checks that `path`, with `suffix` bytes appended later (the vsock
/// device's `_<port>` sockets), fits a unix socket address.
///
/// ```
/// use firehost::socket_path::{MAX_SOCKET_PATH_BYTES, check};
/// assert!(check("/run/fh/vms/a/api.sock", 0).is_ok());
/// let long = format!("/{}", "x".repeat(MAX_SOCKET_PATH_BYTES));
/// assert_eq!(check(&long, 0).unwrap_err().len, MAX_SOCKET_PATH_BYTES + 1);
/// ```
///
/// # Errors
///
/// [`SocketPathTooLong`] when it would not fit.
pub fn check(path: impl AsRef<Path>, suffix: usize) -> Result<(), SocketPathTooLong> {
    let path = path.as_ref();
    let len = path.as_os_str().len() + suffix;
    if len > MAX_SOCKET_PATH_BYTES {
        return Err(SocketPathTooLong {
            path: path.to_owned(),
            len,
        });
    }
    Ok(())
}
