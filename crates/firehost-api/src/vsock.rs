//! The virtio-vsock device: `PUT /vsock`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A vsock device multiplexed over host unix sockets: body of `PUT /vsock`.
///
/// Host-initiated connections go through the socket Firecracker listens on
/// at `uds_path` (the host writes `CONNECT <port>\n` first); guest-initiated
/// connections to port `P` are forwarded to a socket the host listens on at
/// `<uds_path>_P`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// The guest's context id; 3 or more (0 to 2 are reserved).
    pub guest_cid: u32,
    /// Host path of the unix socket Firecracker creates and listens on.
    pub uds_path: PathBuf,
    /// Deprecated identifier, ignored by Firecracker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

impl Vsock {
    /// A vsock device for guest `guest_cid` behind `uds_path`.
    pub fn new(guest_cid: u32, uds_path: impl Into<PathBuf>) -> Self {
        Self {
            guest_cid,
            uds_path: uds_path.into(),
            vsock_id: None,
        }
    }
}
