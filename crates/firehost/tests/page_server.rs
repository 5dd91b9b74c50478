//! The userfaultfd page server against a harness that plays Firecracker:
//! real userfaultfd, real anonymous "guest memory", the real handshake
//! (mappings JSON with the descriptor in `SCM_RIGHTS`). Needs the
//! `userfaultfd` syscall or `/dev/userfaultfd` (root has both); without them
//! each test prints "skipped" and passes.

use std::time::{Duration, Instant};

use firehost::snapshot::uffd::sys::{Userfaultfd, features};
use firehost::snapshot::uffd::{
    FenceOutcome, PageServer, PageServerError, PageServerOptions, PageServerPhase, ServeMode, Wait,
};
use harness::{FakeVmm, PAGE, TestFiles, expected_page, within};
use rustix::io::Errno;

const LONG: Duration = Duration::from_secs(10);

/// The harness: a Firecracker stand-in and helpers. Test code.
mod harness {
    use std::io::IoSlice;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::path::{Path, PathBuf};
    use std::sync::mpsc;
    use std::time::Duration;

    use firehost::snapshot::uffd::GuestRegionMapping;
    use firehost::snapshot::uffd::sys::{Userfaultfd, features};
    use rustix::event::{PollFd, PollFlags, Timespec};
    use rustix::io::Errno;
    use rustix::mm::{Advice, MapFlags, ProtFlags};
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

    /// The page size the harness uses (the host's).
    pub const PAGE: u64 = 4096;

    /// Runs `f` on its own thread and panics if it takes longer than
    /// `limit`: a fault that blocks forever fails the test instead of
    /// hanging it.
    pub fn within<T: Send + 'static>(
        what: &str,
        limit: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(limit) {
            Ok(v) => v,
            Err(_) => panic!("{what}: no answer within {limit:?} (a fault hangs)"),
        }
    }

    /// The content of memory-file page `index`: every 8-byte word holds
    /// `(index + 1) << 32 | word`, so no page is zero and no two are equal.
    pub fn expected_page(index: u64) -> Vec<u8> {
        (0..PAGE / 8)
            .flat_map(|w| (((index + 1) << 32) | w).to_ne_bytes())
            .collect()
    }

    /// A page of zeros.
    pub fn zero_page() -> Vec<u8> {
        vec![0u8; usize::try_from(PAGE).unwrap()]
    }

    /// A directory with a memory file and room for sockets.
    pub struct TestFiles {
        pub dir: tempfile::TempDir,
        pub memory: PathBuf,
    }

    impl TestFiles {
        /// A memory file of `pages` patterned pages.
        pub fn new(pages: u64) -> TestFiles {
            let dir = tempfile::tempdir().unwrap();
            let memory = dir.path().join("memory");
            let bytes: Vec<u8> = (0..pages).flat_map(expected_page).collect();
            std::fs::write(&memory, bytes).unwrap();
            TestFiles { dir, memory }
        }

        pub fn socket(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
    }

    /// One guest region: an anonymous mapping in this process.
    #[derive(Debug, Clone, Copy)]
    pub struct Region {
        pub addr: usize,
        pub pages: u64,
        pub file_page: u64,
    }

    /// Plays Firecracker's side of a UFFD restore.
    pub struct FakeVmm {
        pub uffd: Userfaultfd,
        pub regions: Vec<Region>,
        /// Kept open after the handshake, as Firecracker does.
        stream: Option<UnixStream>,
    }

    /// Whether this host lets us create a userfaultfd at all.
    pub fn uffd_available() -> bool {
        match Userfaultfd::create(true) {
            Ok(_) => true,
            Err(e) => {
                println!("skipped: cannot create a userfaultfd ({e})");
                false
            }
        }
    }

    impl FakeVmm {
        /// Maps one anonymous region per `(pages, file offset in pages)`,
        /// creates a non-blocking userfaultfd with `EVENT_REMOVE` and
        /// registers every region in missing mode, as Firecracker does.
        pub fn new(layout: &[(u64, u64)]) -> FakeVmm {
            let uffd = Userfaultfd::create(true).unwrap();
            uffd.api(features::EVENT_REMOVE).unwrap();
            let mut regions = Vec::new();
            for &(pages, file_page) in layout {
                let len = usize::try_from(pages * PAGE).unwrap();
                // SAFETY: a fresh private anonymous mapping at an address the
                // kernel picks.
                let ptr = unsafe {
                    rustix::mm::mmap_anonymous(
                        std::ptr::null_mut(),
                        len,
                        ProtFlags::READ | ProtFlags::WRITE,
                        MapFlags::PRIVATE,
                    )
                }
                .unwrap();
                // SAFETY: the mapping is ours, fresh, and nothing reads it
                // before a server resolves its pages.
                unsafe { uffd.register_missing(ptr as u64, pages * PAGE) }.unwrap();
                regions.push(Region {
                    addr: ptr as usize,
                    pages,
                    file_page,
                });
            }
            FakeVmm {
                uffd,
                regions,
                stream: None,
            }
        }

        /// The mappings Firecracker v1.16.1 would send (both page-size
        /// fields, both in bytes).
        pub fn mappings(&self) -> Vec<GuestRegionMapping> {
            self.regions
                .iter()
                .map(|r| GuestRegionMapping {
                    base_host_virt_addr: r.addr as u64,
                    size: r.pages * PAGE,
                    offset: r.file_page * PAGE,
                    page_size: Some(PAGE),
                    page_size_kib: Some(PAGE),
                })
                .collect()
        }

        /// Connects and sends the mappings with the userfaultfd.
        pub fn connect(&mut self, socket: &Path) {
            let json = serde_json::to_vec(&self.mappings()).unwrap();
            self.send(socket, &json, true);
        }

        /// Connects and sends `payload`, with the descriptor if `with_fd`.
        pub fn send(&mut self, socket: &Path, payload: &[u8], with_fd: bool) {
            let stream = UnixStream::connect(socket).unwrap();
            let fds = [self.uffd.as_fd()];
            let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if with_fd {
                assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
            }
            let sent = rustix::net::sendmsg(
                &stream,
                &[IoSlice::new(payload)],
                &mut control,
                SendFlags::empty(),
            )
            .unwrap();
            assert_eq!(sent, payload.len());
            self.stream = Some(stream);
        }

        /// The address of page `page` of region `region`.
        pub fn addr(&self, region: usize, page: u64) -> usize {
            let r = self.regions[region];
            assert!(page < r.pages);
            r.addr + usize::try_from(page * PAGE).unwrap()
        }

        /// The memory-file page behind a guest page.
        pub fn file_page(&self, region: usize, page: u64) -> u64 {
            self.regions[region].file_page + page
        }

        /// Whether a fault is waiting for a server (the descriptor is
        /// readable), without consuming it.
        pub fn fault_pending(&self) -> bool {
            let mut fds = [PollFd::new(&self.uffd, PollFlags::IN)];
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            rustix::event::poll(&mut fds, Some(&zero)).unwrap() > 0
        }

        /// `madvise(MADV_DONTNEED)` on pages `[first, first + count)`, as the
        /// balloon does. Blocks until a server reads the remove event.
        pub fn dontneed(&self, region: usize, first: u64, count: u64) {
            let addr = self.addr(region, first);
            // SAFETY: the range lies in our own mapping; dropping its pages
            // is what the test wants, and nothing holds references into it.
            unsafe {
                rustix::mm::madvise(
                    addr as *mut _,
                    usize::try_from(count * PAGE).unwrap(),
                    Advice::LinuxDontNeed,
                )
            }
            .unwrap();
        }
    }

    impl Drop for FakeVmm {
        fn drop(&mut self) {
            for r in &self.regions {
                // SAFETY: unmapping exactly what `new` mapped.
                let _ = unsafe {
                    rustix::mm::munmap(r.addr as *mut _, usize::try_from(r.pages * PAGE).unwrap())
                };
            }
        }
    }

    /// Reads a page by touching it, as a vCPU does: faults on a missing page.
    pub fn touch(addr: usize) -> Vec<u8> {
        let mut out = vec![0u8; usize::try_from(PAGE).unwrap()];
        for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
            // SAFETY: `addr` is a page of a live mapping of the test; a
            // volatile read makes every word an actual access.
            let word = unsafe { std::ptr::read_volatile((addr as *const u64).add(i)) };
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        out
    }

    /// Reads the first word of a page through a system call (a pipe write
    /// copies from it), as KVM reads guest memory: a poisoned page is
    /// `EFAULT` here instead of a `SIGBUS` that would kill the test.
    pub fn probe(addr: usize) -> Result<u64, Errno> {
        let (r, w) = rustix::pipe::pipe().unwrap();
        // SAFETY: the 8 bytes lie in a live mapping of the test; only the
        // kernel reads them, and a fault there is reported as EFAULT.
        let src = unsafe { std::slice::from_raw_parts(addr as *const u8, 8) };
        let n = rustix::io::write(&w, src)?;
        assert_eq!(n, 8);
        let mut word = [0u8; 8];
        rustix::io::read(&r, &mut word).unwrap();
        Ok(u64::from_ne_bytes(word))
    }
}

/// A `FakeVmm`, its files and a server in `options` mode, connected.
async fn connected(
    layout: &[(u64, u64)],
    file_pages: u64,
    options: impl Into<PageServerOptions>,
) -> Option<(TestFiles, FakeVmm, PageServer)> {
    if !harness::uffd_available() {
        return None;
    }
    let files = TestFiles::new(file_pages);
    let server = PageServer::bind(files.socket("uffd.sock"), &files.memory, options).unwrap();
    let mut vmm = FakeVmm::new(layout);
    vmm.connect(server.socket_path());
    server.wait_connected(LONG).await.unwrap();
    Some((files, vmm, server))
}

/// The server's counters once `done` holds of them, within [`LONG`]: for
/// counts the server updates just after the event that a test observed.
fn settled(
    server: &PageServer,
    done: impl Fn(&firehost::snapshot::uffd::PageServerStats) -> bool,
) -> firehost::snapshot::uffd::PageServerStats {
    let deadline = Instant::now() + LONG;
    loop {
        let stats = server.stats();
        if done(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "counters never settled: {stats:?}"
        );
        std::thread::yield_now();
    }
}

/// Touches every page of every region from one thread and checks it.
fn check_all_pages(vmm: &FakeVmm) {
    let pages: Vec<(usize, u64)> = vmm
        .regions
        .iter()
        .enumerate()
        .flat_map(|(ri, r)| (0..r.pages).map(move |p| (ri, p)))
        .map(|(ri, p)| (vmm.addr(ri, p), vmm.file_page(ri, p)))
        .collect();
    within("reading every page", LONG, move || {
        for (addr, file_page) in pages {
            assert_eq!(
                harness::touch(addr),
                expected_page(file_page),
                "file page {file_page}"
            );
        }
    });
}

#[tokio::test]
async fn faults_in_several_regions_read_the_file_at_each_offset() {
    // Region 1 starts at file page 24, past a gap, to prove `offset` is used.
    let Some((_files, vmm, server)) = connected(&[(16, 0), (8, 24)], 32, ServeMode::OnDemand).await
    else {
        return;
    };
    let info = server.connection().unwrap();
    assert_eq!(info.peer_pid, Some(std::process::id() as i32));
    check_all_pages(&vmm);
    // Timings are taken just after each fault's page is delivered.
    let stats = settled(&server, |s| s.fault_service_ns_max > 0);
    assert_eq!(stats.faults_served, 24);
    assert_eq!(stats.pages_copied, 24);
    assert_eq!(stats.bytes_copied, 24 * PAGE);
    assert!(stats.fault_service_ns_total >= stats.fault_service_ns_max);
    let report = server.shutdown().await.unwrap();
    // Every page was served: nothing left to poison.
    assert!(matches!(
        report.phase,
        PageServerPhase::Stopped {
            fence: FenceOutcome::Poisoned { pages: 0 }
        }
    ));
}

#[tokio::test]
async fn concurrent_faults_from_many_threads_copy_each_page_once() {
    const PAGES: u64 = 256;
    let Some((_files, vmm, server)) = connected(&[(PAGES, 0)], PAGES, ServeMode::OnDemand).await
    else {
        return;
    };
    let base = vmm.addr(0, 0);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                // Each thread walks the pages in its own order.
                for i in 0..PAGES {
                    let page = (i * (2 * t + 1) + t * 37) % PAGES;
                    let got = harness::touch(base + usize::try_from(page * PAGE).unwrap());
                    assert_eq!(got, expected_page(page), "page {page}");
                }
            })
        })
        .collect();
    within("four threads faulting", LONG, move || {
        for t in threads {
            t.join().unwrap();
        }
    });
    let stats = server.stats();
    assert_eq!(stats.pages_copied, PAGES, "each page copied exactly once");
    assert!(stats.faults_served >= PAGES);
    // A duplicate fault's waiter was woken by the first copy, so the server
    // may still be answering duplicates (with EEXIST) after the threads are
    // done: every fault beyond the first per page ends up counted as such.
    settled(&server, |s| {
        s.faults_served - PAGES == s.faults_already_present
    });
}

#[tokio::test]
async fn populate_copies_every_page_then_detaches_and_the_vm_stands_alone() {
    const PAGES: u64 = 512;
    // Small chunks: population takes many rounds, faults interleave.
    let options = PageServerOptions::new(ServeMode::Populate).chunk_bytes(8 * PAGE);
    let Some((_files, vmm, server)) = connected(&[(384, 0), (128, 384)], PAGES, options).await
    else {
        return;
    };
    let (a, b) = (vmm.addr(0, 300), vmm.addr(1, 100));
    within("faults during population", LONG, move || {
        assert_eq!(harness::touch(a), expected_page(300));
        assert_eq!(harness::touch(b), expected_page(484));
    });
    let stats = server.wait_detached(LONG).await.unwrap();
    assert!(matches!(server.phase(), PageServerPhase::Detached));
    assert_eq!(stats.pages_copied, PAGES);
    assert_eq!(
        stats.pages_populated + stats.faults_served - stats.faults_already_present,
        PAGES,
        "every page copied once, by a fault or by population"
    );
    // The server is gone; every page is present, so reading never blocks.
    check_all_pages(&vmm);
    assert!(!vmm.fault_pending());
    // The ranges were unregistered: the balloon's madvise does not wait for
    // a reader, and dropped pages read as zeros from the kernel.
    let addr = vmm.addr(0, 10);
    let vmm = within("madvise after detach", LONG, move || {
        vmm.dontneed(0, 10, 4);
        vmm
    });
    assert_eq!(harness::touch(addr), harness::zero_page());
    assert_eq!(
        server.stats().pages_copied,
        PAGES,
        "the server did nothing more"
    );
    let report = server.shutdown().await.unwrap();
    assert!(matches!(report.phase, PageServerPhase::Detached));
    drop(vmm);
}

#[tokio::test]
async fn a_recorded_working_set_is_prefetched_before_any_fault() {
    if !harness::uffd_available() {
        return;
    }
    let files = TestFiles::new(64);
    // First restore: record what the "guest" touches.
    let recorder = PageServer::bind(
        files.socket("record.sock"),
        &files.memory,
        PageServerOptions::new(ServeMode::OnDemand).record(100),
    )
    .unwrap();
    let mut vmm = FakeVmm::new(&[(32, 0), (32, 32)]);
    vmm.connect(recorder.socket_path());
    recorder.wait_connected(LONG).await.unwrap();
    let touched = [(0, 5), (1, 2), (0, 9), (0, 5), (1, 30), (0, 0)];
    let addrs: Vec<usize> = touched.iter().map(|&(r, p)| vmm.addr(r, p)).collect();
    within("recording faults", LONG, move || {
        for a in addrs {
            harness::touch(a);
        }
    });
    let set = recorder.working_set().unwrap();
    assert_eq!(set.page_size_bytes, PAGE);
    assert_eq!(
        set.pages,
        vec![5, 34, 9, 62, 0],
        "first-touch order, file pages"
    );
    assert!(!set.truncated);
    recorder.shutdown().await.unwrap();
    drop(vmm);

    // Second restore: replay it.
    let server = PageServer::bind(
        files.socket("replay.sock"),
        &files.memory,
        ServeMode::Prefetch(set.clone()),
    )
    .unwrap();
    let mut vmm = FakeVmm::new(&[(32, 0), (32, 32)]);
    vmm.connect(server.socket_path());
    let stats = server.wait_prefetched(LONG).await.unwrap();
    assert_eq!(stats.pages_prefetched, 5);
    assert_eq!(stats.faults_served, 0);
    let addrs: Vec<(usize, u64)> = touched
        .iter()
        .map(|&(r, p)| (vmm.addr(r, p), vmm.file_page(r, p)))
        .collect();
    within("reading prefetched pages", LONG, move || {
        for (a, file_page) in addrs {
            assert_eq!(harness::touch(a), expected_page(file_page));
        }
    });
    assert_eq!(
        server.stats().faults_served,
        0,
        "prefetched pages never fault"
    );
    let other = vmm.addr(0, 20);
    within("a page outside the set", LONG, move || {
        harness::touch(other)
    });
    assert_eq!(server.stats().faults_served, 1);
}

#[tokio::test]
async fn recording_stops_at_its_limit_and_says_so() {
    let options = PageServerOptions::new(ServeMode::OnDemand).record(2);
    let Some((_files, vmm, server)) = connected(&[(8, 0)], 8, options).await else {
        return;
    };
    check_all_pages(&vmm);
    let set = server.working_set().unwrap();
    assert_eq!(set.pages, vec![0, 1]);
    assert!(set.truncated);
}

#[tokio::test]
async fn removed_ranges_read_as_zeros_not_file_content() {
    let Some((_files, vmm, server)) = connected(&[(16, 0)], 16, ServeMode::OnDemand).await else {
        return;
    };
    let first8: Vec<usize> = (0..8).map(|p| vmm.addr(0, p)).collect();
    within("serving pages 0..8", LONG, move || {
        for a in first8 {
            harness::touch(a);
        }
    });
    // The balloon drops pages 2..6 (served) and 10..12 (never touched).
    let vmm = within("madvise with a server", LONG, move || {
        vmm.dontneed(0, 2, 4);
        vmm.dontneed(0, 10, 2);
        vmm
    });
    // madvise returns once the server has *read* the event; the counters
    // follow a moment later.
    let stats = settled(&server, |s| s.removed_ranges == 2);
    assert_eq!(stats.removed_bytes, 6 * PAGE);
    let pages: Vec<(u64, usize)> = (0..16).map(|p| (p, vmm.addr(0, p))).collect();
    within("reading after the removal", LONG, move || {
        for (page, addr) in pages {
            let want = if (2..6).contains(&page) || (10..12).contains(&page) {
                harness::zero_page()
            } else {
                expected_page(page)
            };
            assert_eq!(harness::touch(addr), want, "page {page}");
        }
    });
    assert_eq!(server.stats().zero_pages, 6);
}

#[tokio::test]
async fn dropping_the_server_fences_memory_so_faults_fail_instead_of_hanging() {
    let Some((_files, vmm, server)) = connected(&[(64, 0)], 64, ServeMode::OnDemand).await else {
        return;
    };
    let (served, missing) = (vmm.addr(0, 0), vmm.addr(0, 1));
    within("serving page 0", LONG, move || harness::touch(served));
    let started = Instant::now();
    drop(server);
    let dropped_in = started.elapsed();
    let started = Instant::now();
    let probe = within("fault after the drop", LONG, move || {
        harness::probe(missing)
    });
    println!(
        "drop took {dropped_in:?}; a fault on a never-served page then failed with {probe:?} in {:?}",
        started.elapsed()
    );
    assert_eq!(probe, Err(Errno::FAULT), "poisoned, not zero, not a hang");
    // What was served stays, and it is no longer tracked: no event waits.
    assert_eq!(harness::touch(served), expected_page(0));
    assert!(!vmm.fault_pending());
}

#[tokio::test]
async fn dropping_the_server_while_threads_fault_never_hangs_them() {
    const PAGES: u64 = 1024;
    let Some((_files, vmm, server)) = connected(&[(PAGES, 0)], PAGES, ServeMode::OnDemand).await
    else {
        return;
    };
    let base = vmm.addr(0, 0);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(5));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let mut served = 0;
                for i in 0..PAGES / 4 {
                    let page = i * 4 + t;
                    match harness::probe(base + usize::try_from(page * PAGE).unwrap()) {
                        Ok(word) => {
                            assert_eq!(word, (page + 1) << 32, "page {page}: right content");
                            served += 1;
                        }
                        Err(e) => assert_eq!(e, Errno::FAULT, "page {page}"),
                    }
                }
                served
            })
        })
        .collect();
    barrier.wait();
    drop(server);
    let served: u64 = within("threads racing the drop", LONG, move || {
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });
    println!("{served} of {PAGES} pages served before the fence");
}

#[tokio::test]
async fn short_memory_file_is_a_typed_error_and_wakes_a_waiting_fault_with_efault() {
    if !harness::uffd_available() {
        return;
    }
    let files = TestFiles::new(8);
    let server = PageServer::bind(
        files.socket("uffd.sock"),
        &files.memory,
        ServeMode::OnDemand,
    )
    .unwrap();
    let mut vmm = FakeVmm::new(&[(4, 0), (8, 4)]);
    // A vCPU faults before the handshake: it sleeps until someone answers.
    let addr = vmm.addr(0, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(harness::probe(addr));
    });
    let waited = Instant::now();
    while !vmm.fault_pending() {
        assert!(waited.elapsed() < LONG, "the probe never faulted");
        std::thread::yield_now();
    }
    vmm.connect(server.socket_path());
    match server.wait_connected(LONG).await.unwrap_err() {
        PageServerError::MemoryFileTooShort {
            region,
            needed_bytes,
            file_bytes,
        } => assert_eq!((region, needed_bytes, file_bytes), (1, 12 * PAGE, 8 * PAGE)),
        other => panic!("unexpected {other:?}"),
    }
    // The server fenced the regions on its way out: the sleeping fault wakes.
    assert_eq!(
        rx.recv_timeout(LONG).expect("the fault hangs"),
        Err(Errno::FAULT)
    );
    assert!(matches!(server.phase(), PageServerPhase::Failed(_)));
    assert!(server.shutdown().await.is_err());
}

#[tokio::test]
async fn a_second_vm_is_served_while_the_first_server_is_stuck() {
    if !harness::uffd_available() {
        return;
    }
    let files = TestFiles::new(32);
    let first =
        PageServer::bind(files.socket("a.sock"), &files.memory, ServeMode::OnDemand).unwrap();
    let second =
        PageServer::bind(files.socket("b.sock"), &files.memory, ServeMode::OnDemand).unwrap();
    // VM A faults, and its server has no descriptor yet: A's vCPU sleeps.
    let mut vm_a = FakeVmm::new(&[(32, 0)]);
    let a_addr = vm_a.addr(0, 7);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(harness::touch(a_addr));
    });
    let waited = Instant::now();
    while !vm_a.fault_pending() {
        assert!(waited.elapsed() < LONG, "A never faulted");
        std::thread::yield_now();
    }
    // VM B restores from the same bundle and runs to completion meanwhile.
    let mut vm_b = FakeVmm::new(&[(32, 0)]);
    vm_b.connect(second.socket_path());
    second.wait_connected(LONG).await.unwrap();
    check_all_pages(&vm_b);
    assert_eq!(second.stats().pages_copied, 32);
    assert!(rx.try_recv().is_err(), "A is still waiting");
    // A's server gets its descriptor: the pending fault is served.
    vm_a.connect(first.socket_path());
    first.wait_connected(LONG).await.unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap(), expected_page(7));
    assert_eq!(first.stats().faults_served, 1);
}

#[tokio::test]
async fn the_socket_takes_one_connection_and_is_private() {
    let Some((files, _vmm, server)) = connected(&[(4, 0)], 4, ServeMode::OnDemand).await else {
        return;
    };
    assert!(!files.socket("uffd.sock").exists(), "removed after accept");
    drop(server);
    // Mode 0600 while listening.
    let other =
        PageServer::bind(files.socket("b.sock"), &files.memory, ServeMode::OnDemand).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(other.socket_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn waiting_for_a_firecracker_that_never_comes_times_out() {
    let files = TestFiles::new(4);
    let server = PageServer::bind(
        files.socket("uffd.sock"),
        &files.memory,
        ServeMode::OnDemand,
    )
    .unwrap();
    let err = server
        .wait_connected(Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        PageServerError::Timeout {
            waited_for: Wait::Connection,
            ..
        }
    ));
    let report = server.shutdown().await.unwrap();
    assert!(matches!(
        report.phase,
        PageServerPhase::Stopped {
            fence: FenceOutcome::NotNeeded
        }
    ));
    assert!(!files.socket("uffd.sock").exists());
}

#[tokio::test]
async fn bad_handshakes_are_typed_errors() {
    if !harness::uffd_available() {
        return;
    }
    let files = TestFiles::new(4);
    type Check = fn(&PageServerError) -> bool;
    let cases: Vec<(&str, &[u8], bool, Check)> = vec![
        ("not json", b"hello", true, |e| {
            matches!(e, PageServerError::MalformedHandshake { .. })
        }),
        ("no descriptor", b"[]", false, |e| {
            matches!(e, PageServerError::MissingUffd)
        }),
        ("no regions", b"[]", true, |e| {
            matches!(e, PageServerError::NoMappings)
        }),
        (
            "unaligned",
            br#"[{"base_host_virt_addr":4097,"size":4096,"offset":0,"page_size":4096}]"#,
            true,
            |e| matches!(e, PageServerError::InvalidMapping { region: 0, .. }),
        ),
    ];
    for (i, (what, payload, with_fd, check)) in cases.into_iter().enumerate() {
        let server = PageServer::bind(
            files.socket(&format!("{i}.sock")),
            &files.memory,
            ServeMode::OnDemand,
        )
        .unwrap();
        let mut vmm = FakeVmm::new(&[(4, 0)]);
        vmm.send(server.socket_path(), payload, with_fd);
        let err = server.wait_connected(LONG).await.unwrap_err();
        assert!(check(&err), "{what}: got {err:?}");
    }
}

/// Why the server fences rather than just closing its descriptor: the
/// kernel facts, checked without a server.
#[test]
fn kernel_closing_one_copy_leaves_faults_asleep_closing_the_last_yields_zero_pages() {
    if !harness::uffd_available() {
        return;
    }
    let uffd = Userfaultfd::create(true).unwrap();
    uffd.api(features::EVENT_REMOVE).unwrap();
    let len = usize::try_from(4 * PAGE).unwrap();
    // SAFETY: a fresh private anonymous mapping at an address the kernel
    // picks.
    let ptr = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::PRIVATE,
        )
    }
    .unwrap();
    // SAFETY: the mapping is fresh and only the probe thread reads it.
    unsafe { uffd.register_missing(ptr as u64, 4 * PAGE) }.unwrap();
    // The "server's" copy of the descriptor; the other stays with the VMM.
    let server_copy = rustix::io::dup(&uffd).unwrap();
    let addr = ptr as usize;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(harness::touch(addr));
    });
    drop(server_copy);
    // Firecracker still holds a copy: the fault sleeps, nobody answers.
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "a fault was answered with no server"
    );
    // The last copy closes: the kernel unregisters the ranges and wakes the
    // fault, which is then handled as plain anonymous memory: zeros, not the
    // snapshot's content.
    drop(uffd);
    assert_eq!(
        rx.recv_timeout(LONG).expect("still asleep"),
        harness::zero_page()
    );
    // SAFETY: unmapping the test's own region, which nothing uses now.
    unsafe { rustix::mm::munmap(ptr, len) }.unwrap();
}
