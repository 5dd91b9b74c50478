//! `stats`: each live VM's VMM counters (block and net bytes and ops, rate
//! limiter throttling, vsock, balloon, API errors), once or every interval.
//!
//! Each refresh asks every VMM to flush its metrics, so a row shows what
//! happened since the refresh before (or, for the first, since the VMM's
//! previous flush), over `interval_ms`.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::io::Write;
use std::time::Duration;

use firehost::metrics::VmmMetrics;
use firehost::{Manager, VmId};
use serde::Serialize;

use crate::commands::{Out, vm_id};
use crate::exit::CliError;

/// `stats`'s options.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Only this VM [default: every live VM].
    pub name: Option<String>,
    /// Refresh every --interval-ms until interrupted (or --count times).
    #[arg(long)]
    pub watch: bool,
    /// Time between refreshes with --watch.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    pub interval_ms: u64,
    /// Stop after N refreshes.
    #[arg(long, value_name = "N", requires = "watch")]
    pub count: Option<u64>,
}

/// `stats --json`: one object per refresh.
#[derive(Debug, Clone, Serialize)]
pub struct StatsJson {
    /// A row per VM whose metrics arrived, sorted by name.
    pub vms: Vec<VmStatsJson>,
    /// VMs whose metrics did not, with why.
    pub errors: Vec<StatsErrorJson>,
}

/// One VM's flush.
#[derive(Debug, Clone, Serialize)]
pub struct VmStatsJson {
    /// The VM.
    pub name: String,
    /// Milliseconds the counters cover, when known.
    pub interval_ms: Option<u64>,
    /// The counters (see `firehost::metrics::VmmMetrics`).
    pub metrics: VmmMetrics,
}

/// A VM whose metrics could not be read.
#[derive(Debug, Clone, Serialize)]
pub struct StatsErrorJson {
    /// The VM.
    pub name: String,
    /// Why.
    pub error: String,
}

/// Runs `stats`.
pub async fn stats(manager: &Manager, args: StatsArgs, out: Out) -> Result<(), CliError> {
    let only = args.name.as_deref().map(vm_id).transpose()?;
    if let Some(id) = &only {
        // A missing VM is an error (exit 3), not an empty table.
        manager.get(id).await?;
    }
    let mut refreshes = 0u64;
    let mut ticks = tokio::time::interval(Duration::from_millis(args.interval_ms));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let report = refresh(manager, only.as_ref()).await;
        if args.watch && !out.is_json() && std::io::stdout().is_terminal() {
            // Redraw in place.
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(b"\x1b[H\x1b[2J");
        }
        out.emit(&report, table)?;
        refreshes += 1;
        if !args.watch || args.count.is_some_and(|n| refreshes >= n) {
            return Ok(());
        }
    }
}

/// One flush of every VM asked for, at once.
async fn refresh(manager: &Manager, only: Option<&VmId>) -> StatsJson {
    let ids: Vec<VmId> = match only {
        Some(id) => vec![id.clone()],
        None => manager
            .list()
            .await
            .into_iter()
            .filter(|vm| vm.state.is_live())
            .map(|vm| vm.id)
            .collect(),
    };
    let mut flushes = tokio::task::JoinSet::new();
    for id in ids {
        let manager = manager.clone();
        flushes.spawn(async move {
            let flush = manager.metrics(&id).await;
            (id, flush)
        });
    }
    let mut done = Vec::new();
    while let Some(joined) = flushes.join_next().await {
        match joined {
            Ok(one) => done.push(one),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    done.sort_by(|a, b| a.0.cmp(&b.0));
    let mut report = StatsJson {
        vms: Vec::new(),
        errors: Vec::new(),
    };
    for (id, flush) in done {
        match flush {
            Ok(f) => report.vms.push(VmStatsJson {
                name: id.to_string(),
                interval_ms: f.interval_ms,
                metrics: f.metrics,
            }),
            Err(e) => report.errors.push(StatsErrorJson {
                name: id.to_string(),
                error: crate::exit::chain_text(&e),
            }),
        }
    }
    report
}

/// The operator's table: one row per VM, then a line per VM without
/// metrics.
pub fn table(report: &StatsJson) -> String {
    let header = [
        "NAME",
        "INTERVAL",
        "BLK READ",
        "BLK WRITE",
        "BLK OPS",
        "NET RX",
        "NET TX",
        "THROTTLED",
        "VSOCK RX/TX",
        "BALLOON +/-",
        "API ERR",
    ];
    let rows: Vec<Vec<String>> = report
        .vms
        .iter()
        .map(|vm| {
            let m = &vm.metrics;
            let throttled = m.block.rate_limiter_throttled_events
                + m.net.rx_rate_limiter_throttled
                + m.net.tx_rate_limiter_throttled
                + m.entropy.entropy_rate_limiter_throttled;
            vec![
                vm.name.clone(),
                vm.interval_ms
                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms")),
                bytes(m.block.read_bytes),
                bytes(m.block.write_bytes),
                (m.block.read_count + m.block.write_count + m.block.flush_count).to_string(),
                bytes(m.net.rx_bytes_count),
                bytes(m.net.tx_bytes_count),
                throttled.to_string(),
                format!(
                    "{}/{}",
                    bytes(m.vsock.rx_bytes_count),
                    bytes(m.vsock.tx_bytes_count)
                ),
                format!("{}/{}", m.balloon.inflate_count, m.balloon.deflate_count),
                m.api.fails.to_string(),
            ]
        })
        .collect();
    let mut out = crate::human::columns(&header, &rows);
    for e in &report.errors {
        let _ = writeln!(out, "{}: no metrics: {}", e.name, e.error);
    }
    out
}

/// `0`, `512B`, `4.0K`, `1.5M`…
fn bytes(n: u64) -> String {
    if n < 1024 {
        return format!("{n}B");
    }
    crate::human::size(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_vm_and_a_line_per_error() {
        let mut metrics = VmmMetrics::default();
        metrics.block.read_bytes = 3 << 20;
        metrics.block.read_count = 7;
        metrics.net.tx_bytes_count = 100;
        metrics.net.tx_rate_limiter_throttled = 2;
        metrics.api.fails = 1;
        let report = StatsJson {
            vms: vec![VmStatsJson {
                name: "web".into(),
                interval_ms: Some(1000),
                metrics,
            }],
            errors: vec![StatsErrorJson {
                name: "old".into(),
                error: "the metrics flush did not arrive in time".into(),
            }],
        };
        let text = table(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{text}");
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "web", "1000", "ms", "3.0M", "0B", "7", "0B", "100B", "2", "0B/0B", "0/0", "1"
            ]
        );
        assert_eq!(
            lines[2],
            "old: no metrics: the metrics flush did not arrive in time"
        );
    }
}
