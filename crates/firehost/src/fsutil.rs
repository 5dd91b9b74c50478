//! File-system helpers every subsystem uses the same way: durable atomic
//! writes, private directories, and finding a program as a shell would.
//!
//! A leaf: it imports nothing from the crate, so records, the network's
//! state file, settings and snapshot manifests all write through the one
//! [`write_atomic`] without depending on each other.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// How far a write must have reached before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On stable storage (fsync of the file and of its directory).
    Synced,
    /// In the page cache: survives a crash of the process, not of the host.
    Cached,
}

/// A file-system step failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}", path.display())]
pub struct FsError {
    /// What was being done ("create", "write", "fsync", "rename"…).
    pub op: &'static str,
    /// The path it was done to.
    pub path: PathBuf,
    /// The errno.
    #[source]
    pub source: std::io::Error,
}

/// Replaces `path` with `bytes` so that readers and crashes see the old or
/// the new content, never a mix: a temporary file beside it, written (and
/// with [`Durability::Synced`] fsynced), renamed over it, and the directory
/// fsynced. The file is created 0600.
///
/// # Errors
///
/// The step that failed, with its path.
pub fn write_atomic(path: &Path, bytes: &[u8], durability: Durability) -> Result<(), FsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let io = |op, p: &Path| {
        let p = p.to_owned();
        move |source| FsError {
            op,
            path: p,
            source,
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    file.write_all(bytes).map_err(io("write", &tmp))?;
    if durability == Durability::Synced {
        file.sync_data().map_err(io("fsync", &tmp))?;
    }
    drop(file);
    std::fs::rename(&tmp, path).map_err(io("rename", path))?;
    if durability == Durability::Synced {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory of", path))?;
    }
    Ok(())
}

/// Creates the directory `dir`, mode 0700; its parent must exist, and an
/// existing `dir` is an error (`AlreadyExists`): the caller owns what it
/// creates.
///
/// # Errors
///
/// The errno of `mkdir`.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

/// Creates `dir` and its missing parents, mode 0700; an existing `dir` is
/// fine.
///
/// # Errors
///
/// The errno of `mkdir`.
pub fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Finds `binary` the way a shell would: as given if it has a `/`, else in
/// the directories of `PATH`. Returns an absolute, executable path.
pub fn find_binary(binary: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if binary.as_os_str().as_encoded_bytes().contains(&b'/') {
        return is_exec(binary)
            .then(|| std::fs::canonicalize(binary).ok())
            .flatten();
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_absolute() && is_exec(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn binaries_are_found_on_path_or_by_path() {
        assert!(find_binary(Path::new("sh")).is_some_and(|p| p.is_absolute()));
        assert!(find_binary(Path::new("/bin/sh")).is_some());
        assert!(find_binary(Path::new("no-such-binary-firehost")).is_none());
        let dir = tempfile::tempdir().unwrap();
        let not_exec = dir.path().join("data");
        std::fs::write(&not_exec, b"x").unwrap();
        assert!(find_binary(&not_exec).is_none());
        assert!(find_binary(dir.path()).is_none());
    }

    #[test]
    fn an_atomic_write_replaces_the_file_whole_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"old", Durability::Synced).unwrap();
        write_atomic(&path, b"new", Durability::Cached).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!path.with_extension("tmp").exists());
        let err =
            write_atomic(&dir.path().join("no/such/file"), b"x", Durability::Synced).unwrap_err();
        assert_eq!(err.op, "create");
    }

    #[test]
    fn private_dirs_are_0700() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_private_dir_all(&nested).unwrap();
        create_private_dir_all(&nested).unwrap();
        let err = create_private_dir(&nested).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        let mode = std::fs::metadata(&nested).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
