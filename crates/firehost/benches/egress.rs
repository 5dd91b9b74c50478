//! Benchmarks of egress policy (issue 16), each reported as a ratio
//! against a baseline measured in the same run (see BENCHMARKS.md):
//!
//! 1. Policy update latency: [`Firewall::set_egress`] of a 50-rule policy
//!    with 500 VMs on the firewall, each with a 50-rule policy of its own,
//!    vs with 10. The aim: ≤ 2 ms, and flat in the number of VMs.
//! 2. Throughput through the firewall: one TCP stream from a guest to the
//!    internet whose 50-rule policy allows it at its last rule, vs the
//!    same from a guest with the open policy.
//! 3. The proxy: a connection naming an allowed host through the proxy
//!    (which resolves the name and dials it) vs the same connection made
//!    directly by a guest with the open policy: setup latency (connect,
//!    `ClientHello`, first byte back) and throughput of one stream.
//! 4. The resolver: a query for an allowed name at the gateway (checked,
//!    forwarded, its address opened in the firewall) vs the same query
//!    sent straight to the upstream server.
//!
//! The world is the tests' (`tests/common/netns.rs`): the benchmark
//! thread's own namespace is the host with the bridge `fhbr0` and an
//! uplink `up0` to an "internet" namespace; each guest is a namespace whose
//! `eth0` is a veth on the bridge. Nothing outside those namespaces is
//! touched.
//!
//! Run: `cargo bench -p firehost --bench egress`. Needs root and
//! libnftables; `BENCH_ITERS` scales the iteration counts.

#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

mod common;
#[path = "../tests/common/netns.rs"]
#[allow(dead_code)]
mod netns;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{iters, median};
use firehost::net::bridge::Bridge;
use firehost::net::firewall::{Firewall, FirewallConfig, GuestPort};
use firehost::net::gateway::Gateway;
use firehost::net::gateway::decide::HostRules;
use firehost::net::gateway::dns::testing as dns;
use firehost::net::gateway::sniff::testing::client_hello;
use firehost::net::host::{DomainConfig, PRIVATE_RANGES};
use firehost::net::ipam::MacAddr;
use firehost::net::nft::Nftables;
use firehost::net::{Netlink, sysctl};
use firehost::vocab::{EgressAction, EgressPolicy, EgressRule};
use netns::{GuestNs, add_address, ifname, in_netns, link_up};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const INTERNET_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const DNS_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
/// The stream size of the throughput runs.
const STREAM_BYTES: usize = 256 << 20;

/// `netns.rs` reports skips through its parent module.
fn skip(test: &str, why: &str) {
    eprintln!("skipping {test}: {why}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn firewall_config() -> FirewallConfig {
    FirewallConfig {
        bridge: ifname("fhbr0"),
        subnet: "172.30.0.0/16".parse().unwrap(),
        gateway: GATEWAY,
        uplink: Some(ifname("up0")),
        host_services: Vec::new(),
        egress_deny: PRIVATE_RANGES.to_vec(),
        dns: vec![DNS_IP],
        resolver_port: 10053,
        proxy_port: 10080,
        doh_addresses: Vec::new(),
    }
}

fn guest_ip(i: usize) -> Ipv4Addr {
    let [_, _, c, d] = (u32::from(Ipv4Addr::new(172, 30, 1, 0)) + i as u32).to_be_bytes();
    Ipv4Addr::new(172, 30, c, d)
}

fn guest_mac(i: usize) -> MacAddr {
    let [_, _, c, d] = (i as u32).to_be_bytes();
    MacAddr::new([6, 0, 0, 1, c, d])
}

/// A 50-rule policy: 49 rules that do not match the internet server,
/// then one that allows `allow` (the worst case: every rule is checked).
fn fifty_rules(seed: usize, allow: &str) -> EgressPolicy {
    let mut rules: Vec<EgressRule> = (0..49)
        .map(|r| {
            let net = format!("203.0.{}.{}:{}", (seed + r) % 250, r + 1, 1000 + r);
            EgressRule::allow(net.parse().unwrap())
        })
        .collect();
    rules.push(EgressRule::allow(allow.parse().unwrap()));
    EgressPolicy::new(EgressAction::Deny, rules).unwrap()
}

fn port(i: usize, egress: EgressPolicy) -> GuestPort {
    GuestPort {
        tap: ifname(&format!("fhb{i}")),
        mac: guest_mac(i),
        ip: guest_ip(i),
        published: Vec::new(),
        egress,
    }
}

/// A firewall in the calling thread's namespace with `vms` VMs on it, each
/// with a 50-rule policy of its own.
fn firewall_with(vms: usize) -> (Firewall, Vec<GuestPort>) {
    let nft = Arc::new(Nftables::open().unwrap());
    let firewall = Firewall::new(nft, firewall_config());
    let ports: Vec<GuestPort> = (0..vms)
        .map(|i| port(i, fifty_rules(i, "198.51.100.2:443")))
        .collect();
    firewall.install(&ports, &[]).unwrap();
    (firewall, ports)
}

/// 1b. Admitting and removing one VM with `policy` with `vms` VMs on the
/// firewall.
fn admit_latency(vms: usize, policy: EgressPolicy) -> Duration {
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = samples.clone();
    in_netns("admit_latency", move |_nl| async move {
        let (firewall, _) = firewall_with(vms);
        let extra = port(vms + 1, policy);
        for _ in 0..iters(100) {
            let start = Instant::now();
            firewall.add_port(&extra, &[]).unwrap();
            firewall.remove_port(&extra, &[]).unwrap();
            out.lock().unwrap().push(start.elapsed());
        }
    });
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    median(samples)
}

/// 1. The latency of one policy change with `vms` VMs on the firewall.
fn update_latency(vms: usize) -> Duration {
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = samples.clone();
    in_netns("update_latency", move |_nl| async move {
        let (firewall, ports) = firewall_with(vms);
        let mut current = ports[0].clone();
        for round in 0..iters(200) {
            let mut changed = current.clone();
            changed.egress = fifty_rules(round + 1, "198.51.100.2:443");
            let start = Instant::now();
            firewall.set_egress(&current, &changed).unwrap();
            out.lock().unwrap().push(start.elapsed());
            current = changed;
        }
    });
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    median(samples)
}

/// The host side of the data-path runs: bridge, uplink, internet, and a
/// firewall holding guests of the given policies.
struct World {
    internet: GuestNs,
    guests: Vec<GuestNs>,
    firewall: Firewall,
}

async fn world(nl: &Netlink, policies: Vec<EgressPolicy>) -> World {
    Bridge::ensure(nl, &ifname("fhbr0"), GATEWAY, 16)
        .await
        .unwrap();
    let internet = GuestNs::new();
    let uplink = ifname("up0");
    internet
        .plug(nl, &uplink, None, INTERNET_IP, 24, None)
        .await;
    add_address(nl, &uplink, Ipv4Addr::new(198, 51, 100, 1), 24).await;
    link_up(nl, &uplink, None).await;
    internet.run_async(|nl| async move { add_address(&nl, &ifname("eth0"), DNS_IP, 24).await });
    sysctl::enable_forwarding(&ifname("fhbr0")).unwrap();
    sysctl::enable_forwarding(&uplink).unwrap();
    let firewall = Firewall::new(Arc::new(Nftables::open().unwrap()), firewall_config());
    firewall.install(&[], &[]).unwrap();
    let mut guests = Vec::new();
    for (i, policy) in policies.into_iter().enumerate() {
        let ns = GuestNs::new();
        let p = port(i, policy);
        ns.plug(nl, &p.tap, Some(p.mac), p.ip, 16, Some(GATEWAY))
            .await;
        link_up(nl, &p.tap, Some(&ifname("fhbr0"))).await;
        firewall.add_port(&p, &[]).unwrap();
        guests.push(ns);
    }
    World {
        internet,
        guests,
        firewall,
    }
}

/// A server in the internet namespace: for each connection, reads the
/// `ClientHello` (or whatever comes first), answers one byte, then counts
/// the rest of the stream and answers its length when it ends.
fn sink_server(internet: &GuestNs, port: u16) {
    let listener =
        internet.run(move || TcpListener::bind(SocketAddrV4::new(INTERNET_IP, port)).unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                if stream.read(&mut buf).is_ok_and(|n| n > 0) {
                    let _ = stream.write_all(b"!");
                }
                let mut total = 0u64;
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = stream.write_all(&total.to_be_bytes());
            });
        }
    });
}

/// From guest `ns`: connect to `to`, send a `ClientHello` naming `name`,
/// wait for the first byte back; then, with `stream`, send that many bytes
/// and wait for the server's count. Returns (setup, stream) times.
fn client(
    ns: &GuestNs,
    to: SocketAddrV4,
    name: &'static str,
    stream: usize,
) -> (Duration, Duration) {
    ns.run(move || {
        let start = Instant::now();
        let mut conn = TcpStream::connect(to).unwrap();
        conn.set_nodelay(true).unwrap();
        conn.write_all(&client_hello(Some(name))).unwrap();
        let mut one = [0u8; 1];
        conn.read_exact(&mut one).unwrap();
        let setup = start.elapsed();
        if stream == 0 {
            return (setup, Duration::ZERO);
        }
        let chunk = vec![7u8; 1 << 16];
        let start = Instant::now();
        let mut left = stream;
        while left > 0 {
            let n = left.min(chunk.len());
            conn.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let mut count = [0u8; 8];
        conn.read_exact(&mut count).unwrap();
        assert_eq!(u64::from_be_bytes(count), stream as u64);
        (setup, start.elapsed())
    })
}

/// 2. One stream's time through the firewall: open policy vs 50 rules.
fn firewall_throughput() -> (Duration, Duration) {
    let result = Arc::new(std::sync::Mutex::new((Duration::ZERO, Duration::ZERO)));
    let out = result.clone();
    in_netns("firewall_throughput", move |nl| async move {
        let policies = vec![EgressPolicy::open(), fifty_rules(0, "198.51.100.2:9443")];
        let world = world(&nl, policies).await;
        sink_server(&world.internet, 9443);
        let to = SocketAddrV4::new(INTERNET_IP, 9443);
        let (mut open, mut ruled) = (Vec::new(), Vec::new());
        for _ in 0..iters(5) {
            open.push(client(&world.guests[0], to, "x.test", STREAM_BYTES).1);
            ruled.push(client(&world.guests[1], to, "x.test", STREAM_BYTES).1);
        }
        *out.lock().unwrap() = (median(open), median(ruled));
    });
    *result.lock().unwrap()
}

/// The results of the gateway runs.
#[derive(Debug, Default, Clone, Copy)]
struct GatewayRuns {
    direct_setup: Duration,
    proxied_setup: Duration,
    direct_stream: Duration,
    proxied_stream: Duration,
    direct_query: Duration,
    resolver_query: Duration,
    resolver_first: Duration,
}

/// A DNS server in the internet namespace answering every name with the
/// internet server's address.
fn dns_server(internet: &GuestNs) {
    let socket = internet.run(|| UdpSocket::bind(SocketAddrV4::new(DNS_IP, 53)).unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            // `n<i>.bench.test` has an address of its own: a first answer.
            let own = dns::asked(&buf[..n]).and_then(|name| {
                name.strip_prefix('n')?
                    .split('.')
                    .next()?
                    .parse::<u8>()
                    .ok()
            });
            let ip = own.map_or(INTERNET_IP, |i| Ipv4Addr::new(203, 0, 113, i));
            if let Some(answer) = dns::answer(&buf[..n], &[(ip, 300)]) {
                let _ = socket.send_to(&answer, from);
            }
        }
    });
}

/// One query for `name` from guest `ns` to `server`, timed.
fn query(ns: &GuestNs, server: Ipv4Addr, id: u16, name: String) -> Duration {
    ns.run(move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let query = dns::query(id, &name);
        let mut buf = [0u8; 1500];
        let start = Instant::now();
        socket
            .send_to(&query, SocketAddrV4::new(server, 53))
            .unwrap();
        let n = socket.recv(&mut buf).unwrap();
        let took = start.elapsed();
        assert!(dns::answers(&buf[..n], &query));
        took
    })
}

/// 3 and 4: the proxy and the resolver vs going direct.
fn gateway_runs() -> GatewayRuns {
    let result = Arc::new(std::sync::Mutex::new(GatewayRuns::default()));
    let out = result.clone();
    in_netns("gateway_runs", move |nl| async move {
        let named = EgressPolicy::new(
            EgressAction::Deny,
            vec![
                EgressRule::allow_domain("bench.test".parse().unwrap()),
                EgressRule::allow_domain("*.bench.test".parse().unwrap()),
            ],
        )
        .unwrap();
        let world = world(&nl, vec![EgressPolicy::open(), named.clone()]).await;
        sink_server(&world.internet, 443);
        dns_server(&world.internet);
        let host = HostRules {
            deny: PRIVATE_RANGES.to_vec(),
            doh_names: Vec::new(),
            doh_addresses: Vec::new(),
            subnet: "172.30.0.0/16".parse().unwrap(),
        };
        let gateway = Gateway::start(
            GATEWAY,
            &DomainConfig::default(),
            vec![SocketAddrV4::new(DNS_IP, 53)],
            host,
            world.firewall.clone(),
        )
        .await
        .unwrap();
        gateway.serve_exactly(vec![(guest_ip(1), named)]);
        let guests = Arc::new(world.guests);
        let to = SocketAddrV4::new(INTERNET_IP, 443);
        let runs = tokio::task::spawn_blocking(move || {
            let (direct, proxied) = (&guests[0], &guests[1]);
            // Warm up ARP and the caches on both paths.
            client(direct, to, "bench.test", 0);
            client(proxied, to, "bench.test", 0);
            let mut r = GatewayRuns::default();
            let n = iters(200);
            r.direct_setup = median(
                (0..n)
                    .map(|_| client(direct, to, "bench.test", 0).0)
                    .collect(),
            );
            r.proxied_setup = median(
                (0..n)
                    .map(|_| client(proxied, to, "bench.test", 0).0)
                    .collect(),
            );
            let (mut d, mut p) = (Vec::new(), Vec::new());
            for _ in 0..iters(5) {
                d.push(client(direct, to, "bench.test", STREAM_BYTES).1);
                p.push(client(proxied, to, "bench.test", STREAM_BYTES).1);
            }
            r.direct_stream = median(d);
            r.proxied_stream = median(p);
            let name = || "bench.test".to_owned();
            r.direct_query = median(
                (0..n)
                    .map(|i| query(direct, DNS_IP, i as u16, name()))
                    .collect(),
            );
            r.resolver_query = median(
                (0..n)
                    .map(|i| query(proxied, GATEWAY, i as u16, name()))
                    .collect(),
            );
            // A name never asked before: its address is opened first.
            r.resolver_first = median(
                (0..n.min(250))
                    .map(|i| query(proxied, GATEWAY, i as u16, format!("n{i}.bench.test")))
                    .collect(),
            );
            r
        })
        .await
        .unwrap();
        gateway.stop().await;
        *out.lock().unwrap() = runs;
    });
    *result.lock().unwrap()
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        return skip("egress", "needs root");
    }
    if Nftables::open().is_err() {
        return skip("egress", "libnftables is missing");
    }
    println!("1. policy update latency (50 rules, every VM with 50 rules of its own)");
    let few = update_latency(10);
    let many = update_latency(500);
    println!("  10 VMs   {:8.3} ms", ms(few));
    println!("  500 VMs  {:8.3} ms", ms(many));
    println!("  500 / 10 {:8.2}x", many.as_secs_f64() / few.as_secs_f64());

    for (what, policy) in [
        ("open", EgressPolicy::open()),
        ("50-rule", fifty_rules(7, "198.51.100.2:443")),
    ] {
        let few = admit_latency(10, policy.clone());
        let many = admit_latency(500, policy);
        println!(
            "  admit + remove one {what} VM, 10 VMs   {:8.3} ms",
            ms(few)
        );
        println!(
            "  admit + remove one {what} VM, 500 VMs  {:8.3} ms",
            ms(many)
        );
        println!("  500 / 10 {:8.2}x", many.as_secs_f64() / few.as_secs_f64());
    }

    println!(
        "2. one TCP stream of {} MiB through the firewall",
        STREAM_BYTES >> 20
    );
    let (open, ruled) = firewall_throughput();
    let mb = |d: Duration| (STREAM_BYTES as f64 / (1 << 20) as f64) / d.as_secs_f64();
    println!("  open policy     {:8.1} MiB/s", mb(open));
    println!("  50-rule policy  {:8.1} MiB/s", mb(ruled));
    println!("  50 rules / open {:8.2}x", mb(ruled) / mb(open));

    println!("3-4. the gateway");
    let g = gateway_runs();
    println!("  setup direct    {:8.3} ms", ms(g.direct_setup));
    println!(
        "  setup proxied   {:8.3} ms (+{:.3} ms)",
        ms(g.proxied_setup),
        ms(g.proxied_setup.saturating_sub(g.direct_setup))
    );
    println!("  stream direct   {:8.1} MiB/s", mb(g.direct_stream));
    println!("  stream proxied  {:8.1} MiB/s", mb(g.proxied_stream));
    println!(
        "  proxied / direct {:7.2}x",
        mb(g.proxied_stream) / mb(g.direct_stream)
    );
    println!("  query upstream  {:8.3} ms", ms(g.direct_query));
    println!(
        "  query resolver  {:8.3} ms (+{:.3} ms)",
        ms(g.resolver_query),
        ms(g.resolver_query.saturating_sub(g.direct_query))
    );
    println!(
        "  query resolver, a first answer {:8.3} ms (+{:.3} ms)",
        ms(g.resolver_first),
        ms(g.resolver_first.saturating_sub(g.direct_query))
    );
}
