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
//! - `tap`: persistent TAP devices (TUNSETIFF), attached to the bridge and
//!   brought up over netlink, and deleted over netlink.
//! - `bridge`: the bridge with the gateway address, created when absent
//!   and removed only by whoever created it.
//! - [`firewall`]: the `firehost` nftables tables — NAT, isolation,
//!   anti-spoofing, host services, published ports — and the per-VM
//!   elements; `nft` runs them as atomic transactions.
//! - `sysctl`: IPv4 forwarding on the bridge and the uplink.
//! - `netns`: network namespaces for jailed VMs.
//! - [`IfName`]: the interface name rules; `netlink`: the rtnetlink
//!   connection the other modules share.
//!
//! Only [`host`], [`firewall`], [`ipam`], the names and the error types
//! are public; the kernel plumbing (`bridge`, `tap`, `netns`, `nft`,
//! `sysctl`, `netlink`) is private to the crate.
//!
//! # Network namespaces
//!
//! Netlink sockets and TAP devices belong to the network namespace of the
//! thread that opens them. `Netlink::connect` binds its socket in the
//! calling thread's namespace, and `tap::Tap::create` runs its ioctls on
//! the thread that polls it: in a process whose threads all share the host
//! namespace (the manager) that does not matter; tests that `unshare` a
//! namespace per thread run a current-thread runtime on that thread.

use std::fmt;

mod config;
pub mod firewall;
pub mod host;
pub mod ipam;
mod vm_net;

/// Declares the plumbing modules: the crate's own business, private to
/// it. The `test-internals` feature opens them to the crate's integration
/// tests, which build namespaces, TAPs and rules with them and read the
/// kernel's state back; nothing else should use them.
macro_rules! plumbing {
    ($($module:ident),* $(,)?) => {$(
        #[cfg(feature = "test-internals")]
        pub mod $module;
        #[cfg(not(feature = "test-internals"))]
        pub(crate) mod $module;
    )*};
}

plumbing!(bridge, netlink, netns, nft, sysctl, tap);

pub use bridge::BridgeError;
pub use netlink::NetlinkError;
#[cfg(feature = "test-internals")]
pub use netlink::{LinkState, Netlink};
#[cfg(not(feature = "test-internals"))]
pub(crate) use netlink::{LinkState, Netlink};
pub use nft::NftError;
pub use tap::TapError;

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
