//! Guest images: an ext4 root filesystem or an initramfs with the guest
//! agent in it.
//!
//! A VM needs something to boot into, and firehost needs its agent to be
//! running in there. Most people have a root filesystem already, as a
//! directory or as the tar that `docker export` writes, but not as the
//! ext4 image Firecracker attaches, and not with the agent as its init.
//! This module turns either into an image, without root and without loop
//! mounts, using e2fsprogs (`mkfs.ext4`, `debugfs`, `tune2fs`) as external
//! tools. For guests that need no distribution at all, it also writes a
//! tiny initramfs: the agent as `/init` and a static busybox.
//!
//! - [`build_rootfs`] with [`RootfsOptions`]: a directory or a tar becomes
//!   an ext4 image with the agent at `/sbin/init` (or beside it,
//!   [`AgentPlacement`]). See [`rootfs`] for how it is done and why
//!   that way.
//! - [`build_initramfs`] with [`InitramfsOptions`]: a gzip'd `newc` cpio
//!   archive, written by [`newc::NewcWriter`]. See [`initramfs`] for what
//!   it holds and where to get a static busybox.
//! - [`find_agent`]: where the agent binary is when nobody says.
//!
//! Everything here is synchronous and may take a while (a big tree means
//! seconds to minutes of `mkfs.ext4`); call it from a blocking context
//! (`spawn_blocking` inside a runtime). Outputs appear all at once: each
//! is written to a temporary file beside the destination and renamed onto
//! it at the end, so a failure leaves no output file (and no temporary
//! one).
//!
//! ```no_run
//! use firehost::image::{RootfsOptions, build_rootfs, find_agent};
//!
//! let agent = find_agent(None)?;
//! let options = RootfsOptions::new("debian.tar", "rootfs.ext4", agent);
//! let report = build_rootfs(&options, &|_progress| {})?;
//! println!("{} MiB, agent at {}", report.size_mib, report.agent);
//! # Ok::<(), firehost::image::ImageError>(())
//! ```

use std::path::{Path, PathBuf};

pub mod initramfs;
pub mod newc;
pub mod rootfs;
mod tool;
mod unpack;

pub use initramfs::{BUSYBOX_APPLETS, InitramfsOptions, InitramfsReport, build_initramfs};
pub use rootfs::{
    AgentPlacement, Replaced, RootfsOptions, RootfsReport, SourceKind, build_rootfs,
    estimate_size_mib,
};

/// The agent binary's file name, looked for by [`find_agent`].
pub const AGENT_BINARY: &str = "firehost-agent";

/// How to get a static busybox on Debian or Ubuntu, for error messages and
/// help texts.
pub const BUSYBOX_HINT: &str = "on Debian or Ubuntu: apt-get download busybox-static && \
     dpkg-deb -x busybox-static_*.deb bb, then use bb/bin/busybox";

/// How far a build has come, for a progress display. Reported through the
/// callback given to [`build_rootfs`]; new variants may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// Unpacking a tar archive: bytes of the archive file read so far (of
    /// a gzip'd one, compressed bytes).
    Unpack {
        /// Bytes read.
        done_bytes: u64,
        /// The archive file's size.
        total_bytes: u64,
    },
    /// `mkfs.ext4` copying the tree into the image: bytes the image file
    /// holds so far, against the content's size. An estimate; it may stop
    /// short of the total.
    Mkfs {
        /// Bytes allocated in the image file.
        done_bytes: u64,
        /// The content's size.
        total_bytes: u64,
    },
    /// Writing the agent into the image and finishing it.
    Agent,
}

/// Why an image could not be built. Each message says how to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A tool the build needs is not installed.
    #[error(
        "{tool} not found (looked in PATH, /usr/sbin and /sbin): install the {package} package (apt-get install {package})"
    )]
    ToolMissing {
        /// The program, e.g. `mkfs.ext4`.
        tool: &'static str,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// A tool ran and failed.
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed {
        /// The program.
        tool: &'static str,
        /// How it ended.
        status: std::process::ExitStatus,
        /// What it said on stderr, trimmed.
        stderr: String,
    },
    /// The source directory or archive cannot be opened.
    #[error("cannot open the source {path:?}: give an existing directory or tar archive")]
    Source {
        /// The source.
        path: PathBuf,
        /// The errno.
        source: std::io::Error,
    },
    /// The source is a file, but not a tar archive.
    #[error(
        "{path:?} is neither a directory nor a tar archive (plain or gzip'd, as `docker export` writes)"
    )]
    UnknownSource {
        /// The source.
        path: PathBuf,
    },
    /// The tar archive cannot be read.
    #[error("cannot read the tar archive {path:?}: it is damaged, truncated or not a tar")]
    BadTar {
        /// The archive.
        path: PathBuf,
        /// What the reader said.
        source: std::io::Error,
    },
    /// A tar entry would be written outside the image's root; the archive
    /// is refused as a whole.
    #[error("tar entry {entry:?} is refused: {reason}")]
    UnsafeEntry {
        /// The entry's path as the archive names it.
        entry: PathBuf,
        /// Why.
        reason: UnsafeReason,
    },
    /// A tar entry has a type this builder cannot put in an image.
    #[error("tar entry {entry:?} has a type firehost cannot unpack ({kind:?})")]
    UnsupportedEntry {
        /// The entry's path.
        entry: PathBuf,
        /// The tar type flag.
        kind: char,
    },
    /// A tar entry is a device node and only root can create one.
    #[error(
        "tar entry {entry:?} is a device node, which only root can create: run as root, or leave /dev out of the archive (the guest kernel's devtmpfs fills it)"
    )]
    DeviceNeedsRoot {
        /// The entry's path.
        entry: PathBuf,
    },
    /// The image size cannot hold the content.
    #[error(
        "{size_mib} MiB is too small for the content (about {needed_mib} MiB are needed): give a larger size, or none to have it computed"
    )]
    TooSmall {
        /// The size asked for.
        size_mib: u64,
        /// The size that would be computed from the content.
        needed_mib: u64,
    },
    /// The output file exists already.
    #[error("{path:?} exists already: remove it, or ask for it to be replaced (--force)")]
    OutputExists {
        /// The output.
        path: PathBuf,
    },
    /// The output would be written into the source tree (and so copied
    /// into itself).
    #[error("the output {out:?} is inside the source directory {from:?}: write it elsewhere")]
    OutputInSource {
        /// The output.
        out: PathBuf,
        /// The source directory.
        from: PathBuf,
    },
    /// No agent binary was given and none was found.
    #[error(
        "no {AGENT_BINARY} binary found (looked in {searched:?} and PATH): build it with `cargo build --release -p firehost-agent`, or give its path (--agent)"
    )]
    AgentNotFound {
        /// The directories looked in before `PATH`.
        searched: Vec<PathBuf>,
    },
    /// The agent is dynamically linked and the tree has no loader for it:
    /// as the guest's init it could not start, and the guest would panic.
    #[error(
        "the agent {path:?} is dynamically linked (it asks for {interpreter:?}) and the image has no {interpreter}: it could not start in the guest. Use the static agent that `cargo build --release -p firehost-agent` makes (unset FIREHOST_AGENT_DYNAMIC), or a tree with that loader and the C library"
    )]
    AgentNeedsLoader {
        /// The agent binary given.
        path: PathBuf,
        /// Its ELF interpreter, as a path in the image.
        interpreter: String,
    },
    /// An input file (the agent, busybox) is missing or not a file.
    #[error("the {what} {path:?} is not a readable regular file: {fix}")]
    BadInput {
        /// "agent binary" or "busybox binary".
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// How to get a good one.
        fix: &'static str,
        /// The errno, if opening it failed.
        source: Option<std::io::Error>,
    },
    /// A binary for the initramfs needs shared libraries, which the
    /// initramfs does not have.
    #[error(
        "the {what} {path:?} is dynamically linked (it asks for {interpreter:?}) but the initramfs has no shared libraries: use a static build ({fix})"
    )]
    NotStatic {
        /// "agent binary" or "busybox binary".
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// Its ELF interpreter.
        interpreter: String,
        /// How to get a static one.
        fix: &'static str,
    },
    /// The agent cannot be put where it should go in this tree.
    #[error("cannot put the agent at {path} in the image: {reason}")]
    AgentTarget {
        /// The path in the image.
        path: &'static str,
        /// Why.
        reason: TargetReason,
    },
    /// `debugfs` did not write the agent as asked.
    #[error("debugfs could not write the agent into the image: {detail}")]
    Inject {
        /// What went wrong, from debugfs's output or the check after it.
        detail: String,
    },
    /// A file operation failed.
    #[error("cannot {op} {path:?}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The errno.
        source: std::io::Error,
    },
}

/// Why a tar entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnsafeReason {
    /// The path has a `..` component.
    #[error("its path contains `..`")]
    ParentDir,
    /// The path is absolute.
    #[error("its path is absolute (the archive must hold paths relative to its root)")]
    Absolute,
    /// A directory on the way is a symbolic link, which could lead outside
    /// the root.
    #[error("{link:?} on its path is a symbolic link, which could lead outside the image")]
    ThroughSymlink {
        /// The link, relative to the root.
        link: PathBuf,
    },
    /// Something on the way is not a directory.
    #[error("{parent:?} on its path is not a directory")]
    ParentNotDirectory {
        /// The non-directory, relative to the root.
        parent: PathBuf,
    },
    /// The entry would replace the root directory with something else.
    #[error("it would replace the root directory")]
    ReplacesRoot,
    /// The entry would replace a non-empty directory with a non-directory.
    #[error("it would replace a directory that is not empty")]
    ReplacesDirectory,
    /// A hard link's target is outside the root or not in the archive.
    #[error("it is a hard link to {target:?}, which is not a file earlier in the archive")]
    BadLinkTarget {
        /// The target as the archive names it.
        target: PathBuf,
    },
    /// A symbolic link with an empty target.
    #[error("it is a symbolic link with an empty target")]
    EmptySymlink,
}

/// Why the agent cannot be placed in a tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetReason {
    /// The agent's path is a directory in the tree.
    #[error("that is a directory")]
    IsDirectory,
    /// A component of the directory is missing.
    #[error("{missing} does not exist")]
    MissingParent {
        /// The first missing path in the image.
        missing: String,
    },
    /// A component of the directory is a file.
    #[error("{path} is not a directory")]
    NotDirectory {
        /// The path in the image.
        path: String,
    },
    /// Symbolic links on the way loop.
    #[error("too many levels of symbolic links")]
    SymlinkLoop,
    /// The resolved directory has characters debugfs commands cannot
    /// carry.
    #[error("its directory {path:?} has a quote or control character in its name")]
    UnusualName {
        /// The resolved directory.
        path: String,
    },
}

/// An [`ImageError::Io`] maker for `map_err`.
fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_owned();
    move |source| ImageError::Io { op, path, source }
}

/// Finds the agent binary: [`AGENT_BINARY`] in `beside` (the directory of
/// the running program, typically), else in `PATH`.
///
/// # Errors
///
/// [`ImageError::AgentNotFound`] if it is in neither.
pub fn find_agent(beside: Option<&Path>) -> Result<PathBuf, ImageError> {
    if let Some(dir) = beside {
        let candidate = dir.join(AGENT_BINARY);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    crate::fsutil::find_binary(Path::new(AGENT_BINARY)).ok_or_else(|| ImageError::AgentNotFound {
        searched: beside.map(Path::to_owned).into_iter().collect(),
    })
}

/// Whether this process runs as root (and so can keep ownership and make
/// device nodes).
fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Checks that `path` is a readable regular file (following links) and
/// returns its size.
fn check_input(what: &'static str, path: &Path, fix: &'static str) -> Result<u64, ImageError> {
    let bad = |source| ImageError::BadInput {
        what,
        path: path.to_owned(),
        fix,
        source,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(Some(e)))?;
    if !meta.is_file() {
        return Err(bad(None));
    }
    std::fs::File::open(path).map_err(|e| bad(Some(e)))?;
    Ok(meta.len())
}

/// The fix for a bad agent binary.
const AGENT_FIX: &str =
    "build it with `cargo build --release -p firehost-agent`, or give the right path";

/// The directory `out` goes in (`.` for a bare file name). Temporary
/// files are made there, so that the final rename stays on one file
/// system and never copies.
fn out_parent(out: &Path) -> &Path {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Refuses an existing `out` unless `force`.
fn check_out(out: &Path, force: bool) -> Result<(), ImageError> {
    if !force && std::fs::symlink_metadata(out).is_ok() {
        return Err(ImageError::OutputExists {
            path: out.to_owned(),
        });
    }
    Ok(())
}

/// Moves the finished `tmp` onto `out`: replacing whatever is there with
/// `force` (one rename), else only if nothing is (a hard link fails
/// atomically when `out` exists, so a file that appeared meanwhile is not
/// overwritten). Both are in one directory, so neither copies.
fn publish(tmp: &Path, out: &Path, force: bool) -> Result<(), ImageError> {
    if force {
        std::fs::rename(tmp, out).map_err(io_err("move the result onto", out))?;
    } else {
        std::fs::hard_link(tmp, out).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                ImageError::OutputExists {
                    path: out.to_owned(),
                }
            } else {
                ImageError::Io {
                    op: "create",
                    path: out.to_owned(),
                    source,
                }
            }
        })?;
        // The temporary directory holding `tmp` is removed anyway.
        let _ = std::fs::remove_file(tmp);
    }
    // Make the rename itself durable, not only the data.
    if let Ok(dir) = std::fs::File::open(out_parent(out)) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// A private working directory beside the output, removed on drop even
/// when it holds directories without write permission (which a tar can
/// unpack, and which stop a plain recursive removal by a non-root user).
#[derive(Debug)]
struct WorkDir {
    dir: Option<tempfile::TempDir>,
}

impl WorkDir {
    /// A fresh `0700` directory in `parent`.
    fn new(parent: &Path) -> Result<Self, ImageError> {
        let dir = tempfile::Builder::new()
            .prefix(".firehost-image-")
            .tempdir_in(parent)
            .map_err(io_err("create a temporary directory in", parent))?;
        Ok(WorkDir { dir: Some(dir) })
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("present until drop").path()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let path = dir.path().to_owned();
        if std::fs::remove_dir_all(&path).is_err() {
            make_writable(&path);
            let _ = std::fs::remove_dir_all(&path);
        }
        // TempDir's own removal finds nothing left (or tries once more).
        drop(dir);
    }
}

/// Adds owner write and search permission to every directory under
/// `path`, so that its entries can be removed.
fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            make_writable(&entry.path());
        }
    }
}

impl ImageError {
    /// The class of this failure (see [`ErrorKind`](crate::ErrorKind)): an
    /// existing output is a conflict; a refused source, entry or binary,
    /// or a size too small, is invalid input; a missing tool or agent means
    /// the host is not ready; a tool that failed or a file that could not
    /// be written failed.
    pub fn kind(&self) -> crate::ErrorKind {
        use crate::ErrorKind;
        match self {
            ImageError::OutputExists { .. } => ErrorKind::Conflict,
            ImageError::Source { .. }
            | ImageError::UnknownSource { .. }
            | ImageError::BadTar { .. }
            | ImageError::UnsafeEntry { .. }
            | ImageError::UnsupportedEntry { .. }
            | ImageError::TooSmall { .. }
            | ImageError::OutputInSource { .. }
            | ImageError::BadInput { .. }
            | ImageError::NotStatic { .. }
            | ImageError::AgentNeedsLoader { .. }
            | ImageError::AgentTarget { .. } => ErrorKind::InvalidInput,
            ImageError::ToolMissing { .. }
            | ImageError::DeviceNeedsRoot { .. }
            | ImageError::AgentNotFound { .. } => ErrorKind::HostNotReady,
            ImageError::ToolFailed { .. } | ImageError::Inject { .. } | ImageError::Io { .. } => {
                ErrorKind::Failed
            }
        }
    }
}
