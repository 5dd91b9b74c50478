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

/// `GET /balloon/statistics` in Firecracker's field order. `driver` is the
/// pages the guest's balloon driver has put in the balloon, `None` without
/// a driver: then nothing was inflated and the guest reported nothing. A
/// guest with a driver reports half the memory outside the balloon free.
pub(super) fn balloon_stats(b: &Balloon, mem_size_mib: u64, driver: Option<usize>) -> String {
    #[derive(Serialize)]
    struct Stats {
        target_pages: u64,
        actual_pages: u64,
        target_mib: u32,
        actual_mib: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        free_memory: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        total_memory: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        available_memory: Option<u64>,
    }
    let actual_pages = driver.map_or(0, |p| p as u64);
    let outside = (mem_size_mib << 20).saturating_sub(actual_pages * 4096);
    let stats = Stats {
        target_pages: u64::from(b.amount_mib) * 256,
        actual_pages,
        target_mib: b.amount_mib,
        actual_mib: actual_pages / 256,
        free_memory: driver.map(|_| outside / 2),
        total_memory: driver.map(|_| mem_size_mib << 20),
        available_memory: driver.map(|_| outside / 2),
    };
    serde_json::to_string(&stats).unwrap_or_else(|_| "{}".to_owned())
}
