//! Lifecycle operations on one VM, each under that VM's lock.

use std::sync::Arc;
use std::time::Duration;

use rustix::process::Signal;

use super::intent::Intent;
use super::{Shared, Vm, VmError, VmInfo, now_ms, remove_file_if_present};
use crate::VmId;
use crate::api::models::{
    ActionType, InstanceActionInfo, SnapshotCreateParams, SnapshotType, Vm as VmPatch,
    VmState as ApiVmState,
};
use crate::net::firewall::{EgressPolicy, PortMapping};
use crate::net::host::NetError;
use crate::record::{Durability, PendingSnapshot};
use crate::snapshot::{
    Bundle, BundleError, MANIFEST_FILE, MEMORY_FILE, ManifestDraft, NetworkLayout, PendingBundle,
    SnapshotInfo, SnapshotKind, SnapshotName, VMSTATE_FILE, VsockLayout,
};
use crate::state::{ExitReason, Operation, VmState};
use crate::undo::{UndoStack, UndoStep, remove_dir_if_present};

/// How [`Manager::stop`](super::Manager::stop) proceeds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopOptions {
    /// Try Ctrl-Alt-Del first. `None` follows the VM's spec
    /// ([`VmSpec::graceful_shutdown`](crate::VmSpec::graceful_shutdown)).
    /// Only a running guest on `x86_64` can honour it.
    pub graceful: Option<bool>,
    /// How long the guest gets after Ctrl-Alt-Del, and the VMM after
    /// SIGTERM (each). `None` uses the manager's
    /// [`Timeouts::stop_grace`](super::Timeouts::stop_grace).
    pub grace: Option<Duration>,
}

/// What [`Manager::stop`](super::Manager::stop) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StopOutcome {
    /// The VM after the call.
    pub info: VmInfo,
    /// Whether this call ended the VMM. `false` when the VM had already
    /// stopped or failed: the call then only released what it still held
    /// (a failed VM keeps its network until it is stopped or destroyed).
    pub stopped: bool,
}

/// How [`Manager::snapshot`](super::Manager::snapshot) proceeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// Resume a VM that was running before the snapshot (default true).
    /// A VM that was paused stays paused either way.
    pub resume: bool,
    /// Take a diff snapshot: only the memory written since the VM's
    /// previous snapshot (or the snapshot it was restored from), which
    /// becomes the new bundle's parent. Default false (full).
    pub diff: bool,
    /// Keep in the bundle a copy of each writable drive the VM does not
    /// share on purpose, taken while the guest is paused. Clones then start
    /// from the disk that goes with the snapshot's memory, whatever the
    /// source VM writes afterwards and even once its files are gone (a
    /// jailed source's copies go with its jail). It costs what the drives
    /// hold (a reflink where the file system has them), and the guest stays
    /// paused that much longer. Full snapshots only
    /// ([`VmError::DisksNeedFullSnapshot`]). Default false: clones copy the
    /// source's drives as they are when each is restored.
    pub disks: bool,
    /// Before pausing, inflate the VM's balloon so that memory the guest
    /// does not use is given back (and so left out of the bundle), then
    /// let it out again after the snapshot. Needs a running guest with a
    /// balloon driver and a balloon with statistics on
    /// ([`VmError::InvalidUpdate`] otherwise; a VMM that refuses the
    /// inflation fails the snapshot before anything is taken). Restores of
    /// the snapshot let their balloon out to the VM's own target while
    /// still paused. [`SnapshotInfo::reclaimed`] says what the balloon
    /// held at the pause. Default `None`.
    pub reclaim: Option<super::reclaim::BalloonReclaim>,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            resume: true,
            diff: false,
            disks: false,
            reclaim: None,
        }
    }
}

/// Takes the VM's lock, makes sure an adopted VMM has answered (see
/// [`super::verify`]), and checks that `op` is allowed in its state. A busy
/// VMM refuses every operation but a stop, which needs no answer from it,
/// and the destroy of a created VM.
pub(super) async fn locked(
    shared: &Arc<Shared>,
    id: &VmId,
    op: Operation,
) -> Result<tokio::sync::OwnedMutexGuard<Option<Vm>>, VmError> {
    let guard = found(shared, id, op).await?;
    let vm = guard.as_ref().expect("checked by found()");
    vm.record
        .state
        .check(op)
        .map_err(|refused| VmError::Transition {
            id: id.clone(),
            refused,
        })?;
    Ok(guard)
}

/// The VM's lock, once it is known to exist and its VMM has been verified
/// (for `op`); its state is not checked.
pub(super) async fn found(
    shared: &Arc<Shared>,
    id: &VmId,
    op: Operation,
) -> Result<tokio::sync::OwnedMutexGuard<Option<Vm>>, VmError> {
    let slot = shared.find(id).await?;
    let mut guard = slot.vm.clone().lock_owned().await;
    let vm = guard
        .as_mut()
        .ok_or_else(|| VmError::NotFound { id: id.clone() })?;
    let verified = super::verify::verify(&shared.verifier(), vm).await;
    slot.publish(Some(vm));
    match verified {
        Ok(()) => {}
        // Ending a VM needs no answer from its VMM.
        Err(e) if matches!(op, Operation::Stop | Operation::Destroy) => {
            tracing::info!(vm = %id, error = %e, "VMM not verified; going on with {op}");
        }
        Err(e) => return Err(e),
    }
    Ok(guard)
}

pub(super) fn api_of(vm: &Vm, op: Operation) -> Result<Arc<crate::api::ApiClient>, VmError> {
    vm.api.clone().ok_or_else(|| VmError::VmmExited {
        id: vm.record.id.clone(),
        op,
    })
}

/// Sends a request that changes state, then records the new state.
async fn transition(
    shared: &Arc<Shared>,
    id: &VmId,
    op: Operation,
    what: &'static str,
    new_state: VmState,
) -> Result<VmInfo, VmError> {
    let mut guard = locked(shared, id, op).await?;
    let vm = guard.as_mut().expect("checked by locked()");
    let api = api_of(vm, op)?;
    let result = match op {
        Operation::Start => {
            api.create_sync_action(&InstanceActionInfo {
                action_type: ActionType::InstanceStart,
            })
            .await
        }
        Operation::Pause => {
            api.patch_vm(&VmPatch {
                state: ApiVmState::Paused,
            })
            .await
        }
        Operation::Resume => {
            api.patch_vm(&VmPatch {
                state: ApiVmState::Resumed,
            })
            .await
        }
        _ => unreachable!("transition() serves start, pause and resume"),
    };
    result.map_err(|source| VmError::Api {
        id: id.clone(),
        op: what,
        source,
    })?;
    vm.record.state = new_state;
    // Running and paused are read back from Firecracker on re-attach.
    vm.persist(Durability::Cached).await?;
    shared.slot(id)?.publish(Some(vm));
    Ok(vm.info())
}

/// Sends a checked update, then records the new spec; a record that
/// cannot be written takes the update back.
pub(super) async fn update(
    shared: Arc<Shared>,
    id: VmId,
    update: super::update::VmUpdate,
) -> Result<VmInfo, VmError> {
    let mut guard = locked(&shared, &id, Operation::Update).await?;
    let vm = guard.as_mut().expect("checked by locked()");
    let plan =
        super::update::plan(&vm.record.spec, &update).map_err(|source| VmError::InvalidUpdate {
            id: id.clone(),
            source,
        })?;
    if plan.steps.is_empty() {
        return Ok(vm.info());
    }
    let api = api_of(vm, Operation::Update)?;
    // Between the first PATCH and the record, the VMM and the record may
    // disagree: a manager that dies there leaves the next one an intent to
    // settle (see `update::settle`).
    let key = vm.record.id.clone();
    begin_intent(&shared.intents_dir, &key, Intent::Devices)?;
    let applied = super::update::apply(&api, &plan.steps).await;
    if let Err((op, source)) = applied {
        super::intent::end(&shared.intents_dir, &key);
        return Err(VmError::Api {
            id: id.clone(),
            op,
            source,
        });
    }
    super::fault::point(&key, "devices:sent");
    let old = std::mem::replace(&mut vm.record.spec, plan.spec);
    if let Err(e) = vm.persist(Durability::Synced).await {
        vm.record.spec = old;
        super::update::revert(&api, &plan.steps).await;
        super::intent::end(&shared.intents_dir, &key);
        return Err(e);
    }
    super::intent::end(&shared.intents_dir, &key);
    shared.slot(&id)?.publish(Some(vm));
    Ok(vm.info())
}

pub(super) async fn balloon_stats(
    shared: &Arc<Shared>,
    id: &VmId,
) -> Result<crate::api::models::BalloonStats, VmError> {
    let guard = locked(shared, id, Operation::Update).await?;
    let vm = guard.as_ref().expect("checked by locked()");
    let balloon = vm.record.spec.balloon.as_ref();
    if balloon.is_none_or(|b| b.stats_interval_s == 0) {
        return Err(VmError::InvalidUpdate {
            id: id.clone(),
            source: super::update::UpdateError::NoBalloonStats,
        });
    }
    let api = api_of(vm, Operation::Update)?;
    api.describe_balloon_stats()
        .await
        .map_err(|source| VmError::Api {
            id: id.clone(),
            op: "read the balloon's statistics",
            source,
        })
}

pub(super) async fn start(shared: &Arc<Shared>, id: &VmId) -> Result<VmInfo, VmError> {
    transition(
        shared,
        id,
        Operation::Start,
        "start the guest",
        VmState::Running,
    )
    .await
}

pub(super) async fn pause(shared: &Arc<Shared>, id: &VmId) -> Result<VmInfo, VmError> {
    transition(shared, id, Operation::Pause, "pause", VmState::Paused).await
}

pub(super) async fn resume(shared: &Arc<Shared>, id: &VmId) -> Result<VmInfo, VmError> {
    transition(shared, id, Operation::Resume, "resume", VmState::Running).await
}

pub(super) async fn stop(
    shared: Arc<Shared>,
    id: VmId,
    options: StopOptions,
) -> Result<StopOutcome, VmError> {
    let mut guard = found(&shared, &id, Operation::Stop).await?;
    let vm = guard.as_mut().expect("checked by found()");
    if !vm.record.state.is_live() {
        // Cleanup paths stop whatever they find: stopping what is not
        // running succeeds and says so, as `docker stop` does.
        release_network(&shared, vm).await?;
        shared.slot(&id)?.publish(Some(vm));
        return Ok(StopOutcome {
            info: vm.info(),
            stopped: false,
        });
    }
    let grace = options.grace.unwrap_or(shared.config.timeouts.stop_grace);
    // Said before the first signal: a manager that dies during the stop
    // leaves a record from which the next one tells a stop from a crash.
    vm.record.stop_requested = true;
    vm.persist(Durability::Cached).await?;
    let ended = end_vmm(vm, &options, grace, shared.config.timeouts.after_kill).await;
    vm.record.stop_requested = false;
    let exit = match ended {
        Ok(exit) => exit,
        Err(e) => {
            let _ = vm.persist(Durability::Cached).await;
            return Err(e);
        }
    };
    vm.record.state = VmState::Stopped { exit };
    vm.process = None;
    vm.api = None;
    super::restore::retire_page_server(vm, &shared.snapshots_dir).await;
    if let Some(jail) = &vm.record.jail {
        super::jailed::release_on_stop(&shared.uids, &vm.record.id, jail);
    }
    super::writers::release(&shared.writers, &vm.record.id);
    release_network(&shared, vm).await?;
    let _ = remove_file_if_present(&vm.record.api_socket);
    vm.persist(Durability::Synced).await?;
    shared.slot(&id)?.publish(Some(vm));
    Ok(StopOutcome {
        info: vm.info(),
        stopped: true,
    })
}

/// Copies, into `bundle`'s disks directory, each writable drive `record`'s
/// VM does not share on purpose: the files its VMM writes (for a jailed
/// VM, its copies in the jail). The VM is paused: nothing writes. Returns
/// the drive ids kept.
async fn keep_disks(
    id: &VmId,
    record: &crate::record::VmRecord,
    bundle: &std::path::Path,
) -> Result<Vec<String>, VmError> {
    let exclusive: Vec<String> = super::copies::exclusive_drives(&record.spec)
        .into_iter()
        .map(|(drive, _)| drive)
        .collect();
    let files: Vec<(String, std::path::PathBuf)> =
        super::jailed::drive_files(&record.spec, record.jail.as_ref())
            .into_iter()
            .filter(|(drive, _, _)| exclusive.contains(drive))
            .map(|(drive, path, _)| (drive, path))
            .collect();
    let dir = bundle.join(crate::snapshot::DISKS_DIR);
    let kept = super::copies::copy_drives(id, files, &dir, (0, 0)).await?;
    Ok(kept.into_iter().map(|copy| copy.drive).collect())
}

/// Each drive file with its size now (the VM is paused: nothing writes).
fn drive_layouts(
    files: Vec<(String, std::path::PathBuf, bool)>,
) -> Result<Vec<crate::snapshot::DriveLayout>, (std::path::PathBuf, std::io::Error)> {
    files
        .into_iter()
        .map(|(id, path, _read_only)| {
            let size_bytes = match std::fs::metadata(&path) {
                Ok(meta) => meta.len(),
                Err(e) => return Err((path, e)),
            };
            Ok(crate::snapshot::DriveLayout {
                id,
                path,
                size_bytes,
            })
        })
        .collect()
}

/// A VMM that ended cannot run again: its address, TAP and rules go (the
/// record keeps what they were). Detaching what is already detached is a
/// no-op.
async fn release_network(shared: &Arc<Shared>, vm: &Vm) -> Result<(), VmError> {
    if vm.record.net.is_none() {
        return Ok(());
    }
    let id = &vm.record.id;
    shared
        .network()
        .await
        .detach(id)
        .await
        .map_err(|source| VmError::Network {
            id: id.clone(),
            source: Box::new(source),
        })
}

/// Graceful, then certain: Ctrl-Alt-Del (if wanted and possible), SIGTERM,
/// SIGKILL, waiting `grace` after each of the first two.
async fn end_vmm(
    vm: &Vm,
    options: &StopOptions,
    grace: Duration,
    after_kill: Duration,
) -> Result<ExitReason, VmError> {
    let id = &vm.record.id;
    let Some(process) = vm.process.clone() else {
        return Ok(ExitReason::Unknown);
    };
    let process_err = |source| VmError::Process {
        id: id.clone(),
        source,
    };
    // A busy VMM would not take Ctrl-Alt-Del before the grace ran out.
    let graceful = options.graceful.unwrap_or(vm.record.spec.graceful_shutdown)
        && cfg!(target_arch = "x86_64")
        && vm.record.state == VmState::Running
        && !vm.busy;
    if graceful && let Some(api) = &vm.api {
        {
            let ctrl_alt_del = InstanceActionInfo {
                action_type: ActionType::SendCtrlAltDel,
            };
            match api.create_sync_action(&ctrl_alt_del).await {
                Ok(()) => {
                    if let Some(exit) = process.wait_timeout(grace).await {
                        return Ok(exit);
                    }
                }
                Err(e) => tracing::info!(vm = %id, error = %e, "Ctrl-Alt-Del refused; signalling"),
            }
        }
    }
    process.signal(Signal::TERM).map_err(process_err)?;
    if let Some(exit) = process.wait_timeout(grace).await {
        return Ok(exit);
    }
    tracing::warn!(vm = %id, pid = process.pid(), "VMM ignored SIGTERM; sending SIGKILL");
    process.signal(Signal::KILL).map_err(process_err)?;
    process
        .wait_timeout(after_kill)
        .await
        .ok_or_else(|| VmError::StopTimeout {
            id: id.clone(),
            pid: process.pid(),
            waited: after_kill,
        })
}

pub(super) async fn snapshot(
    shared: Arc<Shared>,
    id: VmId,
    name: SnapshotName,
    options: SnapshotOptions,
) -> Result<SnapshotInfo, VmError> {
    let mut guard = locked(&shared, &id, Operation::Snapshot).await?;
    let vm = guard.as_mut().expect("checked by locked()");
    let api = api_of(vm, Operation::Snapshot)?;
    let inflated = match &options.reclaim {
        Some(_) if vm.record.state != VmState::Running => {
            return Err(VmError::InvalidUpdate {
                id: id.clone(),
                source: super::update::UpdateError::NotRunning,
            });
        }
        Some(reclaim) => Some(super::reclaim::inflate(&api, &id, &vm.record.spec, reclaim).await?),
        None => None,
    };
    let taken = take_snapshot(&shared, vm, &id, name, &options, &api).await;
    if let Some(inflated) = &inflated {
        super::reclaim::deflate(&api, &id, inflated).await;
    }
    taken.map(|info| SnapshotInfo {
        reclaimed: inflated.map(|i| i.reclaimed),
        ..info
    })
}

/// The snapshot itself, once any reclaim is done.
async fn take_snapshot(
    shared: &Arc<Shared>,
    vm: &mut Vm,
    id: &VmId,
    name: SnapshotName,
    options: &SnapshotOptions,
    api: &Arc<crate::api::ApiClient>,
) -> Result<SnapshotInfo, VmError> {
    // Intents go by the VM's key (see `names`).
    let key = vm.record.id.clone();
    let api_err = |op| {
        let id = id.clone();
        move |source| VmError::Api { id, op, source }
    };

    if options.diff && options.disks {
        return Err(VmError::DisksNeedFullSnapshot { id: id.clone() });
    }
    let parent = if options.diff {
        let parent = vm.record.last_snapshot.clone();
        let present = parent.as_ref().is_some_and(|p| {
            shared
                .snapshots_dir
                .join(p.as_str())
                .join(MANIFEST_FILE)
                .is_file()
        });
        if !present {
            return Err(VmError::NoParentSnapshot { id: id.clone() });
        }
        parent
    } else {
        None
    };
    let bundle = shared.snapshots_dir.join(name.as_str());
    if let Err(source) = crate::fsutil::create_private_dir(&bundle) {
        return Err(if source.kind() == std::io::ErrorKind::AlreadyExists {
            VmError::SnapshotExists {
                name: name.to_string(),
            }
        } else {
            VmError::Io {
                id: id.clone(),
                op: "create snapshot directory",
                path: bundle,
                source,
            }
        });
    }
    let mut undo = UndoStack::default();
    undo.push(UndoStep::RemoveDir(bundle.clone()));
    let bundle_err = |source: BundleError| VmError::SnapshotBundle {
        name: name.to_string(),
        source: Box::new(source.into()),
    };
    // Keeps a concurrent gc from taking the bundle for an abandoned one
    // while Firecracker writes it.
    let pending = {
        let dir = bundle.clone();
        tokio::task::spawn_blocking(move || PendingBundle::lock(&dir))
            .await
            .expect("locking does not panic")
    };
    let pending = match pending {
        Ok(p) => p,
        Err(e) => {
            undo.unwind().await;
            return Err(bundle_err(e));
        }
    };

    let was_running = vm.record.state == VmState::Running;
    // Said before the pause: a manager that dies from here on leaves a
    // record from which the next one resumes the guest and settles the
    // bundle (see `super::verify`).
    vm.record.pending_snapshot = Some(PendingSnapshot {
        name: name.clone(),
        paused_vm: was_running,
    });
    let begun = begin_intent(&shared.intents_dir, &key, Intent::Snapshot);
    let persisted = match begun {
        Ok(()) => vm.persist(Durability::Cached).await,
        Err(e) => Err(e),
    };
    if let Err(e) = persisted {
        drop(pending);
        undo.unwind().await;
        vm.record.pending_snapshot = None;
        super::intent::end(&shared.intents_dir, &key);
        return Err(e);
    }
    let taken = async {
        if was_running {
            api.patch_vm(&VmPatch {
                state: ApiVmState::Paused,
            })
            .await
            .map_err(api_err("pause before the snapshot"))?;
        }
        // A jailed Firecracker writes inside its chroot; the files move to
        // the bundle after.
        let staging =
            match &vm.record.jail {
                Some(jail) => Some(super::jailed::snapshot_staging(jail).await.map_err(
                    |source| VmError::Jail {
                        id: id.clone(),
                        source: Box::new(source),
                    },
                )?),
                None => None,
            };
        let target = staging.as_ref().unwrap_or(&bundle);
        api.create_snapshot(&SnapshotCreateParams {
            snapshot_type: Some(if options.diff {
                SnapshotType::Diff
            } else {
                SnapshotType::Full
            }),
            snapshot_path: vm.record.vmm_path(&target.join(VMSTATE_FILE)),
            mem_file_path: vm.record.vmm_path(&target.join(MEMORY_FILE)),
        })
        .await
        .map_err(api_err("create the snapshot"))?;
        if let Some(staging) = &staging {
            super::jailed::collect_snapshot(staging, &bundle)
                .await
                .map_err(|source| VmError::Jail {
                    id: id.clone(),
                    source: Box::new(source),
                })?;
        }
        let disks = if options.disks {
            keep_disks(id, &vm.record, &bundle).await?
        } else {
            Vec::new()
        };
        let version = api
            .get_firecracker_version()
            .await
            .map_err(api_err("read the Firecracker version"))?;
        let drive_files = super::jailed::drive_files(&vm.record.spec, vm.record.jail.as_ref());
        let drives = tokio::task::spawn_blocking(move || drive_layouts(drive_files))
            .await
            .expect("stat does not panic")
            .map_err(|(path, source)| VmError::Io {
                id: id.clone(),
                op: "measure the drive",
                path,
                source,
            })?;
        let draft = ManifestDraft {
            name: name.clone(),
            source_vm: id.clone(),
            kind: if options.diff {
                SnapshotKind::Diff
            } else {
                SnapshotKind::Full
            },
            parent: parent.clone(),
            firecracker_version: version.firecracker_version,
            spec: vm.record.spec.clone(),
            network: vm
                .record
                .net
                .iter()
                .map(NetworkLayout::from)
                .chain(vm.record.spec.extra_nics.iter().map(NetworkLayout::from))
                .collect(),
            vsock: vm.record.vsock.as_ref().map(|v| VsockLayout {
                guest_cid: v.guest_cid,
                uds_path: v.uds_path.clone(),
                agent_token: Some(v.token.clone()),
            }),
            source_chroot: vm.record.jail.as_ref().map(|j| j.chroot.clone()),
            drives,
            disks,
            created_at_ms: now_ms(),
            host_cpu: Some(crate::cpu::HostCpu::detect()),
        };
        // Sizes and checksums are computed on the blocking pool.
        let dir = bundle.clone();
        let manifest = tokio::task::spawn_blocking(move || Bundle::seal(&dir, draft))
            .await
            .expect("sealing a bundle does not panic")
            .map_err(bundle_err)?;
        Ok::<_, VmError>(manifest)
    }
    .await;

    // Resume whatever happened, if the VM was running and the caller wants
    // it running: a failed snapshot must not leave the guest frozen.
    let resume = was_running && (options.resume || taken.is_err());
    if resume {
        let resumed = api
            .patch_vm(&VmPatch {
                state: ApiVmState::Resumed,
            })
            .await
            .map_err(api_err("resume after the snapshot"));
        if let Err(e) = resumed {
            undo.unwind().await;
            vm.record.state = VmState::Paused;
            vm.record.pending_snapshot = None;
            let _ = vm.persist(Durability::Cached).await;
            super::intent::end(&shared.intents_dir, &key);
            shared.slot(id)?.publish(Some(vm));
            return Err(taken.err().unwrap_or(e));
        }
    }
    drop(pending);
    vm.record.pending_snapshot = None;
    match taken {
        Ok(manifest) => {
            undo.commit();
            vm.record.last_snapshot = Some(name.clone());
            vm.record.state = if was_running && !options.resume {
                VmState::Paused
            } else {
                vm.record.state.clone()
            };
            vm.persist(Durability::Cached).await?;
            super::intent::end(&shared.intents_dir, &key);
            shared.slot(id)?.publish(Some(vm));
            Ok(SnapshotInfo {
                name,
                dir: bundle,
                manifest,
                reclaimed: None,
            })
        }
        Err(e) => {
            undo.unwind().await;
            if vm.persist(Durability::Cached).await.is_ok() {
                super::intent::end(&shared.intents_dir, &key);
            }
            Err(e)
        }
    }
}

/// Adds (`add`) or removes a published port of a VM with a network.
pub(super) async fn publish(
    shared: Arc<Shared>,
    id: VmId,
    mapping: PortMapping,
    add: bool,
) -> Result<VmInfo, VmError> {
    let slot = shared.find(&id).await?;
    let mut guard = slot.vm.lock().await;
    let vm = guard
        .as_mut()
        .ok_or_else(|| VmError::NotFound { id: id.clone() })?;
    let network = |source| VmError::Network {
        id: id.clone(),
        source: Box::new(source),
    };
    if vm.record.net.is_none() {
        return Err(network(NetError::NotAttached { vm: id.clone() }));
    }
    let host_network = shared.network().await;
    // The network knows the VM by its key.
    let key = &vm.record.id;
    let net = if add {
        host_network.publish(key, mapping).await
    } else {
        host_network.unpublish(key, mapping).await
    }
    .map_err(network)?;
    vm.record.net = Some(net);
    vm.persist(Durability::Synced).await?;
    slot.publish(Some(vm));
    Ok(vm.info())
}

/// [`Manager::set_egress`](super::Manager::set_egress): the firewall
/// first, then the record; a record that cannot be written takes the
/// firewall back. A crash between the two leaves the record's policy,
/// which the next manager installs.
pub(super) async fn set_egress(
    shared: Arc<Shared>,
    id: VmId,
    policy: EgressPolicy,
) -> Result<VmInfo, VmError> {
    let slot = shared.find(&id).await?;
    let mut guard = slot.vm.lock().await;
    let vm = guard
        .as_mut()
        .ok_or_else(|| VmError::NotFound { id: id.clone() })?;
    let network = |source| VmError::Network {
        id: id.clone(),
        source: Box::new(source),
    };
    let Some(old) = vm.record.net.as_ref().map(|n| n.egress.clone()) else {
        return Err(network(NetError::NotAttached { vm: id.clone() }));
    };
    let host_network = shared.network().await;
    let key = vm.record.id.clone();
    let net = host_network
        .set_egress(&key, policy.clone())
        .await
        .map_err(network)?;
    let (old_net, old_spec_net) = (vm.record.net.clone(), vm.record.spec.net.clone());
    vm.record.net = Some(net);
    if let Some(spec_net) = &mut vm.record.spec.net {
        spec_net.egress = policy;
    }
    if let Err(e) = vm.persist(Durability::Synced).await {
        vm.record.net = old_net;
        vm.record.spec.net = old_spec_net;
        if let Err(undo) = host_network.set_egress(&key, old).await {
            tracing::error!(vm = %id, error = %undo, "cannot put the old egress policy back after a failed record write");
        }
        return Err(e);
    }
    slot.publish(Some(vm));
    Ok(vm.info())
}

pub(super) async fn destroy(shared: Arc<Shared>, id: VmId) -> Result<(), VmError> {
    let guard = locked(&shared, &id, Operation::Destroy).await?;
    let key = guard
        .as_ref()
        .map(|vm| vm.record.id.clone())
        .ok_or_else(|| VmError::NotFound { id: id.clone() })?;
    let intents = &shared.intents_dir;
    begin_intent(intents, &key, Intent::Destroy)?;
    let removed = remove(&shared, guard).await;
    if removed.is_ok() {
        super::intent::end(intents, &key);
    }
    removed
}

/// [`super::intent::begin`], as a [`VmError`].
pub(super) fn begin_intent(
    intents_dir: &std::path::Path,
    id: &VmId,
    intent: Intent,
) -> Result<(), VmError> {
    super::intent::begin(intents_dir, id, intent).map_err(|source| VmError::Io {
        id: id.clone(),
        op: "record the operation under way in",
        path: intents_dir.to_owned(),
        source,
    })
}

/// Removes the VM held by `guard` and everything it owns (it must be
/// created, stopped or failed).
pub(super) async fn remove(
    shared: &Arc<Shared>,
    mut guard: tokio::sync::OwnedMutexGuard<Option<Vm>>,
) -> Result<(), VmError> {
    let vm = guard.as_mut().expect("checked by the caller");
    // Host resources go by the key; the registry and the caller know the
    // name (see `names`).
    let (id, name) = (&vm.record.id.clone(), vm.record.name.clone());
    // A created VM still has its VMM (no guest ran, so nothing is lost).
    if let Some(process) = vm.process.take() {
        process
            .signal(Signal::KILL)
            .map_err(|source| VmError::Process {
                id: id.clone(),
                source,
            })?;
        let after_kill = shared.config.timeouts.after_kill;
        if process.wait_timeout(after_kill).await.is_none() {
            vm.process = Some(process.clone());
            return Err(VmError::StopTimeout {
                id: id.clone(),
                pid: process.pid(),
                waited: after_kill,
            });
        }
    }
    vm.api = None;
    super::restore::retire_page_server(vm, &shared.snapshots_dir).await;
    super::writers::release(&shared.writers, id);
    // The VMM is gone, so nothing holds the TAP any more.
    release_network(shared, vm).await?;
    // The jail goes before the directory: were it to fail, the record
    // still says where it is, and a retried destroy finds it.
    if let Some(jail) = &vm.record.jail {
        super::jailed::remove(shared, id, jail).await?;
    }
    let dir = vm.dir.clone();
    tokio::task::spawn_blocking(move || remove_dir_if_present(&dir))
        .await
        .expect("directory removal does not panic")
        .map_err(|source| VmError::Io {
            id: id.clone(),
            op: "remove directory",
            path: vm.dir.clone(),
            source,
        })?;
    // The VM no longer needs any bundle it was restored from.
    let store = shared.store();
    let vm_id = id.clone();
    let released = tokio::task::spawn_blocking(move || store.release_all(&vm_id))
        .await
        .expect("releasing leases does not panic");
    if let Err(e) = released {
        tracing::warn!(vm = %id, error = %e, "cannot release snapshot leases; gc will");
    }
    if name != *id
        && let Err(e) = super::names::unlink(&shared.names_dir, &name)
    {
        tracing::warn!(vm = %name, error = %e, "cannot remove the name link; the next full load will");
    }
    *guard = None;
    let mut vms = shared.lock_registry();
    if vms.get(&name).is_some_and(|slot| slot.key == *id)
        && let Some(slot) = vms.remove(&name)
    {
        slot.publish(None);
    }
    Ok(())
}
