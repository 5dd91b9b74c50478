//! Intents: what a manager was doing when it died, found without reading
//! every VM's record.
//!
//! Before an operation that a crash could leave half-done (create, restore,
//! snapshot, destroy, rename), the manager writes `intents/<key>` in the state
//! directory, holding the operation's name; it removes the file once the
//! operation has committed or been undone. The next manager to open the
//! directory (unless read-only) lists `intents/` — empty in the ordinary
//! case, so opening costs the same with 1 or 1,000 VMs — and settles each
//! VM named there:
//!
//! - create, restore: the VM is loaded, which reaps it if its record never
//!   committed (see [`super::recovery`]);
//! - snapshot: the VM is loaded; its record's
//!   [`pending_snapshot`](crate::record::VmRecord::pending_snapshot) is
//!   settled once the VMM answers (see [`super::verify`]), which removes
//!   the intent;
//! - destroy: the destroy is finished;
//! - rename: the VM is loaded under the name its record gives (the
//!   record is written last, so that is the old name or the new one), its
//!   name links are made to agree, and its metadata identity is written
//!   again (see [`super::rename`]);
//! - devices (an update or a drive swap): the VM is loaded and its VMM is
//!   given the devices its record names again, so the two agree whichever
//!   side of the record write the crash fell (see [`super::update`]). A
//!   drive swap's intent also names the drive and the new file, which tells
//!   a jailed VM's staged files apart.
//!
//! The files are written without fsync: they guard against the manager
//! dying, and a host crash ends the VMMs they are about as well.

use std::path::{Path, PathBuf};

use crate::VmId;

/// The directory, in the state directory.
pub(super) const INTENTS_DIR: &str = "intents";

/// An operation that leaves an intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Intent {
    Create,
    Restore,
    Snapshot,
    Destroy,
    Rename,
    Devices,
}

impl Intent {
    fn as_str(self) -> &'static str {
        match self {
            Intent::Create => "create",
            Intent::Restore => "restore",
            Intent::Snapshot => "snapshot",
            Intent::Destroy => "destroy",
            Intent::Rename => "rename",
            Intent::Devices => "devices",
        }
    }

    fn parse(text: &str) -> Option<Intent> {
        // The first line; a detail may follow (see `begin_with`).
        Some(match text.lines().next().unwrap_or("").trim() {
            "create" => Intent::Create,
            "restore" => Intent::Restore,
            "snapshot" => Intent::Snapshot,
            "destroy" => Intent::Destroy,
            "rename" => Intent::Rename,
            "devices" => Intent::Devices,
            _ => return None,
        })
    }
}

/// Records that `intent` is under way for `id` (blocking, small).
pub(super) fn begin(intents_dir: &Path, id: &VmId, intent: Intent) -> std::io::Result<()> {
    begin_with(intents_dir, id, intent, "")
}

/// Like [`begin`], with a line of detail for the settling.
pub(super) fn begin_with(
    intents_dir: &Path,
    id: &VmId,
    intent: Intent,
    detail: &str,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path_of(intents_dir, id))?;
    file.write_all(intent.as_str().as_bytes())?;
    if !detail.is_empty() {
        file.write_all(b"\n")?;
        file.write_all(detail.as_bytes())?;
    }
    Ok(())
}

/// The detail an intent was begun with, if any.
pub(super) fn detail(intents_dir: &Path, id: &VmId) -> Option<String> {
    let text = std::fs::read_to_string(path_of(intents_dir, id)).ok()?;
    let (_, detail) = text.split_once('\n')?;
    Some(detail.to_owned())
}

/// Records that nothing is under way for `id` any more.
pub(super) fn end(intents_dir: &Path, id: &VmId) {
    match std::fs::remove_file(path_of(intents_dir, id)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(vm = %id, error = %e, "cannot remove an intent file"),
    }
}

/// The intents left in `intents_dir`. A file whose name is not a VM id or
/// whose content names no operation is reported with `None` (the VM is
/// still worth loading: it was in the middle of something).
pub(super) fn pending(intents_dir: &Path) -> Vec<(VmId, Option<Intent>)> {
    let Ok(entries) = std::fs::read_dir(intents_dir) else {
        return Vec::new();
    };
    let mut found: Vec<(VmId, Option<Intent>)> = entries
        .flatten()
        .filter_map(|entry| {
            let id = VmId::new(entry.file_name().to_str()?).ok()?;
            let intent = std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|text| Intent::parse(&text));
            Some((id, intent))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn path_of(intents_dir: &Path, id: &VmId) -> PathBuf {
    intents_dir.join(id.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_are_listed_until_ended() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (VmId::new("a").unwrap(), VmId::new("b").unwrap());
        begin(dir.path(), &b, Intent::Snapshot).unwrap();
        begin(dir.path(), &a, Intent::Create).unwrap();
        assert_eq!(
            pending(dir.path()),
            vec![
                (a.clone(), Some(Intent::Create)),
                (b.clone(), Some(Intent::Snapshot))
            ]
        );
        end(dir.path(), &a);
        end(dir.path(), &a);
        assert_eq!(pending(dir.path()), vec![(b, Some(Intent::Snapshot))]);
    }

    #[test]
    fn an_intent_can_carry_a_detail() {
        let dir = tempfile::tempdir().unwrap();
        let a = VmId::new("a").unwrap();
        begin_with(dir.path(), &a, Intent::Devices, "{\"drive\":\"data\"}").unwrap();
        assert_eq!(
            pending(dir.path()),
            vec![(a.clone(), Some(Intent::Devices))]
        );
        assert_eq!(
            detail(dir.path(), &a).as_deref(),
            Some("{\"drive\":\"data\"}")
        );
        begin(dir.path(), &a, Intent::Devices).unwrap();
        assert_eq!(detail(dir.path(), &a), None);
    }

    #[test]
    fn unknown_contents_and_names_are_tolerated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vm1"), "teleport").unwrap();
        std::fs::write(dir.path().join("not a vm"), "create").unwrap();
        assert_eq!(pending(dir.path()), vec![(VmId::new("vm1").unwrap(), None)]);
        assert_eq!(pending(&dir.path().join("missing")), vec![]);
    }
}
