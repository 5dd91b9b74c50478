//! Guest IP and MAC allocation in one IPv4 subnet.
//!
//! Every VM on the default network gets an address in the guest subnet
//! (for example `172.30.0.0/16`), the gateway that the bridge holds, a MAC
//! address the host and the guest agree on, and the DNS servers the host
//! hands out. Two VMs must never share an address, and a manager that
//! restarts must never hand out an address a live VM still holds.
//!
//! The map:
//!
//! - [`Subnet`]: a validated IPv4 CIDR, with its network, broadcast and
//!   first host address.
//! - [`MacAddr`]: a MAC address, and [`MacAddr::for_vm`], the deterministic
//!   per-VM MAC.
//! - [`Allocator`]: the leases. [`Allocator::allocate`] picks the lowest free
//!   address, [`Allocator::allocate_requested`] honours `--ip` / `--mac`,
//!   [`Allocator::release`] frees a VM's lease.
//! - Persistence: there is none of its own. The allocator's state is
//!   derived from the VM records ([`Allocator::from_allocated`],
//!   [`Allocator::from_leases`]); a create's intent covers the window
//!   between allocating and writing the VM's record.
//! - [`GuestNet`]: what one guest needs to know, and
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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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
    /// A MAC address is not six hex octets separated by `:`.
    #[error("{text:?} is not a MAC address like 06:00:ac:1e:00:02")]
    MacSyntax {
        /// What was given.
        text: String,
    },
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

/// An IPv4 subnet: a network address with no host bits set and a prefix
/// length of at most [`MAX_PREFIX_LEN`].
///
/// # Examples
///
/// ```
/// use firehost::net::ipam::Subnet;
/// use std::net::Ipv4Addr;
///
/// let s: Subnet = "172.30.0.0/16".parse().unwrap();
/// assert_eq!(s.first_host(), Ipv4Addr::new(172, 30, 0, 1));
/// assert_eq!(s.broadcast(), Ipv4Addr::new(172, 30, 255, 255));
/// assert_eq!(s.netmask(), Ipv4Addr::new(255, 255, 0, 0));
/// assert!("172.30.0.1/16".parse::<Subnet>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Subnet {
    /// Checks and builds a subnet.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Result<Self, IpamError> {
        if prefix_len > MAX_PREFIX_LEN {
            return Err(IpamError::PrefixLen { prefix_len });
        }
        let mask = mask_bits(prefix_len);
        let bits = u32::from(network);
        if bits & !mask != 0 {
            return Err(IpamError::HostBitsSet {
                addr: network,
                prefix_len,
                network: Ipv4Addr::from(bits & mask),
            });
        }
        Ok(Subnet {
            network,
            prefix_len,
        })
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The netmask, e.g. `255.255.0.0` for a /16.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix_len))
    }

    /// The broadcast address (all host bits set).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask_bits(self.prefix_len))
    }

    /// The first host address, the default gateway.
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The last host address.
    pub fn last_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.broadcast()) - 1)
    }

    /// How many host addresses the subnet has (network and broadcast
    /// excluded; the gateway included).
    pub fn host_count(&self) -> u32 {
        u32::from(self.last_host()) - u32::from(self.first_host()) + 1
    }

    /// Whether `ip` is inside the subnet (reserved addresses included).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask_bits(self.prefix_len) == u32::from(self.network)
    }

    /// Whether `ip` is a host address of the subnet (neither the network
    /// nor the broadcast address).
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network && ip != self.broadcast()
    }
}

fn mask_bits(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Subnet {
    type Err = IpamError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || IpamError::SubnetSyntax { text: s.to_owned() };
        let (addr, len) = s.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let prefix_len: u8 = len.parse().map_err(|_| syntax())?;
        Subnet::new(addr, prefix_len)
    }
}

impl Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A MAC (Ethernet hardware) address, written `06:00:ac:1e:00:02`.
///
/// # Examples
///
/// ```
/// use firehost::{VmId, net::ipam::MacAddr};
///
/// let mac = MacAddr::for_vm(&VmId::new("web-1").unwrap(), 0);
/// assert_eq!(mac.octets()[0], 0x06);
/// assert!(mac.is_unicast() && mac.is_locally_administered());
/// assert_eq!(mac.to_string().parse::<MacAddr>().unwrap(), mac);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// The first octet of every derived MAC: locally administered (bit 1
    /// set), unicast (bit 0 clear).
    pub const DERIVED_PREFIX: u8 = 0x06;

    /// Wraps six octets.
    pub const fn new(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }

    /// The six octets.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Whether the address is unicast (the I/G bit of the first octet is
    /// clear).
    pub const fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0
    }

    /// Whether the address is locally administered (the U/L bit of the
    /// first octet is set).
    pub const fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// The deterministic MAC of `vm`, candidate number `attempt` (0 first;
    /// the allocator moves on to 1, 2, … only when a live VM already holds
    /// the candidate). `06:` and five bytes of
    /// `BLAKE3("firehost-mac\0" ‖ id ‖ attempt as u32 LE)`.
    pub fn for_vm(vm: &VmId, attempt: u32) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"firehost-mac\0");
        hasher.update(vm.as_str().as_bytes());
        hasher.update(&attempt.to_le_bytes());
        let hash = hasher.finalize();
        let h = hash.as_bytes();
        MacAddr([Self::DERIVED_PREFIX, h[0], h[1], h[2], h[3], h[4]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = IpamError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || IpamError::MacSyntax { text: s.to_owned() };
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(syntax)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(syntax());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
        }
        if parts.next().is_some() {
            return Err(syntax());
        }
        Ok(MacAddr(octets))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One VM's address and MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The guest's IPv4 address.
    pub ip: Ipv4Addr,
    /// The guest NIC's MAC address.
    pub mac: MacAddr,
}

/// How many MAC candidates [`Allocator`] tries before giving up.
const MAC_ATTEMPTS: u32 = 64;

/// The leases of one guest subnet.
///
/// Not thread-safe by itself: the manager keeps it behind its network's
/// lock. It does no I/O.
///
/// # Examples
///
/// ```
/// use firehost::{VmId, net::ipam::Allocator};
/// use std::net::Ipv4Addr;
///
/// let mut alloc = Allocator::new("172.30.0.0/24".parse().unwrap(), None).unwrap();
/// let a = VmId::new("a").unwrap();
/// let lease = alloc.allocate(&a).unwrap();
/// assert_eq!(lease.ip, Ipv4Addr::new(172, 30, 0, 2)); // .1 is the gateway
/// alloc.release(&a);
/// assert_eq!(alloc.allocate(&a).unwrap().ip, lease.ip);
/// ```
#[derive(Debug, Clone)]
pub struct Allocator {
    subnet: Subnet,
    gateway: Ipv4Addr,
    by_vm: BTreeMap<VmId, Lease>,
    by_ip: BTreeMap<Ipv4Addr, VmId>,
    by_mac: HashMap<MacAddr, VmId>,
}

impl Allocator {
    /// An empty allocator for `subnet`, with `gateway` (default: the first
    /// host address). The gateway must be a host address of the subnet.
    pub fn new(subnet: Subnet, gateway: Option<Ipv4Addr>) -> Result<Self, IpamError> {
        let gateway = gateway.unwrap_or_else(|| subnet.first_host());
        if !subnet.contains(gateway) {
            return Err(IpamError::OutOfSubnet {
                ip: gateway,
                subnet,
            });
        }
        if let Some(role) = network_role(&subnet, gateway) {
            return Err(IpamError::Reserved {
                ip: gateway,
                role,
                subnet,
            });
        }
        Ok(Allocator {
            subnet,
            gateway,
            by_vm: BTreeMap::new(),
            by_ip: BTreeMap::new(),
            by_mac: HashMap::new(),
        })
    }

    /// Rebuilds the allocator from the addresses live VMs hold (read from
    /// their records). MACs are derived with [`MacAddr::for_vm`] in VM id
    /// order; use [`Allocator::from_leases`] when the records hold the MACs
    /// too, so that a collision-perturbed MAC is kept as it was.
    ///
    /// Refuses addresses that are outside the subnet, reserved, or held
    /// twice.
    pub fn from_allocated(
        subnet: Subnet,
        gateway: Option<Ipv4Addr>,
        allocated: impl IntoIterator<Item = (VmId, Ipv4Addr)>,
    ) -> Result<Self, IpamError> {
        let mut alloc = Allocator::new(subnet, gateway)?;
        let mut sorted: Vec<(VmId, Ipv4Addr)> = allocated.into_iter().collect();
        sorted.sort();
        for (vm, ip) in sorted {
            alloc.allocate_requested(&vm, Some(ip), None)?;
        }
        Ok(alloc)
    }

    /// Rebuilds the allocator from full leases (address and MAC), as kept
    /// in VM records. Refuses anything
    /// [`Allocator::allocate_requested`] would refuse.
    pub fn from_leases(
        subnet: Subnet,
        gateway: Option<Ipv4Addr>,
        leases: impl IntoIterator<Item = (VmId, Lease)>,
    ) -> Result<Self, IpamError> {
        let mut alloc = Allocator::new(subnet, gateway)?;
        for (vm, lease) in leases {
            alloc.allocate_requested(&vm, Some(lease.ip), Some(lease.mac))?;
        }
        Ok(alloc)
    }

    /// The subnet.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// The gateway address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// How many leases are live.
    pub fn len(&self) -> usize {
        self.by_vm.len()
    }

    /// Whether no lease is live.
    pub fn is_empty(&self) -> bool {
        self.by_vm.is_empty()
    }

    /// How many guest addresses the subnet offers in all (host addresses
    /// less the gateway).
    pub fn capacity(&self) -> u32 {
        self.subnet.host_count() - 1
    }

    /// The lease of `vm`, if it has one.
    pub fn get(&self, vm: &VmId) -> Option<Lease> {
        self.by_vm.get(vm).copied()
    }

    /// The VM that holds `ip`, if any.
    pub fn holder(&self, ip: Ipv4Addr) -> Option<&VmId> {
        self.by_ip.get(&ip)
    }

    /// All leases, in VM id order.
    pub fn leases(&self) -> impl Iterator<Item = (&VmId, Lease)> + '_ {
        self.by_vm.iter().map(|(vm, l)| (vm, *l))
    }

    /// Which reserved address `ip` is, if it is one (network, broadcast or
    /// gateway).
    pub fn reserved_role(&self, ip: Ipv4Addr) -> Option<ReservedRole> {
        if ip == self.gateway {
            return Some(ReservedRole::Gateway);
        }
        network_role(&self.subnet, ip)
    }

    /// Gives `vm` the lowest free address and its deterministic MAC.
    pub fn allocate(&mut self, vm: &VmId) -> Result<Lease, IpamError> {
        self.allocate_requested(vm, None, None)
    }

    /// Gives `vm` the address `ip` when given (else the lowest free one)
    /// and the MAC `mac` when given (else its deterministic MAC).
    ///
    /// A requested address must be a host address of the subnet, not the
    /// gateway, and free; a requested MAC must be unicast and free. On any
    /// error nothing changes.
    pub fn allocate_requested(
        &mut self,
        vm: &VmId,
        ip: Option<Ipv4Addr>,
        mac: Option<MacAddr>,
    ) -> Result<Lease, IpamError> {
        if let Some(lease) = self.by_vm.get(vm) {
            return Err(IpamError::AlreadyAllocated {
                vm: vm.clone(),
                ip: lease.ip,
            });
        }
        let ip = match ip {
            Some(ip) => {
                self.check_requested_ip(ip)?;
                ip
            }
            None => self.lowest_free()?,
        };
        let mac = match mac {
            Some(mac) => {
                if !mac.is_unicast() {
                    return Err(IpamError::MacNotUnicast { mac });
                }
                if let Some(holder) = self.by_mac.get(&mac) {
                    return Err(IpamError::MacTaken {
                        mac,
                        holder: holder.clone(),
                    });
                }
                mac
            }
            None => self.derive_mac(vm)?,
        };
        let lease = Lease { ip, mac };
        self.by_vm.insert(vm.clone(), lease);
        self.by_ip.insert(ip, vm.clone());
        self.by_mac.insert(mac, vm.clone());
        Ok(lease)
    }

    /// Frees the lease of `vm` and returns it (`None` if it had none).
    pub fn release(&mut self, vm: &VmId) -> Option<Lease> {
        let lease = self.by_vm.remove(vm)?;
        self.by_ip.remove(&lease.ip);
        self.by_mac.remove(&lease.mac);
        Some(lease)
    }

    /// Keeps only the leases of VMs for which `live` is true; used after a
    /// restart to drop the leases of VMs that died while no manager ran.
    pub fn retain(&mut self, mut live: impl FnMut(&VmId) -> bool) {
        let dead: Vec<VmId> = self.by_vm.keys().filter(|vm| !live(vm)).cloned().collect();
        for vm in dead {
            self.release(&vm);
        }
    }

    /// What the guest of `vm` needs to know, if `vm` has a lease.
    pub fn guest_net(&self, vm: &VmId, dns: &[Ipv4Addr]) -> Option<GuestNet> {
        let lease = self.get(vm)?;
        Some(GuestNet {
            ip: lease.ip,
            prefix_len: self.subnet.prefix_len,
            gateway: self.gateway,
            mac: lease.mac,
            dns: dns.to_vec(),
        })
    }

    fn check_requested_ip(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        if !self.subnet.contains(ip) {
            return Err(IpamError::OutOfSubnet {
                ip,
                subnet: self.subnet,
            });
        }
        if let Some(role) = self.reserved_role(ip) {
            return Err(IpamError::Reserved {
                ip,
                role,
                subnet: self.subnet,
            });
        }
        if let Some(holder) = self.by_ip.get(&ip) {
            return Err(IpamError::IpTaken {
                ip,
                holder: holder.clone(),
            });
        }
        Ok(())
    }

    /// The lowest host address that is neither the gateway nor leased:
    /// walks the sorted leases and stops at the first gap.
    fn lowest_free(&self) -> Result<Ipv4Addr, IpamError> {
        let first = u32::from(self.subnet.first_host());
        let last = u32::from(self.subnet.last_host());
        let gateway = u32::from(self.gateway);
        // Taken addresses in order: leases (all inside the subnet, never the
        // gateway) merged with the gateway.
        let mut candidate = first;
        let mut leased = self.by_ip.keys().map(|ip| u32::from(*ip)).peekable();
        loop {
            if candidate > last {
                return Err(IpamError::Exhausted {
                    subnet: self.subnet,
                    leases: self.by_vm.len(),
                });
            }
            if candidate == gateway {
                candidate += 1;
                continue;
            }
            while leased.next_if(|&ip| ip < candidate).is_some() {}
            if leased.next_if_eq(&candidate).is_some() {
                candidate += 1;
                continue;
            }
            return Ok(Ipv4Addr::from(candidate));
        }
    }

    fn derive_mac(&self, vm: &VmId) -> Result<MacAddr, IpamError> {
        (0..MAC_ATTEMPTS)
            .map(|attempt| MacAddr::for_vm(vm, attempt))
            .find(|mac| !self.by_mac.contains_key(mac))
            .ok_or_else(|| IpamError::MacExhausted {
                vm: vm.clone(),
                attempts: MAC_ATTEMPTS,
            })
    }
}

fn network_role(subnet: &Subnet, ip: Ipv4Addr) -> Option<ReservedRole> {
    if ip == subnet.network() {
        Some(ReservedRole::Network)
    } else if ip == subnet.broadcast() {
        Some(ReservedRole::Broadcast)
    } else {
        None
    }
}

/// What one guest needs to know about its network, as kept in the VM
/// record for the agent and turned into the kernel's `ip=` argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNet {
    /// The guest's address.
    pub ip: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix_len: u8,
    /// The default gateway (the bridge's address).
    pub gateway: Ipv4Addr,
    /// The guest NIC's MAC address.
    pub mac: MacAddr,
    /// DNS servers handed to the guest, in order. The kernel's `ip=`
    /// argument carries the first two; the agent reads all of them from the
    /// record.
    pub dns: Vec<Ipv4Addr>,
}

impl GuestNet {
    /// The netmask for [`GuestNet::prefix_len`].
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix_len.min(32)))
    }

    /// The kernel's static-IP boot argument for this guest.
    ///
    /// The kernel's IP autoconfiguration (`CONFIG_IP_PNP`, documented in
    /// `Documentation/admin-guide/nfs/nfsroot.rst`) takes
    ///
    /// ```text
    /// ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>:<ntp0-ip>
    /// ```
    ///
    /// We fill the client address, the gateway, the netmask, the hostname
    /// (optional; the kernel truncates it at 64 bytes, and a [`VmId`] is at
    /// most 64), the device (`eth0` for a Firecracker guest's first NIC),
    /// `off` for autoconf (no DHCP/BOOTP/RARP: the address is static) and up
    /// to two DNS servers, the most the kernel accepts; it writes them to
    /// `/proc/net/pnp`, which a guest can link as `/etc/resolv.conf`. The
    /// NFS server and NTP fields stay empty; trailing empty fields are
    /// omitted. DNS servers past the second are left out here and reach the
    /// guest through the VM record (the agent).
    ///
    /// # Examples
    ///
    /// ```
    /// use firehost::{VmId, net::ipam::{GuestNet, MacAddr}};
    ///
    /// let net = GuestNet {
    ///     ip: "172.30.0.2".parse().unwrap(),
    ///     prefix_len: 16,
    ///     gateway: "172.30.0.1".parse().unwrap(),
    ///     mac: MacAddr::new([6, 0, 0, 0, 0, 1]),
    ///     dns: vec!["1.1.1.1".parse().unwrap()],
    /// };
    /// assert_eq!(
    ///     net.kernel_ip_arg(None, "eth0"),
    ///     "ip=172.30.0.2::172.30.0.1:255.255.0.0::eth0:off:1.1.1.1"
    /// );
    /// ```
    pub fn kernel_ip_arg(&self, hostname: Option<&VmId>, device: &str) -> String {
        let mut arg = format!(
            "ip={}::{}:{}:{}:{}:off",
            self.ip,
            self.gateway,
            self.netmask(),
            hostname.map(VmId::as_str).unwrap_or(""),
            device
        );
        for dns in self.dns.iter().take(2) {
            arg.push(':');
            arg.push_str(&dns.to_string());
        }
        arg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vm(s: &str) -> VmId {
        VmId::new(s).unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn subnet_parsing_accepts_cidrs_and_refuses_the_rest() {
        type Case<'a> = (&'a str, Result<(&'a str, u8), &'a str>);
        let cases: &[Case] = &[
            ("172.30.0.0/16", Ok(("172.30.0.0", 16))),
            ("10.0.0.0/8", Ok(("10.0.0.0", 8))),
            ("192.168.7.4/30", Ok(("192.168.7.4", 30))),
            ("0.0.0.0/0", Ok(("0.0.0.0", 0))),
            ("172.30.0.1/16", Err("HostBitsSet")),
            ("172.30.0.0/31", Err("PrefixLen")),
            ("172.30.0.0/32", Err("PrefixLen")),
            ("172.30.0.0/33", Err("PrefixLen")),
            ("172.30.0.0", Err("SubnetSyntax")),
            ("172.30.0.0/", Err("SubnetSyntax")),
            ("172.30.0.0/+6", Err("SubnetSyntax")),
            ("172.30.0.0/016", Err("SubnetSyntax")),
            ("172.30.0/16", Err("SubnetSyntax")),
            ("fd00::/64", Err("SubnetSyntax")),
        ];
        for (text, want) in cases {
            let got = text.parse::<Subnet>();
            match (want, got) {
                (Ok((net, len)), Ok(s)) => {
                    assert_eq!((s.network(), s.prefix_len()), (ip(net), *len), "{text}")
                }
                (Err(kind), Err(e)) => {
                    assert!(format!("{e:?}").starts_with(kind), "{text}: {e:?}")
                }
                (want, got) => panic!("{text}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn subnet_arithmetic_matches_hand_computed_values() {
        // (subnet, first host, last host, broadcast, netmask, host count)
        let cases = [
            (
                "172.30.0.0/16",
                "172.30.0.1",
                "172.30.255.254",
                "172.30.255.255",
                "255.255.0.0",
                65534,
            ),
            (
                "10.1.2.0/24",
                "10.1.2.1",
                "10.1.2.254",
                "10.1.2.255",
                "255.255.255.0",
                254,
            ),
            (
                "10.1.2.8/30",
                "10.1.2.9",
                "10.1.2.10",
                "10.1.2.11",
                "255.255.255.252",
                2,
            ),
        ];
        for (s, first, last, bcast, mask, count) in cases {
            let s: Subnet = s.parse().unwrap();
            assert_eq!(s.first_host(), ip(first), "{s}");
            assert_eq!(s.last_host(), ip(last), "{s}");
            assert_eq!(s.broadcast(), ip(bcast), "{s}");
            assert_eq!(s.netmask(), ip(mask), "{s}");
            assert_eq!(s.host_count(), count, "{s}");
        }
    }

    #[test]
    fn allocation_skips_network_gateway_and_broadcast() {
        let mut a = Allocator::new("10.0.0.0/29".parse().unwrap(), None).unwrap();
        let got: Vec<Ipv4Addr> = (0..5)
            .map(|i| a.allocate(&vm(&format!("v{i}"))).unwrap().ip)
            .collect();
        let want: Vec<Ipv4Addr> = (2..=6).map(|h| Ipv4Addr::new(10, 0, 0, h)).collect();
        assert_eq!(got, want);
        let err = a.allocate(&vm("v5")).unwrap_err();
        assert!(
            matches!(err, IpamError::Exhausted { leases: 5, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_gateway_in_the_middle_is_skipped() {
        let mut a = Allocator::new("10.0.0.0/29".parse().unwrap(), Some(ip("10.0.0.3"))).unwrap();
        let got: Vec<Ipv4Addr> = (0..5)
            .map(|i| a.allocate(&vm(&format!("v{i}"))).unwrap().ip)
            .collect();
        assert_eq!(
            got,
            ["10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map(ip)
        );
    }

    #[test]
    fn gateway_must_be_a_host_address_of_the_subnet() {
        let s: Subnet = "10.0.0.0/24".parse().unwrap();
        let cases = [
            ("10.0.1.1", "OutOfSubnet"),
            ("10.0.0.0", "Reserved"),
            ("10.0.0.255", "Reserved"),
        ];
        for (gw, kind) in cases {
            let e = Allocator::new(s, Some(ip(gw))).unwrap_err();
            assert!(format!("{e:?}").starts_with(kind), "{gw}: {e:?}");
        }
    }

    #[test]
    fn explicit_requests_refuse_taken_reserved_and_foreign_addresses() {
        let mut a = Allocator::new("172.30.0.0/16".parse().unwrap(), None).unwrap();
        a.allocate_requested(&vm("holder"), Some(ip("172.30.1.1")), None)
            .unwrap();
        let cases: &[(&str, &str)] = &[
            ("172.30.1.1", "IpTaken"),
            ("172.30.0.0", "Reserved { ip: 172.30.0.0, role: Network"),
            (
                "172.30.255.255",
                "Reserved { ip: 172.30.255.255, role: Broadcast",
            ),
            ("172.30.0.1", "Reserved { ip: 172.30.0.1, role: Gateway"),
            ("172.31.0.5", "OutOfSubnet"),
            ("10.0.0.2", "OutOfSubnet"),
        ];
        for (req, kind) in cases {
            let before = a.clone();
            let e = a
                .allocate_requested(&vm("asker"), Some(ip(req)), None)
                .unwrap_err();
            assert!(format!("{e:?}").starts_with(kind), "{req}: {e:?}");
            assert_eq!(
                a.len(),
                before.len(),
                "{req}: a refused request changed nothing"
            );
            assert_eq!(a.get(&vm("asker")), None);
        }
        let ok = a
            .allocate_requested(&vm("asker"), Some(ip("172.30.200.7")), None)
            .unwrap();
        assert_eq!(ok.ip, ip("172.30.200.7"));
    }

    #[test]
    fn taken_ip_error_names_the_holder() {
        let mut a = Allocator::new("10.0.0.0/24".parse().unwrap(), None).unwrap();
        a.allocate_requested(&vm("first"), Some(ip("10.0.0.9")), None)
            .unwrap();
        match a.allocate_requested(&vm("second"), Some(ip("10.0.0.9")), None) {
            Err(IpamError::IpTaken { ip: got, holder }) => {
                assert_eq!((got, holder.as_str()), (ip("10.0.0.9"), "first"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_vm_holds_one_lease_at_a_time() {
        let mut a = Allocator::new("10.0.0.0/24".parse().unwrap(), None).unwrap();
        a.allocate(&vm("x")).unwrap();
        let e = a.allocate(&vm("x")).unwrap_err();
        assert!(matches!(e, IpamError::AlreadyAllocated { .. }), "{e:?}");
    }

    #[test]
    fn requested_macs_must_be_unicast_and_free() {
        let mut a = Allocator::new("10.0.0.0/24".parse().unwrap(), None).unwrap();
        let mac: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        a.allocate_requested(&vm("a"), None, Some(mac)).unwrap();
        let e = a.allocate_requested(&vm("b"), None, Some(mac)).unwrap_err();
        assert!(matches!(e, IpamError::MacTaken { .. }), "{e:?}");
        let multicast: MacAddr = "01:00:5e:00:00:01".parse().unwrap();
        let e = a
            .allocate_requested(&vm("b"), None, Some(multicast))
            .unwrap_err();
        assert!(matches!(e, IpamError::MacNotUnicast { .. }), "{e:?}");
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn derived_macs_are_stable_locally_administered_unicast() {
        let m = MacAddr::for_vm(&vm("web-1"), 0);
        assert_eq!(m, MacAddr::for_vm(&vm("web-1"), 0), "stable");
        assert_ne!(m, MacAddr::for_vm(&vm("web-1"), 1), "attempts differ");
        assert_ne!(m, MacAddr::for_vm(&vm("web-2"), 0), "ids differ");
        assert_eq!(m.octets()[0], 0x06);
        assert!(m.is_unicast() && m.is_locally_administered());
    }

    #[test]
    fn a_mac_collision_is_perturbed_to_the_next_candidate() {
        let mut a = Allocator::new("10.0.0.0/24".parse().unwrap(), None).unwrap();
        // Someone took web-1's first candidate by hand.
        let squatted = MacAddr::for_vm(&vm("web-1"), 0);
        a.allocate_requested(&vm("squatter"), None, Some(squatted))
            .unwrap();
        let lease = a.allocate(&vm("web-1")).unwrap();
        assert_eq!(lease.mac, MacAddr::for_vm(&vm("web-1"), 1));
    }

    #[test]
    fn mac_parsing_is_strict() {
        let cases = [
            ("06:00:ac:1e:00:02", true),
            ("06:00:AC:1E:00:02", true),
            ("06:00:ac:1e:00", false),
            ("06:00:ac:1e:00:02:03", false),
            ("06-00-ac-1e-00-02", false),
            ("6:00:ac:1e:00:02", false),
            ("06:00:ac:1e:00:+2", false),
            ("", false),
        ];
        for (text, ok) in cases {
            assert_eq!(text.parse::<MacAddr>().is_ok(), ok, "{text}");
        }
    }

    #[test]
    fn kernel_ip_arg_follows_the_nfsroot_field_order() {
        let base = GuestNet {
            ip: ip("172.30.0.2"),
            prefix_len: 16,
            gateway: ip("172.30.0.1"),
            mac: MacAddr::new([6, 0, 0, 0, 0, 1]),
            dns: vec![],
        };
        let with_dns = |dns: &[&str]| GuestNet {
            dns: dns.iter().map(|d| ip(d)).collect(),
            ..base.clone()
        };
        let cases = [
            (
                base.clone(),
                None,
                "ip=172.30.0.2::172.30.0.1:255.255.0.0::eth0:off",
            ),
            (
                base.clone(),
                Some(vm("web-1")),
                "ip=172.30.0.2::172.30.0.1:255.255.0.0:web-1:eth0:off",
            ),
            (
                with_dns(&["1.1.1.1", "9.9.9.9"]),
                None,
                "ip=172.30.0.2::172.30.0.1:255.255.0.0::eth0:off:1.1.1.1:9.9.9.9",
            ),
            (
                with_dns(&["1.1.1.1", "9.9.9.9", "8.8.8.8"]),
                None,
                "ip=172.30.0.2::172.30.0.1:255.255.0.0::eth0:off:1.1.1.1:9.9.9.9",
            ),
        ];
        for (net, host, want) in cases {
            assert_eq!(net.kernel_ip_arg(host.as_ref(), "eth0"), want);
        }
    }

    #[test]
    fn retain_drops_dead_vms_leases() {
        let mut a = Allocator::new("10.0.0.0/24".parse().unwrap(), None).unwrap();
        for name in ["live", "dead"] {
            a.allocate(&vm(name)).unwrap();
        }
        a.retain(|v| v.as_str() == "live");
        assert_eq!(
            a.leases()
                .map(|(v, _)| v.as_str().to_owned())
                .collect::<Vec<_>>(),
            ["live"]
        );
    }

    /// An operation for the property tests.
    #[derive(Debug, Clone)]
    enum Op {
        Allocate(u8),
        Request(u8, u8),
        Release(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..40).prop_map(Op::Allocate),
            1 => (0u8..40, any::<u8>()).prop_map(|(v, h)| Op::Request(v, h)),
            2 => (0u8..40).prop_map(Op::Release),
        ]
    }

    fn run(ops: &[Op], gateway_host: u8) -> Allocator {
        // A /27: 30 host addresses, so exhaustion is reached too.
        let s: Subnet = "10.7.0.32/27".parse().unwrap();
        let gw = Ipv4Addr::new(10, 7, 0, 33 + gateway_host % 30);
        let mut a = Allocator::new(s, Some(gw)).unwrap();
        for op in ops {
            match *op {
                Op::Allocate(v) => {
                    let _ = a.allocate(&vm(&format!("v{v}")));
                }
                Op::Request(v, h) => {
                    let _ = a.allocate_requested(
                        &vm(&format!("v{v}")),
                        Some(Ipv4Addr::new(10, 7, 0, h)),
                        None,
                    );
                }
                Op::Release(v) => {
                    a.release(&vm(&format!("v{v}")));
                }
            }
        }
        a
    }

    proptest! {
        #[test]
        fn leases_are_unique_and_never_reserved(ops in prop::collection::vec(op(), 0..200), gw in any::<u8>()) {
            let a = run(&ops, gw);
            let s = a.subnet();
            let mut ips = std::collections::HashSet::new();
            let mut macs = std::collections::HashSet::new();
            for (_, lease) in a.leases() {
                prop_assert!(ips.insert(lease.ip), "duplicate ip {}", lease.ip);
                prop_assert!(macs.insert(lease.mac), "duplicate mac {}", lease.mac);
                prop_assert!(s.is_host(lease.ip));
                prop_assert_ne!(lease.ip, a.gateway());
                prop_assert_ne!(lease.ip, s.network());
                prop_assert_ne!(lease.ip, s.broadcast());
                prop_assert!(lease.mac.is_unicast() && lease.mac.is_locally_administered());
            }
            prop_assert!(a.len() <= usize::try_from(a.capacity()).unwrap());
        }

        #[test]
        fn allocation_fails_only_when_the_subnet_is_full(ops in prop::collection::vec(op(), 0..200), gw in any::<u8>()) {
            let mut a = run(&ops, gw);
            match a.allocate(&vm("fresh")) {
                Ok(_) => {}
                Err(IpamError::Exhausted { .. }) => prop_assert_eq!(a.len(), usize::try_from(a.capacity()).unwrap()),
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
        }

        #[test]
        fn release_then_allocate_reuses_the_lowest_freed_address(ops in prop::collection::vec(op(), 0..200), gw in any::<u8>(), pick in any::<prop::sample::Index>()) {
            let mut a = run(&ops, gw);
            let vms: Vec<VmId> = a.leases().map(|(v, _)| v.clone()).collect();
            prop_assume!(!vms.is_empty());
            // Fill the subnet so that the freed address is the only free one.
            let mut i = 0;
            while a.allocate(&vm(&format!("fill{i}"))).is_ok() {
                i += 1;
            }
            let victim = &vms[pick.index(vms.len())];
            let freed = a.release(victim).unwrap();
            let again = a.allocate(&vm("newcomer")).unwrap();
            prop_assert_eq!(again.ip, freed.ip);
        }

        #[test]
        fn from_allocated_round_trips(ops in prop::collection::vec(op(), 0..200), gw in any::<u8>()) {
            let a = run(&ops, gw);
            let b = Allocator::from_allocated(
                a.subnet(),
                Some(a.gateway()),
                a.leases().map(|(v, l)| (v.clone(), l.ip)),
            ).unwrap();
            let ips = |x: &Allocator| x.leases().map(|(v, l)| (v.clone(), l.ip)).collect::<Vec<_>>();
            prop_assert_eq!(ips(&a), ips(&b));
            let c = Allocator::from_leases(
                a.subnet(),
                Some(a.gateway()),
                a.leases().map(|(v, l)| (v.clone(), l)),
            ).unwrap();
            prop_assert_eq!(a.leases().collect::<Vec<_>>(), c.leases().collect::<Vec<_>>());
            // The rebuilt allocator hands out the same next address.
            let (mut a, mut b) = (a, b);
            let next_a = a.allocate(&vm("next")).map(|l| l.ip).ok();
            let next_b = b.allocate(&vm("next")).map(|l| l.ip).ok();
            prop_assert_eq!(next_a, next_b);
        }
    }
}
