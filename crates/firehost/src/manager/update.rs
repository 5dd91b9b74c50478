//! Runtime changes to a started VM's devices: drive and NIC limits and the
//! balloon. Each change is one Firecracker `PATCH`; an update is all or
//! nothing: when one `PATCH` fails, those already sent are taken back and
//! the record keeps the old values.

use serde::{Deserialize, Serialize};

use crate::api::models::{
    BalloonStatsUpdate, BalloonUpdate, MemoryHotplugSizeUpdate, PartialDrive,
    PartialNetworkInterface,
};
use crate::api::{ApiClient, ApiError};
use crate::spec::{ROOTFS_DRIVE_ID, ResolvedSpec};
use crate::vocab::{BucketChange, DEFAULT_IFACE_ID, LimitChange, RateLimit, RateLimitError};

/// Changes to a running or paused VM's devices (see
/// [`Manager::update`](crate::Manager::update)); also what a restore
/// changes in the snapshot's devices
/// ([`RestoreOptions::devices`](crate::manager::RestoreOptions::devices)).
///
/// # Examples
///
/// ```
/// use firehost::manager::{DriveLimitUpdate, NicLimitUpdate, VmUpdate};
/// use firehost::vocab::{Bucket, BucketChange, LimitChange};
///
/// // 50 MiB/s on the root drive, and no more limit on what eth0 sends.
/// let update = VmUpdate {
///     drives: vec![DriveLimitUpdate {
///         drive_id: "rootfs".into(),
///         limit: LimitChange {
///             bandwidth: BucketChange::Set(Bucket::per_second(50 << 20)),
///             ..LimitChange::default()
///         },
///     }],
///     nics: vec![NicLimitUpdate {
///         iface_id: "eth0".into(),
///         tx: LimitChange {
///             bandwidth: BucketChange::Remove,
///             ops: BucketChange::Remove,
///         },
///         ..NicLimitUpdate::default()
///     }],
///     ..VmUpdate::default()
/// };
/// assert!(!update.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmUpdate {
    /// New limits for drives, by drive id (`rootfs` is the root drive).
    pub drives: Vec<DriveLimitUpdate>,
    /// New limits for NICs, by interface id (`eth0` is the default
    /// network's).
    pub nics: Vec<NicLimitUpdate>,
    /// A new balloon target, in MiB.
    pub balloon_mib: Option<u32>,
    /// A new interval between the balloon's memory reports, in seconds
    /// (statistics cannot be switched on or off once the VM runs).
    pub balloon_stats_interval_s: Option<u16>,
    /// Hotpluggable memory to ask of the guest's virtio-mem driver, in MiB:
    /// a multiple of the region's block size, at most its total.
    pub memory_hotplug_mib: Option<u64>,
}

impl VmUpdate {
    /// Whether this changes nothing.
    pub fn is_empty(&self) -> bool {
        self.drives.iter().all(|d| d.limit.is_noop())
            && self.nics.iter().all(|n| n.rx.is_noop() && n.tx.is_noop())
            && self.balloon_mib.is_none()
            && self.balloon_stats_interval_s.is_none()
            && self.memory_hotplug_mib.is_none()
    }
}

/// New limits for one drive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveLimitUpdate {
    /// The drive's id.
    pub drive_id: String,
    /// What to change.
    pub limit: LimitChange,
}

/// New limits for one NIC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NicLimitUpdate {
    /// The interface's id.
    pub iface_id: String,
    /// What the guest receives.
    pub rx: LimitChange,
    /// What the guest sends.
    pub tx: LimitChange,
}

/// Why an update was refused before anything was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// The VM has no drive with this id.
    #[error("the VM has no drive {drive_id:?}")]
    UnknownDrive {
        /// The id given.
        drive_id: String,
    },
    /// The VM has no NIC with this id.
    #[error("the VM has no network interface {iface_id:?}")]
    UnknownNic {
        /// The id given.
        iface_id: String,
    },
    /// One device is named twice.
    #[error("{device} is changed twice in one update")]
    Twice {
        /// The device.
        device: String,
    },
    /// A new bucket would not be enforced.
    #[error("the new limits of {device} are invalid")]
    Limit {
        /// The device.
        device: String,
        /// What is wrong.
        #[source]
        source: RateLimitError,
    },
    /// A balloon change for a VM without a balloon.
    #[error("the VM has no balloon")]
    NoBalloon,
    /// A balloon target above the guest's memory.
    #[error("a balloon of {amount_mib} MiB is larger than the guest's {mem_mib} MiB")]
    BalloonTooLarge {
        /// The target asked for.
        amount_mib: u32,
        /// The guest's memory.
        mem_mib: u32,
    },
    /// Balloon statistics asked of a VM whose balloon does not keep them
    /// (or that has no balloon).
    #[error("the VM has no balloon with statistics on")]
    NoBalloonStats,
    /// Hotplug memory asked of a VM without a hotpluggable region.
    #[error("the VM has no hotpluggable memory")]
    NoMemoryHotplug,
    /// A hotplug size Firecracker would refuse.
    #[error(
        "{requested_mib} MiB is not a multiple of the {block_mib} MiB block within the {total_mib} MiB region"
    )]
    HotplugSize {
        /// The size asked for.
        requested_mib: u64,
        /// The region's block size.
        block_mib: u64,
        /// The region's size.
        total_mib: u64,
    },
    /// A reclaim without a target, from a guest whose balloon driver does
    /// not report its free memory.
    #[error("the guest reports no free memory: give the reclaim a target")]
    NoFreeMemoryReport,
    /// A reclaim of a guest that is not running (it could not fill the
    /// balloon).
    #[error("the guest must be running to give memory back")]
    NotRunning,
    /// Balloon statistics switched on or off after boot.
    #[error("balloon statistics cannot be switched on or off once the VM runs")]
    StatsToggled,
}

/// One request of an update.
#[derive(Debug, Clone)]
pub(crate) enum Request {
    Drive(PartialDrive),
    Nic(PartialNetworkInterface),
    Balloon(BalloonUpdate),
    BalloonStats(BalloonStatsUpdate),
    Hotplug(MemoryHotplugSizeUpdate),
}

impl Request {
    async fn send(&self, api: &ApiClient) -> Result<(), ApiError> {
        match self {
            Request::Drive(d) => api.patch_guest_drive_by_id(d).await,
            Request::Nic(n) => api.patch_guest_network_interface_by_id(n).await,
            Request::Balloon(b) => api.patch_balloon(b).await,
            Request::BalloonStats(s) => api.patch_balloon_stats_interval(s).await,
            Request::Hotplug(h) => api.patch_memory_hotplug(h).await,
        }
    }
}

/// A request, what it does (for errors), and the request that undoes it.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub what: &'static str,
    pub apply: Request,
    pub revert: Request,
}

/// A checked update: the spec once it is applied, and the requests.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub spec: ResolvedSpec,
    pub steps: Vec<Step>,
}

/// Checks `update` against `spec` and works out the requests.
pub(crate) fn plan(spec: &ResolvedSpec, update: &VmUpdate) -> Result<Plan, UpdateError> {
    let mut new = spec.clone();
    let mut steps = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut once = |device: String| {
        if seen.contains(&device) {
            return Err(UpdateError::Twice { device });
        }
        seen.push(device);
        Ok(())
    };
    for change in update.drives.iter().filter(|d| !d.limit.is_noop()) {
        let id = &change.drive_id;
        let device = format!("drive {id:?}");
        once(device.clone())?;
        check(&device, &change.limit)?;
        let limit = drive_limit(&mut new, id).ok_or_else(|| UpdateError::UnknownDrive {
            drive_id: id.clone(),
        })?;
        let revert = undo(limit, &change.limit);
        *limit = limit.changed(&change.limit);
        let patch = |c: &LimitChange| {
            Request::Drive(PartialDrive {
                drive_id: id.clone(),
                path_on_host: None,
                rate_limiter: super::devices::limiter_change(c),
            })
        };
        steps.push(Step {
            what: "change a drive's limits",
            apply: patch(&change.limit),
            revert: patch(&revert),
        });
    }
    for change in update
        .nics
        .iter()
        .filter(|n| !(n.rx.is_noop() && n.tx.is_noop()))
    {
        let id = &change.iface_id;
        let device = format!("nic {id:?}");
        once(device.clone())?;
        check(&format!("{device} rx"), &change.rx)?;
        check(&format!("{device} tx"), &change.tx)?;
        let (rx, tx) = nic_limits(&mut new, id).ok_or_else(|| UpdateError::UnknownNic {
            iface_id: id.clone(),
        })?;
        let (undo_rx, undo_tx) = (undo(rx, &change.rx), undo(tx, &change.tx));
        *rx = rx.changed(&change.rx);
        *tx = tx.changed(&change.tx);
        let patch = |rx: &LimitChange, tx: &LimitChange| {
            Request::Nic(PartialNetworkInterface {
                iface_id: id.clone(),
                rx_rate_limiter: super::devices::limiter_change(rx),
                tx_rate_limiter: super::devices::limiter_change(tx),
            })
        };
        steps.push(Step {
            what: "change a network interface's limits",
            apply: patch(&change.rx, &change.tx),
            revert: patch(&undo_rx, &undo_tx),
        });
    }
    if update.balloon_mib.is_some() || update.balloon_stats_interval_s.is_some() {
        let mem_mib = new.mem_mib;
        let balloon = new.balloon.as_mut().ok_or(UpdateError::NoBalloon)?;
        if let Some(amount_mib) = update.balloon_mib {
            if amount_mib > mem_mib {
                return Err(UpdateError::BalloonTooLarge {
                    amount_mib,
                    mem_mib,
                });
            }
            steps.push(Step {
                what: "change the balloon's target",
                apply: Request::Balloon(BalloonUpdate { amount_mib }),
                revert: Request::Balloon(BalloonUpdate {
                    amount_mib: balloon.amount_mib,
                }),
            });
            balloon.amount_mib = amount_mib;
        }
        if let Some(interval) = update.balloon_stats_interval_s {
            if (interval == 0) != (balloon.stats_interval_s == 0) {
                return Err(UpdateError::StatsToggled);
            }
            steps.push(Step {
                what: "change the balloon's statistics interval",
                apply: Request::BalloonStats(BalloonStatsUpdate {
                    stats_polling_interval_s: interval,
                }),
                revert: Request::BalloonStats(BalloonStatsUpdate {
                    stats_polling_interval_s: balloon.stats_interval_s,
                }),
            });
            balloon.stats_interval_s = interval;
        }
    }
    if let Some(requested_mib) = update.memory_hotplug_mib {
        let region = new
            .memory_hotplug
            .as_mut()
            .ok_or(UpdateError::NoMemoryHotplug)?;
        if requested_mib > region.total_mib || !requested_mib.is_multiple_of(region.block_mib) {
            return Err(UpdateError::HotplugSize {
                requested_mib,
                block_mib: region.block_mib,
                total_mib: region.total_mib,
            });
        }
        let request = |mib| {
            Request::Hotplug(MemoryHotplugSizeUpdate {
                requested_size_mib: Some(mib),
            })
        };
        steps.push(Step {
            what: "change the hotplugged memory",
            apply: request(requested_mib),
            revert: request(region.requested_mib),
        });
        region.requested_mib = requested_mib;
    }
    Ok(Plan { spec: new, steps })
}

/// Sends the steps in order. When one fails, those already sent are taken
/// back (newest first) and its error is returned.
pub(crate) async fn apply(api: &ApiClient, steps: &[Step]) -> Result<(), (&'static str, ApiError)> {
    for (done, step) in steps.iter().enumerate() {
        if let Err(e) = step.apply.send(api).await {
            revert(api, &steps[..done]).await;
            return Err((step.what, e));
        }
    }
    Ok(())
}

/// Takes back `steps`, newest first. Best effort: a VMM that refuses to
/// go back refused nothing else, and the error that matters is the one
/// that started the unwinding.
pub(crate) async fn revert(api: &ApiClient, steps: &[Step]) {
    for step in steps.iter().rev() {
        if let Err(e) = step.revert.send(api).await {
            tracing::warn!(what = step.what, error = %e, "could not take back a device change");
        }
    }
}

/// What a drive swap's intent says: the drive and its new file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SwapIntent {
    pub drive: String,
    pub path: std::path::PathBuf,
}

/// After a crash during an update or a drive swap: makes the VMM's devices
/// what the record says, whichever side of the record write the crash
/// fell. A jailed swap's staged files are settled first: the new file stays
/// at the drive's place if the record names it, else the old one goes back.
/// Best effort: a device the VMM refuses is logged, and the record stands.
pub(super) async fn settle(vm: &super::Vm, swap: Option<SwapIntent>) {
    let spec = &vm.record.spec;
    if let (Some(swap), Some(jail)) = (&swap, &vm.record.jail) {
        let recorded = super::swap::drive_file(spec, &swap.drive);
        let place = jail
            .root()
            .host_path(&super::jailed::drive_place(&swap.drive));
        let committed = recorded.as_deref() == Some(swap.path.as_path());
        let result =
            tokio::task::spawn_blocking(move || super::swap::settle_staged(&place, committed))
                .await
                .expect("settling does not panic");
        if let Err(e) = result {
            tracing::error!(vm = %vm.record.id, error = %e, "cannot settle a drive swap's files");
        }
    }
    let Some(api) = &vm.api else {
        return;
    };
    let vmm_spec = match vm.record.jail {
        Some(_) => super::jailed::vmm_spec(spec),
        None => spec.clone(),
    };
    let mut requests = Vec::new();
    for drive in super::devices::drives(&vmm_spec) {
        let limit = drive_limit_of(spec, &drive.drive_id);
        requests.push(Request::Drive(PartialDrive {
            drive_id: drive.drive_id,
            path_on_host: drive.path_on_host,
            rate_limiter: super::devices::limiter_change(&whole(&limit)),
        }));
    }
    let mut nics: Vec<(String, RateLimit, RateLimit)> = spec
        .extra_nics
        .iter()
        .map(|n| (n.iface_id.clone(), n.rx_limit, n.tx_limit))
        .collect();
    if let Some(net) = &spec.net {
        nics.push((DEFAULT_IFACE_ID.to_owned(), net.rx_limit, net.tx_limit));
    }
    for (iface_id, rx, tx) in nics {
        requests.push(Request::Nic(PartialNetworkInterface {
            iface_id,
            rx_rate_limiter: super::devices::limiter_change(&whole(&rx)),
            tx_rate_limiter: super::devices::limiter_change(&whole(&tx)),
        }));
    }
    if let Some(balloon) = &spec.balloon {
        requests.push(Request::Balloon(BalloonUpdate {
            amount_mib: balloon.amount_mib,
        }));
        if balloon.stats_interval_s > 0 {
            requests.push(Request::BalloonStats(BalloonStatsUpdate {
                stats_polling_interval_s: balloon.stats_interval_s,
            }));
        }
    }
    if let Some(hotplug) = &spec.memory_hotplug {
        requests.push(Request::Hotplug(MemoryHotplugSizeUpdate {
            requested_size_mib: Some(hotplug.requested_mib),
        }));
    }
    for request in requests {
        if let Err(e) = request.send(api).await {
            // A balloon or virtio-mem device the guest never set up refuses
            // every change: nothing was changed there either.
            tracing::debug!(vm = %vm.record.id, error = %e, "a device kept what it had");
        }
    }
}

/// The change that makes a device's limits exactly `limit`.
fn whole(limit: &RateLimit) -> LimitChange {
    let bucket = |b: Option<crate::vocab::Bucket>| match b {
        Some(b) => BucketChange::Set(b),
        None => BucketChange::Remove,
    };
    LimitChange {
        bandwidth: bucket(limit.bandwidth),
        ops: bucket(limit.ops),
    }
}

fn drive_limit_of(spec: &ResolvedSpec, id: &str) -> RateLimit {
    if id == ROOTFS_DRIVE_ID {
        return spec.rootfs_io.limit;
    }
    spec.extra_drives
        .iter()
        .find(|d| d.id == id)
        .map(|d| d.io.limit)
        .unwrap_or_default()
}

fn check(device: &str, change: &LimitChange) -> Result<(), UpdateError> {
    change.validate().map_err(|source| UpdateError::Limit {
        device: device.to_owned(),
        source,
    })
}

/// The change that brings `limit` back after `change`: each bucket it
/// touches is set to what it was, or removed if there was none.
fn undo(limit: &RateLimit, change: &LimitChange) -> LimitChange {
    let back = |old: Option<crate::vocab::Bucket>, c: &BucketChange| match (c, old) {
        (BucketChange::Keep, _) => BucketChange::Keep,
        (_, Some(b)) => BucketChange::Set(b),
        (_, None) => BucketChange::Remove,
    };
    LimitChange {
        bandwidth: back(limit.bandwidth, &change.bandwidth),
        ops: back(limit.ops, &change.ops),
    }
}

fn drive_limit<'a>(spec: &'a mut ResolvedSpec, id: &str) -> Option<&'a mut RateLimit> {
    if id == ROOTFS_DRIVE_ID && spec.rootfs.is_some() {
        return Some(&mut spec.rootfs_io.limit);
    }
    spec.extra_drives
        .iter_mut()
        .find(|d| d.id == id)
        .map(|d| &mut d.io.limit)
}

fn nic_limits<'a>(
    spec: &'a mut ResolvedSpec,
    id: &str,
) -> Option<(&'a mut RateLimit, &'a mut RateLimit)> {
    if id == DEFAULT_IFACE_ID
        && let Some(net) = &mut spec.net
    {
        return Some((&mut net.rx_limit, &mut net.tx_limit));
    }
    spec.extra_nics
        .iter_mut()
        .find(|n| n.iface_id == id)
        .map(|n| (&mut n.rx_limit, &mut n.tx_limit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{BalloonSpec, DriveSpec};
    use crate::vocab::Bucket;

    fn spec() -> ResolvedSpec {
        let mut spec = ResolvedSpec::for_tests();
        spec.extra_drives = vec![DriveSpec::new("data", "/d", false)];
        spec.net = Some(crate::vocab::NetSpec::default());
        spec.balloon = Some(BalloonSpec {
            amount_mib: 10,
            stats_interval_s: 1,
            ..BalloonSpec::default()
        });
        spec
    }

    fn set(n: u64) -> LimitChange {
        LimitChange {
            bandwidth: BucketChange::Set(Bucket::per_second(n)),
            ..LimitChange::default()
        }
    }

    #[test]
    fn a_plan_changes_the_spec_and_knows_how_to_go_back() {
        let mut before = spec();
        before.rootfs_io.limit.ops = Some(Bucket::per_second(7));
        let update = VmUpdate {
            drives: vec![DriveLimitUpdate {
                drive_id: "rootfs".into(),
                limit: LimitChange {
                    bandwidth: BucketChange::Set(Bucket::per_second(5)),
                    ops: BucketChange::Remove,
                },
            }],
            nics: vec![NicLimitUpdate {
                iface_id: "eth0".into(),
                rx: set(9),
                ..NicLimitUpdate::default()
            }],
            balloon_mib: Some(20),
            balloon_stats_interval_s: Some(4),
            memory_hotplug_mib: None,
        };
        let plan = plan(&before, &update).unwrap();
        assert_eq!(
            plan.spec.rootfs_io.limit,
            RateLimit {
                bandwidth: Some(Bucket::per_second(5)),
                ops: None
            }
        );
        assert_eq!(
            plan.spec.net.as_ref().unwrap().rx_limit.bandwidth,
            Some(Bucket::per_second(9))
        );
        assert_eq!(plan.spec.balloon.unwrap().amount_mib, 20);
        assert_eq!(plan.spec.balloon.unwrap().stats_interval_s, 4);
        assert_eq!(plan.steps.len(), 4);
        let Request::Drive(revert) = &plan.steps[0].revert else {
            panic!("a drive step");
        };
        let limiter = revert.rate_limiter.unwrap();
        // The bandwidth bucket did not exist: removed. Ops is set back.
        assert_eq!(limiter.bandwidth.unwrap().size, 0);
        assert_eq!(limiter.ops.unwrap().size, 7);
        let Request::Balloon(back) = &plan.steps[2].revert else {
            panic!("a balloon step");
        };
        assert_eq!(back.amount_mib, 10);
    }

    #[test]
    fn bad_updates_are_refused_before_any_request() {
        let drive = |id: &str, limit| DriveLimitUpdate {
            drive_id: id.into(),
            limit,
        };
        let cases: Vec<(VmUpdate, UpdateError)> = vec![
            (
                VmUpdate {
                    drives: vec![drive("nope", set(1))],
                    ..VmUpdate::default()
                },
                UpdateError::UnknownDrive {
                    drive_id: "nope".into(),
                },
            ),
            (
                VmUpdate {
                    drives: vec![drive("data", set(1)), drive("data", set(2))],
                    ..VmUpdate::default()
                },
                UpdateError::Twice {
                    device: "drive \"data\"".into(),
                },
            ),
            (
                VmUpdate {
                    drives: vec![drive("data", set(0))],
                    ..VmUpdate::default()
                },
                UpdateError::Limit {
                    device: "drive \"data\"".into(),
                    source: RateLimitError::ZeroSize,
                },
            ),
            (
                VmUpdate {
                    nics: vec![NicLimitUpdate {
                        iface_id: "eth1".into(),
                        tx: set(1),
                        ..NicLimitUpdate::default()
                    }],
                    ..VmUpdate::default()
                },
                UpdateError::UnknownNic {
                    iface_id: "eth1".into(),
                },
            ),
            (
                VmUpdate {
                    balloon_mib: Some(129),
                    ..VmUpdate::default()
                },
                UpdateError::BalloonTooLarge {
                    amount_mib: 129,
                    mem_mib: 128,
                },
            ),
            (
                VmUpdate {
                    balloon_stats_interval_s: Some(0),
                    ..VmUpdate::default()
                },
                UpdateError::StatsToggled,
            ),
        ];
        for (update, expected) in cases {
            assert_eq!(plan(&spec(), &update).unwrap_err(), expected);
        }
        let mut no_balloon = spec();
        no_balloon.balloon = None;
        let update = VmUpdate {
            balloon_mib: Some(1),
            ..VmUpdate::default()
        };
        assert_eq!(
            plan(&no_balloon, &update).unwrap_err(),
            UpdateError::NoBalloon
        );
        let mut no_root = spec();
        no_root.rootfs = None;
        let update = VmUpdate {
            drives: vec![drive("rootfs", set(1))],
            ..VmUpdate::default()
        };
        assert!(matches!(
            plan(&no_root, &update),
            Err(UpdateError::UnknownDrive { .. })
        ));
    }
}
