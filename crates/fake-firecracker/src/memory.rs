//! The fake's guest memory: real mappings of the configured size, so snapshots
//! carry content and restores can be checked page by page.
//!
//! - At `InstanceStart` the memory is anonymous; the guest [stamps](stamp_page)
//!   every page with its index and a hash of the VM id.
//! - `PUT /snapshot/create` writes it to `mem_file_path`: every page for `Full`,
//!   only the dirty ones for `Diff` (holes elsewhere), as Firecracker does.
//! - `PUT /snapshot/load` maps the memory file `MAP_PRIVATE` (`File` backend), or
//!   maps anonymous memory, registers it with a userfaultfd and hands the fd and
//!   the region layout to a page server (`Uffd` backend), byte for byte as
//!   Firecracker v1.16.1 does (see [`uffd_handshake`]).
//!
//! The layout follows Firecracker's `x86_64` `arch_memory_regions`: one region
//! from guest address 0, split around the 32-bit MMIO hole (3.25–4 GiB) when the
//! memory is larger than 3.25 GiB. Regions are laid out back to back in the
//! memory file.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;

/// The guest page size (Firecracker without huge pages).
pub const PAGE_SIZE: usize = 4096;
/// Start of the 32-bit MMIO hole on `x86_64` (`MMIO32_MEM_START`).
const MMIO32_MEM_START: u64 = (4 << 30) - (768 << 20);
/// Size of that hole (`MMIO32_MEM_SIZE`).
const MMIO32_MEM_SIZE: u64 = 768 << 20;
/// Pages Firecracker v1.16.1 itself touches while it restores an `x86_64` VM
/// (its `VMGenID` and `VMClock` devices, below 1 MiB): with a `Uffd` backend the
/// load only answers once the page server has served them.
pub const RESTORE_TOUCHED_OFFSETS: [u64; 2] = [0xdf000, 0xde000];

/// The checksum the guest prints after a restore: FNV-1a's offset basis and prime
/// applied to 64-bit little-endian words (`h = (h ^ word) * prime`), over the
/// pages it read, in page order.
///
/// # Examples
///
/// ```
/// use fake_firecracker::memory::Checksum;
///
/// let mut c = Checksum::new();
/// c.update(&[0u8; 4096]);
/// assert_eq!(c.hex().len(), 16);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checksum(u64);

impl Checksum {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// An empty checksum.
    pub fn new() -> Self {
        Self(Self::OFFSET_BASIS)
    }

    /// Adds `bytes` (a whole number of 64-bit words).
    pub fn update(&mut self, bytes: &[u8]) {
        for w in bytes.chunks_exact(8) {
            let word = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            self.word(word);
        }
    }

    fn word(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(Self::PRIME);
    }

    /// The value.
    pub fn value(self) -> u64 {
        self.0
    }

    /// The value as the console prints it: 16 lower-case hex digits.
    pub fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

/// FNV-1a of the VM id, stamped into every page at boot.
pub fn id_hash(id: &str) -> u64 {
    let mut h = Checksum::OFFSET_BASIS;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(Checksum::PRIME);
    }
    h
}

/// The guest regions for `size` bytes: `(guest address, size)`, Firecracker's
/// `x86_64` layout.
pub fn arch_memory_regions(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO32_MEM_START {
        vec![(0, size)]
    } else {
        vec![
            (0, MMIO32_MEM_START),
            (MMIO32_MEM_START + MMIO32_MEM_SIZE, size - MMIO32_MEM_START),
        ]
    }
}

/// One mapped region.
#[derive(Debug)]
struct Region {
    /// Host address of the mapping.
    addr: usize,
    /// Size in bytes.
    size: usize,
    /// Where its content starts in the memory file.
    offset: u64,
}

/// One entry of the `Uffd` hand-over: Firecracker's `GuestRegionUffdMapping`,
/// fields in its order. In v1.16.1 `page_size_kib` holds the page size in
/// **bytes** (the same value as `page_size`; the name is a kept mistake).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct GuestRegionUffdMapping {
    /// Host virtual address of the region in the VMM.
    pub base_host_virt_addr: u64,
    /// Region size, bytes.
    pub size: u64,
    /// Offset of the region's content in the memory file.
    pub offset: u64,
    /// Page size, bytes.
    pub page_size: u64,
    /// Page size, bytes (sic).
    pub page_size_kib: u64,
}

/// The guest memory: mapped regions, and which pages were written since the last
/// snapshot. Shared by the VMM (snapshots) and the guest thread.
#[derive(Debug)]
pub struct GuestMemory {
    regions: Vec<Region>,
    pages: usize,
    dirty: Vec<AtomicU64>,
    /// Firecracker keeps its own copy of the userfaultfd.
    uffd: Option<OwnedFd>,
    /// Mapped from a memory file (`MAP_PRIVATE`), where discarding a page
    /// needs a fresh anonymous mapping to read as zero.
    file_backed: bool,
    /// Pages the balloon holds, at the top of memory.
    balloon: AtomicUsize,
}

// SAFETY: the regions are plain memory mappings owned by this value until drop;
// every access goes through volatile reads and writes of whole words.
unsafe impl Send for GuestMemory {}
// SAFETY: as above; concurrent accesses are word-sized volatile operations, and
// the dirty bitmap is atomic.
unsafe impl Sync for GuestMemory {}

/// Why the memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// `mmap` failed.
    #[error("Cannot create guest memory")]
    Mmap(#[source] io::Error),
    /// Creating or configuring the userfaultfd failed.
    #[error("Failed to UFFD object: {0}")]
    Create(io::Error),
    /// `UFFDIO_REGISTER` failed.
    #[error("Failed to register memory address range with the userfaultfd object: {0}")]
    Register(io::Error),
    /// The page server's socket did not accept the connection.
    #[error("Failed to connect to UDS Unix stream: {0}")]
    Connect(io::Error),
    /// Sending the hand-over failed.
    #[error("Failed to sends file descriptor: {0}")]
    Send(io::Error),
}

fn mmap(size: usize, fd: Option<(RawFd, u64)>) -> io::Result<usize> {
    let (flags, fd, offset) = match fd {
        None => (
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        ),
        Some((fd, offset)) => (
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            fd,
            libc::off_t::try_from(offset)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        ),
    };
    // SAFETY: a fresh mapping at an address the kernel chooses; nothing else is
    // affected. The result is checked before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            offset,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p as usize)
}

impl GuestMemory {
    fn map(size: u64, file: Option<&File>) -> Result<Self, MemoryError> {
        let mut regions: Vec<Region> = Vec::new();
        let mut offset = 0;
        for (_, len) in arch_memory_regions(size) {
            let len_usize = usize::try_from(len)
                .map_err(|_| MemoryError::Mmap(io::Error::from_raw_os_error(libc::ENOMEM)))?;
            let addr = mmap(len_usize, file.map(|f| (f.as_raw_fd(), offset)));
            let addr = match addr {
                Ok(a) => a,
                Err(e) => {
                    // The regions mapped so far are unmapped when `partial` drops.
                    let partial = Self {
                        regions,
                        pages: 0,
                        dirty: Vec::new(),
                        uffd: None,
                        file_backed: false,
                        balloon: AtomicUsize::new(0),
                    };
                    drop(partial);
                    return Err(MemoryError::Mmap(e));
                }
            };
            regions.push(Region {
                addr,
                size: len_usize,
                offset,
            });
            offset += len;
        }
        let pages = usize::try_from(size).unwrap_or(usize::MAX) / PAGE_SIZE;
        let dirty = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        Ok(Self {
            regions,
            pages,
            dirty,
            uffd: None,
            file_backed: file.is_some(),
            balloon: AtomicUsize::new(0),
        })
    }

    /// Anonymous memory of `size` bytes (zero until written).
    pub fn anonymous(size: u64) -> Result<Self, MemoryError> {
        Self::map(size, None)
    }

    /// The memory file mapped `MAP_PRIVATE`: reads see the file, writes stay private.
    pub fn from_file(file: &File, size: u64) -> Result<Self, MemoryError> {
        Self::map(size, Some(file))
    }

    /// Anonymous memory registered with a new userfaultfd, handed to the page
    /// server listening on `socket` (Firecracker's `guest_memory_from_uffd`).
    /// Returns the memory (which keeps a copy of the userfaultfd) and the
    /// connection, which Firecracker never closes.
    pub fn from_uffd(socket: &Path, size: u64) -> Result<(Self, UnixStream), MemoryError> {
        let mut mem = Self::anonymous(size)?;
        let uffd = uffd::create().map_err(MemoryError::Create)?;
        for r in &mem.regions {
            uffd::register(&uffd, r.addr, r.size).map_err(MemoryError::Register)?;
        }
        let stream = uffd_handshake(socket, &mem.uffd_mappings(), &uffd)?;
        mem.uffd = Some(uffd);
        Ok((mem, stream))
    }

    /// The hand-over's region list.
    pub fn uffd_mappings(&self) -> Vec<GuestRegionUffdMapping> {
        self.regions
            .iter()
            .map(|r| GuestRegionUffdMapping {
                base_host_virt_addr: r.addr as u64,
                size: r.size as u64,
                offset: r.offset,
                page_size: PAGE_SIZE as u64,
                page_size_kib: PAGE_SIZE as u64,
            })
            .collect()
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        (self.pages * PAGE_SIZE) as u64
    }

    /// Host address of page `index`.
    fn page_addr(&self, index: usize) -> usize {
        let mut off = index * PAGE_SIZE;
        for r in &self.regions {
            if off < r.size {
                return r.addr + off;
            }
            off -= r.size;
        }
        panic!("page {index} is outside guest memory");
    }

    /// Reads word `word` (0..512) of page `index`, faulting it in if needed.
    pub fn read_word(&self, index: usize, word: usize) -> u64 {
        assert!(word < PAGE_SIZE / 8);
        let p = (self.page_addr(index) + word * 8) as *const u64;
        // SAFETY: `p` is an aligned word inside a live mapping of this memory.
        u64::from_le(unsafe { p.read_volatile() })
    }

    /// Writes word `word` of page `index` and marks the page dirty.
    pub fn write_word(&self, index: usize, word: usize, value: u64) {
        assert!(word < PAGE_SIZE / 8);
        let p = (self.page_addr(index) + word * 8) as *mut u64;
        // SAFETY: `p` is an aligned word inside a live, writable mapping of this
        // memory; other accesses to guest memory are volatile too.
        unsafe { p.write_volatile(value.to_le()) };
        self.dirty[index / 64].fetch_or(1 << (index % 64), Ordering::Relaxed);
    }

    /// Adds page `index` to `sum`, reading it word by word.
    pub fn checksum_page(&self, index: usize, sum: &mut Checksum) {
        let base = self.page_addr(index) as *const u64;
        for w in 0..PAGE_SIZE / 8 {
            // SAFETY: `base.add(w)` stays inside the page, inside a live mapping.
            sum.word(u64::from_le(unsafe { base.add(w).read_volatile() }));
        }
    }

    #[cfg(test)]
    fn page_bytes(&self, index: usize) -> &[u8] {
        // SAFETY: the page lies inside a live mapping that outlives `&self`. It
        // is only read, to be written to a file, while the guest is paused.
        unsafe { std::slice::from_raw_parts(self.page_addr(index) as *const u8, PAGE_SIZE) }
    }

    /// The pages to write in a diff snapshot, as Firecracker's `get_dirty_bitmap`:
    /// written since the last snapshot when dirty pages are tracked, else every
    /// page resident in memory (`mincore`).
    pub fn diff_pages(&self, track_dirty_pages: bool) -> io::Result<Vec<bool>> {
        if track_dirty_pages {
            return Ok((0..self.pages)
                .map(|i| self.dirty[i / 64].load(Ordering::Relaxed) & (1 << (i % 64)) != 0)
                .collect());
        }
        let mut out = Vec::with_capacity(self.pages);
        for r in &self.regions {
            let mut vec = vec![0u8; r.size / PAGE_SIZE];
            // SAFETY: `r` is a live mapping of `r.size` bytes and `vec` has one
            // byte per page of it.
            let rc =
                unsafe { libc::mincore(r.addr as *mut libc::c_void, r.size, vec.as_mut_ptr()) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            out.extend(vec.iter().map(|b| b & 1 != 0));
        }
        Ok(out)
    }

    /// Forgets which pages were written (after a snapshot).
    pub fn reset_dirty(&self) {
        for w in &self.dirty {
            w.store(0, Ordering::Relaxed);
        }
    }

    /// Writes the memory to `file` (already `size()` long): every page, or only
    /// the pages in `only` (leaving the others untouched, holes in a new file).
    pub fn dump(&self, file: &File, only: Option<&[bool]>) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut i = 0;
        while i < self.pages {
            if only.is_some_and(|o| !o[i]) {
                i += 1;
                continue;
            }
            // A run of pages to write, within one region.
            let start = i;
            let region_end = self.region_end(i);
            while i < region_end && only.is_none_or(|o| o[i]) {
                i += 1;
            }
            let len = (i - start) * PAGE_SIZE;
            // SAFETY: pages `start..i` are contiguous inside one live mapping.
            let bytes =
                unsafe { std::slice::from_raw_parts(self.page_addr(start) as *const u8, len) };
            file.write_all_at(bytes, (start * PAGE_SIZE) as u64)?;
        }
        Ok(())
    }

    /// One past the last page of the region holding page `index`.
    fn region_end(&self, index: usize) -> usize {
        let mut end = 0;
        for r in &self.regions {
            end += r.size / PAGE_SIZE;
            if index < end {
                return end;
            }
        }
        self.pages
    }

    /// The balloon driver's work: the balloon holds the top `pages` pages
    /// from now on. Pages it takes are discarded as Firecracker's
    /// `discard_range` does (they read as zero; with a userfaultfd, the page
    /// server hears of it through `UFFD_EVENT_REMOVE`); pages it gives back
    /// stay zero until the guest writes them.
    pub fn set_balloon(&self, pages: usize) -> io::Result<()> {
        let pages = pages.min(self.pages);
        let held = self.balloon.load(Ordering::Acquire);
        if pages > held {
            self.discard(self.pages - pages, self.pages - held)?;
        }
        self.balloon.store(pages, Ordering::Release);
        Ok(())
    }

    /// Pages the balloon holds.
    pub fn balloon_pages(&self) -> usize {
        self.balloon.load(Ordering::Acquire)
    }

    /// Whether the balloon holds page `index` (the guest leaves it alone).
    pub fn ballooned(&self, index: usize) -> bool {
        index >= self.pages - self.balloon_pages()
    }

    /// Drops pages `from..to`, region by region.
    fn discard(&self, from: usize, to: usize) -> io::Result<()> {
        let mut first = 0;
        for r in &self.regions {
            let count = r.size / PAGE_SIZE;
            let (start, end) = (from.max(first), to.min(first + count));
            if start < end {
                let addr = r.addr + (start - first) * PAGE_SIZE;
                let len = (end - start) * PAGE_SIZE;
                // SAFETY: `addr..addr + len` lies inside the live mapping `r`;
                // the guest does not touch ballooned pages, and what it reads
                // there afterwards is zero, as after Firecracker's discard.
                let rc = unsafe {
                    if self.file_backed {
                        let p = libc::mmap(
                            addr as *mut libc::c_void,
                            len,
                            libc::PROT_READ | libc::PROT_WRITE,
                            libc::MAP_FIXED | libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                            -1,
                            0,
                        );
                        if p == libc::MAP_FAILED { -1 } else { 0 }
                    } else {
                        libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED)
                    }
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            first += count;
        }
        Ok(())
    }

    /// Reads the page at file offset `offset` (faulting it in), as Firecracker
    /// touches a few pages while it restores.
    pub fn touch(&self, offset: u64) {
        let index = usize::try_from(offset).unwrap_or(usize::MAX) / PAGE_SIZE;
        if index < self.pages {
            let _ = self.read_word(index, 0);
        }
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        for r in &self.regions {
            // SAFETY: the region was mapped by `mmap` with this address and size
            // and nothing refers to it once the memory is dropped.
            unsafe { libc::munmap(r.addr as *mut libc::c_void, r.size) };
        }
    }
}

/// The page header the guest writes at boot: word 0 the page index, word 1 the
/// VM id hash ([`id_hash`]).
pub fn stamp_page(mem: &GuestMemory, index: usize, id_hash: u64) {
    mem.write_word(index, 0, index as u64);
    mem.write_word(index, 1, id_hash);
}

/// Sends the hand-over to the page server: one message, the JSON array of
/// [`GuestRegionUffdMapping`], with the userfaultfd as `SCM_RIGHTS`
/// (Firecracker's `send_uffd_handshake`). The connection is returned, never
/// closed, as Firecracker leaks it on purpose.
pub fn uffd_handshake(
    socket: &Path,
    mappings: &[GuestRegionUffdMapping],
    uffd: &impl AsRawFd,
) -> Result<UnixStream, MemoryError> {
    let json = serde_json::to_string(mappings).unwrap_or_else(|_| "[]".to_owned());
    let stream = UnixStream::connect(socket).map_err(MemoryError::Connect)?;
    send_with_fd(&stream, json.as_bytes(), uffd.as_raw_fd()).map_err(MemoryError::Send)?;
    Ok(stream)
}

/// `sendmsg` of `data` with one file descriptor in `SCM_RIGHTS`.
fn send_with_fd(stream: &UnixStream, data: &[u8], fd: RawFd) -> io::Result<()> {
    // Room for one cmsghdr plus one int, aligned as cmsghdr needs.
    let mut cmsg_buf = [0u64; 4];
    // sizeof(int), as CMSG_LEN wants it.
    const FD_LEN: libc::c_uint = 4;
    const _: () = assert!(std::mem::size_of::<RawFd>() == FD_LEN as usize);
    let fd_len = FD_LEN;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_len) } as usize;
    assert!(space <= std::mem::size_of_val(&cmsg_buf));
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at a control buffer of `space` bytes, enough for one
    // header carrying one fd, so CMSG_FIRSTHDR is non-null and CMSG_DATA is in
    // bounds; `iov` points at `data`, which outlives the call.
    let sent = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_len) as _;
        libc::CMSG_DATA(cmsg).cast::<RawFd>().write_unaligned(fd);
        libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The userfaultfd calls Firecracker makes through the `userfaultfd` crate.
pub mod uffd {
    use super::*;

    /// `UFFD_API`.
    pub const UFFD_API: u64 = 0xaa;
    /// `UFFD_FEATURE_EVENT_REMOVE`, the one feature Firecracker requests.
    pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
    /// `UFFD_USER_MODE_ONLY`.
    const UFFD_USER_MODE_ONLY: libc::c_int = 1;
    /// `UFFDIO_REGISTER_MODE_MISSING`.
    pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
    /// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
    pub const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
    /// `_IOWR(0xAA, 0x00, struct uffdio_register)`.
    pub const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
    /// `_IOWR(0xAA, 0x03, struct uffdio_copy)`.
    pub const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
    /// `_IO(0xAA, 0x00)` on `/dev/userfaultfd`.
    const USERFAULTFD_IOC_NEW: libc::c_ulong = 0xaa00;
    /// `UFFD_EVENT_PAGEFAULT`.
    pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

    /// `struct uffdio_api`.
    #[repr(C)]
    #[derive(Debug, Default)]
    pub struct UffdioApi {
        /// `api`.
        pub api: u64,
        /// `features`.
        pub features: u64,
        /// `ioctls`.
        pub ioctls: u64,
    }

    /// `struct uffdio_register`.
    #[repr(C)]
    #[derive(Debug, Default)]
    pub struct UffdioRegister {
        /// `range.start`.
        pub start: u64,
        /// `range.len`.
        pub len: u64,
        /// `mode`.
        pub mode: u64,
        /// `ioctls`.
        pub ioctls: u64,
    }

    /// `struct uffdio_copy`.
    #[repr(C)]
    #[derive(Debug, Default)]
    pub struct UffdioCopy {
        /// `dst`.
        pub dst: u64,
        /// `src`.
        pub src: u64,
        /// `len`.
        pub len: u64,
        /// `mode`.
        pub mode: u64,
        /// `copy`.
        pub copy: i64,
    }

    fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    /// A userfaultfd with `O_CLOEXEC | O_NONBLOCK` and `UFFD_API` done with
    /// `UFFD_FEATURE_EVENT_REMOVE`, as Firecracker's `UffdBuilder` (which opens
    /// `/dev/userfaultfd` first, then falls back to the system call). Unlike
    /// Firecracker, an unprivileged fake falls back to `UFFD_USER_MODE_ONLY`: its
    /// "guest" faults from user mode, and a page server cannot tell.
    pub fn create() -> io::Result<OwnedFd> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        let fd = from_device(flags)
            .or_else(|_| from_syscall(flags))
            .or_else(|_| from_syscall(flags | UFFD_USER_MODE_ONLY))?;
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_EVENT_REMOVE,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes one `uffdio_api`, which `api` is.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) }.into())?;
        Ok(fd)
    }

    fn from_device(flags: libc::c_int) -> io::Result<OwnedFd> {
        let dev = File::options()
            .read(true)
            .write(true)
            .open("/dev/userfaultfd")?;
        // SAFETY: USERFAULTFD_IOC_NEW takes the flags by value and returns a new fd.
        let fd = check(unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) }.into())?;
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(raw_fd(fd)?) })
    }

    fn from_syscall(flags: libc::c_int) -> io::Result<OwnedFd> {
        // SAFETY: userfaultfd(2) takes the flags and returns a new fd.
        let fd = check(unsafe { libc::syscall(libc::SYS_userfaultfd, flags) })?;
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(raw_fd(fd)?) })
    }

    fn raw_fd(fd: libc::c_long) -> io::Result<RawFd> {
        RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))
    }

    /// Registers `addr..addr + len` in missing mode.
    pub fn register(uffd: &OwnedFd, addr: usize, len: usize) -> io::Result<()> {
        let mut reg = UffdioRegister {
            start: addr as u64,
            len: len as u64,
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one `uffdio_register`.
        check(unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &mut reg) }.into())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region_large_memory_skips_the_mmio_hole() {
        assert_eq!(arch_memory_regions(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(
            arch_memory_regions(4 << 30),
            vec![(0, 3328 << 20), (4 << 30, 768 << 20)]
        );
    }

    #[test]
    fn mapping_json_has_firecrackers_shape() {
        let m = GuestRegionUffdMapping {
            base_host_virt_addr: 140_000_834_355_200,
            size: 134_217_728,
            offset: 0,
            page_size: 4096,
            page_size_kib: 4096,
        };
        assert_eq!(
            serde_json::to_string(&[m]).unwrap(),
            r#"[{"base_host_virt_addr":140000834355200,"size":134217728,"offset":0,"page_size":4096,"page_size_kib":4096}]"#
        );
    }

    #[test]
    fn checksum_of_memory_equals_checksum_of_its_bytes() {
        let mem = GuestMemory::anonymous(64 << 10).unwrap();
        for i in 0..mem.pages() {
            stamp_page(&mem, i, 7);
        }
        let mut a = Checksum::new();
        let mut b = Checksum::new();
        for i in 0..mem.pages() {
            mem.checksum_page(i, &mut a);
            b.update(mem.page_bytes(i));
        }
        assert_eq!(a, b);
        assert_eq!(mem.read_word(3, 0), 3);
    }
}
