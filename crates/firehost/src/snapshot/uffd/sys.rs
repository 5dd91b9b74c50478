//! The userfaultfd ioctls, wrapped: creation, the API handshake,
//! registration, and the three ways to resolve a missing page (copy, zero,
//! poison).
//!
//! The structs mirror `<linux/userfaultfd.h>` field for field. The only
//! `unsafe` here is the ioctl calls, each of which hands the kernel a
//! pointer to one of those structs; the kernel validates every address
//! inside them (a bad source or destination is `EFAULT`, an unregistered
//! destination `ENOENT`/`EINVAL`), so resolving faults is safe. Registering
//! memory is not: it hands whoever reads the descriptor the power to decide
//! what that memory holds, hence [`Userfaultfd::register_missing`] is an
//! `unsafe fn`.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use std::os::fd::FromRawFd;

use rustix::ioctl::{self, Ioctl, IoctlOutput, Opcode, Updater, opcode};

/// `UFFD_API`, the only version of the protocol.
const UFFD_API: u64 = 0xAA;
/// The ioctl group of userfaultfd.
const UFFDIO: u8 = 0xAA;

/// `UFFD_EVENT_PAGEFAULT`.
const EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_EVENT_REMOVE`.
const EVENT_REMOVE: u8 = 0x15;

/// Feature bits negotiated with [`Userfaultfd::api`] (`UFFD_FEATURE_*`).
pub mod features {
    /// `UFFD_FEATURE_EVENT_REMOVE`: report `madvise(MADV_DONTNEED)` and
    /// `MADV_REMOVE` on registered ranges (Firecracker enables it for the
    /// balloon).
    pub const EVENT_REMOVE: u64 = 1 << 3;
    /// `UFFD_FEATURE_MISSING_HUGETLBFS`: hugetlbfs ranges can be registered.
    pub const MISSING_HUGETLBFS: u64 = 1 << 4;
    /// `UFFD_FEATURE_THREAD_ID`: faults carry the faulting thread's id.
    pub const THREAD_ID: u64 = 1 << 8;
    /// `UFFD_FEATURE_POISON` (Linux 6.6): `UFFDIO_POISON` is available.
    pub const POISON: u64 = 1 << 14;
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    /// Bytes copied, or a negated errno.
    copy: i64,
}

/// `struct uffdio_zeropage` and `struct uffdio_poison` have one layout:
/// a range, a mode, and the bytes done (or a negated errno).
#[repr(C)]
#[derive(Debug, Default)]
struct UffdioFill {
    range: UffdioRange,
    mode: u64,
    done: i64,
}

const API: Opcode = opcode::read_write::<UffdioApi>(UFFDIO, 0x3F);
const REGISTER: Opcode = opcode::read_write::<UffdioRegister>(UFFDIO, 0x00);
// UNREGISTER and WAKE are `_IOR` in the header, though the kernel only reads
// them: a historical mistake kept for ABI compatibility.
const UNREGISTER: Opcode = opcode::read::<UffdioRange>(UFFDIO, 0x01);
const WAKE: Opcode = opcode::read::<UffdioRange>(UFFDIO, 0x02);
const COPY: Opcode = opcode::read_write::<UffdioCopy>(UFFDIO, 0x03);
const ZEROPAGE: Opcode = opcode::read_write::<UffdioFill>(UFFDIO, 0x04);
const POISON: Opcode = opcode::read_write::<UffdioFill>(UFFDIO, 0x08);
/// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd`.
const IOC_NEW: Opcode = opcode::none(UFFDIO, 0x00);

/// `UFFDIO_REGISTER_MODE_MISSING`.
const REGISTER_MODE_MISSING: u64 = 1;
/// `UFFDIO_COPY_MODE_DONTWAKE`, `UFFDIO_ZEROPAGE_MODE_DONTWAKE`,
/// `UFFDIO_POISON_MODE_DONTWAKE`: all bit 0.
const MODE_DONTWAKE: u64 = 1;

/// The size of `struct uffd_msg`.
pub const MSG_BYTES: usize = 32;

/// One event read from a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UffdEvent {
    /// A thread touched a registered page that is missing
    /// (`UFFD_EVENT_PAGEFAULT`); it sleeps until the page is resolved.
    PageFault {
        /// The faulting address (not page-aligned unless
        /// `UFFD_FEATURE_EXACT_ADDRESS` was not requested, in which case the
        /// kernel already aligned it).
        address: u64,
        /// `UFFD_PAGEFAULT_FLAG_*`.
        flags: u64,
    },
    /// `[start, end)` was dropped with `madvise(MADV_DONTNEED)` or
    /// `MADV_REMOVE` (`UFFD_EVENT_REMOVE`): its pages are missing again, and
    /// their content is now zero.
    Remove {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// Any other event (fork, remap, unmap: Firecracker does not enable
    /// them).
    Other {
        /// The `UFFD_EVENT_*` code.
        code: u8,
    },
}

impl UffdEvent {
    /// Decodes one `struct uffd_msg`.
    pub fn decode(msg: &[u8; MSG_BYTES]) -> UffdEvent {
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&msg[at..at + 8]);
            u64::from_ne_bytes(b)
        };
        // Header: u8 event, u8, u16, u32; then the union at byte 8.
        match msg[0] {
            EVENT_PAGEFAULT => UffdEvent::PageFault {
                flags: word(8),
                address: word(16),
            },
            EVENT_REMOVE => UffdEvent::Remove {
                start: word(8),
                end: word(16),
            },
            code => UffdEvent::Other { code },
        }
    }
}

/// A failed fill (`UFFDIO_COPY`, `UFFDIO_ZEROPAGE`, `UFFDIO_POISON`): the
/// errno and how many bytes were filled before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("userfaultfd fill stopped after {done_bytes} bytes")]
pub struct FillError {
    /// Why it stopped. `EAGAIN` with `done_bytes > 0` means "partial, go on";
    /// `EAGAIN` alone means the address space is changing (a remove event
    /// is pending: read the events, then retry); `EEXIST` means the page is
    /// already present; `ESRCH` and `ENOENT` mean the process or its mapping
    /// is gone.
    #[source]
    pub errno: Errno,
    /// Bytes resolved before the error.
    pub done_bytes: u64,
}

/// An owned userfaultfd.
#[derive(Debug)]
pub struct Userfaultfd {
    fd: OwnedFd,
}

impl Userfaultfd {
    /// Creates a userfaultfd for this process (what Firecracker does on
    /// restore): close-on-exec, optionally non-blocking. Tries the
    /// `userfaultfd` syscall first, then `/dev/userfaultfd` (Linux 6.1), so
    /// it works both as root and for a user granted the device.
    pub fn create(nonblocking: bool) -> io::Result<Userfaultfd> {
        let mut flags = rustix::mm::UserfaultfdFlags::CLOEXEC;
        if nonblocking {
            flags |= rustix::mm::UserfaultfdFlags::NONBLOCK;
        }
        // SAFETY: the syscall only creates a descriptor; the power it grants
        // over memory starts with `register_missing`, which is unsafe.
        match unsafe { rustix::mm::userfaultfd(flags) } {
            Ok(fd) => return Ok(Userfaultfd { fd }),
            Err(e) if e != Errno::PERM && e != Errno::NOSYS => return Err(e.into()),
            Err(_) => {}
        }
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/userfaultfd")?;
        let new = NewUffd {
            flags: flags.bits() as usize,
        };
        // SAFETY: `NewUffd` describes USERFAULTFD_IOC_NEW exactly (see its
        // `Ioctl` impl); creating a descriptor grants nothing by itself.
        let fd = unsafe { ioctl::ioctl(&dev, new) }?;
        Ok(Userfaultfd { fd })
    }

    /// Wraps a descriptor received from Firecracker. The handshake
    /// ([`Userfaultfd::api`]) was done by the creator.
    pub fn from_fd(fd: OwnedFd) -> Userfaultfd {
        Userfaultfd { fd }
    }

    /// `UFFDIO_API`: enables `features` (a mask of [`features`] bits) and
    /// returns the features the kernel supports. Done once, by the creator.
    pub fn api(&self, features: u64) -> Result<u64, Errno> {
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes a `struct uffdio_api`, which
        // `UffdioApi` mirrors; the borrow outlives the call.
        unsafe { ioctl::ioctl(&self.fd, Updater::<API, _>::new(&mut api)) }?;
        Ok(api.features)
    }

    /// `UFFDIO_REGISTER` in missing-page mode: from now on a thread touching
    /// a missing page of `[start, start + len)` sleeps until a reader of this
    /// descriptor resolves it.
    ///
    /// # Safety
    ///
    /// The range must be memory of this process whose content nothing relies
    /// on until it is resolved (a fresh anonymous mapping, say), because the
    /// holder of the descriptor decides what missing pages contain. A thread
    /// touching the range blocks until then, so a reader must exist.
    pub unsafe fn register_missing(&self, start: u64, len: u64) -> Result<(), Errno> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes a `struct
        // uffdio_register`, which `UffdioRegister` mirrors; the caller
        // vouched for the range.
        unsafe { ioctl::ioctl(&self.fd, Updater::<REGISTER, _>::new(&mut reg)) }
    }

    /// `UFFDIO_UNREGISTER`: `[start, start + len)` of the creator's address
    /// space stops being tracked and faults there are handled by the kernel
    /// again (zero pages for anonymous memory). Works from any holder of the
    /// descriptor, not only the creator.
    pub fn unregister(&self, start: u64, len: u64) -> Result<(), Errno> {
        let mut range = UffdioRange { start, len };
        // SAFETY: UFFDIO_UNREGISTER reads a `struct uffdio_range`, which
        // `UffdioRange` mirrors. Unregistering only hands faults back to the
        // kernel.
        unsafe { ioctl::ioctl(&self.fd, Updater::<UNREGISTER, _>::new(&mut range)) }
    }

    /// `UFFDIO_WAKE`: wakes threads sleeping on faults in the range (used
    /// when a fill found the page already present).
    pub fn wake(&self, start: u64, len: u64) -> Result<(), Errno> {
        let mut range = UffdioRange { start, len };
        // SAFETY: UFFDIO_WAKE reads a `struct uffdio_range`, which
        // `UffdioRange` mirrors.
        unsafe { ioctl::ioctl(&self.fd, Updater::<WAKE, _>::new(&mut range)) }
    }

    /// `UFFDIO_COPY`: atomically fills the missing pages `[dst, dst + len)`
    /// of the creator's address space with `len` bytes read from `src` in
    /// this process, and wakes the threads waiting on them (unless
    /// `wake` is false). Never overwrites a present page (`EEXIST`).
    ///
    /// `src` is read by the kernel, never dereferenced here: an invalid
    /// source is an `EFAULT`, not undefined behaviour.
    pub fn copy(&self, dst: u64, src: *const u8, len: u64, wake: bool) -> Result<(), FillError> {
        let mut copy = UffdioCopy {
            dst,
            src: src as u64,
            len,
            mode: if wake { 0 } else { MODE_DONTWAKE },
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads and writes a `struct uffdio_copy`, which
        // `UffdioCopy` mirrors; the kernel checks both addresses.
        let r = unsafe { ioctl::ioctl(&self.fd, Updater::<COPY, _>::new(&mut copy)) };
        fill_result(r, copy.copy)
    }

    /// `UFFDIO_ZEROPAGE`: fills the missing pages of the range with zeros.
    /// Not supported on hugetlbfs ranges (`EINVAL`): copy zeros there.
    pub fn zeropage(&self, start: u64, len: u64) -> Result<(), FillError> {
        let mut zero = UffdioFill {
            range: UffdioRange { start, len },
            ..Default::default()
        };
        // SAFETY: UFFDIO_ZEROPAGE reads and writes a `struct
        // uffdio_zeropage`, which `UffdioFill` mirrors.
        let r = unsafe { ioctl::ioctl(&self.fd, Updater::<ZEROPAGE, _>::new(&mut zero)) };
        fill_result(r, zero.done)
    }

    /// `UFFDIO_POISON` (Linux 6.6): marks the missing pages of the range so
    /// that touching them raises `SIGBUS` (a syscall reading them fails with
    /// `EFAULT`), and wakes the threads waiting on them. The marks outlive
    /// unregistration. Older kernels answer `EINVAL` or `ENOTTY`.
    pub fn poison(&self, start: u64, len: u64) -> Result<(), FillError> {
        let mut poison = UffdioFill {
            range: UffdioRange { start, len },
            ..Default::default()
        };
        // SAFETY: UFFDIO_POISON reads and writes a `struct uffdio_poison`,
        // which `UffdioFill` mirrors.
        let r = unsafe { ioctl::ioctl(&self.fd, Updater::<POISON, _>::new(&mut poison)) };
        fill_result(r, poison.done)
    }

    /// Reads the pending events into `out` (cleared first) without
    /// blocking on a non-blocking descriptor; returns how many were read
    /// (zero when none is pending).
    pub fn read_events(&self, out: &mut Vec<UffdEvent>) -> Result<usize, Errno> {
        const BATCH: usize = 64;
        out.clear();
        let mut buf = [0u8; MSG_BYTES * BATCH];
        let n = match rustix::io::read(&self.fd, &mut buf) {
            Ok(n) => n,
            Err(Errno::AGAIN) => return Ok(0),
            Err(e) => return Err(e),
        };
        for msg in buf[..n].chunks_exact(MSG_BYTES) {
            let msg: &[u8; MSG_BYTES] = msg.try_into().expect("chunks_exact yields MSG_BYTES");
            out.push(UffdEvent::decode(msg));
        }
        Ok(out.len())
    }
}

impl AsFd for Userfaultfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `USERFAULTFD_IOC_NEW`: takes the creation flags as its integer argument
/// and returns a new userfaultfd.
struct NewUffd {
    flags: usize,
}

// SAFETY: USERFAULTFD_IOC_NEW is `_IO(0xAA, 0x00)` on `/dev/userfaultfd`; its
// argument is an integer (passed as the pointer value, never dereferenced),
// it modifies no user memory, and it returns a fresh descriptor that nothing
// else owns.
unsafe impl Ioctl for NewUffd {
    type Output = OwnedFd;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        IOC_NEW
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        std::ptr::without_provenance_mut(self.flags)
    }

    unsafe fn output_from_ptr(
        out: IoctlOutput,
        _: *mut std::ffi::c_void,
    ) -> rustix::io::Result<OwnedFd> {
        // SAFETY: on success the ioctl returned a new descriptor that this
        // process owns and nothing else refers to.
        Ok(unsafe { OwnedFd::from_raw_fd(out) })
    }
}

fn fill_result(r: Result<(), Errno>, done: i64) -> Result<(), FillError> {
    match r {
        Ok(()) => Ok(()),
        Err(errno) => Err(FillError {
            errno,
            done_bytes: u64::try_from(done).unwrap_or(0),
        }),
    }
}
