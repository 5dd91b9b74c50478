//! Restoring snapshots into new VMs, against fake-firecracker or (with
//! `FIREHOST_FIRECRACKER`) a real Firecracker.

mod common;

use firehost_testkit::fake_only;
use std::time::Duration;

use common::{TestHost, id, within};
use firehost::api::models::InstanceState;
use firehost::manager::{DriveProblem, RestoreOptions, SnapshotOptions, StopOptions};
use firehost::snapshot::{MANIFEST_FILE, SnapshotManifest, SnapshotName};
use firehost::{Manager, VmError, VmSpec, VmState};

const LONG: Duration = Duration::from_secs(30);

/// A manager with one snapshot, `base`, of a running VM `source` whose
/// root filesystem is writable.
async fn with_snapshot(host: &TestHost) -> (Manager, SnapshotName) {
    snapshot_with(host.manager().await, host).await
}

/// Like [`with_snapshot`], with fake-firecracker fault knobs.
async fn with_snapshot_under(host: &TestHost, faults: &[(&str, &str)]) -> (Manager, SnapshotName) {
    let manager = Manager::open(host.config_with_faults(faults))
        .await
        .unwrap();
    snapshot_with(manager, host).await
}

async fn snapshot_with(manager: Manager, host: &TestHost) -> (Manager, SnapshotName) {
    let source = id("source");
    let writable = VmSpec {
        rootfs_read_only: Some(false),
        ..host.spec()
    };
    manager.run(&source, writable).await.unwrap();
    let name: SnapshotName = "base".parse().unwrap();
    manager
        .snapshot(&source, &name, SnapshotOptions::default())
        .await
        .unwrap();
    (manager, name)
}

async fn vmm_state(manager: &Manager, vm: &firehost::VmId) -> InstanceState {
    let api = manager.api(vm).await.unwrap().unwrap();
    api.describe_instance().await.unwrap().state
}

#[tokio::test]
async fn snapshot_restores_into_a_new_running_vm() {
    let host = TestHost::new();
    let (manager, snap) = with_snapshot(&host).await;
    let clone = id("clone");
    let info = within(
        "the restore",
        LONG,
        manager.restore(&clone, &snap, RestoreOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(info.state, VmState::Running);
    assert_ne!(info.pid, manager.get(&id("source")).await.unwrap().pid);
    assert_eq!(vmm_state(&manager, &clone).await, InstanceState::Running);
    let record = firehost::record::VmRecord::read(&info.dir).unwrap();
    assert_eq!(record.restored_from, Some(snap.clone()));

    // A restored VM lives like any other; the bundle outlives it.
    manager.pause(&clone).await.unwrap();
    manager.stop(&clone, StopOptions::default()).await.unwrap();
    manager.destroy(&clone).await.unwrap();
    assert!(
        manager
            .snapshots_dir()
            .join("base")
            .join(MANIFEST_FILE)
            .exists()
    );
}

#[tokio::test]
async fn one_snapshot_restores_into_two_vms_at_once() {
    let host = TestHost::new();
    let (manager, snap) = with_snapshot(&host).await;
    let (a, b) = (id("clone-a"), id("clone-b"));
    let (ra, rb) = tokio::join!(
        manager.restore(&a, &snap, RestoreOptions::default()),
        manager.restore(&b, &snap, RestoreOptions::default()),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_ne!(ra.pid, rb.pid);
    assert_ne!(ra.api_socket, rb.api_socket);
    assert_eq!(vmm_state(&manager, &a).await, InstanceState::Running);
    assert_eq!(vmm_state(&manager, &b).await, InstanceState::Running);
}

/// The drive a VMM says it has under `id`.
async fn vmm_drive(manager: &Manager, vm: &firehost::VmId, id: &str) -> std::path::PathBuf {
    let api = manager.api(vm).await.unwrap().unwrap();
    let config = api.get_export_vm_config().await.unwrap();
    config
        .drives
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.drive_id == id)
        .and_then(|d| d.path_on_host)
        .unwrap_or_else(|| panic!("the VMM has no file for drive {id}"))
}

/// How this file system copies a file: a reflink where it has them.
fn copy_method_here(probe: &std::path::Path) -> firehost::record::CopyMethod {
    std::fs::write(probe, b"probe").unwrap();
    let source = std::fs::File::open(probe).unwrap();
    let target = std::fs::File::create(probe.with_extension("clone")).unwrap();
    match rustix::fs::ioctl_ficlone(&target, &source) {
        Ok(()) => firehost::record::CopyMethod::Reflink,
        Err(_) => firehost::record::CopyMethod::Extents,
    }
}

/// Two guests writing one file corrupt it: each clone of an unjailed
/// snapshot writes to its own copy of the template's writable drives, in
/// its own directory, and the copy goes with the clone.
#[tokio::test]
async fn each_clone_writes_to_its_own_copy_of_the_writable_drives() {
    let host = TestHost::new();
    let (manager, snap) = with_snapshot(&host).await;
    let source = id("source");
    let original = manager.get(&source).await.unwrap().spec.rootfs.unwrap();
    let before = std::fs::read(&original).unwrap();
    let (a, b) = (id("copy-a"), id("copy-b"));
    let (ra, rb) = tokio::join!(
        manager.restore(&a, &snap, RestoreOptions::default()),
        manager.restore(&b, &snap, RestoreOptions::default()),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let method = copy_method_here(&host.dir.path().join("probe"));
    for info in [&ra, &rb] {
        assert_eq!(info.state, VmState::Running);
        let copy = info.spec.rootfs.clone().unwrap();
        assert!(copy.starts_with(&info.dir), "{copy:?} is the clone's own");
        let reported: Vec<_> = info
            .own_drives
            .iter()
            .map(|d| (d.drive.as_str(), d.path.clone(), d.copy))
            .collect();
        assert_eq!(reported, [("rootfs", copy.clone(), method)]);
        assert_eq!(vmm_drive(&manager, &info.id, "rootfs").await, copy);
        assert_eq!(
            std::fs::read(&copy).unwrap(),
            before,
            "a copy of the template's"
        );
    }
    assert_eq!(vmm_drive(&manager, &source, "rootfs").await, original);
    assert_eq!(std::fs::read(&original).unwrap(), before);

    let copy = ra.spec.rootfs.clone().unwrap();
    manager.stop(&a, StopOptions::default()).await.unwrap();
    manager.destroy(&a).await.unwrap();
    assert!(!copy.exists(), "the copy goes with its clone");
    assert!(original.exists() && rb.spec.rootfs.clone().unwrap().exists());
}

/// A restore moves the guest's clock to the wall clock by default
/// (`clock_realtime`, on `x86_64`), and can leave it where the snapshot
/// left it; both load and run.
#[tokio::test]
async fn a_restore_moves_the_guest_clock_to_now_unless_asked_not_to() {
    assert_eq!(
        RestoreOptions::default().clock_realtime,
        cfg!(target_arch = "x86_64")
    );
    let host = TestHost::new();
    let (manager, snap) = with_snapshot(&host).await;
    for (name, clock_realtime) in [("on-time", true), ("as-snapshotted", false)] {
        let options = RestoreOptions {
            clock_realtime,
            ..RestoreOptions::default()
        };
        let info = manager.restore(&id(name), &snap, options).await.unwrap();
        assert_eq!(info.state, VmState::Running);
        assert_eq!(vmm_state(&manager, &info.id).await, InstanceState::Running);
    }
}

#[tokio::test]
async fn restore_without_resume_leaves_the_vm_paused() {
    let host = TestHost::new();
    let (manager, snap) = with_snapshot(&host).await;
    let vm = id("held");
    let options = RestoreOptions {
        resume: false,
        ..RestoreOptions::default()
    };
    let info = manager.restore(&vm, &snap, options).await.unwrap();
    assert_eq!(info.state, VmState::Paused);
    assert_eq!(vmm_state(&manager, &vm).await, InstanceState::Paused);
    assert_eq!(manager.resume(&vm).await.unwrap().state, VmState::Running);
}

#[tokio::test]
async fn restoring_a_missing_snapshot_fails_and_leaves_nothing() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("orphan");
    let err = manager
        .restore(&vm, &"nothing".parse().unwrap(), RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::SnapshotBundle { .. }), "{err:?}");
    assert!(host.vm_dirs().is_empty());
    assert!(manager.list().await.is_empty());
}

#[tokio::test]
async fn snapshot_of_another_firecracker_version_is_refused() {
    let host = TestHost::new();
    let (manager, snap) = with_snapshot(&host).await;
    let bundle = manager.snapshots_dir().join(snap.as_str());
    let mut manifest = SnapshotManifest::load(&bundle).unwrap();
    manifest.firecracker_version = "0.0.1".into();
    manifest.write(&bundle).unwrap();

    let vm = id("mismatch");
    let err = manager
        .restore(&vm, &snap, RestoreOptions::default())
        .await
        .unwrap_err();
    let VmError::SnapshotVersion {
        snapshot_version, ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(snapshot_version, "0.0.1");
    assert_eq!(host.vm_dirs(), ["source"]);
    assert!(host.vmm_pids(&vm).is_empty());
}

#[tokio::test]
async fn restore_into_a_taken_name_is_refused() {
    let host = TestHost::new();
    let (manager, snap) = with_snapshot(&host).await;
    let err = manager
        .restore(&id("source"), &snap, RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::AlreadyExists { .. }), "{err:?}");
    assert_eq!(manager.list().await.len(), 1);
}

#[tokio::test]
async fn truncated_memory_file_is_refused_before_any_vmm_starts() {
    let host = TestHost::new();
    let (manager, snap) = with_snapshot(&host).await;
    let memory = manager.snapshots_dir().join(snap.as_str()).join("memory");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&memory)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let vm = id("truncated");
    let err = manager
        .restore(&vm, &snap, RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::SnapshotBundle { .. }), "{err:?}");
    assert_eq!(host.vm_dirs(), ["source"]);
}

/// A snapshot that keeps the disks gives its clones the disk that goes
/// with its memory, whatever the source writes afterwards; one that does
/// not gives them the source's disk as it is at the restore.
#[tokio::test]
async fn kept_disks_give_clones_the_disk_of_the_snapshot() {
    let host = TestHost::new();
    let (manager, plain) = with_snapshot(&host).await;
    let source = id("source");
    let original = manager.get(&source).await.unwrap().spec.rootfs.unwrap();
    let at_snapshot = std::fs::read(&original).unwrap();
    let kept: SnapshotName = "kept".parse().unwrap();
    let options = SnapshotOptions {
        disks: true,
        ..SnapshotOptions::default()
    };
    let info = manager.snapshot(&source, &kept, options).await.unwrap();
    assert_eq!(info.manifest.disks, ["rootfs"]);
    let disk = info.dir.join(firehost::snapshot::DISKS_DIR).join("rootfs");
    assert_eq!(std::fs::read(&disk).unwrap(), at_snapshot);

    // The source writes on.
    let later: Vec<u8> = at_snapshot.iter().map(|b| b ^ 0xff).collect();
    std::fs::write(&original, &later).unwrap();

    let from_kept = manager
        .restore(&id("from-kept"), &kept, RestoreOptions::default())
        .await
        .unwrap();
    let copy = from_kept.spec.rootfs.clone().unwrap();
    assert!(copy.starts_with(&from_kept.dir));
    assert_eq!(std::fs::read(&copy).unwrap(), at_snapshot);
    let from_plain = manager
        .restore(&id("from-plain"), &plain, RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(from_plain.spec.rootfs.unwrap()).unwrap(),
        later
    );

    // The kept disk goes with its bundle.
    for vm in [&from_kept.id, &from_plain.id] {
        manager.stop(vm, StopOptions::default()).await.unwrap();
        manager.destroy(vm).await.unwrap();
    }
    manager.snapshots().delete(&kept).await.unwrap();
    assert!(!disk.exists());
}

/// Only a full snapshot keeps the disks; asking a diff to is refused
/// before anything is written.
#[tokio::test]
async fn a_diff_snapshot_cannot_keep_the_disks() {
    let host = TestHost::new();
    let (manager, _) = with_snapshot(&host).await;
    let source = id("source");
    let diff: SnapshotName = "diff-disks".parse().unwrap();
    let options = SnapshotOptions {
        diff: true,
        disks: true,
        ..SnapshotOptions::default()
    };
    let err = manager.snapshot(&source, &diff, options).await.unwrap_err();
    assert!(
        matches!(err, VmError::DisksNeedFullSnapshot { .. }),
        "{err:?}"
    );
    assert_eq!(err.kind(), firehost::ErrorKind::InvalidInput);
    assert!(!manager.snapshots_dir().join("diff-disks").exists());
    assert_eq!(manager.get(&source).await.unwrap().state, VmState::Running);
}

/// Restores `vm` from a snapshot whose restores fail at request `fault`:
/// the error is the failed `op`, and nothing of `vm` is left.
async fn a_restore_failing_at(
    fault: &str,
    op: &'static str,
    vm: &firehost::VmId,
) -> (TestHost, Manager, SnapshotName) {
    let host = TestHost::new();
    let (manager, snap) = with_snapshot_under(&host, &[("FAKE_FC_FAIL", fault)]).await;
    let err = manager
        .restore(vm, &snap, RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VmError::Api { op: failed, .. } if *failed == op),
        "{err:?}"
    );
    assert_eq!(host.vm_dirs(), ["source"]);
    assert!(host.vmm_pids(vm).is_empty());
    assert!(manager.snapshots().leases(&snap).await.unwrap().is_empty());
    (host, manager, snap)
}

/// A restore that fails after the clone's copies are made leaves neither
/// them nor anything else.
#[tokio::test]
async fn a_failed_drive_swap_rolls_back_the_restore_and_its_copies() {
    fake_only!("injects a PATCH /drives failure");
    let vm = id("unswapped");
    a_restore_failing_at(
        "PATCH /drives/rootfs",
        "point a drive at the VM's own copy",
        &vm,
    )
    .await;
}

#[tokio::test]
async fn failed_load_rolls_back_the_restore() {
    fake_only!("injects a load failure");
    let vm = id("broken");
    let (host, manager, snap) =
        a_restore_failing_at("PUT /snapshot/load", "load the snapshot", &vm).await;
    // The refusing VMM exits (as Firecracker does); the next restore is
    // not affected by it.
    let err = manager
        .restore(&vm, &snap, RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::Api { .. }), "{err:?}");
    assert_eq!(host.vm_dirs(), ["source"]);
}

#[tokio::test]
async fn a_snapshot_whose_drive_is_gone_or_resized_is_refused_before_spawning() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let rootfs = host.dir.path().join("own-rootfs.ext4");
    std::fs::File::create(&rootfs)
        .and_then(|f| f.set_len(1 << 20))
        .unwrap();
    let source = id("source");
    let spec = firehost::VmSpec {
        rootfs: Some(rootfs.clone()),
        ..host.spec()
    };
    manager.run(&source, spec).await.unwrap();
    let snap: SnapshotName = "drives".parse().unwrap();
    let taken = manager
        .snapshot(&source, &snap, SnapshotOptions::default())
        .await
        .unwrap();
    assert_eq!(taken.manifest.drives.len(), 1);
    assert_eq!(taken.manifest.drives[0].size_bytes, 1 << 20);
    manager.stop(&source, StopOptions::default()).await.unwrap();
    manager.destroy(&source).await.unwrap();
    let spawned_before = firehost::vmm::find_under(host.dir.path());

    // Grown: the guest's disk would not match its vmstate.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&rootfs)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    let vm = id("restored");
    let err = manager
        .restore(&vm, &snap, RestoreOptions::default())
        .await
        .unwrap_err();
    match &err {
        VmError::SnapshotDrive {
            drive,
            path,
            problem: DriveProblem::Resized { recorded, now },
            ..
        } => {
            assert_eq!(
                (drive.as_str(), path, *recorded, *now),
                ("rootfs", &rootfs.canonicalize().unwrap(), 1 << 20, 2 << 20)
            );
        }
        other => panic!("{other:?}"),
    }
    // Not a file (a directory in its place): unusable.
    std::fs::remove_file(&rootfs).unwrap();
    std::fs::create_dir(&rootfs).unwrap();
    let err = manager
        .restore(&vm, &snap, RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            VmError::SnapshotDrive {
                problem: DriveProblem::Unusable(_),
                ..
            }
        ),
        "{err:?}"
    );
    std::fs::remove_dir(&rootfs).unwrap();
    // Gone: the message names the file.
    let err = manager
        .restore(&vm, &snap, RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            VmError::SnapshotDrive {
                problem: DriveProblem::Missing,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("own-rootfs.ext4"), "{err}");
    // Nothing was spawned or left, and the bundle is not leased.
    assert_eq!(firehost::vmm::find_under(host.dir.path()), spawned_before);
    assert!(host.vm_dirs().is_empty(), "{:?}", host.vm_dirs());
    assert!(manager.snapshots().leases(&snap).await.unwrap().is_empty());

    // The kernel is not needed: with the drive back, a restore works
    // without it.
    std::fs::File::create(&rootfs)
        .and_then(|f| f.set_len(1 << 20))
        .unwrap();
    std::fs::remove_file(&host.kernel).unwrap();
    let restored = manager
        .restore(&vm, &snap, RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(restored.state, VmState::Running);
}

#[tokio::test]
async fn restored_vm_is_reattached_after_a_restart() {
    let host = TestHost::new();
    let vm = id("restored");
    let before = {
        let (manager, snap) = with_snapshot(&host).await;
        manager
            .restore(&vm, &snap, RestoreOptions::default())
            .await
            .unwrap()
    };
    let manager = host.manager().await;
    let after = manager.get(&vm).await.unwrap();
    assert_eq!((after.pid, after.state), (before.pid, VmState::Running));
}

#[tokio::test]
async fn restored_vm_holds_a_lease_on_its_bundle_until_destroyed() {
    let host = TestHost::new();
    let (manager, snap) = with_snapshot(&host).await;
    let vm = id("leaser");
    manager
        .restore(&vm, &snap, RestoreOptions::default())
        .await
        .unwrap();
    let snapshots = manager.snapshots();
    assert_eq!(
        snapshots.leases(&snap).await.unwrap(),
        std::slice::from_ref(&vm)
    );
    let err = snapshots.delete(&snap).await.unwrap_err();
    assert!(
        matches!(err, firehost::snapshot::StoreError::Leased { .. }),
        "{err:?}"
    );

    manager.stop(&vm, StopOptions::default()).await.unwrap();
    manager.destroy(&vm).await.unwrap();
    assert!(snapshots.leases(&snap).await.unwrap().is_empty());
    snapshots.delete(&snap).await.unwrap();
}

#[tokio::test]
async fn corrupt_bundle_is_refused_and_leaves_no_lease() {
    let host = TestHost::new();
    let (manager, snap) = with_snapshot(&host).await;
    let vmstate = manager.snapshots_dir().join(snap.as_str()).join("vmstate");
    let mut bytes = std::fs::read(&vmstate).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&vmstate, bytes).unwrap();
    let vm = id("corrupt");
    let err = manager
        .restore(&vm, &snap, RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::SnapshotBundle { .. }), "{err:?}");
    assert!(manager.snapshots().leases(&snap).await.unwrap().is_empty());
    assert_eq!(host.vm_dirs(), ["source"]);
}

#[tokio::test]
async fn diff_snapshot_is_parented_and_merges_into_a_restorable_bundle() {
    let host = TestHost::new();
    let (manager, base) = with_snapshot(&host).await;
    let source = id("source");
    let diff: SnapshotName = "step-1".parse().unwrap();
    let options = SnapshotOptions {
        diff: true,
        ..SnapshotOptions::default()
    };
    let taken = manager.snapshot(&source, &diff, options).await.unwrap();
    assert_eq!(taken.manifest.kind, firehost::snapshot::SnapshotKind::Diff);
    assert_eq!(taken.manifest.parent.as_ref(), Some(&base));

    // A diff can't be loaded as is; merged onto its parent it can.
    let err = manager
        .restore(&id("from-diff"), &diff, RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::SnapshotIsDiff { .. }), "{err:?}");
    let merged: SnapshotName = "merged".parse().unwrap();
    manager.snapshots().merge(&diff, &merged).await.unwrap();
    let vm = id("from-merge");
    let info = manager
        .restore(&vm, &merged, RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(info.state, VmState::Running);
}

#[tokio::test]
async fn diff_without_an_earlier_snapshot_is_refused() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("fresh");
    manager.run(&vm, host.spec()).await.unwrap();
    let options = SnapshotOptions {
        diff: true,
        ..SnapshotOptions::default()
    };
    let err = manager
        .snapshot(&vm, &"d".parse().unwrap(), options)
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::NoParentSnapshot { .. }), "{err:?}");
    assert_eq!(manager.get(&vm).await.unwrap().state, VmState::Running);
}

/// Restores through a page server in `memory` mode on the real binary or
/// the fake, and checks the VM runs and the server did its job.
async fn restore_through_page_server(
    memory: firehost::manager::RestoreMemory,
) -> (TestHost, Manager, firehost::VmId, SnapshotName) {
    let host = TestHost::new();
    let (manager, snap) = with_snapshot(&host).await;
    let vm = id("uffd");
    let options = RestoreOptions {
        memory,
        ..RestoreOptions::default()
    };
    let info = within(
        "the UFFD restore",
        LONG,
        manager.restore(&vm, &snap, options),
    )
    .await
    .unwrap();
    assert_eq!(info.state, VmState::Running);
    assert_eq!(vmm_state(&manager, &vm).await, InstanceState::Running);
    (host, manager, vm, snap)
}

#[tokio::test]
async fn uffd_on_demand_restore_runs_and_records_a_working_set() {
    use firehost::manager::RestoreMemory;
    let (_host, manager, vm, snap) = restore_through_page_server(RestoreMemory::OnDemand).await;
    manager.pause(&vm).await.unwrap();
    manager.resume(&vm).await.unwrap();
    manager.stop(&vm, StopOptions::default()).await.unwrap();
    // What was faulted in is now the bundle's working set: at least the
    // pages Firecracker itself reads while loading (both backends do).
    let bundle = manager.snapshots_dir().join(snap.as_str());
    let set = firehost::snapshot::WorkingSet::read(&bundle)
        .unwrap()
        .expect("a recorded working set");
    assert!(!set.pages.is_empty());
    // The next restore prefetches it.
    let again = id("prefetched");
    let options = RestoreOptions {
        memory: RestoreMemory::Prefetch,
        ..RestoreOptions::default()
    };
    manager.restore(&again, &snap, options).await.unwrap();
    assert_eq!(vmm_state(&manager, &again).await, InstanceState::Running);
    manager.destroy(&vm).await.unwrap();
}

#[tokio::test]
async fn uffd_populate_restore_runs() {
    use firehost::manager::RestoreMemory;
    let (_host, manager, vm, _snap) = restore_through_page_server(RestoreMemory::Populate).await;
    manager.stop(&vm, StopOptions::default()).await.unwrap();
    manager.destroy(&vm).await.unwrap();
}

#[tokio::test]
async fn file_and_uffd_clones_of_one_snapshot_run_at_once() {
    use firehost::manager::RestoreMemory;
    let host = TestHost::new();
    let (manager, snap) = with_snapshot(&host).await;
    let (a, b) = (id("by-file"), id("by-uffd"));
    let uffd = RestoreOptions {
        memory: RestoreMemory::OnDemand,
        ..RestoreOptions::default()
    };
    let (ra, rb) = tokio::join!(
        manager.restore(&a, &snap, RestoreOptions::default()),
        manager.restore(&b, &snap, uffd),
    );
    ra.unwrap();
    rb.unwrap();
    assert_eq!(vmm_state(&manager, &a).await, InstanceState::Running);
    assert_eq!(vmm_state(&manager, &b).await, InstanceState::Running);
}

#[tokio::test]
async fn vm_whose_page_server_died_with_its_manager_is_killed_on_reattach() {
    use firehost::manager::RestoreMemory;
    let host = TestHost::new();
    let vm = id("orphaned");
    let pid = {
        let (manager, snap) = with_snapshot(&host).await;
        let options = RestoreOptions {
            memory: RestoreMemory::OnDemand,
            ..RestoreOptions::default()
        };
        manager
            .restore(&vm, &snap, options)
            .await
            .unwrap()
            .pid
            .unwrap()
    };
    let manager = host.manager().await;
    let state = manager.get(&vm).await.unwrap().state;
    assert!(matches!(state, VmState::Failed { .. }), "{state:?}");
    assert!(!common::process_alive(pid));
    // The source VM, which never had a page server, is still running.
    assert_eq!(
        manager.get(&id("source")).await.unwrap().state,
        VmState::Running
    );
}

#[tokio::test]
async fn populated_vm_survives_its_manager() {
    use firehost::manager::RestoreMemory;
    let host = TestHost::new();
    let vm = id("independent");
    let pid = {
        let (manager, snap) = with_snapshot(&host).await;
        let options = RestoreOptions {
            memory: RestoreMemory::Populate,
            ..RestoreOptions::default()
        };
        let info = manager.restore(&vm, &snap, options).await.unwrap();
        manager.wait_memory_detached(&vm, LONG).await.unwrap();
        info.pid.unwrap()
    };
    let manager = host.manager().await;
    let info = manager.get(&vm).await.unwrap();
    assert_eq!((info.state, info.pid), (VmState::Running, Some(pid)));
    assert_eq!(vmm_state(&manager, &vm).await, InstanceState::Running);
}

// --- page servers in helper processes ---------------------------------------

/// A manager whose page servers run in `firehost-page-server` helpers.
fn helper_config(host: &TestHost) -> firehost::ManagerConfig {
    let mut config = host.config();
    config.page_server_program = Some(firehost::snapshot::uffd::PageServerProgram::new(
        env!("CARGO_BIN_EXE_firehost-page-server"),
        std::iter::empty::<&str>(),
    ));
    config
}

/// As [`with_snapshot`], with page servers in helpers.
async fn with_helper_snapshot(host: &TestHost) -> (Manager, SnapshotName) {
    let manager = Manager::open(helper_config(host)).await.unwrap();
    let source = id("source");
    manager.run(&source, host.spec()).await.unwrap();
    let name: SnapshotName = "base".parse().unwrap();
    manager
        .snapshot(&source, &name, SnapshotOptions::default())
        .await
        .unwrap();
    (manager, name)
}

fn helper_of(dir: &std::path::Path) -> Option<firehost::record::HelperProcess> {
    firehost::record::VmRecord::read(dir)
        .unwrap()
        .page_server_helper
}

/// Waits (with a deadline) for a helper that is expected to exit.
async fn gone(helper: firehost::record::HelperProcess) {
    let process = firehost::vmm::VmmProcess::attach(helper.pid, helper.start_time).unwrap();
    if let Some(process) = process {
        within("the helper to exit", LONG, process.wait()).await;
    }
}

#[tokio::test]
async fn helper_served_vm_survives_its_manager_and_records_a_working_set() {
    use firehost::manager::RestoreMemory;
    let host = TestHost::new();
    let vm = id("helped");
    let (info, snap) = {
        let (manager, snap) = with_helper_snapshot(&host).await;
        let options = RestoreOptions {
            memory: RestoreMemory::OnDemand,
            ..RestoreOptions::default()
        };
        let info = within("the restore", LONG, manager.restore(&vm, &snap, options))
            .await
            .unwrap();
        (info, snap)
    };
    let helper = helper_of(&info.dir).expect("the helper is recorded");
    assert!(common::process_alive(helper.pid));
    // A new manager keeps the VM: its memory server lives on.
    let manager = Manager::open(helper_config(&host)).await.unwrap();
    let again = manager.get(&vm).await.unwrap();
    assert_eq!((again.state, again.pid), (VmState::Running, info.pid));
    assert_eq!(vmm_state(&manager, &vm).await, InstanceState::Running);
    // When the VM ends, so does its helper, leaving the working set behind.
    manager.stop(&vm, StopOptions::default()).await.unwrap();
    gone(helper).await;
    assert_eq!(helper_of(&info.dir), None);
    let bundle = manager.snapshots_dir().join(snap.as_str());
    let set = firehost::snapshot::WorkingSet::read(&bundle)
        .unwrap()
        .expect("the helper stored the working set");
    assert!(!set.pages.is_empty());
    manager.destroy(&vm).await.unwrap();
}

#[tokio::test]
async fn a_populating_helper_detaches_and_exits_and_the_vm_stands_alone() {
    use firehost::manager::RestoreMemory;
    let host = TestHost::new();
    let vm = id("populated");
    let (manager, snap) = with_helper_snapshot(&host).await;
    let options = RestoreOptions {
        memory: RestoreMemory::Populate,
        ..RestoreOptions::default()
    };
    let info = manager.restore(&vm, &snap, options).await.unwrap();
    let helper = helper_of(&info.dir).expect("the helper is recorded");
    manager.wait_memory_detached(&vm, LONG).await.unwrap();
    gone(helper).await;
    assert!(
        info.dir
            .join(firehost::snapshot::uffd::DETACHED_MARKER)
            .exists()
    );
    assert_eq!(helper_of(&info.dir), None);
    drop(manager);
    let manager = Manager::open(helper_config(&host)).await.unwrap();
    assert_eq!(manager.get(&vm).await.unwrap().state, VmState::Running);
    assert_eq!(vmm_state(&manager, &vm).await, InstanceState::Running);
}

#[tokio::test]
async fn a_vm_whose_helper_detached_unseen_is_kept_by_the_next_manager() {
    use firehost::manager::RestoreMemory;
    let host = TestHost::new();
    let vm = id("populated");
    let info = {
        let (manager, snap) = with_helper_snapshot(&host).await;
        let options = RestoreOptions {
            memory: RestoreMemory::Populate,
            ..RestoreOptions::default()
        };
        manager.restore(&vm, &snap, options).await.unwrap()
    };
    // The manager went away without waiting; the helper detaches alone.
    let helper = helper_of(&info.dir).expect("the helper is recorded");
    gone(helper).await;
    let manager = Manager::open(helper_config(&host)).await.unwrap();
    let again = manager.get(&vm).await.unwrap();
    assert_eq!((again.state, again.pid), (VmState::Running, info.pid));
    assert_eq!(helper_of(&info.dir), None);
}

#[tokio::test]
async fn a_vm_whose_helper_was_killed_is_killed_by_the_next_manager() {
    use firehost::manager::RestoreMemory;
    let host = TestHost::new();
    let vm = id("orphaned");
    let info = {
        let (manager, snap) = with_helper_snapshot(&host).await;
        let options = RestoreOptions {
            memory: RestoreMemory::OnDemand,
            ..RestoreOptions::default()
        };
        manager.restore(&vm, &snap, options).await.unwrap()
    };
    let helper = helper_of(&info.dir).expect("the helper is recorded");
    // SIGKILL: the helper can neither fence nor kill; the VM would hang on
    // its next missing page.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(helper.pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    gone(helper).await;
    let manager = Manager::open(helper_config(&host)).await.unwrap();
    let state = manager.get(&vm).await.unwrap().state;
    assert!(matches!(state, VmState::Failed { .. }), "{state:?}");
    assert!(!common::process_alive(info.pid.unwrap()));
}

#[tokio::test]
async fn a_helper_that_cannot_start_or_fails_leaves_nothing() {
    use firehost::manager::RestoreMemory;
    use firehost::snapshot::uffd::{PageServerError, PageServerProgram};
    let host = TestHost::new();
    let (manager, snap) = with_snapshot(&host).await;
    drop(manager);
    let cases: [(&str, PageServerProgram); 3] = [
        (
            "missing",
            PageServerProgram::new(host.dir.path().join("no-such-helper"), [""; 0]),
        ),
        // Exits at once without a word.
        ("silent", PageServerProgram::new("/bin/true", [""; 0])),
        // Says why on stderr, which the error carries.
        (
            "loud",
            PageServerProgram::new("/bin/sh", ["-c", "echo no memory for you >&2; exit 3"]),
        ),
    ];
    for (name, program) in cases {
        let mut config = host.config();
        config.page_server_program = Some(program);
        let manager = Manager::open(config).await.unwrap();
        let vm = id(name);
        let options = RestoreOptions {
            memory: RestoreMemory::OnDemand,
            ..RestoreOptions::default()
        };
        let err = manager.restore(&vm, &snap, options).await.unwrap_err();
        let VmError::PageServer { source, .. } = &err else {
            panic!("{name}: {err:?}");
        };
        match (name, source.as_ref()) {
            ("missing", PageServerError::HelperSpawn { .. }) => {}
            ("silent", PageServerError::Helper { message }) => {
                // Before or after reading its request: either way, said so.
                assert!(message.contains("helper exited without"), "{message}");
            }
            ("loud", PageServerError::Helper { message }) => {
                assert!(
                    message.contains("it logged: no memory for you"),
                    "{message}"
                );
            }
            _ => panic!("{name}: {err:?}"),
        }
        assert!(!host.vm_dirs().contains(&name.to_owned()), "{name}");
        assert!(host.vmm_pids(&vm).is_empty(), "{name}");
        assert!(manager.get(&vm).await.is_err());
    }
}
