//! Tier 5: many VMs whose guests share one address, side by side on the
//! default network, with real traffic.
//!
//! A guest restored from a snapshot keeps the snapshot's address and MAC,
//! so every clone of one template has the same. Each is attached with
//! `HostNetwork::attach_translated`: a namespace of its own whose inside
//! translates the guest's address to a host-unique one. Here the test
//! thread's namespace is the host (bridge `fhbr0`, gateway 172.30.0.1/16,
//! uplink `up0` to an "internet" namespace), and each guest is a
//! `TapGuest`: a namespace whose `eth0` exchanges frames with the very TAP
//! the library put in the VM's namespace, as Firecracker would.
//!
//! Needs root and nftables; elsewhere each test prints why it skipped.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::netns::{GuestNs, add_address, ifname, in_netns, link_up, nft_counter, nft_or_skip};
use common::tap_guest::{GuestConfig, TapGuest};
use common::udp::{ARRIVAL, assert_nothing_received, udp_in};
use firehost::VmId;
use firehost::net::Netlink;
use firehost::net::host::{
    GuestAddress, HostNetwork, NetError, NetSpec, NetworkConfig, Uplink, VmNet,
};
use firehost::net::ipam::MacAddr;
use firehost::net::nft::Nftables;
use firehost::net::tap::TapOwner;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const INTERNET_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The address and MAC every clone's guest keeps from the snapshot.
const GUEST: GuestAddress = GuestAddress {
    ip: Ipv4Addr::new(172, 30, 0, 2),
    mac: MacAddr::new([6, 0, 0xac, 0x1e, 0, 2]),
};
/// The host service (UDP) guests may reach on the gateway.
const HOST_SERVICE: u16 = 7000;
/// Where each guest stand-in listens for its peers.
const GUEST_PORT: u16 = 9000;

fn id(i: usize) -> VmId {
    VmId::new(format!("clone-{i}")).unwrap()
}

/// The host: its uplink to the internet, and a network on a state
/// directory of its own.
struct Host {
    internet: GuestNs,
    echo_stop: Arc<AtomicBool>,
    echo: Option<std::thread::JoinHandle<()>>,
    state: tempfile::TempDir,
    net: HostNetwork,
}

impl Host {
    async fn new(nl: &Netlink) -> Host {
        let internet = GuestNs::new();
        let uplink = ifname("up0");
        internet
            .plug(nl, &uplink, None, INTERNET_IP, 24, None)
            .await;
        add_address(nl, &uplink, Ipv4Addr::new(198, 51, 100, 1), 24).await;
        link_up(nl, &uplink, None).await;
        // An echo server on the internet: a reply proves the way back.
        let socket = udp_in(&internet, SocketAddrV4::new(INTERNET_IP, 7));
        let echo_stop = Arc::new(AtomicBool::new(false));
        let stop = echo_stop.clone();
        let echo = std::thread::spawn(move || {
            socket
                .set_read_timeout(Some(std::time::Duration::from_millis(50)))
                .unwrap();
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
        let state = tempfile::tempdir().unwrap();
        let net = HostNetwork::new(Self::config(), state.path()).unwrap();
        Host {
            internet,
            echo_stop,
            echo: Some(echo),
            state,
            net,
        }
    }

    fn config() -> NetworkConfig {
        NetworkConfig {
            uplink: Uplink::Interface(ifname("up0")),
            dns: Some(vec![]),
            host_services: vec![format!("{HOST_SERVICE}/udp").parse().unwrap()],
            ..NetworkConfig::default()
        }
    }

    fn netns_dir(&self) -> PathBuf {
        self.state.path().join("netns")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.echo_stop.store(true, Ordering::Relaxed);
        if let Some(echo) = self.echo.take() {
            let _ = echo.join();
        }
    }
}

/// Attaches clone `i` (in the peer group `pair` when `paired`) and a guest
/// behind its TAP.
async fn clone_with_guest(host: &Host, i: usize, paired: bool) -> (VmNet, TapGuest) {
    let spec = NetSpec {
        peer_groups: if paired {
            vec!["pair".parse().unwrap()]
        } else {
            vec![]
        },
        ..NetSpec::default()
    };
    let net = host
        .net
        .attach_translated(&id(i), &spec, GUEST, TapOwner::default())
        .await
        .unwrap();
    let netns = net.netns.clone().expect("a clone has a namespace");
    let guest = TapGuest::attach(
        Some(&netns.path),
        net.tap.as_str(),
        GuestConfig {
            ip: GUEST.ip,
            prefix_len: 16,
            mac: GUEST.mac,
            gateway: GATEWAY,
        },
    );
    (net, guest)
}

/// A named counter's packet count in the host's firehost tables.
fn host_counter(family: &str, name: &str) -> u64 {
    nft_counter(&Nftables::open().unwrap(), family, name)
}

/// The `spoofed` counter inside the VM namespace pinned at `netns`.
fn namespace_counter(netns: &Path) -> u64 {
    let ns = OwnedFd::from(std::fs::File::open(netns).unwrap());
    std::thread::spawn(move || {
        // SAFETY: `ns` is an open namespace file; only this thread moves.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0);
        nft_counter(&Nftables::open().unwrap(), "inet", "spoofed")
    })
    .join()
    .unwrap()
}

/// Waits until `read` passes `before`: a drop happened (an nftables
/// counter has no event to wait on).
fn wait_above(what: &str, before: u64, read: impl FnMut() -> u64) {
    let mut read = read;
    firehost_testkit::wait_until(what, ARRIVAL, || (read() > before).then_some(()));
}

/// Sends `payload` from `sender` to `to` until `receiver` gets that very
/// payload; returns where it came from.
fn deliver(
    sender: &UdpSocket,
    to: SocketAddrV4,
    receiver: &UdpSocket,
    payload: &[u8],
) -> SocketAddrV4 {
    receiver
        .set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    let deadline = std::time::Instant::now() + ARRIVAL;
    let mut buf = [0u8; 64];
    loop {
        sender.send_to(payload, to).unwrap();
        while let Ok((n, from)) = receiver.recv_from(&mut buf) {
            if &buf[..n] == payload {
                let std::net::SocketAddr::V4(from) = from else {
                    panic!("IPv6 source {from}");
                };
                return from;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{payload:?} never reached {to}"
        );
    }
}

#[test]
fn a_hundred_clones_of_one_address_each_reach_out_from_an_address_of_their_own() {
    const T: &str = "a_hundred_clones_of_one_address_each_reach_out_from_an_address_of_their_own";
    const CLONES: usize = 100;
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let host = Host::new(&nl).await;
        let mut clones = Vec::new();
        for i in 0..CLONES {
            clones.push(clone_with_guest(&host, i, i < 2).await);
        }
        let addresses: BTreeSet<Ipv4Addr> = clones.iter().map(|(net, _)| net.ip).collect();
        assert_eq!(
            addresses.len(),
            CLONES,
            "every clone has its own host address"
        );
        for (net, _) in &clones {
            assert_eq!(net.guest, Some(GUEST));
            assert_ne!(
                net.ip, GUEST.ip,
                "no clone's host address is the guests' own"
            );
            assert_eq!(net.guest_net().ip, GUEST.ip);
        }

        // Each guest reaches the host's service; the host sees each from
        // the clone's own address.
        let service = UdpSocket::bind(SocketAddrV4::new(GATEWAY, HOST_SERVICE)).unwrap();
        let mut seen = BTreeMap::new();
        let sockets: Vec<UdpSocket> = clones
            .iter()
            .map(|(_, guest)| udp_in(&guest.ns, SocketAddrV4::new(GUEST.ip, GUEST_PORT)))
            .collect();
        for (i, socket) in sockets.iter().enumerate() {
            let to = SocketAddrV4::new(GATEWAY, HOST_SERVICE);
            let from = deliver(socket, to, &service, format!("clone {i}").as_bytes());
            seen.insert(i, *from.ip());
        }
        for (i, (net, _)) in clones.iter().enumerate() {
            assert_eq!(seen[&i], net.ip, "clone {i} is seen by its host address");
        }

        // Each reaches the internet, and the replies find their way back.
        for (i, socket) in sockets.iter().enumerate() {
            let echo = SocketAddrV4::new(INTERNET_IP, 7);
            let from = deliver(socket, echo, socket, format!("echo {i}").as_bytes());
            assert_eq!(from, echo);
        }

        // Peers reach each other by their host addresses; others do not.
        let to_0 = SocketAddrV4::new(clones[0].0.ip, GUEST_PORT);
        let from = deliver(&sockets[1], to_0, &sockets[0], b"peer");
        assert_eq!(
            *from.ip(),
            clones[1].0.ip,
            "a peer is seen by its host address"
        );
        let before = host_counter("bridge", "isolated");
        sockets[2].send_to(b"stranger", to_0).unwrap();
        wait_above("isolation drop", before, || {
            host_counter("bridge", "isolated")
        });
        assert_nothing_received(&sockets[0]);

        // A published port reaches the clone's guest, from the internet,
        // with the client's address.
        let mapping = format!("8080:{GUEST_PORT}/udp").parse().unwrap();
        host.net.publish(&id(0), mapping).await.unwrap();
        let client = udp_in(&host.internet, SocketAddrV4::new(INTERNET_IP, 0));
        let uplink = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 8080);
        let from = deliver(&client, uplink, &sockets[0], b"published");
        assert_eq!(*from.ip(), INTERNET_IP, "the client is not NATed");
        host.net.unpublish(&id(0), mapping).await.unwrap();

        // A guest sending from another address is stopped in its own
        // namespace.
        clones[3].1.ns.run_async(|nl| async move {
            add_address(&nl, &ifname("eth0"), Ipv4Addr::new(172, 30, 0, 99), 16).await;
        });
        let liar = udp_in(
            &clones[3].1.ns,
            SocketAddrV4::new(Ipv4Addr::new(172, 30, 0, 99), 0),
        );
        let ns3 = clones[3].0.netns.clone().unwrap().path;
        let before = namespace_counter(&ns3);
        liar.send_to(b"lie", SocketAddrV4::new(GATEWAY, HOST_SERVICE))
            .unwrap();
        wait_above("spoofed drop", before, || namespace_counter(&ns3));
        assert_nothing_received(&service);

        // Removing one clone removes its namespace and port, and nothing
        // of the others.
        let (gone, gone_guest) = clones.remove(5);
        drop(gone_guest);
        host.net.detach(&id(5)).await.unwrap();
        let gone_ns = gone.netns.unwrap();
        assert!(!gone_ns.path.exists(), "the namespace is unpinned");
        assert!(
            nl.link(&gone_ns.host_port).await.unwrap().is_none(),
            "the veth is gone"
        );
        let ports = Nftables::open()
            .unwrap()
            .list("list ruleset")
            .unwrap()
            .to_string();
        assert!(
            !ports.contains(gone_ns.host_port.as_str()),
            "its elements are gone"
        );
        assert!(ports.contains(clones[5].0.netns.as_ref().unwrap().host_port.as_str()));
        let from = deliver(
            &sockets[6],
            SocketAddrV4::new(GATEWAY, HOST_SERVICE),
            &service,
            b"still here",
        );
        assert_eq!(*from.ip(), clones[5].0.ip);

        drop(sockets);
        for (i, (_, guest)) in clones.into_iter().enumerate() {
            drop(guest);
            let i = if i >= 5 { i + 1 } else { i };
            host.net.detach(&id(i)).await.unwrap();
        }
        let left: Vec<_> = common::netns::links(&nl)
            .await
            .into_iter()
            .filter(|(name, _)| name != "lo" && name != "up0")
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(std::fs::read_dir(host.netns_dir()).unwrap().count(), 0);
    });
}

#[test]
fn a_guest_address_that_cannot_be_translated_is_refused_and_changes_nothing() {
    const T: &str = "a_guest_address_that_cannot_be_translated_is_refused_and_changes_nothing";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let host = Host::new(&nl).await;
        let before = common::netns::links(&nl).await;
        let gateway = GuestAddress {
            ip: GATEWAY,
            ..GUEST
        };
        let refused = host
            .net
            .attach_translated(&id(0), &NetSpec::default(), gateway, TapOwner::default())
            .await;
        assert!(
            matches!(refused, Err(NetError::GuestAddress { ip, .. }) if ip == GATEWAY),
            "{refused:?}"
        );
        let same = NetSpec {
            ip: Some(GUEST.ip),
            ..NetSpec::default()
        };
        let refused = host
            .net
            .attach_translated(&id(0), &same, GUEST, TapOwner::default())
            .await;
        assert!(
            matches!(&refused, Err(e @ NetError::GuestAddress { .. }) if e.kind() == firehost::ErrorKind::InvalidInput),
            "{refused:?}"
        );
        for (ip, mac) in [
            (Ipv4Addr::new(127, 0, 0, 1), GUEST.mac),
            (Ipv4Addr::new(169, 254, 169, 254), GUEST.mac),
            (Ipv4Addr::new(224, 0, 0, 1), GUEST.mac),
            (Ipv4Addr::UNSPECIFIED, GUEST.mac),
            (GUEST.ip, MacAddr::new([1, 0, 0x5e, 0, 0, 1])),
        ] {
            let odd = GuestAddress { ip, mac };
            let refused = host
                .net
                .attach_translated(&id(0), &NetSpec::default(), odd, TapOwner::default())
                .await;
            assert!(
                matches!(refused, Err(NetError::GuestAddress { .. })),
                "{ip} {mac}: {refused:?}"
            );
        }
        assert_eq!(common::netns::links(&nl).await, before);
        assert!(host.net.attached().await.is_empty());
        assert!(
            !host.netns_dir().exists() || std::fs::read_dir(host.netns_dir()).unwrap().count() == 0
        );
    });
}

#[test]
fn a_restarted_network_keeps_live_clones_and_removes_dead_ones() {
    const T: &str = "a_restarted_network_keeps_live_clones_and_removes_dead_ones";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let host = Host::new(&nl).await;
        let (live, live_guest) = clone_with_guest(&host, 0, false).await;
        let (dead, _dead_guest) = clone_with_guest(&host, 1, false).await;

        // A new manager on the same state directory, with only clone 0's
        // record still live.
        let restarted = HostNetwork::new(Host::config(), host.state.path()).unwrap();
        restarted.reconcile(vec![(id(0), live.clone())], &[]).await;
        let dead_ns = dead.netns.unwrap();
        assert!(!dead_ns.path.exists(), "the dead clone's namespace is gone");
        assert!(nl.link(&dead_ns.host_port).await.unwrap().is_none());

        // The live one still reaches the host from its own address, and a
        // new clone does not get its address.
        let service = UdpSocket::bind(SocketAddrV4::new(GATEWAY, HOST_SERVICE)).unwrap();
        let socket = udp_in(&live_guest.ns, SocketAddrV4::new(GUEST.ip, 0));
        let from = deliver(
            &socket,
            SocketAddrV4::new(GATEWAY, HOST_SERVICE),
            &service,
            b"after",
        );
        assert_eq!(*from.ip(), live.ip);
        let next = restarted
            .attach_translated(&id(2), &NetSpec::default(), GUEST, TapOwner::default())
            .await
            .unwrap();
        assert_ne!(next.ip, live.ip);
        assert_ne!(next.ip, GUEST.ip);
        restarted.detach(&id(2)).await.unwrap();
        drop(live_guest);
        restarted.detach(&id(0)).await.unwrap();
        assert!(!live.netns.unwrap().path.exists());
    });
}
