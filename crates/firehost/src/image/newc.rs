//! A writer for the `newc` cpio format, the one the Linux kernel unpacks
//! as an initramfs.
//!
//! The format is small enough to write here rather than depend on a
//! crate for it (see the kernel's
//! `Documentation/driver-api/early-userspace/buffer-format.rst`). Each
//! entry is:
//!
//! 1. a 110-byte ASCII header: the magic `070701`, then thirteen 8-digit
//!    hexadecimal fields: inode, mode (type and permission bits), uid,
//!    gid, link count, mtime, data size, device major and minor (of the
//!    file system the entry came from: 0 here), rdev major and minor (of a
//!    device node), name size (with its NUL) and a checksum (0: unused by
//!    `070701`);
//! 2. the name (relative, no leading `/`), NUL-terminated, padded with NULs
//!    to a multiple of 4 bytes counted from the header's start;
//! 3. the data (a file's contents, a symbolic link's target), padded to a
//!    multiple of 4.
//!
//! The archive ends with an entry named `TRAILER!!!`, and is padded with
//! NULs to a multiple of 512 bytes as `cpio` does (the kernel skips them).
//! Parents must come before their entries. Every entry gets its own
//! inode number and a link count of 1 (2 for directories), so the kernel
//! never takes two entries for hard links of each other. Owners are root
//! and times are 0: the same inputs give the same bytes.
//!
//! ```
//! use firehost::image::newc::NewcWriter;
//!
//! let mut cpio = NewcWriter::new(Vec::new());
//! cpio.dir("bin", 0o755)?;
//! cpio.file("bin/hello", 0o755, b"#!/bin/sh\necho hello\n")?;
//! cpio.symlink("bin/hi", "hello")?;
//! cpio.char_device("console", 0o600, 5, 1)?;
//! assert_eq!(cpio.entries(), 4);
//! let bytes = cpio.finish()?;
//! assert!(bytes.starts_with(b"070701"));
//! assert_eq!(bytes.len() % 512, 0);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{self, Write};

/// The newc magic.
const MAGIC: &[u8; 6] = b"070701";
/// The header's length: the magic and 13 eight-digit fields.
pub const HEADER_BYTES: usize = 110;
/// The last entry's name.
pub const TRAILER: &str = "TRAILER!!!";

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Writes a `newc` archive to `out`, entry by entry. See the
/// [module docs](self).
#[derive(Debug)]
pub struct NewcWriter<W: Write> {
    out: W,
    next_ino: u32,
    entries: u64,
    written: u64,
}

impl<W: Write> NewcWriter<W> {
    /// A writer with nothing written yet.
    pub fn new(out: W) -> Self {
        NewcWriter {
            out,
            next_ino: 1,
            entries: 0,
            written: 0,
        }
    }

    /// How many entries were written (the trailer not counted).
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// A directory with permission bits `mode`.
    ///
    /// # Errors
    ///
    /// Invalid names ([`io::ErrorKind::InvalidInput`]) and write errors.
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | (mode & 0o7777), 2, (0, 0), b"")
    }

    /// A regular file holding `data`.
    ///
    /// # Errors
    ///
    /// Invalid names, data of 4 GiB or more, and write errors.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | (mode & 0o7777), 1, (0, 0), data)
    }

    /// A symbolic link to `target`.
    ///
    /// # Errors
    ///
    /// Invalid names and write errors.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node `major:minor`.
    ///
    /// # Errors
    ///
    /// Invalid names and write errors.
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, S_IFCHR | (mode & 0o7777), 1, (major, minor), b"")
    }

    /// Writes the trailer and the padding, and returns the output.
    ///
    /// # Errors
    ///
    /// Write errors.
    pub fn finish(mut self) -> io::Result<W> {
        self.raw_entry(TRAILER, 0, 0, 1, (0, 0), b"")?;
        let tail = pad(self.written, 512);
        self.write(&vec![0u8; tail])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let invalid = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio entry {path:?}: {why}"),
            )
        };
        if path.is_empty() || path.starts_with('/') || path.contains('\0') || path == TRAILER {
            return Err(invalid("names are relative, not empty, without NUL"));
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.raw_entry(path, ino, mode, nlink, rdev, data)?;
        self.entries += 1;
        Ok(())
    }

    fn raw_entry(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        (rdev_major, rdev_minor): (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio entry {name:?}: newc holds at most 4 GiB per file"),
            )
        })?;
        let name_size = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio name too long"))?;
        let fields = [
            ino, mode, 0, // uid
            0, // gid
            nlink, 0, // mtime
            size, 0, // devmajor
            0, // devminor
            rdev_major, rdev_minor, name_size, 0, // check
        ];
        let mut header = Vec::with_capacity(HEADER_BYTES + name.len() + 4);
        header.extend_from_slice(MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        header.resize(header.len() + pad(header.len() as u64, 4), 0);
        self.write(&header)?;
        self.write(data)?;
        self.write(&[0u8; 3][..pad(data.len() as u64, 4)])
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

/// Bytes needed after `len` to reach a multiple of `align`.
fn pad(len: u64, align: u64) -> usize {
    usize::try_from((align - len % align) % align).expect("less than align, at most 512")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry read back: name, mode, link count, rdev, data.
    type Entry = (String, u32, u32, (u32, u32), Vec<u8>);

    /// A minimal newc reader, independent of the writer's code paths.
    fn read_back(bytes: &[u8]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let mut at = 0;
        loop {
            let header = &bytes[at..at + HEADER_BYTES];
            assert_eq!(&header[..6], b"070701", "magic at {at}");
            let field = |i: usize| {
                let text = std::str::from_utf8(&header[6 + i * 8..14 + i * 8]).unwrap();
                u32::from_str_radix(text, 16).unwrap()
            };
            let (mode, nlink, size, name_size) = (field(1), field(4), field(6), field(11));
            let rdev = (field(9), field(10));
            let name_start = at + HEADER_BYTES;
            let name = std::str::from_utf8(&bytes[name_start..name_start + name_size as usize - 1])
                .unwrap()
                .to_owned();
            assert_eq!(bytes[name_start + name_size as usize - 1], 0);
            let data_start = (name_start + name_size as usize).next_multiple_of(4);
            let data = bytes[data_start..data_start + size as usize].to_vec();
            at = (data_start + size as usize).next_multiple_of(4);
            if name == TRAILER {
                break;
            }
            entries.push((name, mode, nlink, rdev, data));
        }
        assert!(
            bytes[at..].iter().all(|&b| b == 0),
            "only padding after the trailer"
        );
        assert_eq!(bytes.len() % 512, 0);
        entries
    }

    #[test]
    fn what_is_written_reads_back_entry_by_entry() {
        let mut cpio = NewcWriter::new(Vec::new());
        cpio.dir("dev", 0o755).unwrap();
        cpio.char_device("dev/console", 0o600, 5, 1).unwrap();
        cpio.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        cpio.file("e", 0o644, b"").unwrap();
        cpio.symlink("sh", "busybox").unwrap();
        let bytes = cpio.finish().unwrap();
        let entries = read_back(&bytes);
        let expected: Vec<Entry> = vec![
            ("dev".into(), 0o040_755, 2, (0, 0), vec![]),
            ("dev/console".into(), 0o020_600, 1, (5, 1), vec![]),
            ("init".into(), 0o100_755, 1, (0, 0), b"#!/bin/sh\n".to_vec()),
            ("e".into(), 0o100_644, 1, (0, 0), vec![]),
            ("sh".into(), 0o120_777, 1, (0, 0), b"busybox".to_vec()),
        ];
        assert_eq!(entries, expected);
    }

    #[test]
    fn names_and_data_of_every_length_stay_aligned() {
        let mut cpio = NewcWriter::new(Vec::new());
        let names: Vec<String> = (1..=9).map(|n| "n".repeat(n)).collect();
        for (i, name) in names.iter().enumerate() {
            cpio.file(name, 0o644, &vec![b'x'; i]).unwrap();
        }
        let entries = read_back(&cpio.finish().unwrap());
        for (i, (name, _, _, _, data)) in entries.iter().enumerate() {
            assert_eq!((name, data.len()), (&names[i], i));
        }
    }

    #[test]
    fn bad_names_are_refused() {
        let mut cpio = NewcWriter::new(Vec::new());
        for name in ["", "/init", "a\0b", TRAILER] {
            let err = cpio.file(name, 0o644, b"").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
        assert_eq!(cpio.entries(), 0);
    }
}
