//! A manager that opens a state directory after another one: it
//! re-attaches to live VMs, reaps dead ones and half-created ones, and
//! refuses to share the directory.

mod common;

use std::time::Duration;

use common::{TestHost, id, process_alive, within};
use firehost::api::models::InstanceState;
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
        manager.list()
    };
    let manager = host.manager().await;
    let after = manager.list();
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
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    within("the VMM to die", LONG, async {
        while process_alive(pid) {
            tokio::task::yield_now().await;
        }
    })
    .await;

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
async fn vmm_whose_api_is_dead_is_killed_and_the_vm_marked_failed() {
    let host = TestHost::new();
    let vm = id("mute");
    let info = {
        let manager = host.manager().await;
        manager.create(&vm, host.spec()).await.unwrap()
    };
    // The socket file disappears: the process lives but can't be reached.
    std::fs::remove_file(&info.api_socket).unwrap();
    let manager = host.manager().await;
    let state = manager.get(&vm).await.unwrap().state;
    assert!(matches!(state, VmState::Failed { .. }), "{state:?}");
    assert!(!process_alive(info.pid.unwrap()));
}

#[tokio::test]
async fn half_created_vm_is_reaped_entirely() {
    let host = TestHost::new();
    let vm = id("half");
    let info = {
        let manager = host.manager().await;
        manager.create(&vm, host.spec()).await.unwrap()
    };
    // Rewind the record to before the create committed, as if the manager
    // had crashed in the middle of it.
    let mut record = VmRecord::read(&info.dir).unwrap();
    record.committed = false;
    record.write(&info.dir).unwrap();

    let manager = host.manager().await;
    assert!(manager.list().is_empty());
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
    assert!(manager.list().is_empty());
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
