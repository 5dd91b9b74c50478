//! Tier 5: the firehost firewall against the real kernel, with real traffic.
//!
//! Each test builds a small world inside namespaces of its own (see
//! `common::netns`): the test thread's namespace is the host, with the
//! bridge `fhbr0` holding the gateway 172.30.0.1/16 and an uplink `up0`
//! (198.51.100.1/24) to an "internet" namespace (198.51.100.2). Each guest
//! is a namespace whose `eth0` is one end of a veth pair; the other end,
//! attached to the bridge, plays the VM's TAP (the firewall matches ports by
//! name, and a veth carries frames exactly like a TAP with a guest behind
//! it). Drops are proven twice: the receiving socket gets nothing and the
//! firewall's named counter for that drop went up.
//!
//! Needs root and nftables (`libnftables.so.1`); elsewhere each test prints
//! why it skipped.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;

use common::netns::{GuestNs, add_address, ifname, in_netns, link_up};
use common::udp::{ARRIVAL, assert_nothing_received, recv, send_until_received, udp_in};
use firehost::net::bridge::Bridge;
use firehost::net::firewall::{Firewall, FirewallConfig, GuestPort, HostService, PortMapping};
use firehost::net::ipam::MacAddr;
use firehost::net::nft::{NftError, Nftables};
use firehost::net::{IfName, Netlink, sysctl};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const UPLINK_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const INTERNET_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

/// One guest stand-in.
struct Guest {
    ns: GuestNs,
    port: GuestPort,
}

/// The host, its firewall, the internet and the guests.
struct Lab {
    nl: Netlink,
    firewall: Firewall,
    internet: GuestNs,
    guests: Vec<Guest>,
}

fn guest_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 30, 0, 10 + u8::try_from(i).unwrap())
}

fn guest_mac(i: usize) -> MacAddr {
    MacAddr::new([6, 0, 0, 0, 0, 1 + u8::try_from(i).unwrap()])
}

fn config(host_services: Vec<HostService>) -> FirewallConfig {
    FirewallConfig {
        bridge: ifname("fhbr0"),
        subnet: "172.30.0.0/16".parse().unwrap(),
        gateway: GATEWAY,
        uplink: Some(ifname("up0")),
        host_services,
    }
}

/// Opens nftables, or says why the test cannot run. Must run inside the
/// test's namespace: the library's netlink socket belongs to the namespace
/// it was opened in.
fn nftables(test: &str) -> Option<Arc<Nftables>> {
    match Nftables::open() {
        Ok(nft) => Some(Arc::new(nft)),
        Err(e) => {
            common::skip(test, &e.to_string());
            None
        }
    }
}

/// Builds the world with `guests` guests, all admitted to the firewall.
async fn lab(nl: Netlink, nft: Arc<Nftables>, guests: usize, services: Vec<HostService>) -> Lab {
    let bridge = ifname("fhbr0");
    Bridge::ensure(&nl, &bridge, GATEWAY, 16).await.unwrap();
    let internet = GuestNs::new();
    let uplink = ifname("up0");
    internet
        .plug(&nl, &uplink, None, INTERNET_IP, 24, None)
        .await;
    add_address(&nl, &uplink, UPLINK_IP, 24).await;
    link_up(&nl, &uplink, None).await;
    sysctl::enable_forwarding(&bridge).unwrap();
    sysctl::enable_forwarding(&uplink).unwrap();

    let firewall = Firewall::new(nft, config(services));
    firewall.install(&[], &[]).unwrap();
    let mut lab = Lab {
        nl,
        firewall,
        internet,
        guests: Vec::new(),
    };
    for _ in 0..guests {
        lab.add_guest().await;
    }
    lab
}

impl Lab {
    async fn add_guest(&mut self) {
        let i = self.guests.len();
        let ns = GuestNs::new();
        let tap = ifname(&format!("fhvm{i}"));
        ns.plug(
            &self.nl,
            &tap,
            Some(guest_mac(i)),
            guest_ip(i),
            16,
            Some(GATEWAY),
        )
        .await;
        link_up(&self.nl, &tap, Some(&ifname("fhbr0"))).await;
        let port = GuestPort {
            tap,
            mac: guest_mac(i),
            ip: guest_ip(i),
            published: Vec::new(),
        };
        self.firewall.add_port(&port, &[]).unwrap();
        self.guests.push(Guest { ns, port });
    }

    fn tap(&self, i: usize) -> IfName {
        self.guests[i].port.tap.clone()
    }

    /// A named counter's packet count.
    fn counter(&self, family: &str, name: &str) -> u64 {
        common::netns::nft_counter(self.firewall.nftables(), family, name)
    }

    /// Waits until the counter is above `before` (a drop happened), with a
    /// deadline: there is no event to wait on for an nftables counter.
    fn wait_counter_above(&self, family: &str, name: &str, before: u64) {
        let what = format!("counter {family} {name} to pass {before} (a drop)");
        firehost_testkit::wait_until(&what, ARRIVAL, || {
            (self.counter(family, name) > before).then_some(())
        });
    }
}

#[test]
fn guests_reach_the_internet_masqueraded_as_the_uplink() {
    const T: &str = "guests_reach_the_internet_masqueraded_as_the_uplink";
    in_netns(T, |nl| async move {
        let Some(nft) = nftables(T) else { return };
        let lab = lab(nl, nft, 1, vec![]).await;
        let server = udp_in(&lab.internet, SocketAddrV4::new(INTERNET_IP, 9000));
        let client = udp_in(
            &lab.guests[0].ns,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        );
        client
            .send_to(b"hello", SocketAddrV4::new(INTERNET_IP, 9000))
            .unwrap();
        let (data, from) = recv(&server);
        assert_eq!(data, b"hello");
        assert_eq!(*from.ip(), UPLINK_IP, "the source is masqueraded");

        // The rules, read back from the kernel.
        let nat = lab
            .firewall
            .nftables()
            .list("list chain ip firehost egress_nat")
            .unwrap()
            .to_string();
        assert!(
            nat.contains("masquerade") && nat.contains("\"up0\""),
            "{nat}"
        );
        assert!(lab.firewall.installed().unwrap());
        assert_eq!(lab.firewall.taps().unwrap(), vec![lab.tap(0)]);
    });
}

#[test]
fn guests_are_isolated_from_each_other_unless_paired() {
    const T: &str = "guests_are_isolated_from_each_other_unless_paired";
    in_netns(T, |nl| async move {
        let Some(nft) = nftables(T) else { return };
        let lab = lab(nl, nft, 2, vec![]).await;
        let to_b = SocketAddrV4::new(guest_ip(1), 7000);
        let b = udp_in(&lab.guests[1].ns, to_b);
        let a = udp_in(
            &lab.guests[0].ns,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        );

        let before = lab.counter("bridge", "isolated");
        a.send_to(b"blocked", to_b).unwrap();
        lab.wait_counter_above("bridge", "isolated", before);
        assert_nothing_received(&b);

        lab.firewall.allow_peers(&lab.tap(0), &lab.tap(1)).unwrap();
        let from = send_until_received(&a, to_b, &b);
        assert_eq!(*from.ip(), guest_ip(0), "peers talk directly, not NATed");

        lab.firewall.deny_peers(&lab.tap(0), &lab.tap(1)).unwrap();
        lab.firewall.deny_peers(&lab.tap(0), &lab.tap(1)).unwrap(); // idempotent
        // Drain what the probes left queued, then prove the block again.
        b.set_nonblocking(true).unwrap();
        while b.recv_from(&mut [0u8; 64]).is_ok() {}
        b.set_nonblocking(false).unwrap();
        let before = lab.counter("bridge", "isolated");
        a.send_to(b"blocked again", to_b).unwrap();
        lab.wait_counter_above("bridge", "isolated", before);
        assert_nothing_received(&b);

        // Sent to the gateway to be routed back onto the bridge: dropped on
        // the way out of the host.
        lab.guests[0].ns.run_async(|nl| async move {
            let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(guest_ip(1), 32)
                .gateway(GATEWAY)
                .build();
            nl.handle().route().add(route).execute().await.unwrap();
        });
        let before = lab.counter("bridge", "isolated");
        a.send_to(b"routed", to_b).unwrap();
        lab.wait_counter_above("bridge", "isolated", before);
        assert_nothing_received(&b);
    });
}

#[test]
fn spoofed_source_addresses_and_macs_are_dropped() {
    const T: &str = "spoofed_source_addresses_and_macs_are_dropped";
    in_netns(T, |nl| async move {
        let Some(nft) = nftables(T) else { return };
        let lab = lab(nl, nft, 1, vec![]).await;
        let server_addr = SocketAddrV4::new(INTERNET_IP, 9000);
        let server = udp_in(&lab.internet, server_addr);
        let honest = udp_in(&lab.guests[0].ns, SocketAddrV4::new(guest_ip(0), 0));
        honest.send_to(b"honest", server_addr).unwrap();
        assert_eq!(recv(&server).0, b"honest");

        // Another address of the subnet, added inside the guest.
        let spoofed_ip = Ipv4Addr::new(172, 30, 0, 99);
        lab.guests[0].ns.run_async(move |nl| async move {
            add_address(&nl, &ifname("eth0"), spoofed_ip, 16).await;
        });
        let liar = udp_in(&lab.guests[0].ns, SocketAddrV4::new(spoofed_ip, 0));
        let before = lab.counter("bridge", "spoofed");
        liar.send_to(b"spoofed ip", server_addr).unwrap();
        lab.wait_counter_above("bridge", "spoofed", before);
        assert_nothing_received(&server);

        // The right address from the wrong MAC.
        lab.guests[0].ns.run_async(|nl| async move {
            let index = nl
                .link(&ifname("eth0"))
                .await
                .unwrap()
                .unwrap()
                .header
                .index;
            let msg = rtnetlink::LinkUnspec::new_with_index(index)
                .address(vec![6, 0, 0, 0, 0, 0x66])
                .build();
            nl.handle().link().set(msg).execute().await.unwrap();
        });
        let before = lab.counter("bridge", "spoofed");
        honest.send_to(b"spoofed mac", server_addr).unwrap();
        lab.wait_counter_above("bridge", "spoofed", before);
        assert_nothing_received(&server);
    });
}

#[test]
fn guests_reach_only_the_host_services_that_are_allowed() {
    const T: &str = "guests_reach_only_the_host_services_that_are_allowed";
    in_netns(T, |nl| async move {
        let Some(nft) = nftables(T) else { return };
        let lab = lab(nl, nft, 1, vec!["7001/udp".parse().unwrap()]).await;
        // The test thread is in the host namespace.
        let closed = UdpSocket::bind(SocketAddrV4::new(GATEWAY, 7000)).unwrap();
        let open = UdpSocket::bind(SocketAddrV4::new(GATEWAY, 7001)).unwrap();
        let guest = udp_in(
            &lab.guests[0].ns,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        );

        guest
            .send_to(b"allowed", SocketAddrV4::new(GATEWAY, 7001))
            .unwrap();
        assert_eq!(recv(&open).0, b"allowed");

        let before = lab.counter("ip", "host_blocked");
        guest
            .send_to(b"not allowed", SocketAddrV4::new(GATEWAY, 7000))
            .unwrap();
        lab.wait_counter_above("ip", "host_blocked", before);
        assert_nothing_received(&closed);

        // The host itself may still talk to the guest, and hear back.
        let guest_server = udp_in(&lab.guests[0].ns, SocketAddrV4::new(guest_ip(0), 7002));
        let host = UdpSocket::bind(SocketAddrV4::new(GATEWAY, 0)).unwrap();
        host.send_to(b"ping", SocketAddrV4::new(guest_ip(0), 7002))
            .unwrap();
        let (_, from) = recv(&guest_server);
        guest_server.send_to(b"pong", from).unwrap();
        assert_eq!(recv(&host).0, b"pong", "replies to the host pass");
    });
}

#[test]
fn published_ports_reach_the_guest_until_unpublished() {
    const T: &str = "published_ports_reach_the_guest_until_unpublished";
    in_netns(T, |nl| async move {
        let Some(nft) = nftables(T) else { return };
        let lab = lab(nl, nft, 1, vec![]).await;
        let tcp: PortMapping = "8080:80".parse().unwrap();
        let udp: PortMapping = "5353:53/udp".parse().unwrap();
        let ip = guest_ip(0);
        lab.firewall.publish(ip, tcp).unwrap();
        lab.firewall.publish(ip, udp).unwrap();

        // TCP from the internet to the uplink address lands in the guest.
        let listener = lab.guests[0]
            .ns
            .run(|| TcpListener::bind("0.0.0.0:80").unwrap());
        let server = std::thread::spawn(move || {
            let (mut conn, peer) = listener.accept().unwrap();
            use std::io::{Read, Write};
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).unwrap();
            conn.write_all(b"world").unwrap();
            (buf, peer)
        });
        let reply = lab.internet.run(|| {
            use std::io::{Read, Write};
            let mut conn =
                TcpStream::connect_timeout(&SocketAddrV4::new(UPLINK_IP, 8080).into(), ARRIVAL)
                    .unwrap();
            conn.write_all(b"hello").unwrap();
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).unwrap();
            buf
        });
        assert_eq!(&reply, b"world");
        let (got, peer) = server.join().unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(
            peer.ip(),
            std::net::IpAddr::V4(INTERNET_IP),
            "the client is not NATed"
        );

        // UDP too.
        let guest_dns = udp_in(&lab.guests[0].ns, SocketAddrV4::new(ip, 53));
        let client = udp_in(&lab.internet, SocketAddrV4::new(INTERNET_IP, 0));
        client
            .send_to(b"query", SocketAddrV4::new(UPLINK_IP, 5353))
            .unwrap();
        assert_eq!(recv(&guest_dns).0, b"query");

        // Unpublished, the host port is the host's again: nothing listens.
        lab.firewall.unpublish(ip, tcp).unwrap();
        lab.firewall.unpublish(ip, tcp).unwrap(); // idempotent
        let refused = lab.internet.run(|| {
            TcpStream::connect_timeout(&SocketAddrV4::new(UPLINK_IP, 8080).into(), ARRIVAL)
                .unwrap_err()
                .kind()
        });
        assert_eq!(refused, std::io::ErrorKind::ConnectionRefused);

        // A second mapping of a host port already published is refused and
        // the first stays.
        let clash = lab
            .firewall
            .publish(guest_ip(5), "5353:54/udp".parse().unwrap());
        assert!(
            matches!(
                clash,
                Err(firehost::net::firewall::FirewallError::Nft(
                    NftError::Rejected { .. }
                ))
            ),
            "{clash:?}"
        );
        client
            .send_to(b"again", SocketAddrV4::new(UPLINK_IP, 5353))
            .unwrap();
        assert_eq!(recv(&guest_dns).0, b"again");
    });
}

#[test]
fn install_replaces_leftovers_and_remove_is_idempotent() {
    const T: &str = "install_replaces_leftovers_and_remove_is_idempotent";
    in_netns(T, |nl| async move {
        let Some(nft) = nftables(T) else { return };
        let mut lab = lab(nl, nft, 2, vec![]).await;
        lab.add_guest().await;
        let mut taps = lab.firewall.taps().unwrap();
        taps.sort();
        assert_eq!(taps, vec![lab.tap(0), lab.tap(1), lab.tap(2)]);

        // A restarted manager installs what its live VMs need; everything
        // else goes in the same transaction.
        let live = vec![lab.guests[1].port.clone()];
        lab.firewall
            .install(&live, &[(lab.tap(1), lab.tap(2))])
            .unwrap();
        assert_eq!(lab.firewall.taps().unwrap(), vec![lab.tap(1)]);

        lab.firewall.remove_port(&live[0], &[]).unwrap();
        lab.firewall.remove_port(&live[0], &[]).unwrap();
        assert!(lab.firewall.taps().unwrap().is_empty());

        lab.firewall.uninstall().unwrap();
        assert!(!lab.firewall.installed().unwrap());
        lab.firewall.uninstall().unwrap();
    });
}

#[test]
fn a_missing_nftables_library_is_a_clear_error() {
    let err = Nftables::open_library("libnftables-firehost-missing.so.9").unwrap_err();
    assert!(matches!(err, NftError::Missing { .. }));
    assert!(
        err.to_string().contains("install the `nftables` package"),
        "{err}"
    );
}

#[test]
fn guests_cannot_reach_link_local_metadata_addresses() {
    const T: &str = "guests_cannot_reach_link_local_metadata_addresses";
    in_netns(T, |nl| async move {
        let Some(nft) = nftables(T) else { return };
        let service = "8125/udp".parse().unwrap();
        let lab = lab(nl, nft, 1, vec![service]).await;
        // A cloud metadata service beyond the uplink, and a link-local
        // address on the host itself, where a host service listens.
        const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
        const HOST_LINK_LOCAL: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
        add_address(&lab.nl, &ifname("up0"), HOST_LINK_LOCAL, 16).await;
        lab.internet
            .run_async(|nl| async move { add_address(&nl, &ifname("eth0"), METADATA, 16).await });
        let metadata = udp_in(&lab.internet, SocketAddrV4::new(METADATA, 80));
        let host_service = UdpSocket::bind(SocketAddrV4::new(HOST_LINK_LOCAL, 8125)).unwrap();
        let client = udp_in(
            &lab.guests[0].ns,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        );

        let before = lab.counter("ip", "metadata_blocked");
        client
            .send_to(b"GET /latest/meta-data", SocketAddrV4::new(METADATA, 80))
            .unwrap();
        lab.wait_counter_above("ip", "metadata_blocked", before);
        let before = lab.counter("ip", "metadata_blocked");
        client
            .send_to(b"stat", SocketAddrV4::new(HOST_LINK_LOCAL, 8125))
            .unwrap();
        lab.wait_counter_above("ip", "metadata_blocked", before);
        assert_nothing_received(&metadata);
        assert_nothing_received(&host_service);

        // The same service on the gateway's address still answers, and the
        // internet is still reachable: only link-local is closed.
        let on_gateway = UdpSocket::bind(SocketAddrV4::new(GATEWAY, 8125)).unwrap();
        send_until_received(&client, SocketAddrV4::new(GATEWAY, 8125), &on_gateway);
        let internet = udp_in(&lab.internet, SocketAddrV4::new(INTERNET_IP, 9000));
        send_until_received(&client, SocketAddrV4::new(INTERNET_IP, 9000), &internet);
    });
}
