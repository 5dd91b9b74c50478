//! Drives, limits, the entropy device and the balloon: what a spec asks
//! for is what the VMM reports (`GET /vm/config`), runtime updates change
//! both or neither, and snapshots keep them. Against fake-firecracker, or
//! a real Firecracker with `FIREHOST_FIRECRACKER` (see `common`).

mod common;

use std::time::Duration;

use common::{TestHost, id, within};
use firehost::api::models::{
    CacheType, FullVmConfiguration, IoEngine as ApiIoEngine, RateLimiter, TokenBucket,
};
use firehost::manager::{DriveLimitUpdate, RestoreOptions, SnapshotOptions, UpdateError, VmUpdate};
use firehost::spec::{
    BalloonSpec, CpuTemplateSpec, DriveCache, DriveIo, DriveSpec, EntropySpec, IoEngine,
    ResolvedCpuTemplate, StaticCpuTemplate,
};
use firehost::vocab::{Bucket, BucketChange, LimitChange, RateLimit};
use firehost::{Manager, VmError, VmId, VmSpec, VmState};

const LONG: Duration = Duration::from_secs(30);

/// 10 MiB/s with a 1 MiB burst, and 500 requests a second.
fn limit() -> RateLimit {
    RateLimit {
        bandwidth: Some(Bucket {
            one_time_burst: Some(1 << 20),
            ..Bucket::per_second(10 << 20)
        }),
        ops: Some(Bucket::per_second(500)),
    }
}

fn api_limit(limit: &RateLimit) -> RateLimiter {
    let bucket = |b: &Bucket| TokenBucket {
        one_time_burst: b.one_time_burst,
        ..TokenBucket::new(b.size, b.refill_time_ms)
    };
    RateLimiter {
        bandwidth: limit.bandwidth.as_ref().map(bucket),
        ops: limit.ops.as_ref().map(bucket),
    }
}

/// A spec with every device setting this suite checks: a limited,
/// write-back root drive with a PARTUUID, a read-only data drive on
/// `io_uring`, a limited entropy device and a balloon.
fn rich_spec(host: &TestHost) -> VmSpec {
    let data = host.dir.path().join("data.img");
    std::fs::File::create(&data)
        .and_then(|f| f.set_len(1 << 20))
        .unwrap();
    VmSpec {
        rootfs_io: DriveIo {
            cache: DriveCache::Writeback,
            engine: IoEngine::Sync,
            limit: limit(),
        },
        rootfs_partuuid: Some("0eadbeef-01".into()),
        extra_drives: vec![DriveSpec {
            io: DriveIo {
                engine: IoEngine::Async,
                limit: RateLimit {
                    bandwidth: None,
                    ops: Some(Bucket::per_second(100)),
                },
                ..DriveIo::default()
            },
            ..DriveSpec::new("data", &data, true)
        }],
        entropy: Some(EntropySpec {
            limit: RateLimit {
                bandwidth: Some(Bucket::per_second(4096)),
                ops: None,
            },
        }),
        balloon: Some(BalloonSpec {
            amount_mib: 16,
            deflate_on_oom: true,
            stats_interval_s: 1,
            free_page_hinting: false,
            free_page_reporting: true,
        }),
        ..host.spec()
    }
}

async fn vm_config(manager: &Manager, vm: &VmId) -> FullVmConfiguration {
    let api = manager.api(vm).await.unwrap().unwrap();
    api.get_export_vm_config().await.unwrap()
}

fn drive_limit(config: &FullVmConfiguration, id: &str) -> Option<RateLimiter> {
    let drives = config.drives.as_deref().unwrap_or_default();
    let drive = drives.iter().find(|d| d.drive_id == id).expect("the drive");
    drive.rate_limiter
}

#[tokio::test]
async fn every_device_setting_reaches_the_vmm() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("devices");
    let info = manager.create(&vm, rich_spec(&host)).await.unwrap();
    assert_eq!(info.spec.rootfs_io.limit, limit());

    let config = vm_config(&manager, &vm).await;
    let drives = config.drives.clone().unwrap_or_default();
    assert_eq!(drives.len(), 2);
    let root = &drives[0];
    assert!(root.is_root_device);
    assert_eq!(root.partuuid.as_deref(), Some("0eadbeef-01"));
    assert_eq!(root.cache_type, Some(CacheType::Writeback));
    assert_eq!(root.io_engine, Some(ApiIoEngine::Sync));
    assert_eq!(root.rate_limiter, Some(api_limit(&limit())));
    let data = &drives[1];
    assert_eq!(data.drive_id, "data");
    assert_eq!(data.is_read_only, Some(true));
    assert_eq!(data.cache_type, Some(CacheType::Unsafe));
    assert_eq!(data.io_engine, Some(ApiIoEngine::Async));
    assert_eq!(
        data.rate_limiter,
        Some(RateLimiter {
            bandwidth: None,
            ops: Some(TokenBucket::new(100, 1000)),
        })
    );
    let entropy = config.entropy.expect("an entropy device");
    assert_eq!(
        entropy.rate_limiter,
        Some(RateLimiter {
            bandwidth: Some(TokenBucket::new(4096, 1000)),
            ops: None,
        })
    );
    let balloon = config.balloon.expect("a balloon");
    assert_eq!(balloon.amount_mib, 16);
    assert!(balloon.deflate_on_oom);
    assert_eq!(balloon.stats_polling_interval_s, Some(1));
    assert_eq!(balloon.free_page_hinting, Some(false));
    assert_eq!(balloon.free_page_reporting, Some(true));

    // The record keeps all of it: a new manager sees the same spec.
    drop(manager);
    let reopened = host.manager().await;
    assert_eq!(reopened.get(&vm).await.unwrap().spec, info.spec);
}

#[tokio::test]
async fn limits_change_at_runtime_and_are_recorded() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("limits");
    manager.run(&vm, rich_spec(&host)).await.unwrap();
    let update = VmUpdate {
        drives: vec![
            DriveLimitUpdate {
                drive_id: "rootfs".into(),
                limit: LimitChange {
                    bandwidth: BucketChange::Remove,
                    ops: BucketChange::Set(Bucket::per_second(50)),
                },
            },
            DriveLimitUpdate {
                drive_id: "data".into(),
                limit: LimitChange {
                    bandwidth: BucketChange::Set(Bucket::per_second(1 << 20)),
                    ..LimitChange::default()
                },
            },
        ],
        balloon_stats_interval_s: Some(5),
        ..VmUpdate::default()
    };
    let info = manager.update(&vm, &update).await.unwrap();
    let root = RateLimit {
        bandwidth: None,
        ops: Some(Bucket::per_second(50)),
    };
    let data = RateLimit {
        bandwidth: Some(Bucket::per_second(1 << 20)),
        ops: Some(Bucket::per_second(100)),
    };
    assert_eq!(info.spec.rootfs_io.limit, root);
    assert_eq!(info.spec.extra_drives[0].io.limit, data);
    assert_eq!(info.spec.balloon.unwrap().stats_interval_s, 5);

    let config = vm_config(&manager, &vm).await;
    assert_eq!(drive_limit(&config, "rootfs"), Some(api_limit(&root)));
    assert_eq!(drive_limit(&config, "data"), Some(api_limit(&data)));
    assert_eq!(config.balloon.unwrap().stats_polling_interval_s, Some(5));

    // A paused VM takes updates too; removing every bucket leaves none.
    manager.pause(&vm).await.unwrap();
    let lift = VmUpdate {
        drives: vec![DriveLimitUpdate {
            drive_id: "rootfs".into(),
            limit: LimitChange {
                bandwidth: BucketChange::Remove,
                ops: BucketChange::Remove,
            },
        }],
        ..VmUpdate::default()
    };
    let info = manager.update(&vm, &lift).await.unwrap();
    assert!(info.spec.rootfs_io.limit.is_unlimited());
    assert_eq!(drive_limit(&vm_config(&manager, &vm).await, "rootfs"), None);

    drop(manager);
    let reopened = host.manager().await;
    assert_eq!(reopened.get(&vm).await.unwrap().spec, info.spec);
}

#[tokio::test]
async fn an_update_the_vmm_refuses_changes_nothing() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("refused");
    let before = manager.run(&vm, rich_spec(&host)).await.unwrap();
    let config_before = vm_config(&manager, &vm).await;
    // The drive change goes first and is accepted; the balloon's is
    // refused, as the halt guest has no balloon driver (the fake's guest
    // has none unless told), so the drive change is taken back.
    let update = VmUpdate {
        drives: vec![DriveLimitUpdate {
            drive_id: "rootfs".into(),
            limit: LimitChange {
                bandwidth: BucketChange::Set(Bucket::per_second(7)),
                ops: BucketChange::Remove,
            },
        }],
        balloon_mib: Some(32),
        ..VmUpdate::default()
    };
    let err = manager.update(&vm, &update).await.unwrap_err();
    assert!(
        matches!(
            err,
            VmError::Api {
                op: "change the balloon's target",
                ..
            }
        ),
        "{err:?}"
    );
    let config_after = vm_config(&manager, &vm).await;
    assert_eq!(config_after.drives, config_before.drives);
    assert_eq!(config_after.balloon, config_before.balloon);
    assert_eq!(manager.get(&vm).await.unwrap().spec, before.spec);
}

#[tokio::test]
async fn bad_updates_are_refused_before_the_vmm_sees_them() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let created = id("not-started");
    manager.create(&created, rich_spec(&host)).await.unwrap();
    let set = |drive: &str, size| VmUpdate {
        drives: vec![DriveLimitUpdate {
            drive_id: drive.into(),
            limit: LimitChange {
                ops: BucketChange::Set(Bucket::per_second(size)),
                ..LimitChange::default()
            },
        }],
        ..VmUpdate::default()
    };
    // Firecracker takes no PATCH before boot.
    let err = manager
        .update(&created, &set("rootfs", 5))
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::Transition { .. }), "{err:?}");

    let running = id("running");
    let spec = VmSpec {
        balloon: None,
        ..rich_spec(&host)
    };
    let before = manager.run(&running, spec).await.unwrap();
    let config_before = vm_config(&manager, &running).await;
    for (update, expected) in [
        (
            set("nope", 5),
            UpdateError::UnknownDrive {
                drive_id: "nope".into(),
            },
        ),
        (
            set("data", 0),
            UpdateError::Limit {
                device: "drive \"data\"".into(),
                source: firehost::vocab::RateLimitError::ZeroSize,
            },
        ),
        (
            VmUpdate {
                balloon_mib: Some(1),
                ..set("rootfs", 5)
            },
            UpdateError::NoBalloon,
        ),
    ] {
        match manager.update(&running, &update).await {
            Err(VmError::InvalidUpdate { source, .. }) => assert_eq!(source, expected),
            other => panic!("{update:?}: {other:?}"),
        }
    }
    assert_eq!(
        vm_config(&manager, &running).await.drives,
        config_before.drives
    );
    assert_eq!(manager.get(&running).await.unwrap().spec, before.spec);
    let err = manager.balloon_stats(&running).await.unwrap_err();
    assert!(
        matches!(
            err,
            VmError::InvalidUpdate {
                source: UpdateError::NoBalloonStats,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn balloon_statistics_are_typed() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("stats");
    manager.run(&vm, rich_spec(&host)).await.unwrap();
    let stats = manager.balloon_stats(&vm).await.unwrap();
    assert_eq!(stats.target_mib, 16);
    assert_eq!(stats.target_pages, 16 * 256);
    // Without a driver in the guest the balloon holds nothing yet.
    assert_eq!(stats.actual_mib, 0);
}

#[tokio::test]
async fn a_restore_keeps_the_snapshots_limits_unless_told_otherwise() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let source = id("source");
    let spec = VmSpec {
        // The data drive is read-only and the root drive writable: the
        // clones get copies of the root drive, and keep its limits.
        rootfs_read_only: Some(false),
        ..rich_spec(&host)
    };
    manager.run(&source, spec).await.unwrap();
    let snap = "limited".parse().unwrap();
    manager
        .snapshot(&source, &snap, SnapshotOptions::default())
        .await
        .unwrap();

    let same = id("same");
    let info = within(
        "a restore",
        LONG,
        manager.restore(&same, &snap, RestoreOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(info.spec.rootfs_io.limit, limit());
    let config = vm_config(&manager, &same).await;
    assert_eq!(drive_limit(&config, "rootfs"), Some(api_limit(&limit())));

    let tighter = Bucket::per_second(1 << 16);
    let options = RestoreOptions {
        devices: VmUpdate {
            drives: vec![DriveLimitUpdate {
                drive_id: "rootfs".into(),
                limit: LimitChange {
                    bandwidth: BucketChange::Set(tighter),
                    ..LimitChange::default()
                },
            }],
            ..VmUpdate::default()
        },
        ..RestoreOptions::default()
    };
    let other = id("other");
    let info = within("a restore", LONG, manager.restore(&other, &snap, options))
        .await
        .unwrap();
    assert_eq!(info.state, VmState::Running);
    let changed = RateLimit {
        bandwidth: Some(tighter),
        ..limit()
    };
    assert_eq!(info.spec.rootfs_io.limit, changed);
    let config = vm_config(&manager, &other).await;
    assert_eq!(drive_limit(&config, "rootfs"), Some(api_limit(&changed)));

    // A bad override is refused before anything starts.
    let bad = RestoreOptions {
        devices: VmUpdate {
            drives: vec![DriveLimitUpdate {
                drive_id: "missing".into(),
                limit: LimitChange {
                    ops: BucketChange::Remove,
                    ..LimitChange::default()
                },
            }],
            ..VmUpdate::default()
        },
        ..RestoreOptions::default()
    };
    let err = manager.restore(&id("bad"), &snap, bad).await.unwrap_err();
    assert!(matches!(err, VmError::InvalidUpdate { .. }), "{err:?}");
    assert!(!host.vm_dirs().contains(&"bad".to_owned()));
}

fn drive_path(config: &FullVmConfiguration, id: &str) -> std::path::PathBuf {
    let drives = config.drives.as_deref().unwrap_or_default();
    let drive = drives.iter().find(|d| d.drive_id == id).expect("the drive");
    drive.path_on_host.clone().expect("a file-backed drive")
}

fn image(host: &TestHost, name: &str) -> std::path::PathBuf {
    let path = host.dir.path().join(name);
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(1 << 20))
        .unwrap();
    path.canonicalize().unwrap()
}

#[tokio::test]
async fn a_drive_swap_points_the_vmm_at_the_new_file_and_moves_the_write_hold() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let (a, b) = (image(&host, "a.img"), image(&host, "b.img"));
    let writable = |path: &std::path::Path| VmSpec {
        extra_drives: vec![DriveSpec::new("data", path, false)],
        ..host.spec()
    };
    let vm = id("swapper");
    manager.run(&vm, writable(&a)).await.unwrap();

    let info = manager.swap_drive(&vm, "data", &b).await.unwrap();
    assert_eq!(info.spec.extra_drives[0].path, b);
    assert_eq!(drive_path(&vm_config(&manager, &vm).await, "data"), b);
    // The VM now writes to b, and no longer to a.
    let other = id("other");
    let err = manager.run(&other, writable(&b)).await.unwrap_err();
    assert!(matches!(err, VmError::DriveInUse { .. }), "{err:?}");
    manager.run(&other, writable(&a)).await.unwrap();
    // Swapping to a file another VM writes to is refused.
    let err = manager.swap_drive(&vm, "data", &a).await.unwrap_err();
    assert!(matches!(err, VmError::DriveInUse { .. }), "{err:?}");
    assert_eq!(drive_path(&vm_config(&manager, &vm).await, "data"), b);

    // The swap is recorded; a new manager holds b for it, not a.
    drop(manager);
    let manager = host.manager().await;
    assert_eq!(manager.get(&vm).await.unwrap().spec.extra_drives[0].path, b);
    let third = id("third");
    let err = manager.run(&third, writable(&b)).await.unwrap_err();
    assert!(matches!(err, VmError::DriveInUse { .. }), "{err:?}");
}

#[tokio::test]
async fn a_drive_swap_that_cannot_happen_changes_nothing() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let a = image(&host, "a.img");
    let spec = VmSpec {
        extra_drives: vec![DriveSpec::new("data", &a, false)],
        ..host.spec()
    };
    let vm = id("stays");
    let before = manager.run(&vm, spec.clone()).await.unwrap();
    let b = image(&host, "b.img");
    let missing = host.dir.path().join("missing.img");
    let err = manager.swap_drive(&vm, "data", &missing).await.unwrap_err();
    assert!(matches!(err, VmError::InvalidSpec { .. }), "{err:?}");
    let err = manager
        .swap_drive(&vm, "data", host.dir.path())
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::InvalidSpec { .. }), "{err:?}");
    let err = manager.swap_drive(&vm, "nope", &b).await.unwrap_err();
    assert!(
        matches!(
            err,
            VmError::InvalidUpdate {
                source: UpdateError::UnknownDrive { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(drive_path(&vm_config(&manager, &vm).await, "data"), a);
    assert_eq!(manager.get(&vm).await.unwrap().spec, before.spec);

    // Firecracker takes no swap before boot.
    let created = id("created");
    manager
        .create(
            &created,
            VmSpec {
                extra_drives: vec![DriveSpec::new("data", &b, true)],
                ..host.spec()
            },
        )
        .await
        .unwrap();
    let err = manager.swap_drive(&created, "data", &a).await.unwrap_err();
    assert!(matches!(err, VmError::Transition { .. }), "{err:?}");
}

#[tokio::test]
async fn a_drive_swap_the_vmm_refuses_keeps_the_old_file_and_hold() {
    firehost_testkit::fake_only!("injects a PATCH /drives failure");
    let host = TestHost::new();
    let manager = Manager::open(host.config_with_faults(&[("FAKE_FC_FAIL", "PATCH /drives/data")]))
        .await
        .unwrap();
    let (a, b) = (image(&host, "a.img"), image(&host, "b.img"));
    let writable = |path: &std::path::Path| VmSpec {
        extra_drives: vec![DriveSpec::new("data", path, false)],
        ..host.spec()
    };
    let vm = id("refused-swap");
    let before = manager.run(&vm, writable(&a)).await.unwrap();
    let err = manager.swap_drive(&vm, "data", &b).await.unwrap_err();
    assert!(
        matches!(
            err,
            VmError::Api {
                op: "swap a drive's file",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(manager.get(&vm).await.unwrap().spec, before.spec);
    // Still a's writer; b is free.
    let err = manager.run(&id("on-a"), writable(&a)).await.unwrap_err();
    assert!(matches!(err, VmError::DriveInUse { .. }), "{err:?}");
    manager.run(&id("on-b"), writable(&b)).await.unwrap();
}

fn memory_data_bytes(info: &firehost::SnapshotInfo) -> u64 {
    info.manifest
        .file(firehost::snapshot::MEMORY_FILE)
        .and_then(|f| f.data_bytes)
        .expect("a sealed memory file")
}

#[tokio::test]
async fn a_reclaim_fills_the_balloon_before_the_snapshot_and_the_bundle_leaves_it_out() {
    firehost_testkit::fake_only!("needs a guest with a balloon driver");
    use firehost::manager::BalloonReclaim;
    let host = TestHost::new();
    let manager = Manager::open(host.config_with_faults(&[("FAKE_FC_BALLOON_DRIVER", "1")]))
        .await
        .unwrap();
    let vm = id("reclaimer");
    let spec = VmSpec {
        mem_mib: Some(128),
        balloon: Some(BalloonSpec {
            amount_mib: 0,
            deflate_on_oom: true,
            stats_interval_s: 1,
            ..BalloonSpec::default()
        }),
        ..host.spec()
    };
    manager.run(&vm, spec).await.unwrap();
    let plain = manager
        .snapshot(&vm, &"plain".parse().unwrap(), SnapshotOptions::default())
        .await
        .unwrap();
    assert_eq!(plain.reclaimed, None);

    let options = SnapshotOptions {
        reclaim: Some(BalloonReclaim {
            amount_mib: Some(96),
            deadline: LONG,
        }),
        ..SnapshotOptions::default()
    };
    let lean = manager
        .snapshot(&vm, &"lean".parse().unwrap(), options)
        .await
        .unwrap();
    let reclaimed = lean.reclaimed.expect("a reclaim report");
    assert_eq!((reclaimed.target_mib, reclaimed.balloon_mib), (96, 96));
    let (with, without) = (memory_data_bytes(&lean), memory_data_bytes(&plain));
    assert!(without >= 120 << 20, "every page was written: {without}");
    assert!(
        with <= 33 << 20,
        "the balloon's 96 MiB are left out: {with}"
    );
    // The balloon is let out again, and the VM's spec never changed.
    let config = vm_config(&manager, &vm).await;
    assert_eq!(config.balloon.unwrap().amount_mib, 0);
    assert_eq!(
        manager
            .get(&vm)
            .await
            .unwrap()
            .spec
            .balloon
            .unwrap()
            .amount_mib,
        0
    );

    // A restore of the lean snapshot lets its balloon out before it runs.
    let clone = id("lean-clone");
    let info = manager
        .restore(&clone, &"lean".parse().unwrap(), RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(info.state, VmState::Running);
    assert_eq!(
        vm_config(&manager, &clone)
            .await
            .balloon
            .unwrap()
            .amount_mib,
        0
    );

    // Without a target: what the guest reports free (half of 128 MiB
    // here), less the headroom.
    let options = SnapshotOptions {
        reclaim: Some(BalloonReclaim {
            amount_mib: None,
            deadline: LONG,
        }),
        ..SnapshotOptions::default()
    };
    let auto = manager
        .snapshot(&vm, &"auto".parse().unwrap(), options)
        .await
        .unwrap();
    let expected = 64 - firehost::manager::RECLAIM_HEADROOM_MIB;
    assert_eq!(auto.reclaimed.unwrap().target_mib, expected);
}

#[tokio::test]
async fn a_reclaim_that_cannot_happen_takes_no_snapshot() {
    use firehost::manager::BalloonReclaim;
    let host = TestHost::new();
    let manager = host.manager().await;
    let reclaim = || SnapshotOptions {
        reclaim: Some(BalloonReclaim {
            amount_mib: Some(8),
            deadline: Duration::from_secs(1),
        }),
        ..SnapshotOptions::default()
    };
    let balloon = |stats_interval_s| {
        Some(BalloonSpec {
            stats_interval_s,
            ..BalloonSpec::default()
        })
    };
    let cases = [
        ("no-balloon", None, UpdateError::NoBalloon),
        ("no-stats", balloon(0), UpdateError::NoBalloonStats),
    ];
    for (name, balloon, expected) in cases {
        let vm = id(name);
        let spec = VmSpec {
            balloon,
            ..host.spec()
        };
        manager.run(&vm, spec).await.unwrap();
        match manager
            .snapshot(&vm, &name.parse().unwrap(), reclaim())
            .await
        {
            Err(VmError::InvalidUpdate { source, .. }) => assert_eq!(source, expected),
            other => panic!("{name}: {other:?}"),
        }
    }
    // A paused guest cannot fill a balloon.
    let paused = id("paused");
    let spec = VmSpec {
        balloon: balloon(1),
        ..host.spec()
    };
    manager.run(&paused, spec.clone()).await.unwrap();
    manager.pause(&paused).await.unwrap();
    let err = manager
        .snapshot(&paused, &"paused".parse().unwrap(), reclaim())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VmError::InvalidUpdate {
                source: UpdateError::NotRunning,
                ..
            }
        ),
        "{err:?}"
    );
    // A guest without a balloon driver: the VMM refuses the inflation.
    let driverless = id("driverless");
    manager.run(&driverless, spec).await.unwrap();
    let err = manager
        .snapshot(&driverless, &"driverless".parse().unwrap(), reclaim())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VmError::Api {
                op: "inflate the balloon",
                ..
            }
        ),
        "{err:?}"
    );
    let listing = manager.snapshots().list().await.unwrap();
    assert!(
        listing.bundles.is_empty() && listing.incomplete.is_empty(),
        "{listing:?}"
    );
    assert_eq!(
        manager.get(&driverless).await.unwrap().state,
        VmState::Running
    );
}

/// The static template for this host's CPU vendor, and one for another.
fn templates() -> (StaticCpuTemplate, StaticCpuTemplate) {
    let vendor = firehost::cpu::HostCpu::detect().vendor;
    match vendor.as_str() {
        "AuthenticAMD" => (StaticCpuTemplate::T2A, StaticCpuTemplate::T2S),
        _ => (StaticCpuTemplate::T2S, StaticCpuTemplate::T2A),
    }
}

#[tokio::test]
async fn cpu_templates_reach_the_vmm_and_the_other_vendors_are_refused() {
    use firehost::api::models::CpuTemplate as ApiTemplate;
    let host = TestHost::new();
    let manager = host.manager().await;
    let (ours, theirs) = templates();
    let with = |t: CpuTemplateSpec| VmSpec {
        cpu_template: Some(t),
        ..host.spec()
    };
    let vm = id("templated");
    let here = firehost::cpu::HostCpu::detect();
    let result = manager.run(&vm, with(CpuTemplateSpec::Static(ours))).await;
    if ours.models().unwrap().contains(&here.signature) {
        let info = result.unwrap();
        assert_eq!(
            info.spec.cpu_template,
            Some(ResolvedCpuTemplate::Static(ours))
        );
        let machine = vm_config(&manager, &vm).await.machine_config.unwrap();
        let expected = match ours {
            StaticCpuTemplate::T2A => ApiTemplate::T2A,
            _ => ApiTemplate::T2S,
        };
        assert_eq!(machine.cpu_template, Some(expected));
    } else {
        // Firecracker would refuse it at boot: refused before anything
        // starts instead.
        let err = result.unwrap_err();
        assert!(
            matches!(
                err,
                VmError::InvalidSpec {
                    source: firehost::SpecError::CpuTemplateModel { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!host.vm_dirs().contains(&"templated".to_owned()));
    }

    let err = manager
        .run(&id("foreign"), with(CpuTemplateSpec::Static(theirs)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VmError::InvalidSpec {
                source: firehost::SpecError::CpuTemplateVendor { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!host.vm_dirs().contains(&"foreign".to_owned()));

    // A custom template: applied, and kept in the record as it was.
    let file = host.dir.path().join("cpu.json");
    std::fs::write(&file, r#"{"cpuid_modifiers": []}"#).unwrap();
    let custom = id("custom");
    let info = manager
        .run(&custom, with(CpuTemplateSpec::Custom(file.clone())))
        .await
        .unwrap();
    let Some(ResolvedCpuTemplate::Custom { config, .. }) = &info.spec.cpu_template else {
        panic!("{:?}", info.spec.cpu_template);
    };
    assert_eq!(config, &serde_json::json!({"cpuid_modifiers": []}));
    std::fs::write(&file, "changed").unwrap();
    drop(manager);
    let manager = host.manager().await;
    assert_eq!(manager.get(&custom).await.unwrap().spec, info.spec);

    for (text, name) in [
        ("not json", "not-json"),
        (r#"{"nonsense": 1}"#, "unknown-field"),
        (r#"{"reg_modifiers": []}"#, "other-arch"),
    ] {
        std::fs::write(&file, text).unwrap();
        let err = manager
            .run(&id(name), with(CpuTemplateSpec::Custom(file.clone())))
            .await
            .unwrap_err();
        let expected = cfg!(target_arch = "x86_64") || name != "other-arch";
        assert_eq!(
            matches!(
                err,
                VmError::InvalidSpec {
                    source: firehost::SpecError::CpuTemplateFile { .. },
                    ..
                }
            ),
            expected,
            "{name}: {err:?}"
        );
    }
}

#[tokio::test]
async fn a_snapshot_from_a_cpu_with_more_features_is_not_restored_here() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let source = id("cpu-source");
    manager.run(&source, host.spec()).await.unwrap();
    let snap: firehost::SnapshotName = "cpu".parse().unwrap();
    let info = manager
        .snapshot(&source, &snap, SnapshotOptions::default())
        .await
        .unwrap();
    let recorded = info.manifest.host_cpu.clone().expect("the host CPU");
    assert_eq!(recorded, firehost::cpu::HostCpu::detect());
    // The same host restores it.
    manager
        .restore(&id("same-cpu"), &snap, RestoreOptions::default())
        .await
        .unwrap();

    // A host with every bit of leaf 7's EBX and EDX took it.
    let path = info.dir.join(firehost::snapshot::MANIFEST_FILE);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    manifest["host_cpu"]["features"]["7.ebx"] = u32::MAX.into();
    manifest["host_cpu"]["features"]["7.edx"] = u32::MAX.into();
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let here = firehost::cpu::HostCpu::detect();
    if here.features.get("7.ebx") == Some(&u32::MAX)
        && here.features.get("7.edx") == Some(&u32::MAX)
    {
        return; // This host has them all.
    }
    let err = manager
        .restore(&id("other-cpu"), &snap, RestoreOptions::default())
        .await
        .unwrap_err();
    let VmError::CpuMismatch { missing, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(!missing.is_empty());
    assert!(err.to_string().contains(&missing[0]), "{err}");
    assert!(!host.vm_dirs().contains(&"other-cpu".to_owned()));
}

#[tokio::test]
async fn a_vm_can_have_a_log_of_its_own() {
    use firehost::api::models::LogLevel;
    use firehost::spec::LogSpec;
    let host = TestHost::new();
    // The manager keeps no VMM logs; this VM asks for one.
    let manager = host.manager().await;
    let vm = id("logged");
    let spec = VmSpec {
        log: Some(LogSpec {
            show_level: true,
            show_origin: true,
            ..LogSpec::new(LogLevel::Info)
        }),
        ..host.spec()
    };
    let info = manager.run(&vm, spec).await.unwrap();
    let log = info.dir.join("firecracker.log");
    let line = common::poll_until("an INFO line with its origin", LONG, || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines()
            .find(|l| l.contains(":INFO:src/"))
            .map(str::to_owned)
    })
    .await;
    assert!(line.contains(":INFO:src/"), "{line}");

    let quiet = id("quiet");
    let info = manager.run(&quiet, host.spec()).await.unwrap();
    assert!(!info.dir.join("firecracker.log").exists());

    let bad = VmSpec {
        log: Some(LogSpec {
            module: Some("a b".into()),
            ..LogSpec::new(LogLevel::Info)
        }),
        ..host.spec()
    };
    let err = manager.run(&id("bad-log"), bad).await.unwrap_err();
    assert!(
        matches!(
            err,
            VmError::InvalidSpec {
                source: firehost::SpecError::BadLogModule { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn pmem_a_serial_limit_and_hotpluggable_memory_reach_the_vmm() {
    use firehost::manager::VmUpdate;
    use firehost::spec::{MemoryHotplugSpec, PmemSpec};
    let host = TestHost::new();
    let manager = host.manager().await;
    let image = host.dir.path().join("pmem.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(2 << 20))
        .unwrap();
    let spec = VmSpec {
        pmem: vec![PmemSpec {
            id: "data".into(),
            path: image.clone(),
            read_only: true,
            root: false,
            limit: RateLimit {
                bandwidth: Some(Bucket::per_second(1 << 20)),
                ops: None,
            },
        }],
        serial_limit: Some(Bucket::per_second(64 << 10)),
        memory_hotplug: Some(MemoryHotplugSpec::new(256)),
        ..host.spec()
    };
    let vm = id("devices2");
    let info = manager.run(&vm, spec).await.unwrap();
    assert_eq!(info.spec.pmem[0].path, image.canonicalize().unwrap());
    let api = manager.api(&vm).await.unwrap().unwrap();
    let config = api.get_export_vm_config().await.unwrap();
    let pmem = config.pmem.unwrap_or_default();
    assert_eq!(pmem.len(), 1);
    assert_eq!(pmem[0].id, "data");
    assert_eq!(pmem[0].read_only, Some(true));
    assert_eq!(
        pmem[0].rate_limiter,
        Some(RateLimiter {
            bandwidth: Some(TokenBucket::new(1 << 20, 1000)),
            ops: None,
        })
    );
    let hotplug = api.get_memory_hotplug().await.unwrap();
    assert_eq!(
        (
            hotplug.total_size_mib,
            hotplug.slot_size_mib,
            hotplug.block_size_mib
        ),
        (Some(256), Some(128), Some(2))
    );

    // The halt guest (and the fake's) has no virtio-mem driver: the VMM
    // refuses to plug memory, and nothing changes.
    let err = manager
        .update(
            &vm,
            &VmUpdate {
                memory_hotplug_mib: Some(128),
                ..VmUpdate::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VmError::Api {
                op: "change the hotplugged memory",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(manager.get(&vm).await.unwrap().spec, info.spec);
    for (mib, expected) in [(3, "block"), (512, "region")] {
        let err = manager
            .update(
                &vm,
                &VmUpdate {
                    memory_hotplug_mib: Some(mib),
                    ..VmUpdate::default()
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                VmError::InvalidUpdate {
                    source: UpdateError::HotplugSize { .. },
                    ..
                }
            ),
            "{expected}: {err:?}"
        );
    }

    // Bad devices are refused before anything starts.
    let writable = VmSpec {
        pmem: vec![PmemSpec {
            read_only: false,
            ..info.spec.pmem[0].clone()
        }],
        ..host.spec()
    };
    let root_twice = VmSpec {
        pmem: vec![PmemSpec {
            root: true,
            ..info.spec.pmem[0].clone()
        }],
        ..host.spec()
    };
    let bad_sizes = VmSpec {
        memory_hotplug: Some(MemoryHotplugSpec {
            slot_mib: 100,
            ..MemoryHotplugSpec::new(200)
        }),
        ..host.spec()
    };
    for (name, spec) in [
        ("writable", writable),
        ("root-twice", root_twice),
        ("sizes", bad_sizes),
    ] {
        let err = manager.run(&id(name), spec).await.unwrap_err();
        assert!(
            matches!(err, VmError::InvalidSpec { .. }),
            "{name}: {err:?}"
        );
        assert!(!host.vm_dirs().contains(&name.to_owned()));
    }
}

/// A manager that loads VMs as they are named: only an intent makes it
/// look at a VM before it is asked for.
async fn lazy_manager(host: &TestHost) -> Manager {
    let mut lazy = host.config();
    lazy.recovery = firehost::manager::Recovery::Lazy;
    Manager::open(lazy).await.unwrap()
}

fn intents(host: &TestHost) -> usize {
    std::fs::read_dir(host.state_dir().join("intents")).map_or(0, |d| d.count())
}

#[tokio::test]
async fn a_crash_during_an_update_leaves_the_vmm_as_the_record_says() {
    use futures_util::FutureExt;
    firehost_testkit::fake_only!("crash points are in-process; the check reads the VMM");
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("crashy");
    let before = manager.run(&vm, rich_spec(&host)).await.unwrap();
    firehost::manager::fault::crash_at(&vm, "devices:sent");
    let update = VmUpdate {
        drives: vec![DriveLimitUpdate {
            drive_id: "rootfs".into(),
            limit: LimitChange {
                bandwidth: BucketChange::Remove,
                ops: BucketChange::Set(Bucket::per_second(3)),
            },
        }],
        ..VmUpdate::default()
    };
    let crashed = std::panic::AssertUnwindSafe(manager.update(&vm, &update))
        .catch_unwind()
        .await;
    assert!(crashed.is_err(), "the update should have crashed");
    // The VMM has the new limits, the record the old ones.
    assert_eq!(
        drive_limit(&vm_config(&manager, &vm).await, "rootfs"),
        Some(RateLimiter {
            bandwidth: None,
            ops: Some(TokenBucket::new(3, 1000)),
        })
    );
    drop(manager);

    let manager = lazy_manager(&host).await;
    assert_eq!(intents(&host), 0, "the intent is settled");
    let info = manager.get(&vm).await.unwrap();
    assert_eq!(info.spec, before.spec);
    assert_eq!(
        drive_limit(&vm_config(&manager, &vm).await, "rootfs"),
        Some(api_limit(&limit()))
    );
}

#[tokio::test]
async fn a_crash_during_a_drive_swap_leaves_the_vmm_on_the_recorded_file() {
    use futures_util::FutureExt;
    firehost_testkit::fake_only!("crash points are in-process; the check reads the VMM");
    for (step, swapped) in [
        ("swap:staged", false),
        ("swap:sent", false),
        ("swap:recorded", true),
    ] {
        let host = TestHost::new();
        let manager = host.manager().await;
        let (a, b) = (image(&host, "a.img"), image(&host, "b.img"));
        let vm = id("swap-crash");
        let spec = VmSpec {
            extra_drives: vec![DriveSpec::new("data", &a, false)],
            ..host.spec()
        };
        manager.run(&vm, spec).await.unwrap();
        firehost::manager::fault::crash_at(&vm, step);
        let crashed = std::panic::AssertUnwindSafe(manager.swap_drive(&vm, "data", &b))
            .catch_unwind()
            .await;
        assert!(crashed.is_err(), "{step}: the swap should have crashed");
        drop(manager);

        let manager = lazy_manager(&host).await;
        assert_eq!(intents(&host), 0, "{step}: the intent is settled");
        let expected = if swapped { &b } else { &a };
        let info = manager.get(&vm).await.unwrap();
        assert_eq!(&info.spec.extra_drives[0].path, expected, "{step}");
        assert_eq!(
            &drive_path(&vm_config(&manager, &vm).await, "data"),
            expected,
            "{step}: the VMM agrees with the record"
        );
        // The write hold follows the record too.
        let other = if swapped { &a } else { &b };
        let spec = VmSpec {
            extra_drives: vec![DriveSpec::new("data", other, false)],
            ..host.spec()
        };
        manager.run(&id("other"), spec).await.unwrap();
    }
}

#[tokio::test]
async fn an_update_or_swap_whose_record_cannot_be_written_is_taken_back() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let (a, b) = (image(&host, "a.img"), image(&host, "b.img"));
    let vm = id("unwritable");
    let spec = VmSpec {
        extra_drives: vec![DriveSpec::new("data", &a, false)],
        ..rich_spec(&host)
    };
    let before = manager.run(&vm, spec).await.unwrap();
    let config_before = vm_config(&manager, &vm).await;
    // The record is written through `record.tmp`: a directory there makes
    // every write fail, even for root.
    let blocker = before.dir.join("record.tmp");
    std::fs::create_dir(&blocker).unwrap();

    let update = VmUpdate {
        drives: vec![DriveLimitUpdate {
            drive_id: "rootfs".into(),
            limit: LimitChange {
                bandwidth: BucketChange::Set(Bucket::per_second(9)),
                ops: BucketChange::Remove,
            },
        }],
        ..VmUpdate::default()
    };
    let err = manager.update(&vm, &update).await.unwrap_err();
    assert!(matches!(err, VmError::Record { .. }), "{err:?}");
    let err = manager.swap_drive(&vm, "data", &b).await.unwrap_err();
    assert!(matches!(err, VmError::Record { .. }), "{err:?}");

    // Both were taken back: the VMM, the spec and the write hold.
    let config_after = vm_config(&manager, &vm).await;
    assert_eq!(config_after.drives, config_before.drives);
    assert_eq!(manager.get(&vm).await.unwrap().spec, before.spec);
    let on_b = VmSpec {
        extra_drives: vec![DriveSpec::new("data", &b, false)],
        ..host.spec()
    };
    manager.run(&id("on-b"), on_b).await.unwrap();
    assert_eq!(intents(&host), 0);

    std::fs::remove_dir(&blocker).unwrap();
    manager.update(&vm, &update).await.unwrap();
}
