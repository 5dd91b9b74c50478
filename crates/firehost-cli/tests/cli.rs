//! The `firehost` binary end to end, against `fake-firecracker`: one golden
//! test per command for the `--json` shape, the lifecycle round trip, and
//! the error paths with their exit codes.

mod common;

use std::time::Duration;

use common::{
    TestEnv, Ty, assert_error, assert_shape, assert_success, assert_vm_shape, kvm_usable,
    parse_json, stdout, wait_until,
};
use serde_json::Value;

fn names(list: &Value) -> Vec<&str> {
    list["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["name"].as_str().unwrap())
        .collect()
}

// --- one golden test per command -------------------------------------------

#[test]
fn run_json_is_the_vm_object_of_a_running_vm() {
    let env = TestEnv::new();
    let (_vm, vm) = env.start_vm("golden-run", &["--vcpus", "2", "--mem-mib", "64"]);
    assert_vm_shape(&vm);
    assert_eq!(vm["name"], "golden-run");
    assert_eq!(vm["state"], "running");
    assert!(vm["pid"].as_i64().unwrap() > 0);
    assert_eq!(
        (vm["vcpus"].as_u64(), vm["mem_mib"].as_u64()),
        (Some(2), Some(64))
    );
    assert!(vm["exit"].is_null() && vm["console_tail"].is_null());
    assert!(
        std::path::Path::new(vm["api_socket"].as_str().unwrap()).exists(),
        "{vm}"
    );
}

#[test]
fn run_without_a_name_generates_one_and_no_start_leaves_it_created() {
    let env = TestEnv::new();
    let mut args = env.run_args();
    args.push("--no-start".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let vm = env.json(&args);
    let name = vm["name"].as_str().unwrap().to_owned();
    let _guard = common::VmGuard {
        env: &env,
        name: name.clone(),
    };
    assert_vm_shape(&vm);
    let hex = name.strip_prefix("vm-").expect("vm- prefix");
    assert!(
        hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{name}"
    );
    assert_eq!(vm["state"], "created");
    assert!(vm["pid"].is_i64(), "the VMM runs: {vm}");
}

#[test]
fn ls_json_lists_every_vm_sorted_by_name() {
    let env = TestEnv::new();
    let empty = env.json(&["ls"]);
    assert_shape(&empty, &[("vms", &[Ty::Arr])]);
    assert!(empty["vms"].as_array().unwrap().is_empty());

    let (_b, _) = env.start_vm("b-vm", &[]);
    let (_a, _) = env.start_vm("a-vm", &["--no-start"]);
    let list = env.json(&["ls"]);
    assert_shape(&list, &[("vms", &[Ty::Arr])]);
    assert_eq!(names(&list), ["a-vm", "b-vm"]);
    for vm in list["vms"].as_array().unwrap() {
        assert_vm_shape(vm);
    }
}

#[test]
fn inspect_json_is_the_vm_object() {
    let env = TestEnv::new();
    let (_vm, created) = env.start_vm("golden-inspect", &[]);
    let vm = env.json(&["inspect", "golden-inspect"]);
    assert_vm_shape(&vm);
    assert_eq!(vm["pid"], created["pid"]);
    assert_eq!(vm["created_at_ms"], created["created_at_ms"]);
}

#[test]
fn pause_and_resume_json_show_the_new_state() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("golden-pause", &[]);
    let paused = env.json(&["pause", "golden-pause"]);
    assert_vm_shape(&paused);
    assert_eq!(paused["state"], "paused");
    let resumed = env.json(&["resume", "golden-pause"]);
    assert_vm_shape(&resumed);
    assert_eq!(resumed["state"], "running");
}

#[test]
fn stop_json_shows_a_stopped_vm_with_its_exit() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("golden-stop", &[]);
    let stopped = env.json(&["stop", "golden-stop", "--timeout-s", "5"]);
    assert_vm_shape(&stopped);
    assert_eq!(stopped["state"], "stopped");
    assert!(stopped["pid"].is_null());
    assert!(stopped["exit"].is_object(), "{stopped}");
    assert!(stopped["console_tail"].is_null());
}

#[test]
fn rm_json_reports_the_removal() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("golden-rm", &["--no-start"]);
    let removed = env.json(&["rm", "golden-rm"]);
    assert_shape(
        &removed,
        &[
            ("name", &[Ty::Str]),
            ("removed", &[Ty::Bool]),
            ("stopped", &[Ty::Bool]),
        ],
    );
    assert_eq!(removed["removed"], true);
    assert_eq!(removed["stopped"], false);
    assert!(env.vm_dirs().is_empty(), "{:?}", env.vm_dirs());
}

#[test]
fn snapshot_json_describes_the_bundle_and_the_vm_state() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("golden-snap", &[]);
    let snap = env.json(&["snapshot", "golden-snap", "snap-1"]);
    assert_shape(
        &snap,
        &[
            ("name", &[Ty::Str]),
            ("vm", &[Ty::Str]),
            ("dir", &[Ty::Str]),
            ("firecracker_version", &[Ty::Str]),
            ("vmstate_bytes", &[Ty::Int]),
            ("memory_bytes", &[Ty::Int]),
            ("created_at_ms", &[Ty::Int]),
            ("vm_state", &[Ty::Str]),
        ],
    );
    assert_eq!(
        (&snap["name"], &snap["vm"]),
        (&"snap-1".into(), &"golden-snap".into())
    );
    assert_eq!(snap["vm_state"], "running");
    let dir = std::path::Path::new(snap["dir"].as_str().unwrap());
    assert!(dir.join("manifest.json").is_file());

    let kept_paused = env.json(&["snapshot", "golden-snap", "snap-2", "--no-resume"]);
    assert_eq!(kept_paused["vm_state"], "paused");
}

#[test]
fn console_json_holds_the_guest_output() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("golden-console", &[]);
    let console = wait_until("the guest's init line", Duration::from_secs(10), || {
        let c = env.json(&["console", "golden-console", "--tail", "20"]);
        let done = c["lines"]
            .as_array()?
            .iter()
            .any(|l| l.as_str().unwrap_or("").contains("init started"));
        done.then_some(c)
    });
    assert_shape(&console, &[("name", &[Ty::Str]), ("lines", &[Ty::Arr])]);
    assert!(console["lines"].as_array().unwrap().len() <= 20);
    let one = env.json(&["console", "golden-console", "--tail", "1"]);
    assert_eq!(one["lines"].as_array().unwrap().len(), 1);
}

#[test]
fn doctor_json_lists_every_check() {
    let env = TestEnv::new();
    let out = env.run(&["--json", "doctor"]);
    let report = parse_json(&out);
    assert_shape(&report, &[("ok", &[Ty::Bool]), ("checks", &[Ty::Arr])]);
    let checks = report["checks"].as_array().unwrap();
    for check in checks {
        assert_shape(
            check,
            &[
                ("name", &[Ty::Str]),
                ("status", &[Ty::Str]),
                ("detail", &[Ty::Str]),
                ("fix", &[Ty::Str, Ty::Null]),
            ],
        );
        assert!(["ok", "warn", "fail"].contains(&check["status"].as_str().unwrap()));
    }
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "kvm",
            "firecracker",
            "jailer",
            "host_kernel",
            "tun",
            "nft",
            "cgroup",
            "userfaultfd",
            "state_dir"
        ]
    );
    let firecracker = &checks[1];
    assert_eq!(
        firecracker["status"], "ok",
        "the fake reports v1.16.1: {firecracker}"
    );
    let ok = report["ok"].as_bool().unwrap();
    assert_eq!(out.status.code(), Some(if ok { 0 } else { 2 }));
}

#[test]
fn quickstart_json_lists_what_is_missing_and_exits_2() {
    let env = TestEnv::new();
    let missing_kernel = env.path("no-such-vmlinux");
    let out = env.run(&[
        "--json",
        "quickstart",
        "--kernel",
        missing_kernel.to_str().unwrap(),
    ]);
    assert_error(&out, 2);
    let report = parse_json(&out);
    assert_quickstart_shape(&report);
    assert_eq!(report["ready"], false);
    assert!(report["vm"].is_null() && report["timings_ms"].is_null());
    let missing: Vec<&str> = report["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["what"].as_str().unwrap())
        .collect();
    assert!(
        missing
            .iter()
            .any(|m| m.contains("kernel") && m.contains("no-such-vmlinux")),
        "{missing:?}"
    );
    assert!(
        missing
            .iter()
            .any(|m| m.contains("root filesystem: none given")),
        "{missing:?}"
    );
    let state_dir = report["state_dir"].as_str().unwrap();
    assert!(
        !std::path::Path::new(state_dir).exists(),
        "{state_dir} left behind"
    );
}

#[test]
fn quickstart_boots_a_vm_prints_timings_and_leaves_nothing() {
    let env = TestEnv::new();
    let out = env.run(&[
        "--json",
        "quickstart",
        "--kernel",
        env.kernel.to_str().unwrap(),
        "--rootfs",
        env.rootfs.to_str().unwrap(),
    ]);
    if !kvm_usable() {
        eprintln!("skipped the boot: /dev/kvm is not usable here; checking the refusal instead");
        assert_error(&out, 2);
        let report = parse_json(&out);
        assert!(report["missing"].to_string().contains("kvm"), "{report}");
        return;
    }
    assert_success(&out, &["quickstart"]);
    let report = parse_json(&out);
    assert_quickstart_shape(&report);
    assert_eq!(report["ready"], true);
    assert_eq!(report["vm"], "quickstart");
    assert_shape(
        &report["timings_ms"],
        &[
            ("create_ms", &[Ty::Num]),
            ("start_ms", &[Ty::Num]),
            ("first_output_ms", &[Ty::Num, Ty::Null]),
            ("stop_ms", &[Ty::Num]),
            ("destroy_ms", &[Ty::Num]),
            ("total_ms", &[Ty::Num]),
        ],
    );
    assert!(
        report["console_tail"].to_string().contains("init started"),
        "{report}"
    );
    let state_dir = report["state_dir"].as_str().unwrap();
    assert!(
        !std::path::Path::new(state_dir).exists(),
        "{state_dir} left behind"
    );
}

fn assert_quickstart_shape(report: &Value) {
    use Ty::*;
    assert_shape(
        report,
        &[
            ("ready", &[Bool]),
            ("missing", &[Arr]),
            ("checks", &[Arr]),
            ("state_dir", &[Str]),
            ("vm", &[Str, Null]),
            ("timings_ms", &[Obj, Null]),
            ("console_tail", &[Arr]),
        ],
    );
    for m in report["missing"].as_array().unwrap() {
        assert_shape(m, &[("what", &[Str]), ("fix", &[Str])]);
    }
}

// --- behaviour ---------------------------------------------------------------

#[test]
fn round_trip_run_ls_pause_resume_snapshot_stop_rm() {
    let env = TestEnv::new();
    let guard = common::VmGuard {
        env: &env,
        name: "trip".into(),
    };
    let mut run = env.run_args();
    run.extend(["--name".into(), "trip".into()]);
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let steps: &[(&[&str], &str)] = &[
        (&run, "state:      running"),
        (&["ls"], "trip"),
        (&["pause", "trip"], "trip: paused"),
        (&["resume", "trip"], "trip: running"),
        (
            &["snapshot", "trip", "trip-snap"],
            "snapshot trip-snap of trip",
        ),
        (&["stop", "trip"], "trip: stopped"),
        (&["rm", "trip"], "trip: removed"),
    ];
    for (args, expected) in steps {
        let out = env.run(args);
        assert_success(&out, args);
        assert!(
            stdout(&out).contains(expected),
            "firehost {args:?}: expected {expected:?} in {:?}",
            stdout(&out)
        );
    }
    drop(guard);
    assert!(env.vm_dirs().is_empty(), "{:?}", env.vm_dirs());
    let ls = env.run(&["ls"]);
    assert_eq!(stdout(&ls), "NAME  STATE  PID  VCPUS  MEM\n");
    assert!(
        env.state_dir
            .join("snapshots/trip-snap/manifest.json")
            .is_file(),
        "snapshots outlive their VM"
    );
}

#[test]
fn run_with_a_missing_kernel_fails_with_one_line_and_leaves_no_vm() {
    let env = TestEnv::new();
    let missing = env.path("missing-vmlinux");
    let out = env.run(&[
        "run",
        "--name",
        "nokernel",
        "--kernel",
        missing.to_str().unwrap(),
        "--rootfs",
        env.rootfs.to_str().unwrap(),
    ]);
    let line = assert_error(&out, 2);
    assert!(
        line.contains("kernel") && line.contains("missing-vmlinux"),
        "{line}"
    );
    assert!(stdout(&out).is_empty());
    assert!(env.vm_dirs().is_empty(), "{:?}", env.vm_dirs());
}

#[test]
fn inspect_of_an_unknown_vm_exits_3() {
    let env = TestEnv::new();
    let line = assert_error(&env.run(&["inspect", "ghost"]), 3);
    assert_eq!(line, "firehost: no VM named ghost");
    assert_error(&env.run(&["--json", "stop", "ghost"]), 3);
}

#[test]
fn rm_of_a_running_vm_is_refused_without_force_and_works_with_it() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("busy", &[]);
    let line = assert_error(&env.run(&["rm", "busy"]), 4);
    assert!(line.contains("running"), "{line}");
    assert_eq!(env.json(&["inspect", "busy"])["state"], "running");

    let removed = env.json(&["rm", "-f", "busy"]);
    assert_eq!(removed["stopped"], true);
    assert!(env.vm_dirs().is_empty(), "{:?}", env.vm_dirs());
}

#[test]
fn taken_names_and_illegal_transitions_exit_4() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("twice", &["--no-start"]);
    let mut again = env.run_args();
    again.extend(["--name".into(), "twice".into()]);
    let again: Vec<&str> = again.iter().map(String::as_str).collect();
    assert_error(&env.run(&again), 4);
    let line = assert_error(&env.run(&["pause", "twice"]), 4);
    assert!(line.contains("cannot pause a VM that is created"), "{line}");
    assert_eq!(
        line.matches("cannot pause").count(),
        1,
        "the cause is not repeated: {line}"
    );
}

#[test]
fn bad_names_and_flags_exit_2_with_one_line() {
    let env = TestEnv::new();
    let line = assert_error(&env.run(&["inspect", "../etc"]), 2);
    assert!(line.contains("invalid VM name"), "{line}");
    let line = assert_error(&env.run(&["snapshot", "x", "a/b"]), 2);
    assert!(line.contains("invalid snapshot name"), "{line}");
    let line = assert_error(&env.run(&["run", "--kernl", "x"]), 2);
    assert!(line.contains("--kernl"), "{line}");
    assert_error(&env.run(&["frobnicate"]), 2);
    let mut zero = env.run_args();
    zero.extend(["--vcpus".into(), "0".into()]);
    let zero: Vec<&str> = zero.iter().map(String::as_str).collect();
    let line = assert_error(&env.run(&zero), 2);
    assert!(line.contains("vCPUs"), "the library's own message: {line}");
    assert!(env.vm_dirs().is_empty());
}

#[test]
fn a_closed_stdout_exits_0_quietly() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("piped", &["--no-start"]);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = env
        .command(&["ls"])
        .stdout(writer)
        .output()
        .expect("firehost runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        common::stderr(&out)
    );
    assert!(out.stderr.is_empty(), "{}", common::stderr(&out));
}

#[test]
fn help_and_version_exit_0() {
    let env = TestEnv::new();
    for args in [&["--help"][..], &["--version"], &["quickstart", "--help"]] {
        let out = env.run(args);
        assert_success(&out, args);
    }
    let help = stdout(&env.run(&["quickstart", "--help"]));
    assert!(help.contains("guest agent"), "{help}");
}

#[test]
fn concurrent_commands_wait_for_the_state_directory_instead_of_failing() {
    let env = TestEnv::new();
    let _guards: Vec<common::VmGuard<'_>> = (0..3)
        .map(|i| common::VmGuard {
            env: &env,
            name: format!("together-{i}"),
        })
        .collect();
    let children: Vec<_> = (0..3)
        .map(|i| {
            let mut args = env.run_args();
            args.extend(["--name".into(), format!("together-{i}")]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            env.command(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("firehost starts")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", common::stderr(&out));
    }
    let list = env.json(&["ls"]);
    assert_eq!(names(&list), ["together-0", "together-1", "together-2"]);
}

#[test]
fn restore_json_is_the_vm_object_of_the_new_vm() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("restore-src", &[]);
    env.json(&["snapshot", "restore-src", "restore-snap"]);
    let vm = env.json(&["restore", "restore-snap", "--name", "restored"]);
    let _guard = common::VmGuard {
        env: &env,
        name: "restored".into(),
    };
    assert_vm_shape(&vm);
    assert_eq!(
        (&vm["name"], &vm["state"]),
        (&"restored".into(), &"running".into())
    );
    let paused = env.json(&[
        "restore",
        "restore-snap",
        "--name",
        "restored-p",
        "--paused",
    ]);
    let _guard_p = common::VmGuard {
        env: &env,
        name: "restored-p".into(),
    };
    assert_eq!(paused["state"], "paused");
}

#[test]
fn restore_errors_have_their_exit_codes() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("restore-err", &[]);
    env.json(&["snapshot", "restore-err", "err-snap"]);
    // A taken name is a conflict; an unknown snapshot is not found.
    assert_error(
        &env.run(&["restore", "err-snap", "--name", "restore-err"]),
        4,
    );
    assert_error(&env.run(&["restore", "nope", "--name", "fresh"]), 3);
    assert_error(&env.run(&["restore", "../x", "--name", "fresh"]), 2);
    assert_eq!(env.vm_dirs(), ["restore-err"]);
}

#[test]
fn clone_restores_n_vms_or_none() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("clone-src", &[]);
    env.json(&["snapshot", "clone-src", "clone-snap"]);
    let list = env.json(&["clone", "clone-snap", "--count", "3", "--prefix", "c"]);
    let _guards: Vec<_> = ["c-0", "c-1", "c-2"]
        .iter()
        .map(|n| common::VmGuard {
            env: &env,
            name: (*n).into(),
        })
        .collect();
    assert_eq!(names(&list), ["c-0", "c-1", "c-2"]);
    assert!(
        list["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "running")
    );

    // c-1 exists: the second batch fails as a whole and leaves no d-* VM.
    env.json(&["restore", "clone-snap", "--name", "d-1"]);
    let _guard_d = common::VmGuard {
        env: &env,
        name: "d-1".into(),
    };
    assert_error(
        &env.run(&["clone", "clone-snap", "--count", "3", "--prefix", "d"]),
        4,
    );
    let mut dirs = env.vm_dirs();
    dirs.sort();
    assert_eq!(dirs, ["c-0", "c-1", "c-2", "clone-src", "d-1"]);
}
