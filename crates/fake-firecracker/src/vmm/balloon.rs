//! `PUT /balloon` and its statistics.

use firehost_api::Balloon;
use serde::Serialize;

use super::{ActionError, Reply, Resources};

pub(super) fn set_balloon(res: &mut Resources, cfg: Balloon) -> Result<Reply, ActionError> {
    if u64::from(cfg.amount_mib) > res.machine_config.mem_size_mib {
        return Err(ActionError::BalloonConfig(
            "Amount of pages requested is too large.".into(),
        ));
    }
    res.balloon = Some(cfg);
    Ok(Reply::Empty)
}

/// `GET /balloon/statistics` in Firecracker's field order. Without a
/// guest driver nothing was inflated and the guest reported nothing.
pub(super) fn balloon_stats(b: &Balloon, mem_size_mib: u64, driver: bool) -> String {
    #[derive(Serialize)]
    struct Stats {
        target_pages: u64,
        actual_pages: u64,
        target_mib: u32,
        actual_mib: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        total_memory: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        available_memory: Option<u64>,
    }
    let target_pages = u64::from(b.amount_mib) * 256;
    let stats = Stats {
        target_pages,
        actual_pages: if driver { target_pages } else { 0 },
        target_mib: b.amount_mib,
        actual_mib: if driver { b.amount_mib } else { 0 },
        total_memory: driver.then_some(mem_size_mib << 20),
        available_memory: driver
            .then(|| mem_size_mib.saturating_sub(u64::from(b.amount_mib)) << 20),
    };
    serde_json::to_string(&stats).unwrap_or_else(|_| "{}".to_owned())
}
