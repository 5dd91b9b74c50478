//! Block devices: `PUT` and `PATCH /drives/{drive_id}`.
//!
//! A [`Drive`] is either a virtio-block device backed by a host file
//! (`path_on_host`, `is_read_only`, optionally `io_engine` and
//! `rate_limiter`) or a vhost-user-block device backed by a socket
//! (`socket` only). The spec expresses both as one object with optional
//! fields, and so does this crate; Firecracker rejects mixtures.
//! [`PartialDrive`] swaps the backing file or the rate limiter after boot.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::RateLimiter;

/// A block device: body of `PUT /drives/{drive_id}`, and an entry of
/// [`FullVmConfiguration::drives`](crate::FullVmConfiguration::drives).
///
/// # Examples
///
/// ```
/// use firehost_api::{CacheType, Drive};
///
/// let rootfs = Drive {
///     cache_type: Some(CacheType::Writeback),
///     ..Drive::virtio_block("rootfs", "/srv/rootfs.ext4", true, false)
/// };
/// let json = serde_json::to_value(&rootfs).unwrap();
/// assert_eq!(json["cache_type"], "Writeback");
/// assert_eq!(json["is_read_only"], false);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Identifier of the drive; must match the `{drive_id}` in the path.
    pub drive_id: String,
    /// Unique id of the boot partition, used only when `is_root_device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Whether the guest boots from this drive.
    pub is_root_device: bool,
    /// Caching strategy; Firecracker's default is [`CacheType::Unsafe`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// Whether the device is read-only (virtio-block only, where it is
    /// required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// Host path of the backing file (virtio-block only, where it is
    /// required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// I/O limits (virtio-block only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    /// How Firecracker performs the I/O (virtio-block only); default
    /// [`IoEngine::Sync`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// Path of the vhost-user-block backend's socket (vhost-user-block only,
    /// where it is required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

impl Drive {
    /// A virtio-block drive backed by the host file `path_on_host`, with
    /// every other option at Firecracker's default.
    pub fn virtio_block(
        drive_id: impl Into<String>,
        path_on_host: impl Into<PathBuf>,
        is_root_device: bool,
        is_read_only: bool,
    ) -> Self {
        Self {
            drive_id: drive_id.into(),
            partuuid: None,
            is_root_device,
            cache_type: None,
            is_read_only: Some(is_read_only),
            path_on_host: Some(path_on_host.into()),
            rate_limiter: None,
            io_engine: None,
            socket: None,
        }
    }

    /// A vhost-user-block drive served by the backend listening on `socket`.
    pub fn vhost_user_block(
        drive_id: impl Into<String>,
        socket: impl Into<PathBuf>,
        is_root_device: bool,
    ) -> Self {
        Self {
            drive_id: drive_id.into(),
            partuuid: None,
            is_root_device,
            cache_type: None,
            is_read_only: None,
            path_on_host: None,
            rate_limiter: None,
            io_engine: None,
            socket: Some(socket.into()),
        }
    }
}

/// Caching strategy of a block device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CacheType {
    /// Flush requests from the guest are acknowledged without syncing to the
    /// host (Firecracker's default).
    #[default]
    Unsafe,
    /// Flush requests from the guest sync the backing file.
    Writeback,
}

/// How Firecracker performs a block device's I/O.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking I/O on the device thread (Firecracker's default).
    #[default]
    Sync,
    /// `io_uring`; needs a host kernel newer than 5.10.51.
    Async,
}

/// Changes to a drive after boot: body of `PATCH /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    /// Identifier of the drive to change.
    pub drive_id: String,
    /// New host path of the backing file (virtio-block only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// New I/O limits (virtio-block only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}
