//! An ext4 root filesystem from a directory or a tar, with the agent in it.
//!
//! # How an image is built
//!
//! 1. **Source.** A directory is used where it is, read-only. A tar
//!    archive (plain or gzip'd, as `docker export` writes it) is unpacked
//!    into a private staging directory beside the output, refusing any
//!    entry that would land outside it (see the `unpack` module: `..`,
//!    absolute paths, symbolic links among the parents, hard links out).
//!    Owners are kept when running as root.
//! 2. **Size.** Unless given, computed from the tree: its apparent size
//!    (each file rounded up to a 4 KiB block, hard links counted once,
//!    plus the agent) × 1.25 + 64 MiB, rounded up to a MiB
//!    ([`estimate_size_mib`]). The inode count is raised above
//!    `mkfs.ext4`'s default (one per 16 KiB) when the tree has many small
//!    files.
//! 3. **File system.** `mkfs.ext4 -d TREE` writes the tree into a sparse
//!    temporary file beside the output: no loop device, no mount, no root.
//!    The image's root directory belongs to root (`-E root_owner=0:0`).
//! 4. **Agent.** `debugfs -w` writes the agent into the finished image
//!    (`rm` of what was there, `write`, `sif … mode 0100755`), and a
//!    `debugfs stat` checks the result. Doing it in the image rather than
//!    in the tree is what lets a source directory stay untouched without
//!    copying it: `mkfs.ext4 -d` takes a single tree, so the alternative
//!    would be a staging copy of the whole tree (hard links are not
//!    possible across file systems and need ownership, reflinks only work
//!    on some). Symbolic links on the way (`/sbin -> usr/sbin` on
//!    merged-`/usr` distributions) are resolved in the tree first, inside
//!    its root, because debugfs's `cd` does not follow them; a missing
//!    `/sbin` is created.
//! 5. **Read-only.** With [`RootfsOptions::read_only`], `tune2fs -O
//!    read-only` sets the ext4 `read-only` feature, and the guest kernel
//!    then mounts it read-only whatever it is told. (`mkfs.ext4` 1.47
//!    refuses to set this feature itself, and debugfs cannot write to a
//!    file system that has it, so it comes last.)
//! 6. **Output.** The finished image (mode `0600`: a root filesystem may
//!    hold secrets) is renamed onto the output; without
//!    [`RootfsOptions::force`] an existing output is refused, both before
//!    any work and at the end. Any failure removes the temporary image and
//!    the staging directory, leaving no output.
//!
//! # Where the agent goes
//!
//! By default the agent *is* init ([`AgentPlacement::AsInit`]): it is
//! written to `/sbin/init`, replacing whatever was there (often a link to
//! systemd; the report says what, [`RootfsReport::replaced`]), so the
//! kernel starts it as PID 1 without any `init=` argument. With
//! [`AgentPlacement::BesideInit`] it goes to `/sbin/firehost-agent` and
//! the image's own init is left alone: that init must then start the
//! agent (a systemd unit, an inittab line).
//!
//! # Limits
//!
//! Unpacking a tar as a non-root user makes every file belong to that
//! user ([`RootfsReport::owners_kept`] is false), cannot create device
//! nodes ([`ImageError::DeviceNeedsRoot`]), drops `security.*` extended
//! attributes such as file capabilities ([`RootfsReport::xattrs_skipped`])
//! and cannot copy a file its owner may not read (mode `000`, as some
//! distributions give `/etc/shadow`: `mkfs.ext4` then fails). A source
//! directory is copied with whatever owners it has, and must be readable
//! by the builder. Building as root has none of these limits.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use super::tool::{self, DEBUGFS, MKFS_EXT4, TUNE2FS};
use super::unpack::{self, Compression};
use super::{AGENT_FIX, ImageError, Progress, TargetReason, WorkDir, io_err};

/// One MiB.
const MIB: u64 = 1 << 20;
/// The block size of the images made, and the unit files are rounded up
/// to when measuring a tree.
const BLOCK_BYTES: u64 = 4096;
/// Space on top of the content for the journal, inode tables and what
/// the guest writes.
const SLACK_BYTES: u64 = 64 * MIB;
/// `mkfs.ext4`'s default bytes per inode for file systems of ordinary
/// size; more inodes are asked for only when the tree needs them.
const BYTES_PER_INODE: u64 = 16 * 1024;
/// Inodes on top of the tree's entries, for what the guest creates.
const SPARE_INODES: u64 = 4096;
/// How many symbolic links resolving the agent's directory may follow
/// (the kernel's limit).
const MAX_LINKS: u32 = 40;
/// Symbolic link targets shorter than this live in the inode ("fast"
/// links) and take no block.
const FAST_SYMLINK_BYTES: u64 = 60;

/// What to build. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsOptions {
    /// The source: a directory, or a tar archive (plain or gzip'd).
    pub from: PathBuf,
    /// The image file to write.
    pub out: PathBuf,
    /// The agent binary to put in the image.
    pub agent: PathBuf,
    /// Where the agent goes.
    pub placement: AgentPlacement,
    /// The image size in MiB; `None` computes it from the content
    /// ([`estimate_size_mib`]).
    pub size_mib: Option<u64>,
    /// Set the ext4 `read-only` feature, so the guest mounts it read-only.
    pub read_only: bool,
    /// Replace an existing `out`.
    pub force: bool,
}

impl RootfsOptions {
    /// Options to build `out` from `from` with `agent` as `/sbin/init`, a
    /// computed size, writable, not replacing an existing `out`.
    ///
    /// # Examples
    ///
    /// ```
    /// use firehost::image::{AgentPlacement, RootfsOptions};
    ///
    /// let options = RootfsOptions {
    ///     placement: AgentPlacement::BesideInit,
    ///     size_mib: Some(512),
    ///     ..RootfsOptions::new("rootfs/", "rootfs.ext4", "target/release/firehost-agent")
    /// };
    /// assert_eq!(options.placement.path(), "/sbin/firehost-agent");
    /// ```
    pub fn new(
        from: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
        agent: impl Into<PathBuf>,
    ) -> Self {
        RootfsOptions {
            from: from.into(),
            out: out.into(),
            agent: agent.into(),
            placement: AgentPlacement::default(),
            size_mib: None,
            read_only: false,
            force: false,
        }
    }
}

/// Where the agent goes in the image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AgentPlacement {
    /// At `/sbin/init`, replacing the image's init: the kernel starts the
    /// agent as PID 1.
    #[default]
    AsInit,
    /// At `/sbin/firehost-agent`, leaving the image's init alone (which
    /// must then start the agent).
    BesideInit,
}

impl AgentPlacement {
    /// The agent's path in the image.
    pub fn path(self) -> &'static str {
        match self {
            AgentPlacement::AsInit => "/sbin/init",
            AgentPlacement::BesideInit => "/sbin/firehost-agent",
        }
    }

    /// The file name in `/sbin`.
    fn name(self) -> &'static str {
        match self {
            AgentPlacement::AsInit => "init",
            AgentPlacement::BesideInit => "firehost-agent",
        }
    }
}

/// What the source was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A directory, used in place.
    Directory,
    /// A plain tar archive.
    Tar,
    /// A gzip'd tar archive.
    GzipTar,
}

/// What the agent replaced at its path in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replaced {
    /// A regular file.
    File,
    /// A symbolic link (`/sbin/init -> /lib/systemd/systemd`).
    Symlink {
        /// Where it pointed.
        target: PathBuf,
    },
    /// A device node, FIFO or socket.
    Special,
}

impl fmt::Display for Replaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Replaced::File => f.write_str("a file"),
            Replaced::Symlink { target } => {
                write!(f, "a symbolic link to {}", target.display())
            }
            Replaced::Special => f.write_str("a special file"),
        }
    }
}

/// What [`build_rootfs`] made.
#[derive(Debug, Clone, PartialEq)]
pub struct RootfsReport {
    /// The image file.
    pub out: PathBuf,
    /// What the source was.
    pub source: SourceKind,
    /// The image size in MiB.
    pub size_mib: u64,
    /// The size was computed from the content (not given).
    pub size_computed: bool,
    /// Entries in the image besides its root directory (files,
    /// directories, links, nodes; each hard link counts).
    pub files: u64,
    /// The content's size as measured for the estimate, agent included.
    pub content_bytes: u64,
    /// The agent's path in the image.
    pub agent: &'static str,
    /// What the agent replaced there, if anything.
    pub replaced: Option<Replaced>,
    /// The ext4 `read-only` feature is set.
    pub read_only: bool,
    /// Files keep the owners of the source (false for a tar unpacked by a
    /// non-root user: everything then belongs to that user).
    pub owners_kept: bool,
    /// Extended attributes in the tar that could not be set (and so are
    /// not in the image).
    pub xattrs_skipped: u64,
    /// How long the build took.
    pub elapsed: Duration,
}

/// The image size for `content_bytes` of content: × 1.25 + 64 MiB,
/// rounded up to a MiB.
///
/// # Examples
///
/// ```
/// use firehost::image::estimate_size_mib;
///
/// assert_eq!(estimate_size_mib(0), 64);
/// assert_eq!(estimate_size_mib(100 << 20), 189);
/// ```
pub fn estimate_size_mib(content_bytes: u64) -> u64 {
    content_bytes
        .saturating_add(content_bytes / 4)
        .saturating_add(SLACK_BYTES)
        .div_ceil(MIB)
}

/// The inode count for an image of `size_mib` holding `entries`:
/// `mkfs.ext4`'s default, or more when the tree needs it.
fn inode_count(entries: u64, size_mib: u64) -> u64 {
    let default = size_mib.saturating_mul(MIB) / BYTES_PER_INODE;
    let needed = entries
        .saturating_add(entries / 4)
        .saturating_add(SPARE_INODES);
    default.max(needed)
}

/// Builds the image. Blocking: run it on a blocking thread. `progress` is
/// called from this thread as the unpack and `mkfs.ext4` phases advance.
///
/// # Errors
///
/// Any [`ImageError`]; no output file is left behind on error.
pub fn build_rootfs(
    options: &RootfsOptions,
    progress: &dyn Fn(Progress),
) -> Result<RootfsReport, ImageError> {
    let started = Instant::now();
    let mkfs = MKFS_EXT4.find()?;
    let debugfs = DEBUGFS.find()?;
    let tune2fs = if options.read_only {
        Some(TUNE2FS.find()?)
    } else {
        None
    };
    let agent_bytes = super::check_input("agent binary", &options.agent, AGENT_FIX)?;
    super::check_out(&options.out, options.force)?;
    let out_dir = super::out_parent(&options.out);

    let source = source_kind(&options.from)?;
    if source == SourceKind::Directory {
        refuse_out_in_source(&options.from, out_dir, &options.out)?;
    }
    let work = WorkDir::new(out_dir)?;
    let mut unpacked = unpack::Unpacked::default();
    let root = match source {
        SourceKind::Directory => options.from.clone(),
        SourceKind::Tar | SourceKind::GzipTar => {
            let staging = work.path().join("root");
            std::fs::create_dir(&staging).map_err(io_err("create directory", &staging))?;
            let compression = if source == SourceKind::GzipTar {
                Compression::Gzip
            } else {
                Compression::Plain
            };
            unpacked = unpack::unpack(&options.from, compression, &staging, progress)?;
            staging
        }
    };

    let content = measure(&root)?;
    let target = resolve_target(&root, options.placement)?;
    check_agent_can_start(&root, &options.agent)?;
    let content_bytes = content.bytes + round_up(agent_bytes);
    let needed_mib = estimate_size_mib(content_bytes);
    let size_mib = options.size_mib.unwrap_or(needed_mib);
    if size_mib.saturating_mul(MIB) < content_bytes {
        // It cannot fit; don't make mkfs find out the slow way.
        return Err(ImageError::TooSmall {
            size_mib,
            needed_mib,
        });
    }
    let new_entries = u64::from(target.make_dir) + u64::from(target.replaced.is_none());
    let files = content.entries + new_entries;

    let image = work.path().join("image.ext4");
    make_sparse_file(&image, size_mib.saturating_mul(MIB))?;
    let too_small = || ImageError::TooSmall {
        size_mib,
        needed_mib,
    };
    let made = make_filesystem(
        &mkfs,
        &root,
        &image,
        inode_count(files, size_mib),
        &|done| {
            progress(Progress::Mkfs {
                done_bytes: done.min(content_bytes),
                total_bytes: content_bytes,
            });
        },
    )?;
    if !made.status.success() {
        if made.stderr.contains("Could not allocate") {
            return Err(too_small());
        }
        return Err(made.failure(MKFS_EXT4));
    }
    progress(Progress::Mkfs {
        done_bytes: content_bytes,
        total_bytes: content_bytes,
    });

    progress(Progress::Agent);
    inject_agent(&debugfs, &image, work.path(), &options.agent, &target).map_err(|e| match &e {
        ImageError::Inject { detail } if detail.contains("Could not allocate") => too_small(),
        _ => e,
    })?;
    verify_agent(&debugfs, &image, &target, agent_bytes)?;
    if let Some(tune2fs) = tune2fs {
        let args: Vec<&OsStr> = vec!["-O".as_ref(), "read-only".as_ref(), image.as_os_str()];
        let tuned = tool::run(TUNE2FS, &tune2fs, &args, None, &mut || {})?;
        if !tuned.status.success() {
            return Err(tuned.failure(TUNE2FS));
        }
    }
    std::fs::File::open(&image)
        .and_then(|f| f.sync_all())
        .map_err(io_err("sync", &image))?;
    super::publish(&image, &options.out, options.force)?;

    Ok(RootfsReport {
        out: options.out.clone(),
        source,
        size_mib,
        size_computed: options.size_mib.is_none(),
        files,
        content_bytes,
        agent: options.placement.path(),
        replaced: target.replaced,
        read_only: options.read_only,
        owners_kept: source == SourceKind::Directory || super::is_root(),
        xattrs_skipped: unpacked.xattrs_skipped,
        elapsed: started.elapsed(),
    })
}

/// What `from` is: a directory, a tar, a gzip'd tar, or refused.
fn source_kind(from: &Path) -> Result<SourceKind, ImageError> {
    let meta = std::fs::metadata(from).map_err(|source| ImageError::Source {
        path: from.to_owned(),
        source,
    })?;
    if meta.is_dir() {
        return Ok(SourceKind::Directory);
    }
    match unpack::sniff(from)? {
        Some(Compression::Plain) => Ok(SourceKind::Tar),
        Some(Compression::Gzip) => Ok(SourceKind::GzipTar),
        None => Err(ImageError::UnknownSource {
            path: from.to_owned(),
        }),
    }
}

/// Runs `mkfs.ext4 -d root` on the sparse file `image`, reporting the
/// bytes the image file holds as it goes.
///
/// The flags: `-F` because the target is a file, not a device; a 4 KiB
/// block and 256-byte inodes whatever the size (`mkfs.ext4` would pick
/// 1 KiB blocks and 128-byte inodes, which cannot store dates past 2038,
/// for images under 512 MiB); `-N` from [`inode_count`]; the root
/// directory owned by root even when the builder is not.
fn make_filesystem(
    mkfs: &Path,
    root: &Path,
    image: &Path,
    inodes: u64,
    written: &dyn Fn(u64),
) -> Result<tool::Finished, ImageError> {
    let block = BLOCK_BYTES.to_string();
    let inodes = inodes.to_string();
    let args: Vec<&OsStr> = vec![
        "-q".as_ref(),
        "-F".as_ref(),
        "-b".as_ref(),
        block.as_ref(),
        "-I".as_ref(),
        "256".as_ref(),
        "-N".as_ref(),
        inodes.as_ref(),
        "-E".as_ref(),
        "root_owner=0:0".as_ref(),
        "-d".as_ref(),
        root.as_os_str(),
        image.as_os_str(),
    ];
    let mut tick = || written(std::fs::metadata(image).map_or(0, |m| m.blocks() * 512));
    tool::run(MKFS_EXT4, mkfs, &args, None, &mut tick)
}

/// Refuses an output inside the source tree: `mkfs.ext4 -d` would copy
/// the half-written image into itself.
fn refuse_out_in_source(from: &Path, out_dir: &Path, out: &Path) -> Result<(), ImageError> {
    let from_real = std::fs::canonicalize(from).map_err(|source| ImageError::Source {
        path: from.to_owned(),
        source,
    })?;
    let out_real = std::fs::canonicalize(out_dir).map_err(io_err("open directory", out_dir))?;
    if out_real.starts_with(&from_real) {
        return Err(ImageError::OutputInSource {
            out: out.to_owned(),
            from: from.to_owned(),
        });
    }
    Ok(())
}

/// Creates `path` (`0600`, new) as a sparse file of `bytes`.
fn make_sparse_file(path: &Path, bytes: u64) -> Result<(), ImageError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))?;
    file.set_len(bytes).map_err(io_err("size", path))
}

/// `n` rounded up to whole blocks.
fn round_up(n: u64) -> u64 {
    n.div_ceil(BLOCK_BYTES).saturating_mul(BLOCK_BYTES)
}

/// A tree's entry count and size, as [`estimate_size_mib`] wants it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Content {
    /// Entries besides the root.
    entries: u64,
    /// Bytes, each file rounded up to a block, hard links counted once.
    bytes: u64,
}

/// Walks the tree at `root` (not following links) and measures it.
fn measure(root: &Path) -> Result<Content, ImageError> {
    let mut content = Content::default();
    let mut seen = std::collections::HashSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(io_err("read directory", &dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(io_err("inspect", &path))?;
            content.entries += 1;
            let kind = meta.file_type();
            content.bytes += if kind.is_dir() {
                pending.push(path);
                round_up(meta.len()).max(BLOCK_BYTES)
            } else if kind.is_file() {
                if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
                    0
                } else {
                    round_up(meta.len())
                }
            } else if kind.is_symlink() && meta.len() >= FAST_SYMLINK_BYTES {
                BLOCK_BYTES
            } else {
                0
            };
        }
    }
    Ok(content)
}

/// Where the agent goes in a tree, with symbolic links resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// The agent's nominal path, for errors.
    path: &'static str,
    /// The directory in the image (`/usr/sbin` when `/sbin` links there).
    dir: String,
    /// The directory does not exist yet.
    make_dir: bool,
    /// The file name in it.
    name: &'static str,
    /// What is there now.
    replaced: Option<Replaced>,
}

/// Resolves where the agent goes in the tree at `root`: `/sbin` followed
/// through symbolic links as the guest would (absolute targets and `..`
/// stay inside the root), then what is at the name in it.
fn resolve_target(root: &Path, placement: AgentPlacement) -> Result<Target, ImageError> {
    let path = placement.path();
    let refuse = |reason| ImageError::AgentTarget { path, reason };
    let (parts, make_dir) = resolve_dir(root, "sbin").map_err(|e| e.map_reason(refuse))?;
    let dir = image_path(&parts);
    if dir.chars().any(|c| c == '"' || c.is_control()) {
        return Err(refuse(TargetReason::UnusualName { path: dir }));
    }
    let name = placement.name();
    let replaced = if make_dir {
        None
    } else {
        let host = host_path(root, &parts).join(name);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.is_dir() => return Err(refuse(TargetReason::IsDirectory)),
            Ok(m) if m.file_type().is_symlink() => Some(Replaced::Symlink {
                target: std::fs::read_link(&host).map_err(io_err("read link", &host))?,
            }),
            Ok(m) if m.is_file() => Some(Replaced::File),
            Ok(_) => Some(Replaced::Special),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("inspect", &host)(e)),
        }
    };
    Ok(Target {
        path,
        dir,
        make_dir,
        name,
        replaced,
    })
}

/// Refuses a dynamically linked agent whose loader is not in the tree at
/// `root`: the guest kernel could not start it.
fn check_agent_can_start(root: &Path, agent: &Path) -> Result<(), ImageError> {
    let interpreter = crate::elf::file_interpreter(agent).map_err(io_err("read", agent))?;
    let Some(interpreter) = interpreter else {
        return Ok(());
    };
    if is_file_in_tree(root, &interpreter) {
        return Ok(());
    }
    Err(ImageError::AgentNeedsLoader {
        path: agent.to_owned(),
        interpreter,
    })
}

/// Whether `path` (absolute, as the guest sees it) names a regular file in
/// the tree at `root`, following symbolic links chroot-style.
fn is_file_in_tree(root: &Path, path: &str) -> bool {
    let mut path = PathBuf::from(path);
    for _ in 0..MAX_LINKS {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return false;
        };
        let Ok((parts, false)) = resolve_dir(root, &parent.to_string_lossy()) else {
            return false;
        };
        let host = host_path(root, &parts).join(name);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let Ok(target) = std::fs::read_link(&host) else {
                    return false;
                };
                // Relative targets are relative to the link's directory.
                path = Path::new(&image_path(&parts)).join(target);
            }
            Ok(m) => return m.is_file(),
            Err(_) => return false,
        }
    }
    false
}

/// An error while resolving, before it knows which path it was for.
#[derive(Debug)]
enum ResolveError {
    Reason(TargetReason),
    Io(ImageError),
}

impl ResolveError {
    fn map_reason(self, f: impl FnOnce(TargetReason) -> ImageError) -> ImageError {
        match self {
            ResolveError::Reason(reason) => f(reason),
            ResolveError::Io(e) => e,
        }
    }
}

/// Resolves the directory `dir` (relative to the image's root) in the
/// tree at `root`, chroot-style. Returns its components and whether it
/// is missing (only its last component may be; it is then created).
fn resolve_dir(root: &Path, dir: &str) -> Result<(Vec<OsString>, bool), ResolveError> {
    let mut pending: std::collections::VecDeque<OsString> = Path::new(dir)
        .components()
        .map(|c| c.as_os_str().to_owned())
        .collect();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == "." || part == "/" {
            continue;
        }
        if part == ".." {
            resolved.pop();
            continue;
        }
        let host = host_path(root, &resolved).join(&part);
        let mut with_part = resolved.clone();
        with_part.push(part.clone());
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(ResolveError::Reason(TargetReason::SymlinkLoop));
                }
                let target = std::fs::read_link(&host)
                    .map_err(|e| ResolveError::Io(io_err("read link", &host)(e)))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for component in target.components().rev() {
                    match component {
                        Component::Normal(p) => pending.push_front(p.to_owned()),
                        Component::ParentDir => pending.push_front("..".into()),
                        Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
                    }
                }
            }
            Ok(m) if m.is_dir() => resolved = with_part,
            Ok(_) => {
                return Err(ResolveError::Reason(TargetReason::NotDirectory {
                    path: image_path(&with_part),
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if pending.is_empty() {
                    return Ok((with_part, true));
                }
                return Err(ResolveError::Reason(TargetReason::MissingParent {
                    missing: image_path(&with_part),
                }));
            }
            Err(e) => return Err(ResolveError::Io(io_err("inspect", &host)(e))),
        }
    }
    Ok((resolved, false))
}

/// `/a/b` for components `[a, b]` (`/` for none).
fn image_path(parts: &[OsString]) -> String {
    let mut path = String::new();
    for part in parts {
        path.push('/');
        path.push_str(&part.to_string_lossy());
    }
    if path.is_empty() {
        path.push('/');
    }
    path
}

/// `root/a/b` for components `[a, b]`.
fn host_path(root: &Path, parts: &[OsString]) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(parts);
    path
}

/// The debugfs commands that put the agent (copied to `agent` in the
/// working directory) at `target`: all names quoted, the host file named
/// relatively so its path needs no quoting at all.
fn inject_script(target: &Target) -> String {
    let mut script = String::new();
    if target.make_dir {
        script.push_str(&format!("mkdir \"{}\"\n", target.dir));
    }
    script.push_str(&format!("cd \"{}\"\n", target.dir));
    if target.replaced.is_some() {
        script.push_str(&format!("rm \"{}\"\n", target.name));
    }
    script.push_str(&format!("write \"agent\" \"{}\"\n", target.name));
    for (field, value) in [("mode", "0100755"), ("uid", "0"), ("gid", "0")] {
        script.push_str(&format!("sif \"{}\" {field} {value}\n", target.name));
    }
    script
}

/// Writes the agent into `image` with `debugfs -w -f`. debugfs exits 0
/// even when a command fails, so any message on stderr is a failure.
fn inject_agent(
    debugfs: &Path,
    image: &Path,
    work: &Path,
    agent: &Path,
    target: &Target,
) -> Result<(), ImageError> {
    let copy = work.join("agent");
    std::fs::copy(agent, &copy).map_err(io_err("copy the agent to", &copy))?;
    let script_path = work.join("inject.debugfs");
    std::fs::write(&script_path, inject_script(target)).map_err(io_err("write", &script_path))?;
    let args: Vec<&OsStr> = vec![
        "-w".as_ref(),
        "-f".as_ref(),
        script_path.as_os_str(),
        image.as_os_str(),
    ];
    let ran = tool::run(DEBUGFS, debugfs, &args, Some(work), &mut || {})?;
    let complaints = tool::one_line(&ran.stderr);
    if !ran.status.success() || !complaints.is_empty() {
        return Err(ImageError::Inject {
            detail: if complaints.is_empty() {
                format!("exit {}", ran.status)
            } else {
                complaints
            },
        });
    }
    Ok(())
}

/// Checks with `debugfs stat` that the agent is in the image: a regular
/// file, mode `0755`, owned by root, of the agent's size.
fn verify_agent(
    debugfs: &Path,
    image: &Path,
    target: &Target,
    agent_bytes: u64,
) -> Result<(), ImageError> {
    let path = format!("{}/{}", target.dir.trim_end_matches('/'), target.name);
    let request = format!("stat \"{path}\"");
    let args: Vec<&OsStr> = vec!["-R".as_ref(), request.as_ref(), image.as_os_str()];
    let ran = tool::run(DEBUGFS, debugfs, &args, None, &mut || {})?;
    let expected = Stat {
        kind: "regular".into(),
        mode: 0o755,
        uid: 0,
        gid: 0,
        size: agent_bytes,
    };
    match parse_stat(&ran.stdout) {
        Some(found) if found == expected => Ok(()),
        found => Err(ImageError::Inject {
            detail: format!(
                "{path} in the image is {found:?} after writing, expected {expected:?}; debugfs said: {}",
                tool::one_line(&ran.stderr)
            ),
        }),
    }
}

/// The fields of `debugfs stat` output that the check looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    kind: String,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
}

/// Parses `Type: regular    Mode:  0755`, `User: 0   Group: 0 … Size: 21`
/// out of `debugfs stat` output.
fn parse_stat(text: &str) -> Option<Stat> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |key: &str| {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1).copied())
    };
    Some(Stat {
        kind: after("Type:")?.to_owned(),
        mode: u32::from_str_radix(after("Mode:")?, 8).ok()?,
        uid: after("User:")?.parse().ok()?,
        gid: after("Group:")?.parse().ok()?,
        size: after("Size:")?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_is_content_and_a_quarter_plus_64_mib_rounded_up() {
        let cases = [
            (0, 64),
            (1, 65),
            (MIB, 66), // 1.25 MiB + 64, rounded up
            (4 * MIB, 69),
            (100 * MIB, 189),
            (1024 * MIB, 1344),
            (u64::MAX, u64::MAX / MIB + 1),
        ];
        for (content, mib) in cases {
            assert_eq!(estimate_size_mib(content), mib, "{content} bytes");
        }
    }

    #[test]
    fn inodes_follow_mkfs_unless_the_tree_needs_more() {
        assert_eq!(inode_count(10, 1024), 1024 * MIB / BYTES_PER_INODE);
        assert_eq!(inode_count(100_000, 256), 125_000 + SPARE_INODES);
    }

    #[test]
    fn measuring_rounds_files_up_and_counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/small"), b"x").unwrap();
        std::fs::write(root.join("big"), vec![0u8; 5000]).unwrap();
        std::fs::hard_link(root.join("big"), root.join("big2")).unwrap();
        std::os::unix::fs::symlink("d/small", root.join("fast")).unwrap();
        std::os::unix::fs::symlink("x".repeat(80), root.join("slow")).unwrap();
        let content = measure(root).unwrap();
        assert_eq!(content.entries, 6);
        // d: one block; small: one; big (once): two; slow link: one.
        assert_eq!(content.bytes, 5 * BLOCK_BYTES);
    }

    /// Symbolic links to make: (link, target).
    type Links<'a> = &'a [(&'a str, &'a str)];

    fn tree(links: Links, dirs: &[&str], files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for d in dirs {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        for f in files {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        for (link, target) in links {
            std::os::unix::fs::symlink(target, dir.path().join(link)).unwrap();
        }
        dir
    }

    #[test]
    fn the_agent_target_follows_sbin_links_inside_the_root() {
        let cases: [(Links, &[&str], &str, bool); 5] = [
            (&[], &["sbin"], "/sbin", false),
            (&[("sbin", "usr/sbin")], &["usr/sbin"], "/usr/sbin", false),
            (&[("sbin", "/usr/sbin")], &["usr/sbin"], "/usr/sbin", false),
            // `..` cannot climb out of the root.
            (
                &[("sbin", "../../../usr/sbin")],
                &["usr/sbin"],
                "/usr/sbin",
                false,
            ),
            (&[], &[], "/sbin", true),
        ];
        for (links, dirs, dir, make_dir) in cases {
            let root = tree(links, dirs, &[]);
            let target = resolve_target(root.path(), AgentPlacement::AsInit).unwrap();
            assert_eq!(
                (target.dir.as_str(), target.make_dir),
                (dir, make_dir),
                "{links:?}"
            );
            assert_eq!(target.replaced, None);
        }
    }

    #[test]
    fn the_agent_target_says_what_it_replaces() {
        let root = tree(&[("sbin/init", "/lib/systemd/systemd")], &["sbin"], &[]);
        let target = resolve_target(root.path(), AgentPlacement::AsInit).unwrap();
        assert_eq!(
            target.replaced,
            Some(Replaced::Symlink {
                target: "/lib/systemd/systemd".into()
            })
        );
        let beside = resolve_target(root.path(), AgentPlacement::BesideInit).unwrap();
        assert_eq!((beside.name, beside.replaced), ("firehost-agent", None));
        let root = tree(&[], &["sbin"], &["sbin/init"]);
        let target = resolve_target(root.path(), AgentPlacement::AsInit).unwrap();
        assert_eq!(target.replaced, Some(Replaced::File));
    }

    #[test]
    fn impossible_agent_targets_are_refused_with_a_reason() {
        let cases: [(Links, &[&str], &[&str], TargetReason); 4] = [
            (&[], &["sbin/init"], &[], TargetReason::IsDirectory),
            (
                &[],
                &[],
                &["sbin"],
                TargetReason::NotDirectory {
                    path: "/sbin".into(),
                },
            ),
            (
                &[("sbin", "usr/sbin")],
                &[],
                &[],
                TargetReason::MissingParent {
                    missing: "/usr".into(),
                },
            ),
            (&[("sbin", "sbin")], &[], &[], TargetReason::SymlinkLoop),
        ];
        for (links, dirs, files, reason) in cases {
            let root = tree(links, dirs, files);
            match resolve_target(root.path(), AgentPlacement::AsInit) {
                Err(ImageError::AgentTarget { reason: got, .. }) => assert_eq!(got, reason),
                other => panic!("{links:?} {dirs:?} {files:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_inject_script_quotes_names_and_removes_what_it_replaces() {
        let target = Target {
            path: "/sbin/init",
            dir: "/usr/sbin".into(),
            make_dir: false,
            name: "init",
            replaced: Some(Replaced::File),
        };
        assert_eq!(
            inject_script(&target),
            "cd \"/usr/sbin\"\nrm \"init\"\nwrite \"agent\" \"init\"\n\
             sif \"init\" mode 0100755\nsif \"init\" uid 0\nsif \"init\" gid 0\n"
        );
        let fresh = Target {
            make_dir: true,
            replaced: None,
            dir: "/sbin".into(),
            ..target
        };
        let script = inject_script(&fresh);
        assert!(
            script.starts_with("mkdir \"/sbin\"\ncd \"/sbin\"\nwrite"),
            "{script}"
        );
    }

    #[test]
    fn debugfs_stat_output_is_parsed() {
        let text = "Inode: 17   Type: regular    Mode:  0755   Flags: 0x80000\n\
                    Generation: 0    Version: 0x00000000:00000000\n\
                    User:     0   Group:     0   Project:     0   Size: 21\n";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                kind: "regular".into(),
                mode: 0o755,
                uid: 0,
                gid: 0,
                size: 21
            })
        );
        assert_eq!(parse_stat("stat: File not found by ext2_lookup"), None);
    }
}
