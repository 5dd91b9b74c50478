//! Guest networking: addresses, TAP devices and the bridge.
//!
//! A VM on the default network has a TAP device on the host, attached to a
//! bridge that holds the gateway address of the guest subnet; inside the
//! guest, the NIC gets an address from that subnet and a MAC the host chose.
//! Everything here talks to the kernel directly (netlink, ioctls): no shell,
//! no `ip` process per VM.
//!
//! - [`ipam`]: which address and MAC each VM gets, persisted so a restarted
//!   manager never hands out an address a live VM holds; the kernel `ip=`
//!   boot argument.

pub mod ipam;
