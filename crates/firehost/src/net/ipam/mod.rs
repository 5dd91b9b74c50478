//! Guest IP and MAC allocation in one IPv4 subnet.
//!
//! Every VM on the default network gets an address in the guest subnet
//! (for example `172.30.0.0/16`), the gateway that the bridge holds, a MAC
//! address the host and the guest agree on, and the DNS servers the host
//! hands out. Two VMs must never share an address, and a manager that
//! restarts must never hand out an address a live VM still holds.
//!
//! The map, one file per job (this one has the errors):
//!
//! - `addr.rs`: [`Subnet`], a validated IPv4 CIDR with its network,
//!   broadcast and first host address; [`MacAddr`], and
//!   [`MacAddr::for_vm`], the deterministic per-VM MAC.
//! - `allocator.rs`: [`Allocator`], the leases. [`Allocator::allocate`] picks the lowest free
//!   address, [`Allocator::allocate_requested`] honours `--ip` / `--mac`,
//!   [`Allocator::release`] frees a VM's lease.
//! - Persistence: there is none of its own. The allocator's state is
//!   derived from the VM records ([`Allocator::from_allocated`],
//!   [`Allocator::from_leases`]); a create's intent covers the window
//!   between allocating and writing the VM's record.
//! - `guest.rs`: [`GuestNet`], what one guest needs to know, and
//!   [`GuestNet::kernel_ip_arg`], the kernel's `ip=` boot argument.
//!
//! # Which addresses are handed out
//!
//! The network address, the broadcast address and the gateway are never
//! handed out. The gateway defaults to the first host address
//! (`172.30.0.1` in `172.30.0.0/16`). Prefixes longer than /30 are refused:
//! they leave no address for a guest once the gateway is taken.
//!
//! Allocation is lowest-free: the result depends only on the set of live
//! leases, not on history, so a restarted manager computes the same next
//! address as the one before it, and releasing an address makes it the next
//! one handed out. The search walks the sorted leases, `O(leases)`.
//!
//! # MAC addresses
//!
//! [`MacAddr::for_vm`] is `06:` followed by five bytes of a BLAKE3 hash of
//! the VM id (and an attempt counter). `0x06` has the locally administered
//! bit set and the multicast bit clear, so the address is a valid unicast
//! address that no vendor owns, and firehost's MACs are recognisable by their
//! first octet. With 40 hashed bits a collision is very unlikely (about
//! 5·10⁻⁷ among 1,000 VMs), but not impossible: the allocator checks the MAC
//! against every live lease and, on a collision, tries attempt 1, 2, … of the
//! hash until it finds a free one. The chosen MAC is part of the lease and is
//! persisted with it, so it never changes for a live VM.

mod addr;
mod allocator;
mod guest;

use std::fmt;
use std::net::Ipv4Addr;

pub use crate::vocab::{MacAddr, MacSyntaxError};
pub use addr::Subnet;
use addr::mask_bits;
pub use allocator::{Allocator, Lease};
pub use guest::GuestNet;

use crate::VmId;

/// The longest prefix firehost accepts: a /30 has two host addresses, one
/// for the gateway and one for a guest.
pub const MAX_PREFIX_LEN: u8 = 30;

/// Why a subnet, an address or a lease was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpamError {
    /// The subnet is not written as `a.b.c.d/len`.
    #[error("subnet {text:?} is not an IPv4 CIDR like 172.30.0.0/16")]
    SubnetSyntax {
        /// What was given.
        text: String,
    },
    /// The prefix length is out of range (0 to 30).
    #[error("subnet prefix /{prefix_len} is out of range: use /0 to /{MAX_PREFIX_LEN}")]
    PrefixLen {
        /// The prefix length given.
        prefix_len: u8,
    },
    /// The address has bits set below the prefix.
    #[error("{addr}/{prefix_len} has host bits set; the network is {network}/{prefix_len}")]
    HostBitsSet {
        /// The address given.
        addr: Ipv4Addr,
        /// The prefix length given.
        prefix_len: u8,
        /// The network address the caller probably meant.
        network: Ipv4Addr,
    },
    /// An address (a guest's or the gateway) is not inside the subnet.
    #[error("address {ip} is outside the guest subnet {subnet}")]
    OutOfSubnet {
        /// The address.
        ip: Ipv4Addr,
        /// The subnet.
        subnet: Subnet,
    },
    /// The address is the subnet's network, broadcast or gateway address.
    #[error("address {ip} is the {role} address of {subnet} and is never handed out")]
    Reserved {
        /// The address.
        ip: Ipv4Addr,
        /// Which reserved address it is.
        role: ReservedRole,
        /// The subnet.
        subnet: Subnet,
    },
    /// Another VM holds the address.
    #[error("address {ip} is already held by VM {holder}")]
    IpTaken {
        /// The address.
        ip: Ipv4Addr,
        /// The VM that holds it.
        holder: VmId,
    },
    /// Another VM holds the MAC address.
    #[error("MAC {mac} is already held by VM {holder}")]
    MacTaken {
        /// The MAC address.
        mac: MacAddr,
        /// The VM that holds it.
        holder: VmId,
    },
    /// A requested MAC is multicast (or broadcast) and cannot name a NIC.
    #[error("MAC {mac} is a multicast address; a NIC needs a unicast one")]
    MacNotUnicast {
        /// The MAC address.
        mac: MacAddr,
    },
    /// A MAC address does not parse.
    #[error(transparent)]
    MacSyntax(#[from] MacSyntaxError),
    /// The VM already has a lease; release it first.
    #[error("VM {vm} already holds address {ip}")]
    AlreadyAllocated {
        /// The VM.
        vm: VmId,
        /// The address it holds.
        ip: Ipv4Addr,
    },
    /// Every address of the subnet is taken.
    #[error("guest subnet {subnet} is exhausted: all {leases} guest addresses are held")]
    Exhausted {
        /// The subnet.
        subnet: Subnet,
        /// How many leases are live.
        leases: usize,
    },
    /// Every MAC candidate for the VM collided (a practically impossible
    /// run of hash collisions; reported rather than looping forever).
    #[error("no free MAC for VM {vm} after {attempts} attempts")]
    MacExhausted {
        /// The VM.
        vm: VmId,
        /// How many candidates were tried.
        attempts: u32,
    },
}

/// Which reserved address of a subnet an address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservedRole {
    /// The network address (all host bits clear).
    Network,
    /// The broadcast address (all host bits set).
    Broadcast,
    /// The gateway, held by the bridge.
    Gateway,
}

impl fmt::Display for ReservedRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReservedRole::Network => "network",
            ReservedRole::Broadcast => "broadcast",
            ReservedRole::Gateway => "gateway",
        })
    }
}
