//! `run`'s device flags, `update`, and the devices in the VM object.

mod common;

use common::{TestEnv, assert_error, assert_success, assert_vm_shape, stdout};
use serde_json::{Value, json};

fn drive<'a>(vm: &'a Value, id: &str) -> &'a Value {
    vm["drives"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("drive {id} in {vm}"))
}

#[test]
fn run_flags_set_drives_limits_and_devices_and_update_changes_them() {
    let env = TestEnv::new();
    let data = env.path("data.img");
    std::fs::write(&data, b"data").unwrap();
    let drive_flag = format!(
        "id=data,path={},ro,cache=writeback,bw=10Mbit/s,iops=200",
        data.display()
    );
    let (_vm, vm) = env.start_vm(
        "limited",
        &[
            "--rootfs-bw",
            "100MiB/s",
            "--rootfs-iops",
            "1000",
            "--drive",
            &drive_flag,
            "--entropy",
            "--balloon-mib",
            "0",
            "--balloon-stats-s",
            "2",
            "--balloon-deflate-on-oom",
        ],
    );
    assert_vm_shape(&vm);
    let root = drive(&vm, "rootfs");
    assert_eq!(root["root"], true);
    assert_eq!(
        root["limit"],
        json!({
            "bandwidth": {"size": 100 << 20, "refill_time_ms": 1000, "one_time_burst": null},
            "ops": {"size": 1000, "refill_time_ms": 1000, "one_time_burst": null},
        })
    );
    let d = drive(&vm, "data");
    assert_eq!(
        (&d["read_only"], &d["cache"], &d["engine"], &d["root"]),
        (
            &json!(true),
            &json!("writeback"),
            &json!("sync"),
            &json!(false)
        )
    );
    assert_eq!(d["limit"]["bandwidth"]["size"], 1_250_000);
    assert_eq!(d["limit"]["ops"]["size"], 200);
    assert_eq!(vm["entropy"], json!({"limit": null}));
    assert_eq!(
        vm["balloon"],
        json!({
            "amount_mib": 0,
            "deflate_on_oom": true,
            "stats_interval_s": 2,
            "free_page_hinting": false,
            "free_page_reporting": false,
        })
    );

    let updated = env.json(&[
        "update",
        "limited",
        "--drive-bw",
        "rootfs=none",
        "--drive-iops",
        "rootfs=50",
        "--drive-bw",
        "data=1GiB/s",
        "--balloon-stats-s",
        "3",
    ]);
    assert_vm_shape(&updated);
    assert_eq!(
        drive(&updated, "rootfs")["limit"],
        json!({"bandwidth": null, "ops": {"size": 50, "refill_time_ms": 1000, "one_time_burst": null}})
    );
    assert_eq!(
        drive(&updated, "data")["limit"]["bandwidth"]["size"],
        1u64 << 30
    );
    assert_eq!(drive(&updated, "data")["limit"]["ops"]["size"], 200);
    assert_eq!(updated["balloon"]["stats_interval_s"], 3);
    // inspect shows what update recorded.
    assert_eq!(
        env.json(&["inspect", "limited"])["drives"],
        updated["drives"]
    );

    let human = env.run(&["inspect", "limited"]);
    assert_success(&human, &["inspect"]);
    let text = stdout(&human);
    assert!(text.contains("drive:      rootfs (50 ops/s)"), "{text}");
    assert!(
        text.contains("(read-only, writeback, 1GiB/s, 200 ops/s)"),
        "{text}"
    );
    assert!(text.contains("entropy:    on"), "{text}");
}

#[test]
fn bad_device_flags_and_updates_exit_2_and_change_nothing() {
    let env = TestEnv::new();
    for bad in [
        vec!["--rootfs-bw", "100MiB"],
        vec!["--rootfs-iops", "0"],
        vec!["--drive", "id=data"],
        vec!["--drive", "id=x,path=/nonexistent/file"],
        vec!["--net-rx-bw", "fast"],
        vec!["--balloon-mib", "4096"],
        vec!["--balloon-stats-s", "1"],
    ] {
        let mut args = env.run_args();
        args.extend(["--name".into(), "never".into()]);
        args.extend(bad.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_error(&env.run(&args), 2);
    }
    assert_eq!(env.json(&["ls"])["vms"], json!([]));

    let (_vm, before) = env.start_vm("target", &["--rootfs-bw", "1MiB/s"]);
    for bad in [
        vec!["update", "target"],
        vec!["update", "target", "--drive-bw", "nope=1MiB/s"],
        vec!["update", "target", "--drive-bw", "rootfs"],
        vec!["update", "target", "--drive-iops", "rootfs=-1"],
        vec!["update", "target", "--balloon-mib", "8"],
    ] {
        let err = assert_error(&env.run(&bad), 2);
        assert!(
            err.contains("target") || err.contains("update") || err.contains("rootfs"),
            "{err}"
        );
    }
    assert_error(
        &env.run(&["update", "missing", "--drive-bw", "rootfs=1MiB/s"]),
        3,
    );
    assert_eq!(env.json(&["inspect", "target"])["drives"], before["drives"]);
}

#[test]
fn swap_drive_points_a_drive_at_another_file() {
    let env = TestEnv::new();
    let (a, b) = (env.path("a.img"), env.path("b.img"));
    std::fs::write(&a, b"a").unwrap();
    std::fs::write(&b, b"b").unwrap();
    let flag = format!("id=data,path={}", a.display());
    let (_vm, _) = env.start_vm("swapper", &["--drive", &flag]);
    let b_arg = b.display().to_string();
    let vm = env.json(&["swap-drive", "swapper", "data", &b_arg]);
    assert_vm_shape(&vm);
    let canonical = b.canonicalize().unwrap();
    assert_eq!(drive(&vm, "data")["path"], canonical.display().to_string());
    assert_error(&env.run(&["swap-drive", "swapper", "nope", &b_arg]), 2);
    assert_error(
        &env.run(&["swap-drive", "swapper", "data", "/nonexistent"]),
        2,
    );
    assert_error(&env.run(&["swap-drive", "missing", "data", &b_arg]), 3);
}

#[test]
fn snapshot_reclaim_needs_a_balloon_and_reports_what_it_took() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("no-balloon", &[]);
    let err = assert_error(
        &env.run(&["snapshot", "no-balloon", "s1", "--reclaim", "8"]),
        2,
    );
    assert!(err.contains("no-balloon"), "{err}");
    assert_error(
        &env.run(&["snapshot", "no-balloon", "s2", "--reclaim", "lots"]),
        2,
    );
    assert_eq!(env.json(&["snapshots"])["snapshots"], json!([]));

    let (_vm, _) = env.start_vm(
        "ballooned",
        &["--balloon-mib", "0", "--balloon-stats-s", "1"],
    );
    // The fake's guest has no balloon driver unless told: the VMM refuses.
    let out = env.run(&[
        "snapshot",
        "ballooned",
        "s3",
        "--reclaim",
        "8",
        "--reclaim-wait-s",
        "1",
    ]);
    assert_error(&out, 1);
    // Without a target the guest must report its free memory; it does not.
    assert_error(&env.run(&["snapshot", "ballooned", "s4", "--reclaim"]), 2);
    assert_eq!(env.json(&["snapshots"])["snapshots"], json!([]));
}

#[test]
fn stats_shows_each_vms_counters_once_or_every_interval() {
    let env = TestEnv::new();
    let data = env.path("data.img");
    std::fs::write(&data, b"data").unwrap();
    let flag = format!("id=data,path={}", data.display());
    let (_a, _) = env.start_vm("alpha", &["--drive", &flag]);
    let (_b, _) = env.start_vm("beta", &[]);
    let report = env.json(&["stats"]);
    common::assert_shape(
        &report,
        &[("vms", &[common::Ty::Arr]), ("errors", &[common::Ty::Arr])],
    );
    let names: Vec<&str> = report["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    let alpha = &report["vms"][0];
    let drives: Vec<&String> = alpha["metrics"]["drives"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(drives, ["data", "rootfs"]);
    assert!(
        alpha["metrics"]["api"]["requests"].as_u64().unwrap() >= 1,
        "{alpha}"
    );

    let out = env.run(&[
        "--json",
        "stats",
        "beta",
        "--watch",
        "--count",
        "3",
        "--interval-ms",
        "20",
    ]);
    assert_success(&out, &["stats --watch"]);
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for line in &lines[1..] {
        assert_eq!(line["vms"][0]["name"], "beta");
        assert!(line["vms"][0]["interval_ms"].is_u64(), "{line}");
    }

    let text = env.run(&["stats"]);
    assert_success(&text, &["stats"]);
    let text = stdout(&text);
    assert!(text.starts_with("NAME"), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
    assert_error(&env.run(&["stats", "missing"]), 3);
}

#[test]
fn run_takes_a_custom_cpu_template_file_and_refuses_a_bad_one() {
    let env = TestEnv::new();
    let file = env.path("cpu.json");
    std::fs::write(&file, r#"{"cpuid_modifiers": []}"#).unwrap();
    let arg = file.display().to_string();
    let (_vm, vm) = env.start_vm("templated", &["--cpu-template", &arg]);
    assert_vm_shape(&vm);
    assert_eq!(vm["cpu_template"], arg);
    std::fs::write(&file, "{").unwrap();
    let mut args = env.run_args();
    args.extend(["--name".into(), "bad".into(), "--cpu-template".into(), arg]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = assert_error(&env.run(&args), 2);
    assert!(err.contains("CPU template"), "{err}");
}

#[test]
fn run_log_flags_give_a_vm_a_log_of_its_own() {
    let env = TestEnv::new();
    let (_vm, vm) = env.start_vm("logged", &["--log-level", "debug", "--log-show-level"]);
    // The CLI logs every VM at info; this one shows its lines' levels.
    let log = std::path::Path::new(vm["dir"].as_str().unwrap()).join("firecracker.log");
    common::wait_until(
        "a line with its level",
        std::time::Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains(":INFO]") || t.contains(":INFO:"))
        },
    );
    let mut args = env.run_args();
    args.extend([
        "--name".into(),
        "bad".into(),
        "--log-level".into(),
        "loud".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_error(&env.run(&args), 2);
    let mut args = env.run_args();
    args.extend([
        "--name".into(),
        "bad2".into(),
        "--log-module".into(),
        "a b".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_error(&env.run(&args), 2);
}

#[test]
fn run_takes_pmem_a_serial_limit_and_hotpluggable_memory() {
    let env = TestEnv::new();
    let image = env.path("pmem.img");
    std::fs::write(&image, vec![1u8; 4096]).unwrap();
    let flag = format!("id=data,path={},bw=1MiB/s", image.display());
    let (_vm, vm) = env.start_vm(
        "extras",
        &[
            "--pmem",
            &flag,
            "--serial-bw",
            "64KiB/s",
            "--memory-hotplug-total-mib",
            "256",
        ],
    );
    assert_vm_shape(&vm);
    assert_eq!(vm["pmem"][0]["id"], "data");
    assert_eq!(vm["pmem"][0]["limit"]["bandwidth"]["size"], 1 << 20);
    assert_eq!(vm["serial_limit"]["size"], 64 << 10);
    assert_eq!(
        vm["memory_hotplug"],
        json!({"total_mib": 256, "slot_mib": 128, "block_mib": 2, "requested_mib": 0})
    );
    // The fake's guest has no virtio-mem driver: the VMM refuses (exit 1).
    assert_error(
        &env.run(&["update", "extras", "--memory-hotplug-mib", "128"]),
        1,
    );
    assert_error(
        &env.run(&["update", "extras", "--memory-hotplug-mib", "3"]),
        2,
    );
}
