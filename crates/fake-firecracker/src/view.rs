//! Firecracker's response bodies, byte for byte.
//!
//! `firehost-api`'s types follow the `OpenAPI` spec (alphabetical fields, absent
//! optionals skipped), but Firecracker serializes its own structs: fields in
//! declaration order, every optional present (`null`) and defaults filled in
//! (`cache_type`, `io_engine`, `mmds-config.version`, the balloon flags). These
//! views turn the fake's resources into exactly those bodies.

use std::path::PathBuf;

use firehost_api::{
    Balloon, CacheType, Drive, EntropyDevice, IoEngine, MmdsConfig, MmdsVersion, NetworkInterface,
    RateLimiter, TokenBucket,
};
use serde::Serialize;

/// Firecracker's default MMDS address.
const DEFAULT_MMDS_IPV4: &str = "169.254.169.254";

/// `GET /` (`InstanceInfo`).
#[derive(Debug, Serialize)]
pub struct InstanceInfoView<'a> {
    /// `--id`.
    pub id: &'a str,
    /// "Not started", "Running" or "Paused".
    pub state: firehost_api::InstanceState,
    /// The VMM version.
    pub vmm_version: &'a str,
    /// Always "Firecracker".
    pub app_name: &'a str,
}

/// `TokenBucketConfig`.
#[derive(Debug, Serialize)]
pub struct TokenBucketView {
    size: u64,
    one_time_burst: Option<u64>,
    refill_time: u64,
}

/// `RateLimiterConfig`; Firecracker reports a limiter without buckets as `null`.
#[derive(Debug, Serialize)]
pub struct RateLimiterView {
    bandwidth: Option<TokenBucketView>,
    ops: Option<TokenBucketView>,
}

fn bucket(b: &TokenBucket) -> TokenBucketView {
    TokenBucketView {
        size: b.size,
        one_time_burst: b.one_time_burst,
        refill_time: b.refill_time,
    }
}

/// The view of an optional rate limiter.
pub fn rate_limiter(r: Option<&RateLimiter>) -> Option<RateLimiterView> {
    let r = r?;
    if r.bandwidth.is_none() && r.ops.is_none() {
        return None;
    }
    Some(RateLimiterView {
        bandwidth: r.bandwidth.as_ref().map(bucket),
        ops: r.ops.as_ref().map(bucket),
    })
}

/// `BlockDeviceConfig` as `GET /vm/config` reports it.
#[derive(Debug, Serialize)]
pub struct DriveView {
    drive_id: String,
    partuuid: Option<String>,
    is_root_device: bool,
    cache_type: CacheType,
    is_read_only: Option<bool>,
    path_on_host: Option<PathBuf>,
    rate_limiter: Option<RateLimiterView>,
    io_engine: Option<IoEngine>,
    socket: Option<PathBuf>,
}

impl From<&Drive> for DriveView {
    fn from(d: &Drive) -> Self {
        let virtio = d.socket.is_none();
        Self {
            drive_id: d.drive_id.clone(),
            partuuid: d.partuuid.clone(),
            is_root_device: d.is_root_device,
            cache_type: d.cache_type.unwrap_or_default(),
            is_read_only: virtio.then(|| d.is_read_only.unwrap_or(false)),
            path_on_host: d.path_on_host.clone(),
            rate_limiter: rate_limiter(d.rate_limiter.as_ref()),
            io_engine: virtio.then(|| d.io_engine.unwrap_or_default()),
            socket: d.socket.clone(),
        }
    }
}

/// `NetworkInterfaceConfig`; the MAC is printed in lower case.
#[derive(Debug, Serialize)]
pub struct NetView {
    iface_id: String,
    host_dev_name: String,
    guest_mac: Option<String>,
    mtu: Option<u16>,
    rx_rate_limiter: Option<RateLimiterView>,
    tx_rate_limiter: Option<RateLimiterView>,
}

impl From<&NetworkInterface> for NetView {
    fn from(n: &NetworkInterface) -> Self {
        Self {
            iface_id: n.iface_id.clone(),
            host_dev_name: n.host_dev_name.clone(),
            guest_mac: n.guest_mac.as_ref().map(|m| m.to_ascii_lowercase()),
            mtu: n.mtu,
            rx_rate_limiter: rate_limiter(n.rx_rate_limiter.as_ref()),
            tx_rate_limiter: rate_limiter(n.tx_rate_limiter.as_ref()),
        }
    }
}

/// `BalloonDeviceConfig`, as `GET /balloon` and `GET /vm/config` report it.
#[derive(Debug, Serialize)]
pub struct BalloonView {
    amount_mib: u32,
    deflate_on_oom: bool,
    stats_polling_interval_s: u16,
    free_page_hinting: bool,
    free_page_reporting: bool,
}

impl From<&Balloon> for BalloonView {
    fn from(b: &Balloon) -> Self {
        Self {
            amount_mib: b.amount_mib,
            deflate_on_oom: b.deflate_on_oom,
            stats_polling_interval_s: b.stats_polling_interval_s.unwrap_or(0),
            free_page_hinting: b.free_page_hinting.unwrap_or(false),
            free_page_reporting: b.free_page_reporting.unwrap_or(false),
        }
    }
}

/// `MmdsConfig` with Firecracker's defaults filled in.
#[derive(Debug, Serialize)]
pub struct MmdsConfigView {
    version: MmdsVersion,
    network_interfaces: Vec<String>,
    ipv4_address: String,
    imds_compat: bool,
}

impl From<&MmdsConfig> for MmdsConfigView {
    fn from(m: &MmdsConfig) -> Self {
        Self {
            version: m.version.unwrap_or(MmdsVersion::V1),
            network_interfaces: m.network_interfaces.clone(),
            ipv4_address: m
                .ipv4_address
                .map_or_else(|| DEFAULT_MMDS_IPV4.to_owned(), |a| a.to_string()),
            imds_compat: m.imds_compat.unwrap_or(false),
        }
    }
}

/// `EntropyDeviceConfig`.
#[derive(Debug, Serialize)]
pub struct EntropyView {
    rate_limiter: Option<RateLimiterView>,
}

impl From<&EntropyDevice> for EntropyView {
    fn from(e: &EntropyDevice) -> Self {
        Self {
            rate_limiter: rate_limiter(e.rate_limiter.as_ref()),
        }
    }
}
