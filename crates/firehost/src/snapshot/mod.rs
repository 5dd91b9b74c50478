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

pub(crate) mod extents;
pub mod store;
pub mod uffd;

use std::fmt;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::VmId;
use crate::fsutil::{Durability, write_atomic};
use crate::spec::ResolvedSpec;

pub use store::{SnapshotStore, StoreError};

/// The manifest format this build writes.
pub const MANIFEST_FORMAT: u32 = 2;
/// File names inside a bundle.
pub const VMSTATE_FILE: &str = "vmstate";
/// Guest memory file name.
pub const MEMORY_FILE: &str = "memory";
/// Manifest file name.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The optional recorded working set (see [`WorkingSet`]).
pub const WORKING_SET_FILE: &str = "working_set.json";
/// The directory of lease files inside a bundle.
pub const LEASES_DIR: &str = "leases";

pub use crate::id::SnapshotName;

/// Full or diff (only the pages dirtied since the parent snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    /// All of guest memory.
    Full,
    /// The pages written since the parent was taken; the memory file is
    /// sparse and only restorable on top of its parent chain.
    Diff,
}

impl fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnapshotKind::Full => "full",
            SnapshotKind::Diff => "diff",
        })
    }
}

/// One network interface of the source VM, as a restore must recreate it.
///
/// One per NIC of the source VM; for the default network's NIC,
/// `guest_ip` says which address the guest keeps configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkLayout {
    /// Firecracker's `iface_id`: the restored VM must use the same.
    pub iface_id: String,
    /// The guest MAC address, which lives on in the vmstate.
    pub guest_mac: Option<String>,
    /// The TAP the source VM used; a restore overrides it
    /// (`network_overrides`).
    pub host_dev_name: String,
    /// The guest's address on the default network, which lives on in the
    /// guest's memory (absent for NICs outside the default network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_ip: Option<std::net::Ipv4Addr>,
}

/// One drive the source VM had attached, as its vmstate names it: a
/// restore reopens the file, so it must still be there, the same size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveLayout {
    /// Firecracker's `drive_id` (`rootfs` for the root filesystem).
    pub id: String,
    /// The file the source VMM had open (for a jailed source, its copy
    /// in the chroot).
    pub path: PathBuf,
    /// Its size in bytes when the snapshot was taken.
    pub size_bytes: u64,
}

impl From<&crate::net::host::VmNet> for NetworkLayout {
    fn from(net: &crate::net::host::VmNet) -> Self {
        NetworkLayout {
            iface_id: net.iface_id.clone(),
            guest_mac: Some(net.mac.to_string()),
            host_dev_name: net.tap.to_string(),
            guest_ip: Some(net.ip),
        }
    }
}

impl From<&crate::spec::NicSpec> for NetworkLayout {
    fn from(nic: &crate::spec::NicSpec) -> Self {
        NetworkLayout {
            iface_id: nic.iface_id.clone(),
            guest_mac: nic.guest_mac.map(|m| m.to_string()),
            host_dev_name: nic.tap.to_string(),
            guest_ip: None,
        }
    }
}

/// The source VM's vsock device.
///
/// A restore gives the new VM a socket of its own and keeps the token: the
/// agent in the restored guest holds the one it read at boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockLayout {
    /// The guest CID, which lives on in the vmstate.
    pub guest_cid: u32,
    /// The source VM's unix socket; a restore overrides it
    /// (`vsock_override`).
    pub uds_path: PathBuf,
    /// The agent token the guest booted with (the bundle directory is
    /// private to the state directory's owner, like the guest memory that
    /// holds the same token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_token: Option<firehost_proto::Token>,
}

/// One file of a bundle as recorded by [`Bundle::seal`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The file's name inside the bundle (a plain name, no path).
    pub name: String,
    /// Its logical size in bytes.
    pub size_bytes: u64,
    /// BLAKE3 of its whole content (holes read as zeros) in lower-case hex,
    /// as `b3sum` prints it. `None` in format 1 manifests.
    pub blake3: Option<String>,
    /// Bytes in allocated (non-hole) extents: for a diff's memory file, the
    /// size of the pages it carries. `None` in format 1 manifests.
    pub data_bytes: Option<u64>,
}

/// What a bundle holds, written last so that a bundle with a manifest is
/// complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// Manifest format version ([`MANIFEST_FORMAT`] when written by this
    /// build; 1 for older bundles).
    pub format: u32,
    /// The snapshot's name.
    pub name: SnapshotName,
    /// The VM it was taken from.
    pub source_vm: VmId,
    /// Full or diff.
    pub kind: SnapshotKind,
    /// The snapshot a diff applies on top of; `None` for a full one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<SnapshotName>,
    /// `firecracker_version` reported by the VMM that wrote it: Firecracker
    /// only loads snapshots of its own version (see
    /// [`SnapshotManifest::check_firecracker_version`]).
    pub firecracker_version: String,
    /// The source VM's resolved spec (machine config and drive layout).
    pub spec: ResolvedSpec,
    /// The network interfaces. Filled in by the networking feature; empty
    /// until then.
    #[serde(default)]
    pub network: Vec<NetworkLayout>,
    /// The vsock device. Filled in by the vsock feature; absent until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockLayout>,
    /// The source VM's chroot, if it was jailed: its drives were the copies
    /// in there, which a restore copies again while they exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_chroot: Option<PathBuf>,
    /// The drives and their sizes (empty in bundles written before they
    /// were recorded: a restore then checks only that the files exist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<DriveLayout>,
    /// Size of the vmstate file in bytes.
    pub vmstate_bytes: u64,
    /// Size of the memory file in bytes (its logical size for a diff).
    pub memory_bytes: u64,
    /// Every file of the bundle with its size and checksum.
    #[serde(default)]
    pub files: Vec<FileEntry>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

/// What the caller of [`Bundle::seal`] knows; the sizes and checksums are
/// computed from the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestDraft {
    /// The snapshot's name.
    pub name: SnapshotName,
    /// The VM it was taken from.
    pub source_vm: VmId,
    /// Full or diff.
    pub kind: SnapshotKind,
    /// The parent of a diff; must be `None` for a full snapshot.
    pub parent: Option<SnapshotName>,
    /// The version the VMM reported (`GET /version`).
    pub firecracker_version: String,
    /// The source VM's resolved spec.
    pub spec: ResolvedSpec,
    /// The source VM's network interfaces.
    pub network: Vec<NetworkLayout>,
    /// The vsock device (absent until the vsock feature fills it).
    pub vsock: Option<VsockLayout>,
    /// The source VM's chroot, if it was jailed.
    pub source_chroot: Option<PathBuf>,
    /// The source VM's drives with their sizes.
    pub drives: Vec<DriveLayout>,
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

/// The pages a restored guest touched, recorded by the page server (see
/// [`uffd::WorkingSet`]) so that the next restore can fetch them up front.
/// Kept in its own file, [`WORKING_SET_FILE`], because it is written after
/// the bundle was sealed; it is a hint, so it is not checksummed and may be
/// missing.
pub use uffd::WorkingSet;

impl WorkingSet {
    /// Writes the working set into `bundle` atomically (blocking).
    pub fn write(&self, bundle: &Path) -> Result<(), BundleError> {
        let bytes = serde_json::to_vec(self).expect("working sets always serialise");
        write_atomic(&bundle.join(WORKING_SET_FILE), &bytes, Durability::Cached)
            .map_err(|source| BundleError::Write { source })
    }

    /// Reads the working set of `bundle`, `None` if none was recorded
    /// (blocking).
    pub fn read(bundle: &Path) -> Result<Option<WorkingSet>, BundleError> {
        let path = bundle.join(WORKING_SET_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(BundleError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| BundleError::Malformed { path, source })
    }
}

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

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BundleError {
    let path = path.to_owned();
    move |source| BundleError::Io { op, path, source }
}

/// How thoroughly [`Bundle::verify`] checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Check the memory file's size but not its checksum. Hashing reads the
    /// whole of guest memory (holes excepted), which for a VM of many GiB
    /// costs seconds; the vmstate is always hashed (it is small). Skipping
    /// leaves damage to the memory file undetected.
    pub skip_memory_checksum: bool,
    /// The version of the Firecracker that will load the snapshot, as its
    /// `GET /version` reports it; `None` skips the check.
    pub firecracker_version: Option<String>,
}

impl SnapshotManifest {
    /// Writes the manifest into `bundle` atomically and durably (blocking).
    /// [`Bundle::seal`] computes the file entries and calls this.
    pub fn write(&self, bundle: &Path) -> Result<(), BundleError> {
        let bytes = serde_json::to_vec_pretty(self).expect("manifests always serialise");
        write_atomic(&bundle.join(MANIFEST_FILE), &bytes, Durability::Synced)
            .map_err(|source| BundleError::Write { source })
    }

    /// Reads and checks the manifest of `bundle`, format 1 or 2
    /// (blocking). A missing manifest is [`BundleError::Incomplete`], a
    /// missing directory [`BundleError::NotFound`].
    pub fn load(bundle: &Path) -> Result<Self, BundleError> {
        let path = bundle.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(if bundle.is_dir() {
                    BundleError::Incomplete {
                        dir: bundle.to_owned(),
                    }
                } else {
                    BundleError::NotFound {
                        dir: bundle.to_owned(),
                    }
                });
            }
            Err(source) => {
                return Err(BundleError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        if let Ok(f) = serde_json::from_slice::<Format>(&bytes)
            && !(1..=MANIFEST_FORMAT).contains(&f.format)
        {
            return Err(BundleError::UnknownFormat {
                path,
                found: f.format,
            });
        }
        let mut manifest: SnapshotManifest =
            serde_json::from_slice(&bytes).map_err(|source| BundleError::Malformed {
                path: path.clone(),
                source,
            })?;
        if manifest.format == 1 {
            manifest.files = [
                (VMSTATE_FILE, manifest.vmstate_bytes),
                (MEMORY_FILE, manifest.memory_bytes),
            ]
            .into_iter()
            .map(|(name, size_bytes)| FileEntry {
                name: name.to_owned(),
                size_bytes,
                blake3: None,
                data_bytes: None,
            })
            .collect();
        }
        manifest.check(&path)?;
        Ok(manifest)
    }

    /// Checks what serde cannot: the parent matches the kind, the files
    /// are plain names and include the vmstate and the memory.
    fn check(&self, path: &Path) -> Result<(), BundleError> {
        let invalid = |reason| {
            Err(BundleError::Invalid {
                path: path.to_owned(),
                reason,
            })
        };
        match (self.kind, &self.parent) {
            (SnapshotKind::Full, Some(_)) => return invalid("a full snapshot has a parent"),
            (SnapshotKind::Diff, None) => return invalid("a diff snapshot has no parent"),
            (SnapshotKind::Diff, Some(p)) if *p == self.name => {
                return invalid("a snapshot is its own parent");
            }
            _ => {}
        }
        for file in &self.files {
            if !is_plain_file_name(&file.name) {
                return invalid("a file name is not a plain name inside the bundle");
            }
        }
        for required in [VMSTATE_FILE, MEMORY_FILE] {
            if self.file(required).is_none() {
                return invalid("the vmstate or memory file is not listed");
            }
        }
        Ok(())
    }

    /// The entry for `name`, if listed.
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }

    /// Checks that a Firecracker reporting `running` (its `GET /version`)
    /// can load this snapshot. Firecracker only loads snapshots written by
    /// its own version, so the versions must be equal; a leading `v` on
    /// either side is ignored (`v1.16.1` is `1.16.1`).
    ///
    /// ```
    /// # use firehost::snapshot::SnapshotManifest;
    /// # fn f(manifest: &SnapshotManifest) {
    /// if let Err(e) = manifest.check_firecracker_version("1.16.1") {
    ///     eprintln!("{e}");
    /// }
    /// # }
    /// ```
    pub fn check_firecracker_version(&self, running: &str) -> Result<(), BundleError> {
        let bare = |v: &str| v.trim().trim_start_matches('v').to_owned();
        if bare(&self.firecracker_version) == bare(running) {
            Ok(())
        } else {
            Err(BundleError::VersionMismatch {
                name: self.name.clone(),
                snapshot: self.firecracker_version.clone(),
                running: running.to_owned(),
            })
        }
    }
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains('/') && !name.contains('\0')
}

/// Holds an exclusive `flock` on a bundle directory that is being written,
/// so that [`SnapshotStore::gc`] does not take it for the leftover of a
/// crash. Released on drop (or when the process dies).
#[derive(Debug)]
pub struct PendingBundle {
    _fd: OwnedFd,
}

impl PendingBundle {
    /// Locks `dir`, which must exist (blocking only for the open).
    pub fn lock(dir: &Path) -> Result<PendingBundle, BundleError> {
        let fd = lock_dir(dir, false).map_err(io_err("lock", dir))?;
        Ok(PendingBundle {
            _fd: fd.expect("a blocking lock is always taken"),
        })
    }
}

/// Takes an exclusive `flock` on `dir`; with `try_only`, returns `None`
/// instead of waiting when another holder has it.
pub(crate) fn lock_dir(dir: &Path, try_only: bool) -> std::io::Result<Option<OwnedFd>> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let op = if try_only {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::LockExclusive
    };
    match rustix::fs::flock(&fd, op) {
        Ok(()) => Ok(Some(fd)),
        Err(rustix::io::Errno::WOULDBLOCK) if try_only => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A complete bundle on disk: its directory and its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    dir: PathBuf,
    manifest: SnapshotManifest,
}

impl Bundle {
    /// Opens the bundle in `dir` (blocking): reads and checks its manifest,
    /// including that the manifest's name is the directory's. Does not look
    /// at the other files; see [`Bundle::verify`].
    pub fn open(dir: &Path) -> Result<Bundle, BundleError> {
        let manifest = SnapshotManifest::load(dir)?;
        if dir.file_name().and_then(|n| n.to_str()) != Some(manifest.name.as_str()) {
            return Err(BundleError::Invalid {
                path: dir.join(MANIFEST_FILE),
                reason: "the manifest's name is not the bundle directory's",
            });
        }
        Ok(Bundle {
            dir: dir.to_owned(),
            manifest,
        })
    }

    /// Seals a bundle whose `vmstate` and `memory` files Firecracker has
    /// written (blocking; call it on the blocking pool): computes each
    /// file's size, allocated bytes and BLAKE3 checksum, streaming and
    /// without reading holes, then writes the manifest atomically and
    /// durably. Until this returns, the directory is an incomplete bundle.
    ///
    /// The data files are not fsynced: after a host crash, a bundle whose
    /// memory did not reach the disk fails [`Bundle::verify`].
    pub fn seal(dir: &Path, draft: ManifestDraft) -> Result<SnapshotManifest, BundleError> {
        let mut files = Vec::with_capacity(2);
        for name in [VMSTATE_FILE, MEMORY_FILE] {
            let path = dir.join(name);
            let file = File::open(&path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    BundleError::MissingFile {
                        name: draft.name.clone(),
                        file: name.to_owned(),
                    }
                } else {
                    io_err("open", &path)(e)
                }
            })?;
            let digest = extents::digest(&file).map_err(io_err("hash", &path))?;
            files.push(FileEntry {
                name: name.to_owned(),
                size_bytes: digest.size_bytes,
                blake3: Some(digest.blake3),
                data_bytes: Some(digest.data_bytes),
            });
        }
        let manifest = SnapshotManifest {
            format: MANIFEST_FORMAT,
            name: draft.name,
            source_vm: draft.source_vm,
            kind: draft.kind,
            parent: draft.parent,
            firecracker_version: draft.firecracker_version,
            spec: draft.spec,
            network: draft.network,
            vsock: draft.vsock,
            source_chroot: draft.source_chroot,
            drives: draft.drives,
            vmstate_bytes: files[0].size_bytes,
            memory_bytes: files[1].size_bytes,
            files,
            created_at_ms: draft.created_at_ms,
        };
        manifest.check(&dir.join(MANIFEST_FILE))?;
        manifest.write(dir)?;
        Ok(manifest)
    }

    /// The bundle's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bundle's name.
    pub fn name(&self) -> &SnapshotName {
        &self.manifest.name
    }

    /// The manifest.
    pub fn manifest(&self) -> &SnapshotManifest {
        &self.manifest
    }

    /// The path of the file called `name` inside the bundle.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Name, directory and manifest, as the manager reports them.
    pub fn info(&self) -> SnapshotInfo {
        SnapshotInfo {
            name: self.manifest.name.clone(),
            dir: self.dir.clone(),
            manifest: self.manifest.clone(),
        }
    }

    /// The recorded working set, if any (blocking).
    pub fn working_set(&self) -> Result<Option<WorkingSet>, BundleError> {
        WorkingSet::read(&self.dir)
    }

    /// Checks the files against the manifest (blocking): each listed file
    /// exists with the recorded size, then each recorded checksum matches
    /// (the memory's only unless [`VerifyOptions::skip_memory_checksum`]),
    /// then the Firecracker version if one is given. Parents are not
    /// checked; see [`Bundle::chain`].
    pub fn verify(&self, options: &VerifyOptions) -> Result<(), BundleError> {
        let name = &self.manifest.name;
        let mut opened = Vec::with_capacity(self.manifest.files.len());
        for entry in &self.manifest.files {
            let path = self.path(&entry.name);
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(BundleError::MissingFile {
                        name: name.clone(),
                        file: entry.name.clone(),
                    });
                }
                Err(e) => return Err(io_err("open", &path)(e)),
            };
            let found = file.metadata().map_err(io_err("stat", &path))?.len();
            if found != entry.size_bytes {
                return Err(BundleError::SizeMismatch {
                    name: name.clone(),
                    file: entry.name.clone(),
                    expected: entry.size_bytes,
                    found,
                });
            }
            opened.push((entry, path, file));
        }
        for (entry, path, file) in opened {
            let Some(expected) = &entry.blake3 else {
                continue;
            };
            if options.skip_memory_checksum && entry.name == MEMORY_FILE {
                continue;
            }
            let found = extents::digest(&file)
                .map_err(io_err("hash", &path))?
                .blake3;
            if !found.eq_ignore_ascii_case(expected) {
                return Err(BundleError::ChecksumMismatch {
                    name: name.clone(),
                    file: entry.name.clone(),
                    expected: expected.clone(),
                    found,
                });
            }
        }
        if let Some(running) = &options.firecracker_version {
            self.manifest.check_firecracker_version(running)?;
        }
        Ok(())
    }

    /// This bundle and its ancestors, newest first, ending with a full
    /// snapshot (blocking). Parents are looked up beside this bundle. A
    /// parent that is gone or incomplete is [`BundleError::MissingParent`];
    /// a cycle is [`BundleError::ParentLoop`].
    pub fn chain(&self) -> Result<Vec<Bundle>, BundleError> {
        let base = self.dir.parent().unwrap_or(Path::new("."));
        let mut chain = vec![self.clone()];
        let mut seen = vec![self.manifest.name.clone()];
        while let Some(parent) = chain.last().expect("never empty").manifest.parent.clone() {
            if seen.contains(&parent) {
                seen.push(parent);
                return Err(BundleError::ParentLoop {
                    name: self.manifest.name.clone(),
                    chain: seen,
                });
            }
            let child = chain.last().expect("never empty").manifest.name.clone();
            let bundle = match Bundle::open(&base.join(parent.as_str())) {
                Ok(bundle) => bundle,
                Err(BundleError::NotFound { .. } | BundleError::Incomplete { .. }) => {
                    return Err(BundleError::MissingParent {
                        name: child,
                        parent,
                    });
                }
                Err(e) => return Err(e),
            };
            seen.push(parent);
            chain.push(bundle);
        }
        Ok(chain)
    }
}

/// Creates `dir` with mode 0700 (blocking).
pub(crate) use crate::fsutil::create_private_dir;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ResolvedSpec {
        ResolvedSpec::for_tests()
    }

    fn draft(name: &str) -> ManifestDraft {
        ManifestDraft {
            name: name.parse().unwrap(),
            source_vm: VmId::new("vm1").unwrap(),
            kind: SnapshotKind::Full,
            parent: None,
            firecracker_version: "1.16.1".into(),
            spec: spec(),
            network: vec![NetworkLayout {
                iface_id: "eth0".into(),
                guest_mac: Some("06:00:ac:10:00:02".into()),
                host_dev_name: "fh-tap0".into(),
                guest_ip: Some("172.30.0.2".parse().unwrap()),
            }],
            vsock: Some(VsockLayout {
                guest_cid: 3,
                uds_path: "/run/v.sock".into(),
                agent_token: Some(firehost_proto::Token("t0ken".into())),
            }),
            source_chroot: None,
            drives: vec![],
            created_at_ms: 7,
        }
    }

    /// A bundle directory `<base>/<name>` with a small vmstate and a sparse
    /// memory file, not sealed.
    fn unsealed(base: &Path, name: &str) -> PathBuf {
        use std::os::unix::fs::FileExt;
        let dir = base.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(VMSTATE_FILE), b"vcpu and device state").unwrap();
        let memory = File::create(dir.join(MEMORY_FILE)).unwrap();
        memory.set_len(16 * 4096).unwrap();
        memory.write_all_at(&[0xab; 4096], 3 * 4096).unwrap();
        dir
    }

    #[test]
    fn sealed_manifest_round_trips_with_checksums() {
        let base = tempfile::tempdir().unwrap();
        let dir = unsealed(base.path(), "snap");
        let manifest = Bundle::seal(&dir, draft("snap")).unwrap();
        assert_eq!(manifest.format, MANIFEST_FORMAT);
        let memory = manifest.file(MEMORY_FILE).unwrap();
        assert_eq!(memory.size_bytes, 16 * 4096);
        assert_eq!(manifest.memory_bytes, 16 * 4096);
        let bytes = std::fs::read(dir.join(MEMORY_FILE)).unwrap();
        assert_eq!(
            memory.blake3.as_deref(),
            Some(blake3::hash(&bytes).to_hex().as_str())
        );
        let bundle = Bundle::open(&dir).unwrap();
        assert_eq!(bundle.manifest(), &manifest);
        bundle.verify(&VerifyOptions::default()).unwrap();
    }

    #[test]
    fn format_1_manifest_is_read_and_checked_by_size() {
        let base = tempfile::tempdir().unwrap();
        let dir = unsealed(base.path(), "old");
        let v1 = serde_json::json!({
            "format": 1,
            "name": "old",
            "source_vm": "vm1",
            "kind": "full",
            "firecracker_version": "1.16.1",
            "spec": spec(),
            "vmstate_bytes": 21,
            "memory_bytes": 16 * 4096,
            "created_at_ms": 1,
        });
        std::fs::write(dir.join(MANIFEST_FILE), v1.to_string()).unwrap();
        let bundle = Bundle::open(&dir).unwrap();
        let m = bundle.manifest();
        assert_eq!(
            (m.format, m.parent.as_ref(), m.vsock.as_ref()),
            (1, None, None)
        );
        assert!(m.network.is_empty());
        assert_eq!(m.file(VMSTATE_FILE).unwrap().size_bytes, 21);
        assert_eq!(m.file(MEMORY_FILE).unwrap().blake3, None);
        bundle.verify(&VerifyOptions::default()).unwrap();
        // The compatible reader sees the same manifest.
        assert_eq!(&SnapshotManifest::load(&dir).unwrap(), m);
    }

    #[test]
    fn unknown_and_malformed_manifests_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = unsealed(base.path(), "s");
        for (text, check) in [
            (
                r#"{"format": 3}"#,
                (|e| matches!(e, BundleError::UnknownFormat { found: 3, .. })) as fn(&_) -> bool,
            ),
            (r#"{"format": 0}"#, |e| {
                matches!(e, BundleError::UnknownFormat { found: 0, .. })
            }),
            ("{not json", |e| matches!(e, BundleError::Malformed { .. })),
        ] {
            std::fs::write(dir.join(MANIFEST_FILE), text).unwrap();
            let err = Bundle::open(&dir).unwrap_err();
            assert!(check(&err), "{text}: {err:?}");
        }
    }

    #[test]
    fn manifests_that_contradict_themselves_are_invalid() {
        let base = tempfile::tempdir().unwrap();
        let dir = unsealed(base.path(), "s");
        let good = serde_json::to_value(Bundle::seal(&dir, draft("s")).unwrap()).unwrap();
        type Edit = fn(&mut serde_json::Value);
        let cases: [(&str, Edit); 5] = [
            ("full with a parent", |m| m["parent"] = "p".into()),
            ("diff without a parent", |m| m["kind"] = "diff".into()),
            ("file outside the bundle", |m| {
                m["files"][1]["name"] = "../../etc/shadow".into();
            }),
            ("memory not listed", |m| {
                m["files"].as_array_mut().unwrap().pop();
            }),
            ("name of another bundle", |m| m["name"] = "other".into()),
        ];
        for (what, edit) in cases {
            let mut m = good.clone();
            edit(&mut m);
            std::fs::write(dir.join(MANIFEST_FILE), m.to_string()).unwrap();
            let err = Bundle::open(&dir).unwrap_err();
            assert!(
                matches!(err, BundleError::Invalid { .. }),
                "{what}: {err:?}"
            );
        }
    }

    #[test]
    fn seal_refuses_a_diff_without_parent_and_missing_files() {
        let base = tempfile::tempdir().unwrap();
        let dir = unsealed(base.path(), "s");
        let mut d = draft("s");
        d.kind = SnapshotKind::Diff;
        assert!(matches!(
            Bundle::seal(&dir, d),
            Err(BundleError::Invalid { .. })
        ));
        assert!(!dir.join(MANIFEST_FILE).exists());
        std::fs::remove_file(dir.join(MEMORY_FILE)).unwrap();
        let err = Bundle::seal(&dir, draft("s")).unwrap_err();
        assert!(
            matches!(&err, BundleError::MissingFile { file, .. } if file == MEMORY_FILE),
            "{err:?}"
        );
    }

    #[test]
    fn missing_and_incomplete_bundles_are_told_apart() {
        let base = tempfile::tempdir().unwrap();
        assert!(matches!(
            Bundle::open(&base.path().join("gone")),
            Err(BundleError::NotFound { .. })
        ));
        let dir = unsealed(base.path(), "half");
        assert!(matches!(
            Bundle::open(&dir),
            Err(BundleError::Incomplete { .. })
        ));
    }

    #[test]
    fn firecracker_version_must_match_exactly() {
        let base = tempfile::tempdir().unwrap();
        let dir = unsealed(base.path(), "s");
        let m = Bundle::seal(&dir, draft("s")).unwrap();
        for (running, ok) in [
            ("1.16.1", true),
            ("v1.16.1", true),
            ("1.16.0", false),
            ("1.16", false),
            ("1.16.1-dev", false),
        ] {
            assert_eq!(
                m.check_firecracker_version(running).is_ok(),
                ok,
                "{running}"
            );
        }
        let err = Bundle::open(&dir)
            .unwrap()
            .verify(&VerifyOptions {
                firecracker_version: Some("1.15.0".into()),
                ..VerifyOptions::default()
            })
            .unwrap_err();
        assert!(
            matches!(err, BundleError::VersionMismatch { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn names_that_could_leave_the_snapshots_directory_are_refused() {
        for bad in ["..", ".", "../x", "a/b", "/abs", ".tmp-x", "", "a b"] {
            assert!(bad.parse::<SnapshotName>().is_err(), "{bad:?}");
        }
        // Also when they come from a manifest.
        assert!(serde_json::from_str::<SnapshotName>(r#""../x""#).is_err());
    }

    #[test]
    fn working_set_round_trips_and_is_optional() {
        let base = tempfile::tempdir().unwrap();
        let dir = unsealed(base.path(), "s");
        Bundle::seal(&dir, draft("s")).unwrap();
        let bundle = Bundle::open(&dir).unwrap();
        assert_eq!(bundle.working_set().unwrap(), None);
        let ws = WorkingSet {
            page_size_bytes: 4096,
            pages: vec![3, 0, 7],
            truncated: false,
        };
        ws.write(&dir).unwrap();
        assert_eq!(bundle.working_set().unwrap(), Some(ws));
        // It is not part of the checked files.
        bundle.verify(&VerifyOptions::default()).unwrap();
    }
}
