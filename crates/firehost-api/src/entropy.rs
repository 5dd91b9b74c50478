//! The virtio-rng device: `PUT /entropy`.

use serde::{Deserialize, Serialize};

use crate::RateLimiter;

/// An entropy device feeding the guest from the host's RNG: body of
/// `PUT /entropy`. An empty object adds the device without limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDevice {
    /// Limits on how fast the guest may draw entropy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}
