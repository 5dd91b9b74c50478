//! Each VM's egress policy as data, and its traffic counters.
//!
//! A VM's packets to the uplink go through the shared `guest_egress`
//! chain, then jump (through the `egress` verdict map, keyed by the VM's
//! host address) to a chain of its own, `vm_<key>` (the key is the
//! address with `_` for dots). Neither chain ever changes after the VM
//! is admitted: the policy lives in elements.
//!
//! - The VM's address rules, then the host's DNS servers (allowed) and
//!   denied ranges, are compiled in order into disjoint regions of
//!   (destination, protocol, port), first match winning: the regions
//!   allowed are elements of the VM's `allow_<key>` interval set, the
//!   regions denied of its `deny_<key>`. What neither holds falls to the
//!   addresses learned from DNS answers (the shared `learned` set, for
//!   VMs with domain rules), then to the default (the VM's address is in
//!   `default_deny` when that is deny).
//! - Domain rules put the VM's address in `domain_vms`, which the shared
//!   chain and the NAT use: DNS, DNS over TLS, DNS-over-HTTPS resolvers and unlearned QUIC
//!   are dropped, DNS and web traffic go to the gateway.
//!
//! Changing a policy swaps elements in one transaction. No rule is
//! added, so the kernel does not re-validate the table (which walks every
//! chain and rule, and so would cost in proportion to the number of VMs),
//! and libnftables reads only the table's set declarations.
//!
//! # Open connections follow the policy in force
//!
//! A new connection is marked with the VM's generation (`ct mark`, from
//! the `mark_of` map), and packets of established connections whose mark
//! is the VM's current generation (`generation` set) go straight
//! through. A new policy gets a new generation, so every open connection
//! is checked against it once at its next packet, and keeps going only if
//! the new policy lets it. Packets in the reply direction (the guest
//! answering a connection made to it) are not the guest's egress.
//!
//! # Counters and learned addresses
//!
//! Per VM, three counters that survive policy changes, each an element
//! of a set shared by all VMs: the VM's port in `tx` and `rx` in the
//! bridge table (every frame the port sends or receives, to the host, its
//! peers or the internet), its address in `dropped` in the ip table
//! (packets its egress policy dropped). A frame is counted in a rule of its
//! own, before the one that accepts it: a counter that cannot be updated
//! never decides a frame's fate. Addresses learned from DNS
//! answers are elements `vm . address` of the shared `learned` set, with
//! a timeout.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::{GuestPort, TABLE};
use crate::vocab::{Cidr, EgressAction, EgressPolicy, Proto};

/// A VM's traffic, as its firewall counters have it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrafficCounters {
    /// Bytes the guest sent (IP packets and ARP, without Ethernet headers).
    pub tx_bytes: u64,
    /// Packets the guest sent.
    pub tx_packets: u64,
    /// Bytes the guest was sent.
    pub rx_bytes: u64,
    /// Packets the guest was sent.
    pub rx_packets: u64,
    /// Packets the guest's egress policy (or the host's denied ranges)
    /// dropped.
    pub egress_dropped: u64,
    /// Names the gateway refused to resolve or connect to for the guest
    /// (a VM with domain rules), since this manager started serving it.
    #[serde(default)]
    pub names_refused: u64,
}

/// What names a VM's chain, counters and sets: its host address with `_`
/// for dots, which the firewall's rules need no quoting for.
pub(super) fn key(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{a}_{b}_{c}_{d}")
}

/// The host's side of every egress chain.
pub(super) struct HostEgress<'a> {
    /// DNS servers guests are told to use: reachable on port 53 whatever
    /// the denied ranges say, so a default like "no private addresses"
    /// does not cut guests off a DNS server on the LAN.
    pub dns: &'a [Ipv4Addr],
    /// Ranges no VM reaches unless its own rule allows them.
    pub deny: &'a [Cidr],
}

/// `verb` (`add` or `delete`) one VM's counters, starting from `counters`
/// when added.
pub(super) fn counters(
    s: &mut String,
    verb: &str,
    port: &GuestPort,
    counters: Option<&TrafficCounters>,
) {
    let (tap, ip) = (&port.tap, port.ip);
    if verb == "add" {
        let c = counters.copied().unwrap_or_default();
        let _ = writeln!(
            s,
            "add element bridge {TABLE} tx {{ \"{tap}\" counter packets {} bytes {} }}",
            c.tx_packets, c.tx_bytes
        );
        let _ = writeln!(
            s,
            "add element bridge {TABLE} rx {{ \"{tap}\" counter packets {} bytes {} }}",
            c.rx_packets, c.rx_bytes
        );
        let _ = writeln!(
            s,
            "add element ip {TABLE} dropped {{ {ip} counter packets {} bytes 0 }}",
            c.egress_dropped
        );
    } else {
        let _ = writeln!(s, "delete element bridge {TABLE} tx {{ \"{tap}\" }}");
        let _ = writeln!(s, "delete element bridge {TABLE} rx {{ \"{tap}\" }}");
        let _ = writeln!(s, "delete element ip {TABLE} dropped {{ {ip} }}");
    }
}

/// `verb` (`add` or `delete`) the chain of a VM whose policy is not open,
/// its two sets and the map element that sends its packets there; added
/// with its rules when `with_rules` (they never change). An open VM has
/// none: the shared chain's own rules are its policy, so admitting one
/// adds no rule (each rule added makes the kernel re-validate the whole
/// table, at a cost that grows with the number of VMs).
pub(super) fn policy_chain(s: &mut String, verb: &str, ip: Ipv4Addr, with_rules: bool) {
    let k = key(ip);
    if verb == "add" {
        for set in ["allow", "deny"] {
            let _ = writeln!(
                s,
                "add set ip {TABLE} {set}_{k} {{ type ipv4_addr . inet_proto . inet_service; flags interval; }}"
            );
        }
        let _ = writeln!(s, "add chain ip {TABLE} vm_{k}");
        if with_rules {
            for rule in [
                format!("ip daddr . meta l4proto . th dport @deny_{k} {DROP}"),
                format!("ip daddr . meta l4proto . th dport @allow_{k} accept"),
                "ip saddr . ip daddr @learned accept".to_owned(),
                format!("ip saddr @default_deny {DROP}"),
                "accept".to_owned(),
            ] {
                let _ = writeln!(s, "add rule ip {TABLE} vm_{k} {rule}");
            }
        }
        let _ = writeln!(s, "add element ip {TABLE} egress {{ {ip} : jump vm_{k} }}");
    } else {
        let _ = writeln!(s, "delete element ip {TABLE} egress {{ {ip} }}");
        let _ = writeln!(s, "flush chain ip {TABLE} vm_{k}");
        let _ = writeln!(s, "delete chain ip {TABLE} vm_{k}");
        let _ = writeln!(s, "delete set ip {TABLE} allow_{k}");
        let _ = writeln!(s, "delete set ip {TABLE} deny_{k}");
    }
}

/// What counts and drops a packet: the VM's `dropped` counter goes up.
const DROP: &str = "update @dropped { ip saddr } drop";

/// The shared chain every VM's packets to the uplink go through first:
/// replies and the current generation's connections, then what VMs with
/// domain rules may not do, then the VM's own chain.
pub(super) fn shared_chain(s: &mut String, doh: &[Ipv4Addr], host: &HostEgress<'_>) {
    let _ = writeln!(s, "  chain guest_egress {{");
    let _ = writeln!(s, "    ct direction reply accept");
    let _ = writeln!(
        s,
        "    ct state established,related ip saddr . ct mark @generation accept"
    );
    // Names are the gateway's to answer: DNS and DNS over TLS to anyone
    // else, DNS over HTTPS to the resolvers known by address, and QUIC to
    // addresses no allowed name resolved to are dropped.
    let _ = writeln!(
        s,
        "    ip saddr @domain_vms meta l4proto {{ tcp, udp }} th dport {{ 53, 853 }} {DROP}"
    );
    if !doh.is_empty() {
        let _ = writeln!(
            s,
            "    ip saddr @domain_vms ip daddr {} meta l4proto {{ tcp, udp }} th dport 443 {DROP}",
            set_of(doh.iter())
        );
    }
    let _ = writeln!(
        s,
        "    ip saddr @domain_vms udp dport 443 ip saddr . ip daddr != @learned {DROP}"
    );
    // Connections let through carry the VM's generation.
    let _ = writeln!(s, "    ct mark set ip saddr map @mark_of");
    let _ = writeln!(s, "    ip saddr vmap @egress");
    // A VM with no chain of its own has the open policy: the host's DNS
    // servers, then its denied ranges, then anything.
    if !host.dns.is_empty() {
        let _ = writeln!(
            s,
            "    ip daddr {} meta l4proto {{ tcp, udp }} th dport 53 accept",
            set_of(host.dns.iter())
        );
    }
    if !host.deny.is_empty() {
        let _ = writeln!(s, "    ip daddr {} {DROP}", set_of(host.deny.iter()));
    }
    let _ = writeln!(s, "    accept");
    let _ = writeln!(s, "  }}");
}

/// `verb` (`add` or `delete`) the elements that are `port`'s policy:
/// its allowed and denied regions, its default, its domain flag and its
/// `generation` (never 0: unmarked connections are 0).
pub(super) fn policy_elements(
    s: &mut String,
    verb: &str,
    port: &GuestPort,
    host: &HostEgress<'_>,
    generation: u32,
) {
    let (k, ip) = (key(port.ip), port.ip);
    let policy: &EgressPolicy = &port.egress;
    // A map element is deleted by its key alone.
    if verb == "delete" {
        let _ = writeln!(s, "delete element ip {TABLE} mark_of {{ {ip} }}");
    } else {
        let _ = writeln!(
            s,
            "{verb} element ip {TABLE} mark_of {{ {ip} : {generation} }}"
        );
    }
    let _ = writeln!(
        s,
        "{verb} element ip {TABLE} generation {{ {ip} . {generation} }}"
    );
    if policy.is_open() {
        // The shared chain's rules are its policy.
        return;
    }
    for region in compile(policy, host) {
        let set = if region.allow { "allow" } else { "deny" };
        let _ = writeln!(
            s,
            "{verb} element ip {TABLE} {set}_{k} {{ {}-{} . {}-{} . {}-{} }}",
            Ipv4Addr::from(region.bounds[ADDRESSES].0),
            Ipv4Addr::from(region.bounds[ADDRESSES].1),
            region.bounds[PROTOCOLS].0,
            region.bounds[PROTOCOLS].1,
            region.bounds[PORTS].0,
            region.bounds[PORTS].1,
        );
    }
    if policy.default_action() == EgressAction::Deny {
        let _ = writeln!(s, "{verb} element ip {TABLE} default_deny {{ {ip} }}");
    }
    if policy.has_domain_rules() {
        let _ = writeln!(s, "{verb} element ip {TABLE} domain_vms {{ {ip} }}");
    }
}

/// A box of (destination, protocol, port), bounds included, and what
/// the first rule that covers it does. Each dimension is held as `u32`
/// bounds so that the box arithmetic is one loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Region {
    /// Destination addresses, protocol numbers, ports.
    pub bounds: [(u32, u32); 3],
    pub allow: bool,
}

/// The dimensions of a [`Region`].
const ADDRESSES: usize = 0;
const PROTOCOLS: usize = 1;
const PORTS: usize = 2;

impl Region {
    fn overlaps(&self, other: &Region) -> bool {
        self.bounds
            .iter()
            .zip(&other.bounds)
            .all(|(a, b)| a.0 <= b.1 && b.0 <= a.1)
    }

    /// The parts of `self` outside `other`: at most two per dimension,
    /// cut off one dimension at a time.
    fn minus(self, other: &Region) -> Vec<Region> {
        if !self.overlaps(other) {
            return vec![self];
        }
        let mut parts = Vec::new();
        let mut rest = self;
        for dim in 0..3 {
            let (lo, hi) = other.bounds[dim];
            if rest.bounds[dim].0 < lo {
                let mut below = rest;
                below.bounds[dim].1 = lo - 1;
                parts.push(below);
                rest.bounds[dim].0 = lo;
            }
            if rest.bounds[dim].1 > hi {
                let mut above = rest;
                above.bounds[dim].0 = hi + 1;
                parts.push(above);
                rest.bounds[dim].1 = hi;
            }
        }
        parts
    }
}

/// The IP protocol numbers of TCP and UDP.
const TCP: u8 = 6;
const UDP: u8 = 17;

/// The region a rule's match covers.
fn region_of(cidr: &Cidr, proto: Option<Proto>, ports: Option<(u16, u16)>, allow: bool) -> Region {
    let first = u32::from(cidr.network());
    let size_minus_one = match cidr.prefix_len() {
        0 => u32::MAX,
        n => (1u32 << (32 - u32::from(n))) - 1,
    };
    let protocols = match proto {
        None => (0, u8::MAX),
        Some(Proto::Tcp) => (TCP, TCP),
        Some(Proto::Udp) => (UDP, UDP),
    };
    let ports = ports.unwrap_or((0, u16::MAX));
    Region {
        bounds: [
            (first, first | size_minus_one),
            (u32::from(protocols.0), u32::from(protocols.1)),
            (u32::from(ports.0), u32::from(ports.1)),
        ],
        allow,
    }
}

/// `policy`'s address rules, then the host's DNS servers and denied
/// ranges, as disjoint regions: each rule keeps only what no earlier rule
/// covers. A VM with domain rules gets no DNS allowance (its DNS is the
/// gateway's).
pub(super) fn compile(policy: &EgressPolicy, host: &HostEgress<'_>) -> Vec<Region> {
    let mut rules: Vec<Region> = policy
        .net_rules()
        .map(|(action, m)| {
            region_of(
                &m.cidr,
                m.proto,
                m.ports.map(|p| (p.first(), p.last())),
                action == EgressAction::Allow,
            )
        })
        .collect();
    if !policy.has_domain_rules() {
        for dns in host.dns {
            if let Some(one) = Cidr::new(*dns, 32) {
                for proto in [Proto::Tcp, Proto::Udp] {
                    rules.push(region_of(&one, Some(proto), Some((53, 53)), true));
                }
            }
        }
    }
    rules.extend(host.deny.iter().map(|c| region_of(c, None, None, false)));
    let mut covered: Vec<Region> = Vec::new();
    let mut regions = Vec::new();
    for rule in rules {
        let mut pieces = vec![rule];
        for earlier in &covered {
            pieces = pieces.into_iter().flat_map(|p| p.minus(earlier)).collect();
        }
        regions.extend(pieces);
        covered.push(rule);
    }
    regions
}

/// An anonymous set `{ a, b }` of displayable values.
fn set_of<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let items: Vec<String> = items.map(|i| i.to_string()).collect();
    format!("{{ {} }}", items.join(", "))
}

/// `add` the learned `addresses` of the VM at `vm`, each with its
/// timeout: added, deleted and added again, so an address already there
/// gets the new timeout (nftables 1.0.6 cannot update one in place).
pub(super) fn learned_elements(
    s: &mut String,
    vm: Ipv4Addr,
    addresses: &[(Ipv4Addr, std::time::Duration)],
) {
    for (ip, ttl) in addresses {
        let secs = ttl.as_secs().max(1);
        let _ = writeln!(
            s,
            "add element ip {TABLE} learned {{ {vm} . {ip} timeout {secs}s }}"
        );
        let _ = writeln!(s, "delete element ip {TABLE} learned {{ {vm} . {ip} }}");
        let _ = writeln!(
            s,
            "add element ip {TABLE} learned {{ {vm} . {ip} timeout {secs}s }}"
        );
    }
}

/// Deletes the learned `addresses` of the VM at `vm`, whether or not they
/// expired meanwhile (each is added first, so the delete finds it).
pub(super) fn forget_learned(s: &mut String, vm: Ipv4Addr, addresses: &[Ipv4Addr]) {
    for ip in addresses {
        let _ = writeln!(
            s,
            "add element ip {TABLE} learned {{ {vm} . {ip} timeout 1s }}"
        );
        let _ = writeln!(s, "delete element ip {TABLE} learned {{ {vm} . {ip} }}");
    }
}

/// Each VM's learned addresses with the time they have left, from the
/// JSON of `list set ip firehost learned`.
pub(super) fn learned_in(
    json: &serde_json::Value,
) -> BTreeMap<Ipv4Addr, Vec<(Ipv4Addr, std::time::Duration)>> {
    let mut all: BTreeMap<Ipv4Addr, Vec<_>> = BTreeMap::new();
    for item in json["nftables"].as_array().into_iter().flatten() {
        let set = &item["set"];
        if set["name"].as_str() != Some("learned") {
            continue;
        }
        for elem in set["elem"].as_array().into_iter().flatten() {
            let elem = &elem["elem"];
            let parts = &elem["val"]["concat"];
            let ip = |i: usize| parts[i].as_str()?.parse::<Ipv4Addr>().ok();
            let (Some(vm), Some(address)) = (ip(0), ip(1)) else {
                continue;
            };
            let Some(left) = elem["expires"].as_u64().or(elem["timeout"].as_u64()) else {
                continue;
            };
            all.entry(vm)
                .or_default()
                .push((address, std::time::Duration::from_secs(left.max(1))));
        }
    }
    all
}

/// Each VM's generation, from the JSON of `list map ip firehost
/// mark_of` (elements are `[address, mark]` pairs).
pub(super) fn mark_of(json: &serde_json::Value) -> BTreeMap<Ipv4Addr, u32> {
    let mut all = BTreeMap::new();
    for item in json["nftables"].as_array().into_iter().flatten() {
        for elem in item["map"]["elem"].as_array().into_iter().flatten() {
            let ip = elem[0].as_str().and_then(|ip| ip.parse::<Ipv4Addr>().ok());
            let mark = elem[1].as_u64().and_then(|m| u32::try_from(m).ok());
            if let (Some(ip), Some(mark)) = (ip, mark) {
                all.insert(ip, mark);
            }
        }
    }
    all
}

/// The counters of a dynamic set with `counter` from its `list set` JSON:
/// each element's key (a string: an interface name or an address) with
/// its packets and bytes.
pub(super) fn set_counters(json: &serde_json::Value) -> BTreeMap<String, (u64, u64)> {
    let mut all = BTreeMap::new();
    for item in json["nftables"].as_array().into_iter().flatten() {
        for elem in item["set"]["elem"].as_array().into_iter().flatten() {
            let elem = &elem["elem"];
            let (Some(key), Some(packets), Some(bytes)) = (
                elem["val"].as_str(),
                elem["counter"]["packets"].as_u64(),
                elem["counter"]["bytes"].as_u64(),
            ) else {
                continue;
            };
            all.insert(key.to_owned(), (packets, bytes));
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::EgressRule;

    fn port(policy: EgressPolicy) -> GuestPort {
        GuestPort {
            tap: crate::vocab::IfName::new("fhabc").unwrap(),
            mac: "06:00:00:00:00:01".parse().unwrap(),
            ip: "172.30.0.2".parse().unwrap(),
            published: vec![],
            egress: policy,
        }
    }

    fn covers(regions: &[Region], ip: &str, proto: u8, port: u16) -> Option<bool> {
        let ip = u32::from(ip.parse::<Ipv4Addr>().unwrap());
        let hits: Vec<bool> = regions
            .iter()
            .filter(|r| {
                (r.bounds[ADDRESSES].0..=r.bounds[ADDRESSES].1).contains(&ip)
                    && (r.bounds[PROTOCOLS].0..=r.bounds[PROTOCOLS].1).contains(&u32::from(proto))
                    && (r.bounds[PORTS].0..=r.bounds[PORTS].1).contains(&u32::from(port))
            })
            .map(|r| r.allow)
            .collect();
        assert!(hits.len() <= 1, "overlapping regions: {regions:?}");
        hits.first().copied()
    }

    #[test]
    fn a_policy_compiles_to_disjoint_regions_where_the_first_rule_wins() {
        let policy = EgressPolicy::new(
            EgressAction::Deny,
            vec![
                EgressRule::deny("10.1.0.0/16".parse().unwrap()),
                EgressRule::allow("10.0.0.0/8:8000-8100/udp".parse().unwrap()),
                EgressRule::allow("203.0.113.7".parse().unwrap()),
            ],
        )
        .unwrap();
        let dns = ["10.0.0.53".parse().unwrap()];
        let deny = ["10.0.0.0/8".parse().unwrap()];
        let host = HostEgress {
            dns: &dns,
            deny: &deny,
        };
        let regions = compile(&policy, &host);
        assert_eq!(
            covers(&regions, "10.1.2.3", UDP, 8000),
            Some(false),
            "rule 0 first"
        );
        assert_eq!(covers(&regions, "10.2.2.3", UDP, 8050), Some(true));
        assert_eq!(
            covers(&regions, "10.2.2.3", TCP, 8050),
            Some(false),
            "host deny"
        );
        assert_eq!(
            covers(&regions, "203.0.113.7", 1, 0),
            Some(true),
            "any protocol"
        );
        assert_eq!(
            covers(&regions, "10.0.0.53", UDP, 53),
            Some(true),
            "host DNS"
        );
        assert_eq!(covers(&regions, "10.0.0.53", UDP, 54), Some(false));
        assert_eq!(
            covers(&regions, "198.51.100.1", TCP, 80),
            None,
            "the default decides"
        );
        // The elements name the VM's own sets.
        let mut s = String::new();
        policy_elements(&mut s, "add", &port(policy), &host, 9);
        assert!(s.contains("add element ip firehost deny_172_30_0_2 { 10.1.0.0-10.1.255.255 . 0-255 . 0-65535 }"), "{s}");
        assert!(
            s.contains("add element ip firehost default_deny { 172.30.0.2 }"),
            "{s}"
        );
        assert!(
            s.contains("add element ip firehost mark_of { 172.30.0.2 : 9 }"),
            "{s}"
        );
        assert!(!s.contains("domain_vms"), "{s}");
    }

    #[test]
    fn a_policy_with_domain_rules_is_flagged_and_gets_no_dns_allowance() {
        let policy = EgressPolicy::new(
            EgressAction::Allow,
            vec![EgressRule::deny_domain("evil.test".parse().unwrap())],
        )
        .unwrap();
        let dns = ["10.0.0.53".parse().unwrap()];
        let host = HostEgress {
            dns: &dns,
            deny: &[],
        };
        assert_eq!(compile(&policy, &host), vec![]);
        let mut s = String::new();
        policy_elements(&mut s, "add", &port(policy), &host, 3);
        assert!(
            s.contains("add element ip firehost domain_vms { 172.30.0.2 }"),
            "{s}"
        );
        assert!(!s.contains("default_deny"), "{s}");
    }

    proptest::proptest! {
        #[test]
        fn compiled_regions_agree_with_the_policy_everywhere(
            rules in proptest::collection::vec((0u8..4, 0u8..4, 0u8..3, proptest::bool::ANY), 0..8),
            probe in (0u8..8, 0u8..3, 0u16..6),
        ) {
            // Small worlds: addresses 10.0.0.0/29 in /30, /31 and /32 pieces,
            // ports 1-5, so overlaps are common.
            let mut parsed = Vec::new();
            for (net, len, proto, allow) in rules {
                let len = [29u8, 30, 31, 32][usize::from(len)];
                let base = u32::from(Ipv4Addr::new(10, 0, 0, net * 2)) & !((1u32 << (32 - len)) - 1);
                let cidr = Ipv4Addr::from(base);
                let text = match proto {
                    0 => format!("{cidr}/{len}"),
                    1 => format!("{cidr}/{len}:2-3"),
                    _ => format!("{cidr}/{len}:4/udp"),
                };
                let m = text.parse().unwrap();
                parsed.push(if allow { EgressRule::allow(m) } else { EgressRule::deny(m) });
            }
            let Ok(policy) = EgressPolicy::new(EgressAction::Deny, parsed) else {
                return Ok(());
            };
            let host = HostEgress { dns: &[], deny: &[] };
            let regions = compile(&policy, &host);
            let ip = Ipv4Addr::new(10, 0, 0, probe.0);
            let proto = [TCP, UDP, 1][usize::from(probe.1)];
            let p = match proto { TCP => Some(Proto::Tcp), UDP => Some(Proto::Udp), _ => None };
            let expected = policy
                .net_verdict(ip, p, Some(probe.2))
                .map(|a| a == EgressAction::Allow);
            proptest::prop_assert_eq!(covers(&regions, &ip.to_string(), proto, probe.2), expected);
        }
    }

    #[test]
    fn learned_addresses_are_read_back_with_the_time_they_have_left() {
        let json = serde_json::json!({"nftables": [
            {"metainfo": {}},
            {"set": {"name": "learned", "elem": [
                {"elem": {"val": {"concat": ["172.30.0.2", "203.0.113.5"]}, "timeout": 60, "expires": 42}},
                {"elem": {"val": {"concat": ["172.30.0.3", "bad"]}, "timeout": 60}},
            ]}},
        ]});
        let learned = learned_in(&json);
        assert_eq!(
            learned[&Ipv4Addr::new(172, 30, 0, 2)],
            vec![(
                Ipv4Addr::new(203, 0, 113, 5),
                std::time::Duration::from_secs(42)
            )]
        );
        assert_eq!(learned.len(), 1);
    }

    #[test]
    fn set_counters_are_read_back_by_key() {
        let json = serde_json::json!({"nftables": [
            {"metainfo": {}},
            {"set": {"name": "tx", "elem": [
                {"elem": {"val": "fhabc", "counter": {"packets": 3, "bytes": 300}}},
                {"elem": {"val": "fhdef"}},
            ]}},
        ]});
        let counters = set_counters(&json);
        assert_eq!(counters.get("fhabc"), Some(&(3, 300)));
        assert_eq!(counters.len(), 1);
    }
}
