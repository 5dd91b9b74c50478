//! Private copies of writable drives: a clone's own, and the ones a
//! snapshot keeps in its bundle. A reflink where the file system has them
//! (the data is shared until written), else the data extents only, holes
//! kept; which it was is reported, since the second costs what the drive
//! holds.

use std::path::{Path, PathBuf};

use super::VmError;
use super::writers::{Access, writable_drives};
use crate::VmId;
use crate::record::{CopyMethod, OwnDrive};
use crate::spec::ResolvedSpec;

/// The writable drives of `spec` that its VM does not share on purpose:
/// (drive id, file).
pub(super) fn exclusive_drives(spec: &ResolvedSpec) -> Vec<(String, PathBuf)> {
    writable_drives(spec)
        .into_iter()
        .filter(|(_, _, access)| *access == Access::Exclusive)
        .map(|(drive, path, _)| (drive, path))
        .collect()
}

/// Copies each `(drive, file)` of VM `vm` to `dir/<drive>`, mode 0600,
/// owned by `owner` (uid, gid); `dir` is made, private. Runs on the
/// blocking pool. A failed copy leaves the ones made before it, in `dir`,
/// for the caller's undo to remove with it.
pub(super) async fn copy_drives(
    vm: &VmId,
    files: Vec<(String, PathBuf)>,
    dir: &Path,
    owner: (u32, u32),
) -> Result<Vec<OwnDrive>, VmError> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let (dir, id) = (dir.to_owned(), vm.clone());
    tokio::task::spawn_blocking(move || {
        crate::fsutil::create_private_dir(&dir).map_err(|source| VmError::Io {
            id: id.clone(),
            op: "create",
            path: dir.clone(),
            source,
        })?;
        let mut copies = Vec::with_capacity(files.len());
        for (drive, original) in files {
            let path = dir.join(&drive);
            let how = crate::jail::stage::copy_private(&original, &path, owner.0, owner.1)
                .map_err(|source| VmError::DriveCopy {
                    id: id.clone(),
                    drive: drive.clone(),
                    source: Box::new(source),
                })?;
            let copy = match how {
                crate::jail::stage::Staged::Reflinked => CopyMethod::Reflink,
                _ => {
                    tracing::info!(vm = %id, drive, ?original, "copied the drive's data: this file system has no reflinks");
                    CopyMethod::Extents
                }
            };
            copies.push(OwnDrive { drive, path, copy });
        }
        Ok(copies)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}
