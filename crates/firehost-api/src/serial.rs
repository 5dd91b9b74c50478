//! The serial console: `PUT /serial`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::TokenBucket;

/// Serial console output settings: body of `PUT /serial`.
///
/// Only has an effect when the guest kernel's command line also enables the
/// serial console.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialDevice {
    /// Host path of the file or named pipe that receives the guest's serial
    /// output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<PathBuf>,
    /// Output bandwidth limit, in bytes; bytes over the limit are dropped
    /// (and counted in the `uart.rate_limiter_dropped_bytes` metric).
    /// Note: a bare [`TokenBucket`], not a [`RateLimiter`](crate::RateLimiter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<TokenBucket>,
}
