//! Taking free memory back from a guest before a snapshot: the balloon is
//! inflated, the snapshot taken, and the balloon let out again.
//!
//! Firecracker discards the pages a balloon takes (they read as zero
//! afterwards), and sealing a full snapshot turns zero pages into holes
//! (see [`crate::snapshot::Bundle::seal`]): memory the guest gave back is
//! neither written to the bundle's disk space nor read by its restores.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::VmError;
use super::update::UpdateError;
use crate::VmId;
use crate::api::ApiClient;
use crate::api::models::BalloonUpdate;
use crate::snapshot::Reclaimed;
use crate::spec::ResolvedSpec;

/// How often the balloon's progress is read while it inflates: its
/// statistics are the only way to see it.
const POLL: Duration = Duration::from_millis(50);
/// Memory a reclaim without a target leaves the guest beyond what it
/// reported in use, so that it is not pushed into its OOM killer.
pub const RECLAIM_HEADROOM_MIB: u32 = 32;

/// Inflating the balloon before a snapshot (see
/// [`SnapshotOptions::reclaim`](super::SnapshotOptions::reclaim)).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use firehost::manager::BalloonReclaim;
///
/// // Take back what the guest reports free, waiting at most 2 s.
/// let reclaim = BalloonReclaim {
///     amount_mib: None,
///     deadline: Duration::from_secs(2),
/// };
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonReclaim {
    /// The balloon's target, in MiB. `None`: what the guest last reported
    /// free, less [`RECLAIM_HEADROOM_MIB`], on top of what the balloon
    /// holds.
    pub amount_mib: Option<u32>,
    /// How long to wait for the guest to give the memory back; the snapshot
    /// is taken then with whatever the balloon holds.
    pub deadline: Duration,
}

/// The balloon's state before the reclaim, and what it reached.
#[derive(Debug, Clone, Copy)]
pub(super) struct Inflated {
    before_mib: u32,
    pub(super) reclaimed: Reclaimed,
}

/// Inflates the balloon of a running VM and waits, until the deadline, for
/// the guest to fill it.
pub(super) async fn inflate(
    api: &ApiClient,
    id: &VmId,
    spec: &ResolvedSpec,
    reclaim: &BalloonReclaim,
) -> Result<Inflated, VmError> {
    let refused = |source| VmError::InvalidUpdate {
        id: id.clone(),
        source,
    };
    let balloon = spec.balloon.ok_or(refused(UpdateError::NoBalloon))?;
    // Without statistics, the balloon's progress cannot be seen.
    if balloon.stats_interval_s == 0 {
        return Err(refused(UpdateError::NoBalloonStats));
    }
    let api_err = |op| {
        let id = id.clone();
        move |source| VmError::Api { id, op, source }
    };
    let stats = api
        .describe_balloon_stats()
        .await
        .map_err(api_err("read the balloon's statistics"))?;
    let target_mib = match reclaim.amount_mib {
        Some(amount) => amount,
        None => {
            let free = stats
                .free_memory
                .ok_or(refused(UpdateError::NoFreeMemoryReport))?;
            let free_mib = u32::try_from(free >> 20).unwrap_or(u32::MAX);
            stats
                .actual_mib
                .saturating_add(free_mib.saturating_sub(RECLAIM_HEADROOM_MIB))
        }
    }
    .min(spec.mem_mib);
    if target_mib > spec.mem_mib {
        return Err(refused(UpdateError::BalloonTooLarge {
            amount_mib: target_mib,
            mem_mib: spec.mem_mib,
        }));
    }
    api.patch_balloon(&BalloonUpdate {
        amount_mib: target_mib,
    })
    .await
    .map_err(api_err("inflate the balloon"))?;
    let inflated = |balloon_mib| Inflated {
        before_mib: balloon.amount_mib,
        reclaimed: Reclaimed {
            target_mib,
            balloon_mib,
        },
    };
    let start = Instant::now();
    let mut reached = stats.actual_mib;
    while reached < target_mib && start.elapsed() < reclaim.deadline {
        tokio::time::sleep(POLL.min(reclaim.deadline.saturating_sub(start.elapsed()))).await;
        match api.describe_balloon_stats().await {
            Ok(stats) => reached = stats.actual_mib,
            Err(e) => {
                // The snapshot goes ahead with what the balloon holds.
                tracing::warn!(vm = %id, error = %e, "could not read the balloon's progress");
                break;
            }
        }
    }
    Ok(inflated(reached))
}

/// Lets the balloon back to its target before the reclaim. Best effort:
/// the snapshot is taken either way, and a VMM that refuses now refused
/// nothing else.
pub(super) async fn deflate(api: &ApiClient, id: &VmId, inflated: &Inflated) {
    let update = BalloonUpdate {
        amount_mib: inflated.before_mib,
    };
    if let Err(e) = api.patch_balloon(&update).await {
        tracing::warn!(vm = %id, error = %e, "could not let the balloon out after the snapshot");
    }
}
