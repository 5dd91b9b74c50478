//! Firecracker's request bodies for a VM's devices, from its resolved spec:
//! drives, NICs, the entropy device and their limits.
//!
//! Kept apart from the requests themselves so that create, restore and
//! runtime updates describe a device the same way.

use crate::api::models::{
    Balloon, CacheType, Drive, EntropyDevice, IoEngine as ApiIoEngine, MemoryHotplugConfig,
    NetworkInterface, Pmem, RateLimiter, SerialDevice, TokenBucket,
};
use crate::net::host::VmNet;
use crate::spec::{
    BalloonSpec, DriveCache, DriveIo, EntropySpec, IoEngine, MemoryHotplugSpec, NicSpec, PmemSpec,
    ROOTFS_DRIVE_ID, ResolvedSpec,
};
use crate::vocab::{Bucket, BucketChange, LimitChange, RateLimit};

/// Firecracker's form of `limit`; `None` when nothing is limited.
pub(crate) fn limiter(limit: &RateLimit) -> Option<RateLimiter> {
    (!limit.is_unlimited()).then(|| RateLimiter {
        bandwidth: limit.bandwidth.as_ref().map(bucket),
        ops: limit.ops.as_ref().map(bucket),
    })
}

/// The `rate_limiter` of a `PATCH`: a bucket left out is kept, and a
/// bucket of size 0 lifts the limit (Firecracker's rule).
pub(crate) fn limiter_change(change: &LimitChange) -> Option<RateLimiter> {
    let patch = |c: &BucketChange| match c {
        BucketChange::Keep => None,
        BucketChange::Set(b) => Some(bucket(b)),
        BucketChange::Remove => Some(TokenBucket::new(0, 0)),
    };
    (!change.is_noop()).then(|| RateLimiter {
        bandwidth: patch(&change.bandwidth),
        ops: patch(&change.ops),
    })
}

fn bucket(b: &Bucket) -> TokenBucket {
    TokenBucket {
        one_time_burst: b.one_time_burst,
        ..TokenBucket::new(b.size, b.refill_time_ms)
    }
}

/// The drives, root filesystem first, as Firecracker is to attach them.
pub(crate) fn drives(spec: &ResolvedSpec) -> Vec<Drive> {
    let drive = |id: &str, path: &std::path::Path, read_only: bool, io: &DriveIo| Drive {
        cache_type: Some(match io.cache {
            DriveCache::Unsafe => CacheType::Unsafe,
            DriveCache::Writeback => CacheType::Writeback,
        }),
        io_engine: Some(match io.engine {
            IoEngine::Sync => ApiIoEngine::Sync,
            IoEngine::Async => ApiIoEngine::Async,
        }),
        rate_limiter: limiter(&io.limit),
        ..Drive::virtio_block(id, path, false, read_only)
    };
    let mut drives = Vec::new();
    if let Some(rootfs) = &spec.rootfs {
        drives.push(Drive {
            is_root_device: true,
            partuuid: spec.rootfs_partuuid.clone(),
            ..drive(
                ROOTFS_DRIVE_ID,
                rootfs,
                spec.rootfs_read_only,
                &spec.rootfs_io,
            )
        });
    }
    for extra in &spec.extra_drives {
        drives.push(drive(&extra.id, &extra.path, extra.read_only, &extra.io));
    }
    drives
}

/// The NIC of the default network: the TAP on the host, the MAC the host
/// chose (so the guest and the anti-spoofing rules agree), and the spec's
/// limits.
pub(crate) fn network_interface(net: &VmNet, spec: &ResolvedSpec) -> NetworkInterface {
    let (rx, tx) = spec
        .net
        .as_ref()
        .map(|n| (n.rx_limit, n.tx_limit))
        .unwrap_or_default();
    NetworkInterface {
        guest_mac: Some(net.mac.to_string()),
        rx_rate_limiter: limiter(&rx),
        tx_rate_limiter: limiter(&tx),
        ..NetworkInterface::new(&net.iface_id, net.tap.as_str())
    }
}

/// A NIC on a TAP the operator manages.
pub(crate) fn extra_nic(nic: &NicSpec) -> NetworkInterface {
    NetworkInterface {
        guest_mac: nic.guest_mac.map(|m| m.to_string()),
        rx_rate_limiter: limiter(&nic.rx_limit),
        tx_rate_limiter: limiter(&nic.tx_limit),
        ..NetworkInterface::new(&nic.iface_id, nic.tap.as_str())
    }
}

/// The balloon device.
pub(crate) fn balloon(spec: &BalloonSpec) -> Balloon {
    Balloon {
        amount_mib: spec.amount_mib,
        deflate_on_oom: spec.deflate_on_oom,
        stats_polling_interval_s: Some(spec.stats_interval_s),
        free_page_hinting: Some(spec.free_page_hinting),
        free_page_reporting: Some(spec.free_page_reporting),
    }
}

/// A pmem device.
pub(crate) fn pmem(spec: &PmemSpec) -> Pmem {
    Pmem {
        id: spec.id.clone(),
        path_on_host: spec.path.clone(),
        root_device: Some(spec.root),
        read_only: Some(spec.read_only),
        rate_limiter: limiter(&spec.limit),
    }
}

/// The serial device: its output limit, the output staying on the VMM's
/// stdout (the console the manager keeps).
pub(crate) fn serial(limit: &Bucket) -> SerialDevice {
    SerialDevice {
        serial_out_path: None,
        rate_limiter: Some(bucket(limit)),
    }
}

/// The hotpluggable memory region.
pub(crate) fn memory_hotplug(spec: &MemoryHotplugSpec) -> MemoryHotplugConfig {
    MemoryHotplugConfig {
        total_size_mib: Some(spec.total_mib),
        slot_size_mib: Some(spec.slot_mib),
        block_size_mib: Some(spec.block_mib),
    }
}

/// The entropy device.
pub(crate) fn entropy(spec: &EntropySpec) -> EntropyDevice {
    EntropyDevice {
        rate_limiter: limiter(&spec.limit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_keeps_removes_and_sets_buckets_the_way_firecracker_reads_them() {
        let set = Bucket {
            one_time_burst: Some(7),
            ..Bucket::per_second(100)
        };
        let change = LimitChange {
            bandwidth: BucketChange::Remove,
            ops: BucketChange::Set(set),
        };
        let body = limiter_change(&change).unwrap();
        assert_eq!(body.bandwidth, Some(TokenBucket::new(0, 0)));
        assert_eq!(
            body.ops,
            Some(TokenBucket {
                one_time_burst: Some(7),
                ..TokenBucket::new(100, 1000)
            })
        );
        let keep_ops = LimitChange {
            bandwidth: BucketChange::Set(set),
            ops: BucketChange::Keep,
        };
        assert_eq!(limiter_change(&keep_ops).unwrap().ops, None);
        assert_eq!(limiter_change(&LimitChange::default()), None);
    }

    #[test]
    fn the_root_drive_carries_its_partuuid_cache_and_limits() {
        let mut spec = ResolvedSpec::for_tests();
        spec.rootfs_partuuid = Some("1234abcd-01".into());
        spec.rootfs_io = DriveIo {
            cache: DriveCache::Writeback,
            engine: IoEngine::Async,
            limit: RateLimit {
                bandwidth: Some(Bucket::per_second(1 << 20)),
                ops: None,
            },
        };
        let root = &drives(&spec)[0];
        assert!(root.is_root_device);
        assert_eq!(root.partuuid.as_deref(), Some("1234abcd-01"));
        assert_eq!(root.cache_type, Some(CacheType::Writeback));
        assert_eq!(root.io_engine, Some(ApiIoEngine::Async));
        let limiter = root.rate_limiter.unwrap();
        assert_eq!(limiter.bandwidth, Some(TokenBucket::new(1 << 20, 1000)));
        assert_eq!(limiter.ops, None);
    }
}
