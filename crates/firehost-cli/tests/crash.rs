//! The fault-injection suite: a `firehost` command killed with SIGKILL (as
//! the OOM killer or a crash would) at each step of create, start, stop,
//! snapshot and restore, while the VMM is busy with that step; then the
//! next commands must find every live VM alive and in the right state, and
//! everything else cleaned up.
//!
//! The VMM is `fake-firecracker` with `FAKE_FC_DELAY_MS` (the step's
//! request takes seconds, and, as in Firecracker, holds up every other
//! request meanwhile) and `FAKE_FC_REQUEST_LOG` (which says when the
//! command is waiting on that step, so the kill lands there for certain).

mod common;

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use common::{TestEnv, assert_error, assert_success, process_alive, wait_until};
use serde_json::Value;

/// How long the interrupted step keeps the VMM busy.
const BUSY_MS: u64 = 3000;
const LONG: Duration = Duration::from_secs(30);

/// The `--vmm-env` flags that make a VMM slow to answer `step` and log
/// each request's arrival in the test's `requests.log`.
fn slow_at(env: &TestEnv, step: &str) -> Vec<String> {
    vec![
        "--vmm-env".to_owned(),
        format!("FAKE_FC_DELAY_MS={step}={BUSY_MS}"),
        "--vmm-env".to_owned(),
        format!("FAKE_FC_REQUEST_LOG={}", env.path("requests.log").display()),
    ]
}

/// A command started in the background, to be killed at a step.
struct Interrupted {
    child: Child,
    log: PathBuf,
}

impl Interrupted {
    /// Starts `firehost ARGS`; the VMMs it starts are slow at `step`.
    fn start(env: &TestEnv, step: &str, args: &[&str]) -> Interrupted {
        let mut all = slow_at(env, step);
        all.extend(args.iter().map(|a| a.to_string()));
        Self::start_plain(env, &strs(&all))
    }

    /// Starts `firehost ARGS` (on a VM started with [`slow_at`]).
    fn start_plain(env: &TestEnv, args: &[&str]) -> Interrupted {
        let child = env.command(args).spawn().expect("firehost starts");
        Interrupted {
            child,
            log: env.path("requests.log"),
        }
    }

    /// Waits until the command is waiting on `step`, then kills it.
    fn kill_at(self, step: &str) {
        self.kill_at_nth(step, 1);
    }

    /// Waits until the command is waiting on the `nth` request of `step`,
    /// then kills it.
    fn kill_at_nth(mut self, step: &str, nth: usize) {
        wait_until(&format!("{step} #{nth} to arrive"), LONG, || {
            std::fs::read_to_string(&self.log)
                .ok()
                .filter(|log| log.lines().filter(|l| *l == step).count() >= nth)
        });
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert!(!status.success(), "the command was killed: {status}");
    }
}

/// The VMM serving VM `name`'s API socket, if any.
fn vmm_of(env: &TestEnv, name: &str) -> Option<i32> {
    let socket = env.state_dir.join("vms").join(name).join("api.sock");
    firehost::vmm::find_by_api_socket(&socket)
        .into_iter()
        .next()
}

/// A VM object's `pid`.
fn pid_of(vm: &Value) -> i32 {
    i32::try_from(vm["pid"].as_i64().expect("a VM with a VMM")).expect("a pid")
}

/// Runs `firehost --json inspect name` until the VMM answers again.
fn inspect_when_answering(env: &TestEnv, name: &str) -> Value {
    wait_until("the VMM to answer again", LONG, || {
        let vm = env.json(&["inspect", name]);
        (vm["busy"] == false).then_some(vm)
    })
}

fn run_args(env: &TestEnv, name: &str) -> Vec<String> {
    let mut args = env.run_args();
    args.extend(["--name".into(), name.into()]);
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn intents(env: &TestEnv) -> Vec<String> {
    match std::fs::read_dir(env.state_dir.join("intents")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// A create cut short at `step`: a read-only command shows nothing, the
/// next command that may change things reaps the VMM and its directory,
/// and a VM that was already running is untouched throughout.
fn a_run_killed_at(step: &str) {
    let env = TestEnv::new();
    let (_keep, kept) = env.start_vm("bystander", &[]);
    let killed = Interrupted::start(&env, step, &strs(&run_args(&env, "cut")));
    killed.kill_at(step);
    let orphan = vmm_of(&env, "cut").expect("the VMM outlived the command");

    let listed = env.json(&["ls"]);
    let names: Vec<&Value> = listed["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["name"])
        .collect();
    assert_eq!(names, ["bystander"], "{step}: a half-made VM is no VM");
    assert!(
        process_alive(orphan),
        "{step}: read-only commands change nothing"
    );

    // The next command that may change things settles the create.
    let _next = {
        let (guard, vm) = env.start_vm("next", &[]);
        assert_eq!(vm["state"], "running");
        guard
    };
    assert!(!process_alive(orphan), "{step}: the orphan VMM is reaped");
    assert!(!env.state_dir.join("vms/cut").exists(), "{step}");
    assert!(intents(&env).is_empty(), "{step}: {:?}", intents(&env));
    let bystander = env.json(&["inspect", "bystander"]);
    assert_eq!(bystander["state"], "running");
    assert_eq!(bystander["pid"], kept["pid"], "{step}: untouched");
}

#[test]
fn a_run_killed_while_the_vmm_configures_leaves_nothing() {
    a_run_killed_at("PUT /machine-config");
}

#[test]
fn a_run_killed_while_the_guest_starts_leaves_nothing() {
    a_run_killed_at("PUT /actions");
}

#[test]
fn a_stop_killed_midway_leaves_the_vm_stopped_not_failed() {
    let env = TestEnv::new();
    // Every action is slow (InstanceStart too): Ctrl-Alt-Del is slow to
    // be taken; the guest honours it after.
    let slow = slow_at(&env, "PUT /actions");
    let (_guard, vm) = env.start_vm("halting", &strs(&slow));
    let pid = pid_of(&vm);
    std::fs::remove_file(env.path("requests.log")).unwrap();
    let killed = Interrupted::start_plain(&env, &["stop", "halting"]);
    killed.kill_at("PUT /actions");
    wait_until("the guest to shut down", LONG, || {
        (!process_alive(pid)).then_some(())
    });
    let vm = env.json(&["inspect", "halting"]);
    assert_eq!(vm["state"], "stopped", "{vm}");
    assert_success(&env.run(&["rm", "halting"]), &["rm"]);
    assert!(env.vm_dirs().is_empty());
}

/// A snapshot cut short at the `nth` request of `step`, with the VMM busy
/// with it: the VM is reported busy (never killed), then resumed, and the
/// bundle kept if it was `sealed` before the kill, removed if not.
fn a_snapshot_killed_at(step: &str, nth: usize, sealed: bool) {
    let env = TestEnv::new();
    let slow = slow_at(&env, step);
    let (_guard, vm) = env.start_vm("src", &strs(&slow));
    let pid = pid_of(&vm);
    let killed = Interrupted::start_plain(&env, &["snapshot", "src", "snap"]);
    killed.kill_at_nth(step, nth);

    // At once: the VMM is busy with the step.
    let seen = env.json(&["inspect", "src"]);
    assert_eq!(seen["busy"], true, "{step}: {seen}");
    assert_eq!(seen["interrupted_snapshot"], "snap", "{step}");
    assert_eq!(seen["pid"], pid, "{step}");
    let line = assert_error(&env.run(&["pause", "src"]), 4);
    assert!(line.contains("busy"), "{step}: {line}");
    assert!(process_alive(pid), "{step}: a busy VMM is never killed");
    // Nor is the bundle it may be writing collected as a crash leftover.
    let gc = env.json(&["snapshots", "gc"]);
    assert_eq!(gc["incomplete"], serde_json::json!([]), "{step}: {gc}");
    assert!(env.state_dir.join("snapshots/snap").is_dir(), "{step}");

    // Once it answers, the next command that may change things settles
    // the interrupted snapshot (a read-only one only reports it).
    let answering = inspect_when_answering(&env, "src");
    assert_eq!(
        answering["interrupted_snapshot"], "snap",
        "{step}: {answering}"
    );
    let (_next, _) = env.start_vm("next", &[]);
    let settled = env.json(&["inspect", "src"]);
    assert_eq!(settled["state"], "running", "{step}: resumed: {settled}");
    assert_eq!(settled["interrupted_snapshot"], Value::Null, "{step}");
    assert_eq!(settled["pid"], pid, "{step}");
    assert!(intents(&env).is_empty(), "{step}: {:?}", intents(&env));
    let snapshots = env.json(&["snapshots"]);
    assert_eq!(snapshots["incomplete"], serde_json::json!([]), "{step}");
    let names: Vec<&Value> = snapshots["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["name"])
        .collect();
    if sealed {
        assert_eq!(names, ["snap"], "{step}: a sealed bundle is kept");
        let verified = env.json(&["snapshots", "verify", "snap"]);
        assert_eq!(verified["ok"], true, "{step}: {verified}");
    } else {
        assert!(names.is_empty(), "{step}: {names:?}");
        assert!(!env.state_dir.join("snapshots/snap").exists(), "{step}");
    }

    // And the VM works as before.
    let taken = env.json(&["snapshot", "src", "again"]);
    assert_eq!(taken["vm_state"], "running");
}

#[test]
fn a_snapshot_killed_while_the_vm_pauses_leaves_it_running() {
    a_snapshot_killed_at("PATCH /vm", 1, false);
}

#[test]
fn a_snapshot_killed_while_firecracker_writes_it_leaves_the_vm_running() {
    a_snapshot_killed_at("PUT /snapshot/create", 1, false);
}

#[test]
fn a_snapshot_killed_before_it_is_sealed_is_discarded() {
    // The version is asked for after Firecracker wrote the files and
    // before the manifest seals them.
    a_snapshot_killed_at("GET /version", 1, false);
}

#[test]
fn a_snapshot_killed_while_the_vm_resumes_keeps_the_sealed_bundle() {
    // The second PATCH /vm is the resume after the seal.
    a_snapshot_killed_at("PATCH /vm", 2, true);
}

#[test]
fn a_restore_killed_while_the_snapshot_loads_leaves_nothing() {
    let env = TestEnv::new();
    let (_guard, _vm) = env.start_vm("origin", &[]);
    env.json(&["snapshot", "origin", "base"]);
    let killed = Interrupted::start(
        &env,
        "PUT /snapshot/load",
        &["restore", "base", "--name", "copy"],
    );
    killed.kill_at("PUT /snapshot/load");
    let orphan = vmm_of(&env, "copy").expect("the VMM outlived the command");

    let (_after, _) = env.start_vm("after", &[]);
    assert!(!process_alive(orphan), "the half-restored VMM is reaped");
    assert!(!env.state_dir.join("vms/copy").exists());
    // The bundle no longer counts the dead restore as a user.
    let bundle = &env.json(&["snapshots"])["snapshots"][0];
    assert_eq!(bundle["name"], "base");
    assert_eq!(bundle["leases"], serde_json::json!([]), "{bundle}");
    assert_success(&env.run(&["snapshots", "rm", "base"]), &["snapshots", "rm"]);
}

#[test]
fn an_unreadable_record_is_shown_refused_and_removed_only_by_rm_f() {
    let env = TestEnv::new();
    let (_guard, vm) = env.start_vm("odd", &[]);
    let pid = pid_of(&vm);
    let record = env.state_dir.join("vms/odd/record.json");
    let text = std::fs::read_to_string(&record).unwrap();
    let mut newer: Value = serde_json::from_str(&text).unwrap();
    newer["format"] = 99.into();
    std::fs::write(&record, newer.to_string()).unwrap();

    let listed = env.json(&["ls"]);
    assert_eq!(listed["vms"], serde_json::json!([]));
    let unreadable = &listed["unreadable"][0];
    assert_eq!(unreadable["name"], "odd");
    assert_eq!(unreadable["state"], "unreadable");
    assert_eq!(unreadable["pid"], pid);
    assert!(
        unreadable["reason"].as_str().unwrap().contains("99"),
        "{unreadable}"
    );
    let human = common::stdout(&env.run(&["ls"]));
    assert!(human.contains("odd is unreadable"), "{human}");
    assert_eq!(env.json(&["inspect", "odd"]), *unreadable);
    for refused in [&["stop", "odd"][..], &["pause", "odd"], &["rm", "odd"]] {
        let line = assert_error(&env.run(refused), 4);
        assert!(line.contains("unreadable"), "{refused:?}: {line}");
    }
    assert!(process_alive(pid), "nothing acted on it");
    assert!(record.exists());

    let removed = env.json(&["rm", "-f", "odd"]);
    assert_eq!(removed["stopped"], true);
    assert!(!process_alive(pid));
    assert!(env.vm_dirs().is_empty());
}
