//! Rate limiters as Firecracker keeps them: a bucket of size 0 or refill
//! time 0 (or one too long to count in nanoseconds) is no bucket, a burst
//! of 0 is no burst, and a `PATCH` changes only the buckets it names.

use firehost_api::{RateLimiter, TokenBucket};

/// Firecracker counts refill time in nanoseconds in a `u64`.
const MAX_REFILL_TIME_MS: u64 = u64::MAX / 1_000_000;

fn bucket(b: Option<TokenBucket>) -> Option<TokenBucket> {
    b.filter(|b| b.size != 0 && b.refill_time != 0 && b.refill_time <= MAX_REFILL_TIME_MS)
        .map(|b| TokenBucket {
            one_time_burst: b.one_time_burst.filter(|n| *n != 0),
            ..b
        })
}

/// The limiter a `PUT` body configures; `None` when it limits nothing.
pub(super) fn configured(limiter: Option<RateLimiter>) -> Option<RateLimiter> {
    let l = limiter?;
    let l = RateLimiter {
        bandwidth: bucket(l.bandwidth),
        ops: bucket(l.ops),
    };
    (l.bandwidth.is_some() || l.ops.is_some()).then_some(l)
}

/// `current` after a `PATCH` whose `rate_limiter` is `update`.
pub(super) fn patched(
    current: Option<RateLimiter>,
    update: Option<RateLimiter>,
) -> Option<RateLimiter> {
    let Some(update) = update else {
        return current;
    };
    let current = current.unwrap_or_default();
    let pick = |old: Option<TokenBucket>, new: Option<TokenBucket>| match new {
        None => old,
        Some(new) => bucket(Some(new)),
    };
    let l = RateLimiter {
        bandwidth: pick(current.bandwidth, update.bandwidth),
        ops: pick(current.ops, update.ops),
    };
    (l.bandwidth.is_some() || l.ops.is_some()).then_some(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_buckets_are_dropped_and_patches_keep_what_they_leave_out() {
        let b = TokenBucket::new(10, 100);
        let put = configured(Some(RateLimiter {
            bandwidth: Some(TokenBucket::new(0, 100)),
            ops: Some(TokenBucket {
                one_time_burst: Some(0),
                ..b
            }),
        }));
        assert_eq!(
            put,
            Some(RateLimiter {
                bandwidth: None,
                ops: Some(b)
            })
        );
        assert_eq!(configured(Some(RateLimiter::default())), None);
        let with_bw = patched(
            put,
            Some(RateLimiter {
                bandwidth: Some(b),
                ops: None,
            }),
        );
        assert_eq!(
            with_bw,
            Some(RateLimiter {
                bandwidth: Some(b),
                ops: Some(b)
            })
        );
        let removed = patched(
            with_bw,
            Some(RateLimiter {
                bandwidth: Some(TokenBucket::new(0, 0)),
                ops: Some(TokenBucket::new(0, 0)),
            }),
        );
        assert_eq!(removed, None);
        assert_eq!(patched(put, None), put);
    }
}
