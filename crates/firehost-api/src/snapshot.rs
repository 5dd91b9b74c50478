//! Snapshots: `PUT /snapshot/create` and `PUT /snapshot/load`.
//!
//! A snapshot is two files: the microVM state (`snapshot_path`) and the
//! guest memory. Creating one needs a paused VM. Loading one needs a fresh
//! Firecracker process; the memory comes either from a file or from a
//! userfaultfd page server ([`MemoryBackend`]), and the network and vsock
//! backends can be swapped on the way in ([`NetworkOverride`],
//! [`VsockOverride`]) so one snapshot can be restored as many VMs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What to write: body of `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// Host path of the guest memory file to write.
    pub mem_file_path: PathBuf,
    /// Host path of the microVM state file to write.
    pub snapshot_path: PathBuf,
    /// Full or diff; default [`SnapshotType::Full`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_type: Option<SnapshotType>,
}

impl SnapshotCreateParams {
    /// A full snapshot to the two given files.
    pub fn new(snapshot_path: impl Into<PathBuf>, mem_file_path: impl Into<PathBuf>) -> Self {
        Self {
            mem_file_path: mem_file_path.into(),
            snapshot_path: snapshot_path.into(),
            snapshot_type: None,
        }
    }
}

/// Which memory a snapshot holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory (the default).
    #[default]
    Full,
    /// Only the pages dirtied since the previous snapshot; needs dirty page
    /// tracking.
    Diff,
}

/// What to restore: body of `PUT /snapshot/load`.
///
/// Exactly one of `mem_backend` and the deprecated `mem_file_path` must be
/// set; likewise `track_dirty_pages` replaces the deprecated
/// `enable_diff_snapshots`. Both old fields are kept so that any body the
/// spec allows can be expressed.
///
/// # Examples
///
/// ```
/// use firehost_api::{MemoryBackend, MemoryBackendType, SnapshotLoadParams};
///
/// let load = SnapshotLoadParams {
///     resume_vm: Some(true),
///     ..SnapshotLoadParams::new(
///         "/srv/snap/vmstate",
///         MemoryBackend::new(MemoryBackendType::Uffd, "/run/fh/uffd.sock"),
///     )
/// };
/// let json = serde_json::to_value(&load).unwrap();
/// assert_eq!(json["mem_backend"]["backend_type"], "Uffd");
/// assert!(json.get("mem_file_path").is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    /// Deprecated spelling of `track_dirty_pages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    /// Track dirty pages after the restore, so diff snapshots can follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Deprecated: host path of the guest memory file. Only allowed without
    /// `mem_backend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<PathBuf>,
    /// Where guest memory comes from. Only allowed without `mem_file_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemoryBackend>,
    /// Host path of the microVM state file.
    pub snapshot_path: PathBuf,
    /// Resume the VM once it is loaded (otherwise it stays paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    /// New TAP devices for the snapshot's network interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_overrides: Option<Vec<NetworkOverride>>,
    /// New host socket for the snapshot's vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// `x86_64` only: advance kvmclock by the wall-clock time elapsed since
    /// the snapshot (`KVM_CLOCK_REALTIME`) instead of resuming it where it
    /// stopped (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_realtime: Option<bool>,
}

impl SnapshotLoadParams {
    /// Loads `snapshot_path` with memory from `mem_backend`, every other
    /// option at Firecracker's defaults.
    pub fn new(snapshot_path: impl Into<PathBuf>, mem_backend: MemoryBackend) -> Self {
        Self {
            enable_diff_snapshots: None,
            track_dirty_pages: None,
            mem_file_path: None,
            mem_backend: Some(mem_backend),
            snapshot_path: snapshot_path.into(),
            resume_vm: None,
            network_overrides: None,
            vsock_override: None,
            clock_realtime: None,
        }
    }
}

/// Where a restored VM's memory comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBackend {
    /// A memory file, or a userfaultfd page server.
    pub backend_type: MemoryBackendType,
    /// For [`MemoryBackendType::File`], the memory file; for
    /// [`MemoryBackendType::Uffd`], the unix socket on which the page server
    /// waits for Firecracker's userfaultfd and memory layout.
    pub backend_path: PathBuf,
}

impl MemoryBackend {
    /// A backend of the given type at `backend_path`.
    pub fn new(backend_type: MemoryBackendType, backend_path: impl Into<PathBuf>) -> Self {
        Self {
            backend_type,
            backend_path: backend_path.into(),
        }
    }
}

/// Kind of [`MemoryBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// Firecracker maps the memory file itself.
    File,
    /// A page server serves faults over userfaultfd.
    Uffd,
}

/// A new TAP device for one network interface of a restored VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// Identifier of the interface in the snapshot.
    pub iface_id: String,
    /// Name of the host TAP device to use instead.
    pub host_dev_name: String,
}

/// A new host socket for the vsock device of a restored VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    /// Host path of the unix socket to use instead.
    pub uds_path: PathBuf,
}
