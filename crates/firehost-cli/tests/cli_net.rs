//! The CLI on the default network, end to end. Each test runs on a thread
//! in a network (and mount) namespace of its own: the `firehost` processes
//! it starts inherit that namespace, so the bridge, TAPs, namespaces and
//! rules they make never touch the host's, and go with the namespace.
//!
//! Needs root, `/dev/net/tun` and nftables; elsewhere each test prints why
//! it skipped.

mod common;

use std::net::Ipv4Addr;

use common::{TestEnv, Ty, assert_shape, assert_vm_shape, parse_json};
use firehost_testkit::skip;

/// Runs `body` on a thread in fresh network and mount namespaces, or
/// says why it cannot.
fn in_private_netns(test: &str, body: impl FnOnce() + Send + 'static) {
    if !rustix::process::geteuid().is_root() {
        return skip(test, "needs root to create a network namespace");
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return skip(test, "/dev/net/tun is missing (no tun module)");
    }
    let outcome = std::thread::spawn(move || {
        firehost_testkit::enter_private_netns()?;
        body();
        Ok::<(), String>(())
    })
    .join();
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(why)) => skip(test, &why),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Whether `firehost doctor` finds nftables; says why not (as a skip).
fn nft_or_skip(env: &TestEnv, test: &str) -> bool {
    let report = parse_json(&env.run(&["--json", "doctor"]));
    let nft = report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == "nft"))
        .cloned()
        .unwrap_or_default();
    if nft["status"] == "ok" {
        return true;
    }
    skip(test, &format!("nftables is not usable here: {nft}"));
    false
}

fn ip(value: &serde_json::Value) -> Ipv4Addr {
    value.as_str().unwrap().parse().unwrap()
}

/// `firehost clone` of a networked VM's snapshot makes clones that run
/// beside their source, each keeping the guest's address inside its own
/// namespace under a host address of its own.
#[test]
fn clones_of_a_networked_vm_run_beside_it_each_with_an_address_of_its_own() {
    const T: &str = "clones_of_a_networked_vm_run_beside_it_each_with_an_address_of_its_own";
    in_private_netns(T, || {
        let env = TestEnv::new();
        if !nft_or_skip(&env, T) {
            return;
        }
        let (_source, source) = env.start_vm("src", &["--net", "--uplink", "none"]);
        let source_ip = ip(&source["net"]["ip"]);
        assert!(source["net"]["guest"].is_null(), "{source}");
        env.json(&["snapshot", "src", "snap"]);

        let list = env.json(&["clone", "snap", "--count", "2", "--prefix", "c"]);
        let _guards: Vec<_> = ["c-0", "c-1"]
            .iter()
            .map(|n| common::VmGuard {
                env: &env,
                name: (*n).into(),
            })
            .collect();
        let clones = list["vms"].as_array().unwrap();
        assert_eq!(clones.len(), 2);
        let mut host_ips = vec![source_ip];
        for clone in clones {
            assert_vm_shape(clone);
            let net = &clone["net"];
            assert_shape(&net["guest"], &[("ip", &[Ty::Str]), ("mac", &[Ty::Str])]);
            assert_eq!(
                ip(&net["guest"]["ip"]),
                source_ip,
                "the guest keeps its address"
            );
            assert_eq!(net["guest"]["mac"], source["net"]["mac"]);
            assert!(net["netns"].is_string(), "{net}");
            host_ips.push(ip(&net["ip"]));
        }
        host_ips.sort();
        host_ips.dedup();
        assert_eq!(host_ips.len(), 3, "each VM has its own host address");

        // `inspect` says the same; a restore that keeps the snapshot's
        // address is refused while the source holds it.
        let inspected = env.json(&["inspect", "c-0"]);
        assert_eq!(inspected["net"], clones[0]["net"]);
        let kept = env.run(&["restore", "snap", "--name", "k", "--keep-address"]);
        assert_eq!(kept.status.code(), Some(4), "{}", common::stderr(&kept));
        assert!(common::stderr(&kept).contains(&source_ip.to_string()));
    });
}
