//! Benchmarks of the userfaultfd page server (issue 5), each reported as a
//! ratio against a bare handler run in the same process on the same data
//! (see BENCHMARKS.md):
//!
//! 1. On demand: a toucher thread reads one word of every page of the
//!    guest memory, in order, each read a missing-page fault. Ours: a
//!    [`PageServer`] in `OnDemand` mode, handed the userfaultfd the way
//!    Firecracker does it. Baseline: one thread blocked in `read` on its own
//!    userfaultfd, resolving each fault with one `UFFDIO_COPY` from a mapping
//!    of the same file: the cheapest possible handler.
//! 2. Populate: from the handshake to detached. Baseline: `UFFDIO_COPY` of
//!    the whole memory in chunks of the server's default chunk size, then
//!    `UFFDIO_UNREGISTER` (what detaching does), no faults.
//! 3. Prefetch of a working set (every tenth page), then touching exactly
//!    those pages: time to ready. Baseline: one `UFFDIO_COPY` per set page,
//!    in the same order, then the same touches. For scale, the same pages
//!    faulted on demand by our server.
//!
//! The guest side is a stand-in for Firecracker (anonymous memory
//! registered with a real userfaultfd, the mappings JSON with the
//! descriptor in `SCM_RIGHTS`), copied from `tests/page_server.rs`.
//!
//! Run: `cargo bench -p firehost --bench page_server`. Env `BENCH_ITERS`
//! scales the iteration counts, `BENCH_MIB` the memory size (default 256).
//! Needs the `userfaultfd` syscall or `/dev/userfaultfd` (root has both).

// Statistics over sample counts and byte counts: the casts are on small,
// non-negative numbers, and addresses and sizes fit in usize on the 64-bit
// hosts Firecracker runs on.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firehost::snapshot::uffd::sys::{UffdEvent, Userfaultfd, features};
use firehost::snapshot::uffd::{
    DEFAULT_CHUNK_BYTES, GuestRegionMapping, PageServer, PageServerPhase, PageServerStats,
    ServeMode, WorkingSet,
};
use rustix::mm::{MapFlags, ProtFlags};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

/// The page size (the host's base page on `x86_64`).
const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;
/// Generous bound on any single wait: a hang fails the run.
const LONG: Duration = Duration::from_secs(60);
/// One page in this many is in the prefetch working set.
const SET_STRIDE: u64 = 10;

fn iters(default: usize) -> usize {
    let scale: f64 = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((default as f64 * scale) as usize).max(3)
}

fn memory_pages() -> u64 {
    let mib: u64 = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    mib.max(1) * MIB / PAGE
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The first word of memory-file page `index` (every word of the page is
/// `(index + 1) << 32 | word`, as in the tests): no page is zero, no two
/// are equal, so a touch can check it got the right page.
fn first_word(index: u64) -> u64 {
    (index + 1) << 32
}

/// A temporary directory with the memory file and room for sockets.
struct Files {
    dir: tempfile::TempDir,
    memory: PathBuf,
    pages: u64,
}

impl Files {
    /// Writes `pages` patterned pages, syncs them (no writeback during the
    /// runs) and reads them back once, so both sides copy from the page
    /// cache.
    fn new(pages: u64) -> Files {
        let dir = tempfile::Builder::new()
            .prefix("fh-bench-uffd-")
            .tempdir()
            .unwrap();
        let memory = dir.path().join("memory");
        let mut file = File::create(&memory).unwrap();
        let mut chunk = Vec::with_capacity(MIB as usize);
        let words = PAGE / 8;
        for index in 0..pages {
            for w in 0..words {
                chunk.extend_from_slice(&(first_word(index) | w).to_ne_bytes());
            }
            if chunk.len() as u64 >= MIB || index + 1 == pages {
                file.write_all(&chunk).unwrap();
                chunk.clear();
            }
        }
        file.sync_all().unwrap();
        drop(file);
        let mut warm = File::open(&memory).unwrap();
        let mut buf = vec![0u8; MIB as usize];
        while warm.read(&mut buf).unwrap() > 0 {}
        Files { dir, memory, pages }
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The memory file mapped read-only and shared, as the server maps it:
/// the baseline's copy source.
struct FileMap {
    ptr: *mut std::ffi::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and only its address is handed to the
// kernel (as a `UFFDIO_COPY` source); it is unmapped once, by `Drop`.
unsafe impl Send for FileMap {}
// SAFETY: as for `Send`: shared references only expose the address.
unsafe impl Sync for FileMap {}

impl FileMap {
    fn new(path: &Path) -> FileMap {
        let file = File::open(path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        // SAFETY: a null hint without MAP_FIXED replaces no mapping; the
        // length is the file's; the result is only a source address.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::SHARED,
                file.as_fd(),
                0,
            )
        }
        .unwrap();
        FileMap { ptr, len }
    }

    fn source(&self, offset: u64) -> *const u8 {
        assert!(offset < self.len as u64);
        self.ptr
            .cast::<u8>()
            .wrapping_add(offset as usize)
            .cast_const()
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: exactly what `new` mapped; nothing refers into it now.
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
}

/// Plays Firecracker's side of a UFFD restore: one anonymous region
/// registered in missing mode with a userfaultfd created with
/// `EVENT_REMOVE`.
struct Guest {
    uffd: Userfaultfd,
    addr: usize,
    pages: u64,
    /// Kept open after the handshake, as Firecracker does.
    stream: Option<UnixStream>,
}

impl Guest {
    /// Firecracker's userfaultfd is non-blocking; the bare handler's is
    /// blocking, so it can sleep in `read` without a `poll`.
    fn new(pages: u64, nonblocking: bool) -> Guest {
        let uffd = Userfaultfd::create(nonblocking).unwrap();
        uffd.api(features::EVENT_REMOVE).unwrap();
        // SAFETY: a fresh private anonymous mapping at an address the kernel
        // picks.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                (pages * PAGE) as usize,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .unwrap();
        // SAFETY: the mapping is ours and fresh; nothing reads it before a
        // handler resolves its pages.
        unsafe { uffd.register_missing(ptr as u64, pages * PAGE) }.unwrap();
        Guest {
            uffd,
            addr: ptr as usize,
            pages,
            stream: None,
        }
    }

    fn page_addr(&self, page: u64) -> u64 {
        self.addr as u64 + page * PAGE
    }

    /// Connects and sends the mappings Firecracker v1.16.1 would send,
    /// with the userfaultfd attached.
    fn connect(&mut self, socket: &Path) {
        let mappings = [GuestRegionMapping {
            base_host_virt_addr: self.addr as u64,
            size: self.pages * PAGE,
            offset: 0,
            page_size: Some(PAGE),
            page_size_kib: Some(PAGE),
        }];
        let json = serde_json::to_vec(&mappings).unwrap();
        let stream = UnixStream::connect(socket).unwrap();
        let fds = [self.uffd.as_fd()];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        let sent = rustix::net::sendmsg(
            &stream,
            &[IoSlice::new(&json)],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        assert_eq!(sent, json.len());
        self.stream = Some(stream);
    }

    /// Touches `pages` on a thread of their own, as a vCPU would: reads the
    /// first word of each (a fault if missing) and checks it. Returns the
    /// time from the first touch to the last one's return.
    fn touch(&self, pages: Vec<u64>) -> Duration {
        let base = self.addr;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let started = Instant::now();
            for page in pages {
                let addr = base + (page * PAGE) as usize;
                // SAFETY: `addr` is a page of the guest's live mapping, which
                // outlives this thread (the caller waits for it below); a
                // volatile read makes the access happen.
                let word = unsafe { std::ptr::read_volatile(addr as *const u64) };
                assert_eq!(word, first_word(page), "page {page}");
            }
            let _ = tx.send(started.elapsed());
        });
        rx.recv_timeout(LONG)
            .expect("touching the guest memory hangs")
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; the touchers are done.
        let _ = unsafe { rustix::mm::munmap(self.addr as *mut _, (self.pages * PAGE) as usize) };
    }
}

fn uffd_available() -> bool {
    match Userfaultfd::create(true) {
        Ok(_) => true,
        Err(e) => {
            println!("skipped: cannot create a userfaultfd ({e})");
            false
        }
    }
}

/// Runs the async waits of the server handle.
struct Bench {
    files: Files,
    runtime: tokio::runtime::Runtime,
    sockets: u64,
    /// Per on-demand run of ours: the server's own mean time from reading
    /// a fault to resolving it (`fault_service_ns_total / faults_served`).
    service: Vec<Duration>,
    /// Per on-demand run of ours: handshake sent to handshake accepted.
    handshake: Vec<Duration>,
}

impl Bench {
    /// A server in `mode` on a fresh socket and a guest connected to it,
    /// with the time from sending the handshake to the server's accepting
    /// it.
    fn ours(&mut self, mode: ServeMode) -> (PageServer, Guest, Duration) {
        self.sockets += 1;
        let socket = self.files.socket(&format!("{}.sock", self.sockets));
        let server = PageServer::bind(socket, &self.files.memory, mode).unwrap();
        let mut guest = Guest::new(self.files.pages, true);
        let started = Instant::now();
        guest.connect(server.socket_path());
        self.runtime.block_on(server.wait_connected(LONG)).unwrap();
        (server, guest, started.elapsed())
    }

    fn stop(&self, server: PageServer) -> PageServerStats {
        let report = self.runtime.block_on(server.shutdown()).unwrap();
        report.stats
    }

    /// Ours, on demand: every page faulted once, in order.
    fn ours_on_demand(&mut self) -> Duration {
        let (server, guest, connected) = self.ours(ServeMode::OnDemand);
        self.handshake.push(connected);
        let took = guest.touch((0..guest.pages).collect());
        let stats = self.stop(server);
        assert_eq!(stats.faults_served, guest.pages);
        assert_eq!(stats.pages_copied, guest.pages);
        self.service.push(Duration::from_nanos(
            stats.fault_service_ns_total / stats.faults_served,
        ));
        took
    }

    /// Ours, populate: from the handshake to detached.
    fn ours_populate(&mut self) -> Duration {
        self.sockets += 1;
        let socket = self.files.socket(&format!("{}.sock", self.sockets));
        let server = PageServer::bind(socket, &self.files.memory, ServeMode::Populate).unwrap();
        let mut guest = Guest::new(self.files.pages, true);
        let started = Instant::now();
        guest.connect(server.socket_path());
        let stats = self.runtime.block_on(server.wait_detached(LONG)).unwrap();
        let took = started.elapsed();
        assert_eq!(stats.pages_populated, guest.pages);
        assert!(matches!(server.phase(), PageServerPhase::Detached));
        // Every page is present: touching them needs nobody.
        guest.touch((0..guest.pages).step_by(97).collect());
        self.stop(server);
        took
    }

    /// Ours, prefetch of `set` then touching it: handshake to last touch.
    fn ours_prefetch(&mut self, set: &WorkingSet) -> Duration {
        self.sockets += 1;
        let socket = self.files.socket(&format!("{}.sock", self.sockets));
        let mode = ServeMode::Prefetch(set.clone());
        let server = PageServer::bind(socket, &self.files.memory, mode).unwrap();
        let mut guest = Guest::new(self.files.pages, true);
        let started = Instant::now();
        guest.connect(server.socket_path());
        let stats = self.runtime.block_on(server.wait_prefetched(LONG)).unwrap();
        guest.touch(set.pages.clone());
        let took = started.elapsed();
        assert_eq!(stats.pages_prefetched, set.pages.len() as u64);
        let stats = self.stop(server);
        assert_eq!(stats.faults_served, 0, "prefetched pages never fault");
        took
    }

    /// Ours, the working set's pages faulted on demand instead: handshake
    /// to last touch. What the prefetch saves.
    fn ours_set_on_demand(&mut self, set: &WorkingSet) -> Duration {
        self.sockets += 1;
        let socket = self.files.socket(&format!("{}.sock", self.sockets));
        let server = PageServer::bind(socket, &self.files.memory, ServeMode::OnDemand).unwrap();
        let mut guest = Guest::new(self.files.pages, true);
        let started = Instant::now();
        guest.connect(server.socket_path());
        self.runtime.block_on(server.wait_connected(LONG)).unwrap();
        guest.touch(set.pages.clone());
        let took = started.elapsed();
        let stats = self.stop(server);
        assert_eq!(stats.faults_served, set.pages.len() as u64);
        took
    }
}

/// The bare handler: a thread blocked in `read` on the userfaultfd copies
/// the faulting page from the file mapping and wakes the toucher. It knows
/// how many faults to expect (one toucher, each page once), so it needs no
/// stop signal.
fn bare_on_demand(files: &Files) -> Duration {
    let source = FileMap::new(&files.memory);
    let guest = Guest::new(files.pages, false);
    let (uffd, base, pages) = (&guest.uffd, guest.addr as u64, guest.pages);
    let source = &source;
    std::thread::scope(|s| {
        let handler = s.spawn(move || {
            let mut events = Vec::with_capacity(64);
            let mut served = 0;
            while served < pages {
                uffd.read_events(&mut events).unwrap();
                for event in &events {
                    let UffdEvent::PageFault { address, .. } = *event else {
                        panic!("unexpected event {event:?}");
                    };
                    let dst = address & !(PAGE - 1);
                    uffd.copy(dst, source.source(dst - base), PAGE, true)
                        .unwrap();
                    served += 1;
                }
            }
        });
        let took = guest.touch((0..pages).collect());
        handler.join().unwrap();
        took
    })
}

/// Bare population: the whole memory in chunks of the server's default
/// chunk size, then the unregistration that detaching does.
fn bare_populate(files: &Files) -> Duration {
    let source = FileMap::new(&files.memory);
    let guest = Guest::new(files.pages, false);
    let len = guest.pages * PAGE;
    let started = Instant::now();
    let mut offset = 0;
    while offset < len {
        let chunk = DEFAULT_CHUNK_BYTES.min(len - offset);
        guest
            .uffd
            .copy(
                guest.addr as u64 + offset,
                source.source(offset),
                chunk,
                true,
            )
            .unwrap();
        offset += chunk;
    }
    guest.uffd.unregister(guest.addr as u64, len).unwrap();
    let took = started.elapsed();
    guest.touch((0..guest.pages).step_by(97).collect());
    took
}

/// Bare prefetch: one `UFFDIO_COPY` per working-set page, in order (as the
/// server does), then the same touches.
fn bare_prefetch(files: &Files, set: &WorkingSet) -> Duration {
    let source = FileMap::new(&files.memory);
    let guest = Guest::new(files.pages, false);
    let started = Instant::now();
    for &page in &set.pages {
        guest
            .uffd
            .copy(
                guest.page_addr(page),
                source.source(page * PAGE),
                PAGE,
                true,
            )
            .unwrap();
    }
    guest.touch(set.pages.clone());
    started.elapsed()
}

/// The samples of an interleaved comparison.
struct Compared {
    ours: Duration,
    bare: Duration,
    /// `bare / ours` for each pair run back to back: throughput ratios,
    /// sorted. Drift in the machine's load between pairs cancels out here.
    paired: Vec<f64>,
}

impl Compared {
    /// The median paired throughput ratio and its range.
    fn paired(&self) -> String {
        let p = &self.paired;
        format!(
            "{:.2}× (pairs {:.2}–{:.2}×)",
            p[p.len() / 2],
            p[0],
            p[p.len() - 1]
        )
    }
}

/// Runs `ours` and `bare` `n` times each, in pairs, alternating which goes
/// first.
fn interleaved(
    n: usize,
    bench: &mut Bench,
    ours: impl Fn(&mut Bench) -> Duration,
    bare: impl Fn(&Files) -> Duration,
) -> Compared {
    let (mut a, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        if i % 2 == 0 {
            a.push(ours(bench));
            b.push(bare(&bench.files));
        } else {
            b.push(bare(&bench.files));
            a.push(ours(bench));
        }
    }
    let mut paired: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(o, r)| r.as_secs_f64() / o.as_secs_f64())
        .collect();
    paired.sort_by(f64::total_cmp);
    Compared {
        ours: median(&mut a),
        bare: median(&mut b),
        paired,
    }
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    if !uffd_available() {
        return;
    }
    let pages = memory_pages();
    let bytes = pages * PAGE;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut bench = Bench {
        files: Files::new(pages),
        runtime,
        sockets: 0,
        service: Vec::new(),
        handshake: Vec::new(),
    };
    let n = iters(9);
    println!("# firehost page server benchmarks\n");
    println!(
        "Memory file: {} MiB ({pages} pages of {PAGE} bytes), in the page cache. {n} pairs per measure (ours and bare back to back, alternating which goes first); medians, and the median of the per-pair ratios.\n",
        bytes / MIB
    );

    // One untimed round of each, so first-touch costs (the file's page
    // tables, allocator, thread stacks) hit neither side's samples.
    bench.ours_on_demand();
    bare_on_demand(&bench.files);
    bench.service.clear();
    bench.handshake.clear();

    let c = interleaved(n, &mut bench, Bench::ours_on_demand, bare_on_demand);
    let faults_per_s = |d: Duration| pages as f64 / d.as_secs_f64();
    println!("## On-demand fault service (one toucher, every page in order)\n");
    println!("| handler | median | faults/s | MiB/s | µs/fault | throughput ratio |");
    println!("|---|---|---|---|---|---|");
    for (name, d, ratio) in [
        ("bare UFFDIO_COPY loop", c.bare, "1.00×".to_owned()),
        ("firehost PageServer (OnDemand)", c.ours, c.paired()),
    ] {
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.2} | {ratio} |",
            ms(d),
            faults_per_s(d),
            mib_per_s(bytes, d),
            d.as_secs_f64() * 1e6 / pages as f64,
        );
    }
    println!(
        "\nRatio of the medians: {:.2}×. Of each fault, our server spends {:.2} µs from reading the event to `UFFDIO_COPY` returning (its own counter; median of the per-run means). Handshake sent to accepted (not in the on-demand figures; in the populate and prefetch ones): {:.0} µs.\n",
        c.bare.as_secs_f64() / c.ours.as_secs_f64(),
        median(&mut bench.service).as_secs_f64() * 1e6,
        median(&mut bench.handshake).as_secs_f64() * 1e6
    );

    let c = interleaved(n, &mut bench, Bench::ours_populate, bare_populate);
    println!(
        "## Populate (handshake to detached; bare: {} KiB UFFDIO_COPY chunks + unregister)\n",
        DEFAULT_CHUNK_BYTES / 1024
    );
    println!("| handler | median | MiB/s | throughput ratio |");
    println!("|---|---|---|---|");
    for (name, d, ratio) in [
        ("bare chunked UFFDIO_COPY", c.bare, "1.00×".to_owned()),
        ("firehost PageServer (Populate)", c.ours, c.paired()),
    ] {
        println!(
            "| {name} | {} | {:.0} | {ratio} |",
            ms(d),
            mib_per_s(bytes, d)
        );
    }
    println!(
        "\nRatio of the medians: {:.2}×.\n",
        c.bare.as_secs_f64() / c.ours.as_secs_f64()
    );

    let set = WorkingSet {
        page_size_bytes: PAGE,
        pages: (0..pages).step_by(SET_STRIDE as usize).collect(),
        truncated: false,
    };
    let set_pages = set.pages.len() as u64;
    let c = interleaved(
        n,
        &mut bench,
        |b| b.ours_prefetch(&set),
        |f| bare_prefetch(f, &set),
    );
    let mut faulted: Vec<Duration> = (0..n).map(|_| bench.ours_set_on_demand(&set)).collect();
    let faulted = median(&mut faulted);
    println!(
        "## Prefetch of a working set ({set_pages} pages, every {SET_STRIDE}th), then touching it: time to ready\n"
    );
    println!("| path | median | MiB/s | throughput ratio |");
    println!("|---|---|---|---|");
    let set_bytes = set_pages * PAGE;
    for (name, d, ratio) in [
        (
            "bare UFFDIO_COPY per page, then touch",
            c.bare,
            "1.00×".to_owned(),
        ),
        ("firehost PageServer (Prefetch)", c.ours, c.paired()),
        (
            "firehost PageServer (OnDemand, same pages faulted)",
            faulted,
            format!("{:.2}×", c.bare.as_secs_f64() / faulted.as_secs_f64()),
        ),
    ] {
        println!(
            "| {name} | {} | {:.0} | {ratio} |",
            ms(d),
            mib_per_s(set_bytes, d)
        );
    }
    println!();
}
