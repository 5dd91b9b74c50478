//! Tier 5: egress policies with domain rules, against the real kernel,
//! with real traffic through the gateway's resolver and proxy.
//!
//! The test thread's namespace is the host: a [`HostNetwork`] with its
//! bridge, and an uplink `up0` to an "internet" namespace holding a DNS
//! server (198.51.100.53) and web servers that answer every connection
//! with their own name, so a test sees which server a connection reached.
//! Each VM is attached by the library and has a guest stand-in behind its
//! very TAP (`common::tap_guest`).
//!
//! The runtime is current-thread and serves the gateway: everything the
//! guest does blocks, so it runs on the blocking pool.
//!
//! Needs root and nftables; elsewhere each test prints why it skipped.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::netns::{GuestNs, add_address, ifname, in_netns, link_up, nft_or_skip};
use common::tap_guest::{GuestConfig, TapGuest};
use common::udp::{ARRIVAL, assert_nothing_received, send_until_received, udp_in};
use firehost::VmId;
use firehost::net::Netlink;
use firehost::net::gateway::dns::testing as dns;
use firehost::net::gateway::sniff::testing::client_hello;
use firehost::net::host::{DomainConfig, HostNetwork, NetSpec, NetworkConfig, Uplink, VmNet};
use firehost::vocab::{EgressAction, EgressPolicy, EgressRule};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const INTERNET_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The DNS server the guests are given, which the gateway asks too.
const DNS_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
/// Another DNS server, that no guest is given.
const ROGUE_DNS_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 54);
/// `allowed.test`'s server.
const ALLOWED_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 80);
/// `other.test`'s server.
const OTHER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 81);
/// `brief.test`'s server, whose answer lives one second.
const BRIEF_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 82);
/// What `lan.test` resolves to: a private address.
const LAN_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 10);

fn id(s: &str) -> VmId {
    VmId::new(s).unwrap()
}

/// The names the internet's DNS server knows.
fn zone() -> HashMap<String, Vec<(Ipv4Addr, u32)>> {
    HashMap::from([
        ("allowed.test".to_owned(), vec![(ALLOWED_IP, 300)]),
        ("www.allowed.test".to_owned(), vec![(ALLOWED_IP, 300)]),
        ("other.test".to_owned(), vec![(OTHER_IP, 300)]),
        ("brief.test".to_owned(), vec![(BRIEF_IP, 1)]),
        ("lan.test".to_owned(), vec![(LAN_IP, 300)]),
    ])
}

/// A server thread in the internet namespace, stopped when dropped.
struct Server {
    stop: Arc<AtomicBool>,
    wake: Box<dyn Fn() + Send>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        (self.wake)();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A DNS server answering from `zone` (no such name for the rest).
fn dns_server(internet: &GuestNs, ip: Ipv4Addr) -> Server {
    let socket = udp_in(internet, SocketAddrV4::new(ip, 53));
    let stop = Arc::new(AtomicBool::new(false));
    let (waker, flag) = (socket.try_clone().unwrap(), stop.clone());
    let zone = zone();
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while !flag.load(Ordering::Relaxed) {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let query = &buf[..n];
            let Some(name) = dns::asked(query) else {
                continue;
            };
            let records = zone.get(&name).cloned().unwrap_or_default();
            if let Some(answer) = dns::answer(query, &records) {
                let _ = socket.send_to(&answer, from);
            }
        }
    });
    let local = waker.local_addr().unwrap();
    Server {
        stop,
        wake: Box::new(move || {
            let _ = waker.send_to(b"", local);
        }),
        thread: Some(thread),
    }
}

/// A TCP server that answers each connection's first bytes with `name`.
fn web_server(internet: &GuestNs, addr: SocketAddrV4, name: &'static str) -> Server {
    let listener = internet.run(move || TcpListener::bind(addr).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        for stream in listener.incoming() {
            if flag.load(Ordering::Relaxed) {
                return;
            }
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.set_read_timeout(Some(ARRIVAL));
            if stream.read(&mut buf).is_ok_and(|n| n > 0) {
                let _ = stream.write_all(name.as_bytes());
            }
        }
    });
    Server {
        stop,
        // A connection wakes the accept (the host reaches the internet's
        // addresses through the uplink).
        wake: Box::new(move || {
            let _ = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1));
        }),
        thread: Some(thread),
    }
}

/// The host with its network, the internet and its servers.
struct Host {
    internet: GuestNs,
    _servers: Vec<Server>,
    state: tempfile::TempDir,
    net: HostNetwork,
}

/// The addresses open to the VM at `vm` from DNS answers.
fn learned(vm: Ipv4Addr) -> Vec<Ipv4Addr> {
    let nft = std::sync::Arc::new(firehost::net::nft::Nftables::open().unwrap());
    let config = firehost::net::firewall::FirewallConfig {
        bridge: ifname("fhbr0"),
        subnet: "172.30.0.0/16".parse().unwrap(),
        gateway: GATEWAY,
        uplink: None,
        host_services: vec![],
        egress_deny: vec![],
        dns: vec![],
        resolver_port: 0,
        proxy_port: 0,
        doh_addresses: vec![],
    };
    firehost::net::firewall::Firewall::new(nft, config)
        .learned(vm)
        .unwrap()
        .into_iter()
        .map(|(ip, _)| ip)
        .collect()
}

impl Host {
    async fn new(nl: &Netlink) -> Host {
        let internet = GuestNs::new();
        let uplink = ifname("up0");
        internet
            .plug(nl, &uplink, None, INTERNET_IP, 24, None)
            .await;
        add_address(nl, &uplink, Ipv4Addr::new(198, 51, 100, 1), 24).await;
        add_address(nl, &uplink, Ipv4Addr::new(10, 9, 9, 1), 24).await;
        link_up(nl, &uplink, None).await;
        internet.run_async(|nl| async move {
            for ip in [DNS_IP, ROGUE_DNS_IP, ALLOWED_IP, OTHER_IP, BRIEF_IP] {
                add_address(&nl, &ifname("eth0"), ip, 24).await;
            }
            add_address(&nl, &ifname("eth0"), LAN_IP, 24).await;
        });
        let servers = vec![
            dns_server(&internet, DNS_IP),
            dns_server(&internet, ROGUE_DNS_IP),
            web_server(&internet, SocketAddrV4::new(ALLOWED_IP, 443), "allowed-tls"),
            web_server(&internet, SocketAddrV4::new(ALLOWED_IP, 80), "allowed-http"),
            web_server(&internet, SocketAddrV4::new(OTHER_IP, 443), "other-tls"),
            web_server(&internet, SocketAddrV4::new(OTHER_IP, 80), "other-http"),
            web_server(&internet, SocketAddrV4::new(LAN_IP, 443), "lan-tls"),
        ];
        let state = tempfile::tempdir().unwrap();
        let net = HostNetwork::new(Self::config(), state.path()).unwrap();
        Host {
            internet,
            _servers: servers,
            state,
            net,
        }
    }

    fn config() -> NetworkConfig {
        NetworkConfig {
            uplink: Uplink::Interface(ifname("up0")),
            dns: Some(vec![DNS_IP]),
            domains: DomainConfig {
                min_ttl: Duration::from_secs(1),
                ..DomainConfig::default()
            },
            ..NetworkConfig::default()
        }
    }

    /// Attaches `name` under `policy`, with a guest behind its TAP.
    async fn vm(&self, name: &str, policy: EgressPolicy) -> (VmNet, Arc<TapGuest>) {
        let spec = NetSpec {
            egress: policy,
            ..NetSpec::default()
        };
        let net = self.net.attach(&id(name), &spec).await.unwrap();
        let guest = TapGuest::attach(
            None,
            net.tap.as_str(),
            GuestConfig {
                ip: net.ip,
                prefix_len: 16,
                mac: net.mac,
                gateway: GATEWAY,
            },
        );
        (net, Arc::new(guest))
    }
}

/// Runs `f` in the guest's namespace, off the runtime's only thread.
async fn in_guest<T: Send + 'static>(
    guest: &Arc<TapGuest>,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let guest = guest.clone();
    tokio::task::spawn_blocking(move || guest.ns.run(f))
        .await
        .unwrap()
}

/// What the guest gets asking `server` for `name`: the addresses (none
/// for "no such name"), or `None` when nothing answers.
async fn lookup(
    guest: &Arc<TapGuest>,
    server: Ipv4Addr,
    name: &'static str,
) -> Option<Vec<Ipv4Addr>> {
    in_guest(guest, move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let query = dns::query(0x1234, name);
        let mut buf = [0u8; 1500];
        // Resent a few times: the first may wait for ARP.
        for _ in 0..6 {
            socket
                .send_to(&query, SocketAddrV4::new(server, 53))
                .unwrap();
            if let Ok(n) = socket.recv(&mut buf) {
                assert!(
                    dns::answers(&buf[..n], &query),
                    "an answer to another question"
                );
                return Some(
                    dns::addresses(&buf[..n])
                        .into_iter()
                        .map(|(ip, _)| ip)
                        .collect(),
                );
            }
        }
        None
    })
    .await
}

/// What the server that the guest's connection to `to` reached says,
/// after the guest sent `first`; empty when the connection was closed
/// without an answer (refused by the proxy).
async fn connect(guest: &Arc<TapGuest>, to: SocketAddrV4, first: Vec<u8>) -> String {
    in_guest(guest, move || {
        let mut stream = TcpStream::connect_timeout(&to.into(), ARRIVAL).unwrap();
        stream.set_read_timeout(Some(ARRIVAL)).unwrap();
        stream.write_all(&first).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    })
    .await
}

fn http_get(host: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: test\r\n\r\n").into_bytes()
}

fn allow_only(names: &[&str]) -> EgressPolicy {
    EgressPolicy::new(
        EgressAction::Deny,
        names
            .iter()
            .map(|n| EgressRule::allow_domain(n.parse().unwrap()))
            .collect(),
    )
    .unwrap()
}

async fn traffic(host: &Host, ip: Ipv4Addr) -> firehost::net::firewall::TrafficCounters {
    let nets: Vec<VmNet> = host
        .net
        .attached()
        .await
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    host.net.traffic(&nets).await.unwrap()[&ip]
}

#[test]
fn a_domain_allowlist_resolves_and_reaches_only_allowed_names() {
    const T: &str = "a_domain_allowlist_resolves_and_reaches_only_allowed_names";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let host = Host::new(&nl).await;
        let (net, guest) = host
            .vm("walled", allow_only(&["*.allowed.test", "allowed.test"]))
            .await;

        // DNS: allowed names are answered, at the gateway and at the DNS
        // server the guest was given (redirected to the gateway); the rest
        // are "no such name"; another server is out of reach.
        assert_eq!(
            lookup(&guest, GATEWAY, "allowed.test").await,
            Some(vec![ALLOWED_IP])
        );
        assert_eq!(
            lookup(&guest, DNS_IP, "www.allowed.test").await,
            Some(vec![ALLOWED_IP])
        );
        assert_eq!(lookup(&guest, GATEWAY, "other.test").await, Some(vec![]));
        let before = traffic(&host, net.ip).await;
        assert_eq!(before.names_refused, 1);
        assert_eq!(lookup(&guest, ROGUE_DNS_IP, "other.test").await, None);
        assert!(traffic(&host, net.ip).await.egress_dropped > before.egress_dropped);

        // TLS and HTTP reach the allowed name's server, whatever address
        // the guest dialled: the proxy connects to the name.
        let tls = |sni: &str| client_hello(Some(sni));
        assert_eq!(
            connect(
                &guest,
                SocketAddrV4::new(ALLOWED_IP, 443),
                tls("allowed.test")
            )
            .await,
            "allowed-tls"
        );
        assert_eq!(
            connect(
                &guest,
                SocketAddrV4::new(OTHER_IP, 443),
                tls("allowed.test")
            )
            .await,
            "allowed-tls",
            "an SNI that lies about the address"
        );
        assert_eq!(
            connect(
                &guest,
                SocketAddrV4::new(OTHER_IP, 80),
                http_get("www.allowed.test")
            )
            .await,
            "allowed-http"
        );
        // Other names, and connections naming nothing, are refused.
        let refused = traffic(&host, net.ip).await.names_refused;
        assert_eq!(
            connect(&guest, SocketAddrV4::new(OTHER_IP, 443), tls("other.test")).await,
            ""
        );
        assert_eq!(
            connect(
                &guest,
                SocketAddrV4::new(ALLOWED_IP, 443),
                client_hello(None)
            )
            .await,
            ""
        );
        assert_eq!(
            connect(
                &guest,
                SocketAddrV4::new(OTHER_IP, 80),
                http_get("other.test")
            )
            .await,
            ""
        );
        assert_eq!(traffic(&host, net.ip).await.names_refused, refused + 3);

        // Non-web protocols reach the addresses of allowed names only.
        let allowed_udp = udp_in(&host.internet, SocketAddrV4::new(ALLOWED_IP, 9000));
        let other_udp = udp_in(&host.internet, SocketAddrV4::new(OTHER_IP, 9000));
        let (client, to) = (
            in_guest(&guest, || UdpSocket::bind("0.0.0.0:0").unwrap()).await,
            SocketAddrV4::new(ALLOWED_IP, 9000),
        );
        let client = Arc::new(client);
        let (c, a) = (client.clone(), Arc::new(allowed_udp));
        let a2 = a.clone();
        tokio::task::spawn_blocking(move || send_until_received(&c, to, &a2))
            .await
            .unwrap();
        let before = traffic(&host, net.ip).await.egress_dropped;
        client
            .send_to(b"x", SocketAddrV4::new(OTHER_IP, 9000))
            .unwrap();
        // QUIC to an address no allowed name resolved to.
        client
            .send_to(b"quic", SocketAddrV4::new(OTHER_IP, 443))
            .unwrap();
        let what = "the guest's drops to count the datagrams";
        let drops = firehost_testkit::poll_until_async(what, ARRIVAL, || async {
            let now = traffic(&host, net.ip).await.egress_dropped;
            (now >= before + 2).then_some(now)
        })
        .await;
        assert!(drops >= before + 2);
        assert_nothing_received(&other_udp);

        host.net.detach(&id("walled")).await.unwrap();
    });
}

#[test]
fn learned_addresses_expire_with_their_ttl_and_private_answers_are_never_opened() {
    const T: &str = "learned_addresses_expire_with_their_ttl_and_private_answers_are_never_opened";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let host = Host::new(&nl).await;
        let (net, guest) = host
            .vm("brief", allow_only(&["brief.test", "lan.test"]))
            .await;

        assert_eq!(
            lookup(&guest, GATEWAY, "brief.test").await,
            Some(vec![BRIEF_IP])
        );
        assert_eq!(learned(net.ip), vec![BRIEF_IP]);
        // Its TTL is a second (the test's floor): then it is closed again.
        firehost_testkit::poll_until("brief.test's address to expire", ARRIVAL, || {
            learned(net.ip).is_empty().then_some(())
        })
        .await;
        let server = Arc::new(udp_in(&host.internet, SocketAddrV4::new(BRIEF_IP, 9000)));
        let client = Arc::new(in_guest(&guest, || UdpSocket::bind("0.0.0.0:0").unwrap()).await);
        let before = traffic(&host, net.ip).await.egress_dropped;
        client
            .send_to(b"late", SocketAddrV4::new(BRIEF_IP, 9000))
            .unwrap();
        firehost_testkit::poll_until_async("the late datagram's drop", ARRIVAL, || async {
            (traffic(&host, net.ip).await.egress_dropped > before).then_some(())
        })
        .await;
        assert_nothing_received(&server);
        // Asked again, it is open again.
        assert_eq!(
            lookup(&guest, GATEWAY, "brief.test").await,
            Some(vec![BRIEF_IP])
        );
        let (c, s2) = (client.clone(), server.clone());
        tokio::task::spawn_blocking(move || {
            send_until_received(&c, SocketAddrV4::new(BRIEF_IP, 9000), &s2)
        })
        .await
        .unwrap();

        // An allowed name that resolves into the LAN is answered, but its
        // address is never opened, and the proxy will not connect to it.
        assert_eq!(
            lookup(&guest, GATEWAY, "lan.test").await,
            Some(vec![LAN_IP])
        );
        assert!(!learned(net.ip).contains(&LAN_IP));
        assert_eq!(
            connect(
                &guest,
                SocketAddrV4::new(LAN_IP, 443),
                client_hello(Some("lan.test"))
            )
            .await,
            ""
        );
        host.net.detach(&id("brief")).await.unwrap();
    });
}

#[test]
fn domain_rules_set_at_runtime_and_kept_by_a_restarted_manager() {
    const T: &str = "domain_rules_set_at_runtime_and_kept_by_a_restarted_manager";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let host = Host::new(&nl).await;
        // An open VM uses any DNS server and reaches any name.
        let (net, guest) = host.vm("late", EgressPolicy::open()).await;
        assert_eq!(
            lookup(&guest, ROGUE_DNS_IP, "other.test").await,
            Some(vec![OTHER_IP])
        );
        assert_eq!(
            connect(
                &guest,
                SocketAddrV4::new(OTHER_IP, 443),
                client_hello(Some("other.test"))
            )
            .await,
            "other-tls"
        );

        // Walled in at runtime: its DNS server now answers only allowed
        // names (through the gateway), the rogue one not at all.
        host.net
            .set_egress(&id("late"), allow_only(&["allowed.test"]))
            .await
            .unwrap();
        assert_eq!(lookup(&guest, DNS_IP, "other.test").await, Some(vec![]));
        assert_eq!(lookup(&guest, ROGUE_DNS_IP, "other.test").await, None);
        assert_eq!(
            lookup(&guest, DNS_IP, "allowed.test").await,
            Some(vec![ALLOWED_IP])
        );
        assert_eq!(
            connect(
                &guest,
                SocketAddrV4::new(OTHER_IP, 443),
                client_hello(Some("other.test"))
            )
            .await,
            ""
        );
        let open_before = learned(net.ip);
        assert_eq!(open_before, vec![ALLOWED_IP]);

        // A new manager for the same state directory takes over from the
        // records: the gateway serves the VM again, and what it learned is
        // still open.
        let attached = host.net.attached().await;
        drop(host.net);
        let restarted = HostNetwork::new(Host::config(), host.state.path()).unwrap();
        restarted.reconcile(attached, &[]).await;
        assert_eq!(learned(net.ip), open_before);
        assert_eq!(lookup(&guest, GATEWAY, "other.test").await, Some(vec![]));
        assert_eq!(
            connect(
                &guest,
                SocketAddrV4::new(ALLOWED_IP, 443),
                client_hello(Some("allowed.test"))
            )
            .await,
            "allowed-tls"
        );

        // Open again: the gateway lets the VM go.
        restarted
            .set_egress(&id("late"), EgressPolicy::open())
            .await
            .unwrap();
        assert_eq!(
            lookup(&guest, ROGUE_DNS_IP, "other.test").await,
            Some(vec![OTHER_IP])
        );
        restarted.detach(&id("late")).await.unwrap();
    });
}

#[test]
fn a_gateway_helper_serves_names_past_the_manager_and_leaves_with_the_last_vm() {
    const T: &str = "a_gateway_helper_serves_names_past_the_manager_and_leaves_with_the_last_vm";
    in_netns(T, |nl| async move {
        use firehost::net::host::GatewayProgram;
        if !nft_or_skip(T) {
            return;
        }
        let mut host = Host::new(&nl).await;
        let mut config = Host::config();
        config.domains.program = Some(GatewayProgram::new(
            firehost_testkit::workspace_binary("firehost-egress-gateway"),
            Vec::<String>::new(),
        ));
        host.net = HostNetwork::new(config.clone(), host.state.path()).unwrap();
        let socket = host.state.path().join("egress-gateway.sock");
        let (net, guest) = host.vm("helped", allow_only(&["allowed.test"])).await;
        assert!(socket.exists(), "the helper listens in the state directory");
        assert_eq!(
            lookup(&guest, GATEWAY, "allowed.test").await,
            Some(vec![ALLOWED_IP])
        );
        assert_eq!(lookup(&guest, GATEWAY, "other.test").await, Some(vec![]));
        assert_eq!(
            traffic(&host, net.ip).await.names_refused,
            1,
            "counted by the helper"
        );

        // The manager goes; the helper stays and serves.
        let attached = host.net.attached().await;
        host.net = HostNetwork::new(config.clone(), host.state.path()).unwrap();
        assert_eq!(
            connect(
                &guest,
                SocketAddrV4::new(OTHER_IP, 443),
                client_hello(Some("allowed.test"))
            )
            .await,
            "allowed-tls"
        );
        // The next manager takes it over rather than starting another.
        host.net.reconcile(attached, &[]).await;
        assert_eq!(
            lookup(&guest, DNS_IP, "allowed.test").await,
            Some(vec![ALLOWED_IP])
        );

        // The last VM with domain rules takes the helper with it.
        host.net.detach(&id("helped")).await.unwrap();
        firehost_testkit::poll_until("the helper to leave", ARRIVAL, || {
            (!socket.exists()).then_some(())
        })
        .await;
    });
}

#[test]
fn a_gateway_that_cannot_listen_fails_the_attach_and_leaves_nothing() {
    const T: &str = "a_gateway_that_cannot_listen_fails_the_attach_and_leaves_nothing";
    in_netns(T, |nl| async move {
        use firehost::net::host::NetError;
        if !nft_or_skip(T) {
            return;
        }
        let host = Host::new(&nl).await;
        let (_open, _guest) = host.vm("open", EgressPolicy::open()).await;
        let links_before = common::netns::links(&nl).await;
        // Another program holds the resolver's port on the gateway.
        let squatter = UdpSocket::bind(SocketAddrV4::new(GATEWAY, 10053)).unwrap();
        let spec = NetSpec {
            egress: allow_only(&["allowed.test"]),
            ..NetSpec::default()
        };
        let refused = host.net.attach(&id("named"), &spec).await;
        assert!(
            matches!(refused, Err(NetError::Gateway { .. })),
            "{refused:?}"
        );
        assert_eq!(
            refused.unwrap_err().kind(),
            firehost::ErrorKind::HostNotReady
        );
        assert_eq!(common::netns::links(&nl).await, links_before, "no TAP left");
        let attached: Vec<VmId> = host
            .net
            .attached()
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(attached, vec![id("open")]);
        // Once the port is free, the same attach goes through.
        drop(squatter);
        host.net.attach(&id("named"), &spec).await.unwrap();
        host.net.detach(&id("named")).await.unwrap();
        host.net.detach(&id("open")).await.unwrap();
    });
}

#[test]
fn a_gateway_helper_that_cannot_start_fails_the_attach_and_leaves_nothing() {
    const T: &str = "a_gateway_helper_that_cannot_start_fails_the_attach_and_leaves_nothing";
    in_netns(T, |nl| async move {
        use firehost::net::host::{GatewayProgram, NetError};
        if !nft_or_skip(T) {
            return;
        }
        let mut host = Host::new(&nl).await;
        let mut config = Host::config();
        config.domains.program = Some(GatewayProgram::new(
            host.state.path().join("no-such-helper"),
            Vec::<String>::new(),
        ));
        host.net = HostNetwork::new(config, host.state.path()).unwrap();
        let (_open, _guest) = host.vm("open", EgressPolicy::open()).await;
        let links_before = common::netns::links(&nl).await;
        let spec = NetSpec {
            egress: allow_only(&["allowed.test"]),
            ..NetSpec::default()
        };
        let refused = host.net.attach(&id("named"), &spec).await;
        assert!(
            matches!(refused, Err(NetError::Gateway { .. })),
            "{refused:?}"
        );
        assert_eq!(common::netns::links(&nl).await, links_before, "no TAP left");
        let attached: Vec<VmId> = host
            .net
            .attached()
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(attached, vec![id("open")]);
        assert!(!host.state.path().join("egress-gateway.sock").exists());
        host.net.detach(&id("open")).await.unwrap();
    });
}
