//! Sparse-file plumbing for bundles: walking a file's data extents, hashing
//! a file without reading its holes, and copying or overlaying only the
//! data.
//!
//! Firecracker writes a diff snapshot's memory file at its full logical
//! size with only the dirty pages allocated; everything else is a hole.
//! `lseek(SEEK_DATA)` / `lseek(SEEK_HOLE)` find the allocated ranges, which
//! is what makes a diff cheap to store and to merge. This relies on the
//! file system reporting holes at page granularity (ext4, xfs, tmpfs and
//! btrfs with 4 KiB blocks do); a file system without hole support reports
//! the whole file as data, which is slower but still correct for hashing
//! and full copies — for overlaying a diff it is not, since the diff's
//! holes would read as zero pages.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use rustix::fs::SeekFrom;
use rustix::io::Errno;

/// Bytes moved per read, write or hash update.
const CHUNK_BYTES: usize = 1 << 20;

/// The data (non-hole) ranges of a file, in order.
pub(crate) struct DataExtents<'a> {
    file: &'a File,
    pos: u64,
    len: u64,
}

impl<'a> DataExtents<'a> {
    /// Walks `file`, which is `len` bytes long.
    pub(crate) fn new(file: &'a File, len: u64) -> Self {
        DataExtents { file, pos: 0, len }
    }
}

impl Iterator for DataExtents<'_> {
    type Item = io::Result<Range<u64>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.len {
            return None;
        }
        let start = match rustix::fs::seek(self.file, SeekFrom::Data(self.pos)) {
            Ok(start) => start,
            // Only holes up to the end of the file.
            Err(Errno::NXIO) => {
                self.pos = self.len;
                return None;
            }
            Err(e) => return Some(Err(e.into())),
        };
        if start >= self.len {
            self.pos = self.len;
            return None;
        }
        let end = match rustix::fs::seek(self.file, SeekFrom::Hole(start)) {
            Ok(end) => end.min(self.len),
            Err(e) => return Some(Err(e.into())),
        };
        self.pos = end;
        Some(Ok(start..end))
    }
}

/// Size, allocated data and checksum of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileDigest {
    /// Logical size.
    pub size_bytes: u64,
    /// Bytes inside data extents.
    pub data_bytes: u64,
    /// BLAKE3 of the whole logical content (holes read as zeros), in hex:
    /// the same value `b3sum` prints.
    pub blake3: String,
}

/// Pages this size and aligned to it are what [`digest_punching_zeros`]
/// turns into holes: guest pages, and file-system blocks on ext4 and xfs.
const PAGE_BYTES: u64 = PAGE as u64;
/// [`PAGE_BYTES`] as a length in memory.
const PAGE: usize = 4096;

/// Like [`digest`], and turns every run of all-zero pages of at least
/// [`MIN_HOLE_BYTES`] into a hole (`FALLOC_FL_PUNCH_HOLE`) as it goes: the
/// content, and so the checksum, is the same, and the data that remains is
/// what the guest had written (and short runs of zeros between it).
///
/// Firecracker writes a full snapshot's memory whole, so guest memory that
/// was never touched, or that a balloon took back, would take up room in
/// the bundle, in every copy of it and in the page cache of every restore.
/// Only for a full snapshot's memory: in a diff layer a hole means "the
/// parent's page", not zero. `file` must be open for writing.
pub(crate) fn digest_punching_zeros(file: &File) -> io::Result<FileDigest> {
    let mut puncher = ZeroPuncher { file, run: None };
    let digest = digest_with(file, &mut |off, bytes| puncher.feed(off, bytes))?;
    puncher.flush()?;
    // What is left after the punching.
    let mut data_bytes = 0;
    for extent in DataExtents::new(file, digest.size_bytes) {
        let extent = extent?;
        data_bytes += extent.end - extent.start;
    }
    Ok(FileDigest {
        data_bytes,
        ..digest
    })
}

/// The shortest run of zero pages worth a hole. A hole is one
/// `fallocate` call, which costs tens of microseconds on ext4: punching
/// every lone zero page of a fragmented memory made sealing 17 times
/// slower (BENCHMARKS.md, section 16), for little room saved. Memory a
/// guest never touched, or that a balloon took in large blocks, comes in
/// much longer runs.
const MIN_HOLE_BYTES: u64 = 256 << 10;

static ZERO_PAGE: [u8; PAGE] = [0; PAGE];

/// Finds runs of all-zero pages in the data it is shown, in file order,
/// and punches the long ones.
struct ZeroPuncher<'a> {
    file: &'a File,
    /// The run under way: its start and length.
    run: Option<(u64, u64)>,
}

impl ZeroPuncher<'_> {
    /// `bytes`, read from the file at `off`.
    fn feed(&mut self, off: u64, bytes: &[u8]) -> io::Result<()> {
        // A run goes on only across contiguous data.
        if self.run.is_some_and(|(start, len)| start + len != off) {
            self.flush()?;
        }
        // Only whole, aligned pages: the first one starts at the next boundary.
        let skip = usize::try_from(off.next_multiple_of(PAGE_BYTES) - off).unwrap_or(usize::MAX);
        if skip > 0 {
            self.flush()?;
        }
        let mut at = skip;
        while at + PAGE <= bytes.len() {
            let start = off + at as u64;
            // A comparison with a page of zeros is a `memcmp`, many times
            // faster than looking at each byte.
            if bytes[at..at + PAGE] == ZERO_PAGE {
                match &mut self.run {
                    Some((_, len)) => *len += PAGE_BYTES,
                    None => self.run = Some((start, PAGE_BYTES)),
                }
            } else {
                self.flush()?;
            }
            at += PAGE;
        }
        if at < bytes.len() {
            // A page cut by the end of the data: not whole, not a hole.
            self.flush()?;
        }
        Ok(())
    }

    /// Punches the run under way, if it is long enough, and ends it.
    fn flush(&mut self) -> io::Result<()> {
        if let Some((start, len)) = self.run.take()
            && len >= MIN_HOLE_BYTES
        {
            rustix::fs::fallocate(
                self.file,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                start,
                len,
            )?;
        }
        Ok(())
    }
}

/// Hashes `file` streaming, feeding zeros for holes instead of reading them
/// (blocking).
pub(crate) fn digest(file: &File) -> io::Result<FileDigest> {
    digest_with(file, &mut |_, _| Ok(()))
}

/// [`digest`], showing each piece of data read (and its offset) to `saw`.
fn digest_with(
    file: &File,
    saw: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<FileDigest> {
    let len = file.metadata()?.len();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut cursor = 0u64;
    let mut data_bytes = 0u64;
    for extent in DataExtents::new(file, len) {
        let extent = extent?;
        feed_zeros(&mut hasher, extent.start - cursor);
        let mut off = extent.start;
        while off < extent.end {
            let want = chunk_len(extent.end - off);
            let n = file.read_at(&mut buf[..want], off)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            hasher.update(&buf[..n]);
            saw(off, &buf[..n])?;
            off += n as u64;
        }
        data_bytes += extent.end - extent.start;
        cursor = extent.end;
    }
    feed_zeros(&mut hasher, len - cursor);
    Ok(FileDigest {
        size_bytes: len,
        data_bytes,
        blake3: hasher.finalize().to_hex().to_string(),
    })
}

fn feed_zeros(hasher: &mut blake3::Hasher, mut count: u64) {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    while count > 0 {
        let n = usize::try_from(count)
            .unwrap_or(usize::MAX)
            .min(ZEROS.len());
        hasher.update(&ZEROS[..n]);
        count -= n as u64;
    }
}

fn chunk_len(remaining: u64) -> usize {
    usize::try_from(remaining)
        .unwrap_or(usize::MAX)
        .min(CHUNK_BYTES)
}

/// Copies `src[range]` to the same offsets of `dst` (blocking), in the
/// kernel where it can (`copy_file_range`, which may share extents), with
/// reads and writes where it cannot.
pub(crate) fn copy_range(src: &File, dst: &File, range: Range<u64>) -> io::Result<()> {
    let mut off = range.start;
    while off < range.end {
        let mut off_in = off;
        let mut off_out = off;
        match rustix::fs::copy_file_range(
            src,
            Some(&mut off_in),
            dst,
            Some(&mut off_out),
            chunk_len(range.end - off),
        ) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => off += n as u64,
            Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP) => {
                return copy_range_by_hand(src, dst, off..range.end);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_range_by_hand(src: &File, dst: &File, range: Range<u64>) -> io::Result<()> {
    let mut buf = vec![0u8; chunk_len(range.end - range.start)];
    let mut off = range.start;
    while off < range.end {
        let want = chunk_len(range.end - off);
        let n = src.read_at(&mut buf[..want], off)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        dst.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// Writes every data extent of `src` into `dst` at the same offsets,
/// leaving `dst` alone where `src` has holes, and grows `dst` to at least
/// the length of `src` (blocking).
pub(crate) fn overlay(src: &File, dst: &File) -> io::Result<()> {
    let len = src.metadata()?.len();
    if dst.metadata()?.len() < len {
        dst.set_len(len)?;
    }
    for extent in DataExtents::new(src, len) {
        copy_range(src, dst, extent?)?;
    }
    Ok(())
}

/// How [`clone_or_copy`] made its copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyMethod {
    /// A reflink (`FICLONE`): the data is shared until written.
    Reflink,
    /// Data extents copied, holes kept.
    Sparse,
}

/// Makes `dst` (an empty file) a copy of `src` (blocking): a reflink where
/// the file system supports it, otherwise a copy of the data extents with
/// the holes kept.
pub(crate) fn clone_or_copy(src: &File, dst: &File) -> io::Result<CopyMethod> {
    // FICLONE fails without touching `dst` where the file system cannot
    // share extents (EOPNOTSUPP, EXDEV across file systems, EINVAL).
    if rustix::fs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(CopyMethod::Reflink);
    }
    dst.set_len(0)?;
    let len = src.metadata()?.len();
    dst.set_len(len)?;
    for extent in DataExtents::new(src, len) {
        copy_range(src, dst, extent?)?;
    }
    Ok(CopyMethod::Sparse)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    fn sparse_file(dir: &std::path::Path, name: &str, pages: u64, data: &[u64]) -> File {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join(name))
            .unwrap();
        file.set_len(pages * PAGE).unwrap();
        for &p in data {
            let byte = u8::try_from(p % 251).unwrap() + 1;
            file.write_all_at(&vec![byte; 4096], p * PAGE).unwrap();
        }
        file
    }

    #[test]
    fn extents_skip_holes() {
        let dir = tempfile::tempdir().unwrap();
        let file = sparse_file(dir.path(), "f", 16, &[2, 3, 9]);
        let extents: Vec<_> = DataExtents::new(&file, 16 * PAGE)
            .collect::<io::Result<_>>()
            .unwrap();
        // A file system without hole reporting returns one extent: accept
        // it, but on the ones we run on, expect the exact layout.
        if extents.len() > 1 {
            assert_eq!(extents, [2 * PAGE..4 * PAGE, 9 * PAGE..10 * PAGE]);
        }
    }

    #[test]
    fn digest_of_sparse_file_equals_digest_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let file = sparse_file(dir.path(), "f", 64, &[0, 5, 63]);
        let d = digest(&file).unwrap();
        let bytes = std::fs::read(dir.path().join("f")).unwrap();
        assert_eq!(d.blake3, blake3::hash(&bytes).to_hex().to_string());
        assert_eq!(d.size_bytes, 64 * PAGE);
        assert!(d.data_bytes >= 3 * PAGE);
    }

    #[test]
    fn long_runs_of_zero_pages_become_holes_and_the_content_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        // 1024 pages (4 MiB, several read chunks), zeros written
        // everywhere but pages 0, 100, 130, 600, 700 and 1023. Zero runs:
        // 99 pages (long), 29 (short: kept), 469 (long, across a chunk
        // boundary), 99 and 322 (long).
        let p = super::PAGE;
        let mut bytes = vec![0u8; 1024 * p];
        for page in [0usize, 100, 130, 700, 1023] {
            bytes[page * p] = 1;
        }
        // A page with one byte set at its end is not zero: page 600 splits
        // the long run in two.
        bytes[601 * p - 1] = 7;
        std::fs::write(&path, &bytes).unwrap();
        let before = digest(&File::open(&path).unwrap()).unwrap();
        assert_eq!(before.data_bytes, 1024 * PAGE, "written zeros take room");

        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let after = digest_punching_zeros(&file).unwrap();
        assert_eq!(after.blake3, before.blake3);
        assert_eq!(after.size_bytes, before.size_bytes);
        // Pages 0, 100-130 (the short run kept with its ends), 600, 700
        // and 1023.
        assert_eq!(after.data_bytes, (1 + 31 + 1 + 1 + 1) * PAGE, "{after:?}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        // Again: nothing left to punch, nothing changes.
        assert_eq!(digest_punching_zeros(&file).unwrap(), after);
    }

    #[test]
    fn clone_or_copy_reproduces_content() {
        let dir = tempfile::tempdir().unwrap();
        let src = sparse_file(dir.path(), "src", 32, &[1, 7, 30]);
        let dst = sparse_file(dir.path(), "dst", 0, &[]);
        clone_or_copy(&src, &dst).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("src")).unwrap(),
            std::fs::read(dir.path().join("dst")).unwrap()
        );
    }
}
