//! The CLI on the default network, end to end. Each test runs on a thread
//! in a network (and mount) namespace of its own: the `firehost` processes
//! it starts inherit that namespace, so the bridge, TAPs, namespaces and
//! rules they make never touch the host's, and go with the namespace.
//!
//! Needs root, `/dev/net/tun` and nftables; elsewhere each test prints why
//! it skipped.

mod common;

use std::net::Ipv4Addr;

use common::{
    TestEnv, Ty, assert_egress_shape, assert_shape, assert_traffic_shape, assert_vm_shape,
    parse_json,
};
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
        let mut inspected = env.json(&["inspect", "c-0"]);
        // `inspect` adds the traffic so far.
        assert!(inspected["net"]["traffic"].is_object(), "{inspected}");
        inspected["net"]["traffic"] = serde_json::Value::Null;
        assert_eq!(inspected["net"], clones[0]["net"]);
        let kept = env.run(&["restore", "snap", "--name", "k", "--keep-address"]);
        assert_eq!(kept.status.code(), Some(4), "{}", common::stderr(&kept));
        assert!(common::stderr(&kept).contains(&source_ip.to_string()));
    });
}

/// `run`'s egress flags make the VM's policy, in command-line order;
/// `net egress` prints and replaces it; `net ls` shows it with the
/// traffic; a restore keeps it or takes another; bad rules change nothing.
#[test]
fn egress_policies_from_the_command_line_in_the_order_given() {
    const T: &str = "egress_policies_from_the_command_line_in_the_order_given";
    in_private_netns(T, || {
        let env = TestEnv::new();
        if !nft_or_skip(&env, T) {
            return;
        }
        // Refused before anything is made: a bad CIDR, a rule an earlier
        // one covers, a bad name.
        for bad in [
            &["--allow", "10.0.0.1/8"][..],
            &["--deny", "10.0.0.0/8", "--allow", "10.1.0.0/16:443"],
            &["--allow-domain", "*.com"],
            &["--allow", "1.2.3.4:0"],
        ] {
            let mut args = env.run_args();
            args.extend(["--name", "bad", "--uplink", "none"].map(String::from));
            args.extend(bad.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = env.run(&args);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{bad:?}: {}",
                common::stderr(&out)
            );
        }
        assert_eq!(env.json(&["ls"])["vms"], serde_json::json!([]));

        // An exception before the rule it is an exception to: only this
        // order is a valid policy.
        let (_vm, vm) = env.start_vm(
            "walled",
            &[
                "--uplink",
                "none",
                "--deny",
                "198.51.100.9",
                "--allow",
                "198.51.100.0/24:443",
                "--allow-domain",
                "pypi.org",
            ],
        );
        assert_vm_shape(&vm);
        // A domain rule needs the gateway, which outlives this command in
        // a helper process of its own.
        let socket = env.state_dir.join("egress-gateway.sock");
        assert!(socket.exists(), "the egress gateway helper listens");
        assert_eq!(
            vm["net"]["egress"],
            serde_json::json!({
                "default": "deny",
                "rules": [
                    {"action": "deny", "net": "198.51.100.9/32", "domain": null},
                    {"action": "allow", "net": "198.51.100.0/24:443/tcp", "domain": null},
                    {"action": "allow", "net": null, "domain": "pypi.org"},
                ]
            })
        );
        let shown = env.json(&["net", "egress", "walled"]);
        assert_shape(
            &shown,
            &[
                ("name", &[Ty::Str]),
                ("egress", &[Ty::Obj]),
                ("traffic", &[Ty::Obj, Ty::Null]),
            ],
        );
        assert_egress_shape(&shown["egress"]);
        assert_traffic_shape(&shown["traffic"]);
        assert_eq!(shown["egress"], vm["net"]["egress"]);
        let text = env.run(&["net", "egress", "walled"]);
        let text = String::from_utf8_lossy(&text.stdout).into_owned();
        assert!(text.contains("0: deny 198.51.100.9/32"), "{text}");
        assert!(text.contains("then: deny"), "{text}");

        // Replaced at runtime: a deny alone means everything else is open.
        let replaced = env.json(&["net", "egress", "walled", "--deny", "10.0.0.0/8"]);
        assert_eq!(replaced["egress"]["default"], "allow");
        // No VM has domain rules any more: the helper is gone.
        firehost_testkit::wait_until(
            "the gateway helper to leave",
            std::time::Duration::from_secs(5),
            || (!socket.exists()).then_some(()),
        );
        assert_eq!(replaced["egress"]["rules"][0]["net"], "10.0.0.0/8");
        let refused = env.run(&["net", "egress", "walled", "--allow", "bad"]);
        assert_eq!(refused.status.code(), Some(2));
        assert_eq!(
            env.json(&["inspect", "walled"])["net"]["egress"],
            replaced["egress"]
        );

        let list = env.json(&["net", "ls"]);
        let listed = &list["vms"][0];
        assert_egress_shape(&listed["egress"]);
        assert_traffic_shape(&listed["traffic"]);
        assert!(listed["traffic"].is_object(), "{list}");
        assert_eq!(listed["egress"], replaced["egress"]);

        // Restores keep the snapshot's policy, or take the one given.
        env.json(&["snapshot", "walled", "snap"]);
        let kept = env.json(&["restore", "snap", "--name", "kept"]);
        let _kept = common::VmGuard {
            env: &env,
            name: "kept".into(),
        };
        assert_eq!(kept["net"]["egress"], replaced["egress"]);
        let opened = env.json(&[
            "restore",
            "snap",
            "--name",
            "opened",
            "--egress-default",
            "allow",
        ]);
        let _opened = common::VmGuard {
            env: &env,
            name: "opened".into(),
        };
        assert_eq!(
            opened["net"]["egress"],
            serde_json::json!({"default": "allow", "rules": []})
        );
    });
}
