//! `PUT /vsock`: the host side of the vsock device, a unix socket bound
//! at configuration time.

use std::os::unix::net::UnixListener;
use std::path::Path;

use super::ActionError;

pub(super) fn bind_vsock(uds_path: &Path) -> Result<UnixListener, ActionError> {
    UnixListener::bind(uds_path).map_err(|e| {
        ActionError::Vsock(format!(
            "Cannot create backend for vsock device: Error binding to the host-side Unix socket: {e}"
        ))
    })
}
