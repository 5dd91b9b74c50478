//! VM names and keys: what callers call a VM, and what the host knows it
//! by.
//!
//! A VM's **key** ([`VmRecord::id`](crate::record::VmRecord::id)) is fixed
//! for its life: its directory `vms/<key>/`, its jail, namespace, sockets,
//! TAP label, intents, uid, snapshot leases. A running Firecracker keeps
//! every path it was given (its API and vsock sockets, the vsock `_PORT`
//! listeners it connects to, its log and metrics, its chroot), so those
//! cannot follow a new name. Its **name**
//! ([`VmRecord::name`](crate::record::VmRecord::name)) is what every
//! [`Manager`](super::Manager) method and every `VmInfo` uses; it starts
//! out as the key and changes with [`Manager::rename`](super::Manager::rename).
//!
//! The record is the truth. When a name is not the VM's key, `names/<name>`
//! in the state directory is a symlink to `../vms/<key>`, so that a manager
//! that loads VMs as they are named finds the VM without reading every
//! record; a link that disagrees with the record it points at is ignored
//! and removed once every VM is loaded. A new VM's key is its name, unless
//! a VM renamed away from that name still holds `vms/<name>`: then it is
//! the name with a random suffix.

use std::path::{Path, PathBuf};

use crate::VmId;

/// The directory of name links, in the state directory.
pub(super) const NAMES_DIR: &str = "names";

/// The link for `name` in the names directory `dir`.
pub(super) fn link_path(dir: &Path, name: &VmId) -> PathBuf {
    dir.join(name.as_str())
}

/// The key `names/<name>` points at, if it is a link to a VM directory.
pub(super) fn key_of(dir: &Path, name: &VmId) -> Option<VmId> {
    let target = std::fs::read_link(link_path(dir, name)).ok()?;
    let key = target.file_name()?.to_str()?;
    VmId::new(key).ok()
}

/// Points `names/<name>` at `vms/<key>`, replacing a link that was there
/// (atomically: a reader sees the old link or the new one).
pub(super) fn link(dir: &Path, name: &VmId, key: &VmId) -> std::io::Result<()> {
    crate::fsutil::create_private_dir_all(dir)?;
    let temporary = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(Path::new("../vms").join(key.as_str()), &temporary)?;
    std::fs::rename(&temporary, link_path(dir, name)).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

/// Removes `names/<name>`; one that is not there is fine.
pub(super) fn unlink(dir: &Path, name: &VmId) -> std::io::Result<()> {
    match std::fs::remove_file(link_path(dir, name)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Every link in the names directory: its name and the key it points at
/// (`None` for an entry that is not a valid link).
pub(super) fn all(dir: &Path) -> Vec<(String, Option<VmId>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let key = VmId::new(&name).ok().and_then(|n| key_of(dir, &n));
            Some((name, key))
        })
        .collect()
}

/// A key for a new VM named `name` whose own name is taken as a key in
/// `vms_dir`: the name (cut to fit) with a random suffix.
pub(super) fn fresh_key(vms_dir: &Path, name: &VmId) -> VmId {
    let mut bytes = [0u8; 4];
    // Random so that two new VMs whose names collide here do not race for
    // one key; should the read fail, the attempt count still moves on.
    let _ = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty());
    let mut suffix = u32::from_le_bytes(bytes);
    loop {
        let stem = &name.as_str()[..name.as_str().len().min(crate::id::MAX_VM_ID_LEN - 9)];
        let key =
            VmId::new(format!("{stem}-{suffix:08x}")).expect("a valid stem, '-' and hex digits");
        if !vms_dir.join(key.as_str()).exists() {
            return key;
        }
        suffix = suffix.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_point_names_at_keys_and_are_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let names = dir.path().join(NAMES_DIR);
        let (name, a, b) = (
            VmId::new("web").unwrap(),
            VmId::new("pool-1").unwrap(),
            VmId::new("pool-2").unwrap(),
        );
        assert_eq!(key_of(&names, &name), None);
        link(&names, &name, &a).unwrap();
        assert_eq!(key_of(&names, &name), Some(a));
        link(&names, &name, &b).unwrap();
        assert_eq!(key_of(&names, &name), Some(b.clone()));
        assert_eq!(all(&names), vec![("web".to_owned(), Some(b))]);
        unlink(&names, &name).unwrap();
        unlink(&names, &name).unwrap();
        assert!(all(&names).is_empty());
    }

    #[test]
    fn a_fresh_key_keeps_the_name_and_fits() {
        let dir = tempfile::tempdir().unwrap();
        let long = VmId::new("a".repeat(64)).unwrap();
        let key = fresh_key(dir.path(), &long);
        assert_eq!(key.as_str().len(), 64);
        assert!(key.as_str().starts_with(&"a".repeat(55)));
        let short = fresh_key(dir.path(), &VmId::new("web").unwrap());
        assert!(short.as_str().starts_with("web-"), "{short}");
    }
}
