//! A bounded, line-oriented ring of what a VMM printed: the guest's serial
//! console (Firecracker's stdout) and Firecracker's own stderr.
//!
//! The ring outlives the VMM process so that a VM that died can still be
//! examined. Memory is bounded twice: by the number of lines kept and by the
//! length of one line (longer lines are split), so a guest that prints
//! without newlines cannot make the manager grow.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Lines kept when nothing else is configured.
pub const DEFAULT_CONSOLE_LINES: usize = 200;
/// Longest line kept whole; longer output is split into several lines.
pub const MAX_LINE_BYTES: usize = 4096;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleStream {
    /// The guest's serial console (the VMM's stdout).
    Serial,
    /// The VMM's stderr.
    Vmm,
}

/// One line of output, without its newline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleLine {
    /// Where it came from.
    pub stream: ConsoleStream,
    /// The text, with invalid UTF-8 replaced.
    pub text: String,
}

/// A shared handle to one VM's console ring.
///
/// Cloning is cheap; all clones see the same lines.
///
/// # Examples
///
/// ```
/// use firehost::console::{ConsoleRing, ConsoleStream};
///
/// let ring = ConsoleRing::new(2);
/// ring.push(ConsoleStream::Serial, b"one\ntwo\nthree\npart");
/// let tail: Vec<String> = ring.tail(10).into_iter().map(|l| l.text).collect();
/// assert_eq!(tail, ["two", "three"]); // "part" waits for its newline
/// ```
#[derive(Debug, Clone)]
pub struct ConsoleRing {
    inner: Arc<Mutex<Ring>>,
    new_line: Arc<tokio::sync::Notify>,
    open_streams: Arc<tokio::sync::watch::Sender<usize>>,
}

#[derive(Debug)]
struct Ring {
    capacity: usize,
    lines: VecDeque<ConsoleLine>,
    partial: [Vec<u8>; 2],
}

impl ConsoleRing {
    /// A ring that keeps the last `capacity` lines (at least one).
    pub fn new(capacity: usize) -> Self {
        ConsoleRing {
            inner: Arc::new(Mutex::new(Ring {
                capacity: capacity.max(1),
                lines: VecDeque::new(),
                partial: [Vec::new(), Vec::new()],
            })),
            new_line: Arc::new(tokio::sync::Notify::new()),
            open_streams: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Appends raw output from `stream`; complete lines enter the ring.
    pub fn push(&self, stream: ConsoleStream, bytes: &[u8]) {
        self.push_locked(stream, bytes);
        self.new_line.notify_waiters();
    }

    fn push_locked(&self, stream: ConsoleStream, bytes: &[u8]) {
        let mut ring = self.lock();
        let slot = stream as usize;
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut ring.partial[slot]);
                ring.insert(stream, &line);
            } else {
                ring.partial[slot].push(b);
                if ring.partial[slot].len() >= MAX_LINE_BYTES {
                    let line = std::mem::take(&mut ring.partial[slot]);
                    ring.insert(stream, &line);
                }
            }
        }
    }

    /// Moves any unterminated output into the ring, as when the stream ends.
    pub fn flush(&self, stream: ConsoleStream) {
        let mut ring = self.lock();
        let line = std::mem::take(&mut ring.partial[stream as usize]);
        if !line.is_empty() {
            ring.insert(stream, &line);
        }
        drop(ring);
        self.new_line.notify_waiters();
    }

    /// Notes that a writer (a pipe pump) feeds the ring from now on.
    pub(crate) fn open_stream(&self) {
        self.open_streams.send_modify(|n| *n += 1);
    }

    /// Notes that a writer has seen end-of-file: its last partial line is
    /// flushed into the ring.
    pub(crate) fn close_stream(&self, stream: ConsoleStream) {
        self.flush(stream);
        self.open_streams.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// Waits until every writer has reached end-of-file, so the tail taken
    /// after a VMM exits holds its last words. Pair it with a timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn drained(&self) {
        let mut rx = self.open_streams.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Waits until a line in the ring satisfies `pred` and returns it: for
    /// example the guest's login prompt. Pair it with a timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads the ring.
    pub async fn wait_for_line(&self, pred: impl Fn(&ConsoleLine) -> bool) -> ConsoleLine {
        loop {
            // Register before looking, so a line pushed in between still
            // wakes us.
            let notified = self.new_line.notified();
            if let Some(line) = self.lock().lines.iter().find(|l| pred(l)) {
                return line.clone();
            }
            notified.await;
        }
    }

    /// The last `n` complete lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<ConsoleLine> {
        let ring = self.lock();
        let skip = ring.lines.len().saturating_sub(n);
        ring.lines.iter().skip(skip).cloned().collect()
    }

    /// The last `n` lines as text, stderr lines marked `[vmm]`.
    pub fn tail_text(&self, n: usize) -> Vec<String> {
        self.tail(n)
            .into_iter()
            .map(ConsoleLine::into_text)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding the lock leaves the ring consistent (every
        // mutation is a single push/pop), so poisoning is not an error here.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ConsoleLine {
    /// The line as one string, stderr lines marked `[vmm]`.
    pub fn into_text(self) -> String {
        match self.stream {
            ConsoleStream::Serial => self.text,
            ConsoleStream::Vmm => format!("[vmm] {}", self.text),
        }
    }
}

impl Ring {
    fn insert(&mut self, stream: ConsoleStream, bytes: &[u8]) {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
        }
        self.lines.push_back(ConsoleLine {
            stream,
            text: String::from_utf8_lossy(bytes).into_owned(),
        });
    }
}

/// The last `n` lines of a console file written by a detached VMM, read
/// without loading the whole file (at most the last 1 MiB is read).
pub(crate) fn tail_of_file(path: &std::path::Path, n: usize) -> std::io::Result<Vec<String>> {
    use std::io::{Read, Seek, SeekFrom};
    const WINDOW: u64 = 1 << 20;
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(WINDOW)))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let ring = ConsoleRing::new(n);
    ring.push(ConsoleStream::Serial, &buf);
    ring.flush(ConsoleStream::Serial);
    Ok(ring.tail_text(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_only_the_last_lines() {
        let ring = ConsoleRing::new(3);
        for i in 0..10 {
            ring.push(ConsoleStream::Serial, format!("line {i}\n").as_bytes());
        }
        let texts: Vec<_> = ring.tail(10).into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["line 7", "line 8", "line 9"]);
        assert_eq!(ring.tail(1)[0].text, "line 9");
    }

    #[test]
    fn streams_do_not_mix_partial_lines() {
        let ring = ConsoleRing::new(10);
        ring.push(ConsoleStream::Serial, b"hel");
        ring.push(ConsoleStream::Vmm, b"warn");
        ring.push(ConsoleStream::Serial, b"lo\r\n");
        ring.push(ConsoleStream::Vmm, b"ing\n");
        assert_eq!(ring.tail_text(10), ["hello", "[vmm] warning"]);
    }

    #[test]
    fn endless_line_is_split_so_memory_stays_bounded() {
        let ring = ConsoleRing::new(4);
        ring.push(ConsoleStream::Serial, &vec![b'x'; MAX_LINE_BYTES * 3 + 5]);
        let lines = ring.tail(10);
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.text.len() == MAX_LINE_BYTES));
        ring.flush(ConsoleStream::Serial);
        assert_eq!(ring.tail(1)[0].text.len(), 5);
    }

    #[test]
    fn file_tail_returns_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let body: String = (0..500).map(|i| format!("l{i}\n")).collect();
        std::fs::write(&path, body).unwrap();
        assert_eq!(tail_of_file(&path, 2).unwrap(), ["l498", "l499"]);
    }

    proptest::proptest! {
        #[test]
        fn ring_never_exceeds_capacity(chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 0..50), cap in 1usize..20) {
            let ring = ConsoleRing::new(cap);
            for c in &chunks { ring.push(ConsoleStream::Serial, c); }
            proptest::prop_assert!(ring.tail(usize::MAX).len() <= cap);
        }
    }
}
