//! The fake's "guest": one thread standing in for the vCPUs, which touches guest
//! memory while the VM runs and stops between pages when it is paused.
//!
//! - After `InstanceStart` it [stamps](crate::memory::stamp_page) every page.
//! - After a snapshot load, on the first resume, it reads the memory in page order
//!   (all of it, the first N pages, or none: `FAKE_FC_GUEST_TOUCH`), through the
//!   `Uffd` page server when there is one, and prints
//!   `firehost-fake-guest: memory checksum <16 hex digits>` ([`Checksum`]) on the
//!   console. The value equals the checksum of the snapshot's memory file.
//! - On every resume it then writes a resume counter into a few pages (word 2),
//!   so a diff snapshot has something to hold.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::console::Console;
use crate::memory::{Checksum, GuestMemory, stamp_page};

/// The console line prefix of the checksum the guest prints after a restore.
pub const CHECKSUM_LINE: &str = "firehost-fake-guest: memory checksum";
/// The console line a restored guest prints on resume when
/// `FAKE_FC_GUEST_TOUCH=none`: it read nothing, and tests can wait for the
/// line instead of waiting for nothing to happen.
pub const UNTOUCHED_LINE: &str = "firehost-fake-guest: memory untouched";
/// Pages written on each resume.
pub const PAGES_DIRTIED_PER_RESUME: usize = 4;
/// Pages handled per turn, between two checks for a pause.
const CHUNK: usize = 64;

/// Which memory the guest reads after a restore (`FAKE_FC_GUEST_TOUCH`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GuestTouch {
    /// Every page (the default).
    #[default]
    All,
    /// No page: no checksum line, and no page written on resume either.
    None,
    /// The first N pages.
    First(usize),
}

impl GuestTouch {
    /// Parses `all`, `none` or `first:N`.
    ///
    /// # Examples
    ///
    /// ```
    /// use fake_firecracker::guest::GuestTouch;
    ///
    /// assert_eq!(GuestTouch::parse("first:3"), Some(GuestTouch::First(3)));
    /// assert_eq!(GuestTouch::parse("some"), None);
    /// ```
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "all" => Some(Self::All),
            "none" => Some(Self::None),
            t => t
                .strip_prefix("first:")
                .and_then(|n| n.trim().parse().ok())
                .map(Self::First),
        }
    }
}

/// The pages the guest writes on resume number `resume` (1-based): spread over
/// memory, shifting with each resume.
pub fn resume_pages(pages: usize, resume: u64) -> Vec<usize> {
    let stride = (pages / PAGES_DIRTIED_PER_RESUME).max(1);
    let shift = usize::try_from(resume).unwrap_or(0) % stride;
    let mut out: Vec<usize> = (0..PAGES_DIRTIED_PER_RESUME)
        .map(|j| (j * stride + shift) % pages)
        .collect();
    out.dedup();
    out
}

#[derive(Debug)]
struct Scan {
    next: usize,
    end: usize,
    sum: Checksum,
}

#[derive(Debug, Default)]
struct State {
    running: bool,
    parked: bool,
    stop: bool,
    stamp_next: Option<usize>,
    scan: Option<Scan>,
    resumes_wanted: u64,
    resumes_done: u64,
}

#[derive(Debug)]
enum Job {
    Stamp(usize, usize),
    Scan(usize, usize, Checksum),
    Resume(u64),
}

#[derive(Debug)]
struct Shared {
    mem: Arc<GuestMemory>,
    id_hash: u64,
    console: Console,
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next thing to do. The restore scan comes first (it must see the
    /// snapshot's content) and stops while paused. A resume's writes count as done
    /// at the resume, and the boot stamp as done at boot, so both finish even once
    /// paused: a snapshot always holds all of them.
    fn next_job(&self, s: &State) -> Option<Job> {
        let pages = self.mem.pages();
        if let Some(scan) = &s.scan {
            let to = (scan.next + CHUNK).min(scan.end);
            return s.running.then_some(Job::Scan(scan.next, to, scan.sum));
        }
        if s.resumes_done < s.resumes_wanted {
            return Some(Job::Resume(s.resumes_done + 1));
        }
        s.stamp_next
            .map(|from| Job::Stamp(from, (from + CHUNK).min(pages)))
    }

    fn run(&self) {
        loop {
            let job = {
                let mut s = self.lock();
                loop {
                    if s.stop {
                        return;
                    }
                    if let Some(job) = self.next_job(&s) {
                        s.parked = false;
                        break job;
                    }
                    s.parked = true;
                    self.cv.notify_all();
                    s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
                }
            };
            let mut line = None;
            match job {
                Job::Stamp(from, to) => {
                    for i in (from..to).filter(|i| !self.mem.ballooned(*i)) {
                        stamp_page(&self.mem, i, self.id_hash);
                    }
                    let mut s = self.lock();
                    s.stamp_next = (to < self.mem.pages()).then_some(to);
                }
                Job::Scan(from, to, mut sum) => {
                    for i in from..to {
                        self.mem.checksum_page(i, &mut sum);
                    }
                    let mut s = self.lock();
                    if let Some(scan) = &mut s.scan {
                        scan.next = to;
                        scan.sum = sum;
                        if to == scan.end {
                            line = Some(format!("{CHECKSUM_LINE} {}", sum.hex()));
                            s.scan = None;
                        }
                    }
                }
                Job::Resume(n) => {
                    let pages = resume_pages(self.mem.pages(), n);
                    for p in pages.into_iter().filter(|p| !self.mem.ballooned(*p)) {
                        self.mem.write_word(p, 2, n);
                    }
                    self.lock().resumes_done = n;
                }
            }
            if let Some(line) = line {
                let _ = self.console.write_lines(&[line]);
            }
        }
    }
}

/// The running guest of one VM.
#[derive(Debug)]
pub struct Guest {
    shared: Arc<Shared>,
    touch: GuestTouch,
}

impl Guest {
    fn spawn(mem: Arc<GuestMemory>, id_hash: u64, console: Console, state: State) -> Self {
        let shared = Arc::new(Shared {
            mem,
            id_hash,
            console,
            state: Mutex::new(state),
            cv: Condvar::new(),
        });
        let worker = Arc::clone(&shared);
        // Detached: a vCPU blocked on a page nobody serves must not block exit.
        std::thread::Builder::new()
            .name("fc_vcpu 0".into())
            .spawn(move || worker.run())
            .expect("spawn the guest thread");
        Self {
            shared,
            touch: GuestTouch::All,
        }
    }

    /// A freshly booted guest: running, stamping every page.
    pub fn boot(mem: Arc<GuestMemory>, id_hash: u64, console: Console) -> Self {
        Self::spawn(
            mem,
            id_hash,
            console,
            State {
                running: true,
                stamp_next: Some(0),
                ..State::default()
            },
        )
    }

    /// A guest restored from a snapshot, paused; on its first resume it reads
    /// the pages `touch` selects and prints their checksum.
    pub fn restored(mem: Arc<GuestMemory>, console: Console, touch: GuestTouch) -> Self {
        let end = match touch {
            GuestTouch::All => mem.pages(),
            GuestTouch::None => 0,
            GuestTouch::First(n) => n.min(mem.pages()),
        };
        let scan = (touch != GuestTouch::None).then_some(Scan {
            next: 0,
            end,
            sum: Checksum::new(),
        });
        let mut guest = Self::spawn(
            mem,
            0,
            console,
            State {
                scan,
                ..State::default()
            },
        );
        guest.touch = touch;
        guest
    }

    /// The guest memory.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.shared.mem
    }

    /// Resumes the vCPUs.
    pub fn resume(&self) {
        let mut s = self.shared.lock();
        s.running = true;
        if self.touch != GuestTouch::None {
            s.resumes_wanted += 1;
            // The vCPU thread has work now, even before it wakes: a pause
            // that comes first must not find it "parked" and let a snapshot
            // miss this resume's writes.
            s.parked = false;
        } else {
            let _ = self
                .shared
                .console
                .write_lines(&[UNTOUCHED_LINE.to_owned()]);
        }
        self.shared.cv.notify_all();
    }

    /// Pauses the vCPUs: they stop at the next page boundary.
    pub fn pause(&self) {
        self.shared.lock().running = false;
    }

    /// Waits until the paused vCPUs have stopped touching memory (a resume's
    /// writes included).
    pub fn quiesce(&self) {
        let mut s = self.shared.lock();
        while !s.parked || s.running {
            if s.running {
                return;
            }
            s = self.shared.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touch_settings_parse() {
        assert_eq!(GuestTouch::parse("all"), Some(GuestTouch::All));
        assert_eq!(GuestTouch::parse("none"), Some(GuestTouch::None));
        assert_eq!(GuestTouch::parse("first:10"), Some(GuestTouch::First(10)));
        assert_eq!(GuestTouch::parse("first:x"), None);
    }

    #[test]
    fn resume_pages_are_spread_and_move() {
        assert_eq!(resume_pages(1024, 1), vec![1, 257, 513, 769]);
        assert_eq!(resume_pages(1024, 2), vec![2, 258, 514, 770]);
        assert_eq!(resume_pages(2, 1), vec![0, 1, 0, 1]);
    }

    #[test]
    fn boot_stamps_every_page_and_a_resume_dirties_a_few() {
        let mem = Arc::new(GuestMemory::anonymous(1 << 20).unwrap());
        let g = Guest::boot(Arc::clone(&mem), 9, Console::Stdout);
        let start = std::time::Instant::now();
        while g.shared.lock().stamp_next.is_some() {
            assert!(start.elapsed().as_secs() < 10, "stamping never finished");
            std::thread::yield_now();
        }
        g.pause();
        g.quiesce();
        assert!((0..mem.pages()).all(|i| mem.read_word(i, 0) == i as u64));
        assert!((0..mem.pages()).all(|i| mem.read_word(i, 1) == 9));
        mem.reset_dirty();
        g.resume();
        g.pause();
        g.quiesce();
        // The resume's writes may land before or after the pause; resume again to
        // be sure they ran.
        g.resume();
        while g.shared.lock().resumes_done < 2 {
            assert!(start.elapsed().as_secs() < 10, "resume writes never ran");
            std::thread::yield_now();
        }
        g.pause();
        g.quiesce();
        let dirty = mem.diff_pages(true).unwrap();
        let expected: Vec<usize> = resume_pages(mem.pages(), 1)
            .into_iter()
            .chain(resume_pages(mem.pages(), 2))
            .collect();
        for (i, d) in dirty.iter().enumerate() {
            assert_eq!(*d, expected.contains(&i), "page {i}");
        }
        assert_eq!(mem.read_word(expected[4], 2), 2);
    }
}
