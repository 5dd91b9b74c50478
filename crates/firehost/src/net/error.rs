//! Why the default network refused or failed a change.

use std::path::PathBuf;

use super::IfName;
use super::bridge::BridgeError;
use super::firewall::{FirewallError, Proto};
use super::ipam::IpamError;
use super::tap::TapError;
use crate::VmId;

/// Why the network could not be set up, attached or detached. A failed
/// attach leaves nothing behind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The network's state file cannot be read: firehost will not guess
    /// what it set up on the host, so it changes nothing until the file is
    /// fixed or removed.
    #[error("the network state file {path:?} is unreadable ({detail}); fix or remove it")]
    StateFile {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// nftables is missing or refused a transaction.
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    /// No uplink: no default route for [`Uplink::Auto`](super::config::Uplink::Auto), or the named
    /// interface does not exist.
    #[error(
        "no uplink for guest traffic: {detail}; name one in the network config (or choose Uplink::None for guests without a way out)"
    )]
    UplinkMissing {
        /// What was looked for.
        detail: String,
    },
    /// The gateway's resolver or proxy, which VMs with domain rules need,
    /// cannot listen (another program holds the port, say).
    #[error(
        "the egress gateway cannot listen on {addr} (resolver) or its proxy port: {source}; free the ports or set NetworkConfig::domains"
    )]
    Gateway {
        /// The resolver's address.
        addr: std::net::SocketAddrV4,
        /// Why.
        source: std::io::Error,
    },
    /// The bridge could not be set up or removed.
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    /// The TAP could not be created or deleted.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// Every TAP name candidate of the VM is taken by another device.
    #[error("every TAP name tried for VM {vm} is taken ({tried:?})")]
    TapNamesTaken {
        /// The VM.
        vm: VmId,
        /// The names tried.
        tried: Vec<IfName>,
    },
    /// The address or MAC could not be allocated.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// A guest's own address cannot be translated to a host address: it
    /// is the host's gateway or the host address asked for, or its MAC is
    /// unknown.
    #[error("the guest's own address {ip} cannot be translated: {problem}")]
    GuestAddress {
        /// The guest's address.
        ip: std::net::Ipv4Addr,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A host port is already forwarded to another VM.
    #[error("host port {port}/{proto} is already published by VM {holder}")]
    PortInUse {
        /// The protocol.
        proto: Proto,
        /// The host port.
        port: u16,
        /// The VM it forwards to.
        holder: VmId,
    },
    /// The same host port appears twice in one request.
    #[error("host port {port}/{proto} is published twice")]
    PortTwice {
        /// The protocol.
        proto: Proto,
        /// The host port.
        port: u16,
    },
    /// The VM has no network.
    #[error("VM {vm} has no network")]
    NotAttached {
        /// The VM.
        vm: VmId,
    },
    /// A netlink request outside the TAP and bridge steps failed.
    #[error("netlink {op} failed")]
    Netlink {
        /// What was asked.
        op: &'static str,
        /// The netlink error.
        #[source]
        source: super::NetlinkError,
    },
    /// A kernel setting or the state file could not be read or written.
    #[error("cannot {op} {path:?}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

impl NetError {
    /// The class of this failure (see [`ErrorKind`](crate::ErrorKind)): a
    /// taken address, MAC or port is a conflict; an address or MAC the
    /// subnet refuses is invalid; no uplink or no nftables means the host
    /// is not ready; the rest (netlink, TAPs, a rejected transaction)
    /// failed.
    pub fn kind(&self) -> crate::ErrorKind {
        use super::ipam::IpamError;
        use crate::ErrorKind;
        match self {
            NetError::Ipam(IpamError::IpTaken { .. } | IpamError::MacTaken { .. })
            | NetError::PortInUse { .. }
            | NetError::PortTwice { .. }
            | NetError::TapNamesTaken { .. } => ErrorKind::Conflict,
            NetError::Ipam(
                IpamError::OutOfSubnet { .. }
                | IpamError::Reserved { .. }
                | IpamError::MacNotUnicast { .. }
                | IpamError::SubnetSyntax { .. }
                | IpamError::PrefixLen { .. }
                | IpamError::HostBitsSet { .. }
                | IpamError::MacSyntax(_),
            ) => ErrorKind::InvalidInput,
            NetError::GuestAddress { .. } => ErrorKind::InvalidInput,
            NetError::UplinkMissing { .. } | NetError::Gateway { .. } => ErrorKind::HostNotReady,
            NetError::Firewall(super::firewall::FirewallError::Nft(
                super::nft::NftError::Missing { .. },
            )) => ErrorKind::HostNotReady,
            _ => ErrorKind::Failed,
        }
    }
}
