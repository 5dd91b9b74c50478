//! What collecting metrics costs the manager (issue 15): its own CPU time
//! and memory with 100 fake VMs, every VM's metrics flushed and read once a
//! second, against the same 100 VMs left alone for as long, in one run.
//!
//! The manager's process holds the log keepers here (no keeper program),
//! so their copying of each flush from the FIFO into `metrics.json` is
//! counted too. The VMMs' own CPU is not: it is Firecracker's to flush.
//!
//! Run: `cargo bench -p firehost --bench metrics` (after `cargo build
//! --release -p fake-firecracker`); `BENCH_VMS` and `BENCH_SECS` change
//! the 100 VMs and the 10 s windows.

mod common;

use std::time::{Duration, Instant};

use firehost::{Manager, VmId, VmSpec};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU time of this process so far (`/proc/self/stat`, in
/// clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let vms = env_or("BENCH_VMS", 100);
    let window = Duration::from_secs(env_or("BENCH_SECS", 10));
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::fake_config(dir.path());
    config.vmm_metrics = true;
    let manager = Manager::open(config).await.unwrap();
    let ids: Vec<VmId> = (0..vms)
        .map(|i| VmId::new(format!("m{i}")).unwrap())
        .collect();
    for id in &ids {
        manager.run(id, VmSpec::default()).await.unwrap();
    }

    // Baseline: the same VMs, nobody asking for their metrics.
    let (cpu0, rss0, t0) = (cpu_time(), rss_kib(), Instant::now());
    tokio::time::sleep(window).await;
    let idle_cpu = cpu_time() - cpu0;
    let idle_wall = t0.elapsed();
    let idle_rss = rss_kib();

    // Every VM's metrics once a second.
    let (cpu1, t1) = (cpu_time(), Instant::now());
    let mut tasks = Vec::new();
    for id in &ids {
        let mut stream = manager.subscribe_metrics(id, Duration::from_secs(1));
        tasks.push(tokio::spawn(async move {
            let (mut flushes, mut failures) = (0u64, 0u64);
            while let Ok(next) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
                match next {
                    Some(Ok(_)) => flushes += 1,
                    Some(Err(_)) => failures += 1,
                    None => break,
                }
                if flushes + failures >= window.as_secs() {
                    break;
                }
            }
            (flushes, failures)
        }));
    }
    let (mut flushes, mut failures) = (0, 0);
    for task in tasks {
        let (f, e) = task.await.unwrap();
        flushes += f;
        failures += e;
    }
    let busy_cpu = cpu_time() - cpu1;
    let busy_wall = t1.elapsed();
    let busy_rss = rss_kib();

    let per_vm_s =
        |cpu: Duration, wall: Duration| cpu.as_secs_f64() * 1e6 / (vms as f64 * wall.as_secs_f64());
    println!("{vms} VMs, {window:?} windows; {flushes} flushes read, {failures} failed");
    println!(
        "idle:            manager CPU {:>8.1} us per VM-second (10 ms ticks), RSS {} KiB (was {} KiB before the window)",
        per_vm_s(idle_cpu, idle_wall),
        idle_rss,
        rss0
    );
    println!(
        "metrics every 1s: manager CPU {:>8.1} us per VM-second, RSS {} KiB",
        per_vm_s(busy_cpu, busy_wall),
        busy_rss
    );
    let per_flush = busy_cpu.saturating_sub(idle_cpu).as_secs_f64() * 1e6 / flushes.max(1) as f64;
    println!(
        "cost of metrics:  {per_flush:.1} us CPU per flush, {:+.1} KiB RSS per VM",
        (busy_rss as f64 - idle_rss as f64) / vms as f64,
    );

    // Baseline: the least any collector does for one flush, by hand: the
    // FlushMetrics request, then waiting for the file to grow and parsing
    // its last line, as many flushes, one VM after another.
    let apis: Vec<_> = {
        let mut apis = Vec::new();
        for id in &ids {
            let api = manager.api(id).await.unwrap().unwrap();
            let file = manager.get(id).await.unwrap().dir.join("metrics.json");
            apis.push((api, file));
        }
        apis
    };
    let cpu2 = cpu_time();
    let mut raw = 0u64;
    while raw < flushes {
        for (api, file) in &apis {
            let before = std::fs::metadata(file).map_or(0, |m| m.len());
            api.create_sync_action(&firehost::api::models::InstanceActionInfo {
                action_type: firehost::api::models::ActionType::FlushMetrics,
            })
            .await
            .unwrap();
            while std::fs::metadata(file).map_or(0, |m| m.len()) <= before {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let text = std::fs::read_to_string(file).unwrap();
            assert!(firehost::metrics::VmmMetrics::last_in(&text).is_some());
            raw += 1;
        }
    }
    let raw_cpu = cpu_time() - cpu2;
    let raw_per_flush = raw_cpu.as_secs_f64() * 1e6 / raw as f64;
    println!(
        "by hand:          {raw_per_flush:.1} us CPU per flush; the manager's flush costs {:.2}x",
        per_flush / raw_per_flush.max(f64::EPSILON)
    );
    for id in &ids {
        let _ = manager
            .stop(
                id,
                firehost::StopOptions {
                    graceful: Some(false),
                    ..Default::default()
                },
            )
            .await;
        let _ = manager.destroy(id).await;
    }
}
