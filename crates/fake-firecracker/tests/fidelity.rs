//! Behaviour where the fake used to differ from Firecracker v1.16.1, seen
//! side by side: device replacement (network interfaces, vsock), the MMDS
//! data store before it exists, and a balloon in a guest without a driver.
//! Like every suite of this crate, it runs against the real binary with
//! `FIREHOST_FIRECRACKER` set; each VMM runs in a network namespace of its
//! own (see `common::Fake::spawn_in`), so created TAPs never reach the
//! host's.

mod common;

use common::{Client, Fake};
use firehost_testkit::fake_only;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The interface names in the VM's configuration, in its order.
fn iface_ids(c: &mut Client) -> Vec<String> {
    let config = c.get("/vm/config").json();
    config["network-interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["iface_id"].as_str().unwrap().to_owned())
        .collect()
}

fn net(id: &str, tap: &str, extra: &str) -> String {
    format!(r#"{{"iface_id":"{id}","host_dev_name":"{tap}"{extra}}}"#)
}

#[test]
fn a_missing_tap_is_created_and_an_updated_interface_replaces_the_old_one() {
    if !is_root() {
        eprintln!("skipped: creating a TAP needs root (in a namespace of its own)");
        return;
    }
    let f = Fake::spawn();
    let mut c = f.client();
    c.expect_204(
        "PUT",
        "/network-interfaces/eth0",
        &net("eth0", "fhfid0", ""),
    );
    // The TAP exists now, in the VMM's network namespace.
    let devices = std::fs::read_to_string(format!("/proc/{}/net/dev", f.child.id())).unwrap();
    assert!(devices.contains("fhfid0:"), "{devices}");
    // Updating it with the same TAP works: the old device lets go first.
    c.expect_204(
        "PUT",
        "/network-interfaces/eth0",
        &net("eth0", "fhfid0", r#","guest_mac":"06:00:00:00:00:02""#),
    );
    c.expect_204(
        "PUT",
        "/network-interfaces/eth1",
        &net("eth1", "fhfid1", ""),
    );
    c.expect_204(
        "PUT",
        "/network-interfaces/eth0",
        &net("eth0", "fhfid0", ""),
    );
    assert_eq!(iface_ids(&mut c), ["eth1", "eth0"], "an update goes last");
    // A failed update leaves no interface of that id.
    let fault = c.expect_fault(
        "PUT",
        "/network-interfaces/eth0",
        &net("eth0", "fhfid0", r#","mtu":10"#),
    );
    assert_eq!(
        fault,
        "Network config error: Could not create the network device: MTU 10 is out of range [68, 65535]"
    );
    assert_eq!(iface_ids(&mut c), ["eth1"]);
}

#[test]
fn patching_the_mmds_store_before_any_put_is_refused() {
    let f = Fake::spawn();
    let mut c = f.client();
    let fault = c.expect_fault("PATCH", "/mmds", r#"{"a":1}"#);
    assert_eq!(fault, "MMDS error: The MMDS data store is not initialized.");
    assert_eq!(c.get("/mmds").body, "{}");
    c.expect_204("PUT", "/mmds", r#"{"a":1}"#);
    c.expect_204("PATCH", "/mmds", r#"{"b":2}"#);
    assert_eq!(c.get("/mmds").json(), serde_json::json!({"a":1,"b":2}));
}

#[test]
fn the_mmds_address_must_be_link_local() {
    if !is_root() {
        eprintln!("skipped: the interface's TAP needs root (in a namespace of its own)");
        return;
    }
    let f = Fake::spawn();
    let mut c = f.client();
    c.expect_204(
        "PUT",
        "/network-interfaces/eth0",
        &net("eth0", "fhfid0", ""),
    );
    let fault = c.expect_fault(
        "PUT",
        "/mmds/config",
        r#"{"network_interfaces":["eth0"],"ipv4_address":"10.0.0.1"}"#,
    );
    assert_eq!(
        fault,
        "MMMDS config error: The MMDS IPv4 address is not link local."
    );
    c.expect_204(
        "PUT",
        "/mmds/config",
        r#"{"network_interfaces":["eth0","eth0"],"ipv4_address":"169.254.170.2"}"#,
    );
    let config = c.get("/vm/config").json();
    assert_eq!(
        config["mmds-config"]["network_interfaces"],
        serde_json::json!(["eth0"])
    );
}

#[test]
fn replacing_the_vsock_device_removes_its_socket_file() {
    let f = Fake::spawn();
    let mut c = f.client();
    let (first, second) = (f.path("v.sock"), f.path("v2.sock"));
    let vsock =
        |path: &std::path::Path| format!(r#"{{"guest_cid":3,"uds_path":"{}"}}"#, path.display());
    c.expect_204("PUT", "/vsock", &vsock(&first));
    // The same path again: the old socket is removed, then bound anew.
    c.expect_204("PUT", "/vsock", &vsock(&first));
    c.expect_204("PUT", "/vsock", &vsock(&second));
    assert!(!first.exists(), "the replaced device's socket is gone");
    assert!(second.exists());
    // A replacement that fails leaves no device (and no socket).
    let missing = f.path("no-such-dir").join("v.sock");
    c.expect_fault("PUT", "/vsock", &vsock(&missing));
    assert!(c.get("/vm/config").json()["vsock"].is_null());
    assert!(!second.exists());
    c.expect_204("PUT", "/vsock", &vsock(&first));
}

#[test]
fn a_balloon_in_a_guest_without_a_driver_never_inflates() {
    let f = Fake::spawn();
    let mut c = f.client();
    c.expect_204(
        "PUT",
        "/balloon",
        r#"{"amount_mib":10,"deflate_on_oom":true,"stats_polling_interval_s":1}"#,
    );
    f.start(&mut c);
    let stats = c.get("/balloon/statistics");
    assert_eq!(stats.status, 200);
    assert_eq!(
        stats.body,
        r#"{"target_pages":2560,"actual_pages":0,"target_mib":10,"actual_mib":0}"#
    );
    let fault = c.expect_fault("PATCH", "/balloon", r#"{"amount_mib":20}"#);
    assert_eq!(
        fault,
        "Balloon update error: Balloon: Device not activated yet."
    );
    assert_eq!(c.get("/balloon").json()["amount_mib"], 10);
}

#[test]
fn a_guest_with_a_balloon_driver_inflates_when_asked() {
    fake_only!("FAKE_FC_BALLOON_DRIVER plays a guest with a driver");
    let f = Fake::spawn_with(&[], &[("FAKE_FC_BALLOON_DRIVER", "1")]);
    f.wait_socket();
    let mut c = f.client();
    c.expect_204(
        "PUT",
        "/balloon",
        r#"{"amount_mib":10,"deflate_on_oom":true,"stats_polling_interval_s":1}"#,
    );
    f.start(&mut c);
    let stats = c.get("/balloon/statistics").json();
    assert_eq!(stats["actual_mib"], 10);
    c.expect_204("PATCH", "/balloon", r#"{"amount_mib":20}"#);
    assert_eq!(c.get("/balloon").json()["amount_mib"], 20);
    let fault = c.expect_fault("PATCH", "/balloon", r#"{"amount_mib":257}"#);
    assert_eq!(
        fault,
        "Balloon update error: Balloon: Requested memory should be less than 257MiB"
    );
}
