//! The chroot base: the directory every jail lives under.
//!
//! The jailer runs as root and builds each VM's chroot under the base, so
//! whoever can change the base (or a directory on its path) can swap a
//! jail's files under a root process. [`ensure_chroot_base`] therefore
//! creates a missing base the way it must be (root-owned, `0755`) and
//! refuses an existing one that another user could change. A fresh host
//! needs no setup step: the first jailed VM makes the base.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::JailError;

/// Group- and world-writable bits.
const WRITABLE_BY_OTHERS: u32 = 0o022;
/// The sticky bit: in a world-writable directory (`/tmp`), only an entry's
/// owner may rename or remove it, so root's entries there stay put.
const STICKY: u32 = 0o1000;

/// Makes sure `base` can hold jails. A missing base (and missing parents)
/// is created owned by root with mode `0755`. An existing one must be a
/// directory owned by root and writable by nobody else; each directory on
/// its (resolved) path must be owned by root and either writable by nobody
/// else or sticky.
///
/// The base is host setup, like the state directory: it stays when the VM
/// that created it is removed.
///
/// # Errors
///
/// [`JailError::ChrootBase`] for a relative path, one that exists and is
/// not a directory, or one that cannot be created; and
/// [`JailError::UnsafeChrootBase`] for unsafe ownership or mode.
pub fn ensure_chroot_base(base: &Path) -> Result<(), JailError> {
    let refuse = |why: String| JailError::ChrootBase {
        path: base.to_owned(),
        why,
    };
    if !base.is_absolute() {
        return Err(refuse("it is not an absolute path".into()));
    }
    match std::fs::metadata(base) {
        Ok(meta) if !meta.is_dir() => return Err(refuse("it is not a directory".into())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(base)
                .map_err(|e| refuse(format!("it cannot be created: {e}")))?;
            // Exactly 0755, whatever the umask.
            std::fs::set_permissions(base, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(|e| refuse(format!("its mode cannot be set: {e}")))?;
        }
        Err(e) => return Err(refuse(format!("it cannot be read: {e}"))),
    }
    let resolved = base
        .canonicalize()
        .map_err(|e| refuse(format!("it cannot be resolved: {e}")))?;
    check_owner_and_mode(&resolved, false)?;
    for ancestor in resolved.ancestors().skip(1) {
        check_owner_and_mode(ancestor, true)?;
    }
    Ok(())
}

/// Refuses `dir` unless root owns it and nobody else can write to it (or,
/// for an ancestor, it is sticky).
fn check_owner_and_mode(dir: &Path, sticky_allowed: bool) -> Result<(), JailError> {
    let unsafe_base = |why: String| JailError::UnsafeChrootBase {
        path: dir.to_owned(),
        why,
    };
    let meta = std::fs::metadata(dir).map_err(|e| JailError::ChrootBase {
        path: dir.to_owned(),
        why: format!("it cannot be read: {e}"),
    })?;
    if meta.uid() != 0 {
        return Err(unsafe_base(format!(
            "it is owned by uid {}, not root (chown root:root it)",
            meta.uid()
        )));
    }
    let mode = meta.mode();
    let sticky = sticky_allowed && mode & STICKY != 0;
    if mode & WRITABLE_BY_OTHERS != 0 && !sticky {
        return Err(unsafe_base(format!(
            "its mode {:o} lets other users write to it (chmod go-w it)",
            mode & 0o7777
        )));
    }
    Ok(())
}

/// What [`ensure_chroot_base`] would do, without doing it: `Ok(None)` when
/// the base is usable, `Ok(Some(path))` when it is missing and would be
/// created, or the refusal. For `doctor`.
pub fn check_chroot_base(base: &Path) -> Result<Option<PathBuf>, JailError> {
    if base.is_absolute() && !base.exists() {
        let mut missing = base.to_owned();
        // The nearest existing ancestor is what must be safe.
        while !missing.exists() {
            match missing.parent() {
                Some(parent) => missing = parent.to_owned(),
                None => break,
            }
        }
        for ancestor in missing.ancestors() {
            check_owner_and_mode(ancestor, true)?;
        }
        return Ok(Some(base.to_owned()));
    }
    ensure_chroot_base(base).map(|()| None)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_missing_base_is_created_root_owned_0755_with_its_parents() {
        if !is_root() {
            eprintln!("skipped: needs root (a base must be root-owned)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("srv/jailer");
        assert_eq!(check_chroot_base(&base).unwrap(), Some(base.clone()));
        assert!(!base.exists(), "check changes nothing");
        ensure_chroot_base(&base).unwrap();
        for made in [&base, &dir.path().join("srv")] {
            assert_eq!(mode(made), 0o755, "{made:?}");
            assert_eq!(std::fs::metadata(made).unwrap().uid(), 0);
        }
        // Once there, it is accepted as it is.
        ensure_chroot_base(&base).unwrap();
        assert_eq!(check_chroot_base(&base).unwrap(), None);
    }

    #[test]
    fn a_base_others_can_change_is_refused() {
        if !is_root() {
            eprintln!("skipped: needs root (chown)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("jailer");
        std::fs::create_dir(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure_chroot_base(&base).unwrap_err();
        assert!(
            matches!(&err, JailError::UnsafeChrootBase { why, .. } if why.contains("777")),
            "{err}"
        );
        // Sticky is no excuse for the base itself.
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(ensure_chroot_base(&base).is_err());

        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&base, Some(1000), Some(1000)).unwrap();
        let err = ensure_chroot_base(&base).unwrap_err();
        assert!(err.to_string().contains("uid 1000"), "{err}");
        assert!(check_chroot_base(&base).is_err());

        // A parent others can write to (without the sticky bit) could
        // swap the base itself.
        std::os::unix::fs::chown(&base, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure_chroot_base(&base).unwrap_err();
        assert!(
            matches!(&err, JailError::UnsafeChrootBase { path, .. } if path == dir.path()),
            "{err}"
        );
        // With the sticky bit (as /tmp) it is fine.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        ensure_chroot_base(&base).unwrap();
    }

    #[test]
    fn a_file_or_a_relative_path_is_not_a_base() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        for bad in [file.as_path(), Path::new("relative/jailer")] {
            let err = ensure_chroot_base(bad).unwrap_err();
            assert!(
                matches!(err, JailError::ChrootBase { .. }),
                "{bad:?}: {err}"
            );
        }
        assert!(!Path::new("relative").exists());
    }
}
