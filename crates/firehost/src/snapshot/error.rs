//! Why a bundle cannot be read, written or used.

use std::path::{Path, PathBuf};

use super::{MANIFEST_FORMAT, SnapshotName};

/// A bundle is missing, incomplete, damaged or unfit for this restore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The bundle directory does not exist.
    #[error("snapshot bundle {dir:?} does not exist")]
    NotFound {
        /// The directory.
        dir: PathBuf,
    },
    /// The bundle has no manifest: the snapshot was interrupted.
    #[error("snapshot bundle {dir:?} is incomplete: it has no manifest")]
    Incomplete {
        /// The directory.
        dir: PathBuf,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("manifest {path:?} is malformed")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The manifest was written by a newer (or unknown) firehost.
    #[error("manifest {path:?} has format {found}; this build reads 1 to {MANIFEST_FORMAT}")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// Its format number.
        found: u32,
    },
    /// The manifest parses but contradicts itself or its directory.
    #[error("manifest {path:?} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A file the manifest lists is not in the bundle.
    #[error("snapshot {name}: file {file} is missing")]
    MissingFile {
        /// The snapshot.
        name: SnapshotName,
        /// The file's name in the bundle.
        file: String,
    },
    /// A file's size differs from the manifest's.
    #[error("snapshot {name}: file {file} is {found} bytes, the manifest says {expected}")]
    SizeMismatch {
        /// The snapshot.
        name: SnapshotName,
        /// The file's name in the bundle.
        file: String,
        /// Size in the manifest.
        expected: u64,
        /// Size on disk.
        found: u64,
    },
    /// A file's checksum differs from the manifest's: it was modified or
    /// damaged after the snapshot was taken.
    #[error("snapshot {name}: file {file} has BLAKE3 {found}, the manifest says {expected}")]
    ChecksumMismatch {
        /// The snapshot.
        name: SnapshotName,
        /// The file's name in the bundle.
        file: String,
        /// Checksum in the manifest.
        expected: String,
        /// Checksum of the file now.
        found: String,
    },
    /// A diff's parent bundle is gone (or incomplete).
    #[error("snapshot {name}: its parent {parent} is missing")]
    MissingParent {
        /// The diff.
        name: SnapshotName,
        /// The parent it names.
        parent: SnapshotName,
    },
    /// Following the parents leads back to a snapshot already visited.
    #[error("snapshot {name}: its parent chain loops ({chain:?})")]
    ParentLoop {
        /// Where the walk started.
        name: SnapshotName,
        /// The names visited, the repeated one last.
        chain: Vec<SnapshotName>,
    },
    /// The snapshot was written by another Firecracker version than the
    /// one that would load it.
    #[error(
        "snapshot {name} was taken by Firecracker {snapshot}; the running Firecracker is {running}"
    )]
    VersionMismatch {
        /// The snapshot.
        name: SnapshotName,
        /// The version in its manifest.
        snapshot: String,
        /// The version that would load it.
        running: String,
    },
    /// A file-system operation on the bundle failed.
    #[error("cannot {op} {path:?}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// A file of the bundle (the manifest, the working set) could not be
    /// written.
    #[error("cannot write the bundle")]
    Write {
        /// The cause.
        #[source]
        source: crate::fsutil::FsError,
    },
}

impl BundleError {
    /// The class of this failure (see [`ErrorKind`](crate::ErrorKind)): a
    /// missing bundle is not found; a damaged or incomplete one failed.
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            BundleError::NotFound { .. } => crate::ErrorKind::NotFound,
            BundleError::VersionMismatch { .. }
            | BundleError::Incomplete { .. }
            | BundleError::Malformed { .. }
            | BundleError::UnknownFormat { .. }
            | BundleError::Invalid { .. }
            | BundleError::MissingFile { .. }
            | BundleError::SizeMismatch { .. }
            | BundleError::ChecksumMismatch { .. }
            | BundleError::MissingParent { .. }
            | BundleError::ParentLoop { .. }
            | BundleError::Io { .. }
            | BundleError::Write { .. } => crate::ErrorKind::Failed,
        }
    }
}

/// An I/O step on `path` that failed, as a [`BundleError`].
pub(super) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BundleError {
    let path = path.to_owned();
    move |source| BundleError::Io { op, path, source }
}
