//! The server thread: accept Firecracker, take the handshake, then serve
//! faults and do the background work (prefetch, populate) in bounded chunks
//! between them.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use tokio::sync::watch;

use super::memory::{self, GuestRegionMapping, MemoryFile, Region};
use super::sys::{FillError, UffdEvent, Userfaultfd};
use super::{
    ConnectionInfo, FenceOutcome, PageServerError, PageServerOptions, PageServerPhase,
    PageServerStats, ServeMode, UffdOp, WorkingSet,
};

/// The largest handshake accepted: Firecracker's is a few hundred bytes per
/// region.
pub(crate) const MAX_HANDSHAKE_BYTES: usize = 64 * 1024;

/// Counters shared with the handle; written by the server thread only.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    faults_served: AtomicU64,
    faults_already_present: AtomicU64,
    pages_copied: AtomicU64,
    bytes_copied: AtomicU64,
    zero_pages: AtomicU64,
    pages_prefetched: AtomicU64,
    prefetch_pages_skipped: AtomicU64,
    pages_populated: AtomicU64,
    removed_ranges: AtomicU64,
    removed_bytes: AtomicU64,
    events_ignored: AtomicU64,
    retries: AtomicU64,
    fault_service_ns_total: AtomicU64,
    fault_service_ns_max: AtomicU64,
    pages_fenced: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn sub(c: &AtomicU64, n: u64) {
    c.fetch_sub(n, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> PageServerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PageServerStats {
            faults_served: get(&self.faults_served),
            faults_already_present: get(&self.faults_already_present),
            pages_copied: get(&self.pages_copied),
            bytes_copied: get(&self.bytes_copied),
            zero_pages: get(&self.zero_pages),
            pages_prefetched: get(&self.pages_prefetched),
            prefetch_pages_skipped: get(&self.prefetch_pages_skipped),
            pages_populated: get(&self.pages_populated),
            removed_ranges: get(&self.removed_ranges),
            removed_bytes: get(&self.removed_bytes),
            events_ignored: get(&self.events_ignored),
            retries: get(&self.retries),
            fault_service_ns_total: get(&self.fault_service_ns_total),
            fault_service_ns_max: get(&self.fault_service_ns_max),
            pages_fenced: get(&self.pages_fenced),
        }
    }
}

/// First-touch order of faulted pages, bounded.
#[derive(Debug)]
pub(crate) struct Recorder {
    pub(crate) limit: usize,
    pub(crate) set: WorkingSet,
}

/// What the handle and the thread share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) counters: Counters,
    pub(crate) recorder: Mutex<Option<Recorder>>,
    pub(crate) phase: watch::Sender<PageServerPhase>,
    pub(crate) connection: OnceLock<ConnectionInfo>,
}

/// Everything the thread owns.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) listener: UnixListener,
    pub(crate) socket_path: PathBuf,
    pub(crate) memory: MemoryFile,
    pub(crate) options: PageServerOptions,
    pub(crate) stop: Arc<OwnedFd>,
    pub(crate) shared: Arc<Shared>,
}

/// Why serving ended.
enum End {
    Stop,
    PeerGone,
    Detached,
    Failed(PageServerError),
}

impl Server {
    /// The thread's body: runs to a terminal phase and publishes it.
    pub(crate) fn run(self) {
        let phase = self.run_inner();
        let _ = std::fs::remove_file(&self.socket_path);
        self.shared.phase.send_replace(phase);
    }

    fn run_inner(&self) -> PageServerPhase {
        let stream = match self.accept() {
            Ok(Some(stream)) => stream,
            Ok(None) => {
                return PageServerPhase::Stopped {
                    fence: FenceOutcome::NotNeeded,
                };
            }
            Err(e) => return PageServerPhase::Failed(e),
        };
        // Firecracker connects once per restore; nobody else may.
        let _ = std::fs::remove_file(&self.socket_path);
        let (uffd, mappings) = match self.receive_handshake(&stream) {
            Ok(Some(got)) => got,
            Ok(None) => {
                return PageServerPhase::Stopped {
                    fence: FenceOutcome::NotNeeded,
                };
            }
            Err(e) => return PageServerPhase::Failed(e),
        };
        let regions = match self.check(&mappings) {
            Ok(regions) => regions,
            Err(e) => {
                // The VM cannot be served: make its faults fail rather than
                // hang, when the regions themselves are sound.
                if let Ok(regions) = memory::validate_shape(&mappings) {
                    let mut state = State::new(self, &uffd, regions);
                    let fence = state.fence();
                    tracing::warn!(error = %e, ?fence, "page server refused the handshake");
                }
                return PageServerPhase::Failed(e);
            }
        };
        let peer_pid = rustix::net::sockopt::socket_peercred(&stream)
            .ok()
            .map(|c| c.pid.as_raw_nonzero().get());
        let pidfd = peer_pid.and_then(|pid| {
            let pid = rustix::process::Pid::from_raw(pid)?;
            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
        });
        let _ = self
            .shared
            .connection
            .set(ConnectionInfo { mappings, peer_pid });
        let mut state = State::new(self, &uffd, regions);
        state.start_background();
        self.shared.phase.send_replace(state.phase());
        match state.serve(pidfd.as_ref()) {
            End::Detached => PageServerPhase::Detached,
            End::PeerGone => PageServerPhase::PeerExited,
            End::Stop => PageServerPhase::Stopped {
                fence: state.fence(),
            },
            End::Failed(e) => {
                let fence = state.fence();
                tracing::warn!(error = %e, ?fence, "page server failed while serving");
                PageServerPhase::Failed(e)
            }
        }
    }

    /// Waits for Firecracker's connection, or for a stop (`None`).
    fn accept(&self) -> Result<Option<UnixStream>, PageServerError> {
        loop {
            let mut fds = [
                PollFd::new(&self.listener, PollFlags::IN),
                PollFd::new(self.stop.as_ref(), PollFlags::IN),
            ];
            poll(&mut fds, None)?;
            if !fds[1].revents().is_empty() {
                return Ok(None);
            }
            match self.listener.accept() {
                Ok((stream, _)) => return Ok(Some(stream)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(PageServerError::Accept {
                        source: Errno::from_io_error(&e).unwrap_or(Errno::IO),
                    });
                }
            }
        }
    }

    /// Reads the one message: the mappings JSON, with the userfaultfd in
    /// `SCM_RIGHTS`. The JSON may in principle arrive in pieces (it is a
    /// stream socket), so reading goes on until it parses, within the
    /// handshake timeout. `None` means a stop came first.
    fn receive_handshake(
        &self,
        stream: &UnixStream,
    ) -> Result<Option<(Userfaultfd, Vec<GuestRegionMapping>)>, PageServerError> {
        let timeout = self.options.handshake_timeout;
        let deadline = Instant::now() + timeout;
        let mut data: Vec<u8> = Vec::new();
        let mut uffd: Option<OwnedFd> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PageServerError::HandshakeTimeout { timeout });
            }
            let mut fds = [
                PollFd::new(stream, PollFlags::IN),
                PollFd::new(self.stop.as_ref(), PollFlags::IN),
            ];
            poll(&mut fds, Some(left))?;
            if !fds[1].revents().is_empty() {
                return Ok(None);
            }
            if fds[0].revents().is_empty() {
                continue;
            }
            let mut buf = [0u8; 4096];
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let msg = match rustix::net::recvmsg(
                stream,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
            ) {
                Ok(msg) => msg,
                Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
                Err(source) => return Err(PageServerError::ReceiveHandshake { source }),
            };
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    for fd in received {
                        // Keep the first; the others close on drop.
                        if uffd.is_none() {
                            uffd = Some(fd);
                        }
                    }
                }
            }
            if msg.bytes == 0 {
                return Err(PageServerError::HandshakeClosed {
                    received_bytes: data.len(),
                });
            }
            data.extend_from_slice(&buf[..msg.bytes]);
            if data.len() > MAX_HANDSHAKE_BYTES {
                return Err(PageServerError::HandshakeTooLarge {
                    limit_bytes: MAX_HANDSHAKE_BYTES,
                });
            }
            match serde_json::from_slice::<Vec<GuestRegionMapping>>(&data) {
                Ok(mappings) => {
                    let fd = uffd.ok_or(PageServerError::MissingUffd)?;
                    return Ok(Some((Userfaultfd::from_fd(fd), mappings)));
                }
                Err(e) if e.is_eof() => continue,
                Err(e) => {
                    return Err(PageServerError::MalformedHandshake {
                        source: Arc::new(e),
                    });
                }
            }
        }
    }

    /// Validates the mappings against the memory file and the mode.
    fn check(&self, mappings: &[GuestRegionMapping]) -> Result<Vec<Region>, PageServerError> {
        let regions = memory::validate(mappings, self.memory.map.len())?;
        if let ServeMode::Prefetch(set) = &self.options.mode
            && let Some(r) = regions.iter().find(|r| r.page_size != set.page_size_bytes)
        {
            return Err(PageServerError::WorkingSetPageSize {
                recorded_bytes: set.page_size_bytes,
                mapped_bytes: r.page_size,
            });
        }
        Ok(regions)
    }
}

fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> Result<(), PageServerError> {
    let ts = timeout.map(|t| Timespec {
        tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    loop {
        match rustix::event::poll(fds, ts.as_ref()) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(source) => return Err(PageServerError::Poll { source }),
        }
    }
}

/// A fixed-size bit set, one bit per page.
#[derive(Debug)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(len: u64) -> Bits {
        Bits(vec![
            0;
            usize::try_from(len.div_ceil(64))
                .expect("page counts fit in usize")
        ])
    }
    fn get(&self, i: u64) -> bool {
        self.0[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: u64) {
        self.0[(i / 64) as usize] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: u64) {
        self.0[(i / 64) as usize] &= !(1 << (i % 64));
    }
}

/// One region and what is known of its pages.
#[derive(Debug)]
struct RegionState {
    r: Region,
    /// Resolved by this server (copied, zeroed or found present).
    present: Bits,
    /// Dropped by a remove event since the restore: its content is zero.
    removed: Bits,
    /// Already in the recorded working set.
    recorded: Bits,
}

/// How to resolve a run of pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// From the memory file.
    Copy,
    /// With zeros (removed pages).
    Zero,
    /// With a poison mark (fencing).
    Poison,
}

/// Why a fill stopped early.
enum FillStop {
    /// `EAGAIN`: the address space is changing; read the events, retry.
    Retry,
    /// `EINVAL`/`ENOTTY` from `UFFDIO_POISON`: this kernel cannot poison.
    Unsupported(Errno),
    /// The process or its mapping is gone.
    PeerGone,
    Failed(PageServerError),
}

/// The background work of the mode.
#[derive(Debug)]
enum Background {
    None,
    /// Working-set pages as (region, page), copied in order from `next`.
    Prefetch {
        pages: Vec<(usize, u64)>,
        next: usize,
    },
    /// Every page, region by region, from the cursor.
    Populate {
        region: usize,
        page: u64,
    },
}

struct State<'a> {
    server: &'a Server,
    uffd: &'a Userfaultfd,
    regions: Vec<RegionState>,
    background: Background,
    /// Faults that met `EAGAIN`, retried after the next read of events.
    retry: Vec<u64>,
    zeros: Vec<u8>,
    events: Vec<UffdEvent>,
    host_page: u64,
}

impl<'a> State<'a> {
    fn new(server: &'a Server, uffd: &'a Userfaultfd, regions: Vec<Region>) -> State<'a> {
        let regions = regions
            .into_iter()
            .map(|r| RegionState {
                present: Bits::new(r.pages()),
                removed: Bits::new(r.pages()),
                recorded: Bits::new(r.pages()),
                r,
            })
            .collect();
        State {
            server,
            uffd,
            regions,
            background: Background::None,
            retry: Vec::new(),
            zeros: Vec::new(),
            events: Vec::with_capacity(64),
            host_page: memory::host_page_size(),
        }
    }

    fn counters(&self) -> &Counters {
        &self.server.shared.counters
    }

    fn start_background(&mut self) {
        self.background = match &self.server.options.mode {
            ServeMode::OnDemand => Background::None,
            ServeMode::Populate => Background::Populate { region: 0, page: 0 },
            ServeMode::Prefetch(set) => {
                let mut pages = Vec::with_capacity(set.pages.len());
                for &index in &set.pages {
                    match index
                        .checked_mul(set.page_size_bytes)
                        .and_then(|offset| self.locate_offset(offset))
                    {
                        Some(at) => pages.push(at),
                        None => add(&self.counters().prefetch_pages_skipped, 1),
                    }
                }
                Background::Prefetch { pages, next: 0 }
            }
        };
    }

    fn phase(&self) -> PageServerPhase {
        match self.background {
            Background::None => PageServerPhase::Serving,
            Background::Prefetch { .. } => PageServerPhase::Prefetching,
            Background::Populate { .. } => PageServerPhase::Populating,
        }
    }

    /// The (region, page) holding memory-file byte `offset`.
    fn locate_offset(&self, offset: u64) -> Option<(usize, u64)> {
        self.regions.iter().enumerate().find_map(|(i, s)| {
            let r = &s.r;
            (offset >= r.offset && offset - r.offset < r.size)
                .then(|| (i, (offset - r.offset) / r.page_size))
        })
    }

    /// The (region, page) holding guest address `addr`.
    fn locate_addr(&self, addr: u64) -> Option<(usize, u64)> {
        self.regions
            .iter()
            .position(|s| s.r.contains(addr))
            .map(|i| {
                (
                    i,
                    (addr - self.regions[i].r.base) / self.regions[i].r.page_size,
                )
            })
    }

    /// The event loop. Faults first; one chunk of background work between
    /// reads of events.
    fn serve(&mut self, pidfd: Option<&OwnedFd>) -> End {
        loop {
            let busy = !self.retry.is_empty() || !matches!(self.background, Background::None);
            // No allocation on the fault path: without a pidfd the stop
            // descriptor stands in as the third entry.
            let stop = self.server.stop.as_ref();
            let mut fds = [
                PollFd::new(self.uffd, PollFlags::IN),
                PollFd::new(stop, PollFlags::IN),
                PollFd::new(pidfd.unwrap_or(stop), PollFlags::IN),
            ];
            if let Err(e) = poll(&mut fds, busy.then_some(Duration::ZERO)) {
                return End::Failed(e);
            }
            if !fds[1].revents().is_empty() {
                return End::Stop;
            }
            if pidfd.is_some() && !fds[2].revents().is_empty() {
                return End::PeerGone;
            }
            if fds[0].revents().contains(PollFlags::ERR) {
                return End::Failed(PageServerError::UffdNotInitialized);
            }
            if let Some(end) = self.drain_events() {
                return end;
            }
            for address in std::mem::take(&mut self.retry) {
                add(&self.counters().retries, 1);
                if let Some(end) = self.serve_fault(address, Instant::now()) {
                    return end;
                }
            }
            if let Some(end) = self.background_step() {
                return end;
            }
        }
    }

    /// Reads and handles every pending event.
    fn drain_events(&mut self) -> Option<End> {
        loop {
            let mut events = std::mem::take(&mut self.events);
            let n = match self.uffd.read_events(&mut events) {
                Ok(n) => n,
                Err(source) => return Some(End::Failed(PageServerError::ReadEvents { source })),
            };
            let mut end = None;
            for &event in &events {
                let received = Instant::now();
                end = match event {
                    UffdEvent::PageFault { address, .. } => self.serve_fault(address, received),
                    UffdEvent::Remove { start, end } => {
                        self.remove(start, end);
                        None
                    }
                    UffdEvent::Other { code } => {
                        tracing::debug!(code, "ignored userfaultfd event");
                        add(&self.counters().events_ignored, 1);
                        None
                    }
                };
                if end.is_some() {
                    break;
                }
            }
            self.events = events;
            if end.is_some() || n == 0 {
                return end;
            }
        }
    }

    /// Resolves one fault: file content, or zeros for a removed page.
    fn serve_fault(&mut self, address: u64, received: Instant) -> Option<End> {
        let Some((ri, page)) = self.locate_addr(address) else {
            add(&self.counters().events_ignored, 1);
            return None;
        };
        let how = if self.regions[ri].removed.get(page) {
            Fill::Zero
        } else {
            Fill::Copy
        };
        // Count and record before the fill: the fill wakes the faulting
        // thread, and whoever saw the page must also see it counted.
        let c = self.counters();
        add(&c.faults_served, 1);
        self.record(ri, page);
        match self.fill(ri, page, 1, how) {
            Ok(()) => {}
            Err(FillStop::Retry) => {
                sub(&self.counters().faults_served, 1);
                self.retry.push(address);
                return None;
            }
            Err(FillStop::PeerGone) => return Some(End::PeerGone),
            Err(FillStop::Failed(e)) => return Some(End::Failed(e)),
            Err(FillStop::Unsupported(_)) => unreachable!("only poison is unsupported"),
        }
        let c = self.counters();
        let ns = u64::try_from(received.elapsed().as_nanos()).unwrap_or(u64::MAX);
        add(&c.fault_service_ns_total, ns);
        c.fault_service_ns_max.fetch_max(ns, Ordering::Relaxed);
        None
    }

    /// Appends a first-touched page to the working set, if recording.
    fn record(&mut self, ri: usize, page: u64) {
        let s = &mut self.regions[ri];
        if s.recorded.get(page) {
            return;
        }
        s.recorded.set(page);
        let offset = s.r.offset + page * s.r.page_size;
        let mut recorder = self.server.shared.recorder.lock().expect("recorder lock");
        if let Some(rec) = recorder.as_mut() {
            if rec.set.page_size_bytes == 0 {
                rec.set.page_size_bytes = s.r.page_size;
            }
            if rec.set.pages.len() < rec.limit {
                rec.set.pages.push(offset / rec.set.page_size_bytes);
            } else {
                rec.set.truncated = true;
            }
        }
    }

    /// Marks `[start, end)` removed: its pages are missing again and read as
    /// zeros from now on.
    fn remove(&mut self, start: u64, end: u64) {
        let c = &self.server.shared.counters;
        add(&c.removed_ranges, 1);
        add(&c.removed_bytes, end.saturating_sub(start));
        for s in &mut self.regions {
            let r = s.r;
            let lo = start.max(r.base);
            let hi = end.min(r.base + r.size);
            if lo >= hi {
                continue;
            }
            let first = (lo - r.base) / r.page_size;
            let last = (hi - r.base).div_ceil(r.page_size);
            for page in first..last {
                s.removed.set(page);
                s.present.clear(page);
            }
        }
    }

    /// Resolves pages `[first, first + count)` of region `ri` (all missing
    /// as far as this server knows) in as few ioctls as the kernel allows,
    /// stepping over pages found present.
    fn fill(&mut self, ri: usize, first: u64, count: u64, how: Fill) -> Result<(), FillStop> {
        let r = self.regions[ri].r;
        let ps = r.page_size;
        let end = first + count;
        let mut page = first;
        while page < end {
            let dst = r.base + page * ps;
            let len = (end - page) * ps;
            // A zero fill does one page per call.
            let want = if how == Fill::Zero { 1 } else { end - page };
            // Counted before the ioctl wakes anyone, corrected after.
            self.count(how, want, ps, add);
            let (op, result) = match how {
                Fill::Copy => {
                    let src = self
                        .server
                        .memory
                        .map
                        .source(r.offset + page * ps, len)
                        .expect("regions were validated against the memory file");
                    (UffdOp::Copy, self.uffd.copy(dst, src, len, true))
                }
                Fill::Zero if ps == self.host_page => {
                    (UffdOp::ZeroPage, self.uffd.zeropage(dst, ps))
                }
                Fill::Zero => {
                    // UFFDIO_ZEROPAGE does not do huge pages: copy zeros.
                    let ps_usize = usize::try_from(ps).expect("validated page sizes fit in usize");
                    if self.zeros.len() < ps_usize {
                        self.zeros = vec![0; ps_usize];
                    }
                    (
                        UffdOp::Copy,
                        self.uffd.copy(dst, self.zeros.as_ptr(), ps, true),
                    )
                }
                Fill::Poison => (UffdOp::Poison, self.uffd.poison(dst, len)),
            };
            let (done, errno) = match result {
                Ok(()) => (want, None),
                Err(FillError { errno, done_bytes }) => ((done_bytes / ps).min(want), Some(errno)),
            };
            self.count(how, want - done, ps, sub);
            self.mark_present(ri, page, done);
            page += done;
            let Some(errno) = errno else {
                continue;
            };
            match errno {
                Errno::AGAIN if done > 0 => continue,
                Errno::EXIST => {
                    // Present already (two faults on one page, say): make
                    // sure nobody still sleeps on it, and step over it.
                    self.regions[ri].present.set(page);
                    add(&self.counters().faults_already_present, 1);
                    let _ = self.uffd.wake(r.base + page * ps, ps);
                    page += 1;
                }
                Errno::AGAIN => return Err(FillStop::Retry),
                Errno::SRCH | Errno::NOENT => return Err(FillStop::PeerGone),
                Errno::INVAL | Errno::NOTTY if how == Fill::Poison => {
                    return Err(FillStop::Unsupported(errno));
                }
                source => {
                    return Err(FillStop::Failed(PageServerError::Uffd {
                        op,
                        address: r.base + page * ps,
                        source,
                    }));
                }
            }
        }
        Ok(())
    }

    /// Adds `pages` to (or, with `sub`, takes them from) the counters of
    /// `how`.
    fn count(&self, how: Fill, pages: u64, page_size: u64, op: fn(&AtomicU64, u64)) {
        if pages == 0 {
            return;
        }
        let c = self.counters();
        match how {
            Fill::Copy => {
                op(&c.pages_copied, pages);
                op(&c.bytes_copied, pages * page_size);
            }
            Fill::Zero => op(&c.zero_pages, pages),
            Fill::Poison => op(&c.pages_fenced, pages),
        }
    }

    fn mark_present(&mut self, ri: usize, first: u64, pages: u64) {
        let s = &mut self.regions[ri];
        for p in first..first + pages {
            s.present.set(p);
        }
    }

    /// One bounded chunk of the mode's background work.
    fn background_step(&mut self) -> Option<End> {
        match std::mem::replace(&mut self.background, Background::None) {
            Background::None => None,
            Background::Prefetch { pages, next } => self.prefetch_step(pages, next),
            Background::Populate { region, page } => self.populate_step(region, page),
        }
    }

    fn chunk_pages(&self, page_size: u64) -> u64 {
        (self.server.options.chunk_bytes / page_size).max(1)
    }

    /// Copies the next chunk of the working set, in its recorded order.
    fn prefetch_step(&mut self, pages: Vec<(usize, u64)>, mut next: usize) -> Option<End> {
        let Some(&(first_region, _)) = pages.get(next) else {
            // Done: `background` stays `None`.
            self.server
                .shared
                .phase
                .send_replace(PageServerPhase::Serving);
            return None;
        };
        let budget = self.chunk_pages(self.regions[first_region].r.page_size);
        let stop = next.saturating_add(usize::try_from(budget).unwrap_or(usize::MAX));
        while next < stop.min(pages.len()) {
            let (ri, page) = pages[next];
            let s = &self.regions[ri];
            if s.present.get(page) || s.removed.get(page) {
                next += 1;
                continue;
            }
            match self.fill(ri, page, 1, Fill::Copy) {
                Ok(()) => add(&self.counters().pages_prefetched, 1),
                Err(FillStop::Retry) => break,
                Err(FillStop::PeerGone) => return Some(End::PeerGone),
                Err(FillStop::Failed(e)) => return Some(End::Failed(e)),
                Err(FillStop::Unsupported(_)) => unreachable!("only poison is unsupported"),
            }
            next += 1;
        }
        self.background = Background::Prefetch { pages, next };
        None
    }

    /// Copies the next chunk of missing pages, region by region; detaches
    /// once every page is present.
    fn populate_step(&mut self, mut ri: usize, mut pg: u64) -> Option<End> {
        let mut budget = None;
        while ri < self.regions.len() {
            let page_size = self.regions[ri].r.page_size;
            let budget = budget.get_or_insert_with(|| self.chunk_pages(page_size));
            if *budget == 0 {
                break;
            }
            let s = &self.regions[ri];
            let pages = s.r.pages();
            // Skip what needs no copy: present, or removed (zero once the
            // ranges are unregistered).
            while pg < pages && (s.present.get(pg) || s.removed.get(pg)) {
                pg += 1;
            }
            if pg == pages {
                ri += 1;
                pg = 0;
                continue;
            }
            let mut run = 0;
            while pg + run < pages
                && run < *budget
                && !s.present.get(pg + run)
                && !s.removed.get(pg + run)
            {
                run += 1;
            }
            let before = self.counters().pages_copied.load(Ordering::Relaxed);
            let result = self.fill(ri, pg, run, Fill::Copy);
            let copied = self.counters().pages_copied.load(Ordering::Relaxed) - before;
            add(&self.counters().pages_populated, copied);
            match result {
                Ok(()) => {
                    pg += run;
                    *budget = budget.saturating_sub(run);
                }
                Err(FillStop::Retry) => break,
                Err(FillStop::PeerGone) => return Some(End::PeerGone),
                Err(FillStop::Failed(e)) => return Some(End::Failed(e)),
                Err(FillStop::Unsupported(_)) => unreachable!("only poison is unsupported"),
            }
        }
        if ri < self.regions.len() || !self.retry.is_empty() {
            self.background = Background::Populate {
                region: ri,
                page: pg,
            };
            return None;
        }
        Some(self.detach())
    }

    /// Every page is present: hand the memory back to the kernel so the VM
    /// no longer needs this server, then read what events are left so that
    /// no `madvise` waits on an unread remove event.
    fn detach(&mut self) -> End {
        for s in &self.regions {
            match self.uffd.unregister(s.r.base, s.r.size) {
                Ok(()) => {}
                Err(Errno::SRCH | Errno::NOENT) => return End::PeerGone,
                Err(source) => {
                    return End::Failed(PageServerError::Uffd {
                        op: UffdOp::Unregister,
                        address: s.r.base,
                        source,
                    });
                }
            }
        }
        let mut events = Vec::new();
        while let Ok(n) = self.uffd.read_events(&mut events) {
            if n == 0 {
                break;
            }
            add(&self.counters().events_ignored, n as u64);
        }
        End::Detached
    }

    /// The server is going away while the VM still depends on it. A fault
    /// on a missing page would then block its thread forever (Firecracker
    /// keeps its own copy of the userfaultfd, so closing ours changes
    /// nothing). Instead: poison every page never served so touching it
    /// raises `SIGBUS`, and unregister the ranges so that removed pages read
    /// as zeros and later remove events do not wait for a reader. Without
    /// `UFFDIO_POISON` the ranges stay registered: a hang is better than a
    /// guest silently reading zeros where its memory was.
    fn fence(&mut self) -> FenceOutcome {
        let mut poisoned = 0;
        for ri in 0..self.regions.len() {
            let pages = self.regions[ri].r.pages();
            let mut pg = 0;
            while pg < pages {
                let s = &self.regions[ri];
                if s.present.get(pg) || s.removed.get(pg) {
                    pg += 1;
                    continue;
                }
                let mut run = 1;
                while pg + run < pages && !s.present.get(pg + run) && !s.removed.get(pg + run) {
                    run += 1;
                }
                let before = self.counters().pages_fenced.load(Ordering::Relaxed);
                let result = self.fill(ri, pg, run, Fill::Poison);
                poisoned += self.counters().pages_fenced.load(Ordering::Relaxed) - before;
                match result {
                    Ok(()) => pg += run,
                    // A remove event raced: read it, then go on from here.
                    Err(FillStop::Retry) => {
                        let _ = self.drain_removes();
                    }
                    Err(FillStop::PeerGone) => return FenceOutcome::PeerGone,
                    Err(FillStop::Unsupported(errno)) => {
                        return FenceOutcome::Unsupported { errno };
                    }
                    Err(FillStop::Failed(e)) => {
                        return FenceOutcome::Failed {
                            errno: match e {
                                PageServerError::Uffd { source, .. } => source,
                                _ => Errno::IO,
                            },
                        };
                    }
                }
            }
        }
        for s in &self.regions {
            match self.uffd.unregister(s.r.base, s.r.size) {
                Ok(()) => {}
                Err(Errno::SRCH | Errno::NOENT) => return FenceOutcome::PeerGone,
                Err(errno) => return FenceOutcome::Failed { errno },
            }
        }
        let _ = self.drain_removes();
        FenceOutcome::Poisoned { pages: poisoned }
    }

    /// Reads pending events, honouring removes and dropping faults (which
    /// the poison or the unregistration wakes anyway).
    fn drain_removes(&mut self) -> Result<(), Errno> {
        let mut events = Vec::new();
        while self.uffd.read_events(&mut events)? > 0 {
            for &event in &events {
                if let UffdEvent::Remove { start, end } = event {
                    self.remove(start, end);
                }
            }
        }
        Ok(())
    }
}
