//! Which live VM writes to which file.
//!
//! Two guests writing one disk image corrupt it: neither knows the other's
//! caches. So a VM may attach a file read-write only while no other live VM
//! does, unless the spec shares that drive on purpose
//! ([`VmSpec::rootfs_shared`], [`DriveSpec::shared`]). Files are told apart
//! by device and inode, so two spellings of one path, a symlink or a hard
//! link are the same file.
//!
//! A VM holds its files from its create (or restore) until its VMM is gone:
//! stop, crash, destroy. A restarted manager holds them again for the VMs it
//! re-attaches.
//!
//! [`VmSpec::rootfs_shared`]: crate::VmSpec::rootfs_shared
//! [`DriveSpec::shared`]: crate::DriveSpec::shared

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::VmId;
use crate::spec::{ROOTFS_DRIVE_ID, ResolvedSpec};

/// A file, by device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
}

/// A file that another live VM writes to.
#[derive(Debug)]
pub(crate) struct Taken {
    /// The drive that asked for it.
    pub(crate) drive: String,
    /// The file.
    pub(crate) path: PathBuf,
    /// The VM that writes to it.
    pub(crate) holder: VmId,
}

/// How a VM writes to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Alone: no other live VM may write to it.
    Exclusive,
    /// With others that share it on purpose.
    Shared,
}

/// The files live VMs write to, both ways round.
#[derive(Debug, Default)]
pub(crate) struct Writers {
    by_file: HashMap<FileId, (Access, Vec<VmId>)>,
    by_vm: HashMap<VmId, Vec<FileId>>,
}

impl Writers {
    /// Like [`hold`](Self::hold), with the manager's error: a file another
    /// live VM writes to is [`VmError::DriveInUse`].
    pub(crate) fn hold_for(
        &mut self,
        vm: &VmId,
        spec: &ResolvedSpec,
    ) -> Result<(), crate::manager::VmError> {
        self.hold(vm, &writable_drives(spec))
            .map_err(|taken| crate::manager::VmError::DriveInUse {
                id: vm.clone(),
                drive: taken.drive,
                path: taken.path,
                holder: taken.holder,
            })
    }

    /// Records that `vm` writes to `drives` (drive id, file, access), all
    /// or none: fails on the first file that another VM writes to alone,
    /// or that `vm` would write to alone while another writes to it. A file
    /// that cannot be looked at is skipped: the create fails on it with a
    /// clearer error.
    pub(crate) fn hold(
        &mut self,
        vm: &VmId,
        drives: &[(String, PathBuf, Access)],
    ) -> Result<(), Taken> {
        let mut files = Vec::with_capacity(drives.len());
        for (drive, path, access) in drives {
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            let file = FileId {
                dev: meta.dev(),
                ino: meta.ino(),
            };
            if let Some((held, holders)) = self.by_file.get(&file)
                && let Some(other) = holders.iter().find(|h| *h != vm)
                && (*held == Access::Exclusive || *access == Access::Exclusive)
            {
                return Err(Taken {
                    drive: drive.clone(),
                    path: path.clone(),
                    holder: other.clone(),
                });
            }
            files.push((file, *access));
        }
        for (file, access) in &files {
            let (held, holders) = self
                .by_file
                .entry(*file)
                .or_insert_with(|| (*access, Vec::new()));
            *held = *access;
            if !holders.contains(vm) {
                holders.push(vm.clone());
            }
        }
        self.by_vm
            .entry(vm.clone())
            .or_default()
            .extend(files.into_iter().map(|(file, _)| file));
        Ok(())
    }

    /// Moves what `old` writes to over to `new` (a renamed VM, where VMs
    /// are known by name).
    pub(crate) fn rename(&mut self, old: &VmId, new: &VmId) {
        let Some(files) = self.by_vm.remove(old) else {
            return;
        };
        for file in &files {
            if let Some((_, holders)) = self.by_file.get_mut(file) {
                for holder in holders.iter_mut().filter(|h| *h == old) {
                    *holder = new.clone();
                }
            }
        }
        self.by_vm.insert(new.clone(), files);
    }

    /// Makes `vm` write to the drives of `new` instead of those of `old`,
    /// or, when another VM holds one of the new files, leaves `vm` holding
    /// the old ones and says which.
    pub(crate) fn replace(
        &mut self,
        vm: &VmId,
        old: &ResolvedSpec,
        new: &ResolvedSpec,
    ) -> Result<(), Taken> {
        self.release(vm);
        let held = self.hold(vm, &writable_drives(new));
        if held.is_err() {
            self.release(vm);
            // The old files were this VM's a moment ago: no other VM can
            // have taken them in between, as the lock is held throughout.
            let _ = self.hold(vm, &writable_drives(old));
        }
        held
    }

    /// Forgets what `vm` writes to; nothing if it writes to nothing.
    pub(crate) fn release(&mut self, vm: &VmId) {
        for file in self.by_vm.remove(vm).unwrap_or_default() {
            if let Some((_, holders)) = self.by_file.get_mut(&file) {
                holders.retain(|h| h != vm);
                if holders.is_empty() {
                    self.by_file.remove(&file);
                }
            }
        }
    }
}

/// Forgets what VM `vm` writes to, in `writers` (its VMM is gone).
pub(crate) fn release(writers: &std::sync::Mutex<Writers>, vm: &VmId) {
    writers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .release(vm);
}

/// The drives of `spec` that its VM writes to: (drive id, file, access).
pub(crate) fn writable_drives(spec: &ResolvedSpec) -> Vec<(String, PathBuf, Access)> {
    let access = |shared: bool| {
        if shared {
            Access::Shared
        } else {
            Access::Exclusive
        }
    };
    let mut drives = Vec::new();
    if let Some(rootfs) = &spec.rootfs
        && !spec.rootfs_read_only
    {
        drives.push((
            ROOTFS_DRIVE_ID.to_owned(),
            rootfs.clone(),
            access(spec.rootfs_shared),
        ));
    }
    for drive in spec.extra_drives.iter().filter(|d| !d.read_only) {
        drives.push((drive.id.clone(), drive.path.clone(), access(drive.shared)));
    }
    drives
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str) -> VmId {
        name.parse().unwrap()
    }

    #[test]
    fn one_writer_per_file_whatever_the_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk");
        std::fs::write(&file, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, b"y").unwrap();
        let alone = |path: &PathBuf| ("rootfs".to_owned(), path.clone(), Access::Exclusive);
        let data = |path: &PathBuf| ("data".to_owned(), path.clone(), Access::Exclusive);

        let mut writers = Writers::default();
        writers.hold(&vm("a"), &[alone(&file)]).unwrap();
        let taken = writers
            .hold(&vm("b"), &[data(&other), alone(&link)])
            .unwrap_err();
        assert_eq!(taken.drive, "rootfs");
        assert_eq!(taken.holder, vm("a"));
        // All or none: b holds nothing, so another VM may take `other`.
        writers.hold(&vm("c"), &[data(&other)]).unwrap();
        // Holding again what one holds already is fine.
        writers.hold(&vm("a"), &[alone(&file)]).unwrap();

        writers.release(&vm("a"));
        writers.hold(&vm("b"), &[alone(&file)]).unwrap();
    }

    #[test]
    fn sharing_is_mutual() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk");
        std::fs::write(&file, b"x").unwrap();
        let with = |access| [("rootfs".to_owned(), file.clone(), access)];
        let mut writers = Writers::default();
        writers.hold(&vm("a"), &with(Access::Shared)).unwrap();
        writers.hold(&vm("b"), &with(Access::Shared)).unwrap();
        // Neither a VM that writes alone while others share...
        assert!(writers.hold(&vm("c"), &with(Access::Exclusive)).is_err());
        writers.release(&vm("a"));
        writers.release(&vm("b"));
        // ...nor one that shares while another writes alone.
        writers.hold(&vm("c"), &with(Access::Exclusive)).unwrap();
        assert!(writers.hold(&vm("d"), &with(Access::Shared)).is_err());
    }

    #[test]
    fn read_only_drives_are_not_held_and_shared_ones_are_held_shared() {
        let mut spec = ResolvedSpec::for_tests();
        assert_eq!(writable_drives(&spec)[0].2, Access::Exclusive);
        spec.rootfs_shared = true;
        assert_eq!(writable_drives(&spec)[0].2, Access::Shared);
        spec.rootfs_read_only = true;
        assert!(writable_drives(&spec).is_empty());
    }
}
