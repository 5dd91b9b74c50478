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
use crate::snapshot::{MEMORY_FILE, SnapshotManifest, SnapshotName, VMSTATE_FILE};
use crate::state::VmState;
use crate::undo::UndoStack;

/// How [`Manager::restore`](super::Manager::restore) brings a snapshot back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Resume the guest once loaded (default true); otherwise the VM is
    /// left paused.
    pub resume: bool,
    /// Ask Firecracker to move the guest's realtime clock forward by the
    /// time that passed since the snapshot (`clock_realtime`).
    pub clock_realtime: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            resume: true,
            clock_realtime: false,
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
    let bundle = shared.snapshots_dir.join(snapshot.as_str());
    let manifest = {
        let bundle = bundle.clone();
        tokio::task::spawn_blocking(move || SnapshotManifest::read(&bundle))
            .await
            .expect("manifest reads do not panic")
            .map_err(|source| VmError::SnapshotUnusable {
                name: snapshot.to_string(),
                source,
            })?
    };
    let mut launched = Launched::spawn(shared, id, manifest.spec.clone(), undo).await?;
    launched.vm.record.restored_from = Some(snapshot.clone());
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
