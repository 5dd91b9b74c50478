//! Swapping a drive's backing file on a started VM: Firecracker's
//! `PATCH /drives/{id}` with a new `path_on_host`.
//!
//! For an unjailed VM, the VMM opens the new file where it is. A jailed
//! VMM sees only its chroot, so the new file is staged into the jail
//! (linked when read-only, copied privately when writable, as at create),
//! put at the drive's place there with the old file kept aside, and the
//! VMM reopens that place; the old file goes once the VMM has let go of
//! it, or comes back if the VMM refuses. Either way the drive's path
//! inside the jail never changes, so snapshots and restores of the VM find
//! it where they expect.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Shared, VmError, VmInfo};
use crate::VmId;
use crate::api::models::PartialDrive;
use crate::fsutil::Durability;
use crate::jail::VmJail;
use crate::spec::{FileRole, ROOTFS_DRIVE_ID, ResolvedSpec};
use crate::state::Operation;

use super::fault;

/// Suffixes of the staged files beside a jailed drive's place.
const NEXT_SUFFIX: &str = "next";
const PREVIOUS_SUFFIX: &str = "previous";

pub(super) async fn swap_drive(
    shared: Arc<Shared>,
    id: VmId,
    drive_id: String,
    path: PathBuf,
) -> Result<VmInfo, VmError> {
    // Every VM's files are known before this one's are checked against
    // them (and before its lock is taken: loading may need other locks).
    super::recovery::load_all(&shared).await;
    let mut guard = super::ops::locked(&shared, &id, Operation::Update).await?;
    let vm = guard.as_mut().expect("checked by locked()");
    let role = FileRole::Drive(drive_id.clone());
    let file = tokio::task::spawn_blocking(move || crate::spec::resolve_file(role, &path))
        .await
        .expect("path resolution does not panic")
        .map_err(|source| VmError::InvalidSpec {
            id: id.clone(),
            source,
        })?;
    let old = vm.record.spec.clone();
    let new = with_drive_file(&old, &drive_id, &file).ok_or_else(|| VmError::InvalidUpdate {
        id: id.clone(),
        source: super::update::UpdateError::UnknownDrive {
            drive_id: drive_id.clone(),
        },
    })?;
    let api = super::ops::api_of(vm, Operation::Update)?;
    let key = vm.record.id.clone();
    // A crash from here to the end leaves the next manager an intent that
    // names the drive and its new file (see `update::settle`).
    let detail = serde_json::to_string(&super::update::SwapIntent {
        drive: drive_id.clone(),
        path: file.clone(),
    })
    .expect("a swap intent serialises");
    super::intent::begin_with(
        &shared.intents_dir,
        &key,
        super::intent::Intent::Devices,
        &detail,
    )
    .map_err(|source| VmError::Io {
        id: id.clone(),
        op: "record the operation under way in",
        path: shared.intents_dir.clone(),
        source,
    })?;
    let outcome = swap_recorded(&shared, vm, &id, &key, &drive_id, &file, &old, new, &api).await;
    super::intent::end(&shared.intents_dir, &key);
    outcome?;
    shared.slot(&id)?.publish(Some(vm));
    Ok(vm.info())
}

/// The swap, once its intent is written.
#[allow(clippy::too_many_arguments)]
async fn swap_recorded(
    shared: &Arc<Shared>,
    vm: &mut super::Vm,
    id: &VmId,
    key: &VmId,
    drive_id: &str,
    file: &Path,
    old: &ResolvedSpec,
    new: ResolvedSpec,
    api: &crate::api::ApiClient,
) -> Result<(), VmError> {
    let jail = vm.record.jail.clone();
    // What the VMM is to open: the file itself, or its place in the jail.
    let vmm_path = match &jail {
        None => {
            hold_new_files(shared, key, id, old, &new)?;
            file.to_owned()
        }
        Some(jail) => {
            let read_only = drive_read_only(old, drive_id);
            stage_in_jail(jail, drive_id, file, read_only)
                .await
                .map_err(|source| VmError::Jail {
                    id: id.clone(),
                    source: Box::new(source),
                })?
        }
    };
    fault::point(key, "swap:staged");
    let patch = |path: PathBuf| PartialDrive {
        drive_id: drive_id.to_owned(),
        path_on_host: Some(path),
        rate_limiter: None,
    };
    if let Err(source) = api.patch_guest_drive_by_id(&patch(vmm_path.clone())).await {
        undo_local(shared, key, jail.as_ref(), drive_id, &new, old).await;
        return Err(VmError::Api {
            id: id.clone(),
            op: "swap a drive's file",
            source,
        });
    }
    fault::point(key, "swap:sent");
    let own_drives = vm.record.own_drives.clone();
    vm.record.spec = new.clone();
    // The VM's own copy of the drive, if it had one, is no longer the
    // drive: it stays in the VM's directory until the VM is removed.
    vm.record.own_drives.retain(|own| own.drive != drive_id);
    if let Err(e) = vm.persist(Durability::Synced).await {
        vm.record.spec = old.clone();
        vm.record.own_drives = own_drives;
        undo_local(shared, key, jail.as_ref(), drive_id, &new, old).await;
        // The VMM goes back to the old file: where it was, or (jailed) at
        // the drive's place again.
        let back = match &jail {
            None => drive_file(old, drive_id),
            Some(_) => Some(vmm_path),
        };
        if let Some(back) = back
            && let Err(undo) = api.patch_guest_drive_by_id(&patch(back)).await
        {
            tracing::warn!(vm = %id, error = %undo, "could not take back a drive swap");
        }
        return Err(e);
    }
    fault::point(key, "swap:recorded");
    if let Some(jail) = &jail {
        forget_previous(jail, drive_id).await;
    }
    Ok(())
}

/// Settles the staged files of a jailed drive swap a crash cut short: the
/// new file stays at the drive's `place` when the swap was recorded
/// (`committed`), else the old one, kept aside, goes back.
pub(super) fn settle_staged(place: &Path, committed: bool) -> std::io::Result<()> {
    let (next, previous) = (beside(place, NEXT_SUFFIX), beside(place, PREVIOUS_SUFFIX));
    let _ = std::fs::remove_file(&next);
    if !previous.exists() {
        return Ok(());
    }
    if committed {
        std::fs::remove_file(&previous)
    } else {
        std::fs::rename(&previous, place)
    }
}

/// `spec` with drive `drive_id` backed by `file`; `None` if it has no
/// such drive.
fn with_drive_file(spec: &ResolvedSpec, drive_id: &str, file: &Path) -> Option<ResolvedSpec> {
    let mut new = spec.clone();
    if drive_id == ROOTFS_DRIVE_ID && new.rootfs.is_some() {
        new.rootfs = Some(file.to_owned());
        return Some(new);
    }
    let drive = new.extra_drives.iter_mut().find(|d| d.id == drive_id)?;
    drive.path = file.to_owned();
    Some(new)
}

/// The file drive `drive_id` of `spec` is backed by.
pub(super) fn drive_file(spec: &ResolvedSpec, drive_id: &str) -> Option<PathBuf> {
    if drive_id == ROOTFS_DRIVE_ID {
        return spec.rootfs.clone();
    }
    spec.extra_drives
        .iter()
        .find(|d| d.id == drive_id)
        .map(|d| d.path.clone())
}

fn drive_read_only(spec: &ResolvedSpec, drive_id: &str) -> bool {
    if drive_id == ROOTFS_DRIVE_ID {
        return spec.rootfs_read_only;
    }
    spec.extra_drives
        .iter()
        .find(|d| d.id == drive_id)
        .is_some_and(|d| d.read_only)
}

/// An unjailed VM writes to the new file from now on: refused while
/// another live VM writes to it.
fn hold_new_files(
    shared: &Shared,
    key: &VmId,
    name: &VmId,
    old: &ResolvedSpec,
    new: &ResolvedSpec,
) -> Result<(), VmError> {
    let mut writers = shared
        .writers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    writers
        .replace(key, old, new)
        .map_err(|taken| VmError::DriveInUse {
            id: name.clone(),
            drive: taken.drive,
            path: taken.path,
            holder: shared.name_of(&taken.holder).unwrap_or(taken.holder),
        })
}

/// Puts a private copy (writable) or a link (read-only) of `file` at drive
/// `drive_id`'s place in the jail, keeping the old one aside; returns the
/// place as the VMM sees it.
async fn stage_in_jail(
    jail: &VmJail,
    drive_id: &str,
    file: &Path,
    read_only: bool,
) -> Result<PathBuf, crate::jail::JailError> {
    let inside = super::jailed::drive_place(drive_id);
    let place = jail.root().host_path(&inside);
    let (next, previous) = (beside(&place, NEXT_SUFFIX), beside(&place, PREVIOUS_SUFFIX));
    let (uid, gid, file) = (jail.uid, jail.gid, file.to_owned());
    tokio::task::spawn_blocking(move || {
        let stage_err = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| crate::jail::JailError::Stage { op, path, source }
        };
        // Leftovers of a swap a crash cut short.
        let _ = std::fs::remove_file(&next);
        let _ = std::fs::remove_file(&previous);
        super::jailed::stage_drive(&file, &next, read_only, uid, gid)?;
        let moved =
            std::fs::hard_link(&place, &previous).and_then(|()| std::fs::rename(&next, &place));
        if let Err(e) = moved {
            let _ = std::fs::remove_file(&next);
            let _ = std::fs::remove_file(&previous);
            return Err(stage_err("put in place", &place)(e));
        }
        Ok(inside)
    })
    .await
    .expect("staging does not panic")
}

/// Takes back what was done on the host for a swap the VMM refused (or
/// could not record): the old files held again, or the jail's old file
/// back at its place.
async fn undo_local(
    shared: &Shared,
    key: &VmId,
    jail: Option<&VmJail>,
    drive_id: &str,
    new: &ResolvedSpec,
    old: &ResolvedSpec,
) {
    match jail {
        None => {
            let mut writers = shared
                .writers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = writers.replace(key, new, old);
        }
        Some(jail) => {
            let place = jail.root().host_path(&super::jailed::drive_place(drive_id));
            let previous = beside(&place, PREVIOUS_SUFFIX);
            let _ = tokio::task::spawn_blocking(move || std::fs::rename(&previous, &place)).await;
        }
    }
}

/// Removes the old file kept aside in the jail.
async fn forget_previous(jail: &VmJail, drive_id: &str) {
    let place = jail.root().host_path(&super::jailed::drive_place(drive_id));
    let previous = beside(&place, PREVIOUS_SUFFIX);
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(previous)).await;
}

/// `place` with `.suffix` appended to its file name.
fn beside(place: &Path, suffix: &str) -> PathBuf {
    let mut name = place.file_name().unwrap_or_default().to_owned();
    name.push(".");
    name.push(suffix);
    place.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DriveSpec;

    #[test]
    fn only_the_named_drive_changes_file() {
        let mut spec = ResolvedSpec::for_tests();
        spec.extra_drives = vec![DriveSpec::new("data", "/d", true)];
        let new = with_drive_file(&spec, "data", Path::new("/e")).unwrap();
        assert_eq!(new.extra_drives[0].path, Path::new("/e"));
        assert_eq!(new.rootfs, spec.rootfs);
        let root = with_drive_file(&spec, ROOTFS_DRIVE_ID, Path::new("/r2")).unwrap();
        assert_eq!(root.rootfs.as_deref(), Some(Path::new("/r2")));
        assert!(with_drive_file(&spec, "nope", Path::new("/x")).is_none());
        spec.rootfs = None;
        assert!(with_drive_file(&spec, ROOTFS_DRIVE_ID, Path::new("/x")).is_none());
        assert!(drive_read_only(&spec, "data"));
    }

    #[test]
    fn staged_files_sit_beside_the_drive() {
        assert_eq!(
            beside(Path::new("/j/root/drives/data"), NEXT_SUFFIX),
            Path::new("/j/root/drives/data.next")
        );
    }
}
