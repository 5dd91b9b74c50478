//! I/O rate limiting: the token buckets that block, net, pmem, entropy and
//! serial devices share.
//!
//! A [`RateLimiter`] pairs two independent [`TokenBucket`]s, one counting
//! bytes and one counting operations. Leaving a bucket out means "no limit"
//! on that dimension.

use serde::{Deserialize, Serialize};

/// A token bucket: `size` tokens refilled over `refill_time` milliseconds,
/// with an optional one-off burst allowance spent before refilling starts.
///
/// # Examples
///
/// ```
/// use firehost_api::TokenBucket;
///
/// // 10 MiB per second, plus a one-off 50 MiB burst.
/// let bucket = TokenBucket {
///     size: 10 << 20,
///     refill_time: 1000,
///     one_time_burst: Some(50 << 20),
/// };
/// let json = serde_json::to_value(&bucket).unwrap();
/// assert_eq!(json["refill_time"], 1000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Tokens available once, on top of `size`, before the refill process
    /// starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds it takes to refill the bucket from empty to `size`.
    pub refill_time: u64,
    /// Capacity of the bucket, in tokens (bytes or operations).
    pub size: u64,
}

impl TokenBucket {
    /// A bucket of `size` tokens refilled every `refill_time` milliseconds,
    /// with no initial burst.
    pub fn new(size: u64, refill_time: u64) -> Self {
        Self {
            one_time_burst: None,
            refill_time,
            size,
        }
    }
}

/// Independent bytes-per-interval and operations-per-interval limits for one
/// device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    /// Bucket whose tokens are bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Bucket whose tokens are I/O operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}
