//! Where Firecracker flushes its metrics: `PUT /metrics`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The metrics sink: body of `PUT /metrics`.
///
/// Firecracker writes one JSON object per flush (periodic, or on a
/// `FlushMetrics` action) to this file or named pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Host path of the named pipe or file that receives the metrics.
    pub metrics_path: PathBuf,
}
