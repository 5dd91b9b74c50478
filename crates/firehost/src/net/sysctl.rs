//! The one kernel setting guest networking needs: IPv4 forwarding on the
//! bridge and the uplink.
//!
//! IPv4 decides whether to forward a packet by the setting of the interface
//! it arrived on, so guests reach the outside when the bridge forwards (their
//! packets) and the uplink forwards (the replies). firehost turns on exactly
//! those two (`net.ipv4.conf.<if>.forwarding`), not the host-wide
//! `net.ipv4.ip_forward`, logs each change, and never turns them off again:
//! other software may rely on them by then.
//!
//! `/proc/sys/net` shows the network namespace of the thread that opens the
//! file, like every other kernel interface here.

use std::io;
use std::path::PathBuf;

use super::IfName;

/// The sysctl file for IPv4 forwarding on `iface`.
pub fn forwarding_path(iface: &IfName) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"))
}

/// Whether `iface` forwards IPv4.
pub fn forwarding(iface: &IfName) -> io::Result<bool> {
    Ok(std::fs::read_to_string(forwarding_path(iface))?.trim() == "1")
}

/// Turns IPv4 forwarding on for `iface`. Returns whether it was off.
pub fn enable_forwarding(iface: &IfName) -> io::Result<bool> {
    if forwarding(iface)? {
        return Ok(false);
    }
    std::fs::write(forwarding_path(iface), b"1\n")?;
    tracing::info!(interface = %iface, "enabled IPv4 forwarding (net.ipv4.conf.{iface}.forwarding=1) for guest traffic");
    Ok(true)
}
