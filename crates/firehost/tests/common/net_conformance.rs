//! The network half of the provider conformance suite: what any
//! [`VmProvider`] must do with `VmSpec::net`. The in-memory provider runs it
//! in `conformance.rs`; the manager runs it inside a network namespace in
//! `net_manager.rs` (its network touches the kernel).

use std::net::Ipv4Addr;

use firehost::manager::{RestoreOptions, SnapshotOptions, StopOptions, VmError};
use firehost::net::host::{GuestAddress, NetError, NetSpec};
use firehost::net::ipam::{IpamError, MacAddr};
use firehost::net::tap::tap_name_for_vm;
use firehost::{VmId, VmProvider, VmSpec};

fn id(s: &str) -> VmId {
    VmId::new(s).unwrap()
}

fn with_net(net: NetSpec) -> VmSpec {
    VmSpec {
        net: Some(net),
        ..VmSpec::default()
    }
}

fn network_error(result: Result<firehost::VmInfo, VmError>) -> NetError {
    match result {
        Err(VmError::Network { source, .. }) => *source,
        other => panic!("expected a network error, got {other:?}"),
    }
}

/// Runs the suite; `provider` must have no VMs and the default network
/// config (172.30.0.0/16, gateway .1).
pub async fn net_conformance(provider: &dyn VmProvider) {
    let a = id("net-a");
    let publish = NetSpec {
        publish: vec!["8080:80".parse().unwrap()],
        ..NetSpec::default()
    };
    let info = provider.run(&a, with_net(publish)).await.unwrap();
    let net = info.net.clone().expect("a network was asked for");
    assert_eq!(net.ip, Ipv4Addr::new(172, 30, 0, 2));
    assert_eq!(net.gateway, Ipv4Addr::new(172, 30, 0, 1));
    assert_eq!(net.prefix_len, 16);
    assert_eq!(net.mac, MacAddr::for_vm(&a, 0));
    assert_eq!(net.tap, tap_name_for_vm(&a, 0, 0));
    assert_eq!(net.iface_id, "eth0");
    assert_eq!(net.published, vec!["8080:80".parse().unwrap()]);
    assert!(
        provider
            .create(&id("plain"), VmSpec::default())
            .await
            .unwrap()
            .net
            .is_none()
    );

    // Refusals are typed and leave no VM.
    let b = id("net-b");
    let taken = NetSpec {
        ip: Some(net.ip),
        ..NetSpec::default()
    };
    let err = network_error(provider.create(&b, with_net(taken)).await);
    assert!(
        matches!(err, NetError::Ipam(IpamError::IpTaken { .. })),
        "{err:?}"
    );
    let clash = NetSpec {
        publish: vec!["8080:81".parse().unwrap()],
        ..NetSpec::default()
    };
    let err = network_error(provider.create(&b, with_net(clash)).await);
    assert!(
        matches!(err, NetError::PortInUse { port: 8080, .. }),
        "{err:?}"
    );
    let outside = NetSpec {
        ip: Some(Ipv4Addr::new(10, 0, 0, 5)),
        ..NetSpec::default()
    };
    let err = network_error(provider.create(&b, with_net(outside)).await);
    assert!(
        matches!(err, NetError::Ipam(IpamError::OutOfSubnet { .. })),
        "{err:?}"
    );
    assert!(
        provider.get(&b).await.is_err(),
        "a refused create leaves no VM"
    );

    let b_net = provider
        .create(&b, with_net(NetSpec::default()))
        .await
        .unwrap()
        .net
        .unwrap();
    assert_eq!(b_net.ip, Ipv4Addr::new(172, 30, 0, 3));

    // Ports at runtime: a's port is refused to b; b's own is kept once.
    let err = network_error(provider.publish(&b, "8080:90".parse().unwrap()).await);
    assert!(
        matches!(err, NetError::PortInUse { port: 8080, .. }),
        "{err:?}"
    );
    let mapping = "9090:90".parse().unwrap();
    for _ in 0..2 {
        let published = provider.publish(&b, mapping).await.unwrap();
        assert_eq!(published.net.unwrap().published, vec![mapping]);
    }
    let unpublished = provider.unpublish(&b, mapping).await.unwrap();
    assert!(unpublished.net.unwrap().published.is_empty());
    let plain = id("plain");
    let err = network_error(provider.publish(&plain, mapping).await);
    assert!(matches!(err, NetError::NotAttached { .. }), "{err:?}");

    // A snapshot records the NIC; a restore needs the guest's address.
    let snap = "net-snap".parse().unwrap();
    let taken = provider
        .snapshot(&a, &snap, SnapshotOptions::default())
        .await
        .unwrap();
    assert_eq!(taken.manifest.network.len(), 1);
    assert_eq!(taken.manifest.network[0].guest_ip, Some(net.ip));
    // By default a restore runs beside its source: the guest keeps the
    // snapshot's address and MAC, translated to a host address of its own
    // (never the guest's, nor the gateway).
    let c = id("net-c");
    let restored = provider
        .restore(&c, &snap, RestoreOptions::default())
        .await
        .unwrap()
        .net
        .unwrap();
    let own = GuestAddress {
        ip: net.ip,
        mac: net.mac,
    };
    assert_eq!(restored.guest, Some(own));
    assert_eq!(restored.guest_net().ip, net.ip);
    assert!(
        ![net.ip, b_net.ip, net.gateway].contains(&restored.ip),
        "{restored:?}"
    );
    assert_ne!(restored.mac, net.mac);
    let ns = restored
        .netns
        .clone()
        .expect("a translated VM has a namespace");
    assert_ne!(ns.host_port, restored.tap);
    // A snapshot of the clone records the address its guest keeps.
    let snap_c = "net-snap-c".parse().unwrap();
    let taken_c = provider
        .snapshot(&c, &snap_c, SnapshotOptions::default())
        .await
        .unwrap();
    assert_eq!(taken_c.manifest.network[0].guest_ip, Some(net.ip));
    assert_eq!(
        taken_c.manifest.network[0].guest_mac,
        Some(net.mac.to_string())
    );

    // Keeping the snapshot's address on the host's network needs it free.
    let d = id("net-d");
    let keep = || RestoreOptions {
        keep_address: true,
        ..RestoreOptions::default()
    };
    let err = network_error(provider.restore(&d, &snap, keep()).await);
    assert!(
        matches!(err, NetError::Ipam(IpamError::IpTaken { .. })),
        "{err:?}"
    );
    provider.stop(&a, StopOptions::default()).await.unwrap();
    let kept = provider
        .restore(&d, &snap, keep())
        .await
        .unwrap()
        .net
        .unwrap();
    assert_eq!((kept.ip, kept.mac, kept.guest), (net.ip, net.mac, None));

    for vm in ["net-a", "net-b", "net-c", "net-d", "plain"] {
        let vm = id(vm);
        if provider.get(&vm).await.unwrap().state.is_live() {
            provider.stop(&vm, StopOptions::default()).await.unwrap();
        }
        provider.destroy(&vm).await.unwrap();
    }
    // Everything released: the first address is free again.
    let again = provider
        .create(&a, with_net(NetSpec::default()))
        .await
        .unwrap();
    assert_eq!(again.net.unwrap().ip, Ipv4Addr::new(172, 30, 0, 2));
    provider.destroy(&a).await.unwrap();
}
