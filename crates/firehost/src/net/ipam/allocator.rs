//! The leases of one subnet: which VM has which address and MAC.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{GuestNet, IpamError, MacAddr, ReservedRole, Subnet};
use crate::VmId;

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
        self.allocate_avoiding(vm, ip, mac, &BTreeSet::new())
    }

    /// Like [`allocate_requested`](Self::allocate_requested), except that
    /// an address picked for the caller is never one in `avoid`; one asked
    /// for may be.
    ///
    /// The default network avoids the addresses that restored guests keep
    /// inside their namespaces: a VM whose host address is such a guest's
    /// own could not be reached from that guest.
    pub fn allocate_avoiding(
        &mut self,
        vm: &VmId,
        ip: Option<Ipv4Addr>,
        mac: Option<MacAddr>,
        avoid: &BTreeSet<Ipv4Addr>,
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
            None => self.lowest_free(avoid)?,
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
            prefix_len: self.subnet.prefix_len(),
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

    /// The lowest host address that is neither the gateway, leased nor in
    /// `avoid`: walks the sorted leases and stops at the first gap.
    fn lowest_free(&self, avoid: &BTreeSet<Ipv4Addr>) -> Result<Ipv4Addr, IpamError> {
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
            if candidate == gateway || avoid.contains(&Ipv4Addr::from(candidate)) {
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
    fn addresses_to_avoid_are_skipped_but_can_still_be_asked_for() {
        let mut a = Allocator::new("10.0.0.0/29".parse().unwrap(), None).unwrap();
        let avoid = [ip("10.0.0.2"), ip("10.0.0.4")].into_iter().collect();
        let first = a.allocate_avoiding(&vm("a"), None, None, &avoid).unwrap();
        let second = a.allocate_avoiding(&vm("b"), None, None, &avoid).unwrap();
        assert_eq!((first.ip, second.ip), (ip("10.0.0.3"), ip("10.0.0.5")));
        let asked = a.allocate_avoiding(&vm("c"), Some(ip("10.0.0.2")), None, &avoid);
        assert_eq!(asked.unwrap().ip, ip("10.0.0.2"));
        // .6 is the last; .4 is only avoided, but nothing else is left.
        a.allocate_avoiding(&vm("d"), None, None, &avoid).unwrap();
        let err = a
            .allocate_avoiding(&vm("e"), None, None, &avoid)
            .unwrap_err();
        assert!(
            matches!(err, IpamError::Exhausted { leases: 4, .. }),
            "{err:?}"
        );
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
