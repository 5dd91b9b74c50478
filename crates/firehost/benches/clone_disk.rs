//! What a clone's own copy of its writable disk costs (issue 14): the time
//! of `Manager::restore` of one snapshot whose VM has a writable rootfs of
//! 128 MiB and of 4 GiB, reported as a ratio against the 128 MiB case
//! measured in the same run (see BENCHMARKS.md).
//!
//! Each image is sparse and holds 32 MiB of data spread over it (what a
//! template's root filesystem looks like: mostly free space), and then,
//! as the worst case, is written through completely. A reflink (XFS,
//! btrfs) costs the same whatever the size; elsewhere the restore copies
//! the data extents, so only written data costs. A restore of the same
//! 4 GiB image read-only (no copy) is measured too.
//!
//! Then what keeping the disks in the bundle (`SnapshotOptions::disks`)
//! adds to a snapshot, on the sparse images: `Manager::snapshot` with and
//! without it, interleaved.
//!
//! Run: `cargo bench -p firehost --bench clone_disk` (after `cargo build
//! --release -p fake-firecracker`). Needs about 12 GiB free in the
//! temporary directory for the full 4 GiB case; `BENCH_ITERS` scales the
//! iteration counts.

// Statistics over small sample counts.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::{fake_binary, iters, median};
use firehost::manager::{ConsoleTarget, ManagerConfig, RestoreOptions, SnapshotOptions};
use firehost::{Manager, StopOptions, VmId, VmSpec};

const MIB: u64 = 1 << 20;
/// The data a sparse image holds.
const DATA: u64 = 32 * MIB;

/// A `size`-byte image with `DATA` bytes written in 1 MiB pieces spread
/// evenly over it, or written through when `full`.
fn image(path: &Path, size: u64, full: bool) {
    let mut file = std::fs::File::create(path).unwrap();
    file.set_len(size).unwrap();
    let chunk = vec![0x5au8; MIB as usize];
    let (pieces, stride) = if full {
        (size / MIB, MIB)
    } else {
        (DATA / MIB, size / (DATA / MIB))
    };
    for i in 0..pieces {
        file.seek(SeekFrom::Start(i * stride)).unwrap();
        file.write_all(&chunk).unwrap();
    }
    file.sync_all().unwrap();
}

/// The median time of `n` restores of a snapshot of a VM on `rootfs`.
async fn clone_time(dir: &Path, fake: &Path, rootfs: &Path, read_only: bool, n: usize) -> Duration {
    let state = dir.join(format!(
        "state-{}-{read_only}",
        rootfs.file_name().unwrap().to_string_lossy()
    ));
    let mut config = ManagerConfig::new(&state, fake);
    config.defaults.kernel = Some(dir.join("vmlinux"));
    config.defaults.rootfs = Some(rootfs.to_owned());
    config.defaults.rootfs_read_only = read_only;
    config.defaults.mem_mib = 4;
    config.console = ConsoleTarget::File;
    let manager = Manager::open(config).await.unwrap();
    let source = VmId::new("template").unwrap();
    manager.run(&source, VmSpec::default()).await.unwrap();
    let snap = "template".parse().unwrap();
    manager
        .snapshot(&source, &snap, SnapshotOptions::default())
        .await
        .unwrap();
    let quick = StopOptions {
        graceful: Some(false),
        grace: None,
    };
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let clone = VmId::new(format!("clone-{i}")).unwrap();
        let t = Instant::now();
        manager
            .restore(&clone, &snap, RestoreOptions::default())
            .await
            .unwrap();
        samples.push(t.elapsed());
        manager.stop(&clone, quick.clone()).await.unwrap();
        manager.destroy(&clone).await.unwrap();
    }
    manager.stop(&source, quick).await.unwrap();
    manager.destroy(&source).await.unwrap();
    median(samples)
}

/// The median times of `n` snapshots of a VM on `rootfs`, without and with
/// the disks kept, interleaved.
async fn snapshot_times(dir: &Path, fake: &Path, rootfs: &Path, n: usize) -> (Duration, Duration) {
    let state = dir.join(format!(
        "state-snap-{}",
        rootfs.file_name().unwrap().to_string_lossy()
    ));
    let mut config = ManagerConfig::new(&state, fake);
    config.defaults.kernel = Some(dir.join("vmlinux"));
    config.defaults.rootfs = Some(rootfs.to_owned());
    config.defaults.mem_mib = 4;
    config.console = ConsoleTarget::File;
    let manager = Manager::open(config).await.unwrap();
    let source = VmId::new("template").unwrap();
    manager.run(&source, VmSpec::default()).await.unwrap();
    let (mut plain, mut kept) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        for (disks, samples) in [(false, &mut plain), (true, &mut kept)] {
            let name = format!("s{i}-{disks}").parse().unwrap();
            let options = SnapshotOptions {
                disks,
                ..SnapshotOptions::default()
            };
            let t = Instant::now();
            manager.snapshot(&source, &name, options).await.unwrap();
            samples.push(t.elapsed());
            manager.snapshots().delete(&name).await.unwrap();
        }
    }
    let quick = StopOptions {
        graceful: Some(false),
        grace: None,
    };
    manager.stop(&source, quick).await.unwrap();
    manager.destroy(&source).await.unwrap();
    (median(plain), median(kept))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let fake = fake_binary();
        let dir = tempfile::Builder::new()
            .prefix("fh-bench-clone-")
            .tempdir()
            .unwrap();
        std::fs::write(
            dir.path().join("vmlinux"),
            fake_firecracker::testing::halt_kernel(),
        )
        .unwrap();
        println!("## clone setup: restore of a VM with a writable rootfs\n");
        println!("| rootfs | data | median restore | ratio to 128 MiB |");
        println!("|---|---|---|---|");
        for full in [false, true] {
            let n = iters(if full { 3 } else { 10 });
            let mut baseline = None;
            for size in [128 * MIB, 4096 * MIB] {
                let rootfs = dir
                    .path()
                    .join(format!("rootfs-{}-{full}.ext4", size / MIB));
                image(&rootfs, size, full);
                let took = clone_time(dir.path(), &fake, &rootfs, false, n).await;
                let base = *baseline.get_or_insert(took);
                let data = if full {
                    format!("{} MiB (full)", size / MIB)
                } else {
                    format!("{} MiB spread", DATA / MIB)
                };
                println!(
                    "| {} MiB | {data} | {:.1} ms | {:.2}× |",
                    size / MIB,
                    took.as_secs_f64() * 1e3,
                    took.as_secs_f64() / base.as_secs_f64()
                );
                if full && size > 128 * MIB {
                    // What the restore costs without a copy, on the same image.
                    let shared = clone_time(dir.path(), &fake, &rootfs, true, n).await;
                    println!(
                        "| {} MiB, read-only (no copy) | — | {:.1} ms | {:.2}× |",
                        size / MIB,
                        shared.as_secs_f64() * 1e3,
                        shared.as_secs_f64() / base.as_secs_f64()
                    );
                }
                std::fs::remove_file(&rootfs).unwrap();
            }
        }
        println!();
        println!("## snapshot with the disks kept (sparse images, 32 MiB of data)\n");
        println!("| rootfs | snapshot | snapshot --disks | ratio |");
        println!("|---|---|---|---|");
        for size in [128 * MIB, 4096 * MIB] {
            let rootfs = dir.path().join(format!("rootfs-snap-{}.ext4", size / MIB));
            image(&rootfs, size, false);
            let (plain, kept) = snapshot_times(dir.path(), &fake, &rootfs, iters(10)).await;
            std::fs::remove_file(&rootfs).unwrap();
            println!(
                "| {} MiB | {:.1} ms | {:.1} ms | {:.2}× |",
                size / MIB,
                plain.as_secs_f64() * 1e3,
                kept.as_secs_f64() * 1e3,
                kept.as_secs_f64() / plain.as_secs_f64()
            );
        }
        println!();
    });
}
