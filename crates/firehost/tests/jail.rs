//! Jailed VMs.
//!
//! The refusals (no jail configuration, a missing jailer, a missing chroot
//! base, a cgroup controller the host lacks, bad limits) happen before
//! anything is spawned, so they run everywhere. The jailed lifecycle needs
//! the real `jailer` and a statically linked Firecracker
//! (`FIREHOST_FIRECRACKER` and `FIREHOST_JAILER`, or `jailer` on `PATH`),
//! and root; without them it skips, saying so.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{TestHost, id, within};
use firehost::jail::{CgroupVersion, JailConfig, JailError, JailSpec};
use firehost::manager::StopOptions;
use firehost::{Manager, ManagerConfig, VmError, VmSpec, VmState};

const LONG: Duration = Duration::from_secs(30);

/// A test host plus a chroot base of its own, cleaned up (with any
/// process still rooted in one of its jails) when dropped.
struct JailHost {
    host: TestHost,
    base: PathBuf,
    /// Each test its own uids: tests run in parallel, and the allocator
    /// only knows its own manager's VMs. One range per test: the state
    /// directory records it.
    uids: std::ops::Range<u32>,
}

impl JailHost {
    fn new() -> JailHost {
        let host = TestHost::new();
        let base = host.dir.path().join("jails");
        std::fs::create_dir(&base).unwrap();
        JailHost {
            host,
            base,
            uids: unique_uids(),
        }
    }

    fn config(&self, jailer: &Path) -> ManagerConfig {
        let mut config = self.host.config();
        config.jail = Some(JailConfig {
            jailer: jailer.to_owned(),
            chroot_base: self.base.clone(),
            uid_range: self.uids.clone(),
            parent_cgroup: PathBuf::from(parent_cgroup()),
            ..JailConfig::default()
        });
        config
    }

    /// Everything left under the chroot base, as relative paths.
    fn leftovers(&self) -> Vec<PathBuf> {
        walk(&self.base)
            .into_iter()
            .map(|p| p.strip_prefix(&self.base).unwrap().to_owned())
            .collect()
    }
}

impl Drop for JailHost {
    fn drop(&mut self) {
        for jail in walk(&self.base).into_iter().filter(|p| p.ends_with("root")) {
            for pid in firehost::vmm::process::find_rooted_in(&jail) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
        // The per-test parent cgroups: empty once their VMs' cgroups are
        // gone (a test still running keeps its own, which rmdir refuses).
        if let Ok(mounts) = firehost::jail::CgroupMounts::read() {
            for dir in mounts.existing_dirs(Path::new(""), &parent_cgroup()) {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// The parent cgroup of this test process's VMs.
fn parent_cgroup() -> String {
    format!("firehost-test-{}", std::process::id())
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(path.clone());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&path));
            }
        }
    }
    out
}

fn unique_uids() -> std::ops::Range<u32> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let block = NEXT.fetch_add(1, Ordering::Relaxed);
    let start = 910_000 + (std::process::id() % 1000) * 100 + block * 10;
    start..start + 10
}

/// A jailed VM on a writable root filesystem: its own copy in its jail.
fn jailed() -> VmSpec {
    VmSpec {
        jail: Some(JailSpec::default()),
        rootfs_read_only: Some(false),
        ..VmSpec::default()
    }
}

/// The real jailer, if this run has one (and a real Firecracker).
fn real_jailer(test: &str) -> Option<PathBuf> {
    if common::backend().is_fake() {
        common::skip(
            test,
            "needs a real, static Firecracker (FIREHOST_FIRECRACKER)",
        );
        return None;
    }
    let jailer = std::env::var_os("FIREHOST_JAILER")
        .map(PathBuf::from)
        .or_else(|| firehost::manager::find_binary(Path::new("jailer")));
    if jailer.is_none() {
        common::skip(test, "needs the jailer (FIREHOST_JAILER or PATH)");
    }
    jailer
}

/// Asserts a create failed with a jail error and left nothing behind.
async fn refused(jail: &JailHost, manager: &Manager, name: &str, spec: VmSpec) -> JailError {
    let vm = id(name);
    let err = manager.create(&vm, spec).await.unwrap_err();
    assert!(manager.get(&vm).await.is_err(), "{name} is registered");
    assert!(
        !jail.host.vm_dirs().contains(&name.to_owned()),
        "{name} dir left"
    );
    assert_eq!(jail.leftovers(), Vec::<PathBuf>::new(), "{name}");
    match err {
        VmError::Jail { source, .. } => *source,
        VmError::InvalidSpec { source, .. } => match source {
            firehost::spec::SpecError::Jail(e) => e,
            other => panic!("{name}: {other:?}"),
        },
        other => panic!("{name}: {other:?}"),
    }
}

#[tokio::test]
async fn a_jail_is_refused_cleanly_when_it_cannot_be_made() {
    let jail = JailHost::new();
    // Any executable passes for a jailer here: every case fails first.
    let stand_in = Path::new("/bin/true");

    let unconfigured = jail.host.manager().await;
    let e = refused(&jail, &unconfigured, "no-config", jailed()).await;
    assert!(matches!(e, JailError::NotConfigured), "{e:?}");
    drop(unconfigured);

    let manager = Manager::open(jail.config(&jail.base.join("no-jailer")))
        .await
        .unwrap();
    let e = refused(&jail, &manager, "no-jailer", jailed()).await;
    assert!(matches!(e, JailError::JailerNotFound { .. }), "{e:?}");
    drop(manager);

    // A base that other users could change (the jailer works in it as
    // root), and one that is a file. (A missing one is created: unit tests
    // in jail/base.rs.)
    let open_base = jail.host.dir.path().join("open-base");
    std::fs::create_dir(&open_base).unwrap();
    std::fs::set_permissions(&open_base, std::fs::Permissions::from_mode(0o777)).unwrap();
    let file_base = jail.host.dir.path().join("file-base");
    std::fs::write(&file_base, "").unwrap();
    for (base, name) in [(&open_base, "open-base"), (&file_base, "file-base")] {
        let mut config = jail.config(stand_in);
        config.jail.as_mut().unwrap().chroot_base = base.clone();
        // An explicit change of the recorded jail settings (no VM runs).
        config.settings = firehost::manager::SettingsPolicy::Change;
        let manager = Manager::open(config).await.unwrap();
        let e = refused(&jail, &manager, name, jailed()).await;
        match name {
            "open-base" => assert!(
                matches!(&e, JailError::UnsafeChrootBase { why, .. } if why.contains("777")),
                "{e:?}"
            ),
            _ => assert!(matches!(e, JailError::ChrootBase { .. }), "{e:?}"),
        }
        drop(manager);
    }
    assert_eq!(
        std::fs::metadata(&open_base).unwrap().permissions().mode() & 0o777,
        0o777,
        "a refused base is left as it was"
    );

    let mut config = jail.config(stand_in);
    config.settings = firehost::manager::SettingsPolicy::Change;
    let manager = Manager::open(config).await.unwrap();
    let bad_limits = VmSpec {
        jail: Some(JailSpec {
            cpu_weight: Some(0),
            ..JailSpec::default()
        }),
        ..VmSpec::default()
    };
    let e = refused(&jail, &manager, "bad-limits", bad_limits).await;
    assert!(
        matches!(
            e,
            JailError::InvalidSpec {
                field: "cpu_weight",
                ..
            }
        ),
        "{e:?}"
    );
    let root = VmSpec {
        jail: Some(JailSpec {
            uid: Some(0),
            ..JailSpec::default()
        }),
        ..VmSpec::default()
    };
    let e = refused(&jail, &manager, "as-root", root).await;
    assert!(matches!(e, JailError::InvalidSpec { .. }), "{e:?}");
    drop(manager);

    // A version whose hierarchy lacks the controller: on a host with v1
    // controllers, v2 usually has none, and vice versa.
    let mounts = firehost::jail::CgroupMounts::read().unwrap();
    let lacking = [CgroupVersion::V2, CgroupVersion::V1]
        .into_iter()
        .find(|v| {
            mounts
                .choose(
                    Some(*v),
                    &firehost::jail::CgroupLimits {
                        pids_max: Some(10),
                        ..Default::default()
                    },
                )
                .is_err()
        });
    if let Some(version) = lacking {
        let mut config = jail.config(stand_in);
        config.jail.as_mut().unwrap().cgroup_version = Some(version);
        config.settings = firehost::manager::SettingsPolicy::Change;
        let manager = Manager::open(config).await.unwrap();
        let limited = VmSpec {
            jail: Some(JailSpec {
                pids_max: Some(10),
                ..JailSpec::default()
            }),
            ..VmSpec::default()
        };
        let e = refused(&jail, &manager, "no-controller", limited).await;
        assert!(
            matches!(&e, JailError::ControllerMissing { controller, .. } if controller == "pids"),
            "{e:?}"
        );
    } else {
        common::skip(
            "a_jail_is_refused_cleanly_when_it_cannot_be_made (controller case)",
            "both cgroup versions have the pids controller here",
        );
    }
}

#[tokio::test]
async fn a_jailed_vm_runs_as_its_uid_in_its_chroot_within_its_limits_and_leaves_nothing() {
    let Some(jailer) = real_jailer("a_jailed_vm_runs_as_its_uid…") else {
        return;
    };
    let jail = JailHost::new();
    let mut config = jail.config(&jailer);
    config.vmm_log = Some(firehost::vmm::LogLevel::Info);
    config.vmm_metrics = true;
    let manager = Manager::open(config).await.unwrap();
    let vm = id("jailed-vm");
    let spec = VmSpec {
        jail: Some(JailSpec {
            memory_max_mib: Some(512),
            pids_max: Some(64),
            cpu_quota_percent: Some(50),
            ..JailSpec::default()
        }),
        ..VmSpec::default()
    };
    let info = within("the jailed create", LONG, manager.run(&vm, spec))
        .await
        .unwrap();
    assert_eq!(info.state, VmState::Running);
    let record = info.jail.clone().expect("the info shows the jail");
    let pid = info.pid.unwrap();

    // Firecracker itself, as the jail's uid and gid, rooted in the chroot.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    assert_eq!(ids("Uid:"), [record.uid; 4]);
    assert_eq!(ids("Gid:"), [record.gid; 4]);
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert!(comm.starts_with("firecracker"), "{comm}");
    let root = std::fs::metadata(format!("/proc/{pid}/root")).unwrap();
    let chroot = std::fs::metadata(&record.chroot).unwrap();
    assert_eq!((root.dev(), root.ino()), (chroot.dev(), chroot.ino()));
    assert!(record.chroot.starts_with(&jail.base));
    // The API socket the manager uses is the one inside the chroot, and
    // so are the FIFOs Firecracker writes its log and metrics into, as its
    // uid; the log keeper copies them into bounded files in the VM's
    // directory, which the VM's uid cannot touch.
    assert!(info.api_socket.starts_with(&record.chroot));
    for file in ["firecracker.log", "metrics.json"] {
        let meta = std::fs::metadata(record.chroot.join(file)).unwrap();
        assert_eq!(meta.uid(), record.uid, "{file}");
        assert!(meta.file_type().is_fifo(), "{file} is a FIFO");
    }
    let copy = info.dir.join("firecracker.log");
    common::poll_until("Firecracker's log", LONG, || {
        std::fs::read_to_string(&copy)
            .ok()
            .filter(|log| !log.is_empty())
    })
    .await;
    assert_eq!(std::fs::metadata(&copy).unwrap().uid(), 0);

    // The limits, on the VMM's own cgroup(s).
    assert!(!record.cgroups.is_empty());
    let pid_text = pid.to_string();
    let mut seen = Vec::new();
    for dir in &record.cgroups {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l == pid_text), "{dir:?}: {procs}");
        for (file, value) in [
            ("memory.max", "536870912"),
            ("memory.limit_in_bytes", "536870912"),
            ("pids.max", "64"),
            ("cpu.max", "50000 100000"),
            ("cpu.cfs_quota_us", "50000"),
        ] {
            if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
                assert_eq!(text.trim(), value, "{dir:?}/{file}");
                seen.push(file);
            }
        }
    }
    assert_eq!(seen.len(), 3, "memory, pids and cpu limits: {seen:?}");

    // The lifecycle works on the real VMM.
    manager.pause(&vm).await.unwrap();
    manager.resume(&vm).await.unwrap();
    let stopped = manager
        .stop(
            &vm,
            StopOptions {
                grace: Some(Duration::from_secs(1)),
                ..StopOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(matches!(stopped.info.state, VmState::Stopped { .. }));
    assert!(!common::process_alive(pid));
    for dir in &record.cgroups {
        assert!(!dir.exists(), "{dir:?} outlived the VMM");
    }
    manager.destroy(&vm).await.unwrap();
    // Only the jailer's shared per-binary directory may remain, empty.
    for left in jail.leftovers() {
        assert_eq!(left.components().count(), 1, "{left:?} left behind");
    }
}

#[tokio::test]
async fn uids_are_one_per_live_vm_and_a_restarted_manager_keeps_them() {
    let Some(jailer) = real_jailer("uids_are_one_per_live_vm…") else {
        return;
    };
    let jail = JailHost::new();
    let mut config = jail.config(&jailer);
    let range = config.jail.as_ref().unwrap().uid_range.clone();
    config.jail.as_mut().unwrap().uid_range = range.start..range.start + 1;
    let manager = Manager::open(config.clone()).await.unwrap();
    let first = within("a jailed create", LONG, manager.run(&id("first"), jailed()))
        .await
        .unwrap();
    assert_eq!(first.jail.as_ref().unwrap().uid, range.start);
    // The range holds one uid: the second VM is refused and leaves nothing.
    let err = manager.run(&id("second"), jailed()).await.unwrap_err();
    assert!(
        matches!(&err, VmError::Jail { source, .. } if matches!(**source, JailError::UidsExhausted { .. })),
        "{err:?}"
    );
    assert!(!jail.host.vm_dirs().contains(&"second".to_owned()));
    let jails: Vec<_> = jail
        .leftovers()
        .into_iter()
        .filter(|p| p.components().count() == 2)
        .collect();
    assert_eq!(jails.len(), 1, "{jails:?}");

    // Renamed, it keeps its jail and its uid; a new manager finds it so.
    let renamed = manager.rename(&id("first"), &id("renamed")).await.unwrap();
    assert_eq!(renamed.jail, first.jail, "the jail goes by the VM's key");
    drop(manager);
    let manager = Manager::open(config).await.unwrap();
    assert_eq!(
        manager.get(&id("renamed")).await.unwrap().state,
        VmState::Running
    );
    let err = manager.run(&id("second"), jailed()).await.unwrap_err();
    assert!(matches!(err, VmError::Jail { .. }), "{err:?}");
    // Once the first is gone, its uid is free.
    manager
        .stop(&id("renamed"), StopOptions::default())
        .await
        .unwrap();
    let second = within(
        "a jailed create",
        LONG,
        manager.run(&id("second"), jailed()),
    )
    .await
    .unwrap();
    assert_eq!(second.jail.as_ref().unwrap().uid, range.start);
    manager.destroy(&id("renamed")).await.unwrap();
    manager
        .stop(&id("second"), StopOptions::default())
        .await
        .unwrap();
    manager.destroy(&id("second")).await.unwrap();
}

#[tokio::test]
async fn a_jailed_snapshot_lands_in_the_store_and_restores_into_jails_with_both_backends() {
    use firehost::manager::{RestoreMemory, RestoreOptions, SnapshotOptions};
    let Some(jailer) = real_jailer("a_jailed_snapshot_lands_in_the_store…") else {
        return;
    };
    let jail = JailHost::new();
    let manager = Manager::open(jail.config(&jailer)).await.unwrap();
    let source = id("jsrc");
    within("a jailed create", LONG, manager.run(&source, jailed()))
        .await
        .unwrap();
    let snap = "jsnap".parse().unwrap();
    let taken = manager
        .snapshot(&source, &snap, SnapshotOptions::default())
        .await
        .unwrap();
    // In the store, ours and private, not in the jail.
    assert!(taken.dir.starts_with(manager.snapshots_dir()));
    for file in ["vmstate", "memory"] {
        let meta = std::fs::metadata(taken.dir.join(file)).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600), "{file}");
    }
    assert!(taken.manifest.source_chroot.is_some());
    let source_chroot = manager.get(&source).await.unwrap().jail.unwrap().chroot;
    assert!(!source_chroot.join("snapshot").exists());

    // Two restores at once, one per memory backend, each in its own jail.
    let (by_file, by_uffd) = (id("jfile"), id("juffd"));
    let uffd = RestoreOptions {
        memory: RestoreMemory::OnDemand,
        ..RestoreOptions::default()
    };
    let (a, b) = tokio::join!(
        manager.restore(&by_file, &snap, RestoreOptions::default()),
        manager.restore(&by_uffd, &snap, uffd),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    for info in [&a, &b] {
        assert_eq!(info.state, VmState::Running);
        let api = manager.api(&info.id).await.unwrap().unwrap();
        let state = api.describe_instance().await.unwrap().state;
        assert_eq!(state, firehost::api::models::InstanceState::Running);
        let jail = info.jail.as_ref().unwrap();
        assert_ne!(jail.chroot, source_chroot);
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", info.pid.unwrap())).unwrap();
        assert!(status.contains(&format!("Uid:\t{}", jail.uid)), "{status}");
    }
    assert_ne!(a.jail.as_ref().unwrap().uid, b.jail.as_ref().unwrap().uid);

    for vm in [&source, &by_file, &by_uffd] {
        manager.stop(vm, StopOptions::default()).await.unwrap();
        manager.destroy(vm).await.unwrap();
    }
    for left in jail.leftovers() {
        assert_eq!(left.components().count(), 1, "{left:?} left behind");
    }

    // A jailed snapshot needs a manager that can jail.
    drop(manager);
    let unjailed = Manager::open(jail.host.config()).await.unwrap();
    let err = unjailed
        .restore(&id("outside"), &snap, RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VmError::Jail { source, .. } if matches!(**source, JailError::NotConfigured)),
        "{err:?}"
    );
    assert!(!jail.host.vm_dirs().contains(&"outside".to_owned()));
    drop(unjailed);
}

/// A jailed snapshot that keeps the disks stages its clones' drives from
/// the bundle: the disk as it was at the snapshot, not the source jail's
/// copy as it is now.
#[tokio::test]
async fn a_jailed_clone_of_a_snapshot_with_kept_disks_starts_from_the_kept_disk() {
    use firehost::manager::{RestoreOptions, SnapshotOptions};
    let Some(jailer) = real_jailer("a_jailed_clone_of_a_snapshot_with_kept_disks…") else {
        return;
    };
    let jail = JailHost::new();
    let manager = Manager::open(jail.config(&jailer)).await.unwrap();
    let source = id("ksrc");
    let info = within("a jailed create", LONG, manager.run(&source, jailed()))
        .await
        .unwrap();
    let in_jail = info.jail.unwrap().chroot.join("rootfs");
    let at_snapshot = std::fs::read(&in_jail).unwrap();
    let snap = "kept-jail".parse().unwrap();
    let options = SnapshotOptions {
        disks: true,
        ..SnapshotOptions::default()
    };
    let taken = manager.snapshot(&source, &snap, options).await.unwrap();
    assert_eq!(taken.manifest.disks, ["rootfs"]);
    // The source's guest writes on.
    let later: Vec<u8> = at_snapshot.iter().map(|b| b ^ 0xff).collect();
    std::fs::write(&in_jail, &later).unwrap();

    let clone = manager
        .restore(&id("kclone"), &snap, RestoreOptions::default())
        .await
        .unwrap();
    let theirs = clone.jail.as_ref().unwrap().chroot.join("rootfs");
    assert_eq!(std::fs::read(&theirs).unwrap(), at_snapshot);
    assert_eq!(
        clone.spec.rootfs, info.spec.rootfs,
        "the record names the original"
    );
    for vm in [&source, &clone.id] {
        manager.stop(vm, StopOptions::default()).await.unwrap();
        manager.destroy(vm).await.unwrap();
    }
    for left in jail.leftovers() {
        assert_eq!(left.components().count(), 1, "{left:?} left behind");
    }
}

#[tokio::test]
async fn a_vm_with_a_fixed_uid_restores_and_clones_while_it_runs() {
    use firehost::manager::{RestoreOptions, SnapshotOptions};
    let Some(jailer) = real_jailer("a_vm_with_a_fixed_uid_restores_and_clones_while_it_runs")
    else {
        return;
    };
    let jail = JailHost::new();
    // A fresh host: no chroot base yet. The first jailed VM makes it.
    std::fs::remove_dir(&jail.base).unwrap();
    let manager = Manager::open(jail.config(&jailer)).await.unwrap();
    let fixed = jail.uids.start + 9;
    let source = id("fixed");
    let spec = VmSpec {
        jail: Some(JailSpec {
            uid: Some(fixed),
            ..JailSpec::default()
        }),
        ..VmSpec::default()
    };
    within("a jailed create", LONG, manager.run(&source, spec))
        .await
        .unwrap();
    let base = std::fs::metadata(&jail.base).unwrap();
    assert_eq!((base.uid(), base.mode() & 0o7777), (0, 0o755));
    let snap = "fixed-snap".parse().unwrap();
    manager
        .snapshot(&source, &snap, SnapshotOptions::default())
        .await
        .unwrap();

    // The source still holds its uid: the restore takes one of its own.
    let pooled = manager
        .restore(&id("pooled"), &snap, RestoreOptions::default())
        .await
        .unwrap();
    let pooled_uid = pooled.jail.as_ref().unwrap().uid;
    assert_ne!(pooled_uid, fixed);
    // Given ids, one per clone; asking for the source's uid is refused
    // and leaves nothing.
    let given = |uid| RestoreOptions {
        uid: Some(uid),
        gid: Some(uid),
        ..RestoreOptions::default()
    };
    let clones = vec![
        (id("given-0"), given(jail.uids.start + 7)),
        (id("given-1"), given(jail.uids.start + 8)),
    ];
    let made = manager.clone_many(&snap, clones).await.unwrap();
    for (vm, uid) in made.iter().zip([jail.uids.start + 7, jail.uids.start + 8]) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", vm.pid.unwrap())).unwrap();
        assert!(status.contains(&format!("Uid:\t{uid}")), "{status}");
        assert!(status.contains(&format!("Gid:\t{uid}")), "{status}");
    }
    let err = manager
        .restore(&id("taken"), &snap, given(fixed))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VmError::Jail { source, .. } if matches!(**source, JailError::UidTaken { .. })),
        "{err:?}"
    );
    assert!(!jail.host.vm_dirs().contains(&"taken".to_owned()));

    for vm in ["fixed", "pooled", "given-0", "given-1"] {
        manager.stop(&id(vm), StopOptions::default()).await.unwrap();
        manager.destroy(&id(vm)).await.unwrap();
    }
    for left in jail.leftovers() {
        assert_eq!(left.components().count(), 1, "{left:?} left behind");
    }
}

#[tokio::test]
async fn an_unjailed_snapshot_is_not_restored_into_a_jail() {
    use firehost::manager::{RestoreOptions, SnapshotOptions};
    let jail = JailHost::new();
    let snap = "plain".parse().unwrap();
    {
        let manager = jail.host.manager().await;
        let source = id("plain-src");
        manager.run(&source, VmSpec::default()).await.unwrap();
        manager
            .snapshot(&source, &snap, SnapshotOptions::default())
            .await
            .unwrap();
    }
    // A manager that jails every VM: the vmstate's drive paths are host
    // paths, which a jail does not have.
    let mut config = jail.config(Path::new("/bin/true"));
    config.jail.as_mut().unwrap().always = true;
    let manager = Manager::open(config).await.unwrap();
    let err = manager
        .restore(&id("into-jail"), &snap, RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VmError::Jail { source, .. } if matches!(**source, JailError::SnapshotLayout { .. })),
        "{err:?}"
    );
    assert!(!jail.host.vm_dirs().contains(&"into-jail".to_owned()));
    assert_eq!(jail.leftovers(), Vec::<PathBuf>::new());
    // The bundle is not leased by the failed restore.
    assert!(manager.snapshots().leases(&snap).await.unwrap().is_empty());
}

#[test]
fn a_chroot_base_on_a_read_only_filesystem_is_refused_and_leaves_nothing() {
    const T: &str = "a_chroot_base_on_a_read_only_filesystem_is_refused_and_leaves_nothing";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return common::skip(T, "needs root to mount a read-only filesystem");
    }
    let jail = JailHost::new();
    let config = jail.config(Path::new("/bin/true"));
    let state_vms = jail.host.state_dir().join("vms");
    let base = jail.base.clone();
    // The read-only mount exists only in this thread's own mount
    // namespace: the host's mount table is never touched.
    let outcome = std::thread::spawn(move || -> Result<Option<JailError>, String> {
        use rustix::mount::{MountFlags, MountPropagationFlags};
        use rustix::thread::UnshareFlags;
        // SAFETY: the file table is not unshared, so no descriptor changes
        // meaning; CLONE_FS makes the mount namespace this thread's alone.
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::FS | UnshareFlags::NEWNS) }
            .map_err(|e| format!("unshare: {e}"))?;
        rustix::mount::mount_change(
            "/",
            MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
        )
        .map_err(|e| format!("make / private: {e}"))?;
        // Mode 0755: a tmpfs root is 1777 by default, which the base check
        // would refuse before the read-only filesystem is reached.
        rustix::mount::mount(
            "none",
            &base,
            "tmpfs",
            MountFlags::RDONLY,
            Some(c"mode=0755"),
        )
        .map_err(|e| format!("mount a read-only tmpfs: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Ok(runtime.block_on(async move {
            let manager = Manager::open(config).await.unwrap();
            let vm = id("ro-base");
            let err = manager.create(&vm, jailed()).await.unwrap_err();
            assert!(manager.get(&vm).await.is_err());
            match err {
                VmError::Jail { source, .. } => Some(*source),
                other => panic!("{other:?}"),
            }
        }))
    })
    .join()
    .unwrap();
    let err = match outcome {
        Ok(err) => err.unwrap(),
        Err(why) => return common::skip(T, &why),
    };
    assert!(
        matches!(&err, JailError::Stage { source, .. } if source.raw_os_error() == Some(libc::EROFS)),
        "{err:?}"
    );
    // Nothing in the state directory, nothing under the (real) base.
    let dirs: Vec<_> = std::fs::read_dir(&state_vms)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(dirs.is_empty(), "{dirs:?}");
    assert_eq!(jail.leftovers(), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn a_jailer_that_forks_is_followed_to_firecracker() {
    let Some(jailer) = real_jailer("a_jailer_that_forks_is_followed_to_firecracker") else {
        return;
    };
    for (name, new_pid_ns, daemonize) in [("pidns", true, false), ("daemon", false, true)] {
        let jail = JailHost::new();
        let mut config = jail.config(&jailer);
        let settings = config.jail.as_mut().unwrap();
        settings.new_pid_ns = new_pid_ns;
        settings.daemonize = daemonize;
        let manager = Manager::open(config.clone()).await.unwrap();
        let vm = id(name);
        let info = within("a forking jailed create", LONG, manager.run(&vm, jailed()))
            .await
            .unwrap();
        let pid = info.pid.unwrap();
        // The pid the manager watches is Firecracker's, in the jail.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert!(comm.starts_with("firecracker"), "{name}: {comm}");
        let root = std::fs::metadata(format!("/proc/{pid}/root")).unwrap();
        let chroot = std::fs::metadata(&info.jail.as_ref().unwrap().chroot).unwrap();
        assert_eq!(root.ino(), chroot.ino(), "{name}");
        manager.pause(&vm).await.unwrap();
        manager.resume(&vm).await.unwrap();
        // A new manager finds it too.
        drop(manager);
        let manager = Manager::open(config).await.unwrap();
        let again = manager.get(&vm).await.unwrap();
        assert_eq!(
            (again.state, again.pid),
            (VmState::Running, Some(pid)),
            "{name}"
        );
        manager.stop(&vm, StopOptions::default()).await.unwrap();
        assert!(!common::process_alive(pid), "{name}");
        manager.destroy(&vm).await.unwrap();
        for left in jail.leftovers() {
            assert_eq!(left.components().count(), 1, "{name}: {left:?} left behind");
        }
    }
}

#[tokio::test]
async fn a_forking_jailer_that_fails_is_reported_and_leaves_nothing() {
    let Some(jailer) = real_jailer("a_forking_jailer_that_fails_is_reported…") else {
        return;
    };
    let jail = JailHost::new();
    let mut config = jail.config(&jailer);
    config.jail.as_mut().unwrap().daemonize = true;
    let manager = Manager::open(config).await.unwrap();
    // A CPU the host does not have: the jailer cannot write the cpuset,
    // and exits with an error before it forks.
    let spec = VmSpec {
        jail: Some(JailSpec {
            cpus: Some("4095".into()),
            ..JailSpec::default()
        }),
        ..VmSpec::default()
    };
    let vm = id("bad-cpuset");
    let err = within("a failing jailed create", LONG, manager.run(&vm, spec))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VmError::Jail { source, .. } if matches!(**source, JailError::JailerFailed { .. })),
        "{err:?}"
    );
    assert!(manager.get(&vm).await.is_err());
    assert!(!jail.host.vm_dirs().contains(&"bad-cpuset".to_owned()));
    for left in jail.leftovers() {
        assert_eq!(left.components().count(), 1, "{left:?} left behind");
    }
    let mounts = firehost::jail::CgroupMounts::read().unwrap();
    let cgroups = mounts.existing_dirs(Path::new(&parent_cgroup()), "bad-cpuset");
    assert!(cgroups.is_empty(), "{cgroups:?}");
}

#[tokio::test]
async fn a_jailed_drive_swap_stages_the_new_file_at_the_drives_place_in_the_jail() {
    let Some(jailer) = real_jailer("a_jailed_drive_swap_stages_the_new_file…") else {
        return;
    };
    let jail = JailHost::new();
    let manager = Manager::open(jail.config(&jailer)).await.unwrap();
    let file = |name: &str, byte: u8| {
        let path = jail.host.dir.path().join(name);
        std::fs::write(&path, vec![byte; 4096]).unwrap();
        path
    };
    let (a, b, c) = (
        file("a.img", b'a'),
        file("b.img", b'b'),
        file("c.img", b'c'),
    );
    let vm = id("jailed-swap");
    let spec = VmSpec {
        extra_drives: vec![
            firehost::DriveSpec::new("data", &a, false),
            firehost::DriveSpec::new("media", &c, true),
        ],
        ..jailed()
    };
    let info = within("the jailed run", LONG, manager.run(&vm, spec))
        .await
        .unwrap();
    let chroot = info.jail.clone().unwrap().chroot;
    let api = manager.api(&vm).await.unwrap().unwrap();
    let paths = || async {
        let config = api.get_export_vm_config().await.unwrap();
        config
            .drives
            .unwrap_or_default()
            .into_iter()
            .map(|d| (d.drive_id, d.path_on_host.unwrap()))
            .collect::<Vec<_>>()
    };
    let before = paths().await;

    let info = manager.swap_drive(&vm, "data", &b).await.unwrap();
    assert_eq!(info.spec.extra_drives[0].path, b.canonicalize().unwrap());
    let swapped = info.spec.extra_drives[1].path.clone();
    assert_eq!(swapped, c.canonicalize().unwrap());
    // Firecracker still opens the drive at its place in the jail, which now
    // holds a private copy of b owned by the jail's uid.
    assert_eq!(paths().await, before);
    let inside = |drive: &str| {
        let (_, path) = before.iter().find(|(id, _)| id == drive).unwrap();
        chroot.join(path.strip_prefix("/").unwrap())
    };
    let holds = |path: &Path, byte: u8| {
        let data = std::fs::read(path).unwrap();
        data.len() == 4096 && data.iter().all(|b| *b == byte)
    };
    let staged = inside("data");
    assert!(holds(&staged, b'b'), "{staged:?} holds b's data");
    let meta = std::fs::metadata(&staged).unwrap();
    assert_eq!(meta.uid(), info.jail.as_ref().unwrap().uid);
    assert_ne!(meta.ino(), std::fs::metadata(&b).unwrap().ino(), "a copy");
    let leftovers: Vec<_> = walk(staged.parent().unwrap())
        .into_iter()
        .filter(|p| {
            let name = p.to_string_lossy();
            name.ends_with(".next") || name.ends_with(".previous")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A read-only drive is linked, not copied.
    let d = file("d.img", b'd');
    manager.swap_drive(&vm, "media", &d).await.unwrap();
    let media = inside("media");
    assert!(holds(&media, b'd'), "{media:?} holds d's data");
    manager.stop(&vm, StopOptions::default()).await.unwrap();
    manager.destroy(&vm).await.unwrap();
    // Only the jailer's shared per-binary directory may remain, empty.
    for left in jail.leftovers() {
        assert_eq!(left.components().count(), 1, "{left:?} left behind");
    }
}

#[tokio::test]
async fn a_crash_during_a_jailed_drive_swap_keeps_the_recorded_file_at_its_place() {
    use futures_util::FutureExt;
    let Some(jailer) = real_jailer("a_crash_during_a_jailed_drive_swap…") else {
        return;
    };
    for (step, swapped) in [("swap:sent", false), ("swap:recorded", true)] {
        let jail = JailHost::new();
        let manager = Manager::open(jail.config(&jailer)).await.unwrap();
        let file = |name: &str, byte: u8| {
            let path = jail.host.dir.path().join(name);
            std::fs::write(&path, vec![byte; 4096]).unwrap();
            path
        };
        let (a, b) = (file("a.img", b'a'), file("b.img", b'b'));
        let vm = id("jailed-crash");
        let spec = VmSpec {
            extra_drives: vec![firehost::DriveSpec::new("data", &a, false)],
            ..jailed()
        };
        let info = within("the jailed run", LONG, manager.run(&vm, spec))
            .await
            .unwrap();
        let chroot = info.jail.clone().unwrap().chroot;
        firehost::manager::fault::crash_at(&vm, step);
        let crashed = std::panic::AssertUnwindSafe(manager.swap_drive(&vm, "data", &b))
            .catch_unwind()
            .await;
        assert!(crashed.is_err(), "{step}: the swap should have crashed");
        drop(manager);

        let mut lazy = jail.config(&jailer);
        lazy.recovery = firehost::manager::Recovery::Lazy;
        let manager = Manager::open(lazy).await.unwrap();
        let info = manager.get(&vm).await.unwrap();
        let (expected, byte) = if swapped { (&b, b'b') } else { (&a, b'a') };
        assert_eq!(
            info.spec.extra_drives[0].path,
            expected.canonicalize().unwrap(),
            "{step}"
        );
        let drives = chroot.join("drives");
        let staged = std::fs::read(drives.join("data")).unwrap();
        assert!(
            staged.len() == 4096 && staged.iter().all(|x| *x == byte),
            "{step}: the drive's place holds the recorded file"
        );
        let names: Vec<String> = std::fs::read_dir(&drives)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["data"], "{step}: nothing staged is left");
        manager.stop(&vm, StopOptions::default()).await.unwrap();
        manager.destroy(&vm).await.unwrap();
    }
}
