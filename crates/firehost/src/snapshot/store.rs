//! The snapshot store: listing, inspecting, verifying, deleting, collecting and merging bundles.
//!
//! A [`SnapshotStore`] works on `<state>/snapshots/` and knows where the
//! VMs' directories are (`<state>/vms/`), because a bundle in use must not
//! disappear: a VM restored from a bundle holds a *lease* on it, an empty
//! file `<bundle>/leases/<vm-id>`, taken with [`SnapshotStore::lease`] and
//! dropped with [`SnapshotStore::release`]. Leases are files rather than
//! in-memory guards because a restored VM outlives the manager process
//! that restored it. A lease whose VM directory is gone is *stale* (the VM
//! was reaped without releasing it) and counts for nothing.
//!
//! # Crash safety
//!
//! Nothing appears under a valid snapshot name half-made, and nothing
//! half-deleted stays under one:
//!
//! - a merge builds its bundle in `.tmp-<name>-<pid>-<n>/` (held with an
//!   exclusive `flock` while it is written) and renames it into place with
//!   `RENAME_NOREPLACE`;
//! - a delete renames the bundle to `.trash-<name>-<pid>-<n>/` before
//!   removing its files.
//!
//! Names starting with a dot are never valid [`SnapshotName`]s, so these
//! never show up in a listing; [`SnapshotStore::gc`] removes the ones a
//! crash left behind, along with bundles that never got a manifest.
//!
//! Mutations (lease, release, delete, gc, the final step of a merge) are
//! serialised by an exclusive `flock` on `<state>/snapshots/.lock`, across
//! threads and processes alike.
//!
//! Every method blocks on file-system I/O (and hashing, for
//! [`SnapshotStore::verify`] and [`SnapshotStore::merge`]): from async code,
//! call them on the blocking pool (`tokio::task::spawn_blocking`). The
//! store is cheap to clone for that purpose.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{
    Bundle, BundleError, LEASES_DIR, MEMORY_FILE, ManifestDraft, SnapshotInfo, SnapshotKind,
    SnapshotName, VMSTATE_FILE, VerifyOptions, WorkingSet, create_private_dir, extents, lock_dir,
};
use crate::VmId;

/// The store's lock file inside the snapshots directory.
const LOCK_FILE: &str = ".lock";
/// Prefix of a merge's bundle under construction.
const TMP_PREFIX: &str = ".tmp-";
/// Prefix of a bundle being deleted.
const TRASH_PREFIX: &str = ".trash-";

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A bundle is missing, incomplete or damaged (the bundle error says
    /// which).
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// A snapshot with this name exists already.
    #[error("snapshot {name} already exists")]
    Exists {
        /// The name.
        name: SnapshotName,
    },
    /// VMs restored from the snapshot still use it.
    #[error("snapshot {name} is in use by VMs {vms:?}")]
    Leased {
        /// The snapshot.
        name: SnapshotName,
        /// The VMs holding a live lease.
        vms: Vec<VmId>,
    },
    /// Diff snapshots are built on top of this one.
    #[error("snapshot {name} is the parent of {children:?}")]
    HasChildren {
        /// The snapshot.
        name: SnapshotName,
        /// The snapshots naming it as their parent.
        children: Vec<SnapshotName>,
    },
    /// Only a diff snapshot can be merged.
    #[error("snapshot {name} is not a diff")]
    NotDiff {
        /// The snapshot.
        name: SnapshotName,
    },
    /// A file-system operation failed.
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
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { op, path, source }
}

/// What [`SnapshotStore::list`] found.
#[derive(Debug, Default)]
pub struct Listing {
    /// Complete bundles, sorted by name.
    pub bundles: Vec<SnapshotInfo>,
    /// Bundles without a manifest (a snapshot in progress, or one a crash
    /// interrupted), sorted by name.
    pub incomplete: Vec<SnapshotName>,
    /// Bundles whose manifest cannot be used (malformed, from a newer
    /// firehost, contradicting itself), sorted by name.
    pub unreadable: Vec<UnreadableBundle>,
}

/// A bundle [`SnapshotStore::list`] could not read.
#[derive(Debug)]
pub struct UnreadableBundle {
    /// Its directory name.
    pub name: SnapshotName,
    /// Why.
    pub error: BundleError,
}

/// What [`SnapshotStore::inspect`] reports about one bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDetails {
    /// Name, directory and manifest.
    pub info: SnapshotInfo,
    /// VMs holding a live lease, sorted.
    pub leases: Vec<VmId>,
    /// Leases whose VM is gone, sorted ([`SnapshotStore::gc`] removes them).
    pub stale_leases: Vec<VmId>,
    /// Snapshots naming this one as their parent, sorted.
    pub children: Vec<SnapshotName>,
    /// The recorded working set, if any.
    pub working_set: Option<WorkingSet>,
}

/// What [`SnapshotStore::gc`] may remove beyond leftovers of crashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcOptions {
    /// Also remove complete bundles created at least this long ago that no
    /// VM leases and no other bundle names as its parent. `None` (the
    /// default) keeps every complete bundle.
    pub remove_unused_older_than: Option<Duration>,
    /// Bundles left alone whatever their state: those that a snapshot cut
    /// short by a manager's death may still be written into by a busy VMM
    /// (see [`Manager::snapshots_in_progress`]); the manager that settles
    /// the snapshot keeps or removes them.
    ///
    /// [`Manager::snapshots_in_progress`]: crate::Manager::snapshots_in_progress
    pub keep: Vec<SnapshotName>,
}

/// What [`SnapshotStore::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Bundles without a manifest that nobody was writing.
    pub incomplete: Vec<SnapshotName>,
    /// Temporary and half-deleted directories (`.tmp-*`, `.trash-*`).
    pub leftovers: Vec<PathBuf>,
    /// Leases of VMs that no longer exist.
    pub stale_leases: Vec<StaleLease>,
    /// Complete bundles removed under [`GcOptions::remove_unused_older_than`].
    pub unused: Vec<SnapshotName>,
}

/// A lease whose VM directory is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleLease {
    /// The leased snapshot.
    pub snapshot: SnapshotName,
    /// The VM that held it.
    pub vm: VmId,
}

/// The bundles under one snapshots directory.
///
/// # Blocking
///
/// Every method does file-system I/O, and `verify` and `merge` hash whole
/// memory files (seconds for a big VM): none is cheap. Async code uses
/// [`Manager::snapshots`](crate::Manager::snapshots) instead, which runs
/// these methods on the blocking pool (and keeps gc off the bundles of
/// interrupted snapshots). Code that is not async uses the store directly:
///
/// ```no_run
/// use firehost::snapshot::{SnapshotStore, VerifyOptions};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = SnapshotStore::new("/var/lib/firehost/snapshots", "/var/lib/firehost/vms");
/// let name = "base".parse()?;
/// let chain = store.verify(
///     &name,
///     &VerifyOptions {
///         skip_memory_checksum: true,
///         firecracker_version: Some("1.16.1".into()),
///     },
/// )?;
/// println!("{} layer(s)", chain.len());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
    vms_dir: PathBuf,
}

impl SnapshotStore {
    /// A store over `snapshots_dir` (`<state>/snapshots`), whose leases
    /// are live while `vms_dir/<vm-id>/` (`<state>/vms`) exists. Touches
    /// nothing on disk.
    pub fn new(snapshots_dir: impl Into<PathBuf>, vms_dir: impl Into<PathBuf>) -> Self {
        SnapshotStore {
            dir: snapshots_dir.into(),
            vms_dir: vms_dir.into(),
        }
    }

    /// The snapshots directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the bundle called `name` is (or would be).
    pub fn bundle_dir(&self, name: &SnapshotName) -> PathBuf {
        self.dir.join(name.as_str())
    }

    /// Opens the complete bundle called `name` (manifest only).
    pub fn open(&self, name: &SnapshotName) -> Result<Bundle, StoreError> {
        Ok(Bundle::open(&self.bundle_dir(name))?)
    }

    /// Every bundle, sorted by name: complete ones with their manifests,
    /// incomplete and unreadable ones apart. Directories whose names are
    /// not snapshot names (temporary ones included) are skipped. A missing
    /// snapshots directory is an empty store.
    pub fn list(&self) -> Result<Listing, StoreError> {
        let mut listing = Listing::default();
        for name in self.names()? {
            match Bundle::open(&self.bundle_dir(&name)) {
                Ok(bundle) => listing.bundles.push(bundle.info()),
                Err(BundleError::Incomplete { .. }) => listing.incomplete.push(name),
                // Removed since the directory was read.
                Err(BundleError::NotFound { .. }) => {}
                Err(error) => listing.unreadable.push(UnreadableBundle { name, error }),
            }
        }
        Ok(listing)
    }

    /// The valid snapshot names in the directory, sorted.
    fn names(&self) -> Result<Vec<SnapshotName>, StoreError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read", &self.dir)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("read", &self.dir))?;
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if let Some(name) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                names.push(name);
            }
        }
        names.sort_by(|a: &SnapshotName, b| a.as_str().cmp(b.as_str()));
        Ok(names)
    }

    /// The bundle's manifest, leases, children and working set.
    pub fn inspect(&self, name: &SnapshotName) -> Result<SnapshotDetails, StoreError> {
        let bundle = self.open(name)?;
        let (leases, stale_leases) = self.leases_of(name)?;
        Ok(SnapshotDetails {
            info: bundle.info(),
            leases,
            stale_leases,
            children: self.children(name)?,
            working_set: bundle.working_set()?,
        })
    }

    /// Verifies the bundle and every parent it depends on (see
    /// [`Bundle::verify`] and [`Bundle::chain`]); the Firecracker version,
    /// if given, is checked against the named bundle. Returns the chain,
    /// the named bundle first and the full base last.
    ///
    /// With [`VerifyOptions::skip_memory_checksum`] the memory files are
    /// only checked for size: hashing guest memory is the expensive part.
    pub fn verify(
        &self,
        name: &SnapshotName,
        options: &VerifyOptions,
    ) -> Result<Vec<SnapshotInfo>, StoreError> {
        let top = self.open(name)?;
        let chain = top.chain()?;
        let layers = VerifyOptions {
            firecracker_version: None,
            ..options.clone()
        };
        for bundle in &chain {
            bundle.verify(&layers)?;
        }
        if let Some(running) = &options.firecracker_version {
            top.manifest().check_firecracker_version(running)?;
        }
        Ok(chain.iter().map(Bundle::info).collect())
    }

    /// The complete bundles naming `name` as their parent, sorted.
    pub fn children(&self, name: &SnapshotName) -> Result<Vec<SnapshotName>, StoreError> {
        Ok(self
            .list()?
            .bundles
            .into_iter()
            .filter(|b| b.manifest.parent.as_ref() == Some(name))
            .map(|b| b.name)
            .collect())
    }

    /// The VMs holding a live lease on `name`, sorted.
    pub fn leases(&self, name: &SnapshotName) -> Result<Vec<VmId>, StoreError> {
        Ok(self.leases_of(name)?.0)
    }

    /// Live and stale leases on `name`, each sorted.
    fn leases_of(&self, name: &SnapshotName) -> Result<(Vec<VmId>, Vec<VmId>), StoreError> {
        let dir = self.bundle_dir(name).join(LEASES_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Vec::new(), Vec::new()));
            }
            Err(e) => return Err(io_err("read", &dir)(e)),
        };
        let (mut live, mut stale) = (Vec::new(), Vec::new());
        for entry in entries {
            let entry = entry.map_err(io_err("read", &dir))?;
            let Some(vm) = entry.file_name().to_str().and_then(|n| VmId::new(n).ok()) else {
                continue;
            };
            if self.vms_dir.join(vm.as_str()).is_dir() {
                live.push(vm);
            } else {
                stale.push(vm);
            }
        }
        live.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        stale.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok((live, stale))
    }

    /// Records that `vm` was restored from `name`, which must be a complete
    /// bundle; [`SnapshotStore::delete`] refuses it until every live lease
    /// is released. Taking a lease twice is harmless.
    pub fn lease(&self, name: &SnapshotName, vm: &VmId) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let bundle = self.open(name)?;
        let dir = bundle.path(LEASES_DIR);
        match create_private_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", &dir)(e)),
        }
        let path = dir.join(vm.as_str());
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("create", &path))?;
        Ok(())
    }

    /// Drops `vm`'s lease on `name`. Releasing a lease that does not exist
    /// (or on a bundle that does not) is harmless.
    pub fn release(&self, name: &SnapshotName, vm: &VmId) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let path = self.bundle_dir(name).join(LEASES_DIR).join(vm.as_str());
        remove_file_if_present(&path)
    }

    /// Drops every lease `vm` holds, for a destroy that does not know which
    /// snapshot the VM came from. Returns the snapshots it had leased.
    pub fn release_all(&self, vm: &VmId) -> Result<Vec<SnapshotName>, StoreError> {
        let _lock = self.lock()?;
        let mut released = Vec::new();
        for name in self.names()? {
            let path = self.bundle_dir(&name).join(LEASES_DIR).join(vm.as_str());
            if path.exists() {
                remove_file_if_present(&path)?;
                released.push(name);
            }
        }
        Ok(released)
    }

    /// Deletes the bundle `name` (complete or not). Refused while a VM
    /// holds a live lease on it ([`StoreError::Leased`]) or while another
    /// bundle names it as parent ([`StoreError::HasChildren`]). Stale
    /// leases do not count.
    pub fn delete(&self, name: &SnapshotName) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let dir = self.bundle_dir(name);
        if !dir.is_dir() {
            return Err(BundleError::NotFound { dir }.into());
        }
        let (live, _) = self.leases_of(name)?;
        if !live.is_empty() {
            return Err(StoreError::Leased {
                name: name.clone(),
                vms: live,
            });
        }
        let children = self.children(name)?;
        if !children.is_empty() {
            return Err(StoreError::HasChildren {
                name: name.clone(),
                children,
            });
        }
        self.discard(name)
    }

    /// Renames the bundle out of the namespace, then removes it. The caller
    /// holds the store lock.
    fn discard(&self, name: &SnapshotName) -> Result<(), StoreError> {
        let dir = self.bundle_dir(name);
        let trash = self.dir.join(unique_name(TRASH_PREFIX, name));
        std::fs::rename(&dir, &trash).map_err(io_err("rename", &dir))?;
        sync_dir(&self.dir)?;
        remove_dir_all_if_present(&trash)
    }

    /// Removes what crashes left behind: bundles without a manifest that
    /// nobody is writing (see [`PendingBundle`](super::PendingBundle)),
    /// temporary directories of merges that no longer run, half-deleted
    /// bundles and stale leases. With
    /// [`GcOptions::remove_unused_older_than`], also complete bundles old
    /// enough that have no live lease and no children (repeatedly, so a
    /// chain of unused diffs goes entirely). Unreadable bundles are left
    /// alone.
    pub fn gc(&self, options: &GcOptions) -> Result<GcReport, StoreError> {
        let _lock = self.lock()?;
        let mut report = GcReport::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(io_err("read", &self.dir)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("read", &self.dir))?;
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            let path = entry.path();
            if file_name.starts_with(TRASH_PREFIX) {
                remove_dir_all_if_present(&path)?;
                report.leftovers.push(path);
            } else if file_name.starts_with(TMP_PREFIX) {
                // A merge in progress holds the lock.
                if lock_dir(&path, true)
                    .map_err(io_err("lock", &path))?
                    .is_some()
                {
                    remove_dir_all_if_present(&path)?;
                    report.leftovers.push(path);
                }
            } else if let Ok(name) = file_name.parse::<SnapshotName>() {
                names.push(name);
            }
        }
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.retain(|name| !options.keep.contains(name));
        for name in names {
            let dir = self.bundle_dir(&name);
            match Bundle::open(&dir) {
                Err(BundleError::Incomplete { .. }) => {
                    // A snapshot being taken holds the lock.
                    let Some(_held) = lock_dir(&dir, true).map_err(io_err("lock", &dir))? else {
                        continue;
                    };
                    self.discard(&name)?;
                    report.incomplete.push(name);
                }
                Ok(_) => {
                    for vm in self.leases_of(&name)?.1 {
                        let path = dir.join(LEASES_DIR).join(vm.as_str());
                        remove_file_if_present(&path)?;
                        report.stale_leases.push(StaleLease {
                            snapshot: name.clone(),
                            vm,
                        });
                    }
                }
                Err(_) => {}
            }
        }
        if let Some(age) = options.remove_unused_older_than {
            let cutoff =
                now_ms().saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
            loop {
                let bundles = self.list()?.bundles;
                let parents: HashSet<&SnapshotName> = bundles
                    .iter()
                    .filter_map(|b| b.manifest.parent.as_ref())
                    .collect();
                let mut removed = false;
                for b in &bundles {
                    if b.manifest.created_at_ms > cutoff
                        || parents.contains(&b.name)
                        || !self.leases_of(&b.name)?.0.is_empty()
                    {
                        continue;
                    }
                    self.discard(&b.name)?;
                    report.unused.push(b.name.clone());
                    removed = true;
                }
                if !removed {
                    break;
                }
            }
        }
        Ok(report)
    }

    /// Builds `new_name`, a full bundle, from the diff `diff_name` and its
    /// parent chain, leaving them untouched:
    ///
    /// 1. the chain is resolved and checked (sizes and vmstate checksums;
    ///    memory checksums are not re-hashed, as merging reads every byte
    ///    anyway and the result gets fresh checksums);
    /// 2. the base's memory is reflinked (`FICLONE`) where the file system
    ///    can share extents, else copied extent by extent, holes kept;
    /// 3. each diff's memory, oldest first, is laid over it: only its data
    ///    extents (`SEEK_DATA`/`SEEK_HOLE`) are copied, so pages no layer
    ///    wrote stay holes;
    /// 4. the vmstate is the newest diff's;
    /// 5. the bundle is sealed (kind full, no parent, the diff's spec and
    ///    version) and renamed into place, never replacing anything.
    ///
    /// All of it happens in a temporary directory, so a crash leaves no
    /// bundle under `new_name` (and [`SnapshotStore::gc`] removes the
    /// leftovers).
    pub fn merge(
        &self,
        diff_name: &SnapshotName,
        new_name: &SnapshotName,
    ) -> Result<SnapshotInfo, StoreError> {
        let target = self.bundle_dir(new_name);
        if target.exists() {
            return Err(StoreError::Exists {
                name: new_name.clone(),
            });
        }
        let top = self.open(diff_name)?;
        if top.manifest().kind != SnapshotKind::Diff {
            return Err(StoreError::NotDiff {
                name: diff_name.clone(),
            });
        }
        let chain = top.chain()?;
        let sizes_only = VerifyOptions {
            skip_memory_checksum: true,
            firecracker_version: None,
        };
        for bundle in &chain {
            bundle.verify(&sizes_only)?;
        }

        let tmp = TempBundle::create(&self.dir, new_name)?;
        let memory_path = tmp.path.join(MEMORY_FILE);
        let memory = create_file(&memory_path)?;
        let base = chain.last().expect("a chain is never empty");
        let base_path = base.path(MEMORY_FILE);
        let base_memory = File::open(&base_path).map_err(io_err("open", &base_path))?;
        extents::clone_or_copy(&base_memory, &memory).map_err(io_err("copy", &base_path))?;
        for layer in chain.iter().rev().skip(1) {
            let path = layer.path(MEMORY_FILE);
            let src = File::open(&path).map_err(io_err("open", &path))?;
            extents::overlay(&src, &memory).map_err(io_err("overlay", &path))?;
        }
        memory.sync_data().map_err(io_err("fsync", &memory_path))?;

        let vmstate_path = tmp.path.join(VMSTATE_FILE);
        let vmstate = create_file(&vmstate_path)?;
        let top_vmstate = top.path(VMSTATE_FILE);
        let src = File::open(&top_vmstate).map_err(io_err("open", &top_vmstate))?;
        extents::clone_or_copy(&src, &vmstate).map_err(io_err("copy", &top_vmstate))?;
        vmstate
            .sync_data()
            .map_err(io_err("fsync", &vmstate_path))?;
        drop((memory, vmstate));

        let from = top.manifest();
        let manifest = Bundle::seal(
            &tmp.path,
            ManifestDraft {
                name: new_name.clone(),
                source_vm: from.source_vm.clone(),
                kind: SnapshotKind::Full,
                parent: None,
                firecracker_version: from.firecracker_version.clone(),
                spec: from.spec.clone(),
                network: from.network.clone(),
                vsock: from.vsock.clone(),
                source_chroot: from.source_chroot.clone(),
                drives: from.drives.clone(),
                // The disks a base kept are older than the diff's memory.
                disks: Vec::new(),
                created_at_ms: now_ms(),
                // The memory is the diff's, of the same guest on the same
                // host as its base.
                host_cpu: from.host_cpu.clone(),
            },
        )?;

        let _lock = self.lock()?;
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            &tmp.path,
            rustix::fs::CWD,
            &target,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST | rustix::io::Errno::NOTEMPTY) => {
                return Err(StoreError::Exists {
                    name: new_name.clone(),
                });
            }
            Err(e) => return Err(io_err("rename", &tmp.path)(e.into())),
        }
        tmp.committed();
        sync_dir(&self.dir)?;
        Ok(SnapshotInfo {
            reclaimed: None,
            name: new_name.clone(),
            dir: target,
            manifest,
        })
    }

    /// Takes the store-wide lock, creating the snapshots directory if
    /// needed.
    fn lock(&self) -> Result<OwnedFd, StoreError> {
        match create_private_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", &self.dir)(e)),
        }
        let path = self.dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let fd = OwnedFd::from(file);
        rustix::fs::flock(&fd, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err("lock", &path)(e.into()))?;
        Ok(fd)
    }
}

/// A merge's bundle under construction: locked while alive, removed on
/// drop unless committed.
struct TempBundle {
    path: PathBuf,
    _lock: OwnedFd,
    keep: bool,
}

impl TempBundle {
    fn create(dir: &Path, name: &SnapshotName) -> Result<TempBundle, StoreError> {
        match create_private_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", dir)(e)),
        }
        let path = dir.join(unique_name(TMP_PREFIX, name));
        create_private_dir(&path).map_err(io_err("create", &path))?;
        let lock = match lock_dir(&path, false) {
            Ok(lock) => lock.expect("a blocking lock is always taken"),
            Err(e) => {
                let _ = std::fs::remove_dir(&path);
                return Err(io_err("lock", &path)(e));
            }
        };
        Ok(TempBundle {
            path,
            _lock: lock,
            keep: false,
        })
    }

    fn committed(mut self) {
        self.keep = true;
    }
}

impl Drop for TempBundle {
    fn drop(&mut self) {
        if !self.keep {
            // Best effort: gc removes whatever is left.
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// `<prefix><name>-<pid>-<n>`: unique within this host at any moment.
fn unique_name(prefix: &str, name: &SnapshotName) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn create_file(path: &Path) -> Result<File, StoreError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))
}

fn remove_file_if_present(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

fn remove_dir_all_if_present(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

impl StoreError {
    /// The class of this failure (see [`ErrorKind`](crate::ErrorKind)).
    pub fn kind(&self) -> crate::ErrorKind {
        use crate::ErrorKind;
        match self {
            StoreError::Bundle(e) => e.kind(),
            StoreError::Exists { .. }
            | StoreError::Leased { .. }
            | StoreError::HasChildren { .. }
            | StoreError::NotDiff { .. } => ErrorKind::Conflict,
            StoreError::Io { .. } => ErrorKind::Failed,
        }
    }
}
