//! Files a guest can write into without being able to fill the disk.
//!
//! A guest that prints in a loop makes its serial console grow as fast as
//! the VMM can emulate the UART (tens of KB/s under nested virtualisation,
//! far more on hardware), and Firecracker's log and metrics grow with what
//! the guest provokes. Every file firehost writes on a guest's behalf goes
//! through a [`BoundedLog`]: at most [`LogLimits::max_bytes`] in the file
//! itself plus as much again in one rotated file (`NAME.1`); older output
//! is dropped, and counted.
//!
//! When a rotation drops bytes, the new file starts with one line saying
//! how many were dropped so far, and `NAME.dropped` holds that count as a
//! decimal number, so a reader of either learns that output is missing.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// How big the files of one [`BoundedLog`] may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// The most bytes in the current file; the previous file (`NAME.1`)
    /// holds at most as many, so a log takes at most twice this on disk.
    pub max_bytes: u64,
}

impl LogLimits {
    /// 8 MiB per file: hours of a chatty console, and a bound of 16 MiB
    /// per log per VM.
    pub const DEFAULT_MAX_BYTES: u64 = 8 << 20;
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }
}

/// An append-only file with a size bound; see the [module docs](self).
#[derive(Debug)]
pub struct BoundedLog {
    path: PathBuf,
    file: File,
    limits: LogLimits,
    /// Bytes in the current file.
    len: u64,
    /// Bytes of the marker line at the top of the current file.
    marker_len: u64,
    /// Bytes in `NAME.1`, and of its marker line.
    previous_len: u64,
    previous_marker_len: u64,
    /// Bytes dropped so far, by this writer and earlier ones.
    dropped: u64,
}

impl BoundedLog {
    /// Opens (or creates, mode 0600) the log at `path` for appending,
    /// carrying on from what an earlier writer left there.
    ///
    /// # Errors
    ///
    /// The file cannot be opened or inspected.
    pub fn open(path: impl Into<PathBuf>, limits: LogLimits) -> std::io::Result<BoundedLog> {
        let path = path.into();
        let file = open_append(&path)?;
        let len = file.metadata()?.len();
        let previous_len = std::fs::metadata(rotated(&path)).map_or(0, |m| m.len());
        let dropped = read_dropped(&path);
        Ok(BoundedLog {
            path,
            file,
            limits: LogLimits {
                // A zero bound would rotate on every write.
                max_bytes: limits.max_bytes.max(1),
            },
            len,
            marker_len: 0,
            previous_len,
            previous_marker_len: 0,
            dropped,
        })
    }

    /// Appends `bytes`, rotating first if they would not fit. A chunk
    /// larger than the bound keeps only its newest `max_bytes`.
    ///
    /// # Errors
    ///
    /// Writing, rotating or recording the dropped count failed.
    pub fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        let max = self.limits.max_bytes;
        if bytes.len() as u64 > max {
            let cut = bytes.len() - usize::try_from(max).unwrap_or(bytes.len());
            self.dropped += cut as u64;
            bytes = &bytes[cut..];
        }
        if self.len + bytes.len() as u64 > max && self.len > 0 {
            self.rotate()?;
        }
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Bytes of output dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The current file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `NAME` → `NAME.1` (whose old content is dropped), and a fresh `NAME`.
    fn rotate(&mut self) -> std::io::Result<()> {
        // Output, not our marker lines, is what counts as dropped.
        self.dropped += self.previous_len - self.previous_marker_len.min(self.previous_len);
        std::fs::rename(&self.path, rotated(&self.path))?;
        (self.previous_len, self.previous_marker_len) = (self.len, self.marker_len);
        self.file = open_append(&self.path)?;
        (self.len, self.marker_len) = (0, 0);
        if self.dropped > 0 {
            write_dropped(&self.path, self.dropped)?;
            let marker = format!(
                "[firehost: {} bytes of older output dropped (log bound {} bytes)]\n",
                self.dropped, self.limits.max_bytes
            );
            self.file.write_all(marker.as_bytes())?;
            self.len = marker.len() as u64;
            self.marker_len = self.len;
        }
        Ok(())
    }
}

/// `NAME.1`.
pub fn rotated(path: &Path) -> PathBuf {
    with_suffix(path, ".1")
}

/// The number of bytes dropped from the log at `path` so far (0 when
/// nothing was, or the count cannot be read).
pub fn read_dropped(path: &Path) -> u64 {
    std::fs::read_to_string(with_suffix(path, ".dropped"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

fn write_dropped(path: &Path, dropped: u64) -> std::io::Result<()> {
    // Small and rewritten whole: a reader sees the old or the new number.
    let target = with_suffix(path, ".dropped");
    let tmp = with_suffix(path, ".dropped.tmp");
    std::fs::write(&tmp, format!("{dropped}\n"))?;
    std::fs::rename(tmp, target)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    #[test]
    fn a_flood_keeps_at_most_two_files_and_counts_what_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut log = BoundedLog::open(&path, LogLimits { max_bytes: 1000 }).unwrap();
        let line = [b'x'; 99];
        let mut written = 0u64;
        for _ in 0..1000 {
            log.write(&line).unwrap();
            log.write(b"\n").unwrap();
            written += 100;
        }
        assert!(size(&path) <= 1000 + 100, "{}", size(&path));
        assert!(size(&rotated(&path)) <= 1000 + 100);
        let kept = size(&path) + size(&rotated(&path));
        let markers = {
            let text = std::fs::read_to_string(&path).unwrap()
                + &std::fs::read_to_string(rotated(&path)).unwrap();
            text.lines()
                .filter(|l| l.starts_with("[firehost:"))
                .map(|l| l.len() as u64 + 1)
                .sum::<u64>()
        };
        assert_eq!(
            log.dropped() + kept - markers,
            written,
            "every byte kept or counted"
        );
        assert_eq!(read_dropped(&path), log.dropped());
        let first = std::fs::read_to_string(&path).unwrap();
        assert!(first.starts_with("[firehost: "), "{first:.80}");
    }

    #[test]
    fn a_reopened_log_carries_on_and_a_huge_chunk_keeps_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firecracker.log");
        let limits = LogLimits { max_bytes: 100 };
        BoundedLog::open(&path, limits)
            .unwrap()
            .write(&[b'a'; 80])
            .unwrap();
        let mut log = BoundedLog::open(&path, limits).unwrap();
        log.write(&[b'b'; 50]).unwrap();
        assert_eq!(
            size(&rotated(&path)),
            80,
            "the earlier writer's bytes rotated"
        );
        let mut huge = vec![b'c'; 500];
        huge.extend_from_slice(b"END");
        log.write(&huge).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("END"), "{text}");
        assert!(size(&path) <= 100 + 100);
        assert!(log.dropped() >= 400);
    }
}
