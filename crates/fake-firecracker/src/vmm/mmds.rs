//! `PUT /mmds/config` and the metadata store (`PUT`/`PATCH`/`GET /mmds`),
//! with Firecracker's size limit and JSON merge-patch semantics.

use firehost_api::MmdsConfig;

use super::{ActionError, Reply, Resources};

pub(super) fn set_mmds_config(
    res: &mut Resources,
    mut cfg: MmdsConfig,
) -> Result<Reply, ActionError> {
    if let Some(ip) = &cfg.ipv4_address
        && !ip.is_link_local()
    {
        return Err(ActionError::MmdsConfig(
            "The MMDS IPv4 address is not link local.".into(),
        ));
    }
    // Firecracker keeps the interfaces as a set.
    let mut seen = std::collections::HashSet::new();
    cfg.network_interfaces.retain(|id| seen.insert(id.clone()));
    if cfg.network_interfaces.is_empty() {
        return Err(ActionError::MmdsConfig(
            "The list of network interface IDs that allow forwarding MMDS requests is empty."
                .into(),
        ));
    }
    if cfg
        .network_interfaces
        .iter()
        .any(|id| !res.network_interfaces.iter().any(|n| &n.iface_id == id))
    {
        return Err(ActionError::MmdsConfig(
            "The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface."
                .into(),
        ));
    }
    res.mmds.get_or_insert(serde_json::Value::Null);
    res.mmds_config = Some(cfg);
    Ok(Reply::Empty)
}

pub(super) fn mmds_reply(value: &serde_json::Value) -> Reply {
    match value {
        serde_json::Value::Null => Reply::Json("{}".into()),
        v => Reply::Json(v.to_string()),
    }
}

pub(super) fn check_mmds_size(value: &serde_json::Value, limit: usize) -> Result<(), ActionError> {
    if value.to_string().len() > limit {
        return Err(ActionError::MmdsLimit(
            "The MMDS patch request doesn't fit.".into(),
        ));
    }
    Ok(())
}

pub(super) fn put_mmds(
    store: &mut serde_json::Value,
    value: serde_json::Value,
    limit: usize,
) -> Result<Reply, ActionError> {
    check_mmds_size(&value, limit)?;
    *store = value;
    Ok(Reply::Empty)
}

pub(super) fn patch_mmds(
    store: &mut serde_json::Value,
    patch: serde_json::Value,
    limit: usize,
) -> Result<Reply, ActionError> {
    let mut merged = store.clone();
    merge_patch(&mut merged, patch);
    check_mmds_size(&merged, limit)?;
    *store = merged;
    Ok(Reply::Empty)
}

/// RFC 7396 JSON merge patch, which Firecracker's MMDS PATCH applies.
pub(super) fn merge_patch(target: &mut serde_json::Value, patch: serde_json::Value) {
    match patch {
        serde_json::Value::Object(map) => {
            if !target.is_object() {
                *target = serde_json::Value::Object(serde_json::Map::new());
            }
            if let serde_json::Value::Object(t) = target {
                for (k, v) in map {
                    if v.is_null() {
                        t.remove(&k);
                    } else {
                        merge_patch(t.entry(k).or_insert(serde_json::Value::Null), v);
                    }
                }
            }
        }
        other => *target = other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmds_patch_merges() {
        let mut store = serde_json::json!({"a": {"b": 1, "c": 2}});
        merge_patch(&mut store, serde_json::json!({"a": {"b": null, "d": 3}}));
        assert_eq!(store, serde_json::json!({"a": {"c": 2, "d": 3}}));
    }
}
