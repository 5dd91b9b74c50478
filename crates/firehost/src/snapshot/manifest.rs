//! The manifest: what a bundle holds and how it was taken, in the format
//! that is written to `manifest.json`, with its checks.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{BundleError, MANIFEST_FILE, MANIFEST_FORMAT, MEMORY_FILE, SnapshotName, VMSTATE_FILE};
use crate::VmId;
use crate::fsutil::{Durability, write_atomic};
use crate::spec::ResolvedSpec;

/// Full or diff (only the pages dirtied since the parent snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    /// All of guest memory.
    Full,
    /// The pages written since the parent was taken; the memory file is
    /// sparse and only restorable on top of its parent chain.
    Diff,
}

impl fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnapshotKind::Full => "full",
            SnapshotKind::Diff => "diff",
        })
    }
}

/// One network interface of the source VM, as a restore must recreate it.
///
/// One per NIC of the source VM; for the default network's NIC,
/// `guest_ip` says which address the guest keeps configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkLayout {
    /// Firecracker's `iface_id`: the restored VM must use the same.
    pub iface_id: String,
    /// The guest MAC address, which lives on in the vmstate.
    pub guest_mac: Option<String>,
    /// The TAP the source VM used; a restore overrides it
    /// (`network_overrides`).
    pub host_dev_name: String,
    /// The guest's address on the default network, which lives on in the
    /// guest's memory (absent for NICs outside the default network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_ip: Option<std::net::Ipv4Addr>,
}

/// One drive the source VM had attached, as its vmstate names it: a
/// restore reopens the file, so it must still be there, the same size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveLayout {
    /// Firecracker's `drive_id` (`rootfs` for the root filesystem).
    pub id: String,
    /// The file the source VMM had open (for a jailed source, its copy
    /// in the chroot).
    pub path: PathBuf,
    /// Its size in bytes when the snapshot was taken.
    pub size_bytes: u64,
}

impl From<&crate::net::host::VmNet> for NetworkLayout {
    fn from(net: &crate::net::host::VmNet) -> Self {
        // The guest's own address, which a translated VM's guest keeps
        // behind the host's view of it.
        let guest = net.guest_net();
        NetworkLayout {
            iface_id: net.iface_id.clone(),
            guest_mac: Some(guest.mac.to_string()),
            host_dev_name: net.tap.to_string(),
            guest_ip: Some(guest.ip),
        }
    }
}

impl From<&crate::spec::NicSpec> for NetworkLayout {
    fn from(nic: &crate::spec::NicSpec) -> Self {
        NetworkLayout {
            iface_id: nic.iface_id.clone(),
            guest_mac: nic.guest_mac.map(|m| m.to_string()),
            host_dev_name: nic.tap.to_string(),
            guest_ip: None,
        }
    }
}

/// The source VM's vsock device.
///
/// A restore gives the new VM a socket of its own and keeps the token: the
/// agent in the restored guest holds the one it read at boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockLayout {
    /// The guest CID, which lives on in the vmstate.
    pub guest_cid: u32,
    /// The source VM's unix socket; a restore overrides it
    /// (`vsock_override`).
    pub uds_path: PathBuf,
    /// The agent token the guest booted with (the bundle directory is
    /// private to the state directory's owner, like the guest memory that
    /// holds the same token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_token: Option<firehost_proto::Token>,
}

/// One file of a bundle as recorded by [`Bundle::seal`](super::Bundle::seal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The file's name inside the bundle (a plain name, no path).
    pub name: String,
    /// Its logical size in bytes.
    pub size_bytes: u64,
    /// BLAKE3 of its whole content (holes read as zeros) in lower-case hex,
    /// as `b3sum` prints it. `None` in format 1 manifests.
    pub blake3: Option<String>,
    /// Bytes in allocated (non-hole) extents: for a diff's memory file, the
    /// size of the pages it carries. `None` in format 1 manifests.
    pub data_bytes: Option<u64>,
}

/// What a bundle holds, written last so that a bundle with a manifest is
/// complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// Manifest format version ([`MANIFEST_FORMAT`] when written by this
    /// build; 1 for older bundles).
    pub format: u32,
    /// The snapshot's name.
    pub name: SnapshotName,
    /// The VM it was taken from.
    pub source_vm: VmId,
    /// Full or diff.
    pub kind: SnapshotKind,
    /// The snapshot a diff applies on top of; `None` for a full one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<SnapshotName>,
    /// `firecracker_version` reported by the VMM that wrote it: Firecracker
    /// only loads snapshots of its own version (see
    /// [`SnapshotManifest::check_firecracker_version`]).
    pub firecracker_version: String,
    /// The source VM's resolved spec (machine config and drive layout).
    pub spec: ResolvedSpec,
    /// The network interfaces. Filled in by the networking feature; empty
    /// until then.
    #[serde(default)]
    pub network: Vec<NetworkLayout>,
    /// The vsock device. Filled in by the vsock feature; absent until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockLayout>,
    /// The source VM's chroot, if it was jailed: its drives were the copies
    /// in there, which a restore copies again while they exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_chroot: Option<PathBuf>,
    /// The drives and their sizes (empty in bundles written before they
    /// were recorded: a restore then checks only that the files exist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<DriveLayout>,
    /// The drives whose content the bundle keeps, at
    /// [`DISKS_DIR`](super::DISKS_DIR)`/<id>`, as they were while the guest
    /// was paused for the snapshot: a restore copies these instead of the
    /// source's files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<String>,
    /// Size of the vmstate file in bytes.
    pub vmstate_bytes: u64,
    /// Size of the memory file in bytes (its logical size for a diff).
    pub memory_bytes: u64,
    /// Every file of the bundle with its size and checksum.
    #[serde(default)]
    pub files: Vec<FileEntry>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The CPU of the host it was taken on: a restore on a host that lacks
    /// one of its features is refused (see [`crate::cpu`]). Absent in
    /// bundles written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cpu: Option<crate::cpu::HostCpu>,
}

/// What the caller of [`Bundle::seal`](super::Bundle::seal) knows; the sizes and checksums are
/// computed from the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestDraft {
    /// The snapshot's name.
    pub name: SnapshotName,
    /// The VM it was taken from.
    pub source_vm: VmId,
    /// Full or diff.
    pub kind: SnapshotKind,
    /// The parent of a diff; must be `None` for a full snapshot.
    pub parent: Option<SnapshotName>,
    /// The version the VMM reported (`GET /version`).
    pub firecracker_version: String,
    /// The source VM's resolved spec.
    pub spec: ResolvedSpec,
    /// The source VM's network interfaces.
    pub network: Vec<NetworkLayout>,
    /// The vsock device (absent until the vsock feature fills it).
    pub vsock: Option<VsockLayout>,
    /// The source VM's chroot, if it was jailed.
    pub source_chroot: Option<PathBuf>,
    /// The source VM's drives with their sizes.
    pub drives: Vec<DriveLayout>,
    /// The drives whose content the bundle keeps (see
    /// [`SnapshotManifest::disks`]).
    pub disks: Vec<String>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The CPU of the host it is taken on.
    pub host_cpu: Option<crate::cpu::HostCpu>,
}

impl SnapshotManifest {
    /// Writes the manifest into `bundle` atomically and durably (blocking).
    /// [`Bundle::seal`](super::Bundle::seal) computes the file entries and calls this.
    pub fn write(&self, bundle: &Path) -> Result<(), BundleError> {
        let bytes = serde_json::to_vec_pretty(self).expect("manifests always serialise");
        write_atomic(&bundle.join(MANIFEST_FILE), &bytes, Durability::Synced)
            .map_err(|source| BundleError::Write { source })
    }

    /// Reads and checks the manifest of `bundle`, format 1 or 2
    /// (blocking). A missing manifest is [`BundleError::Incomplete`], a
    /// missing directory [`BundleError::NotFound`].
    pub fn load(bundle: &Path) -> Result<Self, BundleError> {
        let path = bundle.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(if bundle.is_dir() {
                    BundleError::Incomplete {
                        dir: bundle.to_owned(),
                    }
                } else {
                    BundleError::NotFound {
                        dir: bundle.to_owned(),
                    }
                });
            }
            Err(source) => {
                return Err(BundleError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        if let Ok(f) = serde_json::from_slice::<Format>(&bytes)
            && !(1..=MANIFEST_FORMAT).contains(&f.format)
        {
            return Err(BundleError::UnknownFormat {
                path,
                found: f.format,
            });
        }
        let mut manifest: SnapshotManifest =
            serde_json::from_slice(&bytes).map_err(|source| BundleError::Malformed {
                path: path.clone(),
                source,
            })?;
        if manifest.format == 1 {
            manifest.files = [
                (VMSTATE_FILE, manifest.vmstate_bytes),
                (MEMORY_FILE, manifest.memory_bytes),
            ]
            .into_iter()
            .map(|(name, size_bytes)| FileEntry {
                name: name.to_owned(),
                size_bytes,
                blake3: None,
                data_bytes: None,
            })
            .collect();
        }
        manifest.check(&path)?;
        Ok(manifest)
    }

    /// Checks what serde cannot: the parent matches the kind, the files
    /// are plain names and include the vmstate and the memory.
    pub(super) fn check(&self, path: &Path) -> Result<(), BundleError> {
        let invalid = |reason| {
            Err(BundleError::Invalid {
                path: path.to_owned(),
                reason,
            })
        };
        match (self.kind, &self.parent) {
            (SnapshotKind::Full, Some(_)) => return invalid("a full snapshot has a parent"),
            (SnapshotKind::Diff, None) => return invalid("a diff snapshot has no parent"),
            (SnapshotKind::Diff, Some(p)) if *p == self.name => {
                return invalid("a snapshot is its own parent");
            }
            _ => {}
        }
        for file in &self.files {
            if !is_plain_file_name(&file.name) {
                return invalid("a file name is not a plain name inside the bundle");
            }
        }
        for required in [VMSTATE_FILE, MEMORY_FILE] {
            if self.file(required).is_none() {
                return invalid("the vmstate or memory file is not listed");
            }
        }
        Ok(())
    }

    /// The entry for `name`, if listed.
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }

    /// Checks that a Firecracker reporting `running` (its `GET /version`)
    /// can load this snapshot. Firecracker only loads snapshots written by
    /// its own version, so the versions must be equal; a leading `v` on
    /// either side is ignored (`v1.16.1` is `1.16.1`).
    ///
    /// ```
    /// # use firehost::snapshot::SnapshotManifest;
    /// # fn f(manifest: &SnapshotManifest) {
    /// if let Err(e) = manifest.check_firecracker_version("1.16.1") {
    ///     eprintln!("{e}");
    /// }
    /// # }
    /// ```
    pub fn check_firecracker_version(&self, running: &str) -> Result<(), BundleError> {
        let bare = |v: &str| v.trim().trim_start_matches('v').to_owned();
        if bare(&self.firecracker_version) == bare(running) {
            Ok(())
        } else {
            Err(BundleError::VersionMismatch {
                name: self.name.clone(),
                snapshot: self.firecracker_version.clone(),
                running: running.to_owned(),
            })
        }
    }
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains('/') && !name.contains('\0')
}
