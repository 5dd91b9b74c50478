//! Persistent TAP devices for Firecracker NICs.
//!
//! Firecracker does not create its TAP: it opens an existing one by name
//! (`host_dev_name` in `PUT /network-interfaces`) with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and then sets offloads and the vnet
//! header size itself. So the host must create the device beforehand,
//! persistent (it outlives the file descriptor that made it) and owned by the
//! uid Firecracker runs as (the jailer drops privileges, and a non-root
//! process may only attach to a TAP it owns).
//!
//! [`Tap::create`] does that in the order that leaves no residue on failure:
//!
//! 1. check that the bridge exists (netlink), before touching anything;
//! 2. open `/dev/net/tun` and `TUNSETIFF` with the same flags Firecracker
//!    uses, plus `IFF_TUN_EXCL`, so that an existing device of that name is a
//!    clash ([`TapError::NameTaken`]) rather than silently shared;
//! 3. `TUNSETOWNER` / `TUNSETGROUP`, then `TUNSETPERSIST` last: if anything
//!    before it fails, closing the descriptor destroys the device;
//! 4. over netlink, make the bridge its controller and set it up; if that
//!    fails, the TAP is deleted again.
//!
//! [`Tap::delete`] removes it over netlink, and refuses to delete a link
//! that is not a TUN/TAP device.
//!
//! # Names
//!
//! [`tap_name_for_vm`] names a VM's TAP `fh` followed by 13 hex digits of a
//! BLAKE3 hash of the VM id, the NIC index and an attempt counter: 15 bytes,
//! exactly what `IFNAMSIZ` allows, whatever the length of the VM id (which can
//! be 64 bytes, so it cannot be used as is). 52 hashed bits make a collision
//! between two live VMs very unlikely (about 10⁻¹⁰ among 1,000 VMs); when one
//! happens, `IFF_TUN_EXCL` turns it into [`TapError::NameTaken`] and the
//! caller retries with the next attempt. The chosen name is recorded in the
//! VM record, so it never needs to be derived again. The `fh` prefix also
//! lets a restarted manager recognise firehost's TAPs.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use rtnetlink::LinkUnspec;

use super::netlink::errno;
use super::{IfName, LinkState, Netlink};
use crate::VmId;

/// The prefix of every TAP name [`tap_name_for_vm`] makes.
pub const TAP_PREFIX: &str = "fh";

/// The flags Firecracker opens its TAP with (`src/vmm/src/devices/virtio/
/// net/tap.rs`): a TAP (Ethernet frames), no packet-info header, with a
/// virtio-net header. We create the device with the same ones.
pub const FIRECRACKER_TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// Why a TAP device could not be created, attached or deleted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TapError {
    /// `/dev/net/tun` could not be opened (missing `tun` module, or no
    /// permission: creating a TAP needs `CAP_NET_ADMIN`).
    #[error("cannot open /dev/net/tun to create TAP {tap}")]
    OpenTun {
        /// The TAP we were creating.
        tap: IfName,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A network device of that name already exists.
    #[error("a network device named {tap} already exists")]
    NameTaken {
        /// The name.
        tap: IfName,
    },
    /// A TUN ioctl failed.
    #[error("{op} on TAP {tap} failed")]
    Ioctl {
        /// The TAP.
        tap: IfName,
        /// The ioctl (`TUNSETIFF`, `TUNSETOWNER`, …).
        op: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// The bridge the TAP should join does not exist.
    #[error("bridge {bridge} for TAP {tap} does not exist")]
    BridgeMissing {
        /// The TAP.
        tap: IfName,
        /// The bridge.
        bridge: IfName,
    },
    /// The link the TAP should join is not a bridge.
    #[error("{bridge} is a {kind:?} link, not a bridge; TAP {tap} cannot join it")]
    NotABridge {
        /// The TAP.
        tap: IfName,
        /// The link.
        bridge: IfName,
        /// Its kind, if it reports one.
        kind: Option<String>,
    },
    /// The TAP to delete does not exist.
    #[error("TAP {tap} does not exist")]
    NotFound {
        /// The name.
        tap: IfName,
    },
    /// The link to delete is not a TUN/TAP device; firehost leaves it alone.
    #[error("{tap} is a {kind:?} link, not a TAP; refusing to delete it")]
    NotATap {
        /// The name.
        tap: IfName,
        /// Its kind.
        kind: Option<String>,
    },
    /// A netlink request failed.
    #[error("netlink {op} for TAP {tap} failed")]
    Netlink {
        /// The TAP.
        tap: IfName,
        /// What we asked for.
        op: &'static str,
        /// The netlink error (with the kernel's errno).
        #[source]
        source: super::NetlinkError,
    },
}

/// The TAP name of NIC `nic` of `vm`, candidate `attempt` (0 first; see the
/// module docs for collisions).
///
/// # Examples
///
/// ```
/// use firehost::{VmId, net::tap::tap_name_for_vm};
///
/// let vm = VmId::new("a-very-long-vm-id-that-would-never-fit-in-ifnamsiz").unwrap();
/// let name = tap_name_for_vm(&vm, 0, 0);
/// assert_eq!(name.as_str().len(), 15);
/// assert!(name.as_str().starts_with("fh"));
/// assert_eq!(name, tap_name_for_vm(&vm, 0, 0));
/// assert_ne!(name, tap_name_for_vm(&vm, 1, 0));
/// ```
pub fn tap_name_for_vm(vm: &VmId, nic: u8, attempt: u32) -> IfName {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"firehost-tap\0");
    hasher.update(vm.as_str().as_bytes());
    hasher.update(&[0, nic]);
    hasher.update(&attempt.to_le_bytes());
    let hex = hasher.finalize().to_hex();
    IfName::new(format!("{TAP_PREFIX}{}", &hex[..13])).expect("fh + 13 hex digits is a valid name")
}

/// The veth pair of a namespaced VM whose TAP is `tap` (a name from
/// [`tap_name_for_vm`]): the host end (`fv…`) and the end in the namespace
/// (`fp…`), with the TAP's hash so they are as unique as it is.
pub fn veth_names_for_tap(tap: &IfName) -> (IfName, IfName) {
    let hash = tap.as_str().strip_prefix(TAP_PREFIX).unwrap_or(tap.as_str());
    let name = |prefix: &str| {
        let mut name = format!("{prefix}{hash}");
        name.truncate(crate::vocab::MAX_IFNAME_LEN);
        IfName::new(name).expect("two letters and the TAP's hex digits are a valid name")
    };
    (name("fv"), name("fp"))
}

/// Who may attach to a TAP: the uid (and optionally gid) Firecracker runs
/// as. `None` leaves the TAP usable by `CAP_NET_ADMIN` only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapOwner {
    /// `TUNSETOWNER`.
    pub uid: Option<u32>,
    /// `TUNSETGROUP`.
    pub gid: Option<u32>,
}

/// A TAP device that exists on the host, attached to a bridge and up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    /// Its name.
    pub name: IfName,
    /// Its interface index at creation.
    pub index: u32,
}

impl Tap {
    /// Creates the persistent TAP `name` owned by `owner`, makes `bridge`
    /// its controller and sets it up. On error nothing is left behind: a TAP
    /// created by this call is deleted again, and an existing device named
    /// `name` is never touched.
    ///
    /// The ioctls run on the thread that polls this future, in that
    /// thread's network namespace (see [the module docs](super)); they do
    /// not block.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped after the ioctls and before the netlink
    /// steps finish, it leaves a persistent TAP that is not up or not
    /// attached. The caller records the name on its undo stack before
    /// calling, and the undo step is [`Tap::delete`], which accepts a
    /// missing TAP.
    pub async fn create(
        nl: &Netlink,
        name: &IfName,
        owner: TapOwner,
        bridge: &IfName,
    ) -> Result<Tap, TapError> {
        let netlink = |op| {
            let tap = name.clone();
            move |source: rtnetlink::Error| TapError::Netlink { tap, op, source: source.into() }
        };
        let Some(bridge_link) = nl.link(bridge).await.map_err(netlink("get bridge"))? else {
            return Err(TapError::BridgeMissing {
                tap: name.clone(),
                bridge: bridge.clone(),
            });
        };
        let bridge_state = LinkState::from_message(&bridge_link);
        if bridge_state.kind.as_deref() != Some("bridge") {
            return Err(TapError::NotABridge {
                tap: name.clone(),
                bridge: bridge.clone(),
                kind: bridge_state.kind,
            });
        }

        create_persistent_tap(name, owner)?;

        let attach = async {
            let link = nl
                .link(name)
                .await
                .map_err(netlink("get"))?
                .ok_or_else(|| TapError::NotFound { tap: name.clone() })?;
            let index = link.header.index;
            let msg = LinkUnspec::new_with_index(index)
                .controller(bridge_state.index)
                .up()
                .build();
            nl.handle()
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(netlink("set controller and up"))?;
            Ok(index)
        };
        match attach.await {
            Ok(index) => Ok(Tap {
                name: name.clone(),
                index,
            }),
            Err(e) => {
                if let Err(undo) = Tap::delete(nl, name).await {
                    tracing::warn!(tap = %name, error = %undo, "could not delete TAP after a failed attach");
                }
                Err(e)
            }
        }
    }

    /// Deletes the TAP `name` over netlink. Returns `false` if there was no
    /// such link (so it can serve as an undo step), and refuses
    /// ([`TapError::NotATap`]) a link that is not a TUN/TAP device.
    ///
    /// # Cancel safety
    ///
    /// Safe: either the delete request was sent or it was not; calling it
    /// again finishes the job.
    pub async fn delete(nl: &Netlink, name: &IfName) -> Result<bool, TapError> {
        let netlink = |op| {
            let tap = name.clone();
            move |source: rtnetlink::Error| TapError::Netlink { tap, op, source: source.into() }
        };
        let Some(link) = nl.link(name).await.map_err(netlink("get"))? else {
            return Ok(false);
        };
        let state = LinkState::from_message(&link);
        if state.kind.as_deref() != Some("tun") {
            return Err(TapError::NotATap {
                tap: name.clone(),
                kind: state.kind,
            });
        }
        match nl.handle().link().del(state.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(netlink("delete")(e)),
        }
    }
}

/// Creates the persistent TAP `name` with [`FIRECRACKER_TAP_FLAGS`], owned
/// by `owner`, and closes it: the device stays, down and unattached.
/// Fails with [`TapError::NameTaken`] if any network device of that name
/// exists. Runs in the calling thread's network namespace.
pub fn create_persistent_tap(name: &IfName, owner: TapOwner) -> Result<(), TapError> {
    let file = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|source| TapError::OpenTun {
            tap: name.clone(),
            source,
        })?;
    let ioctl_err = |op| {
        let tap = name.clone();
        move |source| TapError::Ioctl { tap, op, source }
    };
    let fd = std::os::fd::AsFd::as_fd(&file);
    match tun_set_iff(fd, name, FIRECRACKER_TAP_FLAGS | libc::IFF_TUN_EXCL) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            return Err(TapError::NameTaken { tap: name.clone() });
        }
        Err(e) => return Err(ioctl_err("TUNSETIFF")(e)),
    }
    if let Some(uid) = owner.uid {
        tun_set_value(fd, libc::TUNSETOWNER, libc::c_ulong::from(uid))
            .map_err(ioctl_err("TUNSETOWNER"))?;
    }
    if let Some(gid) = owner.gid {
        tun_set_value(fd, libc::TUNSETGROUP, libc::c_ulong::from(gid))
            .map_err(ioctl_err("TUNSETGROUP"))?;
    }
    // Last: until now, closing `file` (on any error above) destroys the
    // device, so a failed create leaves nothing.
    tun_set_value(fd, libc::TUNSETPERSIST, 1).map_err(ioctl_err("TUNSETPERSIST"))?;
    Ok(())
}

/// `TUNSETIFF` on an open `/dev/net/tun`: attaches `fd` to the device
/// `name`, creating it with `flags`. The name is validated ([`IfName`]: at
/// most 15 bytes, no NUL), so it fits `ifr_name` with its terminator.
fn tun_set_iff(fd: BorrowedFd<'_>, name: &IfName, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `ifreq` is a plain C struct (a byte array and a union of
    // plain integers and structs); all-zero bytes are a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_str().as_bytes();
    debug_assert!(bytes.len() < req.ifr_name.len());
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    // The kernel reads `ifr_flags` as a 16-bit field; our flags fit its
    // unsigned range (0xD002 at most), and the bit pattern is what counts.
    let flags = u16::try_from(flags).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    req.ifr_ifru.ifru_flags = libc::c_short::from_ne_bytes(flags.to_ne_bytes());
    // SAFETY: `fd` is an open descriptor borrowed for the call; TUNSETIFF
    // reads and writes one `struct ifreq`, and `req` is a valid, writable,
    // NUL-terminated (zeroed past the name) `ifreq` that lives across the
    // call. The kernel keeps no pointer to it.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETIFF,
            &mut req as *mut libc::ifreq,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A TUN ioctl that takes its argument by value (`TUNSETPERSIST`,
/// `TUNSETOWNER`, `TUNSETGROUP`).
fn tun_set_value(fd: BorrowedFd<'_>, request: libc::Ioctl, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: `fd` is an open descriptor borrowed for the call, and these
    // requests take an integer, not a pointer, so no memory is shared with
    // the kernel.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, value) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What the kernel reports about a TUN/TAP device (`IFLA_TUN_*` in the
/// link's `IFLA_INFO_DATA`, Linux 4.15 and later). Read back by tests only.
#[cfg(any(test, feature = "test-internals"))]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunInfo {
    /// `IFLA_TUN_OWNER`, when an owner is set.
    pub owner: Option<u32>,
    /// `IFLA_TUN_GROUP`, when a group is set.
    pub group: Option<u32>,
    /// `IFLA_TUN_TYPE` is `IFF_TAP` (not `IFF_TUN`).
    pub tap: bool,
    /// `IFLA_TUN_VNET_HDR`.
    pub vnet_hdr: bool,
    /// `IFLA_TUN_PERSIST`.
    pub persist: bool,
}

#[cfg(any(test, feature = "test-internals"))]
impl TunInfo {
    /// Extracts the TUN facts from a link message, or `None` if the link
    /// is not a TUN/TAP device.
    pub fn from_message(msg: &rtnetlink::packet_route::link::LinkMessage) -> Option<TunInfo> {
        use rtnetlink::packet_core::Nla;
        use rtnetlink::packet_route::link::{InfoData, InfoTun, LinkAttribute, LinkInfo};
        const IFLA_TUN_OWNER: u16 = 1;
        const IFLA_TUN_GROUP: u16 = 2;
        const IFLA_TUN_TYPE: u16 = 3;
        const IFLA_TUN_VNET_HDR: u16 = 5;
        const IFLA_TUN_PERSIST: u16 = 6;
        let nlas = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Data(InfoData::Tun(nlas)) => Some(nlas),
                _ => None,
            }),
            _ => None,
        })?;
        let mut info = TunInfo::default();
        for nla in nlas {
            let InfoTun::Other(nla) = nla else { continue };
            let mut value = vec![0u8; nla.value_len()];
            nla.emit_value(&mut value);
            let u32_value = <[u8; 4]>::try_from(value.as_slice())
                .ok()
                .map(u32::from_ne_bytes);
            let flag = value.first().is_some_and(|b| *b != 0);
            match nla.kind() {
                IFLA_TUN_OWNER => info.owner = u32_value,
                IFLA_TUN_GROUP => info.group = u32_value,
                IFLA_TUN_TYPE => {
                    info.tap = value.first().map(|b| libc::c_int::from(*b)) == Some(libc::IFF_TAP)
                }
                IFLA_TUN_VNET_HDR => info.vnet_hdr = flag,
                IFLA_TUN_PERSIST => info.persist = flag,
                _ => {}
            }
        }
        Some(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_tap_names_fit_ifnamsiz_and_are_distinct_per_vm_and_nic() {
        let ids = ["a", "web-1", "web-2", &"x".repeat(64)];
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            let vm = VmId::new(id).unwrap();
            for nic in 0..4 {
                let name = tap_name_for_vm(&vm, nic, 0);
                assert_eq!(name.as_str().len(), super::super::MAX_IFNAME_LEN);
                assert!(name.as_str().starts_with(TAP_PREFIX));
                assert!(seen.insert(name), "{id} nic {nic}");
            }
        }
    }
}
