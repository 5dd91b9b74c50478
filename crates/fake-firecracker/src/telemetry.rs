//! Firecracker's logger and metrics, reduced to what a client can observe.
//!
//! Log lines have Firecracker's shape (`src/vmm/src/logger/logging.rs`):
//! `<time> [<instance id>:<thread>(:<LEVEL>)(:<file>:<line>)] <message>`, and go to
//! stdout until a log path is configured. The log path is opened like Firecracker's
//! `open_file_nonblock` (create, read + write, `O_NONBLOCK`), so a fifo works.
//!
//! Metrics are one JSON object per line, written when the metrics sink is set up
//! through the API or `--metrics-path`, right after `InstanceStart`, on `FlushMetrics`
//! and every 60 s (`WRITE_METRICS_PERIOD_MS`). The fake writes a small subset of
//! Firecracker's metric groups, with the same names.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Firecracker's metric write period, in milliseconds.
pub const WRITE_METRICS_PERIOD_MS: u64 = 60_000;

/// Log levels, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Error.
    Error,
    /// Warning.
    Warn,
    /// Info (Firecracker's default).
    Info,
    /// Debug.
    Debug,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Warn => "WARN",
            Self::Info => "INFO",
            Self::Debug => "DEBUG",
        }
    }
}

/// Parses a `--level` / `PUT /logger` level name (case-insensitive, as Firecracker).
pub fn parse_level(text: &str) -> Option<Option<Level>> {
    match text.to_ascii_lowercase().as_str() {
        "off" => Some(None),
        "error" => Some(Some(Level::Error)),
        "warning" | "warn" => Some(Some(Level::Warn)),
        "info" => Some(Some(Level::Info)),
        "debug" | "trace" => Some(Some(Level::Debug)),
        _ => None,
    }
}

/// Opens a log or metrics destination the way Firecracker does.
pub fn open_nonblock(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .custom_flags(libc_o_nonblock())
        .create(true)
        .read(true)
        .write(true)
        .open(path)
}

const fn libc_o_nonblock() -> i32 {
    // O_NONBLOCK is 0o4000 on every Linux architecture Firecracker supports.
    0o4000
}

/// Counters the fake keeps for its metrics lines.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Requests answered.
    pub api_requests: u64,
    /// Requests answered with an error.
    pub api_fails: u64,
    /// `PUT /actions` requests.
    pub actions_count: u64,
    /// Times the balloon grew.
    pub balloon_inflates: u64,
    /// Times the balloon shrank.
    pub balloon_deflates: u64,
}

/// The devices a metrics line has a group for, by id.
#[derive(Debug, Default)]
pub struct MetricDevices {
    /// Drive ids (`block_<id>`).
    pub drives: Vec<String>,
    /// Interface ids (`net_<id>`).
    pub nics: Vec<String>,
}

/// The logger and the metrics sink.
#[derive(Debug)]
pub struct Telemetry {
    id: String,
    log: Option<File>,
    level: Option<Level>,
    show_level: bool,
    show_origin: bool,
    metrics: Option<File>,
    /// What the next metrics line reports.
    pub counters: Counters,
}

impl Telemetry {
    /// A logger writing to stdout at Info, without metrics.
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            log: None,
            level: Some(Level::Info),
            show_level: false,
            show_origin: false,
            metrics: None,
            counters: Counters::default(),
        }
    }

    /// Sets the instance id shown in log lines (Firecracker logs as
    /// `anonymous-instance` until the `--id` is validated).
    pub fn set_instance_id(&mut self, id: &str) {
        id.clone_into(&mut self.id);
    }

    /// Applies a logger configuration; `None` fields keep their value.
    pub fn configure_logger(
        &mut self,
        path: Option<&Path>,
        level: Option<Option<Level>>,
        show_level: Option<bool>,
        show_origin: Option<bool>,
    ) -> io::Result<()> {
        if let Some(path) = path {
            self.log = Some(open_nonblock(path)?);
        }
        if let Some(level) = level {
            self.level = level;
        }
        if let Some(v) = show_level {
            self.show_level = v;
        }
        if let Some(v) = show_origin {
            self.show_origin = v;
        }
        Ok(())
    }

    /// Sets the metrics sink. Firecracker refuses a second one.
    pub fn configure_metrics(&mut self, path: &Path) -> Result<(), MetricsInitError> {
        let file = open_nonblock(path).map_err(|e| MetricsInitError(e.to_string()))?;
        if self.metrics.is_some() {
            return Err(MetricsInitError(
                "Reinitialization of metrics not allowed.".into(),
            ));
        }
        self.metrics = Some(file);
        Ok(())
    }

    /// Whether a metrics sink is configured.
    pub fn has_metrics(&self) -> bool {
        self.metrics.is_some()
    }

    /// Writes one log line if `level` passes the filter.
    pub fn log(&mut self, level: Level, thread: &str, message: &str) {
        if self.level.is_none_or(|max| level > max) {
            return;
        }
        let mut line = format!("{} [{}:{thread}", timestamp(), self.id);
        if self.show_level {
            line.push(':');
            line.push_str(level.label());
        }
        if self.show_origin {
            line.push_str(":src/fake-firecracker:0");
        }
        line.push_str("] ");
        line.push_str(message);
        line.push('\n');
        // Like Firecracker, a failed log write is dropped (it only bumps a metric there).
        let _ = match &mut self.log {
            Some(file) => file.write_all(line.as_bytes()),
            None => {
                let mut out = io::stdout().lock();
                out.write_all(line.as_bytes()).and_then(|()| out.flush())
            }
        };
    }

    /// Writes one metrics line. Without a sink this does nothing, as in Firecracker.
    pub fn write_metrics(&mut self, devices: &MetricDevices) -> io::Result<()> {
        let Some(file) = &mut self.metrics else {
            return Ok(());
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let c = std::mem::take(&mut self.counters);
        // Firecracker's groups, with the counters the fake can know; the
        // rest are 0. Every counter is what happened since the last line.
        let block = serde_json::json!({
            "read_bytes": 0, "write_bytes": 0, "read_count": 0, "write_count": 0,
            "flush_count": 0, "rate_limiter_throttled_events": 0,
            "io_engine_throttled_events": 0, "execute_fails": 0, "invalid_reqs_count": 0,
        });
        let net = serde_json::json!({
            "rx_bytes_count": 0, "tx_bytes_count": 0, "rx_packets_count": 0,
            "tx_packets_count": 0, "rx_rate_limiter_throttled": 0,
            "tx_rate_limiter_throttled": 0, "rx_fails": 0, "tx_fails": 0,
            "tx_spoofed_mac_count": 0, "tx_malformed_frames": 0,
        });
        let mut line = serde_json::json!({
            "utc_timestamp_ms": now_ms,
            "api_server": {
                "process_startup_time_us": 0,
                "process_startup_time_cpu_us": 0,
            },
            "balloon": {
                "activate_fails": 0,
                "inflate_count": c.balloon_inflates,
                "deflate_count": c.balloon_deflates,
                "stats_updates_count": 0,
                "stats_update_fails": 0,
            },
            "block": block,
            "net": net,
            "vsock": {
                "rx_bytes_count": 0, "tx_bytes_count": 0, "conns_added": 0,
                "conns_killed": 0, "conns_removed": 0,
            },
            "entropy": {"entropy_bytes": 0, "entropy_rate_limiter_throttled": 0, "host_rng_fails": 0},
            "put_api_requests": {
                "actions_count": c.actions_count,
            },
            "fake_firecracker": {
                "api_requests": c.api_requests,
                "api_fails": c.api_fails,
            },
            "vcpu": {"failures": 0},
            "seccomp": {"num_faults": 0},
            "vmm": { "panic_count": 0 },
        });
        if let Some(groups) = line.as_object_mut() {
            for id in &devices.drives {
                groups.insert(format!("block_{id}"), block.clone());
            }
            for id in &devices.nics {
                groups.insert(format!("net_{id}"), net.clone());
            }
        }
        let mut text = line.to_string();
        text.push('\n');
        file.write_all(text.as_bytes())
    }
}

/// `MetricsConfigError::InitializationFailure`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Cannot initialize the metrics system due to bad user input: {0}")]
pub struct MetricsInitError(pub String);

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn` in UTC (Firecracker prints local time; CI runs in UTC).
fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        now.subsec_nanos()
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }

    #[test]
    fn second_metrics_sink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Telemetry::new("x");
        t.configure_metrics(&dir.path().join("m")).unwrap();
        let err = t.configure_metrics(&dir.path().join("n")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Cannot initialize the metrics system due to bad user input: Reinitialization of metrics not allowed."
        );
    }
}
