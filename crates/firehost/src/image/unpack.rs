//! Unpacking a tar archive into a private staging directory.
//!
//! The archive comes from outside (a registry image, `docker export`), so
//! no entry may write outside the staging root: every path is checked
//! before anything is created, and the archive is refused as a whole (an
//! [`UnsafeReason`]) when an entry
//!
//! - has a `..` component or is absolute;
//! - has a symbolic link among its parent directories (an earlier entry
//!   `etc -> /etc` followed by `etc/passwd` would otherwise write the
//!   host's file), or a non-directory;
//! - is a hard link whose target is outside the root, goes through a
//!   symbolic link, or is not an earlier entry.
//!
//! The final component is never followed: an existing file or link there
//! is removed first and the entry created afresh (`O_EXCL`), as GNU tar
//! does. Directories get their modes, owners and times last, deepest
//! first, so that a read-only directory can still be filled and creating
//! its entries does not change its time. Owners are kept when running as
//! root (otherwise everything belongs to the builder); `SCHILY.xattr.*`
//! extended attributes (file capabilities) are set where the kernel
//! allows it and counted as skipped where it does not.
//!
//! The staging directory is private (`0700`, made for this build), so
//! nothing else changes it between a check and the creation after it.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use tar::EntryType;

use super::{ImageError, Progress, UnsafeReason, io_err};

/// How a tar archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    /// A plain tar.
    Plain,
    /// A gzip'd tar (one or more gzip members).
    Gzip,
}

/// What [`unpack`] did besides creating the tree.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unpacked {
    /// Extended attributes the kernel did not let this process set.
    pub xattrs_skipped: u64,
}

/// Looks at the start of `path`: a tar archive (plain or gzip'd), or
/// `None` for anything else.
pub(crate) fn sniff(path: &Path) -> Result<Option<Compression>, ImageError> {
    let open = || {
        File::open(path).map_err(|source| ImageError::Source {
            path: path.to_owned(),
            source,
        })
    };
    let mut block = [0u8; 512];
    let n = read_full(&mut open()?, &mut block).map_err(io_err("read", path))?;
    if block[..n].starts_with(&[0x1f, 0x8b]) {
        // A gzip'd file of any kind: look at what it holds.
        let mut gz = flate2::read::MultiGzDecoder::new(open()?);
        let n = read_full(&mut gz, &mut block).unwrap_or(0);
        return Ok(is_tar_header(&block[..n]).then_some(Compression::Gzip));
    }
    Ok(is_tar_header(&block[..n]).then_some(Compression::Plain))
}

/// Reads until `buf` is full or the input ends; returns the count.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Whether `block` is a tar header: POSIX `ustar` magic, or (for v7
/// archives, which have none) a valid header checksum.
fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < 512 || block[0] == 0 {
        return false;
    }
    if &block[257..262] == b"ustar" {
        return true;
    }
    let field = &block[148..156];
    let digits: String = field
        .iter()
        .map(|&b| b as char)
        .filter(|c| ('0'..='7').contains(c))
        .collect();
    let Ok(stored) = u32::from_str_radix(&digits, 8) else {
        return false;
    };
    // The checksum is computed with its own field read as spaces.
    let sum: u32 = block[..512]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(b)
            }
        })
        .sum();
    stored == sum
}

/// Counts the bytes read from the archive file, for [`Progress::Unpack`].
struct Counting<R> {
    inner: R,
    read: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// The owner, mode, extended attributes and time of one entry (of a
/// directory: applied after the whole archive is unpacked).
#[derive(Debug)]
struct Meta {
    mode: u32,
    owner: Option<(u32, u32)>,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Unpacks the archive at `path` into `root` (an empty, private
/// directory), reporting [`Progress::Unpack`] after each entry.
pub(crate) fn unpack(
    path: &Path,
    compression: Compression,
    root: &Path,
    progress: &dyn Fn(Progress),
) -> Result<Unpacked, ImageError> {
    let file = File::open(path).map_err(|source| ImageError::Source {
        path: path.to_owned(),
        source,
    })?;
    let total_bytes = file.metadata().map_err(io_err("read", path))?.len();
    let read = Rc::new(Cell::new(0));
    let counting = Counting {
        inner: file,
        read: Rc::clone(&read),
    };
    let reader: Box<dyn Read> = match compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(counting)),
        Compression::Plain => Box::new(BufReader::with_capacity(1 << 16, counting)),
    };
    let bad_tar = |source| ImageError::BadTar {
        path: path.to_owned(),
        source,
    };
    let keep_owner = super::is_root();
    let mut archive = tar::Archive::new(reader);
    let mut dirs: HashMap<PathBuf, Meta> = HashMap::new();
    let mut report = Unpacked::default();
    for entry in archive.entries().map_err(bad_tar)? {
        let mut entry = entry.map_err(bad_tar)?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let name = entry.path().map_err(bad_tar)?.into_owned();
        let refuse = |reason| ImageError::UnsafeEntry {
            entry: name.clone(),
            reason,
        };
        let rel = sanitize(&name).map_err(refuse)?;
        let header = entry.header();
        let owner = match (header.uid(), header.gid()) {
            (Ok(uid), Ok(gid)) if keep_owner => {
                u32::try_from(uid).ok().zip(u32::try_from(gid).ok())
            }
            _ => None,
        };
        let mtime = header
            .mtime()
            .map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX));
        let mode = header.mode().map_err(bad_tar)? & 0o7777;
        // Old archives mark directories only by a trailing slash.
        let is_dir = kind.is_dir()
            || (matches!(kind, EntryType::Regular) && entry.path_bytes().ends_with(b"/"));
        let xattrs = xattrs(&mut entry).map_err(bad_tar)?;
        let meta = Meta {
            mode,
            owner,
            mtime,
            xattrs,
        };
        if rel.as_os_str().is_empty() {
            // The root itself: mkfs gives the image's root its own owner
            // and mode, so only a non-directory here is a problem.
            if is_dir {
                continue;
            }
            return Err(refuse(UnsafeReason::ReplacesRoot));
        }
        let dst = prepare_parents(root, &rel).map_err(|e| e.into_error(&name))?;
        if is_dir {
            make_dir(&dst).map_err(|e| e.into_error(&name))?;
            dirs.insert(dst, meta);
        } else {
            clear(&dst).map_err(|e| e.into_error(&name))?;
            match kind {
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                    write_file(&mut entry, &dst, path)?;
                    report.xattrs_skipped += finish(&dst, &meta, true)?;
                }
                EntryType::Symlink => {
                    let target = entry.link_name().map_err(bad_tar)?.unwrap_or_default();
                    if target.as_os_str().is_empty() {
                        return Err(refuse(UnsafeReason::EmptySymlink));
                    }
                    std::os::unix::fs::symlink(&target, &dst)
                        .map_err(io_err("create symbolic link", &dst))?;
                    report.xattrs_skipped += finish(&dst, &meta, false)?;
                }
                EntryType::Link => {
                    let target = entry.link_name().map_err(bad_tar)?.unwrap_or_default();
                    let source = link_source(root, &target).ok_or_else(|| {
                        refuse(UnsafeReason::BadLinkTarget {
                            target: target.clone().into_owned(),
                        })
                    })?;
                    std::fs::hard_link(&source, &dst).map_err(io_err("create hard link", &dst))?;
                }
                EntryType::Char | EntryType::Block | EntryType::Fifo => {
                    make_node(&entry, kind, &dst, &name).map_err(|e| match e {
                        NodeError::Tar(source) => bad_tar(source),
                        NodeError::Image(e) => e,
                    })?;
                    report.xattrs_skipped += finish(&dst, &meta, true)?;
                }
                other => {
                    return Err(ImageError::UnsupportedEntry {
                        entry: name,
                        kind: other.as_byte() as char,
                    });
                }
            }
        }
        progress(Progress::Unpack {
            done_bytes: read.get(),
            total_bytes,
        });
    }
    // Deepest first: a directory's time must be set after its entries
    // stop changing it, and a read-only parent must still admit that.
    let mut dirs: Vec<_> = dirs.into_iter().collect();
    dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
    for (path, meta) in dirs {
        report.xattrs_skipped += finish(&path, &meta, true)?;
    }
    progress(Progress::Unpack {
        done_bytes: total_bytes,
        total_bytes,
    });
    Ok(report)
}

/// The entry path made relative and plain: `.` components dropped, `..`
/// and absolute paths refused. An empty result is the root.
pub(crate) fn sanitize(path: &Path) -> Result<PathBuf, UnsafeReason> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(UnsafeReason::ParentDir),
            Component::RootDir | Component::Prefix(_) => return Err(UnsafeReason::Absolute),
        }
    }
    Ok(clean)
}

/// A failure that is either a refusal of the entry or an I/O error.
#[derive(Debug)]
enum PlaceError {
    Unsafe(UnsafeReason),
    Io(ImageError),
}

impl PlaceError {
    fn into_error(self, entry: &Path) -> ImageError {
        match self {
            PlaceError::Unsafe(reason) => ImageError::UnsafeEntry {
                entry: entry.to_owned(),
                reason,
            },
            PlaceError::Io(e) => e,
        }
    }
}

/// Makes sure every parent of `root/rel` is a real directory (creating
/// missing ones `0755`, as GNU tar does) and returns `root/rel`.
fn prepare_parents(root: &Path, rel: &Path) -> Result<PathBuf, PlaceError> {
    let mut dir = root.to_path_buf();
    let mut so_far = PathBuf::new();
    let parts: Vec<_> = rel.components().collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        dir.push(part);
        so_far.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(PlaceError::Unsafe(UnsafeReason::ThroughSymlink {
                    link: so_far,
                }));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(PlaceError::Unsafe(UnsafeReason::ParentNotDirectory {
                    parent: so_far,
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&dir)
                    .map_err(|e| PlaceError::Io(io_err("create directory", &dir)(e)))?;
            }
            Err(e) => return Err(PlaceError::Io(io_err("inspect", &dir)(e))),
        }
    }
    Ok(root.join(rel))
}

/// Creates the directory `dst` for a directory entry, replacing a
/// non-directory there (never following a link).
fn make_dir(dst: &Path) -> Result<(), PlaceError> {
    match std::fs::symlink_metadata(dst) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            std::fs::remove_file(dst).map_err(|e| PlaceError::Io(io_err("replace", dst)(e)))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(PlaceError::Io(io_err("inspect", dst)(e))),
    }
    // Owner-writable until the end, whatever the archive says.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dst)
        .map_err(|e| PlaceError::Io(io_err("create directory", dst)(e)))
}

/// Removes what is at `dst` so a non-directory entry can be created there:
/// a file or link is unlinked (not followed), an empty directory removed,
/// a non-empty one refused.
fn clear(dst: &Path) -> Result<(), PlaceError> {
    match std::fs::symlink_metadata(dst) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(dst)
            .map_err(|_| PlaceError::Unsafe(UnsafeReason::ReplacesDirectory)),
        Ok(_) => std::fs::remove_file(dst).map_err(|e| PlaceError::Io(io_err("replace", dst)(e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PlaceError::Io(io_err("inspect", dst)(e))),
    }
}

/// Where a hard link entry's target is, if it is a non-directory inside
/// `root` reached without symbolic links among its parents.
fn link_source(root: &Path, target: &Path) -> Option<PathBuf> {
    let rel = sanitize(target).ok()?;
    let parts: Vec<_> = rel.components().collect();
    let (last, parents) = parts.split_last()?;
    let mut path = root.to_path_buf();
    for part in parents {
        path.push(part);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !meta.is_dir() || meta.file_type().is_symlink() {
            return None;
        }
    }
    path.push(last);
    let meta = std::fs::symlink_metadata(&path).ok()?;
    (!meta.is_dir()).then_some(path)
}

/// Writes a regular file entry's data to a new `dst` (`O_EXCL`: never
/// through whatever appeared there). Read errors are the archive's, write
/// errors the staging directory's.
fn write_file(entry: &mut impl Read, dst: &Path, archive: &Path) -> Result<(), ImageError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .map_err(io_err("create", dst))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(ImageError::BadTar {
                    path: archive.to_owned(),
                    source,
                });
            }
        };
        file.write_all(&buf[..n]).map_err(io_err("write", dst))?;
    }
    Ok(())
}

/// Why a device node or FIFO could not be made.
enum NodeError {
    Tar(std::io::Error),
    Image(ImageError),
}

/// Makes the device node or FIFO of `entry` at `dst`.
fn make_node<R: Read>(
    entry: &tar::Entry<'_, R>,
    kind: EntryType,
    dst: &Path,
    name: &Path,
) -> Result<(), NodeError> {
    use rustix::fs::{FileType, Mode};
    let header = entry.header();
    let major = header.device_major().map_err(NodeError::Tar)?.unwrap_or(0);
    let minor = header.device_minor().map_err(NodeError::Tar)?.unwrap_or(0);
    let file_type = match kind {
        EntryType::Char => FileType::CharacterDevice,
        EntryType::Block => FileType::BlockDevice,
        _ => FileType::Fifo,
    };
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dst,
        file_type,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(major, minor),
    )
    .map_err(|errno| {
        if errno == rustix::io::Errno::PERM && file_type != FileType::Fifo {
            NodeError::Image(ImageError::DeviceNeedsRoot {
                entry: name.to_owned(),
            })
        } else {
            NodeError::Image(io_err("create device node", dst)(errno.into()))
        }
    })
}

/// The `SCHILY.xattr.*` records of an entry's PAX header, as (name,
/// value).
fn xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut found = Vec::new();
    if let Some(extensions) = entry.pax_extensions()? {
        for extension in extensions {
            let extension = extension?;
            if let Ok(Some(name)) = extension.key().map(|k| k.strip_prefix("SCHILY.xattr.")) {
                found.push((name.to_owned(), extension.value_bytes().to_vec()));
            }
        }
    }
    Ok(found)
}

/// Gives `path` the entry's owner (when kept), mode (unless a symbolic
/// link, whose mode means nothing), extended attributes and time, in that
/// order: a change of owner clears set-user-ID bits and file capabilities,
/// so those come after it. Returns how many extended attributes the
/// kernel refused.
fn finish(path: &Path, meta: &Meta, set_mode: bool) -> Result<u64, ImageError> {
    if let Some((uid, gid)) = meta.owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io_err("chown", path))?;
    }
    if set_mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode))
            .map_err(io_err("chmod", path))?;
    }
    let mut skipped = 0;
    for (name, value) in &meta.xattrs {
        if rustix::fs::lsetxattr(path, name.as_str(), value, rustix::fs::XattrFlags::empty())
            .is_err()
        {
            // Only root may set security.* and trusted.* attributes, and
            // the staging file system may not take them at all; the image
            // is still usable without them.
            skipped += 1;
        }
    }
    let time = rustix::fs::Timespec {
        tv_sec: meta.mtime,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: time,
        last_modification: time,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|errno| io_err("set the time of", path)(errno.into()))?;
    Ok(skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_are_made_relative_or_refused() {
        let cases: [(&str, Result<&str, UnsafeReason>); 9] = [
            ("etc/passwd", Ok("etc/passwd")),
            ("./etc/passwd", Ok("etc/passwd")),
            ("etc/./passwd", Ok("etc/passwd")),
            ("./", Ok("")),
            ("usr/bin/", Ok("usr/bin")),
            ("../etc/passwd", Err(UnsafeReason::ParentDir)),
            ("etc/../../x", Err(UnsafeReason::ParentDir)),
            ("usr/..", Err(UnsafeReason::ParentDir)),
            ("/etc/passwd", Err(UnsafeReason::Absolute)),
        ];
        for (input, expected) in cases {
            let got = sanitize(Path::new(input));
            assert_eq!(got, expected.map(PathBuf::from), "{input:?}");
        }
    }

    #[test]
    fn parents_through_a_symlink_or_a_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        std::fs::write(root.join("file"), b"x").unwrap();
        match prepare_parents(root, Path::new("etc/passwd")) {
            Err(PlaceError::Unsafe(UnsafeReason::ThroughSymlink { link })) => {
                assert_eq!(link, Path::new("etc"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            prepare_parents(root, Path::new("file/x")),
            Err(PlaceError::Unsafe(UnsafeReason::ParentNotDirectory { .. }))
        ));
        let made = prepare_parents(root, Path::new("a/b/c")).unwrap();
        assert_eq!(made, root.join("a/b/c"));
        assert!(root.join("a/b").is_dir() && !made.exists());
    }

    #[test]
    fn hard_link_targets_must_be_earlier_files_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/a"), b"x").unwrap();
        std::os::unix::fs::symlink("/", root.join("up")).unwrap();
        assert_eq!(
            link_source(root, Path::new("bin/a")),
            Some(root.join("bin/a"))
        );
        for bad in [
            "../bin/a",
            "/bin/a",
            "up/etc/passwd",
            "bin/missing",
            "bin",
            "",
        ] {
            assert_eq!(link_source(root, Path::new(bad)), None, "{bad}");
        }
    }

    #[test]
    fn tar_headers_are_recognised_by_magic_or_checksum() {
        let mut header = tar::Header::new_gnu();
        header.set_path("a").unwrap();
        header.set_size(0);
        header.set_cksum();
        assert!(is_tar_header(header.as_bytes()));
        let mut old = tar::Header::new_old();
        old.set_path("a").unwrap();
        old.set_size(0);
        old.set_cksum();
        assert!(is_tar_header(old.as_bytes()), "v7 header, no magic");
        old.as_mut_bytes()[0] = b'b';
        assert!(!is_tar_header(old.as_bytes()), "wrong checksum");
        assert!(!is_tar_header(&[0u8; 512]));
        assert!(!is_tar_header(b"#!/bin/sh\n"));
    }
}
