//! Putting a VM's files into its chroot, and taking the jail away again.
//!
//! Two kinds of file go in:
//!
//! - **Shared, read-only** (kernel, initrd, read-only drives):
//!   [`link_read_only`] hard-links them when the source is on the chroot's
//!   filesystem and the VM's uid can already read it, so a thousand VMs
//!   share one copy in the page cache; otherwise it copies. It never
//!   changes the source's owner or mode: a hard link shares the inode, so
//!   changing the link would change the source for everyone.
//! - **Private, writable** (the root filesystem, writable drives):
//!   [`copy_private`] clones the file (`FICLONE`, copy-on-write, on btrfs
//!   and XFS) or else copies its data extents only, keeping holes, so a
//!   sparse 10 GiB image with 300 MiB of data costs 300 MiB.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::JailError;

/// How a file got into the chroot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staged {
    /// A hard link to the source.
    Linked,
    /// A copy-on-write clone.
    Reflinked,
    /// A copy of the data extents (holes kept).
    Copied,
}

fn stage_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> JailError {
    let path = path.to_owned();
    move |source| JailError::Stage { op, path, source }
}

/// Whether `uid`/`gid` may read a file with this metadata (permission bits
/// only, as the kernel checks them for a process without capabilities).
fn readable_by(meta: &std::fs::Metadata, uid: u32, gid: u32) -> bool {
    let mode = meta.mode();
    if meta.uid() == uid {
        mode & 0o400 != 0
    } else if meta.gid() == gid {
        mode & 0o040 != 0
    } else {
        mode & 0o004 != 0
    }
}

/// Puts `src` at `dst` (inside a chroot) for reading by `uid:gid`: a hard
/// link when it can be one, else a private copy owned by them, mode 0400.
pub fn link_read_only(src: &Path, dst: &Path, uid: u32, gid: u32) -> Result<Staged, JailError> {
    let meta = std::fs::metadata(src).map_err(stage_err("read", src))?;
    if !meta.is_file() {
        return Err(JailError::Stage {
            op: "stage (not a regular file)",
            path: src.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    }
    let dst_dir = dst.parent().unwrap_or(Path::new("/"));
    let same_fs = std::fs::metadata(dst_dir)
        .map(|d| d.dev() == meta.dev())
        .unwrap_or(false);
    if same_fs && readable_by(&meta, uid, gid) {
        match std::fs::hard_link(src, dst) {
            Ok(()) => return Ok(Staged::Linked),
            // Some filesystems refuse links (or protected_hardlinks does):
            // fall back to a copy.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(stage_err("link", dst)(e));
            }
            Err(_) => {}
        }
    }
    let how = copy_private(src, dst, uid, gid)?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o400))
        .map_err(stage_err("chmod", dst))?;
    Ok(how)
}

/// Copies `src` to a new file `dst` owned by `uid:gid`, mode 0600: a
/// copy-on-write clone where the filesystem can, else the data extents
/// only. `dst` must not exist.
pub fn copy_private(src: &Path, dst: &Path, uid: u32, gid: u32) -> Result<Staged, JailError> {
    let source = File::open(src).map_err(stage_err("open", src))?;
    let len = source.metadata().map_err(stage_err("read", src))?.len();
    let target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .map_err(stage_err("create", dst))?;
    let result = clone_or_copy(&source, &target, len);
    let result = result.and_then(|how| {
        rustix::fs::fchown(
            target.as_fd(),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .map_err(std::io::Error::from)?;
        Ok(how)
    });
    match result {
        Ok(how) => Ok(how),
        Err(e) => {
            let _ = std::fs::remove_file(dst);
            Err(stage_err("copy into", dst)(e))
        }
    }
}

fn clone_or_copy(source: &File, target: &File, len: u64) -> std::io::Result<Staged> {
    if rustix::fs::ioctl_ficlone(target, source).is_ok() {
        return Ok(Staged::Reflinked);
    }
    copy_extents(source, target, len)?;
    Ok(Staged::Copied)
}

/// Copies each data extent of `source` to the same offset in `target`, and
/// sets the length, so holes stay holes.
fn copy_extents(source: &File, target: &File, len: u64) -> std::io::Result<()> {
    use rustix::fs::SeekFrom;
    let mut offset = 0u64;
    while offset < len {
        let data = match rustix::fs::seek(source, SeekFrom::Data(offset)) {
            Ok(at) => at,
            // No data after `offset`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(source, SeekFrom::Hole(data))
            .map_err(std::io::Error::from)?
            .min(len);
        copy_range(source, target, data, hole)?;
        offset = hole;
    }
    target.set_len(len)
}

/// Copies bytes `start..end` of `source` to the same offsets in `target`:
/// in the kernel with `copy_file_range`, or through a buffer where the
/// kernel refuses (across filesystems of different types it answers
/// `EXDEV`).
fn copy_range(source: &File, target: &File, start: u64, end: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut at = start;
    while at < end {
        let (mut from, mut to) = (at, at);
        let chunk = usize::try_from(end - at).unwrap_or(usize::MAX).min(1 << 30);
        match rustix::fs::copy_file_range(source, Some(&mut from), target, Some(&mut to), chunk) {
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            Ok(copied) => at += copied as u64,
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::OPNOTSUPP
                | rustix::io::Errno::INVAL,
            ) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let mut buf = vec![0u8; 1 << 20];
    while at < end {
        let want = usize::try_from(end - at)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let got = source.read_at(&mut buf[..want], at)?;
        if got == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        target.write_all_at(&buf[..got], at)?;
        at += got as u64;
    }
    Ok(())
}

/// Moves a file a jailed VM wrote out of its chroot to `dst` (a rename on
/// one filesystem, else an extent copy), owned by us, mode 0600.
pub fn move_out(src: &Path, dst: &Path) -> Result<(), JailError> {
    let me = (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    match std::fs::rename(src, dst) {
        Ok(()) => {
            rustix::fs::chown(
                dst,
                Some(rustix::fs::Uid::from_raw(me.0)),
                Some(rustix::fs::Gid::from_raw(me.1)),
            )
            .map_err(|e| stage_err("chown", dst)(e.into()))?;
            std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o600))
                .map_err(stage_err("chmod", dst))
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            copy_private(src, dst, me.0, me.1)?;
            std::fs::remove_file(src).map_err(stage_err("remove", src))
        }
        Err(e) => Err(stage_err("move", src)(e)),
    }
}

/// Creates an empty file owned by `uid:gid`, mode 0600 (Firecracker's log
/// and metrics files: it opens them without creating them).
pub fn create_owned_file(path: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(stage_err("create", path))?;
    rustix::fs::fchown(
        file.as_fd(),
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(|e| stage_err("chown", path)(e.into()))
}

/// Creates a directory inside the chroot owned by `uid:gid`, mode 0700.
pub fn create_owned_dir(path: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(stage_err("create", path))?;
    rustix::fs::chown(
        path,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(|e| stage_err("chown", path)(e.into()))
}

/// Removes a jail directory (`<base>/<exec name>/<id>`) and everything in
/// it, refusing any path that is not exactly two levels under `base`: a
/// corrupt record must never make this remove something else.
pub fn remove_jail_dir(base: &Path, jail_dir: &Path) -> Result<(), JailError> {
    let inside = jail_dir
        .strip_prefix(base)
        .ok()
        .filter(|rest| {
            rest.components().count() == 2
                && rest
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
        })
        .is_some();
    if !inside {
        return Err(JailError::Remove {
            path: jail_dir.to_owned(),
            source: std::io::Error::other("not a jail directory under the chroot base"),
        });
    }
    match std::fs::remove_dir_all(jail_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(JailError::Remove {
            path: jail_dir.to_owned(),
            source,
        }),
    }
}

/// Removes everything a jail made: its cgroups, then its directory.
pub fn remove_jail(base: &Path, jail: &super::VmJail) -> Result<(), JailError> {
    let cgroups = super::cgroup::remove_dirs(&jail.cgroups);
    remove_jail_dir(base, jail.jail_dir())?;
    cgroups
}

/// The jail directories under `base/<exec name>`: for a manager to reap
/// those no live VM owns.
pub fn jail_dirs(base: &Path, exec_name: &str) -> Vec<PathBuf> {
    match std::fs::read_dir(base.join(exec_name)) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    /// A 64 MiB file with 8 KiB of data at 0 and at 32 MiB.
    fn sparse_file(path: &Path) -> Vec<u8> {
        let mut f = File::create(path).unwrap();
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        f.seek(SeekFrom::Start(32 << 20)).unwrap();
        f.write_all(&data).unwrap();
        f.set_len(64 << 20).unwrap();
        data
    }

    #[test]
    fn a_private_copy_keeps_contents_and_holes_and_belongs_to_the_vm() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let data = sparse_file(&src);
        let how = copy_private(&src, &dst, 4242, 4343).unwrap();
        assert!(matches!(how, Staged::Copied | Staged::Reflinked));
        let copy = std::fs::read(&dst).unwrap();
        assert_eq!(copy.len(), 64 << 20);
        assert_eq!(&copy[..8192], &data[..]);
        assert_eq!(&copy[32 << 20..(32 << 20) + 8192], &data[..]);
        assert!(copy[8192..32 << 20].iter().all(|&b| b == 0));
        let meta = std::fs::metadata(&dst).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (4242, 4343, 0o600)
        );
        // Sparse: far fewer blocks than the length.
        assert!(meta.blocks() * 512 < 4 << 20, "{} blocks", meta.blocks());
        // The source is untouched.
        let src_meta = std::fs::metadata(&src).unwrap();
        assert_eq!(src_meta.uid(), 0);
        // An existing target is never overwritten.
        assert!(copy_private(&src, &dst, 1, 1).is_err());
    }

    #[test]
    fn read_only_files_are_linked_when_readable_and_copied_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("kernel");
        std::fs::write(&src, b"kernel").unwrap();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
        let linked = dir.path().join("linked");
        assert_eq!(
            link_read_only(&src, &linked, 4242, 4242).unwrap(),
            Staged::Linked
        );
        assert_eq!(
            std::fs::metadata(&linked).unwrap().ino(),
            std::fs::metadata(&src).unwrap().ino()
        );
        // Private to root: the VM's uid could not read a link, so it gets a
        // copy of its own, and the source keeps its owner and mode.
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o600)).unwrap();
        let copied = dir.path().join("copied");
        let how = link_read_only(&src, &copied, 4242, 4242).unwrap();
        assert_ne!(how, Staged::Linked);
        let meta = std::fs::metadata(&copied).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (4242, 0o400));
        assert_eq!(std::fs::read(&copied).unwrap(), b"kernel");
        let src_meta = std::fs::metadata(&src).unwrap();
        assert_eq!((src_meta.uid(), src_meta.mode() & 0o777), (0, 0o600));
    }

    #[test]
    fn moving_out_of_a_jail_works_within_and_across_filesystems() {
        let dst_dir = tempfile::tempdir().unwrap();
        // /dev/shm is a tmpfs on most hosts: a move from there crosses
        // filesystems and must copy; one within the temp directory renames.
        let shm = tempfile::tempdir_in("/dev/shm").ok();
        let same = tempfile::tempdir().unwrap();
        for (i, src_dir) in [Some(same.path()), shm.as_ref().map(|d| d.path())]
            .into_iter()
            .flatten()
            .enumerate()
        {
            let src = src_dir.join("memory");
            let data = sparse_file(&src);
            std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
            rustix::fs::chown(
                &src,
                Some(rustix::fs::Uid::from_raw(4242)),
                Some(rustix::fs::Gid::from_raw(4242)),
            )
            .unwrap();
            let dst = dst_dir.path().join(format!("memory-{i}"));
            move_out(&src, &dst).unwrap();
            assert!(!src.exists(), "{src:?} is left");
            let meta = std::fs::metadata(&dst).unwrap();
            let me = rustix::process::getuid().as_raw();
            assert_eq!((meta.uid(), meta.mode() & 0o777), (me, 0o600));
            let moved = std::fs::read(&dst).unwrap();
            assert_eq!(moved.len(), 64 << 20);
            assert_eq!(&moved[32 << 20..(32 << 20) + 8192], &data[..]);
        }
    }

    #[test]
    fn only_jail_directories_are_removed() {
        let base = tempfile::tempdir().unwrap();
        let jail = base.path().join("firecracker/vm-1");
        std::fs::create_dir_all(jail.join("root/dev")).unwrap();
        let other = base.path().join("firecracker/vm-2");
        std::fs::create_dir_all(&other).unwrap();
        for wrong in [
            base.path().to_owned(),
            base.path().join("firecracker"),
            base.path().join("firecracker/vm-1/root"),
            base.path().join("firecracker/../firecracker/vm-2"),
            PathBuf::from("/tmp"),
        ] {
            assert!(remove_jail_dir(base.path(), &wrong).is_err(), "{wrong:?}");
        }
        assert_eq!(jail_dirs(base.path(), "firecracker").len(), 2);
        remove_jail_dir(base.path(), &jail).unwrap();
        assert!(!jail.exists());
        assert!(other.exists());
        // Gone already is fine.
        remove_jail_dir(base.path(), &jail).unwrap();
    }
}
