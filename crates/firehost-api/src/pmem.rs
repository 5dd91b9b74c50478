//! virtio-pmem devices: `PUT` and `PATCH /pmem/{id}`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::RateLimiter;

/// A virtio-pmem device backed by a host file: body of `PUT /pmem/{id}`,
/// and an entry of [`FullVmConfiguration::pmem`](crate::FullVmConfiguration::pmem).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pmem {
    /// Identifier of the device; must match the `{id}` in the path.
    pub id: String,
    /// Host path of the backing file.
    pub path_on_host: PathBuf,
    /// Whether the guest boots from this device; at most one root device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device: Option<bool>,
    /// Whether the backing file is mapped read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// I/O limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl Pmem {
    /// A pmem device backed by `path_on_host`, other options at
    /// Firecracker's defaults.
    pub fn new(id: impl Into<String>, path_on_host: impl Into<PathBuf>) -> Self {
        Self {
            id: id.into(),
            path_on_host: path_on_host.into(),
            root_device: None,
            read_only: None,
            rate_limiter: None,
        }
    }
}

/// A new rate limiter for a pmem device after boot: body of
/// `PATCH /pmem/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialPmem {
    /// Identifier of the device to change.
    pub id: String,
    /// New I/O limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}
