//! How a manager's default network is set up on the host: the subnet, the
//! bridge, the uplink, DNS, host services, TAP ownership.

use std::net::Ipv4Addr;

use super::IfName;
use super::firewall::{Cidr, HostService};
use super::ipam::Subnet;
use super::tap::TapOwner;

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
        }
    }
}
