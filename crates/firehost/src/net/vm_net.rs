//! What one VM asks of the default network ([`NetSpec`], [`PeerGroup`])
//! and what it was given ([`VmNet`]).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

pub use crate::vocab::{DEFAULT_IFACE_ID, NetSpec, PeerGroup, PeerGroupError};

use super::IfName;
use super::config::NetworkConfig;
use super::firewall::{GuestPort, PortMapping};
use super::ipam::{Lease, MacAddr};

/// A VM's place on the default network, as kept in its record and shown by
/// `firehost inspect --json` (the `net` object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNet {
    /// The guest's address.
    pub ip: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix_len: u8,
    /// The guest's default gateway (the bridge).
    pub gateway: Ipv4Addr,
    /// The guest NIC's MAC.
    pub mac: MacAddr,
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
        }
    }

    /// What the guest needs to configure its NIC.
    pub fn guest_net(&self) -> super::ipam::GuestNet {
        super::ipam::GuestNet {
            ip: self.ip,
            prefix_len: self.prefix_len,
            gateway: self.gateway,
            mac: self.mac,
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
        }
    }

    pub(super) fn shares_group_with(&self, other: &VmNet) -> bool {
        self.peer_groups
            .iter()
            .any(|g| other.peer_groups.contains(g))
    }
}
