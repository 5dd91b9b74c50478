//! A VM whose guest keeps an address of its own: the inside of its network
//! namespace, which translates between the guest's address and the one the
//! host knows the VM by.
//!
//! A restored guest still has the address and MAC of its snapshot, and so
//! does every other VM restored from that snapshot. Each gets a namespace
//! (see `netns`) that routes, rather than bridges, between its TAP and its
//! end of the veth pair:
//!
//! ```text
//!   host:  fhbr0 ── fv<id> ═══ veth ═══ fp<id>  host address + MAC, default via the gateway
//!                                         │ routed; 1:1 NAT host address ⇄ guest address
//!                                       fh<id>  TAP, no address: the guest's address is routed here
//!                                         └──── guest (its snapshot's address and MAC)
//! ```
//!
//! - The veth end has the VM's host-unique address and MAC, so on the
//!   host's bridge the VM's port looks like any other VM's: the host's
//!   isolation, anti-spoofing, peer groups, host services and published
//!   ports all work on the host address, unchanged.
//! - The guest's address is routed to the TAP (a /32 and a permanent
//!   neighbour entry with the guest's MAC), and proxy ARP on the TAP
//!   answers the guest for its gateway and every other address: the guest
//!   needs no reconfiguration, whatever subnet it was set up for.
//! - nftables in the namespace rewrites the guest's address to the host
//!   address on the way out and back on the way in (1:1, so connections
//!   work both ways), and forwards nothing else: a packet from the TAP
//!   with any other source is dropped and counted (`spoofed`), and
//!   nothing is delivered to the namespace itself.
//!
//! This is the scheme of Firecracker's network-for-clones document, except
//! that the TAP side answers by proxy ARP instead of holding the gateway's
//! address: here the guest's subnet is the host's own, whose gateway is on
//! the other side of the veth.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rtnetlink::packet_route::route::RouteScope;

use super::error::NetError;
use super::ipam::MacAddr;
use super::nft::Nftables;
use super::vm_net::GuestAddress;
use super::{IfName, Netlink};

/// The nftables table inside each translating namespace.
pub const TABLE: &str = "firehost";

/// What one namespace translates between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The guest's own address and MAC, behind the TAP.
    pub guest: GuestAddress,
    /// The VM's address on the host's network, on the namespace's veth.
    pub host_ip: Ipv4Addr,
    /// The MAC of the namespace's veth end.
    pub host_mac: MacAddr,
    /// The host subnet's prefix length.
    pub prefix_len: u8,
    /// The host's gateway: the namespace's default route.
    pub gateway: Ipv4Addr,
}

fn nl_err(op: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetError {
    move |source| NetError::Netlink {
        op,
        source: source.into(),
    }
}

/// Configures the inside of the namespace `ns` (seen by `inside`), which
/// holds `tap` and the veth end `port`, both down, for `t`.
///
/// # Cancel safety
///
/// Not cancel safe: dropped midway, the namespace is half configured; the
/// caller removes it.
pub(super) async fn configure(
    inside: &Netlink,
    ns: &OwnedFd,
    tap: &IfName,
    port: &IfName,
    t: &Translation,
) -> Result<(), NetError> {
    let handle = inside.handle();
    let port_index = super::netns::index_of(inside, port).await?;
    let tap_index = super::netns::index_of(inside, tap).await?;
    let set_mac = rtnetlink::LinkUnspec::new_with_index(port_index)
        .address(t.host_mac.octets().to_vec())
        .build();
    handle
        .link()
        .set(set_mac)
        .execute()
        .await
        .map_err(nl_err("set the veth's MAC"))?;
    handle
        .address()
        .add(port_index, t.host_ip.into(), t.prefix_len)
        .execute()
        .await
        .map_err(nl_err("give the veth the host address"))?;
    for name in [port, tap, &IfName::new("lo").expect("a valid name")] {
        super::netns::up_on(inside, name, None).await?;
    }
    let to_guest = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(t.guest.ip, 32)
        .output_interface(tap_index)
        .scope(RouteScope::Link)
        .build();
    handle
        .route()
        .add(to_guest)
        .execute()
        .await
        .map_err(nl_err("route the guest's address to the TAP"))?;
    let default = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(t.gateway)
        .output_interface(port_index)
        .build();
    handle
        .route()
        .add(default)
        .execute()
        .await
        .map_err(nl_err("add the namespace's default route"))?;
    // The guest cannot answer ARP before it runs, and a guest resumed
    // from a snapshot answers nothing until its first interrupt: the
    // namespace knows its MAC already.
    handle
        .neighbours()
        .add(tap_index, t.guest.ip.into())
        .link_layer_address(&t.guest.mac.octets())
        .execute()
        .await
        .map_err(nl_err("add the guest's neighbour entry"))?;

    let (tap, port, t) = (tap.clone(), port.clone(), *t);
    super::netns::run_in(ns, move || {
        write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        write_sysctl(&format!("/proc/sys/net/ipv4/conf/{tap}/proxy_arp"), "1")?;
        // Proxied ARP replies are delayed by up to 0.8 s by default, which
        // would be the first packet's latency in every clone.
        write_sysctl(&format!("/proc/sys/net/ipv4/neigh/{tap}/proxy_delay"), "0")?;
        let nft = Nftables::open().map_err(std::io::Error::other)?;
        nft.run(&rules(&tap, &port, &t))
            .map_err(std::io::Error::other)?;
        Ok(())
    })
    .await
    .map_err(|source| NetError::Io {
        op: "set up address translation in",
        path: PathBuf::from("the VM's network namespace"),
        source,
    })
}

/// Sets the sysctl at `path` to `value` (the namespace's own:
/// `/proc/sys/net` shows the namespace of the thread that opens it).
fn write_sysctl(path: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(Path::new(path), format!("{value}\n"))
}

/// The namespace's table: 1:1 NAT between the guest's address and the
/// host address on the veth, and nothing else forwarded.
pub fn rules(tap: &IfName, port: &IfName, t: &Translation) -> String {
    let (guest, host) = (t.guest.ip, t.host_ip);
    format!(
        r#"table inet {TABLE} {{
  counter spoofed {{ }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "{port}" ip daddr {host} dnat ip to {guest}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{port}" ip saddr {guest} snat ip to {host}
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    iifname "{tap}" oifname "{port}" ip saddr {guest} accept
    iifname "{port}" oifname "{tap}" ip daddr {guest} accept
    iifname "{tap}" counter name spoofed drop
  }}
  chain input {{
    type filter hook input priority filter; policy drop;
  }}
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_translate_exactly_the_guests_address() {
        let t = Translation {
            guest: GuestAddress {
                ip: Ipv4Addr::new(172, 30, 0, 2),
                mac: MacAddr::new([6, 0, 0, 0, 0, 2]),
            },
            host_ip: Ipv4Addr::new(172, 30, 0, 9),
            host_mac: MacAddr::new([6, 0, 0, 0, 0, 9]),
            prefix_len: 16,
            gateway: Ipv4Addr::new(172, 30, 0, 1),
        };
        let tap = IfName::new("fh1").unwrap();
        let port = IfName::new("fp1").unwrap();
        let text = rules(&tap, &port, &t);
        assert!(text.contains(r#"iifname "fp1" ip daddr 172.30.0.9 dnat ip to 172.30.0.2"#));
        assert!(text.contains(r#"oifname "fp1" ip saddr 172.30.0.2 snat ip to 172.30.0.9"#));
        assert!(text.contains("policy drop"));
    }
}
