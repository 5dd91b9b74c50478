//! The VM lifecycle against a VMM process: fake-firecracker by default, a
//! real Firecracker with `FIREHOST_FIRECRACKER` (see `common`).

mod common;

use firehost_testkit::fake_only;
use std::time::Duration;

use common::{TestHost, id, process_alive, within};
use firehost::api::models::InstanceState;
use firehost::manager::{SnapshotOptions, StopOptions};
use firehost::snapshot::{MANIFEST_FILE, MEMORY_FILE, SnapshotManifest, VMSTATE_FILE};
use firehost::{ExitReason, Operation, VmError, VmSpec, VmState};

const LONG: Duration = Duration::from_secs(20);

#[tokio::test]
async fn create_configures_the_vmm_without_booting_it() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("create-only");
    let info = manager.create(&vm, host.spec()).await.unwrap();
    assert_eq!(info.state, VmState::Created);
    let pid = info.pid.expect("a VMM runs");
    assert!(process_alive(pid));

    let api = manager.api(&vm).await.unwrap().unwrap();
    let instance = api.describe_instance().await.unwrap();
    assert_eq!(instance.state, InstanceState::NotStarted);
    let config = api.get_export_vm_config().await.unwrap();
    let machine = config.machine_config.expect("machine config");
    assert_eq!((machine.vcpu_count, machine.mem_size_mib), (1, 128));
    let drives = config.drives.unwrap_or_default();
    assert_eq!(drives.len(), 1);
    assert_eq!(drives[0].drive_id, "rootfs");
    assert!(drives[0].is_root_device);
}

#[tokio::test]
async fn started_vm_runs_pauses_and_resumes() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("cycle");
    manager.create(&vm, host.spec()).await.unwrap();
    assert_eq!(manager.start(&vm).await.unwrap().state, VmState::Running);
    let api = manager.api(&vm).await.unwrap().unwrap();
    assert_eq!(
        api.describe_instance().await.unwrap().state,
        InstanceState::Running
    );

    assert_eq!(manager.pause(&vm).await.unwrap().state, VmState::Paused);
    assert_eq!(
        api.describe_instance().await.unwrap().state,
        InstanceState::Paused
    );
    assert_eq!(manager.resume(&vm).await.unwrap().state, VmState::Running);
    assert_eq!(
        api.describe_instance().await.unwrap().state,
        InstanceState::Running
    );
    manager.stop(&vm, StopOptions::default()).await.unwrap();
    manager.destroy(&vm).await.unwrap();
}

#[tokio::test]
async fn spec_overrides_reach_the_vmm() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("sized");
    let spec = VmSpec {
        vcpus: Some(2),
        mem_mib: Some(256),
        boot_args: Some("console=ttyS0 quiet".into()),
        rootfs_read_only: Some(true),
        ..VmSpec::default()
    };
    manager.create(&vm, spec).await.unwrap();
    let api = manager.api(&vm).await.unwrap().unwrap();
    let config = api.get_export_vm_config().await.unwrap();
    let machine = config.machine_config.unwrap();
    assert_eq!((machine.vcpu_count, machine.mem_size_mib), (2, 256));
    assert_eq!(
        config.boot_source.unwrap().boot_args.as_deref(),
        Some("console=ttyS0 quiet")
    );
    assert_eq!(config.drives.unwrap()[0].is_read_only, Some(true));
}

#[tokio::test]
async fn stop_ends_the_vmm_and_removes_its_socket() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("stopper");
    let info = manager.run(&vm, host.spec()).await.unwrap();
    let pid = info.pid.unwrap();
    let stopped = within("stop", LONG, manager.stop(&vm, StopOptions::default()))
        .await
        .unwrap();
    assert!(stopped.stopped);
    let VmState::Stopped { exit } = &stopped.info.state else {
        panic!("not stopped: {:?}", stopped.info.state);
    };
    // The fake's guest honours Ctrl-Alt-Del (exit 0); the real halt-loop
    // guest does not, so SIGTERM ends that VMM.
    let expected = if host.backend.is_fake() {
        ExitReason::Code(0)
    } else {
        ExitReason::Signal(15)
    };
    assert_eq!(*exit, expected);
    assert_eq!(stopped.info.pid, None);
    assert!(!process_alive(pid));
    assert!(!info.api_socket.exists());
    assert!(manager.api(&vm).await.unwrap().is_none());
}

#[tokio::test]
async fn stop_without_graceful_signals_the_vmm() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("term");
    manager.run(&vm, host.spec()).await.unwrap();
    let options = StopOptions {
        graceful: Some(false),
        grace: None,
    };
    let stopped = manager.stop(&vm, options).await.unwrap();
    assert_eq!(
        stopped.info.state,
        VmState::Stopped {
            exit: ExitReason::Signal(15)
        }
    );
}

#[tokio::test]
async fn stop_escalates_to_sigkill_when_sigterm_is_ignored() {
    let host = TestHost::new();
    fake_only!("a VMM that ignores SIGTERM");
    // An ignored signal stays ignored across exec: the wrapper makes the
    // fake deaf to SIGTERM.
    let wrapper = host.dir.path().join("deaf-firecracker");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ntrap '' TERM\nexec {} \"$@\"\n",
            host.backend.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut config = host.config();
    config.firecracker = wrapper;
    config.timeouts.stop_grace = Duration::from_millis(300);
    let manager = firehost::Manager::open(config).await.unwrap();
    let vm = id("deaf");
    manager.create(&vm, host.spec()).await.unwrap();
    let stopped = within("stop", LONG, manager.stop(&vm, StopOptions::default()))
        .await
        .unwrap();
    assert_eq!(
        stopped.info.state,
        VmState::Stopped {
            exit: ExitReason::Signal(9)
        }
    );
}

#[tokio::test]
async fn snapshot_of_running_vm_writes_a_bundle_and_resumes() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("snapped");
    manager.run(&vm, host.spec()).await.unwrap();
    let name = "snap-1".parse().unwrap();
    let snap = within(
        "snapshot",
        LONG,
        manager.snapshot(&vm, &name, SnapshotOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(manager.get(&vm).await.unwrap().state, VmState::Running);
    for file in [VMSTATE_FILE, MEMORY_FILE, MANIFEST_FILE] {
        assert!(snap.dir.join(file).is_file(), "{file} missing");
    }
    let manifest = SnapshotManifest::load(&snap.dir).unwrap();
    assert_eq!(manifest, snap.manifest);
    assert_eq!(manifest.source_vm, vm);
    assert_eq!(manifest.memory_bytes, 128 << 20);
    assert!(manifest.firecracker_version.starts_with("1."));

    // The bundle is independent of the VM.
    manager.stop(&vm, StopOptions::default()).await.unwrap();
    manager.destroy(&vm).await.unwrap();
    assert!(snap.dir.join(MEMORY_FILE).is_file());
}

#[tokio::test]
async fn snapshot_without_resume_leaves_the_vm_paused() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("stay-paused");
    manager.run(&vm, host.spec()).await.unwrap();
    let name = "held".parse().unwrap();
    manager
        .snapshot(
            &vm,
            &name,
            SnapshotOptions {
                resume: false,
                ..SnapshotOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(manager.get(&vm).await.unwrap().state, VmState::Paused);
    let api = manager.api(&vm).await.unwrap().unwrap();
    assert_eq!(
        api.describe_instance().await.unwrap().state,
        InstanceState::Paused
    );
}

#[tokio::test]
async fn snapshot_name_in_use_is_refused_and_the_old_bundle_kept() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("twice");
    manager.run(&vm, host.spec()).await.unwrap();
    let name = "same".parse().unwrap();
    let first = manager
        .snapshot(&vm, &name, SnapshotOptions::default())
        .await
        .unwrap();
    let err = manager
        .snapshot(&vm, &name, SnapshotOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::SnapshotExists { .. }), "{err:?}");
    assert!(first.dir.join(MANIFEST_FILE).is_file());
    assert_eq!(manager.get(&vm).await.unwrap().state, VmState::Running);
}

#[tokio::test]
async fn failed_snapshot_removes_the_partial_bundle_and_resumes() {
    let host = TestHost::new();
    fake_only!("injects a snapshot failure");
    let config = host.config_with_faults(&[("FAKE_FC_FAIL", "PUT /snapshot/create")]);
    let manager = firehost::Manager::open(config).await.unwrap();
    let vm = id("snapfail");
    manager.run(&vm, host.spec()).await.unwrap();
    let name = "broken".parse().unwrap();
    let err = manager
        .snapshot(&vm, &name, SnapshotOptions::default())
        .await
        .unwrap_err();
    let (status, message) = err.fault().expect("a Firecracker fault");
    assert_eq!((status.as_u16(), message), (400, "injected failure"));
    assert!(!manager.snapshots_dir().join("broken").exists());
    assert_eq!(manager.get(&vm).await.unwrap().state, VmState::Running);
    let api = manager.api(&vm).await.unwrap().unwrap();
    assert_eq!(
        api.describe_instance().await.unwrap().state,
        InstanceState::Running
    );
}

/// Runs `op` and checks it is refused as an illegal transition, leaving the
/// VM's state as it was.
async fn assert_refused(
    manager: &firehost::Manager,
    vm: &firehost::VmId,
    op: Operation,
    result: Result<(), VmError>,
) {
    let before = manager.get(vm).await.unwrap().state;
    match result {
        Err(VmError::Transition { refused, .. }) => assert_eq!(refused.op, op),
        other => panic!("{op} was not refused: {other:?}"),
    }
    assert_eq!(manager.get(vm).await.unwrap().state, before);
}

#[tokio::test]
async fn illegal_transitions_are_refused_and_change_nothing() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("strict");
    manager.create(&vm, host.spec()).await.unwrap();
    let snap = "never".parse().unwrap();

    // Created: no snapshot, pause or resume.
    let r = manager
        .snapshot(&vm, &snap, SnapshotOptions::default())
        .await;
    assert_refused(&manager, &vm, Operation::Snapshot, r.map(drop)).await;
    assert!(!manager.snapshots_dir().join("never").exists());
    let r = manager.pause(&vm).await;
    assert_refused(&manager, &vm, Operation::Pause, r.map(drop)).await;
    let r = manager.resume(&vm).await;
    assert_refused(&manager, &vm, Operation::Resume, r.map(drop)).await;

    // Running: no second start, no destroy.
    manager.start(&vm).await.unwrap();
    let r = manager.start(&vm).await;
    assert_refused(&manager, &vm, Operation::Start, r.map(drop)).await;
    let r = manager.destroy(&vm).await;
    assert_refused(&manager, &vm, Operation::Destroy, r).await;
    let r = manager.resume(&vm).await;
    assert_refused(&manager, &vm, Operation::Resume, r.map(drop)).await;

    // Stopped: nothing but destroy.
    manager.stop(&vm, StopOptions::default()).await.unwrap();
    let r = manager.start(&vm).await;
    assert_refused(&manager, &vm, Operation::Start, r.map(drop)).await;
    // Stopping it again succeeds, says so and changes nothing.
    let before = manager.get(&vm).await.unwrap();
    let again = manager.stop(&vm, StopOptions::default()).await.unwrap();
    assert!(!again.stopped);
    assert_eq!(again.info, before);

    // Destroyed: gone.
    manager.destroy(&vm).await.unwrap();
    assert!(matches!(
        manager.start(&vm).await,
        Err(VmError::NotFound { .. })
    ));
}

#[tokio::test]
async fn destroy_of_a_created_vm_kills_its_vmm_and_removes_its_directory() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("gone");
    let info = manager.create(&vm, host.spec()).await.unwrap();
    manager.destroy(&vm).await.unwrap();
    assert!(!process_alive(info.pid.unwrap()));
    assert!(!info.dir.exists());
    assert!(manager.list().await.is_empty());
    assert!(matches!(
        manager.get(&vm).await,
        Err(VmError::NotFound { .. })
    ));
}

#[tokio::test]
async fn vmm_that_dies_marks_the_vm_failed_with_status_and_console() {
    let host = TestHost::new();
    fake_only!("makes the guest crash");
    let config = host.config_with_faults(&[("FAKE_FC_EXIT_ON_START", "3")]);
    let manager = firehost::Manager::open(config).await.unwrap();
    let vm = id("crasher");
    manager.create(&vm, host.spec()).await.unwrap();
    let mut changes = manager.subscribe(&vm).unwrap();
    manager.start(&vm).await.unwrap();
    let failed = within(
        "the VM to fail",
        LONG,
        changes.wait_for(|i| matches!(i, Some(i) if !i.state.is_live())),
    )
    .await
    .unwrap()
    .clone()
    .unwrap();
    let VmState::Failed { exit, console_tail } = failed.state else {
        panic!("not failed: {:?}", failed.state);
    };
    assert_eq!(exit, ExitReason::Code(3));
    assert!(
        console_tail.iter().any(|l| l.contains("Linux version")),
        "{console_tail:?}"
    );
    // A failed VM can be destroyed.
    manager.destroy(&vm).await.unwrap();
    assert!(host.vm_dirs().is_empty());
}

#[tokio::test]
async fn console_holds_the_guest_boot_output() {
    let host = TestHost::new();
    fake_only!("the halt-loop kernel prints nothing");
    let manager = host.manager().await;
    let vm = id("talker");
    manager.run(&vm, host.spec()).await.unwrap();
    let ring = manager.console(&vm).await.unwrap();
    within(
        "the init line",
        LONG,
        ring.wait_for_line(|l| l.text.contains("init started")),
    )
    .await;
    let tail = manager.console_tail(&vm, 200).await.unwrap();
    assert!(tail.iter().any(|l| l.contains("Linux version")), "{tail:?}");
}

#[tokio::test]
async fn different_vms_do_not_wait_for_each_other() {
    let host = TestHost::new();
    fake_only!("slows one request down");
    let log = host.dir.path().join("requests.log");
    let config = host.config_with_faults(&[
        ("FAKE_FC_DELAY_MS", "PUT /snapshot/create=3000"),
        ("FAKE_FC_REQUEST_LOG", log.to_str().unwrap()),
    ]);
    let manager = firehost::Manager::open(config).await.unwrap();
    let (slow, fast) = (id("slow"), id("fast"));
    manager.run(&slow, host.spec()).await.unwrap();
    manager.run(&fast, host.spec()).await.unwrap();
    let name = "slow-snap".parse().unwrap();
    let snapshot = tokio::spawn({
        let manager = manager.clone();
        let slow = slow.clone();
        async move {
            manager
                .snapshot(&slow, &name, SnapshotOptions::default())
                .await
        }
    });
    // The snapshot holds the slow VM's lock while its VMM writes the
    // snapshot (which, as in Firecracker, holds up that VMM's API): wait
    // until the request has arrived.
    within("the snapshot request to arrive", LONG, async {
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("PUT /snapshot/create\n")
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    manager.pause(&fast).await.unwrap();
    manager.resume(&fast).await.unwrap();
    manager.stop(&fast, StopOptions::default()).await.unwrap();
    manager.destroy(&fast).await.unwrap();
    assert!(
        !snapshot.is_finished(),
        "the other VM's operations should not have waited for the snapshot"
    );
    snapshot.await.unwrap().unwrap();
}

#[tokio::test]
async fn concurrent_creates_of_one_id_yield_one_vm_and_one_error() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("race");
    let (a, b) = tokio::join!(
        manager.create(&vm, host.spec()),
        manager.create(&vm, host.spec())
    );
    let results = [a, b];
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    let err = results.into_iter().find_map(Result::err).unwrap();
    assert!(matches!(err, VmError::AlreadyExists { .. }), "{err:?}");
    assert_eq!(host.vm_dirs(), ["race"]);
    assert_eq!(manager.list().await.len(), 1);
    assert_eq!(host.vmm_pids(&vm).len(), 1);
}

#[tokio::test]
async fn many_vms_run_side_by_side() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let ids: Vec<_> = (0..8).map(|i| id(&format!("vm-{i}"))).collect();
    let runs = ids.iter().map(|vm| {
        let (manager, vm, spec) = (manager.clone(), vm.clone(), host.spec());
        async move { manager.run(&vm, spec).await }
    });
    for result in futures_join_all(runs).await {
        assert_eq!(result.unwrap().state, VmState::Running);
    }
    let listed: Vec<_> = manager.list().await.into_iter().map(|i| i.id).collect();
    assert_eq!(listed, ids);
    for vm in &ids {
        manager.stop(vm, StopOptions::default()).await.unwrap();
        manager.destroy(vm).await.unwrap();
    }
    assert!(host.vm_dirs().is_empty());
}

/// `join_all` without pulling in the futures crate for one test.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn vmm_log_and_metrics_land_in_the_vm_directory() {
    let host = TestHost::new();
    let mut config = host.config();
    config.vmm_log = Some(firehost::vmm::LogLevel::Info);
    config.vmm_metrics = true;
    let manager = firehost::Manager::open(config).await.unwrap();
    let vm = id("observed");
    let info = manager.run(&vm, host.spec()).await.unwrap();
    let api = manager.api(&vm).await.unwrap().unwrap();
    api.create_sync_action(&firehost::api::models::InstanceActionInfo {
        action_type: firehost::api::models::ActionType::FlushMetrics,
    })
    .await
    .unwrap();
    // The log keeper copies them from Firecracker's FIFOs as they come.
    let read = |name: &str| std::fs::read_to_string(info.dir.join(name)).unwrap_or_default();
    common::poll_until("Firecracker's log", LONG, || {
        (!read("firecracker.log").is_empty()).then_some(())
    })
    .await;
    let first = common::poll_until("a whole metrics line", LONG, || {
        let metrics = read("metrics.json");
        metrics
            .contains('\n')
            .then(|| metrics.lines().next().unwrap_or_default().to_owned())
    })
    .await;
    let parsed: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert!(parsed.is_object());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(info.dir.join("metrics.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "metrics file is private");
}

#[tokio::test]
async fn console_file_target_writes_the_console_to_disk() {
    let host = TestHost::new();
    fake_only!("the halt-loop kernel prints nothing");
    let mut config = host.config();
    config.console = firehost::manager::ConsoleTarget::File;
    let manager = firehost::Manager::open(config).await.unwrap();
    let vm = id("filed");
    let info = manager.run(&vm, host.spec()).await.unwrap();
    let file = info.console_file.clone().unwrap();
    within("the console file", LONG, async {
        loop {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if text.contains("init started") {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let tail = manager.console_tail(&vm, 5).await.unwrap();
    assert!(tail.iter().any(|l| l.contains("init started")), "{tail:?}");
}

/// A VM spec that writes to the test host's image.
fn writing() -> VmSpec {
    VmSpec {
        rootfs_read_only: Some(false),
        ..VmSpec::default()
    }
}

/// Two guests writing one image corrupt it: a second live VM that would
/// write to a file another writes to is refused, names the other, and
/// leaves nothing. Once the writer's VMM is gone, the file is free.
#[tokio::test]
async fn a_second_live_writer_of_one_image_is_refused_until_the_first_is_gone() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let (first, second) = (id("writer-1"), id("writer-2"));
    manager.run(&first, writing()).await.unwrap();

    let err = manager.run(&second, writing()).await.unwrap_err();
    match &err {
        VmError::DriveInUse {
            id, drive, holder, ..
        } => assert_eq!((id, drive.as_str(), holder), (&second, "rootfs", &first)),
        other => panic!("{other:?}"),
    }
    assert_eq!(err.kind(), firehost::ErrorKind::Conflict);
    assert_eq!(host.vm_dirs(), [first.as_str()]);
    assert!(host.vmm_pids(&second).is_empty());

    // Through another spelling of the same file: refused too.
    let link = host.dir.path().join("same-image");
    std::os::unix::fs::symlink(&host.rootfs, &link).unwrap();
    let aliased = VmSpec {
        rootfs: Some(link),
        ..writing()
    };
    let err = manager.run(&second, aliased).await.unwrap_err();
    assert!(matches!(err, VmError::DriveInUse { .. }), "{err:?}");

    // Reading it is fine, and so is sharing it on purpose (on both sides).
    manager.run(&second, VmSpec::default()).await.unwrap();
    let shared = VmSpec {
        rootfs_shared: true,
        ..writing()
    };
    let err = manager
        .run(&id("sharer"), shared.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::DriveInUse { .. }), "{err:?}");

    // The writer stops: its file is free.
    manager.stop(&first, StopOptions::default()).await.unwrap();
    manager.run(&id("writer-3"), writing()).await.unwrap();
    manager
        .stop(&id("writer-3"), StopOptions::default())
        .await
        .unwrap();
    manager.run(&id("sharer-1"), shared.clone()).await.unwrap();
    manager.run(&id("sharer-2"), shared).await.unwrap();
}

/// A manager that re-opens the state directory holds the files of the VMs
/// it re-attaches; a VM whose VMM crashed holds nothing.
#[tokio::test]
async fn writers_are_held_across_a_restart_and_released_by_a_crash() {
    let host = TestHost::new();
    let writer = id("writer");
    let pid = {
        let manager = host.manager().await;
        manager.run(&writer, writing()).await.unwrap().pid.unwrap()
    };
    let manager = host.manager().await;
    let err = manager.run(&id("late"), writing()).await.unwrap_err();
    assert!(
        matches!(err, VmError::DriveInUse { ref holder, .. } if *holder == writer),
        "{err:?}"
    );

    let mut changes = manager.subscribe(&writer).unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    within("the crash to be seen", Duration::from_secs(10), async {
        while !matches!(
            changes.borrow_and_update().as_ref().map(|i| &i.state),
            Some(VmState::Failed { .. })
        ) {
            changes.changed().await.unwrap();
        }
    })
    .await;
    manager.run(&id("late"), writing()).await.unwrap();
}
