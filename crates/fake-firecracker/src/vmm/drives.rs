//! `PUT`/`PATCH /drives/{id}` and `PUT /pmem/{id}`: block and pmem
//! devices, their backing files opened at configuration time.

use std::fs::{File, OpenOptions};
use std::os::unix::net::UnixStream;

use firehost_api::{Drive, Pmem};

use super::{ActionError, Reply, Resources, not_found_io};

pub(super) fn insert_drive(res: &mut Resources, mut drive: Drive) -> Result<Reply, ActionError> {
    drive.rate_limiter = super::limits::configured(drive.rate_limiter);
    if drive.is_root_device && res.pmem.iter().any(|p| p.root_device == Some(true)) {
        return Err(ActionError::Drive(
            "Attempt to add block as a root device while the root device defined as a pmem device"
                .into(),
        ));
    }
    let position = res.drives.iter().position(|d| d.drive_id == drive.drive_id);
    let has_root = res.drives.first().is_some_and(|d| d.is_root_device);
    if drive.is_root_device && has_root && position != Some(0) {
        return Err(ActionError::Drive(
            "A root block device already exists!".into(),
        ));
    }
    match (&drive.path_on_host, &drive.socket) {
        (Some(path), _) => {
            let read_only = drive.is_read_only.unwrap_or(false);
            OpenOptions::new()
                .read(true)
                .write(!read_only)
                .open(path)
                .map_err(|e| {
                    ActionError::Drive(format!(
                        "Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: {}",
                        not_found_io(path, e)
                    ))
                })?;
        }
        (None, Some(socket)) => {
            UnixStream::connect(socket).map_err(|e| {
                ActionError::Drive(format!(
                    "Unable to create the virtio block device: Vhost user backend error: Vhost-user error: {e}"
                ))
            })?;
        }
        (None, None) => {
            return Err(ActionError::Drive(
                "Unable to create the virtio block device: Invalid block config.".into(),
            ));
        }
    }
    match position {
        None if drive.is_root_device => res.drives.insert(0, drive),
        None => res.drives.push(drive),
        Some(i) => {
            let root = drive.is_root_device;
            res.drives[i] = drive;
            if i != 0 && root {
                res.drives.swap(0, i);
            }
        }
    }
    Ok(Reply::Empty)
}

pub(super) fn insert_pmem(res: &mut Resources, mut pmem: Pmem) -> Result<Reply, ActionError> {
    pmem.rate_limiter = super::limits::configured(pmem.rate_limiter);
    let root = pmem.root_device == Some(true);
    if root && res.drives.iter().any(|d| d.is_root_device) {
        return Err(ActionError::Pmem(
            "Attempt to add pmem as a root device while the root device defined as a block device"
                .into(),
        ));
    }
    if root
        && res
            .pmem
            .iter()
            .any(|p| p.root_device == Some(true) && p.id != pmem.id)
    {
        return Err(ActionError::Pmem("A root pmem device already exist".into()));
    }
    File::open(&pmem.path_on_host)
        .map_err(|e| ActionError::Pmem(format!("Error accessing underlying file: {e}")))?;
    match res.pmem.iter().position(|p| p.id == pmem.id) {
        Some(i) => res.pmem[i] = pmem,
        None => res.pmem.push(pmem),
    }
    Ok(Reply::Empty)
}
