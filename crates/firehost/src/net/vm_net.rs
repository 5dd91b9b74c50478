//! What one VM asks of the default network ([`NetSpec`], [`PeerGroup`])
//! and what it was given ([`VmNet`]).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::vocab::EgressPolicy;
pub use crate::vocab::{DEFAULT_IFACE_ID, NetSpec, PeerGroup, PeerGroupError};

use super::IfName;
use super::config::NetworkConfig;
use super::firewall::{GuestPort, PortMapping};
use super::ipam::{Lease, MacAddr};

/// The address and MAC a guest keeps inside its own namespace while the
/// host knows the VM by others: a restored VM, whose guest still has its
/// snapshot's (see [`HostNetwork::attach_translated`](super::host::HostNetwork::attach_translated)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestAddress {
    /// The guest's IPv4 address.
    pub ip: Ipv4Addr,
    /// The guest NIC's MAC.
    pub mac: MacAddr,
}

/// A VM's place on the default network, as kept in its record and shown by
/// `firehost inspect --json` (the `net` object).
///
/// `ip` and `mac` are the VM's on the host's network: where the host and
/// its peers reach it, and what the firewall binds to its port. They are
/// the guest's own unless [`guest`](Self::guest) says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNet {
    /// The VM's address on the host's network.
    pub ip: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix_len: u8,
    /// The default gateway (the bridge).
    pub gateway: Ipv4Addr,
    /// The VM's MAC on the host's network.
    pub mac: MacAddr,
    /// For a VM whose guest keeps an address of its own inside its
    /// namespace (a restored VM): that address and MAC, which the
    /// namespace translates to and from `ip`. `None`: the guest has `ip`
    /// and `mac` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestAddress>,
    /// The TAP on the host.
    pub tap: IfName,
    /// Firecracker's id for the NIC.
    pub iface_id: String,
    /// DNS servers for the guest.
    pub dns: Vec<Ipv4Addr>,
    /// Host ports forwarded to the guest.
    #[serde(default)]
    pub published: Vec<PortMapping>,
    /// Peer groups.
    #[serde(default)]
    pub peer_groups: Vec<PeerGroup>,
    /// The VM's own network namespace, holding the TAP, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<super::netns::VmNetns>,
    /// The egress policy in force: the spec's, until
    /// [`Manager::set_egress`](crate::manager::Manager::set_egress)
    /// replaces it.
    #[serde(default, skip_serializing_if = "EgressPolicy::is_open")]
    pub egress: EgressPolicy,
}

impl VmNet {
    /// The network of a VM given `lease` and `tap`, as `spec` asked.
    pub(crate) fn new(
        config: &NetworkConfig,
        gateway: Ipv4Addr,
        lease: Lease,
        tap: IfName,
        dns: Vec<Ipv4Addr>,
        spec: &NetSpec,
    ) -> VmNet {
        VmNet {
            ip: lease.ip,
            prefix_len: config.subnet.prefix_len(),
            gateway,
            mac: lease.mac,
            tap,
            iface_id: DEFAULT_IFACE_ID.to_owned(),
            dns,
            published: spec.publish.clone(),
            peer_groups: spec.peer_groups.clone(),
            netns: None,
            guest: None,
            egress: spec.egress.clone(),
        }
    }

    /// What the guest has configured (or needs to configure) on its NIC:
    /// its own address and MAC, which differ from the host's view when
    /// they are translated.
    pub fn guest_net(&self) -> super::ipam::GuestNet {
        let (ip, mac) = match self.guest {
            Some(guest) => (guest.ip, guest.mac),
            None => (self.ip, self.mac),
        };
        super::ipam::GuestNet {
            ip,
            prefix_len: self.prefix_len,
            gateway: self.gateway,
            mac,
            dns: self.dns.clone(),
        }
    }

    /// The VM's port on the host's bridge: its TAP, or in a namespace of
    /// its own the host end of its veth pair.
    pub fn host_port(&self) -> &IfName {
        match &self.netns {
            Some(ns) => &ns.host_port,
            None => &self.tap,
        }
    }

    pub(super) fn port(&self) -> GuestPort {
        GuestPort {
            tap: self.host_port().clone(),
            mac: self.mac,
            ip: self.ip,
            published: self.published.clone(),
            egress: self.egress.clone(),
        }
    }

    pub(super) fn shares_group_with(&self, other: &VmNet) -> bool {
        self.peer_groups
            .iter()
            .any(|g| other.peer_groups.contains(g))
    }
}
