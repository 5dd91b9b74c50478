//! Snapshot content and restores: the `Uffd` hand-over to a page server (its shape
//! checked on the real Firecracker too), the restored guest's memory checksum, and
//! diff snapshots with holes.

mod common;

use firehost_testkit::fake_only;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use common::{Client, DEADLINE, Fake};
use fake_firecracker::guest::{CHECKSUM_LINE, resume_pages};
use fake_firecracker::memory::{Checksum, PAGE_SIZE, uffd};

/// Memory for the small VMs: the halt kernel loads at 16 MiB.
const SMALL_MIB: usize = 32;

/// Boots the halt kernel with `mem_mib` of memory and no devices.
fn boot(f: &Fake, c: &mut Client, mem_mib: usize, track_dirty_pages: bool) {
    let boot = format!(
        r#"{{"kernel_image_path":"{}","boot_args":"console=ttyS0 reboot=k panic=1"}}"#,
        f.kernel().display()
    );
    c.expect_204("PUT", "/boot-source", &boot);
    c.expect_204(
        "PUT",
        "/machine-config",
        &format!(
            r#"{{"vcpu_count":1,"mem_size_mib":{mem_mib},"track_dirty_pages":{track_dirty_pages}}}"#
        ),
    );
    c.expect_204("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
}

fn snapshot(c: &mut Client, kind: &str, state: &Path, mem: &Path) {
    c.expect_204(
        "PUT",
        "/snapshot/create",
        &format!(
            r#"{{"snapshot_type":"{kind}","snapshot_path":"{}","mem_file_path":"{}"}}"#,
            state.display(),
            mem.display()
        ),
    );
}

/// A booted VM of `mem_mib`, paused and snapshotted (Full): (the VMM, vmstate, memory).
fn snapshotted(mem_mib: usize) -> (Fake, PathBuf, PathBuf) {
    let f = Fake::spawn();
    let mut c = f.client();
    boot(&f, &mut c, mem_mib, false);
    c.expect_204("PATCH", "/vm", r#"{"state":"Paused"}"#);
    let (state, mem) = (f.path("vmstate"), f.path("mem"));
    snapshot(&mut c, "Full", &state, &mem);
    (f, state, mem)
}

fn load_body(state: &Path, backend: &str, path: &Path, resume: bool) -> String {
    format!(
        r#"{{"snapshot_path":"{}","mem_backend":{{"backend_type":"{backend}","backend_path":"{}"}},"resume_vm":{resume}}}"#,
        state.display(),
        path.display()
    )
}

/// The checksum the restored guest must print for `mem` (its first `pages` pages).
fn file_checksum(mem: &Path, pages: usize) -> String {
    let mut f = File::open(mem).unwrap();
    let mut sum = Checksum::new();
    let mut page = vec![0u8; PAGE_SIZE];
    for _ in 0..pages {
        f.read_exact(&mut page).unwrap();
        sum.update(&page);
    }
    sum.hex()
}

/// What the page server received.
struct HandOver {
    message: String,
    uffd: OwnedFd,
}

/// A minimal page server: accepts one VMM, receives the hand-over, then answers
/// every page fault with `UFFDIO_COPY` from the memory file.
struct PageServer {
    handover: mpsc::Receiver<(String, RawFd)>,
    served: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PageServer {
    fn start(socket: &Path, mem_file: &Path) -> Self {
        let listener = UnixListener::bind(socket).unwrap();
        let memory = std::fs::read(mem_file).unwrap();
        let (tx, handover) = mpsc::channel();
        let served = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (served2, stop2) = (Arc::clone(&served), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let (message, fd) = recv_with_fd(&stream);
            // The server keeps its own copy of the fd; the test gets one too.
            // SAFETY: `fd` came from SCM_RIGHTS and is owned by nobody else.
            let uffd_fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: dup of a valid fd.
            let copy = unsafe { libc::dup(fd) };
            tx.send((message.clone(), copy)).unwrap();
            let regions: Vec<serde_json::Value> = serde_json::from_str(&message).unwrap();
            serve(&uffd_fd, &regions, &memory, &served2, &stop2);
            drop(stream);
        });
        Self {
            handover,
            served,
            stop,
            thread: Some(thread),
        }
    }

    fn handover(&self) -> HandOver {
        let (message, fd) = self.handover.recv_timeout(DEADLINE).expect("a hand-over");
        HandOver {
            message,
            // SAFETY: `fd` is the test's own dup.
            uffd: unsafe { OwnedFd::from_raw_fd(fd) },
        }
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn recv_with_fd(stream: &UnixStream) -> (String, RawFd) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut cmsg = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
    // SAFETY: `msg` points at live buffers of the sizes it states.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    assert!(n > 0, "recvmsg: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel filled `msg`'s control buffer; CMSG_FIRSTHDR checks bounds.
    let fd = unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        assert!(!c.is_null(), "no control message");
        assert_eq!(
            ((*c).cmsg_level, (*c).cmsg_type),
            (libc::SOL_SOCKET, libc::SCM_RIGHTS)
        );
        libc::CMSG_DATA(c).cast::<RawFd>().read_unaligned()
    };
    buf.truncate(usize::try_from(n).unwrap());
    (String::from_utf8(buf).unwrap(), fd)
}

fn serve(
    uffd_fd: &OwnedFd,
    regions: &[serde_json::Value],
    memory: &[u8],
    served: &AtomicUsize,
    stop: &AtomicBool,
) {
    let field = |r: &serde_json::Value, k: &str| r[k].as_u64().unwrap();
    while !stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: uffd_fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 20) } <= 0 {
            continue;
        }
        let mut msg = [0u8; 32];
        // SAFETY: reads at most 32 bytes into `msg`.
        let n = unsafe { libc::read(uffd_fd.as_raw_fd(), msg.as_mut_ptr().cast(), 32) };
        if n != 32 || msg[0] != uffd::UFFD_EVENT_PAGEFAULT {
            continue;
        }
        let addr = u64::from_le_bytes(msg[16..24].try_into().unwrap());
        let page = addr & !(PAGE_SIZE as u64 - 1);
        let region = regions
            .iter()
            .find(|r| {
                (field(r, "base_host_virt_addr")
                    ..field(r, "base_host_virt_addr") + field(r, "size"))
                    .contains(&page)
            })
            .expect("fault inside a region");
        let offset = page - field(region, "base_host_virt_addr") + field(region, "offset");
        let offset = usize::try_from(offset).unwrap();
        let mut copy = uffd::UffdioCopy {
            dst: page,
            src: memory[offset..offset + PAGE_SIZE].as_ptr() as u64,
            len: PAGE_SIZE as u64,
            mode: 0,
            copy: 0,
        };
        // Counted before the copy: the copy wakes the faulting thread, and
        // a test that reads the count once the guest has moved on must see
        // this fault in it.
        served.fetch_add(1, Ordering::SeqCst);
        // SAFETY: UFFDIO_COPY reads one `uffdio_copy`; `src` is PAGE_SIZE readable bytes.
        let rc = unsafe { libc::ioctl(uffd_fd.as_raw_fd(), uffd::UFFDIO_COPY, &mut copy) };
        let err = std::io::Error::last_os_error().raw_os_error();
        assert!(rc == 0 || err == Some(libc::EEXIST), "UFFDIO_COPY: {err:?}");
    }
}

fn uffd_features(fd: &OwnedFd) -> u64 {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
    // "API:\t<api>:<features>:<ioctls>"
    let api = info
        .lines()
        .find_map(|l| l.strip_prefix("API:"))
        .expect("a userfaultfd");
    let features = api.trim().split(':').nth(1).unwrap();
    u64::from_str_radix(features, 16).unwrap()
}

#[test]
fn uffd_hand_over_has_firecrackers_shape_and_the_guest_reads_through_it() {
    let (_src, state, mem) = snapshotted(128);
    let mut f = Fake::spawn();
    let sock = f.path("uffd.sock");
    let server = PageServer::start(&sock, &mem);
    let mut c = f.client();
    c.expect_204(
        "PUT",
        "/snapshot/load",
        &load_body(&state, "Uffd", &sock, false),
    );
    let h = server.handover();

    let regions: serde_json::Value = serde_json::from_str(&h.message).unwrap();
    let regions = regions.as_array().expect("a JSON array");
    assert_eq!(regions.len(), 1, "{}", h.message);
    let r = &regions[0];
    let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    let base = r["base_host_virt_addr"].as_u64().unwrap();
    assert_eq!(
        h.message,
        format!(
            r#"[{{"base_host_virt_addr":{base},"size":134217728,"offset":0,"page_size":4096,"page_size_kib":4096}}]"#
        ),
        "{keys:?}"
    );
    assert_eq!(base % PAGE_SIZE as u64, 0);
    // SAFETY: F_GETFL on a valid fd.
    let fl = unsafe { libc::fcntl(h.uffd.as_raw_fd(), libc::F_GETFL) };
    assert_ne!(fl & libc::O_NONBLOCK, 0, "the userfaultfd is non-blocking");
    assert_ne!(
        uffd_features(&h.uffd) & uffd::UFFD_FEATURE_EVENT_REMOVE,
        0,
        "UFFD_FEATURE_EVENT_REMOVE requested"
    );
    // Firecracker touches a couple of pages while it restores: the load answered
    // only because they were served.
    assert!(server.served() >= 1);
    assert_eq!(c.get("/").json()["state"], "Paused");

    c.expect_204("PATCH", "/vm", r#"{"state":"Resumed"}"#);
    assert_eq!(c.get("/").json()["state"], "Running");
    fake_only!("the fake guest reads its memory and prints a checksum");
    let line = f.wait_line(CHECKSUM_LINE);
    assert_eq!(
        line,
        format!(
            "{CHECKSUM_LINE} {}",
            file_checksum(&mem, (128 << 20) / PAGE_SIZE)
        )
    );
    // Every page faulted in exactly once.
    assert_eq!(server.served(), (128 << 20) / PAGE_SIZE);
}

#[test]
fn file_and_uffd_restores_see_the_same_memory() {
    fake_only!("the fake guest's checksum line");
    let (_src, state, mem) = snapshotted(SMALL_MIB);
    let expected = format!(
        "{CHECKSUM_LINE} {}",
        file_checksum(&mem, (SMALL_MIB << 20) / PAGE_SIZE)
    );

    let mut by_file = Fake::spawn();
    let mut c = by_file.client();
    c.expect_204(
        "PUT",
        "/snapshot/load",
        &load_body(&state, "File", &mem, true),
    );
    assert_eq!(by_file.wait_line(CHECKSUM_LINE), expected);

    let mut by_uffd = Fake::spawn();
    let sock = by_uffd.path("uffd.sock");
    let _server = PageServer::start(&sock, &mem);
    let mut c = by_uffd.client();
    c.expect_204(
        "PUT",
        "/snapshot/load",
        &load_body(&state, "Uffd", &sock, true),
    );
    assert_eq!(by_uffd.wait_line(CHECKSUM_LINE), expected);

    // The content is the boot stamp: page index, then the source VM's id hash.
    let bytes = std::fs::read(&mem).unwrap();
    let word = |page: usize, w: usize| {
        let at = page * PAGE_SIZE + w * 8;
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    };
    assert_eq!(word(5, 0), 5);
    assert_eq!(word(5, 1), fake_firecracker::memory::id_hash("test-vm"));
}

#[test]
fn guest_touch_limits_what_the_restored_guest_reads() {
    fake_only!("FAKE_FC_GUEST_TOUCH");
    let (_src, state, mem) = snapshotted(SMALL_MIB);

    let mut f = Fake::spawn_with(&[], &[("FAKE_FC_GUEST_TOUCH", "first:16")]);
    f.wait_socket();
    let sock = f.path("uffd.sock");
    let server = PageServer::start(&sock, &mem);
    let mut c = f.client();
    c.expect_204(
        "PUT",
        "/snapshot/load",
        &load_body(&state, "Uffd", &sock, true),
    );
    assert_eq!(
        f.wait_line(CHECKSUM_LINE),
        format!("{CHECKSUM_LINE} {}", file_checksum(&mem, 16))
    );
    assert!(server.served() < (SMALL_MIB << 20) / PAGE_SIZE);

    let mut f = Fake::spawn_with(&[], &[("FAKE_FC_GUEST_TOUCH", "none")]);
    f.wait_socket();
    let sock = f.path("uffd.sock");
    let server = PageServer::start(&sock, &mem);
    let mut c = f.client();
    c.expect_204(
        "PUT",
        "/snapshot/load",
        &load_body(&state, "Uffd", &sock, true),
    );
    assert_eq!(c.get("/").json()["state"], "Running");
    // The resumed guest says it read nothing; by then every fault is in.
    f.wait_line(fake_firecracker::guest::UNTOUCHED_LINE);
    // Only the pages the VMM itself touches while restoring.
    assert_eq!(
        server.served(),
        fake_firecracker::memory::RESTORE_TOUCHED_OFFSETS.len()
    );
}

/// Data extents of `path`: (start, end) pairs, by `SEEK_DATA`/`SEEK_HOLE`.
fn data_extents(path: &Path) -> Vec<(u64, u64)> {
    let f = File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: libc::off_t = 0;
    loop {
        // SAFETY: lseek on a valid fd.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        let Ok(start) = u64::try_from(data) else {
            break;
        };
        if start >= len {
            break;
        }
        // SAFETY: lseek on a valid fd.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        out.push((start, u64::try_from(hole).unwrap()));
        pos = hole;
    }
    out
}

#[test]
fn diff_snapshot_holds_only_the_pages_dirtied_since_the_last_snapshot() {
    let f = Fake::spawn();
    let mut c = f.client();
    boot(&f, &mut c, SMALL_MIB, true);
    c.expect_204("PATCH", "/vm", r#"{"state":"Paused"}"#);
    snapshot(&mut c, "Full", &f.path("vmstate"), &f.path("mem.full"));
    c.expect_204("PATCH", "/vm", r#"{"state":"Resumed"}"#);
    c.expect_204("PATCH", "/vm", r#"{"state":"Paused"}"#);
    let diff = f.path("mem.diff");
    snapshot(&mut c, "Diff", &f.path("vmstate.diff"), &diff);
    let size = (SMALL_MIB << 20) as u64;
    assert_eq!(std::fs::metadata(&diff).unwrap().len(), size);
    let extents = data_extents(&diff);
    let data: u64 = extents.iter().map(|(a, b)| b - a).sum();
    assert!(data < size, "a diff has holes: {extents:?}");

    fake_only!("the fake guest's writes on resume");
    let mut pages = resume_pages((SMALL_MIB << 20) / PAGE_SIZE, 1);
    pages.sort_unstable();
    let expected: Vec<(u64, u64)> = pages
        .iter()
        .map(|p| ((p * PAGE_SIZE) as u64, ((p + 1) * PAGE_SIZE) as u64))
        .collect();
    assert_eq!(extents, expected);
    let vmstate = std::fs::read_to_string(f.path("vmstate.diff")).unwrap();
    assert!(vmstate.contains(r#""snapshot_type":"Diff""#), "{vmstate}");
}

#[test]
fn uffd_load_with_no_page_server_answers_the_error_then_exits_1() {
    let (_src, state, _mem) = snapshotted(SMALL_MIB);
    let mut f = Fake::spawn();
    let sock = f.path("uffd.sock");
    // A socket file nobody listens on: connection refused.
    drop(UnixListener::bind(&sock).unwrap());
    let mut c = f.client();
    let msg = c.expect_fault(
        "PUT",
        "/snapshot/load",
        &load_body(&state, "Uffd", &sock, false),
    );
    assert_eq!(
        msg,
        "Load snapshot error: Failed to restore from snapshot: Failed to load guest memory: Error creating guest memory from uffd: Failed to connect to UDS Unix stream: Connection refused (os error 111)"
    );
    assert_eq!(f.wait_exit().code(), Some(1));
}

#[test]
fn nothing_is_answered_after_a_failed_load() {
    use std::os::unix::process::ExitStatusExt;
    let (_src, state, _mem) = snapshotted(SMALL_MIB);
    let mut f = Fake::spawn();
    let sock = f.path("uffd.sock");
    drop(UnixListener::bind(&sock).unwrap());
    let mut c = f.client();
    c.expect_fault(
        "PUT",
        "/snapshot/load",
        &load_body(&state, "Uffd", &sock, false),
    );
    // It stops at once: nothing is answered after the refusal, on this
    // connection or a new one.
    let answered = c.try_get("/");
    assert!(
        answered.is_none(),
        "answered after a failed load: {answered:?}"
    );
    if let Ok(stream) = std::os::unix::net::UnixStream::connect(f.path("api.sock")) {
        let answered = Client(stream).try_get("/");
        assert!(
            answered.is_none(),
            "a new connection was answered: {answered:?}"
        );
    }
    // Firecracker exits 1, or aborts when a request reaches its API in the
    // millisecond it takes to exit (as one of these may): either way, gone.
    let exit = f.wait_exit();
    assert!(
        exit.code() == Some(1) || exit.signal() == Some(libc::SIGABRT),
        "{exit:?}"
    );
}

#[test]
fn load_tracks_dirty_pages_only_when_the_request_asks() {
    let src = Fake::spawn();
    let mut c = src.client();
    boot(&src, &mut c, SMALL_MIB, true);
    c.expect_204("PATCH", "/vm", r#"{"state":"Paused"}"#);
    let (state, mem) = (src.path("vmstate"), src.path("mem"));
    snapshot(&mut c, "Full", &state, &mem);
    for (extra, tracked) in [("", false), (r#","track_dirty_pages":true"#, true)] {
        let f = Fake::spawn();
        let mut c = f.client();
        let body = load_body(&state, "File", &mem, false);
        let body = format!("{}{extra}}}", &body[..body.len() - 1]);
        c.expect_204("PUT", "/snapshot/load", &body);
        assert_eq!(
            c.get("/machine-config").json()["track_dirty_pages"],
            tracked,
            "{body}"
        );
    }
}
