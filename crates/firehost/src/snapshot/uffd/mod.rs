//! The userfaultfd page server that serves a restored VM's memory from a bundle.
//!
//! # The problem
//!
//! Restoring a snapshot by letting Firecracker `mmap` the memory file
//! privately works, but every VM then faults its pages from the file on its
//! own terms, and the manager can neither prefetch what the guest will need
//! nor make the VM independent of the file. With
//! `mem_backend: {backend_type: "Uffd", backend_path: SOCK}` Firecracker
//! instead backs guest memory with anonymous memory registered with a
//! userfaultfd, and lets a *page server* decide what each missing page
//! holds. [`PageServer`] is that server, in-process: one per restore, each
//! on its own thread, so one VM's faults never wait behind another's.
//!
//! # The protocol, step by step
//!
//! Firecracker v1.16 (`docs/snapshotting/handling-page-faults-on-snapshot-resume.md`
//! and `src/vmm/src/persist.rs` in its repository):
//!
//! 1. We bind a unix socket (mode 0600) and listen ([`PageServer::bind`]),
//!    *before* sending `PUT /snapshot/load`.
//! 2. Firecracker creates a userfaultfd with `UFFD_FEATURE_EVENT_REMOVE`,
//!    non-blocking, maps guest memory anonymously and registers every region
//!    in missing-page mode.
//! 3. It connects to the socket and sends **one** message: a JSON array of
//!    [`GuestRegionMapping`]s (`base_host_virt_addr`, `size`, `offset` into
//!    the memory file, `page_size`, `page_size_kib`), with the userfaultfd
//!    attached as `SCM_RIGHTS`. It then keeps the connection open and never
//!    writes to it again. We accept exactly one connection and remove the
//!    socket file.
//! 4. We check the mappings: at least one, page sizes powers of two no
//!    smaller than the host's, everything page-aligned, no overlap, and every
//!    region's bytes inside the memory file (a short file is
//!    [`PageServerError::MemoryFileTooShort`]).
//!    **Page size caveat:** use `page_size`, in bytes. Firecracker v1.16.1
//!    also sends `page_size_kib`, whose value is, despite the name, bytes as
//!    well; we read it only when `page_size` is absent (older releases).
//! 5. We read events from the userfaultfd:
//!    - `UFFD_EVENT_PAGEFAULT`: `UFFDIO_COPY` one page (`page_size` bytes)
//!      from the memory file at `offset + (address - base)`, aligned down to
//!      the page. `EEXIST` (already present, e.g. two threads faulted on one
//!      page) is fine: we wake the waiters. `EAGAIN` means the address space
//!      is changing (a remove event is pending): we read events and retry.
//!      `ESRCH`/`ENOENT` means the VM went away.
//!    - `UFFD_EVENT_REMOVE` (the balloon's `madvise(MADV_DONTNEED)`): the
//!      range's pages are missing again and their content is now zero, so
//!      later faults there get `UFFDIO_ZEROPAGE`, never file contents.
//!
//! The memory file is mapped read-only and `MAP_SHARED`, so clones restored
//! from one bundle share its page cache; copies go straight from that
//! mapping into the guest.
//!
//! # Modes
//!
//! - [`ServeMode::OnDemand`]: serve faults as they come.
//! - [`ServeMode::Populate`]: serve faults, and between them copy every page
//!   not yet present, in chunks of [`PageServerOptions::chunk_bytes`]. Then
//!   *detach*: unregister the ranges (which works from the server's side:
//!   registration belongs to Firecracker's address space, not to a
//!   descriptor), close the userfaultfd and end. Guest memory is then plain
//!   anonymous memory; the balloon works without us. See
//!   [`PageServer::wait_detached`].
//! - [`ServeMode::Prefetch`]: first copy the pages of a recorded
//!   [`WorkingSet`], in its order (faults still come first), then serve on
//!   demand. See [`PageServer::wait_prefetched`].
//!
//! With [`PageServerOptions::record`] the server records the memory-file
//! pages in the order they were first faulted, bounded, for
//! [`PageServer::working_set`]; store it in the bundle and replay it with
//! `Prefetch` next time.
//!
//! # When the server goes away mid-restore
//!
//! The kernel's rules: while any copy of a userfaultfd is open, a fault on
//! a missing registered page sleeps until a reader resolves it; when the
//! *last* copy closes, the kernel unregisters the ranges and wakes the
//! sleepers, whose faults are then handled as plain anonymous memory, i.e.
//! zero pages (the tests check both). Firecracker keeps its own copy of the
//! userfaultfd, so closing ours releases nothing: a vCPU (or Firecracker's
//! own thread) touching a missing page would sleep in the fault
//! **forever**, and Firecracker would see nothing. (Were the last copy
//! ours, closing it would be worse: the guest would silently read zeros
//! where its memory was.) So when a [`PageServer`] that still serves a VM is shut down
//! or dropped (or fails), it *fences* the memory before closing: every page
//! it never served is marked with `UFFDIO_POISON` (Linux 6.6+), which wakes
//! any thread sleeping on it, and the ranges are unregistered, so removed
//! pages read as zeros and later balloon removals wait for nobody. Touching
//! a poisoned page then raises `SIGBUS` in the toucher (KVM turns it into a
//! `SIGBUS` on the vCPU thread; Firecracker exits on it, and the manager
//! sees the exit through its pidfd); a system call reading such a page fails
//! with `EFAULT`. The VM fails loudly instead of hanging or reading zeros
//! where its memory was. The tests measure this: a thread that faults after
//! the drop gets `EFAULT` at once, and a thread already asleep in a fault
//! is woken with `EFAULT`.
//!
//! On kernels without `UFFDIO_POISON` ([`FenceOutcome::Unsupported`]) the
//! ranges stay registered: the VM then hangs on its next missing page, as
//! Firecracker documents, rather than silently reading zeros. If the whole
//! process hosting the server dies, nothing can fence: the VM hangs on its
//! next missing page. Both are reasons to prefer `Populate` for VMs that
//! must outlive the manager, and to stop (kill) a restored VM before its
//! page server.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use firehost::snapshot::uffd::{PageServer, PageServerOptions, ServeMode};
//! # async fn restore() -> Result<(), firehost::snapshot::uffd::PageServerError> {
//! let server = PageServer::bind(
//!     "/run/firehost/vm1/uffd.sock",
//!     "/var/lib/firehost/snapshots/base/memory".as_ref(),
//!     PageServerOptions::new(ServeMode::Populate).record(65_536),
//! )?;
//! // ... PUT /snapshot/load with mem_backend {Uffd, server.socket_path()} ...
//! server.wait_connected(Duration::from_secs(5)).await?;
//! server.wait_detached(Duration::from_secs(60)).await?;
//! let working_set = server.working_set();
//! # Ok(()) }
//! ```

mod helper;
mod memory;
mod serve;
pub mod sys;

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::event::EventfdFlags;
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use helper::{DETACHED_MARKER, HelperMode, HelperRequest, PageServerProgram, run_helper};
pub(crate) use helper::{
    Helper, detached_marker as helper_detached_marker, left_unfenced, store_working_set,
};
pub use memory::GuestRegionMapping;

use serve::{Counters, Recorder, Server, Shared};

use crate::socket_path::MAX_SOCKET_PATH_BYTES;

/// The default time Firecracker has to send the handshake once connected.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The default size of one chunk of background copying (prefetch and
/// populate): small enough that a fault never waits long behind it.
pub const DEFAULT_CHUNK_BYTES: u64 = 1 << 20;

/// What the server does besides serving faults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ServeMode {
    /// Serve faults as they come, for as long as the VM lives.
    #[default]
    OnDemand,
    /// Serve faults and copy every other page in the background, then
    /// detach: the VM no longer depends on the server.
    Populate,
    /// Copy the pages of a recorded working set first, in order, then serve
    /// on demand.
    Prefetch(WorkingSet),
}

/// How a [`PageServer`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageServerOptions {
    /// The mode.
    pub mode: ServeMode,
    /// Record at most this many faulted pages, if set.
    pub record_limit: Option<usize>,
    /// How long Firecracker has to send its message once connected.
    pub handshake_timeout: Duration,
    /// Bytes copied per chunk of background work, between reads of events.
    pub chunk_bytes: u64,
    /// Give the socket to this uid and gid (still mode 0600): for a
    /// Firecracker that runs as them in a jail.
    pub socket_owner: Option<(u32, u32)>,
}

impl PageServerOptions {
    /// Options for `mode`, without recording, with the default timeout and
    /// chunk size.
    pub fn new(mode: ServeMode) -> PageServerOptions {
        PageServerOptions {
            mode,
            record_limit: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            socket_owner: None,
        }
    }

    /// Records the first `limit_pages` faulted pages, in order.
    pub fn record(mut self, limit_pages: usize) -> PageServerOptions {
        self.record_limit = Some(limit_pages);
        self
    }

    /// Sets the background chunk size (at least one page is copied).
    pub fn chunk_bytes(mut self, bytes: u64) -> PageServerOptions {
        self.chunk_bytes = bytes;
        self
    }

    /// Gives the socket to `uid:gid` (see
    /// [`socket_owner`](Self::socket_owner)).
    pub fn socket_owner(mut self, uid: u32, gid: u32) -> PageServerOptions {
        self.socket_owner = Some((uid, gid));
        self
    }

    /// Sets the handshake timeout.
    pub fn handshake_timeout(mut self, timeout: Duration) -> PageServerOptions {
        self.handshake_timeout = timeout;
        self
    }
}

impl From<ServeMode> for PageServerOptions {
    fn from(mode: ServeMode) -> Self {
        PageServerOptions::new(mode)
    }
}

/// The memory-file pages a VM touched, in the order it first touched them.
///
/// Pages are indices into the memory file (`offset / page_size_bytes`), not
/// guest or host addresses: those change from one restore to the next, the
/// file does not. Only faults are recorded, so record in
/// [`ServeMode::OnDemand`] to capture a boot's whole working set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkingSet {
    /// The page size the indices count in.
    pub page_size_bytes: u64,
    /// Memory-file page indices, first touch first.
    pub pages: Vec<u64>,
    /// Whether pages were left out because the record limit was reached.
    pub truncated: bool,
}

/// Counters, exact at the moment they are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PageServerStats {
    /// Page faults resolved (by copy, zero page, or found present).
    pub faults_served: u64,
    /// Fills that found the page already present (`EEXIST`).
    pub faults_already_present: u64,
    /// Pages copied from the memory file, by faults, prefetch and populate.
    pub pages_copied: u64,
    /// Bytes copied from the memory file.
    pub bytes_copied: u64,
    /// Removed pages served as zeros.
    pub zero_pages: u64,
    /// Pages copied by the prefetch of a working set.
    pub pages_prefetched: u64,
    /// Working-set pages outside every region, skipped.
    pub prefetch_pages_skipped: u64,
    /// Pages copied by the background population.
    pub pages_populated: u64,
    /// `UFFD_EVENT_REMOVE` events.
    pub removed_ranges: u64,
    /// Bytes those events removed.
    pub removed_bytes: u64,
    /// Events neither fault nor remove, or faults outside every region.
    pub events_ignored: u64,
    /// Fills retried after `EAGAIN`.
    pub retries: u64,
    /// Nanoseconds from reading a fault to resolving it, summed.
    pub fault_service_ns_total: u64,
    /// The longest single fault service, in nanoseconds.
    pub fault_service_ns_max: u64,
    /// Pages poisoned by a fence.
    pub pages_fenced: u64,
}

/// What Firecracker told us on connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The regions, as sent.
    pub mappings: Vec<GuestRegionMapping>,
    /// The connecting process (`SO_PEERCRED`), normally Firecracker.
    pub peer_pid: Option<i32>,
}

/// What a fence did when the server left a VM it was serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceOutcome {
    /// Nothing to fence: never connected.
    NotNeeded,
    /// Pages never served were poisoned and the ranges unregistered:
    /// touching them raises `SIGBUS` (`EFAULT` in a system call).
    Poisoned {
        /// Pages poisoned.
        pages: u64,
    },
    /// The kernel has no `UFFDIO_POISON`: the ranges stay registered and
    /// the VM hangs on its next missing page.
    Unsupported {
        /// What the kernel answered.
        errno: Errno,
    },
    /// The VM was already gone.
    PeerGone,
    /// An ioctl failed part way.
    Failed {
        /// What the kernel answered.
        errno: Errno,
    },
}

/// Where a server is in its life. The last four are terminal.
#[derive(Debug, Clone)]
pub enum PageServerPhase {
    /// Waiting for Firecracker to connect.
    Listening,
    /// Connected; copying the working set (faults come first).
    Prefetching,
    /// Connected; serving faults.
    Serving,
    /// Connected; serving faults and copying the rest in the background.
    Populating,
    /// Every page was copied and the ranges handed back to the kernel: the
    /// VM no longer depends on this server.
    Detached,
    /// The VM's process exited, or its memory went away.
    PeerExited,
    /// Shut down or dropped.
    Stopped {
        /// What was done to the VM's memory on the way out.
        fence: FenceOutcome,
    },
    /// Failed; a VM it was serving was fenced.
    Failed(PageServerError),
}

impl PageServerPhase {
    /// Whether the server thread has ended.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            PageServerPhase::Detached
                | PageServerPhase::PeerExited
                | PageServerPhase::Stopped { .. }
                | PageServerPhase::Failed(_)
        )
    }
}

/// The userfaultfd operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UffdOp {
    /// `UFFDIO_COPY`.
    Copy,
    /// `UFFDIO_ZEROPAGE`.
    ZeroPage,
    /// `UFFDIO_POISON`.
    Poison,
    /// `UFFDIO_UNREGISTER`.
    Unregister,
}

/// What is wrong with one mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingProblem {
    /// Neither `page_size` nor `page_size_kib`.
    NoPageSize,
    /// Not a power of two, or smaller than the host's page.
    PageSize {
        /// The page size sent.
        page_size: u64,
    },
    /// Zero bytes long.
    Empty,
    /// Base, size or offset not a multiple of the page size.
    Unaligned {
        /// The region's page size.
        page_size: u64,
    },
    /// Base or offset plus size overflows.
    Overflow,
    /// Overlaps another region.
    Overlap,
}

/// What a wait was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Firecracker's connection and handshake.
    Connection,
    /// The end of the working-set prefetch.
    Prefetch,
    /// The end of population and the detach.
    Detach,
}

/// A page server failed. Every variant names what it was doing.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PageServerError {
    /// The socket path does not fit a unix socket address.
    #[error("socket path {} is {len} bytes, over the {MAX_SOCKET_PATH_BYTES}-byte limit", path.display())]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// Binding or securing the socket failed.
    #[error("cannot listen on {}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The memory file cannot be opened or inspected.
    #[error("cannot open the memory file {}", path.display())]
    OpenMemoryFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The memory file is empty.
    #[error("the memory file {} is empty", path.display())]
    EmptyMemoryFile {
        /// The file.
        path: PathBuf,
    },
    /// The memory file cannot be mapped.
    #[error("cannot map the memory file {}", path.display())]
    MapMemoryFile {
        /// The file.
        path: PathBuf,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// Creating the stop signal or the thread failed.
    #[error("cannot start the page server thread")]
    Spawn {
        /// The cause.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Accepting the connection failed.
    #[error("cannot accept Firecracker's connection")]
    Accept {
        /// The errno.
        #[source]
        source: Errno,
    },
    /// Waiting on descriptors failed.
    #[error("poll failed")]
    Poll {
        /// The errno.
        #[source]
        source: Errno,
    },
    /// Firecracker connected but sent nothing in time.
    #[error("Firecracker sent no handshake within {timeout:?}")]
    HandshakeTimeout {
        /// The limit.
        timeout: Duration,
    },
    /// Reading the handshake failed.
    #[error("cannot receive the handshake")]
    ReceiveHandshake {
        /// The errno.
        #[source]
        source: Errno,
    },
    /// The connection closed before a complete handshake.
    #[error("the connection closed after {received_bytes} bytes of handshake")]
    HandshakeClosed {
        /// Bytes received before the close.
        received_bytes: usize,
    },
    /// The handshake exceeds the size limit.
    #[error("the handshake is over {limit_bytes} bytes")]
    HandshakeTooLarge {
        /// The limit.
        limit_bytes: usize,
    },
    /// The handshake is not a JSON array of mappings.
    #[error("the handshake is not a JSON array of guest region mappings")]
    MalformedHandshake {
        /// The parse error.
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// The handshake carried no descriptor.
    #[error("the handshake carried no userfaultfd")]
    MissingUffd,
    /// The handshake listed no region.
    #[error("the handshake lists no memory region")]
    NoMappings,
    /// A mapping is unusable.
    #[error("guest region {region} is invalid: {problem:?}")]
    InvalidMapping {
        /// Its index in the handshake.
        region: usize,
        /// What is wrong.
        problem: MappingProblem,
    },
    /// A region reaches past the end of the memory file.
    #[error(
        "guest region {region} needs the memory file to be {needed_bytes} bytes, it is {file_bytes}"
    )]
    MemoryFileTooShort {
        /// Its index in the handshake.
        region: usize,
        /// `offset + size` of the region.
        needed_bytes: u64,
        /// The file's length.
        file_bytes: u64,
    },
    /// The working set to prefetch counts in another page size.
    #[error(
        "the working set counts {recorded_bytes}-byte pages, the VM maps {mapped_bytes}-byte pages"
    )]
    WorkingSetPageSize {
        /// The working set's page size.
        recorded_bytes: u64,
        /// The mapping's page size.
        mapped_bytes: u64,
    },
    /// The userfaultfd reports an error: its creator never completed
    /// `UFFDIO_API`.
    #[error("the userfaultfd is not initialised (UFFDIO_API was not done)")]
    UffdNotInitialized,
    /// Reading events failed.
    #[error("cannot read userfaultfd events")]
    ReadEvents {
        /// The errno.
        #[source]
        source: Errno,
    },
    /// A userfaultfd ioctl failed.
    #[error("{op:?} at {address:#x} failed")]
    Uffd {
        /// Which one.
        op: UffdOp,
        /// The guest-side address.
        address: u64,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// A wait ran out of time.
    #[error("waiting for {waited_for:?} timed out after {timeout:?}")]
    Timeout {
        /// What was awaited.
        waited_for: Wait,
        /// The limit.
        timeout: Duration,
    },
    /// The server ended before what was awaited happened.
    #[error("the page server ended ({phase}) before {waited_for:?}")]
    Ended {
        /// What was awaited.
        waited_for: Wait,
        /// How it ended.
        phase: &'static str,
    },
    /// [`PageServer::wait_detached`] on a server not in populate mode.
    #[error("the page server is not in populate mode and never detaches")]
    NotPopulating,
    /// The page-server helper program cannot be started.
    #[error("cannot start the page-server helper {}", program.display())]
    HelperSpawn {
        /// The program.
        program: PathBuf,
        /// The cause.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The page-server helper failed, or the conversation with it did.
    #[error("page-server helper: {message}")]
    Helper {
        /// What went wrong, in the helper's words or ours.
        message: String,
    },
}

/// A page server for one restore. See the [module docs](self).
///
/// Dropping it stops the server and, if it still serves a VM, fences that
/// VM's memory (see the module docs); the drop waits for the server thread,
/// which takes at most one chunk of background work.
#[derive(Debug)]
pub struct PageServer {
    shared: Arc<Shared>,
    phase: watch::Receiver<PageServerPhase>,
    stop: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    socket_path: PathBuf,
    populate: bool,
}

/// The final report of [`PageServer::shutdown`].
#[derive(Debug, Clone)]
pub struct PageServerReport {
    /// The terminal phase: detached, peer exited, or stopped (with the
    /// fence outcome).
    pub phase: PageServerPhase,
    /// The final counters.
    pub stats: PageServerStats,
    /// The recorded working set, if recording.
    pub working_set: Option<WorkingSet>,
}

impl PageServer {
    /// Opens and maps `memory_file`, binds `socket_path` (mode 0600; the
    /// path must not exist) and starts the server thread, which waits for
    /// Firecracker. Blocking, but quick: no page is read.
    pub fn bind(
        socket_path: impl Into<PathBuf>,
        memory_file: &Path,
        options: impl Into<PageServerOptions>,
    ) -> Result<PageServer, PageServerError> {
        let socket_path = socket_path.into();
        let options = options.into();
        if let Err(e) = crate::socket_path::check(&socket_path, 0) {
            return Err(PageServerError::SocketPathTooLong {
                path: e.path,
                len: e.len,
            });
        }
        let memory = memory::MemoryFile::open(memory_file)?;
        let bind_err = |source: std::io::Error| PageServerError::Bind {
            path: socket_path.clone(),
            source: Arc::new(source),
        };
        let listener = UnixListener::bind(&socket_path).map_err(bind_err)?;
        let secured =
            std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))
                .and_then(|()| match options.socket_owner {
                    Some((uid, gid)) => rustix::fs::chown(
                        &socket_path,
                        Some(rustix::fs::Uid::from_raw(uid)),
                        Some(rustix::fs::Gid::from_raw(gid)),
                    )
                    .map_err(std::io::Error::from),
                    None => Ok(()),
                })
                .and_then(|()| listener.set_nonblocking(true));
        if let Err(e) = secured {
            let _ = std::fs::remove_file(&socket_path);
            return Err(bind_err(e));
        }
        let spawn_err = |source: std::io::Error| PageServerError::Spawn {
            source: Arc::new(source),
        };
        let stop = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| spawn_err(e.into()));
        let stop = match stop {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                let _ = std::fs::remove_file(&socket_path);
                return Err(e);
            }
        };
        let (phase_tx, phase) = watch::channel(PageServerPhase::Listening);
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            recorder: Mutex::new(options.record_limit.map(|limit| Recorder {
                limit,
                set: WorkingSet::default(),
            })),
            phase: phase_tx,
            connection: OnceLock::new(),
        });
        let populate = options.mode == ServeMode::Populate;
        let server = Server {
            listener,
            socket_path: socket_path.clone(),
            memory,
            options,
            stop: stop.clone(),
            shared: shared.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("firehost-uffd".into())
            .spawn(move || server.run());
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                let _ = std::fs::remove_file(&socket_path);
                return Err(spawn_err(e));
            }
        };
        Ok(PageServer {
            shared,
            phase,
            stop,
            thread: Some(thread),
            socket_path,
            populate,
        })
    }

    /// The socket to give Firecracker as `mem_backend.backend_path`.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The current phase.
    pub fn phase(&self) -> PageServerPhase {
        self.phase.borrow().clone()
    }

    /// The counters now.
    pub fn stats(&self) -> PageServerStats {
        self.shared.counters.snapshot()
    }

    /// The working set recorded so far, if recording.
    pub fn working_set(&self) -> Option<WorkingSet> {
        let recorder = self.shared.recorder.lock().expect("recorder lock");
        recorder.as_ref().map(|r| r.set.clone())
    }

    /// What Firecracker sent, once connected.
    pub fn connection(&self) -> Option<&ConnectionInfo> {
        self.shared.connection.get()
    }

    /// Waits until Firecracker has connected and its handshake was accepted.
    ///
    /// Errors: the handshake's own error (for example
    /// [`PageServerError::MemoryFileTooShort`]) if it was refused,
    /// [`PageServerError::Timeout`] after `timeout`, or
    /// [`PageServerError::Ended`] if the server stopped first.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only watches the server's phase. Dropping the future
    /// leaves the server running and waiting.
    pub async fn wait_connected(
        &self,
        timeout: Duration,
    ) -> Result<&ConnectionInfo, PageServerError> {
        self.wait_for(Wait::Connection, timeout, |p| {
            !matches!(p, PageServerPhase::Listening)
        })
        .await?;
        self.shared.connection.get().ok_or(PageServerError::Ended {
            waited_for: Wait::Connection,
            phase: "without a connection",
        })
    }

    /// Waits until the working set was prefetched (at once after the
    /// connection in other modes), then returns the counters.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only watches the server's phase.
    pub async fn wait_prefetched(
        &self,
        timeout: Duration,
    ) -> Result<PageServerStats, PageServerError> {
        self.wait_for(Wait::Prefetch, timeout, |p| {
            !matches!(p, PageServerPhase::Listening | PageServerPhase::Prefetching)
        })
        .await?;
        Ok(self.stats())
    }

    /// Waits until a [`ServeMode::Populate`] server has copied every page
    /// and detached, then returns the counters.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only watches the server's phase; population goes on.
    pub async fn wait_detached(
        &self,
        timeout: Duration,
    ) -> Result<PageServerStats, PageServerError> {
        if !self.populate {
            return Err(PageServerError::NotPopulating);
        }
        let phase = self
            .wait_for(Wait::Detach, timeout, PageServerPhase::is_terminal)
            .await?;
        match phase {
            PageServerPhase::Detached => Ok(self.stats()),
            other => Err(ended(Wait::Detach, &other)),
        }
    }

    /// Stops the server and waits for its thread. If it still served a VM,
    /// the VM's memory is fenced (see the module docs) and the report says
    /// how. A server that had failed returns its error.
    ///
    /// # Cancel safety
    ///
    /// Not cancel-safe in the sense that matters: once called, the server is
    /// stopping; dropping the future lets the thread finish on its own.
    pub async fn shutdown(mut self) -> Result<PageServerReport, PageServerError> {
        self.signal_stop();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        let phase = self.phase();
        let report = PageServerReport {
            phase: phase.clone(),
            stats: self.stats(),
            working_set: self.working_set(),
        };
        match phase {
            PageServerPhase::Failed(e) => Err(e),
            _ => Ok(report),
        }
    }

    async fn wait_for(
        &self,
        waited_for: Wait,
        timeout: Duration,
        done: impl FnMut(&PageServerPhase) -> bool,
    ) -> Result<PageServerPhase, PageServerError> {
        let mut rx = self.phase.clone();
        let mut done = done;
        let result = tokio::time::timeout(timeout, async {
            rx.wait_for(|p| done(p) || p.is_terminal())
                .await
                .map(|p| p.clone())
        })
        .await;
        let phase = match result {
            Err(_) => {
                return Err(PageServerError::Timeout {
                    waited_for,
                    timeout,
                });
            }
            // The sender lives in `shared`, which we hold.
            Ok(Err(_)) => unreachable!("the phase sender outlives the handle"),
            Ok(Ok(phase)) => phase,
        };
        match phase {
            PageServerPhase::Failed(e) => Err(e),
            p if done(&p) => Ok(p),
            p => Err(ended(waited_for, &p)),
        }
    }

    /// Stops the server now, from synchronous code (a `Drop`), and returns
    /// how it ended; like [`shutdown`](Self::shutdown) but blocking for at
    /// most one chunk of background work.
    pub(crate) fn stop_blocking(mut self) -> PageServerPhase {
        self.signal_stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.phase()
    }

    fn signal_stop(&self) {
        if let Err(errno) = rustix::io::write(self.stop.as_ref(), &1u64.to_ne_bytes()) {
            // Only a full counter (EAGAIN) can fail, and then a stop is
            // already pending.
            debug_assert_eq!(errno, Errno::AGAIN);
        }
    }
}

fn ended(waited_for: Wait, phase: &PageServerPhase) -> PageServerError {
    match phase {
        PageServerPhase::Failed(e) => e.clone(),
        PageServerPhase::Detached => PageServerError::Ended {
            waited_for,
            phase: "detached",
        },
        PageServerPhase::PeerExited => PageServerError::Ended {
            waited_for,
            phase: "peer exited",
        },
        _ => PageServerError::Ended {
            waited_for,
            phase: "stopped",
        },
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.signal_stop();
            if thread.join().is_err() {
                tracing::error!(socket = %self.socket_path.display(), "page server thread panicked");
            }
        }
    }
}
