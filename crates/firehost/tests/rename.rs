//! Renaming VMs through the manager: what follows the name, what stays
//! with the VM's key, and what a crash at each step of a rename leaves.
//!
//! The crash points come from the `test-internals` feature
//! (`firehost::manager::fault`): the rename panics at the step, skipping
//! everything after it, as a killed process would; the test then drops the
//! manager and opens a new one on the same state directory.

mod common;

use futures_util::FutureExt;

use common::{TestHost, process_alive};
use firehost::manager::{Manager, StopOptions, VmError};
use firehost::{VmId, VmState};
use firehost_testkit::fake_only;

fn id(s: &str) -> VmId {
    VmId::new(s).unwrap()
}

/// The entries of `dir` in the state directory, sorted (none if absent).
fn entries(host: &TestHost, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(host.state_dir().join(dir))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn a_renamed_vm_keeps_its_files_and_its_old_name_can_be_used_again() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let first = manager.run(&id("web"), host.spec()).await.unwrap();
    let renamed = manager.rename(&id("web"), &id("job-1")).await.unwrap();
    assert_eq!(renamed.id, id("job-1"));
    assert_eq!(
        (renamed.dir.clone(), renamed.pid),
        (first.dir.clone(), first.pid)
    );
    assert!(renamed.api_socket.exists(), "the VMM keeps its socket");
    assert_eq!(entries(&host, "names"), ["job-1"], "a link to the VM's key");

    // The old name is free: a new VM takes it, in a directory of its own.
    let second = manager.run(&id("web"), host.spec()).await.unwrap();
    assert_ne!(second.dir, first.dir);
    assert_eq!(entries(&host, "vms").len(), 2);
    assert_eq!(entries(&host, "names"), ["job-1", "web"]);
    drop(manager);

    // A manager that loads VMs as they are named finds both.
    let manager = host.manager().await;
    let job = manager.get(&id("job-1")).await.unwrap();
    assert_eq!((job.dir, job.state), (first.dir, VmState::Running));
    assert_eq!(manager.get(&id("web")).await.unwrap().dir, second.dir);
    let mut listed: Vec<VmId> = manager.list().await.into_iter().map(|v| v.id).collect();
    listed.sort();
    assert_eq!(listed, [id("job-1"), id("web")]);

    // The VM still answers to its API under the new name.
    let paused = manager.pause(&id("job-1")).await.unwrap();
    assert_eq!(paused.state, VmState::Paused);
    for vm in [id("job-1"), id("web")] {
        manager.stop(&vm, StopOptions::default()).await.unwrap();
        manager.destroy(&vm).await.unwrap();
    }
    assert!(entries(&host, "vms").is_empty());
    assert!(
        entries(&host, "names").is_empty(),
        "links go with their VMs"
    );
}

#[tokio::test]
async fn a_snapshot_and_restore_work_under_the_new_name() {
    let host = TestHost::new();
    let manager = host.manager().await;
    manager.run(&id("tpl"), host.spec()).await.unwrap();
    manager.rename(&id("tpl"), &id("template")).await.unwrap();
    let snap = "tpl-snap".parse().unwrap();
    let taken = manager
        .snapshot(&id("template"), &snap, Default::default())
        .await
        .unwrap();
    assert_eq!(taken.manifest.source_vm, id("template"));
    let clone = manager
        .restore(&id("c1"), &snap, Default::default())
        .await
        .unwrap();
    // A clone renamed before its snapshot lease is released still lets it go.
    manager.rename(&id("c1"), &id("claimed")).await.unwrap();
    for vm in [id("template"), id("claimed")] {
        manager.stop(&vm, StopOptions::default()).await.unwrap();
        manager.destroy(&vm).await.unwrap();
    }
    assert!(!clone.dir.exists());
    let leases = manager.snapshots().leases(&snap).await.unwrap();
    assert!(leases.is_empty(), "{leases:?}");
}

#[tokio::test]
async fn a_rename_is_refused_while_a_long_operation_runs() {
    fake_only!("a slow snapshot is injected");
    let host = TestHost::new();
    let requests = host.dir.path().join("requests.log");
    let log = requests.display().to_string();
    let config = host.config_with_faults(&[
        ("FAKE_FC_DELAY_MS", "PUT /snapshot/create=3000"),
        ("FAKE_FC_REQUEST_LOG", &log),
    ]);
    let manager = Manager::open(config).await.unwrap();
    let vm = id("slow");
    manager.run(&vm, host.spec()).await.unwrap();
    let snapshotting = {
        let (manager, vm) = (manager.clone(), vm.clone());
        tokio::spawn(async move {
            manager
                .snapshot(&vm, &"slow-snap".parse().unwrap(), Default::default())
                .await
        })
    };
    firehost_testkit::poll_until(
        "the snapshot request",
        std::time::Duration::from_secs(10),
        || {
            let seen = std::fs::read_to_string(&requests).unwrap_or_default();
            seen.contains("/snapshot/create").then_some(())
        },
    )
    .await;
    let refused = manager.rename(&vm, &id("renamed")).await.unwrap_err();
    assert!(
        matches!(refused, VmError::MidOperation { .. }),
        "{refused:?}"
    );
    assert_eq!(refused.kind(), firehost::ErrorKind::Conflict);
    snapshotting.await.unwrap().unwrap();
    assert_eq!(manager.get(&vm).await.unwrap().id, vm, "nothing changed");
    assert!(matches!(
        manager.get(&id("renamed")).await,
        Err(VmError::NotFound { .. })
    ));
    manager.rename(&vm, &id("renamed")).await.unwrap();
    manager
        .stop(&id("renamed"), StopOptions::default())
        .await
        .unwrap();
}

/// The steps of a rename, in order, and whether the VM has its new name
/// after a crash there.
const STEPS: [(&str, bool); 5] = [
    ("rename:intent", false),
    ("rename:link", false),
    ("rename:metadata", false),
    ("rename:record", true),
    ("rename:unlink", true),
];

#[tokio::test]
async fn a_crash_at_any_step_of_a_rename_leaves_one_name() {
    for (step, renamed) in STEPS {
        let host = TestHost::new();
        let manager = host.manager().await;
        let info = manager.run(&id("before"), host.spec()).await.unwrap();
        let pid = info.pid.unwrap();
        firehost::manager::fault::crash_at(&id("before"), step);
        let crashed = std::panic::AssertUnwindSafe(manager.rename(&id("before"), &id("after")))
            .catch_unwind()
            .await;
        assert!(crashed.is_err(), "{step}: the rename should have crashed");
        drop(manager);

        // A manager that loads VMs as they are named: only the intent
        // makes it look at this one before it is asked for.
        let mut lazy = host.config();
        lazy.recovery = firehost::manager::Recovery::Lazy;
        let manager = Manager::open(lazy).await.unwrap();
        assert!(
            entries(&host, "intents").is_empty(),
            "{step}: the intent is settled"
        );
        let links = entries(&host, "names");
        let expected: Vec<String> = if renamed {
            vec!["after".into()]
        } else {
            vec![]
        };
        assert_eq!(links, expected, "{step}: the links agree with the record");
        let (kept, gone) = if renamed {
            (id("after"), id("before"))
        } else {
            (id("before"), id("after"))
        };
        let found = manager
            .get(&kept)
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        assert_eq!(
            (found.pid, found.state),
            (Some(pid), VmState::Running),
            "{step}"
        );
        assert!(
            matches!(manager.get(&gone).await, Err(VmError::NotFound { .. })),
            "{step}: both names answer"
        );
        let listed: Vec<VmId> = manager.list().await.into_iter().map(|v| v.id).collect();
        assert_eq!(listed, std::slice::from_ref(&kept), "{step}");

        // And the VM goes on: renamed again, stopped, destroyed, with
        // nothing left.
        manager.rename(&kept, &id("last")).await.unwrap();
        manager
            .stop(&id("last"), StopOptions::default())
            .await
            .unwrap();
        assert!(!process_alive(pid));
        manager.destroy(&id("last")).await.unwrap();
        assert!(entries(&host, "vms").is_empty(), "{step}");
        assert!(entries(&host, "names").is_empty(), "{step}");
    }
}

#[tokio::test]
async fn a_renamed_vm_whose_record_breaks_is_unreadable_under_its_name() {
    let host = TestHost::new();
    let manager = host.manager().await;
    manager.run(&id("web"), host.spec()).await.unwrap();
    manager.rename(&id("web"), &id("job")).await.unwrap();
    manager
        .stop(&id("job"), StopOptions::default())
        .await
        .unwrap();
    drop(manager);
    // The record lives under the key.
    std::fs::write(host.state_dir().join("vms/web/record.json"), b"{ not json").unwrap();
    let mut lazy = host.config();
    lazy.recovery = firehost::manager::Recovery::Lazy;
    let manager = Manager::open(lazy).await.unwrap();
    let err = manager.get(&id("job")).await.unwrap_err();
    assert!(matches!(err, VmError::Unreadable { .. }), "{err:?}");
    assert!(matches!(
        manager.get(&id("nobody")).await,
        Err(VmError::NotFound { .. })
    ));
}

#[tokio::test]
async fn two_renames_of_one_vm_at_once_leave_it_one_name() {
    let host = TestHost::new();
    let manager = host.manager().await;
    manager.run(&id("web"), host.spec()).await.unwrap();
    let (web, to_a, to_b) = (id("web"), id("a"), id("b"));
    let (a, b) = tokio::join!(manager.rename(&web, &to_a), manager.rename(&web, &to_b));
    let won: Vec<VmId> = [&a, &b]
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|info| info.id.clone()))
        .collect();
    assert_eq!(won.len(), 1, "{a:?} {b:?}");
    let lost = if a.is_ok() { b } else { a };
    assert!(matches!(lost, Err(VmError::NotFound { .. })), "{lost:?}");
    let listed: Vec<VmId> = manager.list().await.into_iter().map(|v| v.id).collect();
    assert_eq!(listed, won);
    manager.stop(&won[0], StopOptions::default()).await.unwrap();
    manager.destroy(&won[0]).await.unwrap();
    assert!(entries(&host, "names").is_empty());
}
