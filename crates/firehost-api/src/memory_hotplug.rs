//! Hot-pluggable memory (virtio-mem): `PUT`, `PATCH` and `GET /hotplug/memory`.
//!
//! [`MemoryHotplugConfig`] reserves a region before boot;
//! [`MemoryHotplugSizeUpdate`] asks the guest to plug or unplug memory until
//! the region's plugged size reaches the request; [`MemoryHotplugStatus`]
//! reports progress.

use serde::{Deserialize, Serialize};

/// The hot-pluggable region: body of `PUT /hotplug/memory`.
///
/// The spec marks every field optional, and so does this type; Firecracker
/// v1.16 nevertheless rejects a body without `total_size_mib`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryHotplugConfig {
    /// Total size of the hot-pluggable region, in MiB; a multiple of the
    /// slot size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_size_mib: Option<u64>,
    /// Granularity, in MiB, at which the host attaches memory (at least 128,
    /// the default; a multiple of the block size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_size_mib: Option<u64>,
    /// Granularity, in MiB, at which the guest plugs memory (at least 2, the
    /// default; a power of two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size_mib: Option<u64>,
}

/// A new target for the plugged size: body of `PATCH /hotplug/memory`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryHotplugSizeUpdate {
    /// Memory, in MiB, the guest should have plugged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_size_mib: Option<u64>,
}

/// State of the hot-pluggable region: response of `GET /hotplug/memory`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryHotplugStatus {
    /// Total size of the region, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_size_mib: Option<u64>,
    /// Slot size, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_size_mib: Option<u64>,
    /// Block size, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size_mib: Option<u64>,
    /// Memory, in MiB, the guest has plugged so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugged_size_mib: Option<u64>,
    /// Memory, in MiB, last requested with `PATCH /hotplug/memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_size_mib: Option<u64>,
}
