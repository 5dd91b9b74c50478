//! What one VM asks of the default network: [`NetSpec`] and its
//! [`PeerGroup`]s.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{EgressPolicy, MacAddr, PortMapping, RateLimit};

/// The Firecracker `iface_id` of the default network's NIC (the guest's
/// `eth0`).
pub const DEFAULT_IFACE_ID: &str = "eth0";

/// The name of a peer group: VMs that share a group may reach each other.
/// `[a-z0-9][a-z0-9_-]{0,31}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PeerGroup(String);

/// A string that is not a valid [`PeerGroup`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer group {0:?} is not 1-32 of a-z, 0-9, '_' and '-' (starting with a letter or digit)")]
pub struct PeerGroupError(String);

impl PeerGroup {
    /// Checks and wraps `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, PeerGroupError> {
        let name = name.into();
        let ok = (1..=32).contains(&name.len())
            && name.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && (b == b'-' || b == b'_'))
            });
        if ok {
            Ok(PeerGroup(name))
        } else {
            Err(PeerGroupError(name))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for PeerGroup {
    type Err = PeerGroupError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PeerGroup::new(s)
    }
}

impl<'de> Deserialize<'de> for PeerGroup {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PeerGroup::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// What a VM asks of the default network (part of
/// [`VmSpec`](crate::VmSpec)).
///
/// # Examples
///
/// ```
/// use firehost::net::host::NetSpec;
///
/// let net = NetSpec {
///     ip: Some("172.30.0.50".parse().unwrap()),
///     publish: vec!["8080:80".parse().unwrap()],
///     peer_groups: vec!["build-42".parse().unwrap()],
///     ..NetSpec::default()
/// };
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    /// This address rather than the lowest free one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// This MAC rather than the one derived from the VM id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Host ports forwarded to the guest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<PortMapping>,
    /// Groups whose members may reach each other; a VM in no group reaches
    /// no other VM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_groups: Vec<PeerGroup>,
    /// Append the kernel's `ip=` argument to the boot arguments, so the
    /// guest configures `eth0` without DHCP (see
    /// [`GuestNet::kernel_ip_arg`](crate::net::ipam::GuestNet::kernel_ip_arg)).
    /// On by default.
    #[serde(default = "yes")]
    pub kernel_ip_arg: bool,
    /// A network namespace of the VM's own, holding its TAP and joined to
    /// the bridge by a veth pair. Firecracker runs in it: a jailed one
    /// joins it through the jailer, an unjailed one is started in it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub netns: bool,
    /// Limits on what the guest receives on `eth0`.
    #[serde(default, skip_serializing_if = "RateLimit::is_unlimited")]
    pub rx_limit: RateLimit,
    /// Limits on what the guest sends on `eth0`.
    #[serde(default, skip_serializing_if = "RateLimit::is_unlimited")]
    pub tx_limit: RateLimit,
    /// What the guest may reach beyond the host: see [`EgressPolicy`].
    /// Open by default (within the host's own
    /// [`egress_deny`](crate::net::host::NetworkConfig::egress_deny)).
    #[serde(default, skip_serializing_if = "EgressPolicy::is_open")]
    pub egress: EgressPolicy,
}

fn yes() -> bool {
    true
}

impl Default for NetSpec {
    fn default() -> Self {
        NetSpec {
            ip: None,
            mac: None,
            publish: Vec::new(),
            peer_groups: Vec::new(),
            kernel_ip_arg: true,
            netns: false,
            rx_limit: RateLimit::default(),
            tx_limit: RateLimit::default(),
            egress: EgressPolicy::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_group_names() {
        for ok in ["a", "build-42", "x_y", "0"] {
            assert!(PeerGroup::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a b", "a.b", &"x".repeat(33)] {
            assert!(PeerGroup::new(bad).is_err(), "{bad}");
        }
    }
}
