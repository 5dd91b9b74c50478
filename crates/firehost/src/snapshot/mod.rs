//! Snapshot bundles: a directory per snapshot holding Firecracker's
//! vmstate, the guest memory file and a manifest, independent of the VM it
//! came from (destroying the VM keeps it). A bundle can be restored many
//! times, into VMs with new names, TAPs, IPs and vsock sockets.
//!
//! The problem a bundle solves is trust: a restore must know, before it
//! hands a memory file to Firecracker, that the files are the ones that
//! were written, whole, by a Firecracker of the version now running, and,
//! for a diff, that every layer underneath is still there. So the manifest
//! is written last (a bundle without one is a crash mid-snapshot) and
//! records each file's size and BLAKE3 checksum.
//!
//! ```text
//! <state>/snapshots/<name>/
//!     vmstate           Firecracker's device and vCPU state
//!     memory            guest memory (sparse for a diff: only dirty pages)
//!     manifest.json     what it is, where it came from, what it needs
//!     working_set.json  optional: the pages a restored guest touched first
//!     leases/<vm-id>    one empty file per VM restored from it
//! ```
//!
//! # The life of a bundle
//!
//! 1. The manager creates `<name>/`, takes a [`PendingBundle`] lock on it
//!    (so that [`SnapshotStore::gc`](store::SnapshotStore::gc) leaves it
//!    alone), has Firecracker write `vmstate` and `memory`, then calls
//!    [`Bundle::seal`] with a [`ManifestDraft`]: sizes and checksums are
//!    computed and the manifest is written atomically and durably.
//! 2. Before a restore: [`store::SnapshotStore::verify`] (or
//!    [`Bundle::open`], [`Bundle::chain`] and [`Bundle::verify`]) with the
//!    running Firecracker's version in [`VerifyOptions`], then
//!    [`store::SnapshotStore::lease`] for the new VM; destroying that VM
//!    calls [`store::SnapshotStore::release`].
//! 3. A diff is restored by first merging it with its parents into a full
//!    bundle ([`store::SnapshotStore::merge`]).
//!
//! # Manifest formats
//!
//! Format 2 (written by this build) lists every file with its size,
//! checksum and allocated bytes, names the parent of a diff and leaves room
//! for the network and vsock layout. Format 1 manifests (sizes only) are
//! still read: their [`SnapshotManifest::files`] are filled in from the
//! sizes, without checksums, so verification checks the sizes only.

// One file per job: `manifest` (what a bundle holds, as written),
// `bundle` (sealing, opening, verifying, the parent chain), `error`,
// `lock` (the flock on a bundle being written), `store` (the directory of
// bundles: leases, gc, merge), `uffd` (the page server).
mod bundle;
mod error;
pub(crate) mod extents;
mod lock;
mod manifest;
pub mod store;
pub mod uffd;

pub use bundle::{Bundle, PendingBundle, Reclaimed, SnapshotInfo, VerifyOptions};
pub use error::BundleError;
pub(crate) use lock::lock_dir;
pub use manifest::{
    DriveLayout, FileEntry, ManifestDraft, NetworkLayout, SnapshotKind, SnapshotManifest,
    VsockLayout,
};
pub use store::{SnapshotStore, StoreError};

/// The pages a restored guest touched, recorded by the page server (see
/// [`uffd::WorkingSet`]) so that the next restore can fetch them up front.
/// Kept in its own file, [`WORKING_SET_FILE`], because it is written after
/// the bundle was sealed; it is a hint, so it is not checksummed and may be
/// missing.
pub use uffd::WorkingSet;

/// The manifest format this build writes.
pub const MANIFEST_FORMAT: u32 = 2;
/// File names inside a bundle.
pub const VMSTATE_FILE: &str = "vmstate";
/// Guest memory file name.
pub const MEMORY_FILE: &str = "memory";
/// The directory of a bundle that keeps its drives' content
/// ([`SnapshotManifest::disks`]).
pub const DISKS_DIR: &str = "disks";
/// Manifest file name.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The optional recorded working set (see [`WorkingSet`]).
pub const WORKING_SET_FILE: &str = "working_set.json";
/// The directory of lease files inside a bundle.
pub const LEASES_DIR: &str = "leases";

pub use crate::id::SnapshotName;

/// Creates `dir` with mode 0700 (blocking).
pub(crate) use crate::fsutil::create_private_dir;
