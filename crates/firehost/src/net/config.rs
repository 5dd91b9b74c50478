//! How a manager's default network is set up on the host: the subnet, the
//! bridge, the uplink, DNS, host services, TAP ownership.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use super::IfName;
use super::firewall::{Cidr, HostService};
pub use super::gateway::remote::GatewayProgram;
use super::ipam::Subnet;
use super::tap::TapOwner;
use crate::vocab::DomainPattern;

/// Where guest traffic leaves the host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Uplink {
    /// The interface of the IPv4 default route, looked up when the network
    /// is first set up. No default route is an error
    /// ([`NetError::UplinkMissing`](super::host::NetError::UplinkMissing)).
    #[default]
    Auto,
    /// This interface, which must exist.
    Interface(IfName),
    /// No way out: guests reach the host's allowed services and published
    /// ports reach them, nothing else.
    None,
}

/// The host side of the default network: part of
/// [`ManagerConfig`](crate::manager::ManagerConfig).
///
/// # Examples
///
/// ```
/// use firehost::net::host::{NetworkConfig, Uplink};
///
/// let mut net = NetworkConfig::default();
/// assert_eq!(net.bridge.as_str(), "fhbr0");
/// assert_eq!(net.subnet.to_string(), "172.30.0.0/16");
/// net.uplink = Uplink::Interface("eth0".parse().unwrap());
/// net.dns = Some(vec!["1.1.1.1".parse().unwrap()]);
/// net.host_services.push("53/udp".parse().unwrap());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The bridge the TAPs join (created when absent).
    pub bridge: IfName,
    /// The guest subnet.
    pub subnet: Subnet,
    /// The bridge's address and the guests' default gateway; the subnet's
    /// first host address when unset.
    pub gateway: Option<Ipv4Addr>,
    /// Where guest traffic leaves the host, masqueraded.
    pub uplink: Uplink,
    /// DNS servers for guests. `None`: the host's own from
    /// `/etc/resolv.conf`, leaving out loopback addresses (a local stub
    /// resolver such as systemd-resolved's 127.0.0.53 is out of a guest's
    /// reach).
    pub dns: Option<Vec<Ipv4Addr>>,
    /// Host services guests may open connections to at the gateway
    /// address. Empty by default: guests reach nothing on the host.
    pub host_services: Vec<HostService>,
    /// Who owns the TAPs: the user Firecracker runs as. `None` for both
    /// ids makes TAPs usable with `CAP_NET_ADMIN` only.
    pub tap_owner: TapOwner,
    /// Ranges no guest reaches through the uplink unless its own egress
    /// policy has a rule allowing them: [`PRIVATE_RANGES`] by default, so
    /// a sandbox cannot probe the host's LAN, its cloud's internal
    /// services or loopback-routed addresses. The guests' DNS servers
    /// stay reachable on port 53 whatever this says. Link-local
    /// addresses (cloud metadata) are blocked apart from this, always.
    pub egress_deny: Vec<Cidr>,
    /// The gateway's resolver and proxy, which serve the VMs whose egress
    /// policies have domain rules.
    pub domains: DomainConfig,
}

/// How VMs with domain rules in their egress policy are served (part of
/// [`NetworkConfig`]).
///
/// Such a VM's DNS (to the gateway or to the DNS servers it was given)
/// is answered by a resolver on the gateway that answers only names its
/// policy allows, and lets the addresses in those answers through the
/// firewall for as long as their TTL (clamped to `min_ttl..=max_ttl`).
/// Its TCP connections to ports 80 and 443 go to a proxy on the gateway
/// that reads the TLS server name or HTTP `Host` and connects to that
/// name, resolved on the host, when the policy allows it; to the address
/// the guest asked for when the connection names nothing and the address
/// is allowed. Both start with the first such VM, in the manager's
/// process, and serve while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainConfig {
    /// The resolver's port on the gateway (UDP and TCP); guests' port-53
    /// queries are redirected to it.
    pub resolver_port: u16,
    /// The proxy's port on the gateway; guests' connections to ports 80
    /// and 443 are redirected to it.
    pub proxy_port: u16,
    /// Where the resolver and the proxy ask. `None`: the guests' DNS
    /// servers ([`NetworkConfig::dns`]), else every `nameserver` of the
    /// host's `/etc/resolv.conf`, loopback ones included (the resolver
    /// runs on the host).
    pub upstream: Option<Vec<SocketAddrV4>>,
    /// The shortest time an address learned from an answer stays open:
    /// guests cache answers, and a TTL of 0 would close the address
    /// before the guest connects.
    pub min_ttl: Duration,
    /// The longest.
    pub max_ttl: Duration,
    /// DNS-over-HTTPS and DNS-over-TLS resolvers known by address:
    /// closed on port 443 to VMs with domain rules, so they cannot
    /// resolve around the gateway. [`PUBLIC_DOH_ADDRESSES`] by default.
    pub doh_addresses: Vec<Ipv4Addr>,
    /// The same resolvers by name: the resolver and the proxy refuse them
    /// to VMs with domain rules unless a rule allows them by name.
    /// [`PUBLIC_DOH_NAMES`] by default.
    pub doh_names: Vec<DomainPattern>,
    /// Run the resolver and the proxy in a helper process of their own
    /// (the `firehost-egress-gateway` binary, or the CLI), which outlives
    /// this manager and serves every manager of the state directory,
    /// instead of in this process. `None` (the default): in this process,
    /// while the manager runs.
    pub program: Option<GatewayProgram>,
}

/// The public DNS-over-HTTPS resolvers best known by address: Cloudflare,
/// Google, Quad9, `OpenDNS`, `AdGuard`.
pub const PUBLIC_DOH_ADDRESSES: [Ipv4Addr; 10] = [
    Ipv4Addr::new(1, 1, 1, 1),
    Ipv4Addr::new(1, 0, 0, 1),
    Ipv4Addr::new(8, 8, 8, 8),
    Ipv4Addr::new(8, 8, 4, 4),
    Ipv4Addr::new(9, 9, 9, 9),
    Ipv4Addr::new(149, 112, 112, 112),
    Ipv4Addr::new(208, 67, 222, 222),
    Ipv4Addr::new(208, 67, 220, 220),
    Ipv4Addr::new(94, 140, 14, 14),
    Ipv4Addr::new(94, 140, 15, 15),
];

/// The public DNS-over-HTTPS resolvers' names.
pub const PUBLIC_DOH_NAMES: [&str; 12] = [
    "dns.google",
    "dns.google.com",
    "cloudflare-dns.com",
    "*.cloudflare-dns.com",
    "one.one.one.one",
    "dns.quad9.net",
    "*.quad9.net",
    "doh.opendns.com",
    "*.adguard-dns.com",
    "*.nextdns.io",
    "doh.mullvad.net",
    "*.doh.mullvad.net",
];

impl Default for DomainConfig {
    fn default() -> Self {
        DomainConfig {
            resolver_port: 10053,
            proxy_port: 10080,
            upstream: None,
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(24 * 60 * 60),
            doh_addresses: PUBLIC_DOH_ADDRESSES.to_vec(),
            doh_names: PUBLIC_DOH_NAMES
                .iter()
                .filter_map(|name| name.parse().ok())
                .collect(),
            program: None,
        }
    }
}

/// Addresses that are not the public internet: RFC 1918 private
/// networks, carrier-grade NAT, "this network", loopback, IETF protocol
/// assignments, benchmarking, multicast and the reserved block.
pub const PRIVATE_RANGES: [Cidr; 10] = [
    cidr(0, 0, 0, 0, 8),
    cidr(10, 0, 0, 0, 8),
    cidr(100, 64, 0, 0, 10),
    cidr(127, 0, 0, 0, 8),
    cidr(172, 16, 0, 0, 12),
    cidr(192, 0, 0, 0, 24),
    cidr(192, 168, 0, 0, 16),
    cidr(198, 18, 0, 0, 15),
    cidr(224, 0, 0, 0, 4),
    cidr(240, 0, 0, 0, 4),
];

/// A constant network, checked at compile time.
const fn cidr(a: u8, b: u8, c: u8, d: u8, len: u8) -> Cidr {
    match Cidr::new(Ipv4Addr::new(a, b, c, d), len) {
        Some(net) => net,
        None => panic!("not a network"),
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            bridge: IfName::new("fhbr0").expect("a valid name"),
            subnet: Subnet::new(Ipv4Addr::new(172, 30, 0, 0), 16).expect("a valid subnet"),
            gateway: None,
            uplink: Uplink::Auto,
            dns: None,
            host_services: Vec::new(),
            tap_owner: TapOwner {
                // SAFETY: geteuid has no preconditions.
                uid: Some(unsafe { libc::geteuid() }),
                gid: None,
            },
            egress_deny: PRIVATE_RANGES.to_vec(),
            domains: DomainConfig::default(),
        }
    }
}
