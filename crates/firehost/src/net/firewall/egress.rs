//! Each VM's egress chain and its traffic counters.
//!
//! A VM's packets to the uplink jump, through the `egress` verdict map
//! keyed by the VM's host address, to a chain of its own, `vm_<key>`
//! (the key is the address with `_` for dots). The chain is the VM's
//! [`EgressPolicy`] compiled in order: the VM's own rules, then the host's
//! DNS servers and denied ranges, then addresses learned from DNS answers
//! for names the VM may reach, then the default. Changing a policy
//! rewrites that one chain in one transaction, whatever the number of
//! VMs.
//!
//! # Open connections follow the policy in force
//!
//! A connection let through is marked with the chain's generation
//! (`ct mark`), and the chain lets marked packets of established
//! connections straight through. A new policy gets a new generation, so
//! every open connection is checked against it once at its next packet,
//! and keeps going only if the new policy lets it: taking an address out
//! of a policy cuts the connections to it, and nothing is flushed.
//! Packets in the reply direction (the guest answering a connection made
//! to it, through a published port) are not the guest's egress.
//!
//! # Counters
//!
//! Per VM, three named counters that survive policy changes: `tx_<key>`
//! and `rx_<key>` in the bridge table (every frame the VM's port sends or
//! receives, to the host, its peers or the internet) and `drop_<key>` in
//! the ip table (packets its egress chain dropped).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::{GuestPort, TABLE};
use crate::vocab::{Cidr, EgressAction, EgressPolicy, NetMatch};

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
    /// DNS-over-HTTPS resolvers, closed to VMs with domain rules.
    pub doh: &'a [Ipv4Addr],
}

/// `verb` (`add` or `delete`) the objects of one VM's egress that are not
/// its rules: the chain, its map element, its counters. Deleting puts the
/// chain's rules first (a chain with rules cannot be deleted) and the
/// objects that rules or elements refer to last.
pub(super) fn objects(
    s: &mut String,
    verb: &str,
    port: &GuestPort,
    counters: Option<&TrafficCounters>,
) {
    let k = key(port.ip);
    let tap = &port.tap;
    let (tx, rx, dropped) = match counters {
        Some(c) => (
            counter_values(c.tx_packets, c.tx_bytes),
            counter_values(c.rx_packets, c.rx_bytes),
            counter_values(c.egress_dropped, 0),
        ),
        None => Default::default(),
    };
    if verb == "add" {
        let _ = writeln!(
            s,
            "add set ip {TABLE} learned_{k} {{ type ipv4_addr; flags timeout; }}"
        );
        let _ = writeln!(s, "add counter bridge {TABLE} tx_{k} {{{tx}}}");
        let _ = writeln!(s, "add counter bridge {TABLE} rx_{k} {{{rx}}}");
        let _ = writeln!(s, "add counter ip {TABLE} drop_{k} {{{dropped}}}");
        let _ = writeln!(s, "add chain ip {TABLE} vm_{k}");
        let _ = writeln!(
            s,
            "add element bridge {TABLE} tx_count {{ \"{tap}\" : \"tx_{k}\" }}"
        );
        let _ = writeln!(
            s,
            "add element bridge {TABLE} rx_count {{ \"{tap}\" : \"rx_{k}\" }}"
        );
        let _ = writeln!(
            s,
            "add element ip {TABLE} egress {{ {} : jump vm_{k} }}",
            port.ip
        );
    } else {
        let _ = writeln!(s, "delete element bridge {TABLE} tx_count {{ \"{tap}\" }}");
        let _ = writeln!(s, "delete element bridge {TABLE} rx_count {{ \"{tap}\" }}");
        let _ = writeln!(s, "delete element ip {TABLE} egress {{ {} }}", port.ip);
        // Present or not, the element goes: added first so that the
        // delete always finds it.
        let _ = writeln!(s, "add element ip {TABLE} domain_vms {{ {} }}", port.ip);
        let _ = writeln!(s, "delete element ip {TABLE} domain_vms {{ {} }}", port.ip);
        let _ = writeln!(s, "flush chain ip {TABLE} vm_{k}");
        let _ = writeln!(s, "delete chain ip {TABLE} vm_{k}");
        let _ = writeln!(s, "delete set ip {TABLE} learned_{k}");
        let _ = writeln!(s, "delete counter bridge {TABLE} tx_{k}");
        let _ = writeln!(s, "delete counter bridge {TABLE} rx_{k}");
        let _ = writeln!(s, "delete counter ip {TABLE} drop_{k}");
    }
}

/// The body of a counter declaration that starts from these values.
fn counter_values(packets: u64, bytes: u64) -> String {
    if packets == 0 && bytes == 0 {
        String::new()
    } else {
        format!(" packets {packets} bytes {bytes} ")
    }
}

/// Replaces the rules of `port`'s chain with its policy, marking what it
/// lets through with `generation` (never 0: unmarked connections are 0).
pub(super) fn rules(s: &mut String, port: &GuestPort, host: &HostEgress<'_>, generation: u32) {
    let k = key(port.ip);
    let chain = format!("ip {TABLE} vm_{k}");
    let policy: &EgressPolicy = &port.egress;
    let accept = format!("ct mark set {generation} accept");
    let drop = format!("counter name drop_{k} drop");
    let domains = policy.has_domain_rules();
    // In `domain_vms` exactly when the policy has domain rules: that is
    // what sends its DNS and web traffic to the gateway.
    let _ = writeln!(s, "add element ip {TABLE} domain_vms {{ {} }}", port.ip);
    if !domains {
        let _ = writeln!(s, "delete element ip {TABLE} domain_vms {{ {} }}", port.ip);
    }
    let _ = writeln!(s, "flush chain {chain}");
    let mut rule = |body: &str| {
        let _ = writeln!(s, "add rule {chain} {body}");
    };
    rule("ct direction reply accept");
    rule(&format!(
        "ct state established,related ct mark {generation} accept"
    ));
    if domains {
        // Names are the gateway's to answer: DNS and DNS over TLS to
        // anyone else, DNS over HTTPS to the resolvers known by address,
        // and QUIC to addresses no allowed name resolved to are dropped.
        rule(&format!(
            "meta l4proto {{ tcp, udp }} th dport {{ 53, 853 }} {drop}"
        ));
        if !host.doh.is_empty() {
            rule(&format!(
                "ip daddr {} meta l4proto {{ tcp, udp }} th dport 443 {drop}",
                set_of(host.doh.iter())
            ));
        }
        rule(&format!("udp dport 443 ip daddr != @learned_{k} {drop}"));
    }
    for (action, m) in policy.net_rules() {
        let verdict = match action {
            EgressAction::Allow => &accept,
            EgressAction::Deny => &drop,
        };
        rule(&format!("{} {verdict}", net_match(m)));
    }
    if !host.dns.is_empty() {
        rule(&format!(
            "ip daddr {} meta l4proto {{ tcp, udp }} th dport 53 {accept}",
            set_of(host.dns.iter())
        ));
    }
    if !host.deny.is_empty() {
        rule(&format!("ip daddr {} {drop}", set_of(host.deny.iter())));
    }
    if domains {
        rule(&format!("ip daddr @learned_{k} {accept}"));
    }
    match policy.default_action() {
        EgressAction::Allow => rule(&accept),
        EgressAction::Deny => rule(&drop),
    }
}

/// The match expression of one address rule.
fn net_match(m: &NetMatch) -> String {
    let mut text = format!("ip daddr {}", m.cidr);
    if let Some(proto) = m.proto {
        let _ = write!(text, " meta l4proto {proto}");
        if let Some(ports) = m.ports {
            let _ = write!(
                text,
                " th dport {}",
                port_range(ports.first(), ports.last())
            );
        }
    }
    text
}

fn port_range(first: u16, last: u16) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
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
    let k = key(vm);
    for (ip, ttl) in addresses {
        let secs = ttl.as_secs().max(1);
        let _ = writeln!(
            s,
            "add element ip {TABLE} learned_{k} {{ {ip} timeout {secs}s }}"
        );
        let _ = writeln!(s, "delete element ip {TABLE} learned_{k} {{ {ip} }}");
        let _ = writeln!(
            s,
            "add element ip {TABLE} learned_{k} {{ {ip} timeout {secs}s }}"
        );
    }
}

/// Each VM's learned addresses with the time they have left, from the
/// JSON of `list table ip firehost`.
pub(super) fn learned_in(
    table: &serde_json::Value,
) -> BTreeMap<Ipv4Addr, Vec<(Ipv4Addr, std::time::Duration)>> {
    let mut all = BTreeMap::new();
    for item in table["nftables"].as_array().into_iter().flatten() {
        let set = &item["set"];
        let Some(vm) = set["name"]
            .as_str()
            .and_then(|n| n.strip_prefix("learned_"))
            .and_then(|k| k.replace('_', ".").parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let addresses: Vec<_> = set["elem"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|elem| {
                let elem = &elem["elem"];
                let ip = elem["val"].as_str()?.parse::<Ipv4Addr>().ok()?;
                let left = elem["expires"].as_u64().or(elem["timeout"].as_u64())?;
                Some((ip, std::time::Duration::from_secs(left.max(1))))
            })
            .collect();
        all.insert(vm, addresses);
    }
    all
}

/// Every VM's counters, by host address, from the JSON of `list counters` of both
/// tables.
pub(super) fn counters_in(
    bridge: &serde_json::Value,
    ip: &serde_json::Value,
) -> BTreeMap<Ipv4Addr, TrafficCounters> {
    let mut all: BTreeMap<Ipv4Addr, TrafficCounters> = BTreeMap::new();
    for json in [bridge, ip] {
        for item in json["nftables"].as_array().into_iter().flatten() {
            let counter = &item["counter"];
            let (Some(name), Some(packets), Some(bytes)) = (
                counter["name"].as_str(),
                counter["packets"].as_u64(),
                counter["bytes"].as_u64(),
            ) else {
                continue;
            };
            let Some((kind, k)) = name.split_once('_') else {
                continue;
            };
            let Ok(ip) = k.replace('_', ".").parse::<Ipv4Addr>() else {
                continue;
            };
            let entry = all.entry(ip);
            match kind {
                "tx" => {
                    let c = entry.or_default();
                    (c.tx_packets, c.tx_bytes) = (packets, bytes);
                }
                "rx" => {
                    let c = entry.or_default();
                    (c.rx_packets, c.rx_bytes) = (packets, bytes);
                }
                "drop" => entry.or_default().egress_dropped = packets,
                _ => {}
            }
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

    #[test]
    fn a_policy_compiles_to_its_rules_in_order_then_the_hosts_then_the_default() {
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
        let mut s = String::new();
        rules(
            &mut s,
            &port(policy),
            &HostEgress {
                dns: &dns,
                deny: &deny,
                doh: &[],
            },
            7,
        );
        let chain = "add rule ip firehost vm_172_30_0_2";
        assert_eq!(
            s,
            format!(
                "add element ip firehost domain_vms {{ 172.30.0.2 }}\n\
                 delete element ip firehost domain_vms {{ 172.30.0.2 }}\n\
                 flush chain ip firehost vm_172_30_0_2\n\
                 {chain} ct direction reply accept\n\
                 {chain} ct state established,related ct mark 7 accept\n\
                 {chain} ip daddr 10.1.0.0/16 counter name drop_172_30_0_2 drop\n\
                 {chain} ip daddr 10.0.0.0/8 meta l4proto udp th dport 8000-8100 ct mark set 7 accept\n\
                 {chain} ip daddr 203.0.113.7/32 ct mark set 7 accept\n\
                 {chain} ip daddr {{ 10.0.0.53 }} meta l4proto {{ tcp, udp }} th dport 53 ct mark set 7 accept\n\
                 {chain} ip daddr {{ 10.0.0.0/8 }} counter name drop_172_30_0_2 drop\n\
                 {chain} counter name drop_172_30_0_2 drop\n"
            )
        );
    }

    #[test]
    fn a_policy_with_domain_rules_keeps_names_to_the_gateway() {
        let policy = EgressPolicy::new(
            EgressAction::Deny,
            vec![EgressRule::allow_domain("pypi.org".parse().unwrap())],
        )
        .unwrap();
        let doh = ["1.1.1.1".parse().unwrap()];
        let mut s = String::new();
        let host = HostEgress {
            dns: &[],
            deny: &[],
            doh: &doh,
        };
        rules(&mut s, &port(policy), &host, 9);
        let chain = "add rule ip firehost vm_172_30_0_2";
        assert_eq!(
            s,
            format!(
                "add element ip firehost domain_vms {{ 172.30.0.2 }}\n\
                 flush chain ip firehost vm_172_30_0_2\n\
                 {chain} ct direction reply accept\n\
                 {chain} ct state established,related ct mark 9 accept\n\
                 {chain} meta l4proto {{ tcp, udp }} th dport {{ 53, 853 }} counter name drop_172_30_0_2 drop\n\
                 {chain} ip daddr {{ 1.1.1.1 }} meta l4proto {{ tcp, udp }} th dport 443 counter name drop_172_30_0_2 drop\n\
                 {chain} udp dport 443 ip daddr != @learned_172_30_0_2 counter name drop_172_30_0_2 drop\n\
                 {chain} ip daddr @learned_172_30_0_2 ct mark set 9 accept\n\
                 {chain} counter name drop_172_30_0_2 drop\n"
            )
        );
    }

    #[test]
    fn learned_addresses_are_read_back_with_the_time_they_have_left() {
        let table = serde_json::json!({"nftables": [
            {"set": {"name": "learned_172_30_0_2", "elem": [
                {"elem": {"val": "203.0.113.5", "timeout": 60, "expires": 42}},
            ]}},
            {"set": {"name": "domain_vms", "elem": ["172.30.0.2"]}},
        ]});
        let learned = learned_in(&table);
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
    fn counters_are_read_back_by_vm() {
        let bridge = serde_json::json!({"nftables": [
            {"metainfo": {}},
            {"counter": {"name": "tx_172_30_0_2", "packets": 3, "bytes": 300}},
            {"counter": {"name": "rx_172_30_0_2", "packets": 2, "bytes": 200}},
            {"counter": {"name": "spoofed", "packets": 9, "bytes": 900}},
        ]});
        let ip = serde_json::json!({"nftables": [
            {"counter": {"name": "drop_172_30_0_2", "packets": 4, "bytes": 400}},
        ]});
        let all = counters_in(&bridge, &ip);
        assert_eq!(
            all.get(&Ipv4Addr::new(172, 30, 0, 2)),
            Some(&TrafficCounters {
                tx_bytes: 300,
                tx_packets: 3,
                rx_bytes: 200,
                rx_packets: 2,
                egress_dropped: 4,
                names_refused: 0,
            })
        );
        assert_eq!(all.len(), 1);
    }
}
