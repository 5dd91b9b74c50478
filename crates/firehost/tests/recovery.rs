//! A manager that opens a state directory after another one: it
//! re-attaches to live VMs, reaps dead ones and half-created ones, and
//! refuses to share the directory.

#[macro_use]
mod common;

use firehost_testkit::fake_only;
use std::time::Duration;

use common::{TestHost, id, process_alive, within};
use firehost::api::models::InstanceState;
use firehost::manager::Recovery;
use firehost::manager::StopOptions;
use firehost::record::{RECORD_FILE, VmRecord};
use firehost::{ExitReason, Manager, ManagerError, VmState};

const LONG: Duration = Duration::from_secs(20);

#[tokio::test]
async fn second_manager_on_one_state_dir_is_refused() {
    let host = TestHost::new();
    let _first = host.manager().await;
    let mut config = host.config();
    config.timeouts.lock = Duration::ZERO;
    let err = Manager::open(config).await.unwrap_err();
    assert!(matches!(err, ManagerError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains(&std::process::id().to_string()));
}

#[tokio::test]
async fn lock_is_released_when_the_manager_is_dropped() {
    let host = TestHost::new();
    drop(host.manager().await);
    Manager::open(host.config()).await.unwrap();
}

#[tokio::test]
async fn waiting_for_the_lock_succeeds_once_it_is_released() {
    let host = TestHost::new();
    let first = host.manager().await;
    let mut config = host.config();
    config.timeouts.lock = Duration::from_secs(10);
    let second = tokio::spawn(Manager::open(config));
    drop(first);
    within("the lock", LONG, second).await.unwrap().unwrap();
}

#[tokio::test]
async fn restarted_manager_reattaches_to_live_vms() {
    let host = TestHost::new();
    let (running, paused, created) = (id("running"), id("paused"), id("created"));
    let before = {
        let manager = host.manager().await;
        manager.run(&running, host.spec()).await.unwrap();
        manager.run(&paused, host.spec()).await.unwrap();
        manager.pause(&paused).await.unwrap();
        manager.create(&created, host.spec()).await.unwrap();
        manager.list().await
    };
    let manager = host.manager().await;
    let after = manager.list().await;
    assert_eq!(after, before, "the VMs and their pids are the same");
    assert_eq!(manager.get(&running).await.unwrap().state, VmState::Running);
    assert_eq!(manager.get(&paused).await.unwrap().state, VmState::Paused);
    assert_eq!(manager.get(&created).await.unwrap().state, VmState::Created);

    // The adopted VMs are fully usable.
    manager.resume(&paused).await.unwrap();
    let api = manager.api(&running).await.unwrap().unwrap();
    assert_eq!(
        api.describe_instance().await.unwrap().state,
        InstanceState::Running
    );
    for vm in [&running, &paused, &created] {
        let pid = manager.get(vm).await.unwrap().pid.unwrap();
        manager.stop(vm, StopOptions::default()).await.unwrap();
        assert!(!process_alive(pid));
        manager.destroy(vm).await.unwrap();
    }
    assert!(host.vm_dirs().is_empty());
}

#[tokio::test]
async fn state_changed_behind_the_managers_back_is_taken_from_the_vmm() {
    let host = TestHost::new();
    let vm = id("drifted");
    let socket = {
        let manager = host.manager().await;
        manager.run(&vm, host.spec()).await.unwrap().api_socket
    };
    // Someone paused it directly through the API while no manager ran.
    let api = firehost::api::ApiClient::new(&socket);
    api.patch_vm(&firehost::api::models::Vm {
        state: firehost::api::models::VmState::Paused,
    })
    .await
    .unwrap();
    let manager = host.manager().await;
    assert_eq!(manager.get(&vm).await.unwrap().state, VmState::Paused);
    let record = VmRecord::read(&host.state_dir().join("vms/drifted")).unwrap();
    assert_eq!(record.state, VmState::Paused);
}

#[tokio::test]
async fn vm_that_died_while_no_manager_ran_is_marked_failed_and_its_socket_reaped() {
    let host = TestHost::new();
    let vm = id("died");
    let info = {
        let manager = host.manager().await;
        manager.run(&vm, host.spec()).await.unwrap()
    };
    let pid = info.pid.unwrap();
    signal_and_wait(pid, rustix::process::Signal::KILL).await;

    let manager = host.manager().await;
    let failed = manager.get(&vm).await.unwrap();
    assert!(
        matches!(
            failed.state,
            VmState::Failed {
                exit: ExitReason::Unknown,
                ..
            }
        ),
        "{:?}",
        failed.state
    );
    assert_eq!(failed.pid, None);
    assert!(!info.api_socket.exists());
    // Kept for post-mortem until destroyed.
    assert!(info.dir.join(RECORD_FILE).exists());
    manager.destroy(&vm).await.unwrap();
    assert!(host.vm_dirs().is_empty());
}

#[tokio::test]
async fn a_vmm_whose_api_does_not_answer_is_kept_and_reported_busy() {
    let host = TestHost::new();
    let vm = id("mute");
    let info = {
        let manager = host.manager().await;
        manager.create(&vm, host.spec()).await.unwrap()
    };
    // The socket file disappears: the process lives but can't be reached.
    std::fs::remove_file(&info.api_socket).unwrap();
    let manager = host.manager().await;
    let seen = manager.get(&vm).await.unwrap();
    assert!(seen.busy, "{seen:?}");
    assert_eq!(seen.state, VmState::Created, "the recorded state");
    assert_eq!(seen.pid, info.pid);
    assert!(
        process_alive(info.pid.unwrap()),
        "never killed for not answering"
    );
    let refused = manager.start(&vm).await.unwrap_err();
    assert!(
        matches!(refused, firehost::VmError::Busy { .. }),
        "{refused:?}"
    );
    assert!(process_alive(info.pid.unwrap()));
    // An explicit stop needs no answer from the VMM.
    manager.stop(&vm, StopOptions::default()).await.unwrap();
    assert!(!process_alive(info.pid.unwrap()));
    manager.destroy(&vm).await.unwrap();
    assert!(host.vm_dirs().is_empty());
}

#[tokio::test]
async fn a_slow_vmm_is_busy_until_it_answers_and_then_usable() {
    fake_only!("slow answers are injected");
    let host = TestHost::new();
    let vm = id("slow");
    // Every `GET /` takes 1.5 s: longer than the probe's 500 ms.
    let config = host.config_with_faults(&[("FAKE_FC_DELAY_MS", "GET /=1500")]);
    let pid = {
        let manager = Manager::open(config.clone()).await.unwrap();
        manager.run(&vm, host.spec()).await.unwrap().pid.unwrap()
    };
    let manager = Manager::open(config.clone()).await.unwrap();
    let listed = manager.list().await;
    assert_eq!(listed[0].state, VmState::Running, "listing asks no VMM");
    assert!(!listed[0].busy);
    let first = manager.get(&vm).await.unwrap();
    assert!(first.busy && first.state == VmState::Running, "{first:?}");
    let refused = manager.pause(&vm).await.unwrap_err();
    assert!(matches!(refused, firehost::VmError::Busy { pid: p, .. } if p == pid));
    assert!(process_alive(pid));
    drop(manager);

    // A manager that gives it long enough finds it well.
    let mut patient = config;
    patient.timeouts.probe = Duration::from_secs(5);
    let manager = Manager::open(patient).await.unwrap();
    let info = manager.pause(&vm).await.unwrap();
    assert_eq!(info.state, VmState::Paused);
    assert!(!info.busy);
    manager.stop(&vm, StopOptions::default()).await.unwrap();
}

#[tokio::test]
async fn half_created_vm_is_reaped_entirely() {
    let host = TestHost::new();
    let info = created_uncommitted(&host, "half").await;

    let manager = host.manager().await;
    assert!(manager.list().await.is_empty());
    assert!(host.vm_dirs().is_empty());
    assert!(!process_alive(info.pid.unwrap()));
}

#[tokio::test]
async fn directory_without_record_is_reaped_with_its_vmm() {
    let host = TestHost::new();
    let vm = id("norecord");
    let info = {
        let manager = host.manager().await;
        manager.create(&vm, host.spec()).await.unwrap()
    };
    // As if the manager crashed between spawning the VMM and writing the
    // first record: the VMM is found by its --api-sock argument.
    std::fs::remove_file(info.dir.join(RECORD_FILE)).unwrap();
    let manager = host.manager().await;
    assert!(manager.list().await.is_empty());
    assert!(host.vm_dirs().is_empty());
    assert!(!process_alive(info.pid.unwrap()));
}

#[tokio::test]
async fn stopped_vms_are_listed_after_a_restart() {
    let host = TestHost::new();
    let vm = id("resting");
    {
        let manager = host.manager().await;
        manager.run(&vm, host.spec()).await.unwrap();
        manager.stop(&vm, StopOptions::default()).await.unwrap();
    }
    let manager = host.manager().await;
    let state = manager.get(&vm).await.unwrap().state;
    assert!(matches!(state, VmState::Stopped { .. }), "{state:?}");
}

#[tokio::test]
async fn adopted_vm_that_crashes_later_is_marked_failed() {
    let host = TestHost::new();
    let vm = id("late-crash");
    let pid = {
        let manager = host.manager().await;
        manager.run(&vm, host.spec()).await.unwrap().pid.unwrap()
    };
    let manager = host.manager().await;
    let mut changes = manager.subscribe(&vm).unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let info = within(
        "the failure",
        LONG,
        changes.wait_for(|i| matches!(i, Some(i) if !i.state.is_live())),
    )
    .await
    .unwrap()
    .clone()
    .unwrap();
    // The VMM was spawned by this very process, so the new manager can
    // still reap it and see the signal.
    assert!(
        matches!(
            info.state,
            VmState::Failed {
                exit: ExitReason::Signal(9),
                ..
            }
        ),
        "{:?}",
        info.state
    );
}

/// A VM created, then its record rewound to before the create committed,
/// as if the manager had crashed in the middle of it.
async fn created_uncommitted(host: &TestHost, name: &str) -> firehost::VmInfo {
    let info = {
        let manager = host.manager().await;
        manager.create(&id(name), host.spec()).await.unwrap()
    };
    let mut record = VmRecord::read(&info.dir).unwrap();
    record.committed = false;
    record.write(&info.dir).unwrap();
    info
}

/// Sends `signal` to the VMM `pid` and waits until it is gone.
async fn signal_and_wait(pid: i32, signal: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), signal).unwrap();
    within("the VMM to exit", LONG, async {
        while process_alive(pid) {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// Opens a manager on `host` with `recovery`.
async fn open_with(host: &TestHost, recovery: Recovery) -> Manager {
    let mut config = host.config();
    config.recovery = recovery;
    Manager::open(config).await.unwrap()
}

#[tokio::test]
async fn a_lazy_manager_loads_a_vm_when_it_is_named_and_all_when_listing() {
    let host = TestHost::new();
    let names = ["a", "b", "c"].map(id);
    {
        let manager = host.manager().await;
        for vm in &names {
            manager.run(vm, host.spec()).await.unwrap();
        }
    }
    let manager = open_with(&host, Recovery::Lazy).await;
    // Not loaded yet: not followable either.
    assert!(manager.subscribe(&names[1]).is_err());
    assert_eq!(
        manager.get(&names[1]).await.unwrap().state,
        VmState::Running
    );
    assert!(manager.subscribe(&names[1]).is_ok());
    manager.pause(&names[2]).await.unwrap();
    let listed: Vec<_> = manager
        .list()
        .await
        .into_iter()
        .map(|i| (i.id, i.state))
        .collect();
    assert_eq!(
        listed,
        vec![
            (names[0].clone(), VmState::Running),
            (names[1].clone(), VmState::Running),
            (names[2].clone(), VmState::Paused),
        ]
    );
    // A name taken on disk is taken, loaded or not.
    let fresh = open_with(&host, Recovery::Lazy);
    drop(manager);
    let manager = fresh.await;
    let taken = manager.create(&names[0], host.spec()).await.unwrap_err();
    assert!(
        matches!(taken, firehost::VmError::AlreadyExists { .. }),
        "{taken:?}"
    );
    for vm in &names {
        manager.stop(vm, StopOptions::default()).await.unwrap();
        manager.destroy(vm).await.unwrap();
    }
}

#[tokio::test]
async fn a_read_only_manager_reports_a_dead_vm_without_cleaning_it_up() {
    let host = TestHost::new();
    let vm = id("gone");
    let info = {
        let manager = host.manager().await;
        manager.run(&vm, host.spec()).await.unwrap()
    };
    let record_before = std::fs::read(info.dir.join(RECORD_FILE)).unwrap();
    let pid = info.pid.unwrap();
    signal_and_wait(pid, rustix::process::Signal::KILL).await;
    let manager = open_with(&host, Recovery::ReadOnly).await;
    let seen = manager.get(&vm).await.unwrap();
    assert!(matches!(seen.state, VmState::Failed { .. }), "{seen:?}");
    assert_eq!(
        std::fs::read(info.dir.join(RECORD_FILE)).unwrap(),
        record_before,
        "a read-only manager rewrites nothing"
    );
    assert!(info.api_socket.exists(), "nor removes anything");
    drop(manager);
    // The next manager that may change things cleans up.
    let manager = host.manager().await;
    assert!(matches!(
        manager.get(&vm).await.unwrap().state,
        VmState::Failed { .. }
    ));
    assert!(!info.api_socket.exists());
}

#[tokio::test]
async fn a_create_cut_short_is_reaped_by_the_next_lazy_manager_through_its_intent() {
    let host = TestHost::new();
    // As a killed manager leaves it: the intent still there too.
    let info = created_uncommitted(&host, "cut").await;
    let intents = host.state_dir().join("intents");
    std::fs::write(intents.join("cut"), "create").unwrap();

    // A read-only manager neither shows nor touches it.
    let manager = open_with(&host, Recovery::ReadOnly).await;
    assert!(manager.list().await.is_empty());
    assert!(process_alive(info.pid.unwrap()));
    drop(manager);

    // A lazy one settles the intent at open, without listing anything.
    let _manager = open_with(&host, Recovery::Lazy).await;
    assert!(!process_alive(info.pid.unwrap()));
    assert!(host.vm_dirs().is_empty());
    assert_eq!(std::fs::read_dir(&intents).unwrap().count(), 0);
}

#[tokio::test]
async fn an_interrupted_snapshot_is_settled_resumed_and_its_unsealed_bundle_removed() {
    let host = TestHost::new();
    let vm = id("snapping");
    let info = {
        let manager = host.manager().await;
        manager.run(&vm, host.spec()).await.unwrap()
    };
    // As a manager killed between pausing the VM and sealing the bundle
    // leaves it: the guest paused, a bundle without a manifest, the
    // record and the intent saying so.
    let api = firehost::api::ApiClient::new(&info.api_socket);
    api.patch_vm(&firehost::api::models::Vm {
        state: firehost::api::models::VmState::Paused,
    })
    .await
    .unwrap();
    let bundle = host.state_dir().join("snapshots/half");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::write(bundle.join("vmstate"), b"partial").unwrap();
    let mut record = VmRecord::read(&info.dir).unwrap();
    record.pending_snapshot = Some(firehost::record::PendingSnapshot {
        name: "half".parse().unwrap(),
        paused_vm: true,
    });
    record.write(&info.dir).unwrap();
    std::fs::write(host.state_dir().join("intents/snapping"), "snapshot").unwrap();

    let manager = open_with(&host, Recovery::Lazy).await;
    let mut changes = manager.subscribe(&vm).unwrap();
    let settled = within(
        "the snapshot to be settled",
        LONG,
        changes.wait_for(|i| matches!(i, Some(i) if i.interrupted_snapshot.is_none())),
    )
    .await
    .unwrap()
    .clone()
    .unwrap();
    assert_eq!(settled.state, VmState::Running, "resumed");
    assert_eq!(
        api.describe_instance().await.unwrap().state,
        InstanceState::Running
    );
    assert!(!bundle.exists(), "the unsealed bundle is gone");
    assert!(
        VmRecord::read(&info.dir)
            .unwrap()
            .pending_snapshot
            .is_none()
    );
    assert!(!host.state_dir().join("intents/snapping").exists());
    manager.stop(&vm, StopOptions::default()).await.unwrap();
}

#[tokio::test]
async fn an_interrupted_destroy_is_finished_by_the_next_manager() {
    let host = TestHost::new();
    let vm = id("half-gone");
    let info = {
        let manager = host.manager().await;
        manager.create(&vm, host.spec()).await.unwrap()
    };
    std::fs::write(host.state_dir().join("intents/half-gone"), "destroy").unwrap();
    let manager = open_with(&host, Recovery::Lazy).await;
    assert!(!process_alive(info.pid.unwrap()));
    assert!(host.vm_dirs().is_empty());
    assert!(matches!(
        manager.get(&vm).await,
        Err(firehost::VmError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_vmm_gone_during_a_stop_is_recorded_stopped_not_failed() {
    let host = TestHost::new();
    let vm = id("stopping");
    let info = {
        let manager = host.manager().await;
        manager.run(&vm, host.spec()).await.unwrap()
    };
    let mut record = VmRecord::read(&info.dir).unwrap();
    record.stop_requested = true;
    record.write(&info.dir).unwrap();
    let pid = info.pid.unwrap();
    signal_and_wait(pid, rustix::process::Signal::TERM).await;
    let manager = host.manager().await;
    let state = manager.get(&vm).await.unwrap().state;
    assert!(matches!(state, VmState::Stopped { .. }), "{state:?}");
}

#[tokio::test]
async fn a_read_only_manager_lists_live_vms_and_holds_one_only_when_it_is_used() {
    let host = TestHost::new();
    let (a, b) = (id("a"), id("b"));
    let (pid_a, pid_b) = {
        let manager = host.manager().await;
        let a_info = manager.run(&a, host.spec()).await.unwrap();
        let b_info = manager.run(&b, host.spec()).await.unwrap();
        (a_info.pid.unwrap(), b_info.pid.unwrap())
    };
    let manager = open_with(&host, Recovery::ReadOnly).await;
    let listed: Vec<_> = manager
        .list()
        .await
        .into_iter()
        .map(|i| (i.id, i.state, i.pid))
        .collect();
    assert_eq!(
        listed,
        vec![
            (a.clone(), VmState::Running, Some(pid_a)),
            (b.clone(), VmState::Running, Some(pid_b)),
        ]
    );
    // Used: held, asked, and operable like any other.
    assert_eq!(manager.pause(&a).await.unwrap().state, VmState::Paused);
    // One that dies between the listing and its use is found gone.
    signal_and_wait(pid_b, rustix::process::Signal::KILL).await;
    let gone = manager.get(&b).await.unwrap();
    assert!(matches!(gone.state, VmState::Failed { .. }), "{gone:?}");
    assert_eq!(gone.pid, None);
    manager.stop(&a, StopOptions::default()).await.unwrap();
    assert!(!process_alive(pid_a));
}
