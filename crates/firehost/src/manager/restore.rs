//! Restore: a new VM from a snapshot bundle, as a transaction like create.
//!
//! The bundle is read and checked first (it must be complete, and written
//! by the same Firecracker version as the VMM that loads it: Firecracker
//! loads only its own version's snapshots). Then a fresh VMM is spawned in
//! the new VM's own directory and asked to `PUT /snapshot/load`. Any failure
//! undoes everything, as for create.
//!
//! A restored VM uses the drive files the source VM had (their paths are in
//! the vmstate). Restoring one snapshot into several VMs at once (clones)
//! is safe for read-only drives; a writable root filesystem shared by
//! clones must be avoided (give each clone its own copy).

use std::sync::Arc;

use super::launch::{Launched, Reservation};
use super::{Shared, Vm, VmError, VmInfo};
use crate::VmId;
use crate::api::models::{MemoryBackend, MemoryBackendType, SnapshotLoadParams};
use crate::snapshot::{
    MEMORY_FILE, SnapshotKind, SnapshotName, StoreError, VMSTATE_FILE, VerifyOptions,
};
use crate::state::VmState;
use crate::undo::{UndoStack, UndoStep};

/// How [`Manager::restore`](super::Manager::restore) brings a snapshot back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Resume the guest once loaded (default true); otherwise the VM is
    /// left paused.
    pub resume: bool,
    /// Ask Firecracker to move the guest's realtime clock forward by the
    /// time that passed since the snapshot (`clock_realtime`).
    pub clock_realtime: bool,
    /// Also check the memory file's checksum before loading. The vmstate,
    /// the sizes and the parent chain are always checked; hashing guest
    /// memory costs about a second per few GiB, so it is off by default.
    pub verify_memory: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            resume: true,
            clock_realtime: false,
            verify_memory: false,
        }
    }
}

pub(super) async fn restore(
    shared: Arc<Shared>,
    snapshot: SnapshotName,
    id: VmId,
    options: RestoreOptions,
) -> Result<VmInfo, VmError> {
    let reservation = Reservation::take(&shared, &id)?;
    let mut undo = UndoStack::default();
    let result = build(&shared, &snapshot, &id, &options, &mut undo).await;
    reservation.settle(&shared, &id, result, undo).await
}

async fn build(
    shared: &Shared,
    snapshot: &SnapshotName,
    id: &VmId,
    options: &RestoreOptions,
    undo: &mut UndoStack,
) -> Result<Vm, VmError> {
    // Lease first, verify second: once leased, the bundle can't be deleted
    // between the check and the load.
    let store = shared.store();
    let bundle_err = |source: StoreError| VmError::SnapshotBundle {
        name: snapshot.to_string(),
        source: Box::new(source),
    };
    let verified = {
        let (store, name, vm) = (store.clone(), snapshot.clone(), id.clone());
        let check = VerifyOptions {
            skip_memory_checksum: !options.verify_memory,
            firecracker_version: None,
        };
        tokio::task::spawn_blocking(move || {
            store.lease(&name, &vm).map_err(|e| (false, e))?;
            store.verify(&name, &check).map_err(|e| (true, e))
        })
        .await
        .expect("bundle checks do not panic")
    };
    let chain = match verified {
        Ok(chain) => {
            undo.push(UndoStep::ReleaseLease {
                store,
                name: snapshot.clone(),
                vm: id.clone(),
            });
            chain
        }
        Err((leased, e)) => {
            if leased {
                undo.push(UndoStep::ReleaseLease {
                    store,
                    name: snapshot.clone(),
                    vm: id.clone(),
                });
            }
            return Err(bundle_err(e));
        }
    };
    let manifest = chain
        .first()
        .map(|top| top.manifest.clone())
        .expect("a verified chain holds the bundle itself");
    if manifest.kind != SnapshotKind::Full {
        return Err(VmError::SnapshotIsDiff {
            name: snapshot.to_string(),
        });
    }
    let bundle = shared.snapshots_dir.join(snapshot.as_str());
    let mut launched = Launched::spawn(shared, id, manifest.spec.clone(), undo).await?;
    launched.vm.record.restored_from = Some(snapshot.clone());
    launched.vm.record.last_snapshot = Some(snapshot.clone());
    let outcome = async {
        let api = launched.connect(shared).await?;
        let api_err = |op| {
            let id = id.clone();
            move |source| VmError::Api { id, op, source }
        };
        let version = api
            .get_firecracker_version()
            .await
            .map_err(api_err("read the Firecracker version"))?;
        if version.firecracker_version != manifest.firecracker_version {
            return Err(VmError::SnapshotVersion {
                name: snapshot.to_string(),
                snapshot_version: manifest.firecracker_version.clone(),
                vmm_version: version.firecracker_version,
            });
        }
        let memory = MemoryBackend::new(MemoryBackendType::File, bundle.join(MEMORY_FILE));
        let mut load = SnapshotLoadParams::new(bundle.join(VMSTATE_FILE), memory);
        load.resume_vm = Some(options.resume);
        load.clock_realtime = options.clock_realtime.then_some(true);
        api.load_snapshot(&load)
            .await
            .map_err(api_err("load the snapshot"))?;
        launched.vm.record.state = if options.resume {
            VmState::Running
        } else {
            VmState::Paused
        };
        Ok(api)
    }
    .await;
    launched.commit(outcome).await
}
