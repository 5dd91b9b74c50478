//! Snapshot bundles: a directory per snapshot holding Firecracker's
//! vmstate, the guest memory file and a manifest, independent of the VM it
//! came from (destroying the VM keeps it).
//!
//! ```text
//! <state>/snapshots/<name>/
//!     vmstate        Firecracker's device and vCPU state
//!     memory         guest memory
//!     manifest.json  what it is, where it came from, what it needs
//! ```

pub mod store;
pub mod uffd;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::{Durability, RecordError, write_atomic};
use crate::spec::ResolvedSpec;
use crate::{VmId, VmIdError};

/// The manifest format this build writes.
pub const MANIFEST_FORMAT: u32 = 1;
/// File names inside a bundle.
pub const VMSTATE_FILE: &str = "vmstate";
/// Guest memory file name.
pub const MEMORY_FILE: &str = "memory";
/// Manifest file name.
pub const MANIFEST_FILE: &str = "manifest.json";

/// A snapshot's name: the same rule as a [`VmId`], so it is path-safe.
///
/// ```
/// use firehost::snapshot::SnapshotName;
/// assert!("base-image".parse::<SnapshotName>().is_ok());
/// assert!("../x".parse::<SnapshotName>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotName(String);

impl SnapshotName {
    /// Checks and wraps a name.
    pub fn new(name: impl Into<String>) -> Result<Self, VmIdError> {
        let name = name.into();
        crate::id::validate(&name)?;
        Ok(SnapshotName(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SnapshotName {
    type Error = VmIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        SnapshotName::new(s)
    }
}

impl From<SnapshotName> for String {
    fn from(n: SnapshotName) -> String {
        n.0
    }
}

impl std::str::FromStr for SnapshotName {
    type Err = VmIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SnapshotName::new(s)
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Full or diff (only the pages dirtied since the last snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    /// All of guest memory.
    Full,
}

/// What a bundle holds, written last so that a bundle with a manifest is
/// complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// Manifest format version.
    pub format: u32,
    /// The snapshot's name.
    pub name: SnapshotName,
    /// The VM it was taken from.
    pub source_vm: VmId,
    /// Full or diff.
    pub kind: SnapshotKind,
    /// `firecracker_version` reported by the VMM that wrote it: Firecracker
    /// only loads snapshots of its own version.
    pub firecracker_version: String,
    /// The source VM's resolved spec (machine and drive layout).
    pub spec: ResolvedSpec,
    /// Size of the vmstate file in bytes.
    pub vmstate_bytes: u64,
    /// Size of the memory file in bytes.
    pub memory_bytes: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

/// Where a bundle's files are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// Its name.
    pub name: SnapshotName,
    /// The bundle directory.
    pub dir: PathBuf,
    /// The manifest.
    pub manifest: SnapshotManifest,
}

impl SnapshotManifest {
    /// Writes the manifest into `bundle` atomically (blocking).
    pub fn write(&self, bundle: &Path) -> Result<(), RecordError> {
        let bytes = serde_json::to_vec_pretty(self).expect("manifests always serialise");
        write_atomic(&bundle.join(MANIFEST_FILE), &bytes, Durability::Synced)
    }

    /// Reads the manifest of `bundle` (blocking).
    pub fn read(bundle: &Path) -> Result<Self, RecordError> {
        let path = bundle.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(|source| RecordError::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| RecordError::Malformed { path, source })
    }
}
