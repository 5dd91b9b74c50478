//! What turning zero pages into holes costs a snapshot (issue 15): sealing
//! a full snapshot (hash, and punch every all-zero page) against sealing
//! the same files as a diff (hash only, as every seal did before), in one
//! run, for memory that is all data and for memory that is mostly zeros.
//!
//! Run: `cargo bench -p firehost --bench seal`; `BENCH_MIB` sets the memory
//! size (default 256), `BENCH_ITERS` scales the rounds.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{iters, median};
use firehost::VmId;
use firehost::snapshot::{Bundle, MEMORY_FILE, ManifestDraft, SnapshotKind, VMSTATE_FILE};

const PAGE: usize = 4096;

/// How a memory's zero pages lie.
#[derive(Clone, Copy)]
enum Zeros {
    /// None: every page holds data.
    None,
    /// Three pages in four, one page of data between each three: the worst
    /// case, runs too short to be worth a hole.
    Scattered,
    /// Three MiB in four, in runs of 3 MiB: untouched memory.
    Runs,
}

/// Writes `mib` MiB of memory into `dir`, zero pages laid out as `zeros`
/// says (written as zeros, not holes, as Firecracker writes them).
fn write_files(dir: &Path, mib: usize, zeros: Zeros) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(VMSTATE_FILE), b"vmstate").unwrap();
    let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join(MEMORY_FILE)).unwrap());
    let mut page = vec![0u8; PAGE];
    for i in 0..mib * 256 {
        page.fill(0);
        let data = match zeros {
            Zeros::None => true,
            Zeros::Scattered => i % 4 == 0,
            Zeros::Runs => (i / 256) % 4 == 0,
        };
        if data {
            // Data that no page of zeros matches.
            page[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        }
        file.write_all(&page).unwrap();
    }
    file.flush().unwrap();
    file.get_ref().sync_all().unwrap();
}

fn draft(kind: SnapshotKind) -> ManifestDraft {
    let spec = serde_json::from_value(serde_json::json!({
        "kernel": "/k", "rootfs_read_only": false, "vcpus": 1, "mem_mib": 1,
        "smt": false, "boot_args": "", "extra_drives": [], "track_dirty_pages": false,
        "graceful_shutdown": true,
    }))
    .unwrap();
    ManifestDraft {
        name: "bench".parse().unwrap(),
        source_vm: VmId::new("bench").unwrap(),
        kind,
        parent: (kind == SnapshotKind::Diff).then(|| "parent".parse().unwrap()),
        firecracker_version: "1.16.1".into(),
        spec,
        network: vec![],
        vsock: None,
        source_chroot: None,
        drives: vec![],
        disks: vec![],
        created_at_ms: 0,
        host_cpu: None,
    }
}

fn main() {
    let mib: usize = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let rounds = iters(5);
    println!("{mib} MiB of memory, {rounds} rounds each, medians");
    for (label, zeros) in [
        ("all data", Zeros::None),
        ("3/4 zeros, scattered", Zeros::Scattered),
        ("3/4 zeros, in runs", Zeros::Runs),
    ] {
        let mut times = [Vec::new(), Vec::new()];
        let mut data = [0u64; 2];
        for _ in 0..rounds {
            for (i, kind) in [SnapshotKind::Diff, SnapshotKind::Full]
                .into_iter()
                .enumerate()
            {
                let bundle = dir.path().join("b");
                let _ = std::fs::remove_dir_all(&bundle);
                write_files(&bundle, mib, zeros);
                let start = Instant::now();
                let manifest = Bundle::seal(&bundle, draft(kind)).unwrap();
                times[i].push(start.elapsed());
                data[i] = manifest
                    .file(MEMORY_FILE)
                    .and_then(|f| f.data_bytes)
                    .unwrap_or(0);
            }
        }
        let [hash, punch] = times.map(median);
        let ratio = punch.as_secs_f64() / hash.as_secs_f64().max(f64::EPSILON);
        println!(
            "{label:>21}: hash only {:>8.1} ms ({} MiB data), hash + punch {:>8.1} ms ({} MiB data): {ratio:.2}x",
            ms(hash),
            data[0] >> 20,
            ms(punch),
            data[1] >> 20,
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
