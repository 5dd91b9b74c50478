//! A bundle on disk: sealing one (sizes and checksums into the manifest),
//! opening and verifying one and the chain of parents a diff needs, and
//! the working set written beside it.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::error::io_err;
use super::lock::lock_dir;
use serde::Serialize;

use super::{
    BundleError, FileEntry, MANIFEST_FILE, MANIFEST_FORMAT, MEMORY_FILE, ManifestDraft,
    SnapshotManifest, SnapshotName, VMSTATE_FILE, WORKING_SET_FILE, WorkingSet, extents,
};
use crate::fsutil::{Durability, write_atomic};

/// Where a bundle's files are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// Its name.
    pub name: SnapshotName,
    /// The bundle directory.
    pub dir: PathBuf,
    /// The manifest.
    pub manifest: SnapshotManifest,
    /// What the balloon took back from the guest before the snapshot, when
    /// it was asked to
    /// ([`SnapshotOptions::reclaim`](crate::manager::SnapshotOptions::reclaim)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reclaimed: Option<Reclaimed>,
}

/// The balloon before a snapshot that reclaimed memory: the target it was
/// given, and what it held when the guest was paused (less when the guest
/// could not give that much back before the deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Reclaimed {
    /// The target, in MiB.
    pub target_mib: u32,
    /// What the balloon held at the pause, in MiB.
    pub balloon_mib: u32,
}

impl WorkingSet {
    /// Writes the working set into `bundle` atomically (blocking).
    pub fn write(&self, bundle: &Path) -> Result<(), BundleError> {
        let bytes = serde_json::to_vec(self).expect("working sets always serialise");
        write_atomic(&bundle.join(WORKING_SET_FILE), &bytes, Durability::Cached)
            .map_err(|source| BundleError::Write { source })
    }

    /// Reads the working set of `bundle`, `None` if none was recorded
    /// (blocking).
    pub fn read(bundle: &Path) -> Result<Option<WorkingSet>, BundleError> {
        let path = bundle.join(WORKING_SET_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(BundleError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| BundleError::Malformed { path, source })
    }
}

/// How thoroughly [`Bundle::verify`] checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Check the memory file's size but not its checksum. Hashing reads the
    /// whole of guest memory (holes excepted), which for a VM of many GiB
    /// costs seconds; the vmstate is always hashed (it is small). Skipping
    /// leaves damage to the memory file undetected.
    pub skip_memory_checksum: bool,
    /// The version of the Firecracker that will load the snapshot, as its
    /// `GET /version` reports it; `None` skips the check.
    pub firecracker_version: Option<String>,
}

/// Holds an exclusive `flock` on a bundle directory that is being written,
/// so that [`SnapshotStore::gc`](super::SnapshotStore::gc) does not take it for the leftover of a
/// crash. Released on drop (or when the process dies).
#[derive(Debug)]
pub struct PendingBundle {
    _fd: OwnedFd,
}

impl PendingBundle {
    /// Locks `dir`, which must exist (blocking only for the open).
    pub fn lock(dir: &Path) -> Result<PendingBundle, BundleError> {
        let fd = lock_dir(dir, false).map_err(io_err("lock", dir))?;
        Ok(PendingBundle {
            _fd: fd.expect("a blocking lock is always taken"),
        })
    }
}

/// A complete bundle on disk: its directory and its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    dir: PathBuf,
    manifest: SnapshotManifest,
}

impl Bundle {
    /// Opens the bundle in `dir` (blocking): reads and checks its manifest,
    /// including that the manifest's name is the directory's. Does not look
    /// at the other files; see [`Bundle::verify`].
    pub fn open(dir: &Path) -> Result<Bundle, BundleError> {
        let manifest = SnapshotManifest::load(dir)?;
        if dir.file_name().and_then(|n| n.to_str()) != Some(manifest.name.as_str()) {
            return Err(BundleError::Invalid {
                path: dir.join(MANIFEST_FILE),
                reason: "the manifest's name is not the bundle directory's",
            });
        }
        Ok(Bundle {
            dir: dir.to_owned(),
            manifest,
        })
    }

    /// Seals a bundle whose `vmstate` and `memory` files Firecracker has
    /// written (blocking; call it on the blocking pool): computes each
    /// file's size, allocated bytes and BLAKE3 checksum, streaming and
    /// without reading holes, then writes the manifest atomically and
    /// durably. Until this returns, the directory is an incomplete bundle.
    ///
    /// A full snapshot's memory file has its all-zero pages turned into
    /// holes on the way (its content and checksum stay the same): guest
    /// memory the guest never touched, or that its balloon gave back,
    /// takes no room in the bundle.
    ///
    /// The data files are not fsynced: after a host crash, a bundle whose
    /// memory did not reach the disk fails [`Bundle::verify`].
    pub fn seal(dir: &Path, draft: ManifestDraft) -> Result<SnapshotManifest, BundleError> {
        let mut files = Vec::with_capacity(2);
        for name in [VMSTATE_FILE, MEMORY_FILE] {
            let path = dir.join(name);
            // A full snapshot's memory loses its zero pages (see
            // `extents::digest_punching_zeros`); a diff's holes mean "the
            // parent's page", so its zero pages stay.
            let sparsify = name == MEMORY_FILE && draft.kind == super::SnapshotKind::Full;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(sparsify)
                .open(&path);
            let file = file.map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    BundleError::MissingFile {
                        name: draft.name.clone(),
                        file: name.to_owned(),
                    }
                } else {
                    io_err("open", &path)(e)
                }
            })?;
            let digest = if sparsify {
                extents::digest_punching_zeros(&file)
            } else {
                extents::digest(&file)
            };
            let digest = digest.map_err(io_err("hash", &path))?;
            files.push(FileEntry {
                name: name.to_owned(),
                size_bytes: digest.size_bytes,
                blake3: Some(digest.blake3),
                data_bytes: Some(digest.data_bytes),
            });
        }
        let manifest = SnapshotManifest {
            format: MANIFEST_FORMAT,
            name: draft.name,
            source_vm: draft.source_vm,
            kind: draft.kind,
            parent: draft.parent,
            firecracker_version: draft.firecracker_version,
            spec: draft.spec,
            network: draft.network,
            vsock: draft.vsock,
            source_chroot: draft.source_chroot,
            drives: draft.drives,
            disks: draft.disks,
            vmstate_bytes: files[0].size_bytes,
            memory_bytes: files[1].size_bytes,
            files,
            created_at_ms: draft.created_at_ms,
            host_cpu: draft.host_cpu,
        };
        manifest.check(&dir.join(MANIFEST_FILE))?;
        manifest.write(dir)?;
        Ok(manifest)
    }

    /// The bundle's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bundle's name.
    pub fn name(&self) -> &SnapshotName {
        &self.manifest.name
    }

    /// The manifest.
    pub fn manifest(&self) -> &SnapshotManifest {
        &self.manifest
    }

    /// The path of the file called `name` inside the bundle.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Name, directory and manifest, as the manager reports them.
    pub fn info(&self) -> SnapshotInfo {
        SnapshotInfo {
            reclaimed: None,
            name: self.manifest.name.clone(),
            dir: self.dir.clone(),
            manifest: self.manifest.clone(),
        }
    }

    /// The recorded working set, if any (blocking).
    pub fn working_set(&self) -> Result<Option<WorkingSet>, BundleError> {
        WorkingSet::read(&self.dir)
    }

    /// Checks the files against the manifest (blocking): each listed file
    /// exists with the recorded size, then each recorded checksum matches
    /// (the memory's only unless [`VerifyOptions::skip_memory_checksum`]),
    /// then the Firecracker version if one is given. Parents are not
    /// checked; see [`Bundle::chain`].
    pub fn verify(&self, options: &VerifyOptions) -> Result<(), BundleError> {
        let name = &self.manifest.name;
        let mut opened = Vec::with_capacity(self.manifest.files.len());
        for entry in &self.manifest.files {
            let path = self.path(&entry.name);
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(BundleError::MissingFile {
                        name: name.clone(),
                        file: entry.name.clone(),
                    });
                }
                Err(e) => return Err(io_err("open", &path)(e)),
            };
            let found = file.metadata().map_err(io_err("stat", &path))?.len();
            if found != entry.size_bytes {
                return Err(BundleError::SizeMismatch {
                    name: name.clone(),
                    file: entry.name.clone(),
                    expected: entry.size_bytes,
                    found,
                });
            }
            opened.push((entry, path, file));
        }
        for (entry, path, file) in opened {
            let Some(expected) = &entry.blake3 else {
                continue;
            };
            if options.skip_memory_checksum && entry.name == MEMORY_FILE {
                continue;
            }
            let found = extents::digest(&file)
                .map_err(io_err("hash", &path))?
                .blake3;
            if !found.eq_ignore_ascii_case(expected) {
                return Err(BundleError::ChecksumMismatch {
                    name: name.clone(),
                    file: entry.name.clone(),
                    expected: expected.clone(),
                    found,
                });
            }
        }
        if let Some(running) = &options.firecracker_version {
            self.manifest.check_firecracker_version(running)?;
        }
        Ok(())
    }

    /// This bundle and its ancestors, newest first, ending with a full
    /// snapshot (blocking). Parents are looked up beside this bundle. A
    /// parent that is gone or incomplete is [`BundleError::MissingParent`];
    /// a cycle is [`BundleError::ParentLoop`].
    pub fn chain(&self) -> Result<Vec<Bundle>, BundleError> {
        let base = self.dir.parent().unwrap_or(Path::new("."));
        let mut chain = vec![self.clone()];
        let mut seen = vec![self.manifest.name.clone()];
        while let Some(parent) = chain.last().expect("never empty").manifest.parent.clone() {
            if seen.contains(&parent) {
                seen.push(parent);
                return Err(BundleError::ParentLoop {
                    name: self.manifest.name.clone(),
                    chain: seen,
                });
            }
            let child = chain.last().expect("never empty").manifest.name.clone();
            let bundle = match Bundle::open(&base.join(parent.as_str())) {
                Ok(bundle) => bundle,
                Err(BundleError::NotFound { .. } | BundleError::Incomplete { .. }) => {
                    return Err(BundleError::MissingParent {
                        name: child,
                        parent,
                    });
                }
                Err(e) => return Err(e),
            };
            seen.push(parent);
            chain.push(bundle);
        }
        Ok(chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VmId;
    use crate::snapshot::*;
    use crate::spec::ResolvedSpec;

    fn spec() -> ResolvedSpec {
        ResolvedSpec::for_tests()
    }

    fn draft(name: &str) -> ManifestDraft {
        ManifestDraft {
            name: name.parse().unwrap(),
            source_vm: VmId::new("vm1").unwrap(),
            kind: SnapshotKind::Full,
            parent: None,
            firecracker_version: "1.16.1".into(),
            spec: spec(),
            network: vec![NetworkLayout {
                iface_id: "eth0".into(),
                guest_mac: Some("06:00:ac:10:00:02".into()),
                host_dev_name: "fh-tap0".into(),
                guest_ip: Some("172.30.0.2".parse().unwrap()),
            }],
            vsock: Some(VsockLayout {
                guest_cid: 3,
                uds_path: "/run/v.sock".into(),
                agent_token: Some(firehost_proto::Token("t0ken".into())),
            }),
            source_chroot: None,
            drives: vec![],
            disks: Vec::new(),
            created_at_ms: 7,
            host_cpu: None,
        }
    }

    /// A bundle directory `<base>/<name>` with a small vmstate and a sparse
    /// memory file, not sealed.
    fn unsealed(base: &Path, name: &str) -> PathBuf {
        use std::os::unix::fs::FileExt;
        let dir = base.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(VMSTATE_FILE), b"vcpu and device state").unwrap();
        let memory = File::create(dir.join(MEMORY_FILE)).unwrap();
        memory.set_len(16 * 4096).unwrap();
        memory.write_all_at(&[0xab; 4096], 3 * 4096).unwrap();
        dir
    }

    #[test]
    fn sealed_manifest_round_trips_with_checksums() {
        let base = tempfile::tempdir().unwrap();
        let dir = unsealed(base.path(), "snap");
        let manifest = Bundle::seal(&dir, draft("snap")).unwrap();
        assert_eq!(manifest.format, MANIFEST_FORMAT);
        let memory = manifest.file(MEMORY_FILE).unwrap();
        assert_eq!(memory.size_bytes, 16 * 4096);
        assert_eq!(manifest.memory_bytes, 16 * 4096);
        let bytes = std::fs::read(dir.join(MEMORY_FILE)).unwrap();
        assert_eq!(
            memory.blake3.as_deref(),
            Some(blake3::hash(&bytes).to_hex().as_str())
        );
        let bundle = Bundle::open(&dir).unwrap();
        assert_eq!(bundle.manifest(), &manifest);
        bundle.verify(&VerifyOptions::default()).unwrap();
    }

    #[test]
    fn format_1_manifest_is_read_and_checked_by_size() {
        let base = tempfile::tempdir().unwrap();
        let dir = unsealed(base.path(), "old");
        let v1 = serde_json::json!({
            "format": 1,
            "name": "old",
            "source_vm": "vm1",
            "kind": "full",
            "firecracker_version": "1.16.1",
            "spec": spec(),
            "vmstate_bytes": 21,
            "memory_bytes": 16 * 4096,
            "created_at_ms": 1,
        });
        std::fs::write(dir.join(MANIFEST_FILE), v1.to_string()).unwrap();
        let bundle = Bundle::open(&dir).unwrap();
        let m = bundle.manifest();
        assert_eq!(
            (m.format, m.parent.as_ref(), m.vsock.as_ref()),
            (1, None, None)
        );
        assert!(m.network.is_empty());
        assert_eq!(m.file(VMSTATE_FILE).unwrap().size_bytes, 21);
        assert_eq!(m.file(MEMORY_FILE).unwrap().blake3, None);
        bundle.verify(&VerifyOptions::default()).unwrap();
        // The compatible reader sees the same manifest.
        assert_eq!(&SnapshotManifest::load(&dir).unwrap(), m);
    }

    #[test]
    fn unknown_and_malformed_manifests_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = unsealed(base.path(), "s");
        for (text, check) in [
            (
                r#"{"format": 3}"#,
                (|e| matches!(e, BundleError::UnknownFormat { found: 3, .. })) as fn(&_) -> bool,
            ),
            (r#"{"format": 0}"#, |e| {
                matches!(e, BundleError::UnknownFormat { found: 0, .. })
            }),
            ("{not json", |e| matches!(e, BundleError::Malformed { .. })),
        ] {
            std::fs::write(dir.join(MANIFEST_FILE), text).unwrap();
            let err = Bundle::open(&dir).unwrap_err();
            assert!(check(&err), "{text}: {err:?}");
        }
    }

    #[test]
    fn manifests_that_contradict_themselves_are_invalid() {
        let base = tempfile::tempdir().unwrap();
        let dir = unsealed(base.path(), "s");
        let good = serde_json::to_value(Bundle::seal(&dir, draft("s")).unwrap()).unwrap();
        type Edit = fn(&mut serde_json::Value);
        let cases: [(&str, Edit); 5] = [
            ("full with a parent", |m| m["parent"] = "p".into()),
            ("diff without a parent", |m| m["kind"] = "diff".into()),
            ("file outside the bundle", |m| {
                m["files"][1]["name"] = "../../etc/shadow".into();
            }),
            ("memory not listed", |m| {
                m["files"].as_array_mut().unwrap().pop();
            }),
            ("name of another bundle", |m| m["name"] = "other".into()),
        ];
        for (what, edit) in cases {
            let mut m = good.clone();
            edit(&mut m);
            std::fs::write(dir.join(MANIFEST_FILE), m.to_string()).unwrap();
            let err = Bundle::open(&dir).unwrap_err();
            assert!(
                matches!(err, BundleError::Invalid { .. }),
                "{what}: {err:?}"
            );
        }
    }

    #[test]
    fn seal_refuses_a_diff_without_parent_and_missing_files() {
        let base = tempfile::tempdir().unwrap();
        let dir = unsealed(base.path(), "s");
        let mut d = draft("s");
        d.kind = SnapshotKind::Diff;
        assert!(matches!(
            Bundle::seal(&dir, d),
            Err(BundleError::Invalid { .. })
        ));
        assert!(!dir.join(MANIFEST_FILE).exists());
        std::fs::remove_file(dir.join(MEMORY_FILE)).unwrap();
        let err = Bundle::seal(&dir, draft("s")).unwrap_err();
        assert!(
            matches!(&err, BundleError::MissingFile { file, .. } if file == MEMORY_FILE),
            "{err:?}"
        );
    }

    #[test]
    fn missing_and_incomplete_bundles_are_told_apart() {
        let base = tempfile::tempdir().unwrap();
        assert!(matches!(
            Bundle::open(&base.path().join("gone")),
            Err(BundleError::NotFound { .. })
        ));
        let dir = unsealed(base.path(), "half");
        assert!(matches!(
            Bundle::open(&dir),
            Err(BundleError::Incomplete { .. })
        ));
    }

    #[test]
    fn firecracker_version_must_match_exactly() {
        let base = tempfile::tempdir().unwrap();
        let dir = unsealed(base.path(), "s");
        let m = Bundle::seal(&dir, draft("s")).unwrap();
        for (running, ok) in [
            ("1.16.1", true),
            ("v1.16.1", true),
            ("1.16.0", false),
            ("1.16", false),
            ("1.16.1-dev", false),
        ] {
            assert_eq!(
                m.check_firecracker_version(running).is_ok(),
                ok,
                "{running}"
            );
        }
        let err = Bundle::open(&dir)
            .unwrap()
            .verify(&VerifyOptions {
                firecracker_version: Some("1.15.0".into()),
                ..VerifyOptions::default()
            })
            .unwrap_err();
        assert!(
            matches!(err, BundleError::VersionMismatch { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn names_that_could_leave_the_snapshots_directory_are_refused() {
        for bad in ["..", ".", "../x", "a/b", "/abs", ".tmp-x", "", "a b"] {
            assert!(bad.parse::<SnapshotName>().is_err(), "{bad:?}");
        }
        // Also when they come from a manifest.
        assert!(serde_json::from_str::<SnapshotName>(r#""../x""#).is_err());
    }

    #[test]
    fn working_set_round_trips_and_is_optional() {
        let base = tempfile::tempdir().unwrap();
        let dir = unsealed(base.path(), "s");
        Bundle::seal(&dir, draft("s")).unwrap();
        let bundle = Bundle::open(&dir).unwrap();
        assert_eq!(bundle.working_set().unwrap(), None);
        let ws = WorkingSet {
            page_size_bytes: 4096,
            pages: vec![3, 0, 7],
            truncated: false,
        };
        ws.write(&dir).unwrap();
        assert_eq!(bundle.working_set().unwrap(), Some(ws));
        // It is not part of the checked files.
        bundle.verify(&VerifyOptions::default()).unwrap();
    }
}
