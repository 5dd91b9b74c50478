//! The firehost firewall: NAT, isolation, anti-spoofing and published ports.
//!
//! firehost owns two nftables tables, both named `firehost`, and touches
//! nothing else:
//!
//! - **`bridge firehost`** sees frames on the bridge before IP does.
//!   `guest_ingress` (hook prerouting) accepts a frame from a VM's TAP only
//!   when its source MAC and IPv4 address (or ARP sender MAC and address)
//!   are the ones bound to that TAP in the `bindings` set, and drops
//!   everything else from a TAP: spoofed sources, IPv6, other ether types.
//!   `vm_to_vm` (hook forward) drops frames from one TAP to another unless
//!   the pair is in the `peers` set; `from_host` (hook output) drops
//!   guest-to-guest packets that a guest sent through the gateway to have
//!   the host route them back onto the bridge (peers talk directly, at
//!   layer 2).
//! - **`ip firehost`** sees what the host routes. `host_input` drops new
//!   connections from the bridge to the host except to the services in the
//!   `host_services` set; `guest_forward` lets guests out through the
//!   uplink only and lets replies and published ports in; it leaves
//!   bridge-to-bridge packets to the bridge table (they reach the IP hooks
//!   only when `br_netfilter` is loaded, as Docker does, and then look the
//!   same whether bridged or routed); `publish`/`publish_local` DNAT host ports to
//!   guests through the `published` map; `egress_nat` masquerades the guest
//!   subnet out of the uplink; `guest_egress` applies each VM's egress
//!   policy to what it sends there; `egress_redirect` sends the DNS and web
//!   traffic of VMs with domain rules to the gateway's resolver and proxy.
//!
//! The shared rules never change after [`Firewall::install`]: a VM is a
//! handful of set and map elements, added or removed in one transaction,
//! so adding the 1,000th VM costs what adding the first did. A VM whose
//! egress policy is not open also has a chain of its own, whose rules are
//! fixed when it is admitted; its policy is elements too (see the
//! `egress` submodule). Dropped packets are counted in the named counters
//! `spoofed`, `isolated` (bridge table), `host_blocked` and
//! `metadata_blocked` (ip table), and per VM.
//!
//! Every script is assembled here from typed values only: [`IfName`]s
//! (which need no quoting), addresses, MACs, ports and protocol enums.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

pub use crate::vocab::{
    Cidr, EgressAction, EgressPolicy, EgressRule, HostService, PortMapping, PortSyntaxError, Proto,
};
pub use egress::TrafficCounters;

mod egress;

use super::IfName;
use super::ipam::{MacAddr, Subnet};
use super::nft::{NftError, Nftables};

/// The name of both firehost tables.
pub const TABLE: &str = "firehost";

/// What the rules are built from: the host side of the guest network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallConfig {
    /// The bridge the TAPs are attached to.
    pub bridge: IfName,
    /// The guest subnet.
    pub subnet: Subnet,
    /// The bridge's address in the subnet: the only subnet address the
    /// host itself sends to guests from.
    pub gateway: Ipv4Addr,
    /// Where guest traffic leaves the host, masqueraded. `None`: guests
    /// reach the host's allowed services and published ports reach them,
    /// but they have no way out.
    pub uplink: Option<IfName>,
    /// Host services guests may open connections to.
    pub host_services: Vec<HostService>,
    /// Ranges no VM reaches through the uplink unless its own egress rule
    /// allows them.
    pub egress_deny: Vec<Cidr>,
    /// The guests' DNS servers: reachable on port 53 whatever
    /// `egress_deny` says.
    pub dns: Vec<Ipv4Addr>,
    /// Where the gateway's resolver listens: the DNS of VMs with domain
    /// rules is redirected there.
    pub resolver_port: u16,
    /// Where the gateway's proxy listens: the TCP connections of VMs with
    /// domain rules to ports 80 and 443 are redirected there.
    pub proxy_port: u16,
    /// DNS-over-HTTPS resolvers, closed on port 443 to VMs with domain
    /// rules.
    pub doh_addresses: Vec<Ipv4Addr>,
}

/// The firewall's view of one VM NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestPort {
    /// The TAP on the host.
    pub tap: IfName,
    /// The only source MAC accepted from the TAP.
    pub mac: MacAddr,
    /// The only source address accepted from the TAP.
    pub ip: Ipv4Addr,
    /// Host ports forwarded to this guest.
    pub published: Vec<PortMapping>,
    /// What the guest may reach through the uplink.
    pub egress: EgressPolicy,
}

/// Why a firewall change failed. A failed change applied nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirewallError {
    /// The transaction failed (or nftables is missing).
    #[error(transparent)]
    Nft(#[from] NftError),
}

/// The firehost tables in one network namespace.
#[derive(Debug, Clone)]
pub struct Firewall {
    nft: Arc<Nftables>,
    config: FirewallConfig,
    /// The last egress generation handed out (see the `egress` module).
    generation: Arc<AtomicU32>,
    /// Each admitted VM's generation now.
    generations: Arc<std::sync::Mutex<std::collections::HashMap<Ipv4Addr, u32>>>,
}

impl Firewall {
    /// A firewall for `config` that runs its transactions through `nft`.
    /// Changes nothing until [`Firewall::install`].
    pub fn new(nft: Arc<Nftables>, config: FirewallConfig) -> Self {
        // Seeded from the clock so a restarted manager's first
        // generations are not the ones open connections still carry.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Firewall {
            nft,
            config,
            generation: Arc::new(AtomicU32::new(seed)),
            generations: Arc::default(),
        }
    }

    /// A fresh egress generation, never 0 (the mark of connections no
    /// chain has let through).
    fn next_generation(&self) -> u32 {
        loop {
            let g = self
                .generation
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            if g != 0 {
                return g;
            }
        }
    }

    fn host_egress(&self) -> egress::HostEgress<'_> {
        egress::HostEgress {
            dns: &self.config.dns,
            deny: &self.config.egress_deny,
        }
    }

    /// Writes `verb` for all of one port's elements and objects; adding
    /// includes its egress rules.
    fn port_script(
        &self,
        s: &mut String,
        port: &GuestPort,
        counters: Option<&TrafficCounters>,
    ) -> u32 {
        let generation = self.next_generation();
        add_port_elements(s, "add", port);
        egress::counters(s, "add", port, counters);
        if !port.egress.is_open() {
            egress::policy_chain(s, "add", port.ip, true);
        }
        egress::policy_elements(s, "add", port, &self.host_egress(), generation);
        generation
    }

    /// Remembers the generations of a transaction that went through.
    fn remember(&self, admitted: impl IntoIterator<Item = (Ipv4Addr, Option<u32>)>) {
        let mut generations = self
            .generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (ip, generation) in admitted {
            match generation {
                Some(g) => generations.insert(ip, g),
                None => generations.remove(&ip),
            };
        }
    }

    /// The generation of the VM at `ip` now: remembered, else read from
    /// the kernel (a port this handle did not admit).
    fn current_generation(&self, ip: Ipv4Addr) -> Result<Option<u32>, FirewallError> {
        let remembered = self
            .generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&ip)
            .copied();
        if remembered.is_some() {
            return Ok(remembered);
        }
        let json = self.nft.list(&format!("list map ip {TABLE} mark_of"))?;
        Ok(egress::mark_of(&json).get(&ip).copied())
    }

    /// The configuration the rules are built from.
    pub fn config(&self) -> &FirewallConfig {
        &self.config
    }

    /// The nftables handle, for reading the tables back.
    pub fn nftables(&self) -> &Arc<Nftables> {
        &self.nft
    }

    /// Replaces both firehost tables, in one transaction, with fresh ones
    /// holding exactly `ports` and the `peers` pairs: whatever the tables
    /// held before (a crashed manager's leftovers, VMs that died since) is
    /// gone, and packets never see a moment without rules. The traffic
    /// counters of the `ports` carry over from the tables replaced.
    pub fn install(
        &self,
        ports: &[GuestPort],
        peers: &[(IfName, IfName)],
    ) -> Result<(), FirewallError> {
        // What the tables being replaced counted and learned, if they
        // are this version's (older tables lack the sets: nothing to keep).
        let (before, learned) = if self.installed()? {
            let addresses: Vec<(IfName, Ipv4Addr)> =
                ports.iter().map(|p| (p.tap.clone(), p.ip)).collect();
            let learned = self
                .nft
                .list(&format!("list set ip {TABLE} learned"))
                .map(|json| egress::learned_in(&json))
                .unwrap_or_default();
            (self.traffic(&addresses).unwrap_or_default(), learned)
        } else {
            (BTreeMap::new(), BTreeMap::new())
        };
        let mut script = String::new();
        drop_tables(&mut script);
        self.config.define_tables(&mut script);
        let mut admitted = Vec::with_capacity(ports.len());
        for port in ports {
            let generation = self.port_script(&mut script, port, before.get(&port.ip));
            admitted.push((port.ip, Some(generation)));
            if let Some(addresses) = learned.get(&port.ip) {
                egress::learned_elements(&mut script, port.ip, addresses);
            }
        }
        add_peer_elements(&mut script, "add", peers);
        self.nft.run(&script)?;
        self.generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        self.remember(admitted);
        Ok(())
    }

    /// Removes both firehost tables (no error if they are absent).
    pub fn uninstall(&self) -> Result<(), FirewallError> {
        let mut script = String::new();
        drop_tables(&mut script);
        self.nft.run(&script)?;
        Ok(())
    }

    /// Admits one VM NIC, with its peers, in one transaction.
    pub fn add_port(
        &self,
        port: &GuestPort,
        peers: &[(IfName, IfName)],
    ) -> Result<(), FirewallError> {
        let mut script = String::new();
        let generation = self.port_script(&mut script, port, None);
        add_peer_elements(&mut script, "add", peers);
        self.nft.run(&script)?;
        self.remember([(port.ip, Some(generation))]);
        Ok(())
    }

    /// Removes one VM NIC's elements and the given peer pairs, in one
    /// transaction. Elements that are already gone are not an error.
    pub fn remove_port(
        &self,
        port: &GuestPort,
        peers: &[(IfName, IfName)],
    ) -> Result<(), FirewallError> {
        // `delete element` of a missing element fails the whole batch, and
        // nftables 1.0.6 has no `destroy element`: adding first makes the
        // delete always find its element, in the same atomic transaction.
        // Only a VM with domain rules learns addresses (one that drops
        // them forgets what it learned then: see `set_egress`).
        let learned: Vec<Ipv4Addr> = if port.egress.has_domain_rules() {
            self.learned(port.ip)?
                .into_iter()
                .map(|(ip, _)| ip)
                .collect()
        } else {
            Vec::new()
        };
        let generation = self.current_generation(port.ip)?;
        let open = port.egress.is_open();
        let mut script = String::new();
        add_port_elements(&mut script, "add", port);
        egress::counters(&mut script, "add", port, None);
        if !open {
            egress::policy_chain(&mut script, "add", port.ip, false);
        }
        add_peer_elements(&mut script, "add", peers);
        if let Some(g) = generation {
            egress::policy_elements(&mut script, "add", port, &self.host_egress(), g);
            egress::policy_elements(&mut script, "delete", port, &self.host_egress(), g);
        }
        add_port_elements(&mut script, "delete", port);
        egress::counters(&mut script, "delete", port, None);
        if !open {
            egress::policy_chain(&mut script, "delete", port.ip, false);
        }
        add_peer_elements(&mut script, "delete", peers);
        // What it learned goes too: the next VM at this address must not
        // reach what this one's answers opened.
        egress::forget_learned(&mut script, port.ip, &learned);
        self.nft.run(&script)?;
        self.remember([(port.ip, None)]);
        Ok(())
    }

    /// Replaces the egress policy of an admitted port, `old.egress` in
    /// force now, with `new.egress`, in one transaction: the old policy
    /// applies until the new one does, and a policy the kernel refuses
    /// leaves it in force. Open connections are checked against the new
    /// policy at their next packet. `old` and `new` differ only in their
    /// policies.
    pub fn set_egress(&self, old: &GuestPort, new: &GuestPort) -> Result<(), FirewallError> {
        let host = self.host_egress();
        let mut script = String::new();
        if old.egress.has_domain_rules() && !new.egress.has_domain_rules() {
            let learned: Vec<Ipv4Addr> = self
                .learned(old.ip)?
                .into_iter()
                .map(|(ip, _)| ip)
                .collect();
            egress::forget_learned(&mut script, old.ip, &learned);
        }
        if let Some(g) = self.current_generation(old.ip)? {
            // Added first, so that the delete finds every element even if
            // some were never there.
            egress::policy_elements(&mut script, "add", old, &host, g);
            egress::policy_elements(&mut script, "delete", old, &host, g);
        }
        // A VM gets a chain of its own when its policy stops being open,
        // and loses it when it becomes open again.
        match (old.egress.is_open(), new.egress.is_open()) {
            (true, false) => egress::policy_chain(&mut script, "add", new.ip, true),
            (false, true) => egress::policy_chain(&mut script, "delete", old.ip, false),
            _ => {}
        }
        let generation = self.next_generation();
        egress::policy_elements(&mut script, "add", new, &host, generation);
        self.nft.run(&script)?;
        self.remember([(new.ip, Some(generation))]);
        Ok(())
    }

    /// Opens `addresses` to the VM at `vm` (its learned set), each for its
    /// time; an address already open gets the new time.
    pub fn learn(
        &self,
        vm: Ipv4Addr,
        addresses: &[(Ipv4Addr, std::time::Duration)],
    ) -> Result<(), FirewallError> {
        let mut script = String::new();
        egress::learned_elements(&mut script, vm, addresses);
        self.nft.run(&script)?;
        Ok(())
    }

    /// The addresses open to the VM at `vm` from DNS answers, with the
    /// time each has left.
    pub fn learned(
        &self,
        vm: Ipv4Addr,
    ) -> Result<Vec<(Ipv4Addr, std::time::Duration)>, FirewallError> {
        let json = self.nft.list(&format!("list set ip {TABLE} learned"))?;
        Ok(egress::learned_in(&json).remove(&vm).unwrap_or_default())
    }

    /// The traffic counters of the admitted `ports` (each a port on the
    /// bridge and the VM's address), by address. A port the firewall has
    /// no counters for is left out.
    pub fn traffic(
        &self,
        ports: &[(IfName, Ipv4Addr)],
    ) -> Result<BTreeMap<Ipv4Addr, TrafficCounters>, FirewallError> {
        let tx = egress::set_counters(&self.nft.list(&format!("list set bridge {TABLE} tx"))?);
        let rx = egress::set_counters(&self.nft.list(&format!("list set bridge {TABLE} rx"))?);
        let dropped =
            egress::set_counters(&self.nft.list(&format!("list set ip {TABLE} dropped"))?);
        let mut all = BTreeMap::new();
        for (tap, ip) in ports {
            let (Some(tx), Some(rx)) = (tx.get(tap.as_str()), rx.get(tap.as_str())) else {
                continue;
            };
            let dropped = dropped.get(&ip.to_string()).map_or(0, |d| d.0);
            all.insert(
                *ip,
                TrafficCounters {
                    tx_packets: tx.0,
                    tx_bytes: tx.1,
                    rx_packets: rx.0,
                    rx_bytes: rx.1,
                    egress_dropped: dropped,
                    names_refused: 0,
                },
            );
        }
        Ok(all)
    }

    /// Forwards `mapping` to `ip` (a running VM's address).
    pub fn publish(&self, ip: Ipv4Addr, mapping: PortMapping) -> Result<(), FirewallError> {
        let mut script = String::new();
        published_element(&mut script, "add", ip, mapping);
        self.nft.run(&script)?;
        Ok(())
    }

    /// Stops forwarding `mapping` to `ip`; no error if it was not.
    pub fn unpublish(&self, ip: Ipv4Addr, mapping: PortMapping) -> Result<(), FirewallError> {
        let mut script = String::new();
        published_element(&mut script, "add", ip, mapping);
        published_element(&mut script, "delete", ip, mapping);
        self.nft.run(&script)?;
        Ok(())
    }

    /// Lets the VMs behind TAPs `a` and `b` reach each other.
    pub fn allow_peers(&self, a: &IfName, b: &IfName) -> Result<(), FirewallError> {
        let mut script = String::new();
        peer_elements(&mut script, "add", a, b);
        self.nft.run(&script)?;
        Ok(())
    }

    /// Isolates `a` and `b` from each other again; no error if they were.
    pub fn deny_peers(&self, a: &IfName, b: &IfName) -> Result<(), FirewallError> {
        let mut script = String::new();
        peer_elements(&mut script, "add", a, b);
        peer_elements(&mut script, "delete", a, b);
        self.nft.run(&script)?;
        Ok(())
    }

    /// Whether the firehost tables exist.
    pub fn installed(&self) -> Result<bool, FirewallError> {
        let json = self.nft.list("list tables")?;
        Ok(tables_in(&json)
            .iter()
            .any(|(family, name)| name == TABLE && (family == "bridge" || family == "ip")))
    }

    /// The TAP names in the `taps` set of the bridge table.
    pub fn taps(&self) -> Result<Vec<IfName>, FirewallError> {
        let json = self.nft.list(&format!("list set bridge {TABLE} taps"))?;
        let mut taps = Vec::new();
        for item in json["nftables"].as_array().into_iter().flatten() {
            for elem in item["set"]["elem"].as_array().into_iter().flatten() {
                if let Some(name) = elem.as_str().and_then(|s| IfName::new(s).ok()) {
                    taps.push(name);
                }
            }
        }
        Ok(taps)
    }
}

impl FirewallConfig {
    /// Writes both table definitions, rules and empty sets.
    fn define_tables(&self, s: &mut String) {
        let FirewallConfig {
            bridge,
            subnet,
            gateway,
            uplink,
            host_services,
            egress_deny: _,
            dns,
            resolver_port,
            proxy_port,
            doh_addresses,
        } = self;
        let mut dns_targets: Vec<String> = dns.iter().map(ToString::to_string).collect();
        dns_targets.push(gateway.to_string());
        let dns_targets = dns_targets.join(", ");
        let _ = write!(
            s,
            "table bridge {TABLE} {{
  set taps {{ type ifname; }}
  set bindings {{ type ifname . ether_addr . ipv4_addr; }}
  set peers {{ type ifname . ifname; }}
  set tx {{ type ifname; flags dynamic; counter; }}
  set rx {{ type ifname; flags dynamic; counter; }}
  counter spoofed {{}}
  counter isolated {{}}
  chain guest_ingress {{
    type filter hook prerouting priority -200; policy accept;
    iifname != @taps accept
    ether type ip iifname . ether saddr . ip saddr @bindings update @tx {{ iifname }}
    ether type ip iifname . ether saddr . ip saddr @bindings accept
    ether type arp iifname . ether saddr . arp saddr ip @bindings iifname . arp saddr ether . arp saddr ip @bindings update @tx {{ iifname }}
    ether type arp iifname . ether saddr . arp saddr ip @bindings iifname . arp saddr ether . arp saddr ip @bindings accept
    counter name spoofed drop
  }}
  chain count_rx {{
    type filter hook postrouting priority 0; policy accept;
    oifname @taps update @rx {{ oifname }}
  }}
  chain vm_to_vm {{
    type filter hook forward priority 0; policy accept;
    iifname @taps oifname @taps iifname . oifname @peers accept
    iifname @taps oifname @taps counter name isolated drop
  }}
  chain from_host {{
    type filter hook output priority 0; policy accept;
    oifname @taps ip saddr {subnet} ip saddr != {gateway} counter name isolated drop
  }}
}}
table ip {TABLE} {{
  set host_services {{ type inet_proto . inet_service; }}
  map published {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}
  map egress {{ type ipv4_addr : verdict; }}
  map mark_of {{ type ipv4_addr : mark; }}
  set generation {{ type ipv4_addr . mark; }}
  set default_deny {{ type ipv4_addr; }}
  set domain_vms {{ type ipv4_addr; }}
  set dropped {{ type ipv4_addr; flags dynamic; counter; }}
  set learned {{ type ipv4_addr . ipv4_addr; flags timeout; }}
  counter host_blocked {{}}
  counter metadata_blocked {{}}
"
        );
        egress::shared_chain(
            s,
            doh_addresses,
            &egress::HostEgress {
                dns,
                deny: &self.egress_deny,
            },
        );
        let _ = write!(
            s,
            "  chain host_input {{
    type filter hook input priority 0; policy accept;
    iifname != \"{bridge}\" accept
    ip daddr {LINK_LOCAL} counter name metadata_blocked drop
    ip saddr @domain_vms ip daddr {gateway} meta l4proto . th dport {{ udp . {resolver_port}, tcp . {resolver_port}, tcp . {proxy_port} }} accept
    ct state established,related accept
    meta l4proto . th dport @host_services accept
    counter name host_blocked drop
  }}
  chain guest_forward {{
    type filter hook forward priority 0; policy accept;
    iifname \"{bridge}\" ip daddr {LINK_LOCAL} counter name metadata_blocked drop
    iifname \"{bridge}\" oifname \"{bridge}\" accept
    oifname \"{bridge}\" ct status dnat accept
    oifname \"{bridge}\" ct state established,related accept
    oifname \"{bridge}\" drop
"
        );
        if let Some(uplink) = uplink {
            let _ = writeln!(
                s,
                "    iifname \"{bridge}\" oifname \"{uplink}\" ip saddr {subnet} jump guest_egress
    iifname \"{bridge}\" oifname \"{uplink}\" ip saddr {subnet} accept"
            );
        }
        let _ = write!(
            s,
            "    iifname \"{bridge}\" drop
  }}
  chain publish {{
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local dnat to meta l4proto . th dport map @published
  }}
  chain egress_redirect {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname \"{bridge}\" ip saddr @domain_vms ip daddr {{ {dns_targets} }} udp dport 53 dnat to {gateway}:{resolver_port}
    iifname \"{bridge}\" ip saddr @domain_vms ip daddr {{ {dns_targets} }} tcp dport 53 dnat to {gateway}:{resolver_port}
    iifname \"{bridge}\" ip saddr @domain_vms ip daddr != {subnet} fib daddr type != local tcp dport {{ 80, 443 }} dnat to {gateway}:{proxy_port}
  }}
  chain publish_local {{
    type nat hook output priority -100; policy accept;
    fib daddr type local ip daddr != 127.0.0.0/8 dnat to meta l4proto . th dport map @published
  }}
"
        );
        if let Some(uplink) = uplink {
            let _ = write!(
                s,
                "  chain egress_nat {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {subnet} oifname \"{uplink}\" masquerade
  }}
"
            );
        }
        s.push_str("}\n");
        for service in host_services {
            let _ = writeln!(
                s,
                "add element ip {TABLE} host_services {{ {} . {} }}",
                service.proto, service.port
            );
        }
    }
}

/// Link-local addresses, where clouds serve instance metadata
/// (169.254.169.254) and credentials: never reachable from a guest, on the
/// host or beyond it. A VM's own metadata service (MMDS) is answered by
/// its Firecracker before a packet reaches the TAP, so it is not affected.
const LINK_LOCAL: &str = "169.254.0.0/16";

/// Deletes both tables whether or not they exist: `add` is a no-op on an
/// existing table, so the `delete` after it always has a target.
fn drop_tables(s: &mut String) {
    for family in ["bridge", "ip"] {
        let _ = writeln!(s, "add table {family} {TABLE}");
        let _ = writeln!(s, "delete table {family} {TABLE}");
    }
}

/// `verb` (`add` or `delete`) the elements of one VM NIC.
fn add_port_elements(s: &mut String, verb: &str, port: &GuestPort) {
    let GuestPort {
        tap,
        mac,
        ip,
        published,
        egress: _,
    } = port;
    let _ = writeln!(s, "{verb} element bridge {TABLE} taps {{ \"{tap}\" }}");
    let _ = writeln!(
        s,
        "{verb} element bridge {TABLE} bindings {{ \"{tap}\" . {mac} . {ip} }}"
    );
    for mapping in published {
        published_element(s, verb, *ip, *mapping);
    }
}

/// `verb` one `published` map element.
fn published_element(s: &mut String, verb: &str, ip: Ipv4Addr, m: PortMapping) {
    let _ = writeln!(
        s,
        "{verb} element ip {TABLE} published {{ {} . {} : {ip} . {} }}",
        m.proto, m.host_port, m.guest_port
    );
}

/// `verb` the two directions of each peer pair.
fn add_peer_elements(s: &mut String, verb: &str, peers: &[(IfName, IfName)]) {
    for (a, b) in peers {
        peer_elements(s, verb, a, b);
    }
}

/// `verb` the two directions of a peer pair.
fn peer_elements(s: &mut String, verb: &str, a: &IfName, b: &IfName) {
    let _ = writeln!(
        s,
        "{verb} element bridge {TABLE} peers {{ \"{a}\" . \"{b}\", \"{b}\" . \"{a}\" }}"
    );
}

/// `(family, name)` of each table in a `list tables` JSON answer.
fn tables_in(json: &serde_json::Value) -> Vec<(String, String)> {
    json["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let table = item.get("table")?;
            Some((
                table["family"].as_str()?.to_owned(),
                table["name"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(uplink: Option<&str>) -> FirewallConfig {
        FirewallConfig {
            bridge: IfName::new("fhbr0").unwrap(),
            subnet: "172.30.0.0/16".parse().unwrap(),
            gateway: "172.30.0.1".parse().unwrap(),
            uplink: uplink.map(|u| IfName::new(u).unwrap()),
            host_services: vec!["53/udp".parse().unwrap()],
            egress_deny: vec![],
            dns: vec![],
            resolver_port: 10053,
            proxy_port: 10080,
            doh_addresses: vec![],
        }
    }

    fn script_for(config: FirewallConfig) -> String {
        let mut s = String::new();
        config.define_tables(&mut s);
        s
    }

    #[test]
    fn without_an_uplink_there_is_no_nat_and_no_way_out() {
        let with = script_for(config(Some("eth0")));
        assert!(with.contains("oifname \"eth0\" masquerade"));
        assert!(with.contains("oifname \"eth0\" ip saddr 172.30.0.0/16 accept"));
        let without = script_for(config(None));
        assert!(!without.contains("masquerade"));
        assert!(!without.contains("eth0"));
        assert!(without.contains("host_services { udp . 53 }"));
    }

    #[test]
    fn removing_adds_first_so_the_delete_cannot_miss() {
        let port = GuestPort {
            tap: IfName::new("fhabc").unwrap(),
            mac: "06:00:00:00:00:01".parse().unwrap(),
            ip: "172.30.0.2".parse().unwrap(),
            published: vec!["8080:80".parse().unwrap()],
            egress: EgressPolicy::open(),
        };
        let mut s = String::new();
        add_port_elements(&mut s, "delete", &port);
        assert_eq!(
            s,
            "delete element bridge firehost taps { \"fhabc\" }\n\
             delete element bridge firehost bindings { \"fhabc\" . 06:00:00:00:00:01 . 172.30.0.2 }\n\
             delete element ip firehost published { tcp . 8080 : 172.30.0.2 . 80 }\n"
        );
    }
}
