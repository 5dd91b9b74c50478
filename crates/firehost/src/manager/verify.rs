//! The first contact with a VMM adopted from an earlier manager.
//!
//! Re-attaching checks the process (pid, start time, pidfd) and nothing
//! else, so opening a state directory costs no API round trip per VM. The
//! first time a VM is used, its VMM is asked for its state (`GET /`, within
//! [`Timeouts::probe`](super::Timeouts::probe)):
//!
//! - it answers: the state is Firecracker's (a pause made behind the
//!   manager's back shows), and an operation the earlier manager left
//!   half-done is finished: a stop is forgotten (the VMM lives), and an
//!   interrupted snapshot is settled — the guest resumed if the snapshot
//!   paused it, the bundle kept if it was sealed (the manifest is written
//!   last) and removed otherwise.
//! - it does not answer in time while its process lives: the VM is *busy*
//!   (Firecracker answers nothing while it writes a snapshot's memory
//!   file, for seconds with a large guest). It keeps its recorded state,
//!   operations fail with [`VmError::Busy`], and the next use asks again.
//!   It is never killed for being slow.
//!
//! A manager that found an interrupted snapshot also settles it on its own
//! ([`finish_in_background`]), asking with a growing back-off until the VMM
//! answers, the VMM exits or the manager is dropped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{Shared, Slot, Vm, VmError};
use crate::api::ApiClient;
use crate::api::models::{InstanceState, Vm as VmPatch, VmState as ApiVmState};
use crate::record::Durability;
use crate::snapshot::MANIFEST_FILE;
use crate::state::{ExitReason, VmState};
use crate::undo::remove_dir_if_present;
use crate::vmm::VmmProcess;

/// What verifying needs of the manager, without holding it (a background
/// task must not keep a dropped manager's state directory locked).
#[derive(Debug, Clone)]
pub(super) struct Verifier {
    pub(super) probe: Duration,
    pub(super) request: Duration,
    pub(super) snapshots_dir: PathBuf,
    pub(super) intents_dir: PathBuf,
    pub(super) read_only: bool,
}

/// Asks an adopted VMM for its state once; see the [module docs](self).
/// Returns at once for VMs whose VMM has answered this manager already.
pub(super) async fn verify(verifier: &Verifier, vm: &mut Vm) -> Result<(), VmError> {
    if let Some((pid, start_time)) = vm.seen.take() {
        // Seen running by a read-only load: hold it now that it is used.
        vm.process = VmmProcess::attach(pid, start_time).ok().flatten();
        if vm.process.is_none() {
            // Gone since: as a load would have found it (nothing recorded).
            vm.api = None;
            vm.record.state = VmState::Failed {
                exit: ExitReason::Unknown,
                console_tail: Vec::new(),
            };
        }
    }
    let Some(process) = vm.process.clone() else {
        return Ok(());
    };
    if vm.verified {
        return Ok(());
    }
    let probe = ApiClient::with_timeout(&vm.record.api_socket, verifier.probe);
    let described = probe.describe_instance().await;
    let info = match described {
        Ok(info) => info,
        Err(e) => {
            if process.exit_reason().is_some() {
                // Gone meanwhile: the crash watcher records it.
                return Ok(());
            }
            tracing::warn!(vm = %vm.record.id, error = %e, "VMM alive but not answering: busy");
            vm.busy = true;
            return Err(VmError::Busy {
                id: vm.record.id.clone(),
                pid: process.pid(),
                waited: verifier.probe,
            });
        }
    };
    vm.busy = false;
    let mut record = vm.record.clone();
    record.state = match info.state {
        InstanceState::NotStarted => VmState::Created,
        InstanceState::Running => VmState::Running,
        InstanceState::Paused => VmState::Paused,
    };
    if verifier.read_only {
        vm.record.state = record.state;
        vm.verified = true;
        return Ok(());
    }
    record.stop_requested = false;
    if let Some(pending) = record.pending_snapshot.clone() {
        if pending.paused_vm && record.state == VmState::Paused {
            // The snapshot request has been answered (the API serves one
            // request at a time), so the guest may run again.
            let api = ApiClient::with_timeout(&vm.record.api_socket, verifier.request);
            api.patch_vm(&VmPatch {
                state: ApiVmState::Resumed,
            })
            .await
            .map_err(|source| VmError::Api {
                id: vm.record.id.clone(),
                op: "resume after an interrupted snapshot",
                source,
            })?;
            record.state = VmState::Running;
        }
        let bundle = verifier.snapshots_dir.join(pending.name.as_str());
        let sealed = bundle.join(MANIFEST_FILE).is_file();
        if sealed {
            tracing::info!(vm = %vm.record.id, snapshot = %pending.name, "keeping the sealed bundle of an interrupted snapshot");
            record.last_snapshot = Some(pending.name.clone());
        } else {
            tracing::info!(vm = %vm.record.id, snapshot = %pending.name, "removing the unsealed bundle of an interrupted snapshot");
            let removed = tokio::task::spawn_blocking(move || remove_dir_if_present(&bundle))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            if let Err(source) = removed {
                return Err(VmError::Io {
                    id: vm.record.id.clone(),
                    op: "remove the unsealed bundle",
                    path: verifier.snapshots_dir.join(pending.name.as_str()),
                    source,
                });
            }
        }
        record.pending_snapshot = None;
    }
    let settled = vm.record.pending_snapshot.is_some();
    if record != vm.record {
        vm.record = record;
        vm.persist(Durability::Synced).await?;
    }
    if settled {
        super::intent::end(&verifier.intents_dir, &vm.record.id);
    }
    vm.verified = true;
    Ok(())
}

/// Settles an interrupted snapshot of the VM in `slot` without waiting for
/// a caller to use the VM: asks the VMM with a growing back-off (50 ms to
/// 2 s) until it answers, its process exits, or the manager is dropped.
pub(super) fn finish_in_background(shared: &Shared, slot: Arc<Slot>) {
    let verifier = shared.verifier();
    let mut alive = shared.alive.subscribe();
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(50);
        loop {
            {
                let mut guard = slot.vm.lock().await;
                let Some(vm) = guard.as_mut() else { return };
                if vm.verified || vm.process.is_none() {
                    return;
                }
                let outcome = verify(&verifier, vm).await;
                slot.publish(Some(vm));
                match outcome {
                    Ok(()) => return,
                    Err(VmError::Busy { .. }) => {}
                    Err(e) => {
                        tracing::error!(vm = %vm.record.id, error = %e, "cannot settle an interrupted snapshot");
                        return;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = alive.changed() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    });
}
