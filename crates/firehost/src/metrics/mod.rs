//! Firecracker's metrics, typed.
//!
//! Firecracker writes one JSON object per flush to its metrics file: on a
//! schedule (every 60 seconds), when asked (the `FlushMetrics` action),
//! and as it starts the guest. Its counters are **deltas**: each flush
//! holds what happened since the one before, and resets them. Groups hold
//! one device kind (`block`, `net`, `vsock`, `balloon`, `entropy`…), and
//! devices with ids have a group of their own as well (`block_<drive id>`,
//! `net_<interface id>`) beside the kind's total.
//!
//! [`VmmMetrics::parse`] reads one flush: the groups an operator watches
//! are typed ([`BlockMetrics`], [`NetMetrics`], [`VsockMetrics`],
//! [`BalloonMetrics`], [`EntropyMetrics`], [`ApiMetrics`]), fields a newer
//! Firecracker adds are ignored, and a field it drops reads as 0. The
//! manager collects them per VM ([`Manager::metrics`],
//! [`Manager::subscribe_metrics`]).
//!
//! [`Manager::metrics`]: crate::Manager::metrics
//! [`Manager::subscribe_metrics`]: crate::Manager::subscribe_metrics

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One flush of a VMM's metrics: what happened since the flush before.
///
/// # Examples
///
/// ```
/// use firehost::metrics::VmmMetrics;
///
/// let line = r#"{"utc_timestamp_ms": 1000, "block_rootfs": {"read_bytes": 4096},
///                "net_eth0": {"tx_bytes_count": 60}, "put_api_requests": {"drive_fails": 1}}"#;
/// let m = VmmMetrics::parse(line).unwrap();
/// assert_eq!(m.drives["rootfs"].read_bytes, 4096);
/// assert_eq!(m.nics["eth0"].tx_bytes_count, 60);
/// assert_eq!(m.api.fails, 1);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmMetrics {
    /// When Firecracker wrote it, milliseconds since the Unix epoch.
    pub utc_timestamp_ms: u64,
    /// Every drive together.
    pub block: BlockMetrics,
    /// Each drive, by id.
    pub drives: BTreeMap<String, BlockMetrics>,
    /// Every NIC together.
    pub net: NetMetrics,
    /// Each NIC, by interface id.
    pub nics: BTreeMap<String, NetMetrics>,
    /// The vsock device.
    pub vsock: VsockMetrics,
    /// The balloon.
    pub balloon: BalloonMetrics,
    /// The entropy device.
    pub entropy: EntropyMetrics,
    /// The API server.
    pub api: ApiMetrics,
    /// vCPU exits that failed.
    pub vcpu_failures: u64,
    /// Panics of the VMM.
    pub vmm_panics: u64,
    /// System calls the seccomp filter refused.
    pub seccomp_faults: u64,
}

/// A block device's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockMetrics {
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read requests.
    pub read_count: u64,
    /// Write requests.
    pub write_count: u64,
    /// Flush requests.
    pub flush_count: u64,
    /// Times a request waited for the rate limiter.
    pub rate_limiter_throttled_events: u64,
    /// Times a request waited for the io engine.
    pub io_engine_throttled_events: u64,
    /// Requests that failed.
    pub execute_fails: u64,
    /// Malformed requests from the guest.
    pub invalid_reqs_count: u64,
}

/// A NIC's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetMetrics {
    /// Bytes the guest received.
    pub rx_bytes_count: u64,
    /// Bytes the guest sent.
    pub tx_bytes_count: u64,
    /// Frames the guest received.
    pub rx_packets_count: u64,
    /// Frames the guest sent.
    pub tx_packets_count: u64,
    /// Times receiving waited for the rate limiter.
    pub rx_rate_limiter_throttled: u64,
    /// Times sending waited for the rate limiter.
    pub tx_rate_limiter_throttled: u64,
    /// Receive failures.
    pub rx_fails: u64,
    /// Send failures.
    pub tx_fails: u64,
    /// Frames the guest sent from a MAC other than its own.
    pub tx_spoofed_mac_count: u64,
    /// Malformed frames from the guest.
    pub tx_malformed_frames: u64,
}

/// The vsock device's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VsockMetrics {
    /// Bytes to the guest.
    pub rx_bytes_count: u64,
    /// Bytes from the guest.
    pub tx_bytes_count: u64,
    /// Connections opened.
    pub conns_added: u64,
    /// Connections killed.
    pub conns_killed: u64,
    /// Connections closed.
    pub conns_removed: u64,
}

/// The balloon's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BalloonMetrics {
    /// Inflations.
    pub inflate_count: u64,
    /// Deflations.
    pub deflate_count: u64,
    /// Statistics reports from the guest.
    pub stats_updates_count: u64,
    /// Failed statistics reports.
    pub stats_update_fails: u64,
    /// Failed activations (the guest's driver could not set it up).
    pub activate_fails: u64,
    /// Free page reports.
    pub free_page_report_count: u64,
    /// Bytes freed by free page reporting.
    pub free_page_report_freed: u64,
}

/// The entropy device's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EntropyMetrics {
    /// Bytes of entropy given to the guest.
    pub entropy_bytes: u64,
    /// Times the guest waited for the rate limiter.
    pub entropy_rate_limiter_throttled: u64,
    /// Failures of the host's RNG.
    pub host_rng_fails: u64,
}

/// The API server's requests, over every endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiMetrics {
    /// Requests (Firecracker counts most `GET`s, `PUT`s and `PATCH`es).
    pub requests: u64,
    /// Requests that failed.
    pub fails: u64,
}

/// A line that is not a metrics flush.
#[derive(Debug, thiserror::Error)]
#[error("not a Firecracker metrics line")]
pub struct MetricsError(#[source] serde_json::Error);

impl VmmMetrics {
    /// Reads one flush (one line of the metrics file).
    pub fn parse(line: &str) -> Result<VmmMetrics, MetricsError> {
        let object: serde_json::Map<String, Value> =
            serde_json::from_str(line).map_err(MetricsError)?;
        let mut m = VmmMetrics::default();
        for (key, group) in &object {
            match key.as_str() {
                "utc_timestamp_ms" => m.utc_timestamp_ms = group.as_u64().unwrap_or(0),
                "block" => m.block = typed(group),
                "net" => m.net = typed(group),
                "vsock" => m.vsock = typed(group),
                "balloon" => m.balloon = typed(group),
                "entropy" => m.entropy = typed(group),
                "vcpu" => m.vcpu_failures = counter(group, "failures"),
                "vmm" => m.vmm_panics = counter(group, "panic_count"),
                "seccomp" => m.seccomp_faults = counter(group, "num_faults"),
                "get_api_requests" | "put_api_requests" | "patch_api_requests" => {
                    let (requests, fails) = api_counts(group);
                    m.api.requests += requests;
                    m.api.fails += fails;
                }
                _ => {
                    if let Some(id) = key.strip_prefix("block_") {
                        m.drives.insert(id.to_owned(), typed(group));
                    } else if let Some(id) = key.strip_prefix("net_") {
                        m.nics.insert(id.to_owned(), typed(group));
                    }
                }
            }
        }
        Ok(m)
    }

    /// The newest complete flush in `text` (a metrics file's content):
    /// lines that do not parse, like one cut short by the file's rotation,
    /// are passed over.
    pub fn last_in(text: &str) -> Option<VmmMetrics> {
        text.lines()
            .rev()
            .filter(|l| !l.trim().is_empty())
            .find_map(|l| VmmMetrics::parse(l).ok())
    }
}

/// A group as its typed struct; a group of the wrong shape reads as zeros.
fn typed<T: serde::de::DeserializeOwned + Default>(group: &Value) -> T {
    if !group.is_object() {
        return T::default();
    }
    T::deserialize(group).unwrap_or_default()
}

fn counter(group: &Value, name: &str) -> u64 {
    group.get(name).and_then(Value::as_u64).unwrap_or(0)
}

/// `(requests, fails)` of an API group: its `*_count` and `*_fails`
/// counters.
fn api_counts(group: &Value) -> (u64, u64) {
    let Some(fields) = group.as_object() else {
        return (0, 0);
    };
    let sum = |suffix: &str| {
        fields
            .iter()
            .filter(|(k, _)| k.ends_with(suffix))
            .filter_map(|(_, v)| v.as_u64())
            .fold(0u64, u64::saturating_add)
    };
    (sum("_count"), sum("_fails"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three flushes of Firecracker v1.16.1 with two drives, a NIC, vsock,
    /// a balloon and an entropy device: at `InstanceStart`, then two
    /// `FlushMetrics`.
    const CAPTURED: &str = include_str!("testdata/firecracker-1.16.1.jsonl");

    #[test]
    fn captured_firecracker_metrics_parse_into_every_group() {
        let lines: Vec<_> = CAPTURED.lines().collect();
        assert_eq!(lines.len(), 3);
        let first = VmmMetrics::parse(lines[0]).unwrap();
        assert!(first.utc_timestamp_ms > 1_700_000_000_000);
        assert_eq!(first.drives.keys().collect::<Vec<_>>(), ["data", "rootfs"]);
        assert_eq!(first.nics.keys().collect::<Vec<_>>(), ["eth0"]);
        // The one PUT /actions (InstanceStart) of that interval, and the
        // configuration requests before it.
        assert!(first.api.requests >= 1, "{first:?}");
        let last = VmmMetrics::last_in(CAPTURED).unwrap();
        assert!(last.utc_timestamp_ms > first.utc_timestamp_ms);
        assert_eq!(last, VmmMetrics::parse(lines[2]).unwrap());
    }

    #[test]
    fn odd_input_reads_as_zeros_not_errors() {
        let m = VmmMetrics::parse(
            r#"{"utc_timestamp_ms": "soon", "block": [1, 2], "net_eth0": {"rx_bytes_count": -1},
                "vcpu": {"failures": 3}, "new_group": {"x": 1}, "block_data": {"read_bytes": 7, "new": true}}"#,
        )
        .unwrap();
        assert_eq!(m.utc_timestamp_ms, 0);
        assert_eq!(m.block, BlockMetrics::default());
        assert_eq!(m.nics["eth0"], NetMetrics::default());
        assert_eq!(m.drives["data"].read_bytes, 7);
        assert_eq!(m.vcpu_failures, 3);
        assert!(VmmMetrics::parse("[]").is_err());
        assert!(VmmMetrics::parse("{\"utc").is_err());
    }

    #[test]
    fn the_last_complete_line_wins_over_a_cut_one() {
        let text = format!(
            "{}\n{}",
            r#"{"utc_timestamp_ms": 5}"#, r#"{"utc_timestamp_ms": 6, "blo"#
        );
        assert_eq!(VmmMetrics::last_in(&text).unwrap().utc_timestamp_ms, 5);
        assert!(VmmMetrics::last_in("").is_none());
    }
}
