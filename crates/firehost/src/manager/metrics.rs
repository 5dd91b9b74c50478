//! Each VM's Firecracker metrics: a flush on demand, read back from the
//! bounded `metrics.json` in the VM's directory (where the log keeper puts
//! what Firecracker writes to its metrics FIFO), and a stream of them.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Shared, VmError};
use crate::VmId;
use crate::api::models::{ActionType, InstanceActionInfo};
use crate::metrics::VmmMetrics;
use crate::state::Operation;

/// How often the metrics file is looked at while a flush is awaited: soon
/// at first (the keeper copies a flush within a millisecond or so on an
/// idle host), less often the longer it takes (many flushes at once).
const FIRST_POLL: Duration = Duration::from_millis(1);
const LAST_POLL: Duration = Duration::from_millis(16);

/// One flush of a VM's metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmMetrics {
    /// The VM.
    pub vm: VmId,
    /// What happened since the flush before.
    pub metrics: VmmMetrics,
    /// Milliseconds since the flush before, when the file still holds it.
    pub interval_ms: Option<u64>,
    /// The VM's traffic on the default network, read from the firewall
    /// at the flush: totals since the VM was attached, not deltas.
    /// `None` for a VM without one.
    pub traffic: Option<crate::net::firewall::TrafficCounters>,
}

/// Where a metrics file stood before a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    ino: u64,
    len: u64,
}

fn mark(path: &Path) -> Option<Mark> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Mark {
        ino: meta.ino(),
        len: meta.len(),
    })
}

/// The newest flush and the interval since the one before, once a flush
/// newer than `before` is in the file.
fn read_new(path: &Path, before: Option<Mark>) -> Option<(VmmMetrics, Option<u64>)> {
    let now = mark(path)?;
    // Same file and nothing added: not yet. (A rotation gives a new file.)
    if before.is_some_and(|b| b.ino == now.ino && now.len <= b.len) {
        return None;
    }
    let text = tail(path, now.len)?;
    if !text.ends_with('\n') {
        return None;
    }
    let mut flushes = text.lines().rev().filter_map(|l| VmmMetrics::parse(l).ok());
    let last = flushes.next()?;
    let interval = flushes
        .next()
        .map(|prev| last.utc_timestamp_ms.saturating_sub(prev.utc_timestamp_ms));
    Some((last, interval))
}

/// The end of the file: enough for the last two flushes (Firecracker's
/// are about 6 KiB), without reading the whole bounded file each time.
const TAIL_BYTES: u64 = 32 << 10;

fn tail(path: &Path, len: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut bytes = Vec::with_capacity(usize::try_from(len - start).unwrap_or(0));
    file.take(TAIL_BYTES).read_to_end(&mut bytes).ok()?;
    // A cut at the start may split a character; only whole lines are read.
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

pub(super) async fn metrics(shared: &Arc<Shared>, id: &VmId) -> Result<VmMetrics, VmError> {
    if !shared.config.vmm_metrics {
        return Err(VmError::MetricsOff { id: id.clone() });
    }
    let (api, path, networked) = {
        let guard = super::ops::found(shared, id, Operation::Update).await?;
        let vm = guard.as_ref().expect("checked by found()");
        let api = super::ops::api_of(vm, Operation::Update)?;
        let networked = vm.record.net.is_some().then(|| vm.record.id.clone());
        (api, vm.dir.join(super::launch::METRICS_FILE), networked)
    };
    let before = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || mark(&path))
            .await
            .expect("stat does not panic")
    };
    api.create_sync_action(&InstanceActionInfo {
        action_type: ActionType::FlushMetrics,
    })
    .await
    .map_err(|source| VmError::Api {
        id: id.clone(),
        op: "flush the metrics",
        source,
    })?;
    // The keeper copies the flush from the FIFO into the file a moment
    // later: wait for it, as long as a request may take.
    let deadline = Instant::now() + shared.config.timeouts.request;
    let mut poll = FIRST_POLL;
    loop {
        let found = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || read_new(&path, before))
                .await
                .expect("reading the metrics does not panic")
        };
        if let Some((metrics, interval_ms)) = found {
            let traffic = match &networked {
                // A network being torn down as the VM goes has no
                // counters left: the sample has none either.
                Some(key) => shared.network().await.traffic_of(key).await.ok(),
                None => None,
            };
            return Ok(VmMetrics {
                vm: id.clone(),
                metrics,
                interval_ms,
                traffic,
            });
        }
        if Instant::now() >= deadline {
            return Err(VmError::MetricsTimeout { id: id.clone() });
        }
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(LAST_POLL);
    }
}

/// A VM's metrics, flushed every interval (see
/// [`Manager::subscribe_metrics`](crate::Manager::subscribe_metrics)). It
/// ends when the VM or its VMM is gone, and its task stops when it is
/// dropped.
#[derive(Debug)]
pub struct MetricsSubscription {
    rx: tokio::sync::mpsc::Receiver<Result<VmMetrics, VmError>>,
}

impl MetricsSubscription {
    /// The next flush; `None` once the subscription has ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a flush not yet received stays for the next call.
    pub async fn next(&mut self) -> Option<Result<VmMetrics, VmError>> {
        self.rx.recv().await
    }
}

impl futures_util::Stream for MetricsSubscription {
    type Item = Result<VmMetrics, VmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

pub(super) fn subscribe(shared: Arc<Shared>, id: VmId, every: Duration) -> MetricsSubscription {
    // One flush in hand at most: a slow reader sees the latest, later.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every.max(Duration::from_millis(10)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = tx.closed() => return,
            }
            let flush = metrics(&shared, &id).await;
            // A VM that is gone, or whose VMM is, has no more metrics.
            let ended = matches!(
                &flush,
                Err(VmError::NotFound { .. }
                    | VmError::VmmExited { .. }
                    | VmError::MetricsOff { .. })
            );
            if tx.send(flush).await.is_err() || ended {
                return;
            }
        }
    });
    MetricsSubscription { rx }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_counts_once_it_is_whole_and_after_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        assert!(read_new(&path, None).is_none(), "no file yet");
        std::fs::write(&path, "{\"utc_timestamp_ms\": 10}\n").unwrap();
        let before = mark(&path);
        assert!(read_new(&path, before).is_none(), "nothing new");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"utc_timestamp_ms\": 25");
        std::fs::write(&path, &text).unwrap();
        assert!(read_new(&path, before).is_none(), "half a line");
        text.push_str("}\n");
        std::fs::write(&path, &text).unwrap();
        let (m, interval) = read_new(&path, before).unwrap();
        assert_eq!((m.utc_timestamp_ms, interval), (25, Some(15)));
    }
}
