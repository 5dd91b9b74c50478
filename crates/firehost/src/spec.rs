//! What a VM should look like: [`VmSpec`] (per-VM overrides), [`HostDefaults`]
//! (the host's fallbacks) and [`ResolvedSpec`] (the two merged and checked).
//!
//! Everything here is validated before any process starts, so a bad spec
//! costs nothing on the host. The rules mirror Firecracker's own (vCPU count,
//! SMT, memory, command-line length, drive ids) so a spec that passes here
//! is not rejected later by the VMM for the same reason.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::vocab::{IfName, MacAddr, MmdsSpec, NetSpec};
use crate::vsock::VsockSpec;

/// Firecracker's upper limit on vCPUs.
pub const MAX_VCPUS: u8 = 32;
/// Firecracker refuses a zero-sized guest; this is the smallest it accepts.
pub const MIN_MEM_MIB: u32 = 1;
/// Longest kernel command line Firecracker accepts on `x86_64`, in bytes.
pub const MAX_BOOT_ARGS_LEN: usize = 2048;
/// The longest drive id Firecracker accepts.
pub const MAX_DRIVE_ID_LEN: usize = 64;
/// The drive id firehost gives the root filesystem; extra drives can't use it.
pub const ROOTFS_DRIVE_ID: &str = "rootfs";
/// Boot arguments used when neither the spec nor the host sets any: serial
/// console on ttyS0, reboot through the keyboard controller (so Ctrl-Alt-Del
/// and `reboot` end the VMM), panic ends the guest, no PCI probing.
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off";

/// Per-VM settings. Every `None` falls back to [`HostDefaults`].
///
/// # Examples
///
/// ```
/// use firehost::VmSpec;
///
/// let spec = VmSpec {
///     vcpus: Some(2),
///     mem_mib: Some(256),
///     ..VmSpec::default()
/// };
/// assert!(spec.kernel.is_none()); // taken from the host defaults
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmSpec {
    /// Guest kernel image (uncompressed ELF on `x86_64`).
    pub kernel: Option<PathBuf>,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Root filesystem image, attached as drive `rootfs`.
    pub rootfs: Option<PathBuf>,
    /// Attach the root filesystem read-only.
    pub rootfs_read_only: Option<bool>,
    /// The writable root filesystem is shared on purpose: other live VMs
    /// that share it too may write to the same file (the guests must
    /// coordinate, as with a cluster filesystem). Without it, a second live
    /// VM writing to the file is refused
    /// ([`VmError::DriveInUse`](crate::VmError::DriveInUse)), and a clone
    /// gets a copy of its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rootfs_shared: bool,
    /// Number of vCPUs, 1 to 32 (1 or even when SMT is on).
    pub vcpus: Option<u8>,
    /// Guest memory in MiB.
    pub mem_mib: Option<u32>,
    /// Simultaneous multithreading (`x86_64` only).
    pub smt: Option<bool>,
    /// Kernel command line.
    pub boot_args: Option<String>,
    /// Drives besides the root filesystem, in attach order.
    pub extra_drives: Vec<DriveSpec>,
    /// Track dirty pages so that diff snapshots can be taken.
    pub track_dirty_pages: Option<bool>,
    /// Whether the guest is expected to shut down on Ctrl-Alt-Del, so that
    /// stop tries it before signalling the VMM.
    pub graceful_shutdown: Option<bool>,
    /// A NIC on the manager's default network (see [`crate::net::host`]).
    /// `None`: the VM has no network.
    pub net: Option<NetSpec>,
    /// NICs on TAPs the operator manages, after the default network's
    /// `eth0`, in order.
    pub extra_nics: Vec<NicSpec>,
    /// A vsock device (the channel to the guest agent; see
    /// [`crate::agent`]). Its socket lives in the VM's directory, and the
    /// guest gets the agent's token on its kernel command line.
    pub vsock: Option<VsockSpec>,
    /// Metadata for the guest at `169.254.169.254` (needs `net`; see
    /// [`crate::mmds`]).
    pub mmds: Option<MmdsSpec>,
    /// Run the VMM through Firecracker's jailer, with these limits (see
    /// [`crate::jail`]; the manager needs a [`JailConfig`]). A manager
    /// whose configuration jails every VM uses the default when `None`.
    ///
    /// [`JailConfig`]: crate::jail::JailConfig
    pub jail: Option<crate::jail::JailSpec>,
}

/// A NIC on a TAP that the operator manages: firehost hands it to
/// Firecracker and nothing more (no address, bridge, rules or cleanup; a
/// VM restored from a snapshot uses the same TAP again).
///
/// # Examples
///
/// ```
/// use firehost::spec::NicSpec;
///
/// let nic = NicSpec {
///     iface_id: "eth1".into(),
///     tap: "mytap0".parse().unwrap(),
///     guest_mac: Some("06:00:00:00:00:09".parse().unwrap()),
/// };
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// Firecracker's interface id: ASCII letters, digits and `_`, at most
    /// 64; `eth0` belongs to the default network when the VM has one.
    pub iface_id: String,
    /// The host TAP, which must exist when the VM is created.
    pub tap: IfName,
    /// The guest's MAC; Firecracker picks one when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<MacAddr>,
}

/// A drive besides the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveSpec {
    /// Firecracker drive id: ASCII letters, digits and `_`, at most 64.
    pub id: String,
    /// Backing file on the host.
    pub path: PathBuf,
    /// Attach read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Writable and shared on purpose with other live VMs (see
    /// [`VmSpec::rootfs_shared`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

/// The host's fallbacks for everything a [`VmSpec`] leaves unset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostDefaults {
    /// Kernel used when the spec names none.
    pub kernel: Option<PathBuf>,
    /// Initrd used when the spec names none.
    pub initrd: Option<PathBuf>,
    /// Root filesystem used when the spec names none.
    pub rootfs: Option<PathBuf>,
    /// Default for [`VmSpec::rootfs_read_only`].
    pub rootfs_read_only: bool,
    /// Default vCPU count.
    pub vcpus: u8,
    /// Default guest memory in MiB.
    pub mem_mib: u32,
    /// Default for SMT.
    pub smt: bool,
    /// Default kernel command line.
    pub boot_args: String,
    /// Default for dirty-page tracking.
    pub track_dirty_pages: bool,
    /// Default for [`VmSpec::graceful_shutdown`].
    pub graceful_shutdown: bool,
}

impl Default for HostDefaults {
    fn default() -> Self {
        HostDefaults {
            kernel: None,
            initrd: None,
            rootfs: None,
            rootfs_read_only: false,
            vcpus: 1,
            mem_mib: 128,
            smt: false,
            boot_args: DEFAULT_BOOT_ARGS.to_owned(),
            track_dirty_pages: false,
            graceful_shutdown: true,
        }
    }
}

/// A spec merged with the host defaults and checked: every path is absolute,
/// canonical and names a regular file that existed at validation time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedSpec {
    /// Canonical kernel path.
    pub kernel: PathBuf,
    /// Canonical initrd path.
    pub initrd: Option<PathBuf>,
    /// Canonical root filesystem path.
    pub rootfs: Option<PathBuf>,
    /// Root filesystem is read-only.
    pub rootfs_read_only: bool,
    /// The writable root filesystem is shared on purpose (see
    /// [`VmSpec::rootfs_shared`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rootfs_shared: bool,
    /// vCPU count.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// SMT on.
    pub smt: bool,
    /// Kernel command line.
    pub boot_args: String,
    /// Extra drives with canonical paths.
    pub extra_drives: Vec<DriveSpec>,
    /// Dirty-page tracking on.
    pub track_dirty_pages: bool,
    /// Stop tries Ctrl-Alt-Del first.
    pub graceful_shutdown: bool,
    /// The default-network NIC asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<NetSpec>,
    /// Operator-managed NICs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_nics: Vec<NicSpec>,
    /// The vsock device asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockSpec>,
    /// The metadata service asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmds: Option<MmdsSpec>,
    /// The jail asked for (the manager's configuration may jail a VM
    /// whose spec did not ask).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<crate::jail::JailSpec>,
}

#[cfg(test)]
impl ResolvedSpec {
    /// A small unjailed spec with made-up paths, for unit tests.
    pub(crate) fn for_tests() -> ResolvedSpec {
        ResolvedSpec {
            kernel: "/k".into(),
            initrd: None,
            rootfs: Some("/r".into()),
            rootfs_read_only: false,
            rootfs_shared: false,
            vcpus: 1,
            mem_mib: 128,
            smt: false,
            boot_args: "console=ttyS0".into(),
            extra_drives: vec![],
            track_dirty_pages: true,
            graceful_shutdown: true,
            net: None,
            extra_nics: vec![],
            vsock: None,
            mmds: None,
            jail: None,
        }
    }
}

/// Which file of a spec a [`SpecError`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRole {
    /// The kernel image.
    Kernel,
    /// The initrd.
    Initrd,
    /// The root filesystem.
    Rootfs,
    /// An extra drive, by id.
    Drive(String),
}

impl std::fmt::Display for FileRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileRole::Kernel => f.write_str("kernel"),
            FileRole::Initrd => f.write_str("initrd"),
            FileRole::Rootfs => f.write_str("rootfs"),
            FileRole::Drive(id) => write!(f, "drive {id:?}"),
        }
    }
}

/// Why a spec was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The jail's limits are out of range.
    #[error("invalid jail")]
    Jail(#[source] crate::jail::JailError),
    /// Neither the spec nor the host defaults name a kernel.
    #[error("no kernel: set one in the VM spec or in the host defaults")]
    MissingKernel,
    /// A file could not be resolved.
    #[error("{role} {path:?} cannot be used")]
    File {
        /// Which file.
        role: FileRole,
        /// The path as given.
        path: PathBuf,
        /// Why (not found, permission denied…).
        #[source]
        source: std::io::Error,
    },
    /// A path names something other than a regular file.
    #[error("{role} {path:?} is not a regular file")]
    NotAFile {
        /// Which file.
        role: FileRole,
        /// The path as given.
        path: PathBuf,
    },
    /// A path that is not valid UTF-8 (Firecracker's JSON API can't carry it).
    #[error("{role} {path:?} is not valid UTF-8")]
    NonUtf8Path {
        /// Which file.
        role: FileRole,
        /// The path as given.
        path: PathBuf,
    },
    /// vCPU count outside 1..=32.
    #[error("{vcpus} vCPUs requested; Firecracker allows 1 to {MAX_VCPUS}")]
    VcpuCount {
        /// The requested count.
        vcpus: u8,
    },
    /// SMT with an odd vCPU count above 1.
    #[error("with SMT on, the vCPU count must be 1 or even, not {vcpus}")]
    SmtOddVcpus {
        /// The requested count.
        vcpus: u8,
    },
    /// SMT asked for on an architecture without it.
    #[error("SMT is only available on x86_64")]
    SmtUnsupported,
    /// Too little memory.
    #[error("{mem_mib} MiB of memory requested; the minimum is {MIN_MEM_MIB} MiB")]
    MemoryTooSmall {
        /// The requested size.
        mem_mib: u32,
    },
    /// Kernel command line too long.
    #[error("boot arguments are {len} bytes; the limit is {MAX_BOOT_ARGS_LEN}")]
    BootArgsTooLong {
        /// Their length.
        len: usize,
    },
    /// Kernel command line with a byte the kernel can't take.
    #[error("boot arguments must be printable ASCII")]
    BootArgsNotPrintable,
    /// A drive id that Firecracker would refuse.
    #[error("drive id {id:?} must be 1 to {MAX_DRIVE_ID_LEN} ASCII letters, digits or '_'")]
    BadDriveId {
        /// The id.
        id: String,
    },
    /// Two drives with one id, or an extra drive named `rootfs`.
    #[error("drive id {id:?} is used twice (\"rootfs\" is the root filesystem's)")]
    DuplicateDriveId {
        /// The id.
        id: String,
    },
    /// Metadata was asked for a VM without the default network (the
    /// service answers on its `eth0`).
    #[error("the metadata service (mmds) needs the default network (net)")]
    MmdsNeedsNetwork,
    /// The metadata is not a JSON object.
    #[error("mmds data must be a JSON object")]
    MmdsNotAnObject,
    /// The vsock guest CID is reserved (0 to 2).
    #[error("vsock guest CID {cid} is reserved; use 3 or more")]
    VsockCid {
        /// The CID given.
        cid: u32,
    },
    /// A NIC id is empty, longer than 64 bytes, or has a character outside
    /// `[A-Za-z0-9_]`.
    #[error("network interface id {id:?} must be 1-64 ASCII letters, digits or '_'")]
    BadNicId {
        /// The id.
        id: String,
    },
    /// Two NICs with one interface id or one TAP (`eth0` is the default
    /// network's when the VM has one).
    #[error("network interface {what} {value:?} is used twice")]
    DuplicateNic {
        /// `"id"` or `"TAP"`.
        what: &'static str,
        /// The id or TAP name.
        value: String,
    },
}

impl VmSpec {
    /// Merges the spec with `defaults` and checks the result, touching the
    /// file system only to resolve and stat the named files.
    ///
    /// This does blocking file-system calls; async callers run it on the
    /// blocking pool.
    pub fn resolve(&self, defaults: &HostDefaults) -> Result<ResolvedSpec, SpecError> {
        let vcpus = self.vcpus.unwrap_or(defaults.vcpus);
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(SpecError::VcpuCount { vcpus });
        }
        let smt = self.smt.unwrap_or(defaults.smt);
        if smt && !cfg!(target_arch = "x86_64") {
            return Err(SpecError::SmtUnsupported);
        }
        if smt && vcpus > 1 && vcpus % 2 == 1 {
            return Err(SpecError::SmtOddVcpus { vcpus });
        }
        let mem_mib = self.mem_mib.unwrap_or(defaults.mem_mib);
        if mem_mib < MIN_MEM_MIB {
            return Err(SpecError::MemoryTooSmall { mem_mib });
        }
        let boot_args = self
            .boot_args
            .clone()
            .unwrap_or_else(|| defaults.boot_args.clone());
        if boot_args.len() > MAX_BOOT_ARGS_LEN {
            return Err(SpecError::BootArgsTooLong {
                len: boot_args.len(),
            });
        }
        if !boot_args.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            return Err(SpecError::BootArgsNotPrintable);
        }
        let mut seen = vec![ROOTFS_DRIVE_ID.to_owned()];
        for drive in &self.extra_drives {
            check_drive_id(&drive.id)?;
            if seen.contains(&drive.id) {
                return Err(SpecError::DuplicateDriveId {
                    id: drive.id.clone(),
                });
            }
            seen.push(drive.id.clone());
        }

        check_nics(self.net.is_some(), &self.extra_nics)?;
        if let Some(mmds) = &self.mmds {
            if self.net.is_none() {
                return Err(SpecError::MmdsNeedsNetwork);
            }
            if !(mmds.data.is_object() || mmds.data.is_null()) {
                return Err(SpecError::MmdsNotAnObject);
            }
        }
        if let Some(vsock) = &self.vsock
            && vsock.guest_cid < 3
        {
            return Err(SpecError::VsockCid {
                cid: vsock.guest_cid,
            });
        }

        if let Some(jail) = &self.jail {
            jail.validate().map_err(SpecError::Jail)?;
        }
        let kernel = self
            .kernel
            .as_ref()
            .or(defaults.kernel.as_ref())
            .ok_or(SpecError::MissingKernel)?;
        let kernel = resolve_file(FileRole::Kernel, kernel)?;
        let initrd = self
            .initrd
            .as_ref()
            .or(defaults.initrd.as_ref())
            .map(|p| resolve_file(FileRole::Initrd, p))
            .transpose()?;
        let rootfs = self
            .rootfs
            .as_ref()
            .or(defaults.rootfs.as_ref())
            .map(|p| resolve_file(FileRole::Rootfs, p))
            .transpose()?;
        let extra_drives = self
            .extra_drives
            .iter()
            .map(|d| {
                Ok(DriveSpec {
                    id: d.id.clone(),
                    path: resolve_file(FileRole::Drive(d.id.clone()), &d.path)?,
                    read_only: d.read_only,
                    shared: d.shared,
                })
            })
            .collect::<Result<Vec<_>, SpecError>>()?;

        Ok(ResolvedSpec {
            kernel,
            initrd,
            rootfs,
            rootfs_read_only: self.rootfs_read_only.unwrap_or(defaults.rootfs_read_only),
            rootfs_shared: self.rootfs_shared,
            vcpus,
            mem_mib,
            smt,
            boot_args,
            extra_drives,
            track_dirty_pages: self.track_dirty_pages.unwrap_or(defaults.track_dirty_pages),
            graceful_shutdown: self.graceful_shutdown.unwrap_or(defaults.graceful_shutdown),
            net: self.net.clone(),
            extra_nics: self.extra_nics.clone(),
            vsock: self.vsock.clone(),
            mmds: self.mmds.clone(),
            jail: self.jail.clone(),
        })
    }
}

/// Interface ids are valid and unique (with the default network's `eth0`
/// when `default_net`), and no TAP is used twice.
fn check_nics(default_net: bool, nics: &[NicSpec]) -> Result<(), SpecError> {
    let mut ids: Vec<&str> = Vec::new();
    if default_net {
        ids.push(crate::vocab::DEFAULT_IFACE_ID);
    }
    let mut taps: Vec<&IfName> = Vec::new();
    for nic in nics {
        let id = nic.iface_id.as_str();
        let valid = !id.is_empty()
            && id.len() <= MAX_DRIVE_ID_LEN
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(SpecError::BadNicId { id: id.to_owned() });
        }
        if ids.contains(&id) {
            return Err(SpecError::DuplicateNic {
                what: "id",
                value: id.to_owned(),
            });
        }
        if taps.contains(&&nic.tap) {
            return Err(SpecError::DuplicateNic {
                what: "TAP",
                value: nic.tap.to_string(),
            });
        }
        ids.push(id);
        taps.push(&nic.tap);
    }
    Ok(())
}

fn check_drive_id(id: &str) -> Result<(), SpecError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_DRIVE_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadDriveId { id: id.to_owned() })
    }
}

fn resolve_file(role: FileRole, path: &Path) -> Result<PathBuf, SpecError> {
    let canonical = std::fs::canonicalize(path).map_err(|source| SpecError::File {
        role: role.clone(),
        path: path.to_owned(),
        source,
    })?;
    let meta = std::fs::metadata(&canonical).map_err(|source| SpecError::File {
        role: role.clone(),
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(SpecError::NotAFile {
            role,
            path: path.to_owned(),
        });
    }
    // Firecracker's API is JSON: a path must be valid UTF-8 to reach it.
    if canonical.to_str().is_none() {
        return Err(SpecError::NonUtf8Path {
            role,
            path: path.to_owned(),
        });
    }
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(id: &str, tap: &str) -> NicSpec {
        NicSpec {
            iface_id: id.into(),
            tap: tap.parse().unwrap(),
            guest_mac: None,
        }
    }

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            for name in ["vmlinux", "rootfs.ext4", "data.img"] {
                std::fs::write(dir.path().join(name), b"x").unwrap();
            }
            Files { dir }
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
        fn spec(&self) -> VmSpec {
            VmSpec {
                kernel: Some(self.path("vmlinux")),
                rootfs: Some(self.path("rootfs.ext4")),
                ..VmSpec::default()
            }
        }
    }

    #[test]
    fn unset_fields_fall_back_to_host_defaults() {
        let files = Files::new();
        let defaults = HostDefaults {
            vcpus: 4,
            mem_mib: 512,
            ..HostDefaults::default()
        };
        let resolved = files.spec().resolve(&defaults).unwrap();
        assert_eq!(resolved.vcpus, 4);
        assert_eq!(resolved.mem_mib, 512);
        assert_eq!(resolved.boot_args, DEFAULT_BOOT_ARGS);
        assert!(resolved.graceful_shutdown);
        assert!(resolved.kernel.is_absolute());
    }

    #[test]
    fn spec_values_override_host_defaults() {
        let files = Files::new();
        let spec = VmSpec {
            vcpus: Some(2),
            mem_mib: Some(64),
            boot_args: Some("console=ttyS0".into()),
            rootfs_read_only: Some(true),
            ..files.spec()
        };
        let resolved = spec.resolve(&HostDefaults::default()).unwrap();
        assert_eq!(
            (resolved.vcpus, resolved.mem_mib, resolved.rootfs_read_only),
            (2, 64, true)
        );
        assert_eq!(resolved.boot_args, "console=ttyS0");
    }

    #[test]
    fn kernel_comes_from_host_defaults_when_spec_has_none() {
        let files = Files::new();
        let defaults = HostDefaults {
            kernel: Some(files.path("vmlinux")),
            ..HostDefaults::default()
        };
        let resolved = VmSpec::default().resolve(&defaults).unwrap();
        assert!(resolved.kernel.ends_with("vmlinux"));
        assert!(resolved.rootfs.is_none());
    }

    #[test]
    fn invalid_specs_are_refused_with_the_matching_error() {
        let files = Files::new();
        let base = files.spec();
        let d = |id: &str| DriveSpec {
            id: id.into(),
            path: files.path("data.img"),
            read_only: false,
            shared: false,
        };
        type Case = (&'static str, VmSpec, fn(&SpecError) -> bool);
        let cases: Vec<Case> = vec![
            (
                "zero vcpus",
                VmSpec {
                    vcpus: Some(0),
                    ..base.clone()
                },
                |e| matches!(e, SpecError::VcpuCount { vcpus: 0 }),
            ),
            (
                "33 vcpus",
                VmSpec {
                    vcpus: Some(33),
                    ..base.clone()
                },
                |e| matches!(e, SpecError::VcpuCount { vcpus: 33 }),
            ),
            (
                "smt with 3 vcpus",
                VmSpec {
                    vcpus: Some(3),
                    smt: Some(true),
                    ..base.clone()
                },
                |e| {
                    matches!(
                        e,
                        SpecError::SmtOddVcpus { vcpus: 3 } | SpecError::SmtUnsupported
                    )
                },
            ),
            (
                "metadata without a network",
                VmSpec {
                    mmds: Some(crate::vocab::MmdsSpec::default()),
                    ..base.clone()
                },
                |e| matches!(e, SpecError::MmdsNeedsNetwork),
            ),
            (
                "metadata that is not an object",
                VmSpec {
                    net: Some(NetSpec::default()),
                    mmds: Some(crate::vocab::MmdsSpec {
                        data: serde_json::json!([1, 2]),
                        ..Default::default()
                    }),
                    ..base.clone()
                },
                |e| matches!(e, SpecError::MmdsNotAnObject),
            ),
            (
                "bad nic id",
                VmSpec {
                    extra_nics: vec![nic("eth-1", "t1")],
                    ..base.clone()
                },
                |e| matches!(e, SpecError::BadNicId { .. }),
            ),
            (
                "nic id eth0 beside the default network",
                VmSpec {
                    net: Some(NetSpec::default()),
                    extra_nics: vec![nic("eth0", "t1")],
                    ..base.clone()
                },
                |e| matches!(e, SpecError::DuplicateNic { what: "id", .. }),
            ),
            (
                "two nics on one tap",
                VmSpec {
                    extra_nics: vec![nic("eth1", "t1"), nic("eth2", "t1")],
                    ..base.clone()
                },
                |e| matches!(e, SpecError::DuplicateNic { what: "TAP", .. }),
            ),
            (
                "zero memory",
                VmSpec {
                    mem_mib: Some(0),
                    ..base.clone()
                },
                |e| matches!(e, SpecError::MemoryTooSmall { mem_mib: 0 }),
            ),
            (
                "no kernel",
                VmSpec {
                    kernel: None,
                    ..base.clone()
                },
                |e| matches!(e, SpecError::MissingKernel),
            ),
            (
                "missing kernel file",
                VmSpec {
                    kernel: Some(files.path("nope")),
                    ..base.clone()
                },
                |e| {
                    matches!(
                        e,
                        SpecError::File {
                            role: FileRole::Kernel,
                            ..
                        }
                    )
                },
            ),
            (
                "rootfs is a directory",
                VmSpec {
                    rootfs: Some(files.dir.path().to_owned()),
                    ..base.clone()
                },
                |e| {
                    matches!(
                        e,
                        SpecError::NotAFile {
                            role: FileRole::Rootfs,
                            ..
                        }
                    )
                },
            ),
            (
                "boot args too long",
                VmSpec {
                    boot_args: Some("a".repeat(2049)),
                    ..base.clone()
                },
                |e| matches!(e, SpecError::BootArgsTooLong { len: 2049 }),
            ),
            (
                "boot args with newline",
                VmSpec {
                    boot_args: Some("a\nb".into()),
                    ..base.clone()
                },
                |e| matches!(e, SpecError::BootArgsNotPrintable),
            ),
            (
                "bad drive id",
                VmSpec {
                    extra_drives: vec![d("a-b")],
                    ..base.clone()
                },
                |e| matches!(e, SpecError::BadDriveId { .. }),
            ),
            (
                "drive named rootfs",
                VmSpec {
                    extra_drives: vec![d("rootfs")],
                    ..base.clone()
                },
                |e| matches!(e, SpecError::DuplicateDriveId { .. }),
            ),
            (
                "duplicate drive",
                VmSpec {
                    extra_drives: vec![d("data"), d("data")],
                    ..base.clone()
                },
                |e| matches!(e, SpecError::DuplicateDriveId { .. }),
            ),
            (
                "missing drive file",
                VmSpec {
                    extra_drives: vec![DriveSpec {
                        id: "data".into(),
                        path: files.path("missing.img"),
                        read_only: true,
                        shared: false,
                    }],
                    ..base.clone()
                },
                |e| {
                    matches!(
                        e,
                        SpecError::File {
                            role: FileRole::Drive(_),
                            ..
                        }
                    )
                },
            ),
        ];
        for (name, spec, is_expected) in cases {
            let err = spec.resolve(&HostDefaults::default()).unwrap_err();
            assert!(is_expected(&err), "{name}: unexpected error {err:?}");
        }
    }

    #[test]
    fn smt_with_even_vcpus_is_accepted_on_x86() {
        let files = Files::new();
        let spec = VmSpec {
            vcpus: Some(2),
            smt: Some(true),
            ..files.spec()
        };
        let result = spec.resolve(&HostDefaults::default());
        assert_eq!(result.is_ok(), cfg!(target_arch = "x86_64"));
    }
}
