//! A minimal initramfs: the agent as `/init`, and a static busybox.
//!
//! For guests that need no distribution: the kernel unpacks the archive
//! into its root file system and runs `/init` (the agent) as PID 1, with
//! busybox for a shell and the usual tools when debugging. Boot with
//! the file as the VM's initrd: the kernel runs its `/init` whatever root
//! drive is attached. The kernel needs `CONFIG_BLK_DEV_INITRD` and gzip
//! support (Firecracker's guest configurations have both).
//!
//! The archive holds, in this order:
//!
//! | path | what |
//! | --- | --- |
//! | `/bin`, `/dev`, `/etc`, `/proc`, `/root`, `/run`, `/sys`, `/tmp` | empty directories (`/tmp` is `1777`, `/root` `0700`) |
//! | `/dev/console` | character device 5:1: the kernel opens it for init's stdin, stdout and stderr *before* any devtmpfs is mounted |
//! | `/dev/null` | character device 1:3 |
//! | `/init` | the agent, `0755` |
//! | `/bin/busybox` | busybox, `0755` |
//! | `/bin/sh`, `/bin/ls`, … | symbolic links to `busybox`, one per applet in [`BUSYBOX_APPLETS`] |
//!
//! As PID 1 the agent mounts `/proc`, `/sys` and `/dev` itself. The kernel
//! starts it with no `PATH`; busybox's shell then uses its built-in
//! default, which includes `/bin`.
//!
//! Both binaries must be static: there are no shared libraries in the
//! archive, so a dynamically linked one would fail to start (the kernel
//! panics with "No working init found"). The build checks the ELF for an
//! interpreter and refuses such a binary. A static busybox on Debian or
//! Ubuntu, without installing it:
//!
//! ```sh
//! apt-get download busybox-static && dpkg-deb -x busybox-static_*.deb bb
//! # then use bb/bin/busybox
//! ```

use std::path::{Path, PathBuf};

use super::newc::NewcWriter;
use super::{AGENT_FIX, BUSYBOX_HINT, ImageError, io_err};

/// The busybox applets linked in `/bin`.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "mount", "umount", "ip", "ps", "mkdir", "rm", "cp", "mv", "sleep",
    "dmesg", "poweroff", "reboot",
];

/// The empty directories, with their modes, in archive order.
const DIRS: [(&str, u32); 8] = [
    ("bin", 0o755),
    ("dev", 0o755),
    ("etc", 0o755),
    ("proc", 0o555),
    ("root", 0o700),
    ("run", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
];

/// What to build. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitramfsOptions {
    /// The agent binary, which becomes `/init`.
    pub agent: PathBuf,
    /// A statically linked busybox.
    pub busybox: PathBuf,
    /// The gzip'd cpio file to write.
    pub out: PathBuf,
    /// Replace an existing `out`.
    pub force: bool,
}

/// What [`build_initramfs`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitramfsReport {
    /// The file written.
    pub out: PathBuf,
    /// Entries in the archive (the trailer not counted).
    pub entries: u64,
    /// The file's size (compressed).
    pub bytes: u64,
}

/// Writes the initramfs: the newc archive, gzip'd, into a temporary file
/// beside `out`, renamed onto it at the end. The output depends only on
/// the two binaries (times are 0). Blocking.
///
/// # Errors
///
/// [`ImageError::BadInput`] or [`ImageError::NotStatic`] for an unusable
/// binary, [`ImageError::OutputExists`] without `force`, and I/O errors.
/// No output is left behind on error.
pub fn build_initramfs(options: &InitramfsOptions) -> Result<InitramfsReport, ImageError> {
    let agent = read_static("agent binary", &options.agent, AGENT_FIX)?;
    let busybox = read_static("busybox binary", &options.busybox, BUSYBOX_HINT)?;
    super::check_out(&options.out, options.force)?;
    let out_dir = super::out_parent(&options.out);
    let tmp = tempfile::Builder::new()
        .prefix(".firehost-initramfs-")
        .tempfile_in(out_dir)
        .map_err(io_err("create a temporary file in", out_dir))?;
    let gz = flate2::GzBuilder::new().write(tmp.as_file(), flate2::Compression::best());
    let mut cpio = NewcWriter::new(std::io::BufWriter::new(gz));
    let written = (|| {
        for (dir, mode) in DIRS {
            cpio.dir(dir, mode)?;
        }
        cpio.char_device("dev/console", 0o600, 5, 1)?;
        cpio.char_device("dev/null", 0o666, 1, 3)?;
        cpio.file("init", 0o755, &agent)?;
        cpio.file("bin/busybox", 0o755, &busybox)?;
        for applet in BUSYBOX_APPLETS {
            cpio.symlink(&format!("bin/{applet}"), "busybox")?;
        }
        let entries = cpio.entries();
        let gz = cpio.finish()?.into_inner().map_err(|e| e.into_error())?;
        gz.finish()?.sync_all()?;
        Ok::<_, std::io::Error>(entries)
    })();
    let entries = written.map_err(io_err("write", tmp.path()))?;
    let bytes = tmp
        .as_file()
        .metadata()
        .map_err(io_err("inspect", tmp.path()))?
        .len();
    let persisted = if options.force {
        tmp.persist(&options.out)
    } else {
        tmp.persist_noclobber(&options.out)
    };
    persisted.map_err(|e| match e.error.kind() {
        std::io::ErrorKind::AlreadyExists => ImageError::OutputExists {
            path: options.out.clone(),
        },
        _ => io_err("create", &options.out)(e.error),
    })?;
    if let Ok(dir) = std::fs::File::open(out_dir) {
        let _ = dir.sync_all();
    }
    Ok(InitramfsReport {
        out: options.out.clone(),
        entries,
        bytes,
    })
}

/// Reads a binary for the initramfs, refusing one that is not a regular
/// file or that needs a dynamic loader.
fn read_static(what: &'static str, path: &Path, fix: &'static str) -> Result<Vec<u8>, ImageError> {
    super::check_input(what, path, fix)?;
    let bytes = std::fs::read(path).map_err(|source| ImageError::BadInput {
        what,
        path: path.to_owned(),
        fix,
        source: Some(source),
    })?;
    if let Some(interpreter) = crate::elf::interpreter(&bytes) {
        return Err(ImageError::NotStatic {
            what,
            path: path.to_owned(),
            interpreter,
            fix,
        });
    }
    Ok(bytes)
}
