//! Renaming a VM: what callers call it changes; its key, and so everything
//! on the host, stays (see [`super::names`]).
//!
//! A rename is one record write, bracketed so that a crash anywhere leaves
//! the VM under its old name or its new one, never both or neither:
//!
//! 1. an intent, `intents/<key>` = `rename`;
//! 2. the link `names/<new>` → `vms/<key>` (unless the new name is the
//!    key), so a manager that finds VMs by name finds it under either;
//! 3. the metadata's identity, for a live VM with a metadata service: the
//!    guest reads its new name there;
//! 4. the record, now naming the VM `new`: the commit;
//! 5. the link `names/<old>` goes (unless the old name was the key);
//! 6. the registry moves the VM to its new name; the intent goes.
//!
//! The next manager settles an intent it finds by loading the VM under the
//! name its record gives, removing the links that disagree and writing the
//! metadata identity again (see [`super::intent`]). Failures before the
//! commit undo steps 2 and 3.

use std::sync::Arc;

use super::intent::Intent;
use super::{Shared, Vm, VmError, VmInfo, fault, names};
use crate::VmId;
use crate::record::Durability;

/// A rename that claims a warm pool's member: the member leaves its pool
/// in the same record write that names it, and its metadata may get the
/// caller's data.
#[derive(Debug, Clone)]
pub(super) struct Claim {
    /// The pool the VM must still be a member of.
    pub pool: crate::id::PoolName,
    /// The metadata for the claimed VM (`None`: it keeps the template's).
    pub mmds: Option<serde_json::Value>,
}

/// Renames `old` to `new`. See the [module docs](self).
pub(super) async fn rename(shared: Arc<Shared>, old: VmId, new: VmId) -> Result<VmInfo, VmError> {
    rename_as(shared, old, new, None).await
}

/// Renames `old` to `new`, claiming it from its pool with `claim`. A VM
/// that is not (or no longer) a running member of that pool is
/// [`VmError::NotFound`].
pub(super) async fn rename_as(
    shared: Arc<Shared>,
    old: VmId,
    new: VmId,
    claim: Option<Claim>,
) -> Result<VmInfo, VmError> {
    let slot = shared.find(&old).await?;
    // Long enough for a read of the VM (a `get` may ask its VMM for its
    // state, within the same bound); an operation that takes longer is
    // under way, and the rename is refused rather than queued behind it.
    let wait = shared.config.timeouts.probe;
    let mut guard = tokio::time::timeout(wait, slot.vm.clone().lock_owned())
        .await
        .map_err(|_| VmError::MidOperation { id: old.clone() })?;
    let vm = guard
        .as_mut()
        .filter(|vm| vm.record.name == old)
        // Gone, or renamed by another caller while this one waited.
        .ok_or_else(|| VmError::NotFound { id: old.clone() })?;
    if let Some(claim) = &claim
        && (vm.record.pool.as_ref() != Some(&claim.pool)
            || vm.record.state != crate::state::VmState::Running)
    {
        return Err(VmError::NotFound { id: old.clone() });
    }
    if old == new && claim.is_none() {
        return Ok(vm.info());
    }
    shared.check_free(&new).await?;
    {
        let mut registry = shared.lock_registry();
        if registry.contains_key(&new) {
            return Err(VmError::AlreadyExists { id: new });
        }
        // Under both names until it is settled: an operation that names
        // either waits for this one.
        registry.insert(new.clone(), slot.clone());
    }
    // No full load (which removes the name links nobody answers to) runs
    // while the links change.
    let loading = shared.loaded.lock().await;
    let renamed = rename_locked(&shared, vm, &new, claim.as_ref()).await;
    drop(loading);
    {
        let mut registry = shared.lock_registry();
        let gone = if renamed.is_ok() { &old } else { &new };
        if registry.get(gone).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
            registry.remove(gone);
        }
    }
    renamed?;
    slot.publish(Some(vm));
    Ok(vm.info())
}

/// Steps 1 to 6 on `vm`, whose name is free to change to `new`.
async fn rename_locked(
    shared: &Shared,
    vm: &mut Vm,
    new: &VmId,
    claim: Option<&Claim>,
) -> Result<(), VmError> {
    let key = vm.record.id.clone();
    let old = vm.record.name.clone();
    let io = |op: &'static str, path: std::path::PathBuf| {
        let id = old.clone();
        move |source| VmError::Io {
            id,
            op,
            path,
            source,
        }
    };
    super::ops::begin_intent(&shared.intents_dir, &key, Intent::Rename)?;
    fault::point(&key, "rename:intent");
    let new_link = names::link_path(&shared.names_dir, new);
    if *new != key
        && let Err(e) = names::link(&shared.names_dir, new, &key)
    {
        super::intent::end(&shared.intents_dir, &key);
        return Err(io("link the new name", new_link)(e));
    }
    fault::point(&key, "rename:link");
    let undo_link = |shared: &Shared| {
        if *new != key {
            let _ = names::unlink(&shared.names_dir, new);
        }
    };
    let data = claim.and_then(|c| c.mmds.as_ref());
    if let Err(e) = write_identity(vm, new, data).await {
        undo_link(shared);
        super::intent::end(&shared.intents_dir, &key);
        return Err(e);
    }
    fault::point(&key, "rename:metadata");
    vm.record.name = new.clone();
    let pool = vm.record.pool.clone();
    if claim.is_some() {
        vm.record.pool = None;
    }
    if let Err(e) = vm.persist(Durability::Synced).await {
        vm.record.name = old.clone();
        vm.record.pool = pool;
        if let Err(undo) = write_identity(vm, &old, None).await {
            tracing::warn!(vm = %old, error = %undo, "cannot write the metadata identity back after a failed rename");
        }
        undo_link(shared);
        super::intent::end(&shared.intents_dir, &key);
        return Err(e);
    }
    fault::point(&key, "rename:record");
    if old != key
        && let Err(e) = names::unlink(&shared.names_dir, &old)
    {
        // Harmless: the record says who the VM is, and the next full load
        // removes a link that disagrees.
        tracing::warn!(vm = %new, old = %old, error = %e, "cannot remove the old name's link");
    }
    fault::point(&key, "rename:unlink");
    super::intent::end(&shared.intents_dir, &key);
    tracing::info!(vm = %new, old = %old, key = %key, "renamed");
    Ok(())
}

/// Writes the `"firehost"` identity of the metadata of `vm` again, naming
/// it `name`, when the VM is live and has a metadata service; the rest of
/// its metadata stays as it is, or becomes `data` when given.
pub(super) async fn write_identity(
    vm: &Vm,
    name: &VmId,
    data: Option<&serde_json::Value>,
) -> Result<(), VmError> {
    if vm.record.spec.mmds.is_none() || !vm.record.state.is_live() {
        return Ok(());
    }
    let Some(api) = vm.api.clone() else {
        return Ok(());
    };
    let api_err = |op| {
        let id = vm.record.name.clone();
        move |source| VmError::Api { id, op, source }
    };
    let data = match data {
        Some(data) => data.clone(),
        None => api.get_mmds().await.map_err(api_err("read the metadata"))?,
    };
    let identity = crate::mmds::identity(
        name,
        vm.record.net.as_ref(),
        vm.record.restored_from.as_ref(),
    );
    api.put_mmds(&crate::mmds::contents(&data, identity))
        .await
        .map_err(api_err("write the metadata identity"))
}

/// Settles a rename a crash cut short, for the VM in `vm` (see the
/// [module docs](self)): its record is the truth.
pub(super) async fn settle(shared: &Shared, vm: &Vm) {
    let (key, name) = (&vm.record.id, &vm.record.name);
    for (linked, target) in names::all(&shared.names_dir) {
        let other_name = linked != name.as_str();
        if target.as_ref() == Some(key) && other_name {
            let _ = std::fs::remove_file(shared.names_dir.join(&linked));
        }
    }
    if name != key
        && names::key_of(&shared.names_dir, name).as_ref() != Some(key)
        && let Err(e) = names::link(&shared.names_dir, name, key)
    {
        tracing::warn!(vm = %name, error = %e, "cannot link the name of a VM whose rename was cut short");
    }
    if let Err(e) = write_identity(vm, name, None).await {
        tracing::warn!(vm = %name, error = %e, "cannot write the metadata identity of a VM whose rename was cut short");
    }
}
