//! I/O limits: the token buckets Firecracker puts on drives, NICs and the
//! entropy device, and the rates people write them in (`100MiB/s`,
//! `10Mbit/s`).
//!
//! A [`RateLimit`] holds up to two [`Bucket`]s, one counting bytes and one
//! counting operations. Firecracker silently treats a bucket of size 0, a
//! refill time of 0 or a refill time too long to count in nanoseconds as
//! "no limit"; here those are refused ([`RateLimitError`]), so a limit
//! that was asked for is a limit that applies. "No limit" is a bucket left
//! out.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest refill time Firecracker can count: it works in nanoseconds
/// in a `u64`, and takes a longer one as "no limit".
pub const MAX_REFILL_TIME_MS: u64 = u64::MAX / 1_000_000;

/// A token bucket: `size` tokens (bytes or operations), refilled from
/// empty to full over `refill_time_ms`, plus `one_time_burst` tokens
/// available once at the start.
///
/// # Examples
///
/// ```
/// use firehost::vocab::{Bandwidth, Bucket};
///
/// let bw: Bandwidth = "10Mbit/s".parse().unwrap();
/// let bucket = Bucket::per_second(bw.bytes_per_second());
/// assert_eq!((bucket.size, bucket.refill_time_ms), (1_250_000, 1000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    /// Capacity, in tokens.
    pub size: u64,
    /// Milliseconds to refill the bucket from empty.
    pub refill_time_ms: u64,
    /// Tokens available once, on top of `size`, before refilling starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
}

impl Bucket {
    /// `tokens` a second, with no burst.
    pub fn per_second(tokens: u64) -> Bucket {
        Bucket {
            size: tokens,
            refill_time_ms: 1000,
            one_time_burst: None,
        }
    }

    /// Checks that Firecracker would enforce this bucket rather than
    /// ignore it.
    pub fn validate(&self) -> Result<(), RateLimitError> {
        if self.size == 0 {
            return Err(RateLimitError::ZeroSize);
        }
        if self.refill_time_ms == 0 || self.refill_time_ms > MAX_REFILL_TIME_MS {
            return Err(RateLimitError::RefillTime {
                refill_time_ms: self.refill_time_ms,
            });
        }
        Ok(())
    }
}

/// The limits of one device (or one direction of a NIC): bytes and
/// operations, each limited or not.
///
/// # Examples
///
/// ```
/// use firehost::vocab::{Bucket, RateLimit};
///
/// let limit = RateLimit {
///     bandwidth: Some(Bucket::per_second(50 << 20)),
///     ops: Some(Bucket::per_second(1000)),
/// };
/// assert!(limit.validate().is_ok());
/// assert!(RateLimit::default().is_unlimited());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    /// Bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bucket>,
    /// Operations (requests for a drive, frames for a NIC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops: Option<Bucket>,
}

impl RateLimit {
    /// Neither bytes nor operations are limited.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }

    /// Checks both buckets.
    pub fn validate(&self) -> Result<(), RateLimitError> {
        self.bandwidth
            .iter()
            .chain(&self.ops)
            .try_for_each(Bucket::validate)
    }

    /// This limit with `change` applied, bucket by bucket.
    pub fn changed(self, change: &LimitChange) -> RateLimit {
        RateLimit {
            bandwidth: change.bandwidth.apply(self.bandwidth),
            ops: change.ops.apply(self.ops),
        }
    }
}

/// What a runtime update does to one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketChange {
    /// Leave it as it is.
    #[default]
    Keep,
    /// Replace it (or add it).
    Set(Bucket),
    /// Lift the limit.
    Remove,
}

impl BucketChange {
    fn apply(&self, current: Option<Bucket>) -> Option<Bucket> {
        match self {
            BucketChange::Keep => current,
            BucketChange::Set(bucket) => Some(*bucket),
            BucketChange::Remove => None,
        }
    }

    /// Whether this leaves the bucket as it is.
    pub fn is_keep(&self) -> bool {
        matches!(self, BucketChange::Keep)
    }
}

/// A runtime change to one device's limits, bucket by bucket (the shape
/// of Firecracker's `PATCH`).
///
/// # Examples
///
/// ```
/// use firehost::vocab::{Bucket, BucketChange, LimitChange, RateLimit};
///
/// let before = RateLimit {
///     bandwidth: Some(Bucket::per_second(1 << 20)),
///     ops: Some(Bucket::per_second(100)),
/// };
/// let change = LimitChange {
///     bandwidth: BucketChange::Remove,
///     ..LimitChange::default()
/// };
/// let after = before.changed(&change);
/// assert_eq!(after.bandwidth, None);
/// assert_eq!(after.ops, before.ops);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitChange {
    /// The bytes bucket.
    pub bandwidth: BucketChange,
    /// The operations bucket.
    pub ops: BucketChange,
}

impl LimitChange {
    /// Whether this changes nothing.
    pub fn is_noop(&self) -> bool {
        self.bandwidth.is_keep() && self.ops.is_keep()
    }

    /// Checks the buckets it sets.
    pub fn validate(&self) -> Result<(), RateLimitError> {
        for change in [&self.bandwidth, &self.ops] {
            if let BucketChange::Set(bucket) = change {
                bucket.validate()?;
            }
        }
        Ok(())
    }
}

/// Why a limit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// A bucket of size 0, which Firecracker takes as no limit.
    #[error("a token bucket of size 0 limits nothing; leave the bucket out instead")]
    ZeroSize,
    /// A refill time of 0, or one too long for Firecracker to count.
    #[error("refill time {refill_time_ms} ms must be 1 to {MAX_REFILL_TIME_MS}")]
    RefillTime {
        /// The refill time given.
        refill_time_ms: u64,
    },
}

/// A data rate in bytes per second, written as a number, a unit and `/s`:
/// `100MiB/s`, `1.5GB/s`, `10Mbit/s`, `512KiB/s`, `4096B/s`.
///
/// Byte units are `B`, `KB`/`MB`/`GB` (powers of 1000) and
/// `KiB`/`MiB`/`GiB` (powers of 1024); bit units are `bit`, `Kbit`,
/// `Mbit`, `Gbit` (powers of 1000, 8 bits to a byte). The result is
/// rounded down to whole bytes and must be at least one.
///
/// # Examples
///
/// ```
/// use firehost::vocab::Bandwidth;
///
/// let rate: Bandwidth = "100MiB/s".parse().unwrap();
/// assert_eq!(rate.bytes_per_second(), 100 << 20);
/// assert_eq!("1.5Gbit/s".parse::<Bandwidth>().unwrap().bytes_per_second(), 187_500_000);
/// assert!("100MiB".parse::<Bandwidth>().is_err()); // no "/s"
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bandwidth(u64);

impl Bandwidth {
    /// A rate of `bytes` a second.
    pub fn from_bytes_per_second(bytes: u64) -> Bandwidth {
        Bandwidth(bytes)
    }

    /// Bytes a second.
    pub fn bytes_per_second(self) -> u64 {
        self.0
    }
}

/// Why a rate did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a rate like 100MiB/s or 10Mbit/s: {why}")]
pub struct BandwidthSyntaxError {
    text: String,
    why: &'static str,
}

/// Units: name, then bytes per unit as a fraction (numerator,
/// denominator).
const UNITS: [(&str, u128, u128); 11] = [
    ("B", 1, 1),
    ("KB", 1000, 1),
    ("MB", 1_000_000, 1),
    ("GB", 1_000_000_000, 1),
    ("KiB", 1 << 10, 1),
    ("MiB", 1 << 20, 1),
    ("GiB", 1 << 30, 1),
    ("bit", 1, 8),
    ("Kbit", 1000, 8),
    ("Mbit", 1_000_000, 8),
    ("Gbit", 1_000_000_000, 8),
];

impl FromStr for Bandwidth {
    type Err = BandwidthSyntaxError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |why| BandwidthSyntaxError {
            text: text.to_owned(),
            why,
        };
        let amount = text.strip_suffix("/s").ok_or_else(|| fail("no \"/s\""))?;
        let split = amount
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| fail("no unit"))?;
        let (number, unit) = amount.split_at(split);
        let &(_, numerator, denominator) = UNITS
            .iter()
            .find(|(name, _, _)| *name == unit)
            .ok_or_else(|| fail("unknown unit"))?;
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits_ok(whole) || !digits_ok(fraction) || fraction.len() > 9 {
            return Err(fail(
                "the number must be digits, with at most 9 after a '.'",
            ));
        }
        // Exact arithmetic: the number as an integer over 10^decimals.
        let scale: u128 = std::iter::repeat_n(10, fraction.len()).product();
        let mantissa: u128 = format!("{whole}{fraction}")
            .parse()
            .map_err(|_| fail("the number is too large"))?;
        let bytes = mantissa
            .checked_mul(numerator)
            .map(|n| n / (denominator * scale))
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| fail("the rate is too large"))?;
        if bytes == 0 {
            return Err(fail("the rate is less than one byte a second"));
        }
        Ok(Bandwidth(bytes))
    }
}

impl fmt::Display for Bandwidth {
    /// The largest binary unit that divides the rate exactly, else the
    /// largest decimal one, so the text parses back to the same rate.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        let units = [
            ("GiB", 1u64 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
            ("GB", 1_000_000_000),
            ("MB", 1_000_000),
            ("KB", 1000),
        ];
        for (unit, size) in units {
            if b.is_multiple_of(size) {
                return write!(f, "{}{unit}/s", b / size);
            }
        }
        write!(f, "{b}B/s")
    }
}

impl Serialize for Bandwidth {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bandwidth {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_every_unit() {
        for (text, bytes) in [
            ("1B/s", 1),
            ("4096B/s", 4096),
            ("2KB/s", 2000),
            ("3MB/s", 3_000_000),
            ("1GB/s", 1_000_000_000),
            ("512KiB/s", 512 << 10),
            ("100MiB/s", 100 << 20),
            ("2GiB/s", 2 << 30),
            ("8bit/s", 1),
            ("10Mbit/s", 1_250_000),
            ("1Kbit/s", 125),
            ("1.5Gbit/s", 187_500_000),
            ("0.5MiB/s", 1 << 19),
            ("1.25KB/s", 1250),
        ] {
            let rate: Bandwidth = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(rate.bytes_per_second(), bytes, "{text}");
        }
    }

    #[test]
    fn bad_rates_are_refused() {
        for text in [
            "",
            "/s",
            "100",
            "100MiB",
            "MiB/s",
            "100mib/s",
            "100 MiB/s",
            "-1MiB/s",
            "1..5MiB/s",
            ".5MiB/s",
            "1bit/s",
            "0B/s",
            "0.0001B/s",
            "1.0000000001MiB/s",
            "99999999999999999999GiB/s",
            "100MiB/h",
            "100XB/s",
        ] {
            assert!(text.parse::<Bandwidth>().is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn rates_print_in_a_form_that_parses_back() {
        for bytes in [1, 1000, 1024, 1_250_000, 100 << 20, 3 << 30, u64::MAX] {
            let rate = Bandwidth::from_bytes_per_second(bytes);
            let text = rate.to_string();
            assert_eq!(text.parse::<Bandwidth>(), Ok(rate), "{text}");
        }
        assert_eq!(Bandwidth(100 << 20).to_string(), "100MiB/s");
        assert_eq!(Bandwidth(1_250_000).to_string(), "1250KB/s");
        assert_eq!(Bandwidth(1001).to_string(), "1001B/s");
    }

    #[test]
    fn buckets_firecracker_would_ignore_are_refused() {
        assert_eq!(
            Bucket::per_second(0).validate(),
            Err(RateLimitError::ZeroSize)
        );
        for refill_time_ms in [0, MAX_REFILL_TIME_MS + 1, u64::MAX] {
            let bucket = Bucket {
                refill_time_ms,
                ..Bucket::per_second(1)
            };
            assert_eq!(
                bucket.validate(),
                Err(RateLimitError::RefillTime { refill_time_ms })
            );
        }
        let longest = Bucket {
            refill_time_ms: MAX_REFILL_TIME_MS,
            ..Bucket::per_second(1)
        };
        assert_eq!(longest.validate(), Ok(()));
        let limit = RateLimit {
            bandwidth: Some(Bucket::per_second(1)),
            ops: Some(Bucket::per_second(0)),
        };
        assert_eq!(limit.validate(), Err(RateLimitError::ZeroSize));
    }

    #[test]
    fn changes_apply_bucket_by_bucket() {
        let a = Bucket::per_second(1);
        let b = Bucket::per_second(2);
        let before = RateLimit {
            bandwidth: Some(a),
            ops: None,
        };
        let change = LimitChange {
            bandwidth: BucketChange::Keep,
            ops: BucketChange::Set(b),
        };
        assert_eq!(
            before.changed(&change),
            RateLimit {
                bandwidth: Some(a),
                ops: Some(b)
            }
        );
        let remove = LimitChange {
            bandwidth: BucketChange::Remove,
            ops: BucketChange::Remove,
        };
        assert!(before.changed(&remove).is_unlimited());
        assert!(LimitChange::default().is_noop());
        let bad = LimitChange {
            ops: BucketChange::Set(Bucket::per_second(0)),
            ..LimitChange::default()
        };
        assert_eq!(bad.validate(), Err(RateLimitError::ZeroSize));
    }
}
