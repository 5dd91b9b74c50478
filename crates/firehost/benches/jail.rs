//! What the jail costs, with a real jailer and Firecracker (see
//! BENCHMARKS.md), each figure against a baseline measured in the same run:
//!
//! 1. create → running (`Manager::run`, then `GET /` says Running) of an
//!    unjailed VM vs a jailed one (chroot, staged kernel and rootfs copy,
//!    uid, and with cgroup limits), and the time a destroy takes for each.
//! 2. 20 jailed VMs created at once vs one after the other.
//!
//! Run: `FIREHOST_FIRECRACKER=… FIREHOST_JAILER=… cargo bench -p firehost
//! --bench jail` as root. Without both binaries it says so and exits.
//! Env `BENCH_ITERS` scales the iteration counts.

// Statistics over small, non-negative counts.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firehost::jail::{JailConfig, JailSpec};
use firehost::manager::{ConsoleTarget, ManagerConfig, StopOptions};
use firehost::{Manager, VmId, VmSpec};

fn iterations(default: usize) -> usize {
    let scale: f64 = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((default as f64 * scale) as usize).max(3)
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

struct Host {
    _dir: tempfile::TempDir,
    state: PathBuf,
    base: PathBuf,
    kernel: PathBuf,
    rootfs: PathBuf,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::Builder::new().prefix("fhb-").tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, fake_firecracker::testing::halt_kernel()).unwrap();
        // A 64 MiB image with a little data: the per-VM copy is sparse.
        let rootfs = dir.path().join("rootfs.ext4");
        let file = std::fs::File::create(&rootfs).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[1u8; 1 << 20], 0).unwrap();
        file.set_len(64 << 20).unwrap();
        let base = dir.path().join("jails");
        std::fs::create_dir(&base).unwrap();
        Host {
            state: dir.path().join("state"),
            base,
            kernel,
            rootfs,
            _dir: dir,
        }
    }

    fn config(&self, firecracker: &Path, jailer: &Path) -> ManagerConfig {
        let mut config = ManagerConfig::new(&self.state, firecracker);
        config.defaults.kernel = Some(self.kernel.clone());
        config.defaults.rootfs = Some(self.rootfs.clone());
        config.console = ConsoleTarget::File;
        config.jail = Some(JailConfig {
            jailer: jailer.to_owned(),
            chroot_base: self.base.clone(),
            parent_cgroup: PathBuf::from("firehost-bench"),
            ..JailConfig::default()
        });
        config
    }
}

fn spec(jail: Option<JailSpec>) -> VmSpec {
    VmSpec {
        jail,
        ..VmSpec::default()
    }
}

async fn running(manager: &Manager, vm: &VmId) {
    let api = manager.api(vm).await.unwrap().unwrap();
    let state = api.describe_instance().await.unwrap().state;
    assert_eq!(state, firehost::api::models::InstanceState::Running);
}

/// One VM's create → running and destroy times.
async fn lifecycle(manager: &Manager, jail: Option<JailSpec>, name: &str) -> (Duration, Duration) {
    let vm = VmId::new(name).unwrap();
    let t = Instant::now();
    manager.run(&vm, spec(jail)).await.unwrap();
    running(manager, &vm).await;
    let create = t.elapsed();
    let t = Instant::now();
    manager
        .stop(
            &vm,
            StopOptions {
                grace: Some(Duration::ZERO),
                ..StopOptions::default()
            },
        )
        .await
        .unwrap();
    manager.destroy(&vm).await.unwrap();
    (create, t.elapsed())
}

async fn bench_create(manager: &Manager) {
    let n = iterations(30);
    let variants: [(&str, Option<JailSpec>); 6] = [
        ("unjailed", None),
        ("jailed, no limits", Some(JailSpec::default())),
        (
            "jailed + memory, pids and cpu limits",
            Some(JailSpec {
                memory_max_mib: Some(512),
                pids_max: Some(64),
                cpu_quota_percent: Some(100),
                ..JailSpec::default()
            }),
        ),
        // Each limit alone, to see which one costs.
        (
            "jailed + memory limit only",
            Some(JailSpec {
                memory_max_mib: Some(512),
                ..JailSpec::default()
            }),
        ),
        (
            "jailed + pids limit only",
            Some(JailSpec {
                pids_max: Some(64),
                ..JailSpec::default()
            }),
        ),
        (
            "jailed + cpu limit only",
            Some(JailSpec {
                cpu_quota_percent: Some(100),
                ..JailSpec::default()
            }),
        ),
    ];
    // Warm the page cache and the jailer's parent cgroups.
    for (i, (_, jail)) in variants.iter().enumerate() {
        lifecycle(manager, jail.clone(), &format!("warm-{i}")).await;
    }
    // Interleaved, so drift in the machine's load hits every variant alike.
    let mut samples = vec![(Vec::new(), Vec::new()); variants.len()];
    for round in 0..n {
        for (i, (_, jail)) in variants.iter().enumerate() {
            let (c, d) = lifecycle(manager, jail.clone(), &format!("v{i}-{round}")).await;
            samples[i].0.push(c);
            samples[i].1.push(d);
        }
    }
    let medians: Vec<(Duration, Duration)> = samples
        .iter_mut()
        .map(|(c, d)| (median(c), median(d)))
        .collect();
    let plain = medians[0].0;
    println!(
        "## create → running, jailed vs unjailed ({n} rounds, interleaved, real Firecracker)\n"
    );
    println!("| VM | create → running | added by the jail | ratio | destroy |");
    println!("|---|---|---|---|---|");
    for ((name, _), (t, d)) in variants.iter().zip(&medians) {
        println!(
            "| {name} | {} | {} | {:.2}× | {} |",
            ms(*t),
            ms(t.saturating_sub(plain)),
            t.as_secs_f64() / plain.as_secs_f64(),
            ms(*d)
        );
    }
    println!();
}

async fn bench_parallel(manager: &Manager) {
    const VMS: usize = 20;
    let ids: Vec<VmId> = (0..VMS)
        .map(|i| VmId::new(format!("par-{i}")).unwrap())
        .collect();
    let clean = |ids: Vec<VmId>| async move {
        for vm in &ids {
            manager
                .stop(
                    vm,
                    StopOptions {
                        grace: Some(Duration::ZERO),
                        ..StopOptions::default()
                    },
                )
                .await
                .unwrap();
            manager.destroy(vm).await.unwrap();
        }
    };
    let t = Instant::now();
    for vm in &ids {
        manager
            .run(vm, spec(Some(JailSpec::default())))
            .await
            .unwrap();
    }
    let serial = t.elapsed();
    clean(ids.clone()).await;
    let t = Instant::now();
    let runs = ids
        .iter()
        .map(|vm| manager.run(vm, spec(Some(JailSpec::default()))));
    for result in futures_util::future::join_all(runs).await {
        result.unwrap();
    }
    let parallel = t.elapsed();
    for vm in &ids {
        running(manager, vm).await;
    }
    clean(ids).await;
    println!("## {VMS} jailed VMs, at once vs one after the other\n");
    println!("| how | wall time | per VM | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| one after the other | {} | {} | 1.00× |",
        ms(serial),
        ms(serial / VMS as u32)
    );
    println!(
        "| at once | {} | {} | {:.2}× |",
        ms(parallel),
        ms(parallel / VMS as u32),
        parallel.as_secs_f64() / serial.as_secs_f64()
    );
    println!();
}

fn main() {
    let (Some(firecracker), Some(jailer)) = (
        std::env::var_os("FIREHOST_FIRECRACKER"),
        std::env::var_os("FIREHOST_JAILER"),
    ) else {
        println!("skipped: the jail benchmark needs FIREHOST_FIRECRACKER and FIREHOST_JAILER");
        return;
    };
    let host = Host::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let manager = Manager::open(host.config(Path::new(&firecracker), Path::new(&jailer)))
            .await
            .unwrap();
        bench_create(&manager).await;
        bench_parallel(&manager).await;
    });
    // The parent cgroups the jailer made for this run.
    if let Ok(mounts) = firehost::jail::CgroupMounts::read() {
        for dir in mounts.existing_dirs(Path::new(""), "firehost-bench") {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
