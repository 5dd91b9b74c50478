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
use firehost::net::firewall::{
    EgressAction, EgressPolicy, EgressRule, Firewall, FirewallConfig, GuestPort, HostService,
    PortMapping, TrafficCounters,
};
use firehost::net::host::PRIVATE_RANGES;
use firehost::net::ipam::MacAddr;
use firehost::net::nft::{NftError, Nftables};
use firehost::net::{IfName, Netlink, sysctl};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const UPLINK_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const INTERNET_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// A private address beyond the uplink, on the internet namespace: the
/// LAN the host's default denied ranges keep guests from.
const LAN_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 10);
/// The guests' DNS server, on that LAN.
const LAN_DNS: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 53);

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
        egress_deny: PRIVATE_RANGES.to_vec(),
        dns: vec![LAN_DNS],
        resolver_port: 10053,
        proxy_port: 10080,
        doh_addresses: vec![],
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
            egress: EgressPolicy::open(),
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

    /// Gives guest `i` `policy`.
    fn set_policy(&mut self, i: usize, policy: EgressPolicy) {
        let old = self.guests[i].port.clone();
        self.guests[i].port.egress = policy;
        self.firewall
            .set_egress(&old, &self.guests[i].port)
            .unwrap();
    }

    /// Guest `i`'s traffic counters.
    fn traffic(&self, i: usize) -> TrafficCounters {
        let port = &self.guests[i].port;
        self.firewall
            .traffic(&[(port.tap.clone(), port.ip)])
            .unwrap()[&guest_ip(i)]
    }

    /// Waits until guest `i`'s egress chain has dropped more than `before`.
    fn wait_dropped_above(&self, i: usize, before: u64) {
        let what = format!("guest {i}'s egress drops to pass {before}");
        firehost_testkit::wait_until(&what, ARRIVAL, || {
            (self.traffic(i).egress_dropped > before).then_some(())
        });
    }

    /// Sends from guest `i` to `to`, which must not arrive at `receiver`:
    /// proven by the guest's drop counter and an empty socket.
    fn assert_dropped(&self, i: usize, client: &UdpSocket, to: SocketAddrV4, receiver: &UdpSocket) {
        let before = self.traffic(i).egress_dropped;
        client.send_to(b"blocked?", to).unwrap();
        self.wait_dropped_above(i, before);
        assert_nothing_received(receiver);
    }

    /// Puts the private LAN on the uplink: the internet namespace holds
    /// [`LAN_IP`] and [`LAN_DNS`], and the host reaches them through `up0`.
    async fn add_lan(&self) {
        add_address(&self.nl, &ifname("up0"), Ipv4Addr::new(10, 9, 9, 1), 24).await;
        self.internet.run_async(|nl| async move {
            add_address(&nl, &ifname("eth0"), LAN_IP, 24).await;
            add_address(&nl, &ifname("eth0"), LAN_DNS, 24).await;
        });
    }
}

fn policy(default: EgressAction, rules: &[&str]) -> EgressPolicy {
    let rules = rules
        .iter()
        .map(|r| match r.split_once(' ') {
            Some(("allow", m)) => EgressRule::allow(m.parse().unwrap()),
            Some(("deny", m)) => EgressRule::deny(m.parse().unwrap()),
            _ => panic!("{r}"),
        })
        .collect();
    EgressPolicy::new(default, rules).unwrap()
}

fn any_port_in(ns: &GuestNs) -> UdpSocket {
    udp_in(ns, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
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

#[test]
fn an_egress_policy_lets_out_only_what_it_allows_and_counts_the_rest() {
    const T: &str = "an_egress_policy_lets_out_only_what_it_allows_and_counts_the_rest";
    in_netns(T, |nl| async move {
        let Some(nft) = nftables(T) else { return };
        let mut lab = lab(nl, nft, 2, vec![]).await;
        lab.set_policy(
            0,
            policy(
                EgressAction::Deny,
                &[
                    &format!("allow {INTERNET_IP}:9000/udp"),
                    &format!("allow {INTERNET_IP}:8443-8444"),
                ],
            ),
        );
        let allowed = udp_in(&lab.internet, SocketAddrV4::new(INTERNET_IP, 9000));
        let other_port = udp_in(&lab.internet, SocketAddrV4::new(INTERNET_IP, 9001));
        let web = lab
            .internet
            .run(|| TcpListener::bind(SocketAddrV4::new(INTERNET_IP, 8443)).unwrap());
        let client = any_port_in(&lab.guests[0].ns);

        send_until_received(&client, SocketAddrV4::new(INTERNET_IP, 9000), &allowed);
        lab.assert_dropped(
            0,
            &client,
            SocketAddrV4::new(INTERNET_IP, 9001),
            &other_port,
        );
        let connected = lab.guests[0].ns.run(|| {
            TcpStream::connect_timeout(&SocketAddrV4::new(INTERNET_IP, 8443).into(), ARRIVAL)
        });
        assert!(connected.is_ok(), "{connected:?}");
        assert!(web.accept().is_ok());

        // The policy is guest 0's alone: guest 1 is open.
        let other = any_port_in(&lab.guests[1].ns);
        send_until_received(&other, SocketAddrV4::new(INTERNET_IP, 9001), &other_port);
        assert_eq!(lab.traffic(1).egress_dropped, 0);

        // In the kernel, the policy is the VM's allowed regions.
        let allowed = lab
            .firewall
            .nftables()
            .list("list set ip firehost allow_172_30_0_10")
            .unwrap()
            .to_string();
        for port in ["9000", "8443", "8444"] {
            assert!(allowed.contains(port), "{allowed}");
        }
    });
}

#[test]
fn private_ranges_are_closed_unless_a_vm_allows_them_but_dns_stays_open() {
    const T: &str = "private_ranges_are_closed_unless_a_vm_allows_them_but_dns_stays_open";
    in_netns(T, |nl| async move {
        let Some(nft) = nftables(T) else { return };
        let mut lab = lab(nl, nft, 2, vec![]).await;
        lab.add_lan().await;
        let lan = udp_in(&lab.internet, SocketAddrV4::new(LAN_IP, 9000));
        let dns = udp_in(&lab.internet, SocketAddrV4::new(LAN_DNS, 53));
        let not_dns = udp_in(&lab.internet, SocketAddrV4::new(LAN_DNS, 54));

        // An open VM: the LAN is closed by the host's default, its DNS
        // server is not.
        let client = any_port_in(&lab.guests[0].ns);
        send_until_received(&client, SocketAddrV4::new(LAN_DNS, 53), &dns);
        lab.assert_dropped(0, &client, SocketAddrV4::new(LAN_IP, 9000), &lan);
        lab.assert_dropped(0, &client, SocketAddrV4::new(LAN_DNS, 54), &not_dns);

        // A VM whose own rule allows the LAN reaches it.
        lab.set_policy(1, policy(EgressAction::Allow, &["allow 10.9.9.0/24"]));
        let allowed = any_port_in(&lab.guests[1].ns);
        send_until_received(&allowed, SocketAddrV4::new(LAN_IP, 9000), &lan);
    });
}

#[test]
fn a_changed_policy_applies_to_open_flows_at_their_next_packet() {
    const T: &str = "a_changed_policy_applies_to_open_flows_at_their_next_packet";
    in_netns(T, |nl| async move {
        use std::io::{Read, Write};
        let Some(nft) = nftables(T) else { return };
        let mut lab = lab(nl, nft, 1, vec![]).await;
        let server = udp_in(&lab.internet, SocketAddrV4::new(INTERNET_IP, 9000));
        let client = any_port_in(&lab.guests[0].ns);
        let to = SocketAddrV4::new(INTERNET_IP, 9000);
        // A UDP flow conntrack holds as established (it saw a reply) and
        // an open TCP connection.
        let from = send_until_received(&client, to, &server);
        server.send_to(b"reply", from).unwrap();
        assert_eq!(recv(&client).0, b"reply");
        let listener = lab
            .internet
            .run(|| TcpListener::bind(SocketAddrV4::new(INTERNET_IP, 8443)).unwrap());
        let mut stream = lab.guests[0]
            .ns
            .run(|| {
                TcpStream::connect_timeout(&SocketAddrV4::new(INTERNET_IP, 8443).into(), ARRIVAL)
            })
            .unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        stream.write_all(b"one").unwrap();
        let mut buf = [0u8; 3];
        accepted.read_exact(&mut buf).unwrap();

        // Closed: the next packet of each is dropped.
        lab.set_policy(0, policy(EgressAction::Deny, &[]));
        lab.assert_dropped(0, &client, to, &server);
        let before = lab.traffic(0).egress_dropped;
        stream.write_all(b"two").unwrap();
        lab.wait_dropped_above(0, before);
        accepted.set_nonblocking(true).unwrap();
        let got = accepted.read(&mut buf);
        assert!(
            matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{got:?}"
        );
        accepted.set_nonblocking(false).unwrap();

        // Open again: both carry on (TCP retransmits what was dropped).
        lab.set_policy(0, policy(EgressAction::Allow, &[]));
        send_until_received(&client, to, &server);
        accepted.set_read_timeout(Some(ARRIVAL)).unwrap();
        accepted.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"two");
    });
}

#[test]
fn traffic_counters_match_the_bytes_sent_and_survive_a_reinstall() {
    const T: &str = "traffic_counters_match_the_bytes_sent_and_survive_a_reinstall";
    in_netns(T, |nl| async move {
        let Some(nft) = nftables(T) else { return };
        let lab = lab(nl, nft, 2, vec![]).await;
        // The bridge's IPv6 chatter (router solicitations, MLD reports) is
        // flooded to every port, and is traffic a guest receives: off, so
        // what is counted is what the test sends.
        common::netns::disable_ipv6("fhbr0");
        let server = udp_in(&lab.internet, SocketAddrV4::new(INTERNET_IP, 9000));
        let client = any_port_in(&lab.guests[0].ns);
        let from = send_until_received(&client, SocketAddrV4::new(INTERNET_IP, 9000), &server);
        // Drain the probes, then count exactly what follows.
        server.set_nonblocking(true).unwrap();
        let mut drain = [0u8; 64];
        while server.recv_from(&mut drain).is_ok() {}
        server.set_nonblocking(false).unwrap();

        const SENT: u64 = 10;
        const RECEIVED: u64 = 4;
        let before = lab.traffic(0);
        for _ in 0..SENT {
            client
                .send_to(&[7u8; 1000], SocketAddrV4::new(INTERNET_IP, 9000))
                .unwrap();
        }
        for _ in 0..SENT {
            assert_eq!(recv(&server).0.len(), 1000);
        }
        for _ in 0..RECEIVED {
            server.send_to(&[9u8; 500], from).unwrap();
        }
        for _ in 0..RECEIVED {
            assert_eq!(recv(&client).0.len(), 500);
        }
        let after = lab.traffic(0);
        // An IP packet of a datagram is its payload and 28 bytes of
        // headers; ARP may add a frame or two of 28 bytes each way.
        let (tx_packets, tx_bytes) = (
            after.tx_packets - before.tx_packets,
            after.tx_bytes - before.tx_bytes,
        );
        let (rx_packets, rx_bytes) = (
            after.rx_packets - before.rx_packets,
            after.rx_bytes - before.rx_bytes,
        );
        assert!(
            (SENT..=SENT + 2).contains(&tx_packets),
            "{before:?} {after:?}"
        );
        assert!(
            (SENT * 1028..=SENT * 1028 + 2 * 28).contains(&tx_bytes),
            "{before:?} {after:?}"
        );
        assert!(
            (RECEIVED..=RECEIVED + 2).contains(&rx_packets),
            "{before:?} {after:?}"
        );
        assert!(
            (RECEIVED * 528..=RECEIVED * 528 + 2 * 28).contains(&rx_bytes),
            "{before:?} {after:?}"
        );
        assert_eq!(lab.traffic(1).tx_bytes, 0, "the other guest sent nothing");

        // A reinstall (a restarted manager) carries the counts over.
        let ports: Vec<GuestPort> = lab.guests.iter().map(|g| g.port.clone()).collect();
        lab.firewall.install(&ports, &[]).unwrap();
        let reinstalled = lab.traffic(0);
        assert!(
            reinstalled.tx_bytes >= after.tx_bytes,
            "{reinstalled:?} {after:?}"
        );
        assert!(
            reinstalled.rx_packets >= after.rx_packets,
            "{reinstalled:?} {after:?}"
        );
    });
}

#[test]
fn fragmented_datagrams_are_judged_whole() {
    const T: &str = "fragmented_datagrams_are_judged_whole";
    in_netns(T, |nl| async move {
        let Some(nft) = nftables(T) else { return };
        let mut lab = lab(nl, nft, 1, vec![]).await;
        lab.set_policy(
            0,
            policy(
                EgressAction::Deny,
                &[&format!("allow {INTERNET_IP}:9000/udp")],
            ),
        );
        let allowed = udp_in(&lab.internet, SocketAddrV4::new(INTERNET_IP, 9000));
        let denied = udp_in(&lab.internet, SocketAddrV4::new(INTERNET_IP, 9001));
        let client = any_port_in(&lab.guests[0].ns);
        send_until_received(&client, SocketAddrV4::new(INTERNET_IP, 9000), &allowed);
        // Three fragments each: only the first carries the ports, and the
        // policy sees the datagram reassembled.
        let big = vec![5u8; 4000];
        client
            .send_to(&big, SocketAddrV4::new(INTERNET_IP, 9000))
            .unwrap();
        allowed.set_read_timeout(Some(ARRIVAL)).unwrap();
        let mut buf = vec![0u8; 8000];
        let (n, _) = allowed.recv_from(&mut buf).unwrap();
        assert_eq!(n, 4000);
        let before = lab.traffic(0).egress_dropped;
        client
            .send_to(&big, SocketAddrV4::new(INTERNET_IP, 9001))
            .unwrap();
        lab.wait_dropped_above(0, before);
        assert_eq!(
            lab.traffic(0).egress_dropped,
            before + 1,
            "one datagram, one drop"
        );
        assert_nothing_received(&denied);
    });
}
