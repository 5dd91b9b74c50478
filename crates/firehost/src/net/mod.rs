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
//! - `netns`: a network namespace per VM, when its spec asks for one and
//!   for restored VMs; `translate`: inside a restored VM's namespace, the
//!   1:1 NAT between the address its guest keeps and its host address.
//! - `gateway`: the resolver and proxy on the bridge's address that serve
//!   VMs whose egress policies have domain rules.
//! - [`IfName`]: the interface name rules; `netlink`: the rtnetlink
//!   connection the other modules share.
//!
//! Only [`host`], [`firewall`], [`ipam`], the names and the error types
//! are public; the kernel plumbing (`bridge`, `tap`, `netns`, `nft`,
//! `sysctl`, `netlink`, `translate`, `gateway`) is private to the crate.
//!
//! # Network namespaces
//!
//! Netlink sockets and TAP devices belong to the network namespace of the
//! thread that opens them. `Netlink::connect` binds its socket in the
//! calling thread's namespace, and `tap::Tap::create` runs its ioctls on
//! the thread that polls it: in a process whose threads all share the host
//! namespace (the manager) that does not matter; tests that `unshare` a
//! namespace per thread run a current-thread runtime on that thread.

pub use crate::vocab::{IFNAMSIZ, IfName, IfNameError, MAX_IFNAME_LEN};

mod config;
mod error;
pub mod firewall;
mod footprint;
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

plumbing!(bridge, gateway, netlink, netns, nft, sysctl, tap, translate);

pub use bridge::BridgeError;
pub use netlink::NetlinkError;
#[cfg(feature = "test-internals")]
pub use netlink::{LinkState, Netlink};
#[cfg(not(feature = "test-internals"))]
pub(crate) use netlink::{LinkState, Netlink};
pub use nft::NftError;
pub use tap::TapError;
