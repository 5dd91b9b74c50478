//! The virtio balloon device: `/balloon`, `/balloon/statistics` and
//! `/balloon/hinting/*`.
//!
//! [`Balloon`] configures the device before boot (and is what `GET /balloon`
//! returns); [`BalloonUpdate`] and [`BalloonStatsUpdate`] change its target
//! and polling interval afterwards; [`BalloonStats`] is the guest's memory
//! report; [`BalloonStartCmd`] and [`BalloonHintingStatus`] drive free page
//! hinting.

use serde::{Deserialize, Serialize};

/// Balloon device configuration: body of `PUT /balloon`, response of
/// `GET /balloon`.
///
/// # Examples
///
/// ```
/// use firehost_api::Balloon;
///
/// let balloon = Balloon {
///     stats_polling_interval_s: Some(5),
///     ..Balloon::new(0, true)
/// };
/// assert_eq!(
///     serde_json::to_string(&balloon).unwrap(),
///     r#"{"amount_mib":0,"deflate_on_oom":true,"stats_polling_interval_s":5}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Balloon {
    /// Target balloon size in MiB: memory taken away from the guest.
    pub amount_mib: u32,
    /// Whether the balloon deflates when the guest runs short of memory.
    pub deflate_on_oom: bool,
    /// Seconds between statistics refreshes; any non-zero value enables
    /// statistics. Firecracker's default is 0 (disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_polling_interval_s: Option<u16>,
    /// Whether the free page hinting feature is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_page_hinting: Option<bool>,
    /// Whether the free page reporting feature is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_page_reporting: Option<bool>,
}

impl Balloon {
    /// A balloon of `amount_mib` with every optional feature left at
    /// Firecracker's default.
    pub fn new(amount_mib: u32, deflate_on_oom: bool) -> Self {
        Self {
            amount_mib,
            deflate_on_oom,
            stats_polling_interval_s: None,
            free_page_hinting: None,
            free_page_reporting: None,
        }
    }
}

/// New balloon target: body of `PATCH /balloon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    /// Target balloon size in MiB.
    pub amount_mib: u32,
}

/// New statistics polling interval: body of `PATCH /balloon/statistics`.
///
/// Statistics can only be retuned after boot, not switched on or off, so the
/// interval must stay non-zero if it was non-zero at configuration time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    /// Seconds between statistics refreshes.
    pub stats_polling_interval_s: u16,
}

/// Balloon statistics: response of `GET /balloon/statistics`.
///
/// The page and MiB figures are always present; the guest-reported counters
/// appear only when the guest driver supplies them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStats {
    /// Number of pages the device aims to hold.
    pub target_pages: u32,
    /// Number of pages the device holds now.
    pub actual_pages: u32,
    /// Memory, in MiB, the device aims to hold.
    pub target_mib: u32,
    /// Memory, in MiB, the device holds now.
    pub actual_mib: u32,
    /// Bytes swapped in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    /// Bytes swapped out to disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    /// Number of major page faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    /// Number of minor page faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    /// Bytes of memory not used for anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    /// Total bytes of memory available to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    /// Estimated bytes available to new applications without swapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    /// Bytes of page cache that can be reclaimed without I/O.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    /// Number of successful hugetlb page allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    /// Number of failed hugetlb page allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    /// Number of OOM killer invocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    /// Number of allocations that entered the slow reclaim path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    /// Memory scanned asynchronously (by kswapd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    /// Memory scanned directly by allocating tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    /// Memory reclaimed asynchronously (by kswapd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    /// Memory reclaimed directly by allocating tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
}

/// Starts a free page hinting run: optional body of
/// `PATCH /balloon/hinting/start`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStartCmd {
    /// Whether Firecracker acknowledges on its own when the guest reports
    /// that the run is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledge_on_stop: Option<bool>,
}

/// Free page hinting progress: response of `GET /balloon/hinting/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonHintingStatus {
    /// The last command the host issued.
    pub host_cmd: u32,
    /// The last command the guest reported, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_cmd: Option<u32>,
}
