//! The `firehost` binary end to end, against `fake-firecracker`: one golden
//! test per command for the `--json` shape, the lifecycle round trip, and
//! the error paths with their exit codes.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{
    TestEnv, Ty, assert_error, assert_shape, assert_success, assert_vm_shape, kvm_usable,
    parse_json, process_alive, stdout, wait_until,
};
use serde_json::{Value, json};

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
    assert_shape(&empty, &[("vms", &[Ty::Arr]), ("unreadable", &[Ty::Arr])]);
    assert!(empty["vms"].as_array().unwrap().is_empty());

    let (_b, _) = env.start_vm("b-vm", &[]);
    let (_a, _) = env.start_vm("a-vm", &["--no-start"]);
    let list = env.json(&["ls"]);
    assert_shape(&list, &[("vms", &[Ty::Arr]), ("unreadable", &[Ty::Arr])]);
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
    assert_stop_shape(&stopped);
    assert_eq!(stopped["state"], "stopped");
    assert!(stopped["pid"].is_null());
    assert!(stopped["exit"].is_object(), "{stopped}");
    assert!(stopped["console_tail"].is_null());
    assert_eq!(stopped["stopped"], true);

    // Stopping it again is what cleanup scripts do: it succeeds and says so.
    let again = env.json(&["stop", "golden-stop"]);
    assert_stop_shape(&again);
    assert_eq!(
        (&again["state"], &again["stopped"]),
        (&json!("stopped"), &json!(false))
    );
    assert_eq!(again["exit"], stopped["exit"], "the recorded exit is kept");
    let out = env.run(&["stop", "golden-stop"]);
    assert_success(&out, &["stop"]);
    assert_eq!(stdout(&out), "golden-stop: already stopped\n");
}

#[test]
fn a_guest_flooding_its_console_cannot_grow_the_files_past_their_bound() {
    let env = TestEnv::new();
    // 6 MiB of console from the guest; 1 MiB per file allowed.
    let (_vm, vm) = env.start_vm(
        "flood",
        &[
            "--log-max-mib",
            "1",
            "--vmm-env",
            "FAKE_FC_CONSOLE_FLOOD=6291456",
        ],
    );
    let dir = std::path::PathBuf::from(vm["dir"].as_str().unwrap());
    let console = dir.join("console.log");
    wait_until("the flood to end", Duration::from_secs(60), || {
        std::fs::read_to_string(&console)
            .ok()
            .filter(|text| text.contains("firehost-fake-guest: flood done"))
    });
    let size = |name: &str| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
    assert!(
        size("console.log") <= (1 << 20) + 4096,
        "{}",
        size("console.log")
    );
    assert!(
        size("console.log.1") <= (1 << 20) + 4096,
        "{}",
        size("console.log.1")
    );
    let dropped: u64 = std::fs::read_to_string(dir.join("console.log.dropped"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(dropped >= (4 << 20) - 8192, "{dropped} bytes dropped");
    let head = std::fs::read_to_string(&console).unwrap();
    assert!(head.starts_with("[firehost: "), "{:.100}", head);
    // Firecracker's log goes through the keeper too, into its own file.
    let log = std::fs::read_to_string(dir.join("firecracker.log")).unwrap();
    assert!(
        log.contains("InstanceStart") || log.contains("actions"),
        "{log}"
    );
    // The console command reads the bounded file.
    let tail = env.json(&["console", "flood", "--tail", "1"]);
    assert_eq!(tail["lines"][0], "firehost-fake-guest: flood done");
}

/// A `stop` object: the VM object plus `stopped`.
fn assert_stop_shape(v: &Value) {
    assert!(v["stopped"].is_boolean(), "{v}");
    let mut vm = v.clone();
    vm.as_object_mut().unwrap().remove("stopped");
    assert_vm_shape(&vm);
}

#[test]
fn stop_of_a_failed_vm_succeeds_and_keeps_it_failed() {
    let env = TestEnv::new();
    let (_vm, vm) = env.start_vm("crashed", &[]);
    let pid = i32::try_from(vm["pid"].as_i64().unwrap()).unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    wait_until("the VMM to die", Duration::from_secs(10), || {
        (!process_alive(pid)).then_some(())
    });
    let stopped = env.json(&["stop", "crashed"]);
    assert_stop_shape(&stopped);
    assert_eq!(
        (&stopped["state"], &stopped["stopped"]),
        (&json!("failed"), &json!(false))
    );
    // Nothing else changed: it can still be removed, and is then gone.
    let removed = env.json(&["rm", "crashed"]);
    assert_eq!(removed["removed"], true);
}

#[test]
fn rm_force_of_a_vm_that_is_not_there_succeeds_and_rm_without_it_does_not() {
    let env = TestEnv::new();
    let removed = env.json(&["rm", "-f", "never-was"]);
    assert_shape(
        &removed,
        &[
            ("name", &[Ty::Str]),
            ("removed", &[Ty::Bool]),
            ("stopped", &[Ty::Bool]),
        ],
    );
    assert_eq!(
        (&removed["removed"], &removed["stopped"]),
        (&json!(false), &json!(false))
    );
    let out = env.run(&["rm", "-f", "never-was"]);
    assert_success(&out, &["rm"]);
    assert_eq!(stdout(&out), "never-was: not there\n");
    let message = assert_error(&env.run(&["rm", "never-was"]), 3);
    assert!(message.contains("never-was"), "{message}");
    // Stop is no different from other commands for a VM that never was.
    assert_error(&env.run(&["stop", "never-was"]), 3);
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
            ("memory_data_bytes", &[Ty::Int]),
            ("created_at_ms", &[Ty::Int]),
            ("vm_state", &[Ty::Str]),
            ("disks", &[Ty::Arr]),
            ("reclaimed", &[Ty::Obj, Ty::Null]),
        ],
    );
    assert!(snap["reclaimed"].is_null());
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
            "chroot_base",
            "agent",
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
    // The agent cargo builds beside the CLI is static.
    let agent = &checks[4];
    assert_eq!(agent["status"], "ok", "{agent}");
    assert!(
        agent["detail"]
            .as_str()
            .unwrap()
            .contains("statically linked"),
        "{agent}"
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
    assert!(help.contains("image with the agent"), "{help}");
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
    // A uid is for jailed snapshots only; a clone's last uid must exist.
    let line = assert_error(
        &env.run(&["restore", "err-snap", "--name", "fresh", "--uid", "40000"]),
        2,
    );
    assert!(line.contains("jailed snapshot"), "{line}");
    let line = assert_error(
        &env.run(&[
            "clone",
            "err-snap",
            "--count",
            "2",
            "--prefix",
            "u",
            "--uid",
            "4294967295",
        ]),
        2,
    );
    assert!(line.contains("--uid"), "{line}");
    assert_eq!(env.vm_dirs(), ["restore-err"]);
}

#[test]
fn rename_moves_a_running_vm_to_a_free_name_and_frees_the_old_one() {
    let env = TestEnv::new();
    let (_web, before) = env.start_vm("web", &[]);
    let (_other, _) = env.start_vm("other", &[]);
    let renamed = env.json(&["rename", "web", "job-1"]);
    let _job = common::VmGuard {
        env: &env,
        name: "job-1".into(),
    };
    assert_vm_shape(&renamed);
    assert_eq!(renamed["name"], "job-1");
    assert_eq!(renamed["state"], "running");
    assert_eq!(
        (&renamed["pid"], &renamed["dir"]),
        (&before["pid"], &before["dir"])
    );
    let mut listed = names(&env.json(&["ls"]))
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>();
    listed.sort();
    assert_eq!(listed, ["job-1", "other"]);
    let plain = env.run(&["rename", "job-1", "job-2"]);
    assert_success(&plain, &["rename"]);
    assert_eq!(stdout(&plain), "job-2: running\n");
    let _job2 = common::VmGuard {
        env: &env,
        name: "job-2".into(),
    };

    // Refusals: a taken name (4), a VM that is not there (3), a bad name
    // (2); each changes nothing.
    let line = assert_error(&env.run(&["rename", "job-2", "other"]), 4);
    assert!(line.contains("other"), "{line}");
    assert_error(&env.run(&["rename", "nobody", "x"]), 3);
    assert_error(&env.run(&["rename", "job-2", "../x"]), 2);
    assert_eq!(env.json(&["inspect", "job-2"])["state"], "running");

    // The old name is free for a new VM, and the renamed one still stops.
    let (_again, again) = env.start_vm("web", &[]);
    assert_ne!(again["dir"], before["dir"]);
    let stopped = env.json(&["stop", "job-2"]);
    assert_eq!(
        (&stopped["name"], &stopped["state"]),
        (&"job-2".into(), &"stopped".into())
    );
}

fn pool_shape(pool: &Value) {
    assert_shape(
        pool,
        &[
            ("name", &[Ty::Str]),
            ("snapshot", &[Ty::Str, Ty::Null]),
            ("size", &[Ty::Int]),
            ("parallel", &[Ty::Int]),
            ("members", &[Ty::Arr]),
            ("making", &[Ty::Int]),
            ("failure", &[Ty::Obj, Ty::Null]),
        ],
    );
}

#[test]
fn a_pool_is_filled_claimed_from_refilled_and_removed() {
    let env = TestEnv::new();
    let (_tpl, _) = env.start_vm("tpl", &[]);
    env.json(&["snapshot", "tpl", "tpl-snap"]);
    let made = env.json(&[
        "pool",
        "create",
        "py",
        "--snapshot",
        "tpl-snap",
        "--size",
        "2",
    ]);
    pool_shape(&made);
    assert_eq!(made["members"].as_array().unwrap().len(), 2, "{made}");
    let members: Vec<String> = made["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    let _members: Vec<_> = members
        .iter()
        .map(|n| common::VmGuard {
            env: &env,
            name: n.clone(),
        })
        .collect();
    let listed = env.json(&["pool"]);
    assert_shape(&listed, &[("pools", &[Ty::Arr])]);
    pool_shape(&listed["pools"][0]);
    let plain = env.run(&["pool", "ls"]);
    assert_success(&plain, &["pool", "ls"]);
    assert_eq!(
        stdout(&plain),
        "NAME  SNAPSHOT  READY  FAILURE\npy    tpl-snap  2/2    -\n"
    );

    let claimed = env.json(&["pool", "claim", "py", "job-1"]);
    let _job = common::VmGuard {
        env: &env,
        name: "job-1".into(),
    };
    assert_vm_shape(&claimed);
    assert_eq!(
        (&claimed["name"], &claimed["state"]),
        (&"job-1".into(), &"running".into())
    );
    assert_eq!(
        env.json(&["pool"])["pools"][0]["members"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        env.json(&["pool", "fill", "py"])["members"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Refusals: a bad pool name (2), a pool that is not there (3), a bad
    // size (2), an empty pool told not to make a VM (4).
    assert_error(&env.run(&["pool", "claim", "../py", "x"]), 2);
    assert_error(&env.run(&["pool", "claim", "nopool", "x"]), 3);
    assert_error(
        &env.run(&[
            "pool",
            "create",
            "bad",
            "--snapshot",
            "tpl-snap",
            "--size",
            "0",
        ]),
        2,
    );
    env.json(&[
        "pool",
        "create",
        "none",
        "--snapshot",
        "tpl-snap",
        "--size",
        "1",
        "--no-fill",
    ]);
    assert_error(
        &env.run(&["pool", "claim", "none", "x", "--no-cold-start"]),
        4,
    );

    let removed = env.json(&["pool", "rm", "py"]);
    assert_eq!(
        (&removed["name"], &removed["removed"]),
        (&"py".into(), &true.into())
    );
    env.json(&["pool", "rm", "none"]);
    let mut left = names(&env.json(&["ls"]))
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>();
    left.sort();
    assert_eq!(left, ["job-1", "tpl"], "the members went with the pool");
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

/// Two live VMs writing one image corrupt it: a second writer is refused
/// (exit 4, naming the first) unless both share the image on purpose, and
/// the clones of a writable VM each write to a copy of their own.
#[test]
fn one_image_has_one_writer_and_clones_write_to_their_own_copies() {
    let env = TestEnv::new();
    let writable = |name: &str, extra: &[&str]| -> Vec<String> {
        let mut args = env.run_args();
        args.retain(|a| a != "--rootfs-ro");
        args.extend(["--name".to_owned(), name.to_owned()]);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    };
    let strs = |args: &[String]| {
        args.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let guards: Vec<_> = ["w-1", "w-2", "s-1", "s-2", "wc-0", "wc-1"]
        .iter()
        .map(|n| common::VmGuard {
            env: &env,
            name: (*n).into(),
        })
        .collect();
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        env.run(&refs)
    };

    let first = writable("w-1", &[]);
    assert!(run(first.clone()).status.success(), "{}", strs(&first));
    let line = assert_error(&run(writable("w-2", &[])), 4);
    assert!(line.contains("written to by VM w-1"), "{line}");
    let line = assert_error(&run(writable("s-1", &["--rootfs-shared"])), 4);
    assert!(line.contains("w-1"), "{line}");
    assert_error(
        &run(writable("s-1", &["--rootfs-ro", "--rootfs-shared"])),
        2,
    );

    let plain = env.json(&["snapshot", "w-1", "w-snap"]);
    assert_eq!(plain["disks"], serde_json::json!([]), "{plain}");
    let kept = env.json(&["snapshot", "w-1", "w-kept", "--disks"]);
    assert_eq!(kept["disks"], serde_json::json!(["rootfs"]), "{kept}");
    assert_error(
        &env.run(&["snapshot", "w-1", "w-diff", "--diff", "--disks"]),
        2,
    );
    let list = env.json(&["clone", "w-snap", "--count", "2", "--prefix", "wc"]);
    let original = env.json(&["inspect", "w-1"])["rootfs"].clone();
    for vm in list["vms"].as_array().unwrap() {
        let rootfs = vm["rootfs"].as_str().unwrap();
        let dir = vm["dir"].as_str().unwrap();
        assert!(rootfs.starts_with(dir), "{rootfs} is in {dir}");
        assert_ne!(vm["rootfs"], original);
        let own = &vm["own_drives"][0];
        assert_eq!(
            (&own["drive"], &own["path"]),
            (&"rootfs".into(), &vm["rootfs"])
        );
        assert!(
            ["reflink", "extents"].contains(&own["copy"].as_str().unwrap()),
            "{own}"
        );
    }

    // Once w-1 is gone, two VMs may share the image on purpose.
    assert!(env.run(&["stop", "w-1"]).status.success());
    assert!(run(writable("s-1", &["--rootfs-shared"])).status.success());
    let shared = env.json(&["inspect", "s-1"]);
    assert_eq!(shared["rootfs_shared"], true, "{shared}");
    assert!(run(writable("s-2", &["--rootfs-shared"])).status.success());
    drop(guards);
}

// --- snapshots ---------------------------------------------------------------

/// Starts VM `vm` and takes the full snapshot `base` and the diff `diff`
/// on top of it.
fn base_and_diff<'a>(env: &'a TestEnv, vm: &str, base: &str, diff: &str) -> common::VmGuard<'a> {
    let (guard, _) = env.start_vm(vm, &[]);
    env.json(&["snapshot", vm, base]);
    env.json(&["snapshot", "--diff", vm, diff]);
    guard
}

/// Makes `<state>/snapshots/<name>` look like a snapshot a crash
/// interrupted: a vmstate, no manifest.
fn incomplete_bundle(env: &TestEnv, name: &str) -> std::path::PathBuf {
    let dir = env.state_dir.join("snapshots").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vmstate"), b"half written").unwrap();
    dir
}

/// The documented bundle object, plus `extra` fields.
fn assert_bundle_shape(bundle: &Value, extra: &[(&str, &[Ty])]) {
    use Ty::*;
    let mut fields: Vec<(&str, &[Ty])> = vec![
        ("name", &[Str]),
        ("kind", &[Str]),
        ("parent", &[Str, Null]),
        ("vm", &[Str]),
        ("dir", &[Str]),
        ("format", &[Int]),
        ("firecracker_version", &[Str]),
        ("vmstate_bytes", &[Int]),
        ("memory_bytes", &[Int]),
        ("size_bytes", &[Int]),
        ("data_bytes", &[Int]),
        ("created_at_ms", &[Int]),
        ("leases", &[Arr]),
        ("disks", &[Arr]),
    ];
    fields.extend_from_slice(extra);
    assert_shape(bundle, &fields);
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn snapshots_ls_json_lists_bundles_and_the_incomplete_and_unreadable_ones() {
    let env = TestEnv::new();
    let list_shape: &[(&str, &[Ty])] = &[
        ("snapshots", &[Ty::Arr]),
        ("incomplete", &[Ty::Arr]),
        ("unreadable", &[Ty::Arr]),
    ];
    let empty = env.json(&["snapshots"]);
    assert_shape(&empty, list_shape);
    assert!(empty["snapshots"].as_array().unwrap().is_empty());

    let _vm = base_and_diff(&env, "ls-src", "base", "diff-1");
    incomplete_bundle(&env, "half");
    let broken = env.state_dir.join("snapshots/broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("manifest.json"), "{not json").unwrap();

    let list = env.json(&["snapshots", "ls"]);
    assert_shape(&list, list_shape);
    let bundles = list["snapshots"].as_array().unwrap();
    for b in bundles {
        assert_bundle_shape(b, &[]);
    }
    let summary: Vec<(&str, &str, &Value)> = bundles
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap(),
                b["kind"].as_str().unwrap(),
                &b["parent"],
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("base", "full", &Value::Null),
            ("diff-1", "diff", &"base".into())
        ]
    );
    assert_eq!(bundles[0]["vm"], "ls-src");
    assert_eq!(strings(&list["incomplete"]), ["half"]);
    let unreadable = list["unreadable"].as_array().unwrap();
    assert_eq!(unreadable.len(), 1);
    assert_shape(
        &unreadable[0],
        &[("name", &[Ty::Str]), ("error", &[Ty::Str])],
    );
    assert_eq!(unreadable[0]["name"], "broken");

    let table = stdout(&env.run(&["snapshots", "ls"]));
    assert!(
        table.starts_with("NAME    KIND  PARENT  VM      SIZE"),
        "{table}"
    );
    assert!(table.contains("\nincomplete: half "), "{table}");
    assert!(table.contains("\nunreadable: broken: "), "{table}");
}

#[test]
fn snapshots_inspect_json_shows_manifest_files_leases_and_children() {
    let env = TestEnv::new();
    let _vm = base_and_diff(&env, "inspect-src", "base", "diff-1");
    env.json(&["restore", "base", "--name", "from-base"]);
    let _restored = common::VmGuard {
        env: &env,
        name: "from-base".into(),
    };
    let details = env.json(&["snapshots", "inspect", "base"]);
    use Ty::*;
    assert_bundle_shape(
        &details,
        &[
            ("stale_leases", &[Arr]),
            ("children", &[Arr]),
            ("spec", &[Obj]),
            ("files", &[Arr]),
            ("working_set", &[Obj, Null]),
        ],
    );
    assert_eq!(strings(&details["leases"]), ["from-base"]);
    assert!(strings(&details["stale_leases"]).is_empty());
    assert_eq!(strings(&details["children"]), ["diff-1"]);
    assert_shape(
        &details["spec"],
        &[
            ("vcpus", &[Int]),
            ("mem_mib", &[Int]),
            ("smt", &[Bool]),
            ("kernel", &[Str]),
            ("initrd", &[Str, Null]),
            ("rootfs", &[Str, Null]),
            ("rootfs_read_only", &[Bool]),
            ("boot_args", &[Str]),
            ("drives", &[Arr]),
            ("track_dirty_pages", &[Bool]),
        ],
    );
    let files = details["files"].as_array().unwrap();
    let file_names: Vec<&str> = files.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(file_names, ["vmstate", "memory"]);
    for f in files {
        assert_shape(
            f,
            &[
                ("name", &[Str]),
                ("size_bytes", &[Int]),
                ("data_bytes", &[Int, Null]),
                ("blake3", &[Str, Null]),
            ],
        );
        assert_eq!(f["blake3"].as_str().unwrap().len(), 64, "{f}");
    }
    assert_eq!(files[1]["size_bytes"], details["memory_bytes"]);
    if details["working_set"].is_object() {
        assert_shape(
            &details["working_set"],
            &[
                ("pages", &[Int]),
                ("page_size_bytes", &[Int]),
                ("size_bytes", &[Int]),
                ("truncated", &[Bool]),
            ],
        );
    }
    let text = stdout(&env.run(&["snapshots", "inspect", "diff-1"]));
    assert!(
        text.contains("kind:        diff (on top of base)"),
        "{text}"
    );
}

#[test]
fn snapshots_verify_json_is_ok_with_the_parent_chain() {
    let env = TestEnv::new();
    let _vm = base_and_diff(&env, "verify-src", "base", "diff-1");
    let verdict = env.json(&["snapshots", "verify", "diff-1", "--memory"]);
    assert_verify_shape(&verdict);
    assert_eq!(verdict["ok"], true);
    assert_eq!(verdict["memory_checked"], true);
    assert_eq!(strings(&verdict["chain"]), ["diff-1", "base"]);
    assert!(verdict["error"].is_null());
    let quick = env.json(&["snapshots", "verify", "base"]);
    assert_eq!(
        (&quick["memory_checked"], &quick["ok"]),
        (&false.into(), &true.into())
    );
}

fn assert_verify_shape(verdict: &Value) {
    use Ty::*;
    assert_shape(
        verdict,
        &[
            ("name", &[Str]),
            ("ok", &[Bool]),
            ("memory_checked", &[Bool]),
            ("chain", &[Arr, Null]),
            ("error", &[Obj, Null]),
        ],
    );
    if verdict["error"].is_object() {
        assert_shape(
            &verdict["error"],
            &[
                ("kind", &[Str]),
                ("snapshot", &[Str, Null]),
                ("file", &[Str, Null]),
                ("message", &[Str]),
            ],
        );
    }
}

#[test]
fn snapshots_verify_exits_1_when_a_byte_of_the_vmstate_changed() {
    let env = TestEnv::new();
    let _vm = base_and_diff(&env, "corrupt-src", "base", "diff-1");
    let vmstate = env.state_dir.join("snapshots/base/vmstate");
    let mut bytes = std::fs::read(&vmstate).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&vmstate, bytes).unwrap();

    // The diff on top is bad too: its chain includes the damaged base.
    let out = env.run(&["--json", "snapshots", "verify", "diff-1"]);
    let line = assert_error(&out, 1);
    assert!(
        line.contains("snapshot diff-1 failed verification") && line.contains("BLAKE3"),
        "{line}"
    );
    let verdict = parse_json(&out);
    assert_verify_shape(&verdict);
    assert_eq!(verdict["ok"], false);
    assert!(verdict["chain"].is_null());
    let error = &verdict["error"];
    assert_eq!(
        (&error["kind"], &error["snapshot"], &error["file"]),
        (
            &"checksum_mismatch".into(),
            &"base".into(),
            &"vmstate".into()
        )
    );
    let text = env.run(&["snapshots", "verify", "base"]);
    assert_error(&text, 1);
    assert!(
        stdout(&text).starts_with("base: BAD: "),
        "{}",
        stdout(&text)
    );
}

#[test]
fn snapshots_rm_json_reports_the_removal() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("rm-src", &[]);
    env.json(&["snapshot", "rm-src", "doomed"]);
    let removed = env.json(&["snapshots", "rm", "doomed"]);
    assert_shape(&removed, &[("name", &[Ty::Str]), ("removed", &[Ty::Bool])]);
    assert_eq!(
        (&removed["name"], &removed["removed"]),
        (&"doomed".into(), &true.into())
    );
    assert!(!env.state_dir.join("snapshots/doomed").exists());
    let line = assert_error(&env.run(&["snapshots", "rm", "doomed"]), 3);
    assert!(line.contains("does not exist"), "{line}");
}

#[test]
fn snapshots_rm_is_refused_while_a_restored_vm_uses_the_snapshot() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("leased-src", &[]);
    env.json(&["snapshot", "leased-src", "leased"]);
    env.json(&["restore", "leased", "--name", "user"]);
    let user = common::VmGuard {
        env: &env,
        name: "user".into(),
    };
    let line = assert_error(&env.run(&["snapshots", "rm", "leased"]), 4);
    assert!(line.contains("in use") && line.contains("user"), "{line}");
    assert!(
        env.state_dir
            .join("snapshots/leased/manifest.json")
            .is_file()
    );

    drop(user);
    env.json(&["snapshots", "rm", "leased"]);
}

#[test]
fn snapshots_rm_is_refused_while_a_diff_builds_on_the_snapshot() {
    let env = TestEnv::new();
    let _vm = base_and_diff(&env, "parent-src", "base", "diff-1");
    let line = assert_error(&env.run(&["snapshots", "rm", "base"]), 4);
    assert!(line.contains("parent") && line.contains("diff-1"), "{line}");
    env.json(&["snapshots", "rm", "diff-1"]);
    env.json(&["snapshots", "rm", "base"]);
}

#[test]
fn snapshots_gc_json_removes_an_incomplete_bundle_and_keeps_the_rest() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("gc-src", &[]);
    env.json(&["snapshot", "gc-src", "kept"]);
    let half = incomplete_bundle(&env, "half");
    let report = env.json(&["snapshots", "gc"]);
    assert_shape(
        &report,
        &[
            ("incomplete", &[Ty::Arr]),
            ("leftovers", &[Ty::Arr]),
            ("stale_leases", &[Ty::Arr]),
            ("unused", &[Ty::Arr]),
        ],
    );
    assert_eq!(strings(&report["incomplete"]), ["half"]);
    assert!(strings(&report["unused"]).is_empty());
    assert!(!half.exists());
    assert!(env.state_dir.join("snapshots/kept/manifest.json").is_file());
    assert_eq!(
        stdout(&env.run(&["snapshots", "gc"])),
        "nothing to remove\n"
    );

    // With an age limit, unused complete bundles go too.
    let old = env.json(&["snapshots", "gc", "--older-than-s", "0"]);
    assert_eq!(strings(&old["unused"]), ["kept"]);
    assert!(
        env.json(&["snapshots"])["snapshots"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn snapshots_merge_json_is_a_full_bundle_that_restores() {
    let env = TestEnv::new();
    let _vm = base_and_diff(&env, "merge-src", "base", "diff-1");
    // A diff is not restorable as it is.
    assert_error(&env.run(&["restore", "diff-1", "--name", "too-soon"]), 4);

    let merged = env.json(&["snapshots", "merge", "diff-1", "merged"]);
    assert_bundle_shape(&merged, &[]);
    assert_eq!(
        (&merged["name"], &merged["kind"], &merged["parent"]),
        (&"merged".into(), &"full".into(), &Value::Null)
    );
    assert_eq!(merged["vm"], "merge-src");
    assert!(strings(&merged["leases"]).is_empty());
    assert_eq!(
        env.json(&["snapshots", "verify", "merged", "--memory"])["ok"],
        true
    );

    let vm = env.json(&["restore", "merged", "--name", "from-merged"]);
    let _restored = common::VmGuard {
        env: &env,
        name: "from-merged".into(),
    };
    assert_eq!(vm["state"], "running");
    let details = env.json(&["snapshots", "inspect", "merged"]);
    assert_eq!(strings(&details["leases"]), ["from-merged"]);

    // The name is taken now; a full snapshot is not a diff.
    assert_error(&env.run(&["snapshots", "merge", "diff-1", "merged"]), 4);
    assert_error(&env.run(&["snapshots", "merge", "base", "other"]), 4);
}

#[test]
fn snapshot_errors_have_their_exit_codes() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("codes-src", &[]);
    // A diff needs an earlier snapshot.
    let line = assert_error(&env.run(&["snapshot", "--diff", "codes-src", "d"]), 4);
    assert!(line.contains("no earlier snapshot"), "{line}");
    for args in [
        &["snapshots", "inspect", "ghost"][..],
        &["snapshots", "verify", "ghost"],
        &["--json", "snapshots", "verify", "ghost"],
        &["snapshots", "rm", "ghost"],
        &["snapshots", "merge", "ghost", "new"],
    ] {
        let out = env.run(args);
        assert_error(&out, 3);
        assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
    }
    assert_error(&env.run(&["snapshots", "inspect", "../x"]), 2);
    assert_error(&env.run(&["snapshots", "frobnicate"]), 2);
}

#[test]
fn restore_with_uffd_populate_returns_a_vm_that_no_longer_needs_the_cli() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("uffd-src", &[]);
    env.json(&["snapshot", "uffd-src", "uffd-snap"]);
    let vm = env.json(&[
        "restore",
        "uffd-snap",
        "--name",
        "populated",
        "--uffd",
        "populate",
    ]);
    let _guard = common::VmGuard {
        env: &env,
        name: "populated".into(),
    };
    assert_eq!(vm["state"], "running");
    // The CLI has exited: the VM runs on, its helper copying the rest.
    let again = env.json(&["pause", "populated"]);
    assert_eq!(again["state"], "paused");
}

#[test]
fn restore_with_uffd_on_demand_keeps_its_page_server_after_the_cli_exits() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("od-src", &[]);
    env.json(&["snapshot", "od-src", "od-snap"]);
    let vm = env.json(&["restore", "od-snap", "--name", "od", "--uffd", "on-demand"]);
    let _guard = common::VmGuard {
        env: &env,
        name: "od".into(),
    };
    assert_eq!(vm["state"], "running");
    // A later command (a new manager) finds the VM alive: its page server
    // is a helper process, not the command that restored it.
    let again = env.json(&["inspect", "od"]);
    assert_eq!(again["state"], "running");
    assert_eq!(again["pid"], vm["pid"]);
    env.json(&["stop", "od"]);
    // Its pages were recorded for the next restore's prefetch.
    let bundle = env.state_dir.join("snapshots").join("od-snap");
    assert!(bundle.join("working_set.json").exists());
    let pre = env.json(&["restore", "od-snap", "--name", "pre", "--uffd", "prefetch"]);
    let _guard2 = common::VmGuard {
        env: &env,
        name: "pre".into(),
    };
    assert_eq!(pre["state"], "running");
}

#[test]
fn clone_with_uffd_populate_makes_independent_clones() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("uclone-src", &[]);
    env.json(&["snapshot", "uclone-src", "uclone-snap"]);
    let list = env.json(&[
        "clone",
        "uclone-snap",
        "--count",
        "2",
        "--prefix",
        "u",
        "--uffd",
        "populate",
    ]);
    let _guards: Vec<_> = ["u-0", "u-1"]
        .iter()
        .map(|n| common::VmGuard {
            env: &env,
            name: (*n).into(),
        })
        .collect();
    assert_eq!(names(&list), ["u-0", "u-1"]);
    // A later command (a new manager) finds both running, not killed for a
    // lost page server.
    let ls = env.json(&["ls"]);
    let states: Vec<_> = ls["vms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["name"].as_str().unwrap().starts_with("u-"))
        .map(|v| v["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["running", "running"]);
}

// --- network -------------------------------------------------------------------
//
// Only what needs no root and no network device: the flags, the `net` JSON
// shapes and the refusals. Attaching VMs is tested in the library's
// network-namespace tests.

#[test]
fn net_ls_json_on_an_empty_state_dir_shows_the_default_network() {
    let env = TestEnv::new();
    let out = env.run(&["--json", "net", "ls"]);
    assert_success(&out, &["net", "ls"]);
    assert_eq!(
        stdout(&out),
        "{\"bridge\":\"fhbr0\",\"subnet\":\"172.30.0.0/16\",\"vms\":[]}\n"
    );
    assert_shape(
        &parse_json(&out),
        &[
            ("bridge", &[Ty::Str]),
            ("subnet", &[Ty::Str]),
            ("vms", &[Ty::Arr]),
        ],
    );
    let plain = env.run(&["net"]);
    assert_success(&plain, &["net"]);
    assert_eq!(
        stdout(&plain),
        "bridge fhbr0, subnet 172.30.0.0/16\nNAME  IP  MAC  TAP  PUBLISHED  EGRESS  TX_BYTES  RX_BYTES  DROPPED\n"
    );
}

#[test]
fn network_settings_come_from_flags_or_the_environment() {
    // A read-only command uses its flags and records nothing...
    let env = TestEnv::new();
    let flags = env.json(&[
        "net",
        "ls",
        "--bridge",
        "fhtest0",
        "--subnet",
        "10.77.0.0/24",
    ]);
    assert_eq!(
        (&flags["bridge"], &flags["subnet"]),
        (&"fhtest0".into(), &"10.77.0.0/24".into())
    );
    assert!(!env.state_dir.join("settings.json").exists());
    // ...the first command that may change things records them...
    let (_vm, _) = env.start_vm(
        "first",
        &["--bridge", "fhtest0", "--subnet", "10.77.0.0/24"],
    );
    // ...and the next ones use them without the flags.
    let again = env.json(&["net", "ls"]);
    assert_eq!(
        (&again["bridge"], &again["subnet"]),
        (&"fhtest0".into(), &"10.77.0.0/24".into())
    );

    // Or from the environment.
    let env = TestEnv::new();
    let out = env
        .command(&["--json", "settings"])
        .env("FIREHOST_BRIDGE", "fhenv0")
        .env("FIREHOST_SUBNET", "10.78.0.0/16")
        .env("FIREHOST_UPLINK", "none")
        .env("FIREHOST_DNS", "1.1.1.1,9.9.9.9")
        .env("FIREHOST_HOST_SERVICES", "53/udp,8125/udp")
        .output()
        .unwrap();
    assert_success(&out, &["settings"]);
    let from_env = parse_json(&out);
    assert_eq!(
        (
            &from_env["network"]["bridge"],
            &from_env["network"]["subnet"]
        ),
        (&"fhenv0".into(), &"10.78.0.0/16".into())
    );
    let settings = env.json(&["settings"]);
    assert_eq!(settings["network"]["uplink"], "none");
    assert_eq!(
        settings["network"]["dns"],
        serde_json::json!(["1.1.1.1", "9.9.9.9"])
    );
    assert_eq!(
        settings["network"]["host_services"],
        serde_json::json!(["53/udp", "8125/udp"])
    );
}

#[test]
fn a_command_with_other_network_settings_is_refused_and_changes_nothing() {
    let env = TestEnv::new();
    let (_guard, vm) = env.start_vm("keep", &[]);
    assert_eq!(vm["state"], "running");
    let recorded = std::fs::read(env.state_dir.join("settings.json")).unwrap();

    // A stray FIREHOST_SUBNET in one shell, on a read-only command.
    let out = env
        .command(&["ls"])
        .env("FIREHOST_SUBNET", "10.9.0.0/16")
        .output()
        .unwrap();
    let line = assert_error(&out, 2);
    assert!(
        line.contains("subnet is 172.30.0.0/16 here, not 10.9.0.0/16"),
        "{line}"
    );
    // A flag on a command that changes things.
    let line = assert_error(&env.run(&["stop", "keep", "--bridge", "other0"]), 2);
    assert!(line.contains("bridge is fhbr0 here, not other0"), "{line}");
    // The jail settings too.
    let line = assert_error(&env.run(&["ls", "--chroot-base", "/elsewhere"]), 2);
    assert!(
        line.contains("chroot-base is /srv/jailer here, not /elsewhere"),
        "{line}"
    );
    let line = assert_error(&env.run(&["ls", "--jail-uids", "5000-6000"]), 2);
    assert!(line.contains("jail-uids is 900000-901000 here"), "{line}");
    assert_eq!(
        std::fs::read(env.state_dir.join("settings.json")).unwrap(),
        recorded
    );
    assert_eq!(env.json(&["inspect", "keep"])["state"], "running");

    // Changing them is explicit (allowed here: no live VM is on the
    // network), and later commands follow.
    let set = env.json(&["settings", "set", "--subnet", "10.9.0.0/16"]);
    assert_eq!(set["network"]["subnet"], "10.9.0.0/16");
    assert_eq!(env.json(&["net", "ls"])["subnet"], "10.9.0.0/16");
    assert_eq!(env.json(&["ls"])["vms"].as_array().unwrap().len(), 1);
}

#[test]
fn bad_network_settings_exit_2_with_the_librarys_message() {
    let env = TestEnv::new();
    let cases: &[(&[&str], &str)] = &[
        (&["--subnet", "bogus"], "not an IPv4 CIDR"),
        (&["--subnet", "10.0.0.1/24"], "host bits set"),
        (&["--subnet", "10.0.0.0/31"], "out of range"),
        (&["--bridge", "br:0"], "interface name"),
        (&["--uplink", "a-name-too-long-x"], "interface name"),
        (&["--dns", "1.1.1.1,nope"], "invalid --dns \"nope\""),
        (&["--host-service", "53/udp,0"], "PORT[/tcp|/udp]"),
        (&["--host-service", "53/sctp"], "PORT[/tcp|/udp]"),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["ls"];
        args.extend_from_slice(flags);
        let line = assert_error(&env.run(&args), 2);
        assert!(line.contains(expected), "{flags:?}: {line}");
        let mut run = env.run_args();
        run.extend(["--name".into(), "never".into()]);
        run.extend(flags.iter().map(|f| f.to_string()));
        let run: Vec<&str> = run.iter().map(String::as_str).collect();
        assert_error(&env.run(&run), 2);
    }
    assert!(env.vm_dirs().is_empty(), "{:?}", env.vm_dirs());
}

#[test]
fn bad_run_network_flags_exit_2_before_anything_is_created() {
    let env = TestEnv::new();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--publish", "0:80"],
            "invalid --publish \"0:80\": \"0:80\" is not HOST:GUEST[/tcp|/udp] with ports 1-65535",
        ),
        (&["--publish", "8080"], "is not HOST:GUEST"),
        (&["--publish", "8080:80/icmp"], "is not HOST:GUEST"),
        (
            &["--ip", "300.1.1.1"],
            "invalid --ip \"300.1.1.1\": invalid IPv4 address syntax",
        ),
        (
            &["--mac", "zz"],
            "invalid --mac \"zz\": \"zz\" is not a MAC address",
        ),
        (&["--peer-group", "Web"], "peer group \"Web\""),
        (&["--no-ip-arg"], "--net"),
        (
            &["--subnet", "bogus", "--net"],
            "invalid --subnet \"bogus\"",
        ),
    ];
    for (flags, expected) in cases {
        let mut args = env.run_args();
        args.extend(["--name".into(), "netless".into()]);
        args.extend(flags.iter().map(|f| f.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = env.run(&args);
        let line = assert_error(&out, 2);
        assert!(line.contains(expected), "{flags:?}: {line}");
        assert!(stdout(&out).is_empty());
        assert!(env.vm_dirs().is_empty(), "{flags:?}: {:?}", env.vm_dirs());
    }
}

#[test]
fn inspect_json_of_a_vm_without_a_network_has_net_null() {
    let env = TestEnv::new();
    let (_vm, created) = env.start_vm("no-net", &["--no-start"]);
    assert!(created["net"].is_null(), "{created}");
    let vm = env.json(&["inspect", "no-net"]);
    assert_vm_shape(&vm);
    assert!(vm.as_object().unwrap().contains_key("net"), "{vm}");
    assert!(vm["net"].is_null(), "{vm}");
    let text = stdout(&env.run(&["inspect", "no-net"]));
    assert!(!text.contains("gateway"), "{text}");
}

#[test]
fn net_publish_on_a_vm_without_a_network_is_refused() {
    let env = TestEnv::new();
    let (_vm, _) = env.start_vm("no-net-pub", &["--no-start"]);
    for verb in ["publish", "unpublish"] {
        let out = env.run(&["--json", "net", verb, "no-net-pub", "8080:80"]);
        let line = assert_error(&out, 1);
        assert!(line.contains("VM no-net-pub has no network"), "{line}");
        assert!(stdout(&out).is_empty());
    }
    let line = assert_error(&env.run(&["net", "publish", "no-net-pub", "0:80"]), 2);
    assert!(line.contains("invalid port mapping \"0:80\""), "{line}");
    assert_error(&env.run(&["net", "publish", "ghost", "8080:80"]), 3);
    assert!(env.json(&["inspect", "no-net-pub"])["net"].is_null());
    assert!(env.json(&["net"])["vms"].as_array().unwrap().is_empty());
}

// --- image ------------------------------------------------------------------

/// Whether e2fsprogs is installed where `image build` looks; says why a
/// test skips if not.
fn e2fsprogs_or_skip(test: &str) -> bool {
    let found = |tool: &str| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .any(|dir| dir.join(tool).is_file())
    };
    if ["mkfs.ext4", "debugfs", "tune2fs"].into_iter().all(found) {
        return true;
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {test}: e2fsprogs not installed (apt-get install e2fsprogs)"
    );
    false
}

/// A source tree and an agent script in the test's directory; returns
/// (tree, agent).
fn image_inputs(env: &TestEnv) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let tree = env.path("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::create_dir_all(tree.join("sbin")).unwrap();
    std::fs::write(tree.join("etc/hostname"), b"guest\n").unwrap();
    std::fs::write(tree.join("etc/blob"), vec![7u8; 3 << 20]).unwrap();
    std::os::unix::fs::symlink("/lib/systemd/systemd", tree.join("sbin/init")).unwrap();
    let agent = env.path("agent");
    std::fs::write(&agent, b"#!/bin/sh\necho agent\n").unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    (tree, agent)
}

#[test]
fn image_build_json_describes_the_image() {
    if !e2fsprogs_or_skip("image_build_json_describes_the_image") {
        return;
    }
    let env = TestEnv::new();
    let (tree, agent) = image_inputs(&env);
    let out = env.path("built.ext4");
    let image = env.json(&[
        "image",
        "build",
        "--from",
        tree.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--agent",
        agent.to_str().unwrap(),
        "--read-only",
    ]);
    assert_shape(
        &image,
        &[
            ("out", &[Ty::Str]),
            ("size_mib", &[Ty::Int]),
            ("files", &[Ty::Int]),
            ("agent", &[Ty::Str]),
            ("replaced", &[Ty::Str, Ty::Null]),
            ("read_only", &[Ty::Bool]),
            ("owners_kept", &[Ty::Bool]),
            ("elapsed_ms", &[Ty::Num]),
        ],
    );
    assert_eq!(image["out"], out.to_str().unwrap());
    assert_eq!(image["agent"], "/sbin/init");
    assert_eq!(image["replaced"], "a symbolic link to /lib/systemd/systemd");
    assert_eq!(image["read_only"], true);
    // etc, hostname, blob, sbin, init.
    assert_eq!(image["files"], 5);
    let size_mib = image["size_mib"].as_u64().unwrap();
    assert_eq!(std::fs::metadata(&out).unwrap().len(), size_mib << 20);
    assert!(env.state_dir.metadata().is_err(), "no state directory made");

    // Text output says where the agent went and what it replaced.
    let text = stdout(&env.run(&[
        "image",
        "build",
        "--from",
        tree.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--agent",
        agent.to_str().unwrap(),
        "--agent-beside-init",
        "--force",
    ]));
    assert!(text.contains("agent at /sbin/firehost-agent\n"), "{text}");
}

#[test]
fn image_build_refusals_have_their_exit_codes_and_leave_no_file() {
    if !e2fsprogs_or_skip("image_build_refusals_have_their_exit_codes_and_leave_no_file") {
        return;
    }
    let env = TestEnv::new();
    let (tree, agent) = image_inputs(&env);
    let mut evil = tar::Header::new_old();
    evil.set_size(0);
    evil.as_old_mut().name[..7].copy_from_slice(b"../evil");
    evil.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&evil, &[][..]).unwrap();
    let evil_tar = env.path("evil.tar");
    std::fs::write(&evil_tar, builder.into_inner().unwrap()).unwrap();
    let existing = env.path("existing.ext4");
    std::fs::write(&existing, b"precious").unwrap();
    let (tree, agent, evil_tar, existing) = (
        tree.to_str().unwrap(),
        agent.to_str().unwrap(),
        evil_tar.to_str().unwrap(),
        existing.to_str().unwrap(),
    );
    let new = env.path("new.ext4");
    let new = new.to_str().unwrap();
    let cases: [(&[&str], i32, &str); 5] = [
        (
            &["--from", tree, "--out", existing, "--agent", agent],
            4,
            "exists already",
        ),
        (
            &["--from", evil_tar, "--out", new, "--agent", agent],
            2,
            "tar entry \"../evil\" is refused: its path contains `..`",
        ),
        (
            &["--from", tree, "--out", new, "--agent", "/no/such/agent"],
            2,
            "agent binary \"/no/such/agent\" is not a readable regular file",
        ),
        (
            &[
                "--from",
                tree,
                "--out",
                new,
                "--agent",
                agent,
                "--size-mib",
                "2",
            ],
            2,
            "2 MiB is too small",
        ),
        (
            &[
                "--from",
                tree,
                "--out",
                new,
                "--agent-as-init",
                "--agent-beside-init",
            ],
            2,
            "cannot be used with",
        ),
    ];
    for (flags, code, expected) in cases {
        let args = [&["--json", "image", "build"][..], flags].concat();
        let out = env.run(&args);
        let line = assert_error(&out, code);
        assert!(line.contains(expected), "{flags:?}: {line}");
        assert!(stdout(&out).is_empty());
        assert!(!std::path::Path::new(new).exists(), "{flags:?}");
    }
    assert_eq!(std::fs::read(existing).unwrap(), b"precious");
}

#[test]
fn image_initramfs_json_counts_entries_and_bytes() {
    let env = TestEnv::new();
    let (_, agent) = image_inputs(&env);
    let busybox = env.path("busybox");
    std::fs::write(&busybox, b"#!/bin/sh\necho busybox\n").unwrap();
    let out = env.path("initramfs.cpio.gz");
    let args = [
        "image",
        "initramfs",
        "--agent",
        agent.to_str().unwrap(),
        "--busybox",
        busybox.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let report = env.json(&args);
    assert_shape(
        &report,
        &[
            ("out", &[Ty::Str]),
            ("entries", &[Ty::Int]),
            ("bytes", &[Ty::Int]),
        ],
    );
    // 8 directories, 2 device nodes, init, busybox, 16 applet links.
    assert_eq!(report["entries"], 28);
    assert_eq!(
        report["bytes"].as_u64(),
        Some(std::fs::metadata(&out).unwrap().len())
    );
    let line = assert_error(&env.run(&args), 4);
    assert!(line.contains("--force"), "{line}");
}

/// `firehost-agent`, built beside `firehost`, or `None` (after saying why).
fn agent_or_skip(test: &str) -> Option<String> {
    let agent = common::firehost_bin().with_file_name("firehost-agent");
    if agent.is_file() {
        Some(agent.display().to_string())
    } else {
        let _ = writeln!(
            std::io::stderr(),
            "skipped: {test}: firehost-agent is not built (run cargo test --workspace)"
        );
        None
    }
}

#[test]
fn exec_streams_output_and_passes_the_exit_code_through() {
    let Some(agent) = agent_or_skip("exec_streams_output_and_passes_the_exit_code_through") else {
        return;
    };
    let env = TestEnv::new();
    let agent_env = format!("FAKE_FC_AGENT={agent}");
    let (_guard, vm) = env.start_vm("ex", &["--vmm-env", &agent_env, "--wait-ready", "10"]);
    assert_eq!(vm["vsock"]["guest_cid"], 3);
    assert!(
        vm["vsock"]["uds_path"]
            .as_str()
            .unwrap()
            .ends_with("vsock.sock")
    );
    assert!(
        !vm.to_string().contains("firehost.token"),
        "the token never prints"
    );

    let out = env.run(&[
        "exec",
        "ex",
        "--",
        "sh",
        "-c",
        "echo hi; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.stderr, b"err\n");

    let mut child = env
        .command(&["exec", "-i", "ex", "--", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through stdin")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"through stdin");

    let out = env.run(&["exec", "--timeout-s", "1", "ex", "--", "sleep", "100"]);
    assert_eq!(out.status.code(), Some(124));
    let out = env.run(&["exec", "ex", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15));
}

#[test]
fn cp_copies_files_into_and_out_of_a_vm() {
    let Some(agent) = agent_or_skip("cp_copies_files_into_and_out_of_a_vm") else {
        return;
    };
    let env = TestEnv::new();
    let agent_env = format!("FAKE_FC_AGENT={agent}");
    let (_guard, _) = env.start_vm("cpvm", &["--vmm-env", &agent_env, "--wait-ready", "10"]);
    let local = env.path("local.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| i.to_le_bytes()[1]).collect();
    std::fs::write(&local, &data).unwrap();
    // The fake's guest shares this host's filesystem: "in the VM" is a
    // path in the test's directory.
    let in_vm = env.path("in-vm/copy.bin");
    let target = format!("cpvm:{}", in_vm.display());
    let copied = env.json(&["cp", "--parents", local.to_str().unwrap(), &target]);
    assert_eq!(copied["bytes"], data.len());
    assert_eq!(copied["direction"], "to_vm");
    assert_eq!(std::fs::read(&in_vm).unwrap(), data);

    let back = env.path("back.bin");
    let fetched = env.json(&["cp", &target, back.to_str().unwrap()]);
    assert_eq!(fetched["direction"], "from_vm");
    assert_eq!(std::fs::read(&back).unwrap(), data);

    let out = env.run(&["cp", &target, "-"]);
    assert_eq!(out.stdout, data);

    let missing = format!("cpvm:{}", env.path("nope").display());
    let line = assert_error(&env.run(&["cp", &missing, back.to_str().unwrap()]), 1);
    assert!(
        line.contains("NotFound") || line.contains("not found") || line.contains("No such"),
        "{line}"
    );
    assert_eq!(
        std::fs::read(&back).unwrap(),
        data,
        "a failed copy leaves the old file"
    );
}

#[test]
fn exec_on_a_vm_without_vsock_is_a_usage_error() {
    let env = TestEnv::new();
    let (_guard, vm) = env.start_vm("novsock", &[]);
    assert!(vm["vsock"].is_null());
    let line = assert_error(&env.run(&["exec", "novsock", "--", "true"]), 2);
    assert!(line.contains("vsock"), "{line}");
    let line = assert_error(&env.run(&["--json", "exec", "novsock", "--", "true"]), 2);
    assert!(line.contains("--json"), "{line}");
}

#[test]
fn run_mmds_needs_a_network_and_a_json_object() {
    let env = TestEnv::new();
    let data = env.path("meta.json");
    std::fs::write(&data, br#"{"job": 1}"#).unwrap();
    let mut args = env.run_args();
    args.extend([
        "--name".into(),
        "meta".into(),
        "--mmds".into(),
        data.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let line = assert_error(&env.run(&args), 2);
    assert!(line.contains("network"), "{line}");

    std::fs::write(&data, b"[1, 2]").unwrap();
    let line = assert_error(&env.run(&args), 2);
    assert!(line.contains("not a JSON object"), "{line}");
    std::fs::write(&data, b"{nope").unwrap();
    let line = assert_error(&env.run(&args), 2);
    assert!(line.contains("not JSON"), "{line}");
    assert!(
        env.json(&["ls"])["vms"].as_array().unwrap().is_empty(),
        "nothing was created"
    );
}

// --- jail ------------------------------------------------------------------------
//
// What needs no jailer: the refusals, which come before anything is
// made. A jailed run with the real jailer is tested in the library's
// tests/jail.rs.

#[test]
fn a_jailed_run_without_a_jailer_exits_2_and_leaves_nothing() {
    let env = TestEnv::new();
    let base = env.path("jails");
    std::fs::create_dir(&base).unwrap();
    let mut args = env.run_args();
    args.extend(
        [
            "--name",
            "jailed",
            "--jail",
            "--jailer",
            "/nonexistent/jailer",
            "--chroot-base",
        ]
        .map(String::from),
    );
    args.push(base.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let line = assert_error(&env.run(&args), 2);
    assert!(line.contains("jailer"), "{line}");
    assert!(env.vm_dirs().is_empty());
    assert_eq!(std::fs::read_dir(&base).unwrap().count(), 0);
}

#[test]
fn jail_limits_and_settings_are_checked_before_anything_is_made() {
    let env = TestEnv::new();
    for (flags, wanted) in [
        (&["--cpu-weight", "0"][..], "cpu_weight"),
        (&["--cpus", "two"][..], "cpus"),
        (&["--uid", "0"][..], "root"),
        (&["--jail", "--jail-uids", "9-3"][..], "--jail-uids"),
        (&["--jail", "--cgroup-version", "3"][..], "cgroup version"),
    ] {
        let mut args = env.run_args();
        args.extend(["--name".to_owned(), "limited".to_owned()]);
        args.extend(flags.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let line = assert_error(&env.run(&args), 2);
        assert!(line.contains(wanted), "{flags:?}: {line}");
        assert!(env.vm_dirs().is_empty(), "{flags:?}");
    }
}

#[test]
fn an_unjailed_vm_has_jail_null_in_its_json() {
    let env = TestEnv::new();
    let (_vm, vm) = env.start_vm("free", &[]);
    assert!(vm["jail"].is_null(), "{vm}");
}
