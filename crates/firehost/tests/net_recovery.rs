//! Tier 5: opening a state directory never rewrites the network under the
//! VMs that run on it: settings are recorded and enforced, unreadable
//! records keep their VM's network, and an unreadable network state file
//! stops firehost from touching the host.
//!
//! Each test runs in a network namespace of its own (see `common::netns`).
//! Needs root and nftables; elsewhere each test prints why it skipped.

mod common;

use std::net::Ipv4Addr;

use common::netns::{addresses, ifname, in_netns, nft_or_skip};
use common::{TestHost, process_alive};
use firehost::manager::{Manager, ManagerConfig, ManagerError, SettingsPolicy, StopOptions};
use firehost::net::Netlink;
use firehost::net::host::{NetError, NetSpec, Uplink};
use firehost::net::nft::Nftables;
use firehost::record::RECORD_FILE;
use firehost::{VmError, VmId, VmSpec};

fn id(s: &str) -> VmId {
    VmId::new(s).unwrap()
}

fn net_spec() -> VmSpec {
    VmSpec {
        net: Some(NetSpec::default()),
        ..VmSpec::default()
    }
}

fn config(host: &TestHost) -> ManagerConfig {
    let mut config = host.config();
    config.network.uplink = Uplink::None;
    config.network.dns = Some(vec![Ipv4Addr::new(198, 51, 100, 53)]);
    config
}

/// The firehost ruleset, as text.
/// The whole ruleset, less what traffic changes: the counters' values,
/// named or in set elements (a guest's TAP sees the odd frame whatever
/// the test does).
fn ruleset() -> String {
    fn strip_counts(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(counter) = map.get_mut("counter").and_then(|c| c.as_object_mut()) {
                    counter.remove("packets");
                    counter.remove("bytes");
                }
                map.values_mut().for_each(strip_counts);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip_counts),
            _ => {}
        }
    }
    let mut json = Nftables::open().unwrap().list("list ruleset").unwrap();
    strip_counts(&mut json);
    json.to_string()
}

/// The TAPs in the namespace.
async fn taps(nl: &Netlink) -> Vec<String> {
    let mut names: Vec<String> = common::netns::links(nl)
        .await
        .into_iter()
        .filter(|(_, kind)| kind.as_deref() == Some("tun"))
        .map(|(name, _)| name)
        .collect();
    names.sort();
    names
}

#[test]
fn a_manager_with_another_subnet_is_refused_and_changes_nothing() {
    const T: &str = "a_manager_with_another_subnet_is_refused_and_changes_nothing";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let host = TestHost::new();
        let manager = Manager::open(config(&host)).await.unwrap();
        let vm = id("web");
        manager.run(&vm, net_spec()).await.unwrap();
        let (rules, bridge) = (ruleset(), addresses(&nl, &ifname("fhbr0")).await);

        let mut other = config(&host);
        other.network.subnet = "10.9.0.0/16".parse().unwrap();
        drop(manager);
        let refused = Manager::open(other.clone()).await.unwrap_err();
        let ManagerError::SettingsDiffer { differences, .. } = &refused else {
            panic!("expected SettingsDiffer, got {refused:?}");
        };
        assert_eq!(differences.len(), 1);
        assert_eq!(differences[0].setting, "subnet");
        assert!(
            refused
                .to_string()
                .contains("subnet is 172.30.0.0/16 here, not 10.9.0.0/16"),
            "{refused}"
        );
        assert_eq!(ruleset(), rules, "the firewall is untouched");
        assert_eq!(addresses(&nl, &ifname("fhbr0")).await, bridge);

        // Nor may the settings change while the VM is on the network.
        other.settings = SettingsPolicy::Change;
        let refused = Manager::open(other.clone()).await.unwrap_err();
        let ManagerError::SettingsInUse { vms, .. } = &refused else {
            panic!("expected SettingsInUse, got {refused:?}");
        };
        assert_eq!(vms, std::slice::from_ref(&vm));
        assert_eq!(ruleset(), rules);

        // A manager that adopts the recorded settings finds the VM as it was.
        let mut adopting = other.clone();
        adopting.settings = SettingsPolicy::Adopt;
        let manager = Manager::open(adopting).await.unwrap();
        assert_eq!(manager.config().network.subnet.to_string(), "172.30.0.0/16");
        manager.stop(&vm, StopOptions::default()).await.unwrap();
        manager.destroy(&vm).await.unwrap();
        drop(manager);

        // With no VM left on it, the change goes through.
        let manager = Manager::open(other).await.unwrap();
        let info = manager.run(&id("next"), net_spec()).await.unwrap();
        assert!(info.net.unwrap().ip.to_string().starts_with("10.9."));
        manager
            .stop(&id("next"), StopOptions::default())
            .await
            .unwrap();
    });
}

#[test]
fn a_quarantined_vm_keeps_its_network_until_it_is_removed() {
    const T: &str = "a_quarantined_vm_keeps_its_network_until_it_is_removed";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let host = TestHost::new();
        let (bad, good) = (id("bad"), id("good"));
        let info = {
            let manager = Manager::open(config(&host)).await.unwrap();
            manager.run(&good, net_spec()).await.unwrap();
            manager.run(&bad, net_spec()).await.unwrap()
        };
        let tap = info.net.as_ref().unwrap().tap.to_string();
        let ip = info.net.as_ref().unwrap().ip.to_string();
        let record = info.dir.join(RECORD_FILE);
        let text = std::fs::read_to_string(&record).unwrap();
        let mut newer: serde_json::Value = serde_json::from_str(&text).unwrap();
        newer["format"] = 99.into();
        std::fs::write(&record, newer.to_string()).unwrap();

        let manager = Manager::open(config(&host)).await.unwrap();
        assert!(taps(&nl).await.contains(&tap), "its TAP stays");
        assert!(ruleset().contains(&ip), "its firewall elements stay");
        // Its address is not handed out again.
        let third = manager.run(&id("third"), net_spec()).await.unwrap();
        assert_ne!(third.net.unwrap().ip.to_string(), ip);

        assert!(manager.remove_unreadable(&bad).await.unwrap());
        assert!(!process_alive(info.pid.unwrap()));
        assert!(!taps(&nl).await.contains(&tap), "removed with it");
        assert!(!ruleset().contains(&ip));
        for vm in [&good, &id("third")] {
            manager.stop(vm, StopOptions::default()).await.unwrap();
            manager.destroy(vm).await.unwrap();
        }
    });
}

#[test]
fn an_unreadable_network_state_file_stops_firehost_touching_the_network() {
    const T: &str = "an_unreadable_network_state_file_stops_firehost_touching_the_network";
    in_netns(T, |nl| async move {
        if !nft_or_skip(T) {
            return;
        }
        let host = TestHost::new();
        let vm = id("web");
        {
            let manager = Manager::open(config(&host)).await.unwrap();
            manager.run(&vm, net_spec()).await.unwrap();
        }
        let rules = ruleset();
        let state_file = host.state_dir().join("network.json");
        std::fs::write(&state_file, b"{\"bridge_created\": tr").unwrap();

        let manager = Manager::open(config(&host)).await.unwrap();
        assert_eq!(ruleset(), rules, "nothing reconciled from a torn file");
        let refused = manager.run(&id("more"), net_spec()).await.unwrap_err();
        let VmError::Network { source, .. } = &refused else {
            panic!("expected a network error, got {refused:?}");
        };
        assert!(matches!(**source, NetError::StateFile { .. }), "{source:?}");
        assert!(refused.to_string().contains("more"));
        assert!(!host.state_dir().join("vms/more").exists());
        assert_eq!(ruleset(), rules);
        assert_eq!(taps(&nl).await.len(), 1);
        // Fixed by hand: everything works again.
        std::fs::remove_file(&state_file).unwrap();
        drop(manager);
        let manager = Manager::open(config(&host)).await.unwrap();
        manager.stop(&vm, StopOptions::default()).await.unwrap();
        manager.destroy(&vm).await.unwrap();
    });
}
