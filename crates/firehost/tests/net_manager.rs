//! Tier 5: the manager's default network, against the real kernel.
//!
//! Each test runs a whole manager (and its VMMs, which inherit the
//! namespace) inside a network namespace of its own (see `common::netns`),
//! then reads the results back from the kernel: links over netlink, the
//! firehost tables through libnftables, the record on disk, and the VMM's
//! own view (`GET /vm/config`). With the fake VMM the TAP is attached the
//! way Firecracker attaches it (TUNSETIFF on the existing device).
//!
//! Needs root and nftables; elsewhere each test prints why it skipped.

mod common;

use firehost_testkit::fake_only;
use std::net::Ipv4Addr;

use common::TestHost;
use common::netns::{GuestNs, add_address, ifname, in_netns, link_up, nft_or_skip};
use firehost::manager::{Manager, ManagerConfig, SettingsPolicy, StopOptions, VmError};
use firehost::net::host::{NetError, NetSpec, Uplink, VmNet};
use firehost::net::ipam::{IpamError, MacAddr};
use firehost::net::nft::Nftables;
use firehost::net::tap::{TunInfo, tap_name_for_vm};
use firehost::net::{IfName, LinkState, Netlink};
use firehost::{VmId, VmSpec};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);

fn id(s: &str) -> VmId {
    VmId::new(s).unwrap()
}

fn net_spec() -> VmSpec {
    VmSpec {
        net: Some(NetSpec::default()),
        ..VmSpec::default()
    }
}

/// A host whose uplink `up0` leads to an "internet" namespace.
struct NetHost {
    host: TestHost,
    _internet: GuestNs,
}

impl NetHost {
    async fn new(nl: &Netlink) -> NetHost {
        let internet = GuestNs::new();
        let uplink = ifname("up0");
        internet
            .plug(nl, &uplink, None, Ipv4Addr::new(198, 51, 100, 2), 24, None)
            .await;
        add_address(nl, &uplink, Ipv4Addr::new(198, 51, 100, 1), 24).await;
        link_up(nl, &uplink, None).await;
        NetHost {
            host: TestHost::new(),
            _internet: internet,
        }
    }

    fn config(&self) -> ManagerConfig {
        let mut config = self.host.config();
        config.network.uplink = Uplink::Interface(ifname("up0"));
        config.network.dns = Some(vec![Ipv4Addr::new(198, 51, 100, 53)]);
        config
    }
}

/// The kernel's view of what the network left behind.
#[derive(Debug, PartialEq, Eq)]
struct Residue {
    bridge: bool,
    taps: Vec<String>,
    tables: bool,
}

async fn residue(nl: &Netlink) -> Residue {
    let links = common::netns::links(nl).await;
    let taps = links
        .iter()
        .filter(|(_, kind)| kind.as_deref() == Some("tun"))
        .map(|(name, _)| name.clone())
        .collect();
    let bridge = links.iter().any(|(name, _)| name == "fhbr0");
    let nft = Nftables::open().unwrap();
    let tables = nft
        .list("list tables")
        .unwrap()
        .to_string()
        .contains("firehost");
    Residue {
        bridge,
        taps,
        tables,
    }
}

fn nothing() -> Residue {
    Residue {
        bridge: false,
        taps: vec![],
        tables: false,
    }
}

/// The `net` a VM's info reports, which must be there.
fn net_of(info: &firehost::manager::VmInfo) -> VmNet {
    info.net.clone().expect("the VM has a network")
}

#[test]
fn a_vm_with_a_network_gets_a_tap_an_address_and_rules_and_destroy_removes_them() {
    const T: &str = "a_vm_with_a_network_gets_a_tap_an_address_and_rules_and_destroy_removes_them";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let h = NetHost::new(&nl).await;
        let manager = Manager::open(h.config()).await.unwrap();
        let vm = id("web-1");
        let mut spec = net_spec();
        spec.net.as_mut().unwrap().publish = vec!["8080:80".parse().unwrap()];
        let info = manager.run(&vm, spec).await.unwrap();
        let net = net_of(&info);
        assert_eq!(
            net.ip,
            Ipv4Addr::new(172, 30, 0, 2),
            "the lowest free address"
        );
        assert_eq!(net.gateway, GATEWAY);
        assert_eq!(net.prefix_len, 16);
        assert_eq!(net.mac, MacAddr::for_vm(&vm, 0));
        assert_eq!(net.tap, tap_name_for_vm(&vm, 0, 0));
        assert_eq!(net.dns, vec![Ipv4Addr::new(198, 51, 100, 53)]);

        // The TAP: persistent, owned by our uid, a port of the bridge, up.
        let link = nl.link(&net.tap).await.unwrap().expect("the TAP exists");
        let state = LinkState::from_message(&link);
        let bridge = nl.link(&ifname("fhbr0")).await.unwrap().unwrap();
        assert_eq!(state.controller, Some(bridge.header.index));
        assert!(state.up);
        let tun = TunInfo::from_message(&link).unwrap();
        // SAFETY: geteuid has no preconditions.
        assert_eq!(tun.owner, Some(unsafe { libc::geteuid() }));
        assert!(tun.persist);

        // The rules: the TAP and its binding are in the sets, the port in
        // the map.
        let nft = Nftables::open().unwrap();
        let bindings = nft
            .list("list set bridge firehost bindings")
            .unwrap()
            .to_string();
        assert!(
            bindings.contains(net.tap.as_str()) && bindings.contains(&net.mac.to_string()),
            "{bindings}"
        );
        let published = nft
            .list("list map ip firehost published")
            .unwrap()
            .to_string();
        assert!(
            published.contains("8080") && published.contains("172.30.0.2"),
            "{published}"
        );

        // What Firecracker was told.
        let api = manager
            .api(&vm)
            .await
            .unwrap()
            .expect("a live VM has an API");
        let config = api.get_export_vm_config().await.unwrap();
        let ifaces = config.network_interfaces.unwrap_or_default();
        assert_eq!(ifaces.len(), 1);
        assert_eq!(ifaces[0].iface_id, "eth0");
        assert_eq!(ifaces[0].host_dev_name, net.tap.as_str());
        assert_eq!(
            ifaces[0].guest_mac.as_deref(),
            Some(net.mac.to_string().as_str())
        );
        let boot_args = config.boot_source.unwrap().boot_args.unwrap();
        assert!(
            boot_args.ends_with("ip=172.30.0.2::172.30.0.1:255.255.0.0::eth0:off:198.51.100.53"),
            "{boot_args}"
        );

        // The record holds it too.
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(info.dir.join("record.json")).unwrap()).unwrap();
        assert_eq!(record["net"]["ip"], "172.30.0.2");
        assert_eq!(record["net"]["tap"], net.tap.as_str());

        assert_eq!(manager.network_attachments().await.len(), 1);
        manager.stop(&vm, StopOptions::default()).await.unwrap();
        manager.destroy(&vm).await.unwrap();
        assert_eq!(residue(&nl).await, nothing());
        assert!(manager.network_attachments().await.is_empty());
        assert!(!h.host.state_dir().join("network.json").exists());
    });
}

/// The peer pairs in the kernel's `peers` set, both directions.
fn kernel_peer_pairs() -> std::collections::BTreeSet<(String, String)> {
    let listed = Nftables::open()
        .unwrap()
        .list("list set bridge firehost peers")
        .unwrap();
    listed["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["set"]["elem"].as_array())
        .flatten()
        .filter_map(|elem| {
            let pair = elem["concat"].as_array()?;
            Some((
                pair.first()?.as_str()?.to_owned(),
                pair.get(1)?.as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Every ordered pair of distinct TAPs among `vms`.
fn all_pairs(vms: &[VmNet]) -> std::collections::BTreeSet<(String, String)> {
    let mut pairs = std::collections::BTreeSet::new();
    for a in vms {
        for b in vms.iter().filter(|b| b.tap != a.tap) {
            pairs.insert((a.tap.to_string(), b.tap.to_string()));
        }
    }
    pairs
}

/// VMs of one peer group attach and detach in parallel (nothing holds the
/// network for a whole attach): each still sees every other, and one that
/// leaves takes all its pairs with it, whatever the interleaving.
#[test]
fn vms_of_one_peer_group_attach_and_detach_in_parallel_and_always_see_each_other() {
    const T: &str = "vms_of_one_peer_group_attach_and_detach_in_parallel_and_always_see_each_other";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let h = NetHost::new(&nl).await;
        let manager = Manager::open(h.config()).await.unwrap();
        let grouped = || {
            let mut spec = net_spec();
            spec.net.as_mut().unwrap().peer_groups = vec!["g".parse().unwrap()];
            spec
        };
        let run = |name: String| {
            let (manager, spec) = (manager.clone(), grouped());
            async move { manager.run(&id(&name), spec).await.unwrap() }
        };
        let remove = |name: String| {
            let manager = manager.clone();
            async move {
                let vm = id(&name);
                manager.stop(&vm, StopOptions::default()).await.unwrap();
                manager.destroy(&vm).await.unwrap();
            }
        };

        let first: Vec<VmNet> =
            futures_util::future::join_all((0..6).map(|i| run(format!("p-{i}"))))
                .await
                .iter()
                .map(net_of)
                .collect();
        assert_eq!(kernel_peer_pairs(), all_pairs(&first));

        let leaving = futures_util::future::join_all((0..3).map(|i| remove(format!("p-{i}"))));
        let joining = futures_util::future::join_all((6..9).map(|i| run(format!("p-{i}"))));
        let ((), joined) = futures_util::future::join(
            async {
                leaving.await;
            },
            joining,
        )
        .await;
        let staying: Vec<VmNet> = first[3..]
            .iter()
            .cloned()
            .chain(joined.iter().map(net_of))
            .collect();
        assert_eq!(kernel_peer_pairs(), all_pairs(&staying));

        futures_util::future::join_all((3..9).map(|i| remove(format!("p-{i}")))).await;
        assert_eq!(residue(&nl).await, nothing());
    });
}

#[test]
fn addresses_are_unique_and_a_restarted_manager_keeps_them() {
    const T: &str = "addresses_are_unique_and_a_restarted_manager_keeps_them";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let h = NetHost::new(&nl).await;
        let manager = Manager::open(h.config()).await.unwrap();
        let a = net_of(&manager.create(&id("a"), net_spec()).await.unwrap());
        let b = net_of(&manager.create(&id("b"), net_spec()).await.unwrap());
        assert_ne!(a.ip, b.ip);
        assert_ne!(a.mac, b.mac);
        assert_ne!(a.tap, b.tap);
        drop(manager);

        let manager = Manager::open(h.config()).await.unwrap();
        let c = net_of(&manager.create(&id("c"), net_spec()).await.unwrap());
        assert!(c.ip != a.ip && c.ip != b.ip, "{c:?} reuses a live address");
        let attached: Vec<VmId> = manager
            .network_attachments()
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(attached, vec![id("a"), id("b"), id("c")]);
        // The restart rebuilt the tables with all three.
        let taps = Nftables::open()
            .unwrap()
            .list("list set bridge firehost taps")
            .unwrap()
            .to_string();
        for net in [&a, &b, &c] {
            assert!(taps.contains(net.tap.as_str()), "{taps}");
        }
        for vm in ["a", "b", "c"] {
            manager.destroy(&id(vm)).await.unwrap();
        }
        assert_eq!(residue(&nl).await, nothing());
    });
}

#[test]
fn a_restart_removes_the_taps_and_rules_of_dead_vms_and_nothing_else() {
    const T: &str = "a_restart_removes_the_taps_and_rules_of_dead_vms_and_nothing_else";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let h = NetHost::new(&nl).await;
        // Someone else's TAP, which must survive.
        let theirs = ifname("optap0");
        firehost::net::tap::create_persistent_tap(&theirs, Default::default()).unwrap();

        let manager = Manager::open(h.config()).await.unwrap();
        let dead = manager.create(&id("dead"), net_spec()).await.unwrap();
        let live = net_of(&manager.create(&id("live"), net_spec()).await.unwrap());
        let dead_net = net_of(&dead);
        drop(manager);
        // The VMM dies while no manager watches; its pidfd turns readable
        // once it has exited (it stays a zombie of this process, which no
        // longer holds the TAP).
        let pid = rustix::process::Pid::from_raw(dead.pid.unwrap()).unwrap();
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
        rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL).unwrap();
        let mut fds = [rustix::event::PollFd::new(
            &pidfd,
            rustix::event::PollFlags::IN,
        )];
        let deadline = rustix::event::Timespec {
            tv_sec: 5,
            tv_nsec: 0,
        };
        let ready = rustix::event::poll(&mut fds, Some(&deadline)).unwrap();
        assert_eq!(ready, 1, "VMM survived SIGKILL");

        let manager = Manager::open(h.config()).await.unwrap();
        assert!(
            nl.link(&dead_net.tap).await.unwrap().is_none(),
            "dead VM's TAP deleted"
        );
        assert!(
            nl.link(&live.tap).await.unwrap().is_some(),
            "live VM's TAP kept"
        );
        assert!(
            nl.link(&theirs).await.unwrap().is_some(),
            "a foreign TAP is never touched"
        );
        let bindings = Nftables::open()
            .unwrap()
            .list("list set bridge firehost bindings")
            .unwrap()
            .to_string();
        assert!(!bindings.contains(dead_net.tap.as_str()), "{bindings}");
        assert!(bindings.contains(live.tap.as_str()), "{bindings}");
        // The dead VM's address is free again; the live one's is not.
        let next = net_of(&manager.create(&id("next"), net_spec()).await.unwrap());
        assert_eq!(next.ip, dead_net.ip);

        for vm in ["dead", "live", "next"] {
            manager.destroy(&id(vm)).await.unwrap();
        }
        let left = residue(&nl).await;
        assert_eq!(left.taps, vec!["optap0".to_owned()]);
        assert!(!left.bridge && !left.tables, "{left:?}");
    });
}

#[test]
fn a_failed_create_leaves_no_network_behind() {
    const T: &str = "a_failed_create_leaves_no_network_behind";
    fake_only!("injects a failure of PUT /network-interfaces");
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let h = NetHost::new(&nl).await;
        // Every create step on the network's side: the default NIC, an
        // operator's NIC, the metadata service's configuration and data.
        let theirs = ifname("optap9");
        firehost::net::tap::create_persistent_tap(&theirs, Default::default()).unwrap();
        let spec = VmSpec {
            extra_nics: vec![firehost::spec::NicSpec {
                iface_id: "eth1".into(),
                tap: theirs.clone(),
                guest_mac: None,
                rx_limit: Default::default(),
                tx_limit: Default::default(),
            }],
            mmds: Some(firehost::mmds::MmdsSpec::default()),
            ..net_spec()
        };
        let steps = [
            (
                "PUT /network-interfaces/eth0",
                "attach the network interface",
            ),
            (
                "PUT /network-interfaces/eth1",
                "attach an extra network interface",
            ),
            ("PUT /mmds/config", "configure the metadata service"),
            ("PUT /mmds", "write the metadata"),
        ];
        for (endpoint, step) in steps {
            let mut config = h.config();
            config.vmm_env = vec![("FAKE_FC_FAIL".into(), endpoint.into())];
            let manager = Manager::open(config).await.unwrap();
            let err = manager
                .create(&id("doomed"), spec.clone())
                .await
                .unwrap_err();
            assert!(
                matches!(&err, VmError::Api { op, .. } if *op == step),
                "{endpoint}: {err:?}"
            );
            // Nothing of ours is left; the operator's TAP is.
            let left = residue(&nl).await;
            assert_eq!(
                (left.bridge, left.tables, left.taps),
                (false, false, vec!["optap9".to_owned()]),
                "{endpoint}"
            );
            assert!(manager.network_attachments().await.is_empty(), "{endpoint}");
            assert!(h.host.vm_dirs().is_empty(), "{endpoint}");
        }

        // The address went back to the pool.
        let manager = Manager::open(h.config()).await.unwrap();
        let net = net_of(&manager.create(&id("ok"), net_spec()).await.unwrap());
        assert_eq!(net.ip, Ipv4Addr::new(172, 30, 0, 2));
        manager.destroy(&id("ok")).await.unwrap();
    });
}

#[test]
fn refused_network_requests_are_typed_and_change_nothing() {
    const T: &str = "refused_network_requests_are_typed_and_change_nothing";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let h = NetHost::new(&nl).await;
        let mut config = h.config();
        // One guest address: .1 is the gateway, .2 the only guest, .3 broadcast.
        config.network.subnet = "172.30.0.0/30".parse().unwrap();
        let manager = Manager::open(config).await.unwrap();
        // Refused before the network exists: it is not even set up.
        let mut outside = net_spec();
        outside.net.as_mut().unwrap().ip = Some(Ipv4Addr::new(10, 1, 2, 3));
        let err = manager.create(&id("first"), outside).await.unwrap_err();
        assert!(matches!(err, VmError::Network { .. }), "{err:?}");
        assert_eq!(residue(&nl).await, nothing());

        let mut spec = net_spec();
        spec.net.as_mut().unwrap().publish = vec!["8080:80".parse().unwrap()];
        let first = net_of(&manager.create(&id("first"), spec).await.unwrap());
        let before = residue(&nl).await;

        let network_error = |e: VmError| match e {
            VmError::Network { source, .. } => *source,
            other => panic!("expected a network error, got {other:?}"),
        };
        let err = network_error(manager.create(&id("second"), net_spec()).await.unwrap_err());
        assert!(
            matches!(err, NetError::Ipam(IpamError::Exhausted { .. })),
            "{err:?}"
        );

        let mut taken = net_spec();
        taken.net.as_mut().unwrap().ip = Some(first.ip);
        let err = network_error(manager.create(&id("second"), taken).await.unwrap_err());
        assert!(
            matches!(err, NetError::Ipam(IpamError::IpTaken { .. })),
            "{err:?}"
        );

        let mut clash = net_spec();
        clash.net.as_mut().unwrap().publish = vec!["8080:81".parse().unwrap()];
        let err = network_error(manager.create(&id("second"), clash).await.unwrap_err());
        assert!(
            matches!(err, NetError::PortInUse { port: 8080, .. }),
            "{err:?}"
        );

        // Runtime publishing: to a VM with a network, and refused for a
        // clash with itself? No: publishing its own port again is a no-op.
        let info = manager
            .publish(&id("first"), "9000:90/udp".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(net_of(&info).published.len(), 2);
        let info = manager
            .unpublish(&id("first"), "9000:90/udp".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(net_of(&info).published.len(), 1);

        assert_eq!(residue(&nl).await, before, "refusals changed the host");
        assert!(!h.host.state_dir().join("vms/second").exists());
        manager.destroy(&id("first")).await.unwrap();
        assert_eq!(residue(&nl).await, nothing());
    });
}

#[test]
fn a_missing_uplink_is_a_clear_error_with_no_residue() {
    const T: &str = "a_missing_uplink_is_a_clear_error_with_no_residue";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let host = TestHost::new();
        for uplink in [Uplink::Auto, Uplink::Interface(ifname("nosuch0"))] {
            let mut config = host.config();
            config.network.uplink = uplink;
            // One state directory, other settings each time: explicit.
            config.settings = SettingsPolicy::Change;
            let manager = Manager::open(config).await.unwrap();
            let err = manager.create(&id("vm"), net_spec()).await.unwrap_err();
            let VmError::Network { source, .. } = err else {
                panic!("expected a network error, got {err:?}");
            };
            assert!(
                matches!(*source, NetError::UplinkMissing { .. }),
                "{source:?}"
            );
            assert!(source.to_string().contains("uplink"), "{source}");
            assert_eq!(residue(&nl).await, nothing());
            assert!(!host.state_dir().join("network.json").exists());
        }

        // Uplink::None: guests without a way out, and no NAT rule.
        let mut config = host.config();
        config.network.uplink = Uplink::None;
        config.settings = SettingsPolicy::Change;
        let manager = Manager::open(config).await.unwrap();
        manager.create(&id("vm"), net_spec()).await.unwrap();
        let ruleset = Nftables::open()
            .unwrap()
            .list("list ruleset")
            .unwrap()
            .to_string();
        assert!(!ruleset.contains("masquerade"), "{ruleset}");
        manager.destroy(&id("vm")).await.unwrap();
    });
}

#[test]
fn a_tap_name_taken_by_another_device_moves_to_the_next_name() {
    const T: &str = "a_tap_name_taken_by_another_device_moves_to_the_next_name";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let h = NetHost::new(&nl).await;
        let vm = id("clash");
        let squatter: IfName = tap_name_for_vm(&vm, 0, 0);
        firehost::net::tap::create_persistent_tap(&squatter, Default::default()).unwrap();
        let manager = Manager::open(h.config()).await.unwrap();
        let net = net_of(&manager.create(&vm, net_spec()).await.unwrap());
        assert_eq!(net.tap, tap_name_for_vm(&vm, 0, 1));
        manager.destroy(&vm).await.unwrap();
        assert!(
            nl.link(&squatter).await.unwrap().is_some(),
            "the other device is left alone"
        );
    });
}

#[test]
fn a_hundred_clones_of_a_networked_snapshot_run_at_once_and_go_without_a_trace() {
    const T: &str = "a_hundred_clones_of_a_networked_snapshot_run_at_once_and_go_without_a_trace";
    const CLONES: usize = 100;
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let h = NetHost::new(&nl).await;
        let manager = Manager::open(h.config()).await.unwrap();
        let source = id("tpl");
        let src = net_of(&manager.run(&source, net_spec()).await.unwrap());
        let snap: firehost::snapshot::SnapshotName = "tpl-snap".parse().unwrap();
        manager
            .snapshot(&source, &snap, Default::default())
            .await
            .unwrap();
        let clones: Vec<(VmId, firehost::manager::RestoreOptions)> = (0..CLONES)
            .map(|i| (id(&format!("c-{i}")), Default::default()))
            .collect();
        let made = manager.clone_many(&snap, clones).await.unwrap();
        assert_eq!(made.len(), CLONES);
        let mut hosts: Vec<Ipv4Addr> = made.iter().map(|vm| net_of(vm).ip).collect();
        hosts.push(src.ip);
        hosts.sort();
        hosts.dedup();
        assert_eq!(
            hosts.len(),
            CLONES + 1,
            "every VM has an address of its own"
        );
        assert!(
            made.iter()
                .all(|vm| net_of(vm).guest.map(|g| g.ip) == Some(src.ip))
        );
        assert_eq!(manager.network_attachments().await.len(), CLONES + 1);

        // All at once, as a service reclaims sandboxes.
        let gone = made.iter().map(|vm| &vm.id).chain([&source]).map(|vm| {
            let manager = manager.clone();
            async move {
                manager.stop(vm, StopOptions::default()).await.unwrap();
                manager.destroy(vm).await.unwrap();
            }
        });
        futures_util::future::join_all(gone).await;
        assert_eq!(residue(&nl).await, nothing());
        let veths = common::netns::links(&nl)
            .await
            .into_iter()
            .filter(|(name, kind)| kind.as_deref() == Some("veth") && name != "up0")
            .count();
        assert_eq!(veths, 0, "only the uplink is left");
        let pinned = std::fs::read_dir(h.host.state_dir().join("netns"))
            .unwrap()
            .count();
        assert_eq!(pinned, 0, "no namespace is left pinned");
    });
}

/// Asserts the VMM of `info` runs in the namespace pinned at `netns`.
fn assert_vmm_in(info: &firehost::manager::VmInfo, netns: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let pid = info.pid.expect("a live VM has a VMM");
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
    let pinned = std::fs::metadata(netns).unwrap();
    assert_eq!(
        theirs.ino(),
        pinned.ino(),
        "the VMM runs in the VM's namespace"
    );
}

#[test]
fn clones_of_a_networked_snapshot_run_beside_its_source_each_translated() {
    const T: &str = "clones_of_a_networked_snapshot_run_beside_its_source_each_translated";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let h = NetHost::new(&nl).await;
        let manager = Manager::open(h.config()).await.unwrap();
        let source = id("source");
        let src = net_of(&manager.run(&source, net_spec()).await.unwrap());
        let snap: firehost::snapshot::SnapshotName = "snap".parse().unwrap();
        let info = manager
            .snapshot(&source, &snap, Default::default())
            .await
            .unwrap();
        let layout = &info.manifest.network;
        assert_eq!(layout.len(), 1);
        assert_eq!(layout[0].guest_ip, Some(src.ip));
        assert_eq!(layout[0].host_dev_name, src.tap.as_str());

        // Three clones while the source runs: each keeps the guest's
        // address inside a namespace of its own, under a host address of
        // its own.
        let mut clones = Vec::new();
        for i in 0..3 {
            let clone = id(&format!("clone-{i}"));
            let info = manager
                .restore(&clone, &snap, Default::default())
                .await
                .unwrap();
            let net = net_of(&info);
            let own = firehost::net::host::GuestAddress {
                ip: src.ip,
                mac: src.mac,
            };
            assert_eq!(net.guest, Some(own), "the guest keeps both");
            assert_ne!(net.ip, src.ip);
            let netns = net.netns.clone().expect("a namespace of its own");
            assert_vmm_in(&info, &netns.path);
            let inside = links_inside(&netns.path).await;
            assert!(inside.contains(&net.tap.to_string()), "{inside:?}");
            assert!(
                nl.link(&net.tap).await.unwrap().is_none(),
                "not on the host"
            );
            assert!(nl.link(&netns.host_port).await.unwrap().is_some());
            let api = manager
                .api(&clone)
                .await
                .unwrap()
                .expect("a live VM has an API");
            let config = api.get_export_vm_config().await.unwrap();
            if let Some(ifaces) = config.network_interfaces.filter(|i| !i.is_empty()) {
                assert_eq!(ifaces[0].host_dev_name, net.tap.as_str());
            }
            clones.push((clone, net));
        }
        let mut hosts: Vec<Ipv4Addr> = clones.iter().map(|(_, n)| n.ip).collect();
        hosts.push(src.ip);
        hosts.sort();
        hosts.dedup();
        assert_eq!(hosts.len(), 4, "every VM has its own host address");
        let record: serde_json::Value = serde_json::from_slice(
            &std::fs::read(h.host.state_dir().join("vms/clone-0/record.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(record["net"]["guest"]["ip"], src.ip.to_string());

        // Keeping the snapshot's own address needs it free.
        let kept = id("kept");
        let keep = || firehost::manager::RestoreOptions {
            keep_address: true,
            ..Default::default()
        };
        let err = manager.restore(&kept, &snap, keep()).await.unwrap_err();
        let VmError::Network { source: why, .. } = err else {
            panic!("expected a network error, got {err:?}");
        };
        assert!(
            matches!(*why, NetError::Ipam(IpamError::IpTaken { .. })),
            "{why:?}"
        );
        assert!(!h.host.state_dir().join("vms/kept").exists());

        // Removing a clone removes its namespace and veth, nothing else.
        let (gone, gone_net) = clones.remove(1);
        manager.stop(&gone, StopOptions::default()).await.unwrap();
        manager.destroy(&gone).await.unwrap();
        let gone_ns = gone_net.netns.unwrap();
        assert!(!gone_ns.path.exists());
        assert!(nl.link(&gone_ns.host_port).await.unwrap().is_none());
        for (_, net) in &clones {
            let ns = net.netns.as_ref().unwrap();
            assert!(ns.path.exists());
            assert!(nl.link(&ns.host_port).await.unwrap().is_some());
        }

        manager.stop(&source, StopOptions::default()).await.unwrap();
        manager.destroy(&source).await.unwrap();
        let restored = manager.restore(&kept, &snap, keep()).await.unwrap();
        let net = net_of(&restored);
        assert_eq!((net.ip, net.mac, net.guest), (src.ip, src.mac, None));
        assert!(
            nl.link(&net.tap).await.unwrap().is_some(),
            "on the host's bridge"
        );
        for vm in clones.iter().map(|(vm, _)| vm).chain([&kept]) {
            manager.stop(vm, StopOptions::default()).await.unwrap();
            manager.destroy(vm).await.unwrap();
        }
        assert_eq!(residue(&nl).await, nothing());
        let left = std::fs::read_dir(h.host.state_dir().join("netns"))
            .unwrap()
            .count();
        assert_eq!(left, 0, "no namespace is left pinned");
    });
}

#[test]
fn the_manager_passes_the_network_conformance_suite() {
    const T: &str = "the_manager_passes_the_network_conformance_suite";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let h = NetHost::new(&nl).await;
        let manager = Manager::open(h.config()).await.unwrap();
        common::net_conformance::net_conformance(&manager).await;
        assert_eq!(residue(&nl).await, nothing());
    });
}

#[test]
fn extra_nics_on_operator_taps_reach_firecracker_and_are_left_alone() {
    const T: &str = "extra_nics_on_operator_taps_reach_firecracker_and_are_left_alone";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let h = NetHost::new(&nl).await;
        let theirs = ifname("optap1");
        firehost::net::tap::create_persistent_tap(&theirs, Default::default()).unwrap();
        let manager = Manager::open(h.config()).await.unwrap();
        let vm = id("multi");
        let mac: MacAddr = "06:00:00:00:00:42".parse().unwrap();
        let spec = VmSpec {
            extra_nics: vec![firehost::spec::NicSpec {
                iface_id: "eth1".into(),
                tap: theirs.clone(),
                guest_mac: Some(mac),
                rx_limit: Default::default(),
                tx_limit: Default::default(),
            }],
            ..net_spec()
        };
        let info = manager.run(&vm, spec).await.unwrap();
        let api = manager
            .api(&vm)
            .await
            .unwrap()
            .expect("a live VM has an API");
        let ifaces = api
            .get_export_vm_config()
            .await
            .unwrap()
            .network_interfaces
            .unwrap_or_default();
        // Firecracker lists them in no particular order.
        let mut ifaces = ifaces;
        ifaces.sort_by(|a, b| a.iface_id.cmp(&b.iface_id));
        let ids: Vec<&str> = ifaces.iter().map(|i| i.iface_id.as_str()).collect();
        assert_eq!(ids, vec!["eth0", "eth1"]);
        assert_eq!(ifaces[1].host_dev_name, "optap1");
        assert_eq!(ifaces[1].guest_mac.as_deref(), Some("06:00:00:00:00:42"));
        // The operator's TAP joins no bridge and gets no rules.
        let state = LinkState::from_message(&nl.link(&theirs).await.unwrap().unwrap());
        assert_eq!(state.controller, None);
        let taps = Nftables::open()
            .unwrap()
            .list("list set bridge firehost taps")
            .unwrap()
            .to_string();
        assert!(!taps.contains("optap1"), "{taps}");

        let snap: firehost::snapshot::SnapshotName = "multi-snap".parse().unwrap();
        let taken = manager
            .snapshot(&vm, &snap, Default::default())
            .await
            .unwrap();
        let layout: Vec<(&str, Option<Ipv4Addr>)> = taken
            .manifest
            .network
            .iter()
            .map(|n| (n.host_dev_name.as_str(), n.guest_ip))
            .collect();
        assert_eq!(
            layout,
            vec![
                (net_of(&info).tap.as_str(), Some(net_of(&info).ip)),
                ("optap1", None)
            ]
        );
        manager.stop(&vm, StopOptions::default()).await.unwrap();
        manager.destroy(&vm).await.unwrap();
        assert!(
            nl.link(&theirs).await.unwrap().is_some(),
            "the operator's TAP stays"
        );
    });
}

#[test]
fn metadata_carries_the_vms_identity_and_is_refreshed_on_restore() {
    const T: &str = "metadata_carries_the_vms_identity_and_is_refreshed_on_restore";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let h = NetHost::new(&nl).await;
        let manager = Manager::open(h.config()).await.unwrap();
        let source = id("meta");
        let spec = VmSpec {
            mmds: Some(firehost::mmds::MmdsSpec {
                data: serde_json::json!({"job": {"id": 42}}),
                ..Default::default()
            }),
            ..net_spec()
        };
        let info = manager.run(&source, spec).await.unwrap();
        let api = manager
            .api(&source)
            .await
            .unwrap()
            .expect("a live VM has an API");
        let data = api.get_mmds().await.unwrap();
        assert_eq!(data["job"]["id"], 42);
        assert_eq!(data["firehost"]["vm"], "meta");
        assert_eq!(data["firehost"]["ip"], net_of(&info).ip.to_string());
        assert!(data["firehost"]["restored_from"].is_null());

        let snap: firehost::snapshot::SnapshotName = "meta-snap".parse().unwrap();
        manager
            .snapshot(&source, &snap, Default::default())
            .await
            .unwrap();
        manager.stop(&source, StopOptions::default()).await.unwrap();
        manager.destroy(&source).await.unwrap();

        let clone = id("meta-clone");
        let options = firehost::manager::RestoreOptions {
            mmds: Some(serde_json::json!({"job": {"id": 43}})),
            ..Default::default()
        };
        let restored = manager.restore(&clone, &snap, options).await.unwrap();
        assert!(restored.state.is_live());
        let api = manager
            .api(&clone)
            .await
            .unwrap()
            .expect("a live VM has an API");
        let data = api.get_mmds().await.unwrap();
        assert_eq!(data["job"]["id"], 43, "this clone's own data");
        assert_eq!(data["firehost"]["vm"], "meta-clone");
        assert_eq!(data["firehost"]["restored_from"], "meta-snap");
        let state = api.describe_instance().await.unwrap().state;
        assert_eq!(state, firehost::api::models::InstanceState::Running);
        assert_eq!(
            data["firehost"]["host_ip"],
            net_of(&restored).ip.to_string()
        );
        assert_ne!(
            data["firehost"]["ip"], data["firehost"]["host_ip"],
            "translated"
        );

        // A rename writes the new name into the identity; the data stays.
        let claimed = id("meta-claimed");
        manager.rename(&clone, &claimed).await.unwrap();
        let data = api.get_mmds().await.unwrap();
        assert_eq!(data["firehost"]["vm"], "meta-claimed");
        assert_eq!(data["job"]["id"], 43);
        assert_eq!(data["firehost"]["restored_from"], "meta-snap");
        let listed: Vec<VmId> = manager
            .network_attachments()
            .await
            .into_iter()
            .map(|(vm, _)| vm)
            .collect();
        assert_eq!(
            listed,
            std::slice::from_ref(&claimed),
            "the network lists it by its name"
        );
        manager
            .stop(&claimed, StopOptions::default())
            .await
            .unwrap();
        manager.destroy(&claimed).await.unwrap();
        assert_eq!(residue(&nl).await, nothing());
    });
}

/// The real jailer, when this run has it and a real (static) Firecracker.
fn real_jailer(test: &str) -> Option<std::path::PathBuf> {
    let jailer = std::env::var_os("FIREHOST_JAILER").map(std::path::PathBuf::from);
    let found = jailer.filter(|_| !common::backend().is_fake());
    if found.is_none() {
        common::skip(
            test,
            "needs FIREHOST_FIRECRACKER (static) and FIREHOST_JAILER",
        );
    }
    found
}

impl NetHost {
    /// The configuration, jailing with `jailer` under a chroot base of its
    /// own (returned) and uids from `first_uid`.
    fn jail_config(
        &self,
        jailer: std::path::PathBuf,
        first_uid: u32,
    ) -> (ManagerConfig, std::path::PathBuf) {
        let base = self.host.dir.path().join("jails");
        std::fs::create_dir(&base).unwrap();
        let mut config = self.config();
        config.jail = Some(firehost::jail::JailConfig {
            jailer,
            chroot_base: base.clone(),
            uid_range: first_uid..first_uid + 10,
            ..firehost::jail::JailConfig::default()
        });
        (config, base)
    }
}

/// A networked spec in a jail with the configuration's defaults.
fn jailed_net_spec() -> VmSpec {
    VmSpec {
        jail: Some(firehost::jail::JailSpec::default()),
        ..net_spec()
    }
}

/// Asserts no jail is left under the chroot base `base`.
fn assert_no_jail_left(base: &std::path::Path) {
    let left: Vec<_> = std::fs::read_dir(base.join("firecracker"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_jailed_vm_gets_a_tap_its_own_uid_owns() {
    const T: &str = "a_jailed_vm_gets_a_tap_its_own_uid_owns";
    let Some(jailer) = real_jailer(T) else {
        return;
    };
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let h = NetHost::new(&nl).await;
        let (config, base) = h.jail_config(jailer, 930_000);
        let manager = Manager::open(config).await.unwrap();
        let vm = id("jailed-net");
        let info = manager.run(&vm, jailed_net_spec()).await.unwrap();
        let jail = info.jail.clone().expect("jailed");
        let net = net_of(&info);
        // The jailed Firecracker (its uid, not root) could open the TAP:
        // the VMM has it, and the TAP belongs to that uid.
        let link = nl.link(&net.tap).await.unwrap().expect("the TAP exists");
        let tun = TunInfo::from_message(&link).unwrap();
        assert_eq!(tun.owner, Some(jail.uid));
        let api = manager.api(&vm).await.unwrap().unwrap();
        let config = api.get_export_vm_config().await.unwrap();
        let ifaces = config.network_interfaces.unwrap_or_default();
        assert_eq!(ifaces[0].host_dev_name, net.tap.as_str());
        manager.stop(&vm, StopOptions::default()).await.unwrap();
        manager.destroy(&vm).await.unwrap();
        assert_eq!(residue(&nl).await, nothing());
        assert_no_jail_left(&base);
    });
}

#[test]
fn jailed_clones_run_beside_their_source_each_in_its_own_namespace() {
    const T: &str = "jailed_clones_run_beside_their_source_each_in_its_own_namespace";
    let Some(jailer) = real_jailer(T) else {
        return;
    };
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let h = NetHost::new(&nl).await;
        let (config, base) = h.jail_config(jailer, 930_040);
        let manager = Manager::open(config).await.unwrap();
        let source = id("jailed-src");
        let src = net_of(&manager.run(&source, jailed_net_spec()).await.unwrap());
        let snap: firehost::snapshot::SnapshotName = "jsnap".parse().unwrap();
        manager
            .snapshot(&source, &snap, Default::default())
            .await
            .unwrap();
        let mut clones = Vec::new();
        for i in 0..2 {
            let clone = id(&format!("jclone-{i}"));
            let info = manager
                .restore(&clone, &snap, Default::default())
                .await
                .unwrap();
            let net = net_of(&info);
            assert_eq!(net.guest.map(|g| g.ip), Some(src.ip));
            assert_ne!(net.ip, src.ip);
            let netns = net.netns.clone().expect("a namespace of its own");
            assert_vmm_in(&info, &netns.path);
            assert!(
                links_inside(&netns.path)
                    .await
                    .contains(&net.tap.to_string())
            );
            clones.push(clone);
        }
        for vm in clones.iter().chain([&source]) {
            manager.stop(vm, StopOptions::default()).await.unwrap();
            manager.destroy(vm).await.unwrap();
        }
        assert_eq!(residue(&nl).await, nothing());
        assert_no_jail_left(&base);
    });
}

/// The names of the links inside the namespace pinned at `path`.
async fn links_inside(path: &std::path::Path) -> Vec<String> {
    let ns = firehost::net::netns::open(path).unwrap();
    let mut names = firehost::net::netns::links_in(&ns).await.unwrap();
    names.sort();
    names
}

#[test]
fn a_namespaced_vm_has_its_tap_in_its_own_namespace_bridged_through_a_veth() {
    const T: &str = "a_namespaced_vm_has_its_tap_in_its_own_namespace_bridged_through_a_veth";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let h = NetHost::new(&nl).await;
        let state = h.host.state_dir();
        std::fs::create_dir_all(&state).unwrap();
        let network = firehost::net::host::HostNetwork::new(h.config().network, &state).unwrap();
        let vm = id("ns-vm");
        let spec = NetSpec {
            netns: true,
            ..NetSpec::default()
        };
        let owner = firehost::net::tap::TapOwner {
            uid: Some(4242),
            gid: Some(4242),
        };
        let net = network.attach_owned(&vm, &spec, owner).await.unwrap();
        let netns = net.netns.clone().expect("a namespace of its own");
        assert!(netns.path.starts_with(&state));

        // Inside: the TAP (still owned by the VM's uid), the veth's inner
        // end and a bridge holding both, all up.
        let fp = format!("fp{}", &net.tap.as_str()[2..]);
        assert_eq!(links_inside(&netns.path).await, {
            let mut want = vec![
                net.tap.to_string(),
                fp.clone(),
                "br0".to_owned(),
                "lo".to_owned(),
            ];
            want.sort();
            want
        });
        let ns = firehost::net::netns::open(&netns.path).unwrap();
        let inside = firehost::net::netns::netlink_in(&ns).await.unwrap();
        let br0 = inside.link(&ifname("br0")).await.unwrap().unwrap();
        for port in [net.tap.clone(), ifname(&fp)] {
            let link = inside.link(&port).await.unwrap().unwrap();
            let state = LinkState::from_message(&link);
            assert_eq!(state.controller, Some(br0.header.index), "{port}");
            assert!(state.up, "{port}");
        }
        let tap = inside.link(&net.tap).await.unwrap().unwrap();
        assert_eq!(TunInfo::from_message(&tap).unwrap().owner, Some(4242));

        // Outside: no TAP, the veth's host end on the host bridge, and the
        // firewall binding the guest's MAC and address to that port.
        assert!(nl.link(&net.tap).await.unwrap().is_none());
        let host_end = nl.link(&netns.host_port).await.unwrap().unwrap();
        let bridge = nl.link(&ifname("fhbr0")).await.unwrap().unwrap();
        let host_state = LinkState::from_message(&host_end);
        assert_eq!(host_state.controller, Some(bridge.header.index));
        assert!(host_state.up);
        assert_eq!(net.host_port(), &netns.host_port);
        let bindings = Nftables::open()
            .unwrap()
            .list("list set bridge firehost bindings")
            .unwrap()
            .to_string();
        assert!(
            bindings.contains(netns.host_port.as_str()) && !bindings.contains(net.tap.as_str()),
            "{bindings}"
        );

        // A restarted network keeps a live VM's namespace and removes a
        // dead one's.
        let again = firehost::net::host::HostNetwork::new(h.config().network, &state).unwrap();
        again.reconcile(vec![(vm.clone(), net.clone())], &[]).await;
        assert!(netns.path.exists());
        assert!(nl.link(&netns.host_port).await.unwrap().is_some());
        again.reconcile(vec![], &[]).await;
        assert!(!netns.path.exists());
        assert!(nl.link(&netns.host_port).await.unwrap().is_none());
        assert_eq!(residue(&nl).await, nothing());

        // And detach takes everything away.
        let network = firehost::net::host::HostNetwork::new(h.config().network, &state).unwrap();
        let net = network.attach_owned(&vm, &spec, owner).await.unwrap();
        let path = net.netns.clone().unwrap().path;
        network.detach(&vm).await.unwrap();
        assert!(!path.exists());
        assert_eq!(residue(&nl).await, nothing());
        assert_eq!(
            std::fs::read_dir(state.join("netns")).unwrap().count(),
            0,
            "namespace files left"
        );
    });
}

/// `NetSpec::netns` needs no jailer: an unjailed Firecracker is started
/// inside the VM's namespace, and opens its TAP there.
#[test]
fn an_unjailed_vm_in_its_own_namespace_runs_there_and_leaves_nothing() {
    const T: &str = "an_unjailed_vm_in_its_own_namespace_runs_there_and_leaves_nothing";
    in_netns(T, |nl| async move {
        use std::os::unix::fs::MetadataExt;
        if !nft_or_skip(T) {
            return;
        }
        let h = NetHost::new(&nl).await;
        let manager = Manager::open(h.config()).await.unwrap();
        let vm = id("ns-plain");
        let mut spec = net_spec();
        spec.net.as_mut().unwrap().netns = true;
        let info = manager.run(&vm, spec).await.unwrap();
        assert!(info.jail.is_none());
        let net = net_of(&info);
        let netns = net.netns.clone().expect("a namespace of its own");
        let pid = info.pid.unwrap();
        let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
        let pinned = std::fs::metadata(&netns.path).unwrap();
        assert_eq!(
            theirs.ino(),
            pinned.ino(),
            "the VMM runs in the VM's namespace"
        );
        let ours = std::fs::metadata("/proc/thread-self/ns/net").unwrap();
        assert_ne!(ours.ino(), pinned.ino());
        let api = manager.api(&vm).await.unwrap().unwrap();
        let config = api.get_export_vm_config().await.unwrap();
        let ifaces = config.network_interfaces.unwrap_or_default();
        assert_eq!(ifaces[0].host_dev_name, net.tap.as_str());
        assert!(
            nl.link(&net.tap).await.unwrap().is_none(),
            "not on the host"
        );

        manager.stop(&vm, StopOptions::default()).await.unwrap();
        manager.destroy(&vm).await.unwrap();
        assert_eq!(residue(&nl).await, nothing());
        assert!(!netns.path.exists());
        assert!(h.host.vm_dirs().is_empty());
    });
}

#[test]
fn a_jailed_vm_in_its_own_namespace_runs_there_and_leaves_nothing() {
    const T: &str = "a_jailed_vm_in_its_own_namespace_runs_there_and_leaves_nothing";
    let Some(jailer) = real_jailer(T) else {
        return;
    };
    in_netns(T, |nl| async move {
        use std::os::unix::fs::MetadataExt;
        if !nft_or_skip(T) {
            return;
        }
        let h = NetHost::new(&nl).await;
        let (config, _base) = h.jail_config(jailer, 930_020);
        let manager = Manager::open(config).await.unwrap();
        let vm = id("ns-jailed");
        let mut spec = jailed_net_spec();
        spec.net.as_mut().unwrap().netns = true;
        let info = manager.run(&vm, spec).await.unwrap();
        let net = net_of(&info);
        let netns = net.netns.clone().expect("a namespace of its own");
        // Firecracker runs in the VM's namespace, and has its TAP there.
        let pid = info.pid.unwrap();
        let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
        let pinned = std::fs::metadata(&netns.path).unwrap();
        assert_eq!(theirs.ino(), pinned.ino());
        let api = manager.api(&vm).await.unwrap().unwrap();
        let config = api.get_export_vm_config().await.unwrap();
        let ifaces = config.network_interfaces.unwrap_or_default();
        assert_eq!(ifaces[0].host_dev_name, net.tap.as_str());
        let tap = {
            let ns = firehost::net::netns::open(&netns.path).unwrap();
            let inside = firehost::net::netns::netlink_in(&ns).await.unwrap();
            inside.link(&net.tap).await.unwrap().unwrap()
        };
        assert_eq!(
            TunInfo::from_message(&tap).unwrap().owner,
            Some(info.jail.unwrap().uid)
        );
        manager.stop(&vm, StopOptions::default()).await.unwrap();
        manager.destroy(&vm).await.unwrap();
        assert_eq!(residue(&nl).await, nothing());
        assert!(!netns.path.exists());
    });
}

#[test]
fn nic_limits_reach_firecracker_change_at_runtime_and_follow_clones() {
    const T: &str = "nic_limits_reach_firecracker_change_at_runtime_and_follow_clones";
    in_netns(T, |nl| async move {
        use firehost::api::models::{RateLimiter, TokenBucket};
        use firehost::manager::{NicLimitUpdate, RestoreOptions, VmUpdate};
        use firehost::vocab::{Bucket, BucketChange, LimitChange, RateLimit};
        if !nft_or_skip(T) {
            return;
        }
        let h = NetHost::new(&nl).await;
        let theirs = ifname("optap2");
        firehost::net::tap::create_persistent_tap(&theirs, Default::default()).unwrap();
        let manager = Manager::open(h.config()).await.unwrap();
        let ten_mbit = Bucket::per_second(1_250_000);
        let spec = VmSpec {
            net: Some(NetSpec {
                rx_limit: RateLimit {
                    bandwidth: Some(ten_mbit),
                    ops: None,
                },
                tx_limit: RateLimit {
                    bandwidth: None,
                    ops: Some(Bucket::per_second(1000)),
                },
                ..NetSpec::default()
            }),
            extra_nics: vec![firehost::spec::NicSpec {
                iface_id: "eth1".into(),
                tap: theirs.clone(),
                guest_mac: None,
                rx_limit: Default::default(),
                tx_limit: RateLimit {
                    bandwidth: Some(ten_mbit),
                    ops: None,
                },
            }],
            ..VmSpec::default()
        };
        let vm = id("limited");
        manager.run(&vm, spec).await.unwrap();
        let limits = |manager: Manager, vm: VmId| async move {
            let api = manager.api(&vm).await.unwrap().unwrap();
            let mut ifaces = api
                .get_export_vm_config()
                .await
                .unwrap()
                .network_interfaces
                .unwrap_or_default();
            ifaces.sort_by(|a, b| a.iface_id.cmp(&b.iface_id));
            ifaces
                .into_iter()
                .map(|i| (i.iface_id, i.rx_rate_limiter, i.tx_rate_limiter))
                .collect::<Vec<_>>()
        };
        let bw = |size| {
            Some(RateLimiter {
                bandwidth: Some(TokenBucket::new(size, 1000)),
                ops: None,
            })
        };
        let ops = Some(RateLimiter {
            bandwidth: None,
            ops: Some(TokenBucket::new(1000, 1000)),
        });
        assert_eq!(
            limits(manager.clone(), vm.clone()).await,
            vec![
                ("eth0".to_owned(), bw(1_250_000), ops),
                ("eth1".to_owned(), None, bw(1_250_000)),
            ]
        );

        // Lift eth0's receive limit and double eth1's send limit.
        let update = VmUpdate {
            nics: vec![
                NicLimitUpdate {
                    iface_id: "eth0".into(),
                    rx: LimitChange {
                        bandwidth: BucketChange::Remove,
                        ..LimitChange::default()
                    },
                    ..NicLimitUpdate::default()
                },
                NicLimitUpdate {
                    iface_id: "eth1".into(),
                    tx: LimitChange {
                        bandwidth: BucketChange::Set(Bucket::per_second(2_500_000)),
                        ..LimitChange::default()
                    },
                    ..NicLimitUpdate::default()
                },
            ],
            ..VmUpdate::default()
        };
        let info = manager.update(&vm, &update).await.unwrap();
        let net = info.spec.net.as_ref().unwrap();
        assert!(net.rx_limit.is_unlimited());
        assert_eq!(
            info.spec.extra_nics[0].tx_limit.bandwidth,
            Some(Bucket::per_second(2_500_000))
        );
        assert_eq!(
            limits(manager.clone(), vm.clone()).await,
            vec![
                ("eth0".to_owned(), None, ops),
                ("eth1".to_owned(), None, bw(2_500_000)),
            ]
        );

        // A clone of it keeps the limits of the snapshot, or the ones its
        // restore asks for.
        let snap: firehost::snapshot::SnapshotName = "limited-snap".parse().unwrap();
        manager
            .snapshot(&vm, &snap, Default::default())
            .await
            .unwrap();
        manager.stop(&vm, StopOptions::default()).await.unwrap();
        manager.destroy(&vm).await.unwrap();
        let options = RestoreOptions {
            devices: VmUpdate {
                nics: vec![NicLimitUpdate {
                    iface_id: "eth0".into(),
                    tx: LimitChange {
                        bandwidth: BucketChange::Set(ten_mbit),
                        ops: BucketChange::Remove,
                    },
                    ..NicLimitUpdate::default()
                }],
                ..VmUpdate::default()
            },
            ..RestoreOptions::default()
        };
        let clone = id("limited-clone");
        let info = manager.restore(&clone, &snap, options).await.unwrap();
        assert_eq!(
            info.spec.net.as_ref().unwrap().tx_limit,
            RateLimit {
                bandwidth: Some(ten_mbit),
                ops: None
            }
        );
        assert_eq!(
            limits(manager.clone(), clone.clone()).await,
            vec![
                ("eth0".to_owned(), None, bw(1_250_000)),
                ("eth1".to_owned(), None, bw(2_500_000)),
            ]
        );
        manager.stop(&clone, StopOptions::default()).await.unwrap();
        manager.destroy(&clone).await.unwrap();
    });
}

/// The regions a VM's policy allows, as the kernel lists them (JSON);
/// `None` when the VM has no policy of its own (gone, or open).
fn allowed_regions(ip: Ipv4Addr) -> Option<String> {
    let [a, b, c, d] = ip.octets();
    Nftables::open()
        .unwrap()
        .list(&format!("list set ip firehost allow_{a}_{b}_{c}_{d}"))
        .ok()
        .map(|json| json.to_string())
}

#[test]
fn egress_policies_follow_a_vm_through_changes_restarts_snapshots_and_destroy() {
    const T: &str = "egress_policies_follow_a_vm_through_changes_restarts_snapshots_and_destroy";
    in_netns(T, |nl| async move {
        use firehost::manager::RestoreOptions;
        use firehost::vocab::{EgressAction, EgressPolicy, EgressRule};
        if !nft_or_skip(T) {
            return;
        }
        let h = NetHost::new(&nl).await;
        let manager = Manager::open(h.config()).await.unwrap();
        let https_only = EgressPolicy::new(
            EgressAction::Deny,
            vec![EgressRule::allow("198.51.100.2:443".parse().unwrap())],
        )
        .unwrap();
        let spec = VmSpec {
            net: Some(NetSpec {
                egress: https_only.clone(),
                ..NetSpec::default()
            }),
            ..VmSpec::default()
        };
        let vm = id("walled");
        let net = net_of(&manager.run(&vm, spec).await.unwrap());
        assert_eq!(net.egress, https_only);
        let allowed = allowed_regions(net.ip).expect("the VM has a policy of its own");
        assert!(allowed.contains("443"), "{allowed}");

        // A runtime change: the chain, the info and the record follow.
        let dns_too = EgressPolicy::new(
            EgressAction::Deny,
            vec![
                EgressRule::allow("198.51.100.2:443".parse().unwrap()),
                EgressRule::allow("198.51.100.0/24:53/udp".parse().unwrap()),
            ],
        )
        .unwrap();
        let info = manager.set_egress(&vm, dns_too.clone()).await.unwrap();
        assert_eq!(net_of(&info).egress, dns_too);
        assert_eq!(info.spec.net.as_ref().unwrap().egress, dns_too);
        let allowed = allowed_regions(net.ip).unwrap();
        assert!(allowed.contains("53"), "{allowed}");
        assert_eq!(manager.traffic(&vm).await.unwrap().egress_dropped, 0);

        // A change the record cannot keep is taken back: the firewall has
        // the old policy again. (The record is written through
        // `record.tmp`: a directory there makes the write fail, even for
        // root.)
        let blocker = info.dir.join("record.tmp");
        std::fs::create_dir(&blocker).unwrap();
        let failed = manager.set_egress(&vm, EgressPolicy::open()).await;
        assert!(failed.is_err(), "{failed:?}");
        std::fs::remove_dir(&blocker).unwrap();
        let allowed = allowed_regions(net.ip).expect("the old policy is back");
        assert!(allowed.contains("53"), "{allowed}");
        assert_eq!(net_of(&manager.get(&vm).await.unwrap()).egress, dns_too);

        // A VM without a network has no policy to change.
        let offline = id("offline");
        manager.create(&offline, VmSpec::default()).await.unwrap();
        let refused = manager.set_egress(&offline, EgressPolicy::open()).await;
        assert!(
            matches!(refused, Err(VmError::Network { .. })),
            "{refused:?}"
        );
        assert!(matches!(
            manager.traffic(&offline).await,
            Err(VmError::Network { .. })
        ));
        manager.destroy(&offline).await.unwrap();

        // A restarted manager installs the policy the record holds.
        drop(manager);
        let manager = Manager::open(h.config()).await.unwrap();
        let allowed = allowed_regions(net.ip).expect("the restart put the policy back");
        assert!(allowed.contains("53"), "{allowed}");
        let attached = manager.network_attachments().await;
        assert_eq!(attached[0].1.egress, dns_too);

        // Clones keep the snapshot's policy unless their restore says
        // otherwise.
        let snap: firehost::snapshot::SnapshotName = "walled-snap".parse().unwrap();
        manager
            .snapshot(&vm, &snap, Default::default())
            .await
            .unwrap();
        let kept = net_of(
            &manager
                .restore(&id("kept"), &snap, RestoreOptions::default())
                .await
                .unwrap(),
        );
        assert_eq!(kept.egress, dns_too);
        assert!(allowed_regions(kept.ip).unwrap().contains("53"));
        let options = RestoreOptions {
            egress: Some(EgressPolicy::open()),
            ..RestoreOptions::default()
        };
        let opened = manager
            .restore(&id("opened"), &snap, options)
            .await
            .unwrap();
        assert!(net_of(&opened).egress.is_open());
        assert!(opened.spec.net.as_ref().unwrap().egress.is_open());

        for name in ["walled", "kept", "opened"] {
            manager
                .stop(&id(name), StopOptions::default())
                .await
                .unwrap();
            manager.destroy(&id(name)).await.unwrap();
        }
        assert_eq!(allowed_regions(net.ip), None);
        assert_eq!(residue(&nl).await, nothing());
    });
}
