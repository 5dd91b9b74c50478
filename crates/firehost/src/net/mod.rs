//! Guest networking: addresses, TAP devices, the bridge and the firewall.
//!
//! A VM on the default network has a TAP device on the host, attached to a
//! bridge that holds the gateway address of the guest subnet; inside the
//! guest, the NIC gets an address from that subnet and a MAC the host chose.
//! Everything here talks to the kernel directly (netlink, ioctls, nftables
//! transactions through libnftables): no shell, no process per VM.
//!
//! - [`host`]: the default network as a manager runs it — setup with the
//!   first VM, attach and detach as transactions, reconciliation after a
//!   restart. Start here.
//! - [`ipam`]: which address and MAC each VM gets; the kernel `ip=` boot
//!   argument.
//! - [`tap`]: persistent TAP devices (TUNSETIFF), attached to the bridge and
//!   brought up over netlink, and deleted over netlink.
//! - [`bridge`]: the bridge with the gateway address, created when absent
//!   and removed only by whoever created it.
//! - [`firewall`]: the `firehost` nftables tables — NAT, isolation,
//!   anti-spoofing, host services, published ports — and the per-VM
//!   elements; [`nft`] runs them as atomic transactions.
//! - [`sysctl`]: IPv4 forwarding on the bridge and the uplink.
//! - [`IfName`] and [`Netlink`]: the interface name rules and the rtnetlink
//!   connection the other modules share.
//!
//! # Network namespaces
//!
//! Netlink sockets and TAP devices belong to the network namespace of the
//! thread that opens them. [`Netlink::connect`] binds its socket in the
//! calling thread's namespace, and [`tap::Tap::create`] runs its ioctls on
//! the thread that polls it: in a process whose threads all share the host
//! namespace (the manager) that does not matter; tests that `unshare` a
//! namespace per thread run a current-thread runtime on that thread.

use std::fmt;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::LinkMessage;

pub mod bridge;
mod config;
pub mod firewall;
pub mod host;
pub mod ipam;
pub mod netns;
pub mod nft;
pub mod sysctl;
pub mod tap;
mod vm_net;

/// The kernel's `IFNAMSIZ`: interface names are at most 15 bytes plus NUL.
pub const IFNAMSIZ: usize = 16;

/// The longest interface name: `IFNAMSIZ - 1` bytes.
pub const MAX_IFNAME_LEN: usize = IFNAMSIZ - 1;

/// A network interface name firehost accepts:
/// `[A-Za-z0-9][A-Za-z0-9_-]{0,14}`.
///
/// The kernel itself allows more (anything but `/`, `:`, whitespace, `.`
/// and `..`), but names we create or are given go into netlink messages,
/// nftables rules and records, so we keep to a set that needs no quoting
/// anywhere.
///
/// # Examples
///
/// ```
/// use firehost::net::IfName;
///
/// assert!(IfName::new("fhbr0").is_ok());
/// assert!(IfName::new("a-name-too-long-x").is_err()); // 17 bytes
/// assert!(IfName::new("eth0:1").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct IfName(String);

/// Why a string is not a valid [`IfName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IfNameError {
    /// The name is empty.
    #[error("interface name is empty")]
    Empty,
    /// The name is longer than [`MAX_IFNAME_LEN`] bytes.
    #[error("interface name {name:?} is {len} bytes long; the kernel allows {MAX_IFNAME_LEN}")]
    TooLong {
        /// The name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The name has a character outside `[A-Za-z0-9_-]`, or starts with
    /// something other than a letter or digit.
    #[error(
        "interface name {name:?} has {ch:?} at byte {at}; allowed are A-Z, a-z, 0-9, '_' and '-' (not first)"
    )]
    BadChar {
        /// The name.
        name: String,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
}

impl IfName {
    /// Checks `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self, IfNameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(IfNameError::Empty);
        }
        if name.len() > MAX_IFNAME_LEN {
            return Err(IfNameError::TooLong {
                len: name.len(),
                name,
            });
        }
        for (at, ch) in name.char_indices() {
            let ok = ch.is_ascii_alphanumeric() || (at > 0 && (ch == '-' || ch == '_'));
            if !ok {
                return Err(IfNameError::BadChar { name, ch, at });
            }
        }
        Ok(IfName(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for IfName {
    type Err = IfNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IfName::new(s)
    }
}

impl<'de> serde::Deserialize<'de> for IfName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IfName::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// An rtnetlink connection, bound in the network namespace of the thread
/// that made it.
///
/// Cheap to clone (a handle to one background task). Requests from many
/// tasks are multiplexed over the one socket.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace
    /// and spawns its connection task on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn connect() -> std::io::Result<Self> {
        let (connection, handle, _messages) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// The rtnetlink handle, for requests this module has no helper for.
    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// The link named `name`, or `None` if there is none.
    ///
    /// # Cancel safety
    ///
    /// Safe: a read.
    pub async fn link(&self, name: &IfName) -> Result<Option<LinkMessage>, rtnetlink::Error> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.as_str().to_owned())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The errno of a netlink error reply, if the error is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Facts about one link, read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// The interface index.
    pub index: u32,
    /// Whether the link is administratively up (`IFF_UP`).
    pub up: bool,
    /// The index of the link's controller (the bridge it is a port of).
    pub controller: Option<u32>,
    /// The link kind (`"bridge"`, `"tun"`, …), if it has one.
    pub kind: Option<String>,
}

impl LinkState {
    /// Extracts the state from a link message.
    pub fn from_message(msg: &LinkMessage) -> Self {
        use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo};
        let mut state = LinkState {
            index: msg.header.index,
            up: msg.header.flags.contains(LinkFlags::Up),
            controller: None,
            kind: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::Controller(idx) => state.controller = Some(*idx),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            state.kind = Some(kind.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_the_kernel_limit_and_our_charset() {
        let cases: &[(&str, bool)] = &[
            ("fhbr0", true),
            ("a", true),
            ("fh0123456789abc", true),   // 15 bytes
            ("fh0123456789abcd", false), // 16 bytes
            ("", false),
            ("-lead", false),
            ("_lead", false),
            ("tap_0-x", true),
            ("eth0:1", false),
            ("a/b", false),
            ("a b", false),
            (".", false),
            ("é", false),
        ];
        for (name, ok) in cases {
            assert_eq!(IfName::new(*name).is_ok(), *ok, "{name:?}");
        }
    }
}
