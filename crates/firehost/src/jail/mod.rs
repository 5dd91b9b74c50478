//! Jailed VMs: Firecracker started through its `jailer`, in a chroot of its
//! own, as an unprivileged uid, in cgroups with the spec's limits.
//!
//! # What the jailer does, and what is left to us
//!
//! `jailer --id J --exec-file F --uid U --gid G --chroot-base-dir B …`
//! (Firecracker's `docs/jailer.md`) creates `B/<name of F>/J/root` (the
//! *chroot*), copies `F` into it, creates the cgroups (`--cgroup`), joins
//! a network namespace (`--netns`), sets resource limits, enters a new
//! mount namespace and pivots into the chroot, makes `/dev/kvm`,
//! `/dev/net/tun` and `/dev/userfaultfd` there, drops to `U:G` and execs
//! Firecracker. It never cleans up: the chroot and the cgroups stay after
//! Firecracker exits. This module does the rest:
//!
//! - [`JailConfig`] (the host's settings) and [`JailSpec`] (a VM's limits)
//!   are checked up front against the jailer's rules, so a bad request
//!   fails with a clear [`JailError`] before anything exists.
//! - [`Chroot`] is the one place that maps between the paths Firecracker
//!   sees inside the jail and the host's paths of the same files. Every
//!   feature (drives, sockets, logs, snapshots) goes through it.
//! - [`stage`] puts the VM's files into the chroot: the kernel and initrd
//!   linked (or copied when a link would not be readable by the VM's uid,
//!   never changing the source's owner or mode), the root filesystem
//!   copied per VM (reflink where the filesystem can, sparse otherwise),
//!   read-only drives linked.
//! - [`cgroup`] finds which cgroup version the host can use for the limits
//!   asked, turns them into the jailer's `--cgroup` arguments, and removes
//!   the cgroups afterwards.
//! - [`uid`] hands each live VM a uid of its own from a range.
//! - [`base`] creates a missing chroot base and refuses one that a user
//!   other than root could change.
//! - [`command`] builds the jailer's command line.
//!
//! By default the jailer runs without `--daemonize` or `--new-pid-ns`, so
//! the process the manager spawns execs into Firecracker and keeps its pid
//! (and start time): stop, kill, exit watching and re-attaching work on it
//! as on an unjailed VMM, and its console reaches the manager. With either
//! flag the jailer forks instead; the pid file it writes in the chroot
//! names Firecracker, and [`pidfile::PidFileWatch`] finds it.

pub mod base;
pub mod cgroup;
pub mod command;
pub mod pidfile;
pub mod stage;
pub mod uid;

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use cgroup::{CgroupLimits, CgroupMounts, CgroupVersion};
pub use command::JailerCommand;

/// Where jails go when the configuration does not say.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
/// The uids (and gids) handed to jailed VMs when the configuration does not
/// say: high enough to collide with no ordinary account.
pub const DEFAULT_UID_RANGE: std::ops::Range<u32> = 900_000..901_000;
/// The cgroup every jailed VM's cgroup goes under.
pub const DEFAULT_PARENT_CGROUP: &str = "firehost";
/// The longest id the jailer accepts.
pub const MAX_JAIL_ID_LEN: usize = 64;

/// How the host jails VMs. Set [`crate::ManagerConfig::jail`] to jail
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// The `jailer` binary: a path, or a bare name looked up in `PATH`.
    pub jailer: PathBuf,
    /// `--chroot-base-dir`: jails are made under it (it must exist).
    pub chroot_base: PathBuf,
    /// Jail every VM, not only those whose spec asks for it.
    pub always: bool,
    /// The uids given to VMs, one per live VM unless `share_uids`; each VM's
    /// gid is its uid unless `gid` is set.
    pub uid_range: std::ops::Range<u32>,
    /// One gid for all jailed VMs, instead of each VM's uid.
    pub gid: Option<u32>,
    /// Let VMs share uids (round-robin over the range) when it runs out.
    pub share_uids: bool,
    /// `--cgroup-version`: which hierarchy holds the limits (default: the
    /// one that has the controllers the limits need).
    pub cgroup_version: Option<CgroupVersion>,
    /// `--parent-cgroup`: a relative path under the cgroup root(s).
    pub parent_cgroup: PathBuf,
    /// `--new-pid-ns`: Firecracker runs as PID 1 of a PID namespace.
    pub new_pid_ns: bool,
    /// `--daemonize`: the jailer detaches Firecracker (a new session, its
    /// stdio on `/dev/null`). Its console output is then lost: only its
    /// log file remains. Off by default.
    pub daemonize: bool,
}

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig {
            jailer: PathBuf::from("jailer"),
            chroot_base: PathBuf::from(DEFAULT_CHROOT_BASE),
            always: false,
            uid_range: DEFAULT_UID_RANGE,
            gid: None,
            share_uids: false,
            cgroup_version: None,
            parent_cgroup: PathBuf::from(DEFAULT_PARENT_CGROUP),
            new_pid_ns: false,
            daemonize: false,
        }
    }
}

/// A VM's jail: its limits, and optionally a fixed uid/gid. Part of
/// [`crate::VmSpec`]; `Some` (or [`JailConfig::always`]) jails the VM.
///
/// ```
/// use firehost::jail::JailSpec;
/// let spec = JailSpec {
///     memory_max_mib: Some(512),
///     pids_max: Some(64),
///     cpu_quota_percent: Some(150), // one and a half CPUs
///     ..JailSpec::default()
/// };
/// assert!(spec.validate().is_ok());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailSpec {
    /// Run as this uid instead of one from the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Run as this gid instead of the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Host CPUs the VMM may run on (`cpuset.cpus`), e.g. `"2-3"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    /// CPU time, in percent of one CPU per period (`cpu.max` /
    /// `cpu.cfs_quota_us`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota_percent: Option<u32>,
    /// Relative CPU weight, 1..=10000 (`cpu.weight`; `cpu.shares` on v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
    /// Memory limit of the VMM process, guest memory included, in MiB
    /// (`memory.max` / `memory.limit_in_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max_mib: Option<u64>,
    /// Most tasks (threads) in the VMM's cgroup (`pids.max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
    /// Largest file the VMM may write, in bytes (`--resource-limit fsize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsize_max_bytes: Option<u64>,
}

impl JailSpec {
    /// Checks the values on their own (not against the host).
    pub fn validate(&self) -> Result<(), JailError> {
        let bad = |field: &'static str, why: String| Err(JailError::InvalidSpec { field, why });
        if let Some(cpus) = &self.cpus
            && !cgroup::is_cpu_list(cpus)
        {
            return bad("cpus", format!("{cpus:?} is not a CPU list like 0-3,6"));
        }
        if self.cpu_quota_percent == Some(0) {
            return bad("cpu_quota_percent", "must be at least 1".into());
        }
        if let Some(w) = self.cpu_weight
            && !(1..=10_000).contains(&w)
        {
            return bad("cpu_weight", format!("{w} is outside 1..=10000"));
        }
        if self.memory_max_mib == Some(0) {
            return bad("memory_max_mib", "must be at least 1".into());
        }
        if self.pids_max == Some(0) {
            return bad("pids_max", "must be at least 1".into());
        }
        if self.uid == Some(0) || self.gid == Some(0) {
            return bad("uid", "a jailed VM never runs as root".into());
        }
        Ok(())
    }

    /// The cgroup limits this spec asks for.
    pub fn limits(&self) -> CgroupLimits {
        CgroupLimits {
            cpus: self.cpus.clone(),
            cpu_quota_percent: self.cpu_quota_percent,
            cpu_weight: self.cpu_weight,
            memory_max_mib: self.memory_max_mib,
            pids_max: self.pids_max,
        }
    }
}

/// A jailed VM as recorded: enough to find and remove everything the jail
/// made, even after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmJail {
    /// The jailer's `--id`.
    pub jail_id: String,
    /// The chroot (`<base>/<exec name>/<id>/root`).
    pub chroot: PathBuf,
    /// The uid and gid the VMM runs as.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// The cgroup directories the jailer made for the VM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroups: Vec<PathBuf>,
}

impl VmJail {
    /// The chroot as a path mapping.
    pub fn root(&self) -> Chroot {
        Chroot::new(self.chroot.clone())
    }

    /// The jail's directory (the chroot's parent), which destroy removes.
    pub fn jail_dir(&self) -> &Path {
        self.chroot.parent().unwrap_or(&self.chroot)
    }
}

/// A jail's root directory, and the mapping between the paths Firecracker
/// sees inside it and the host's paths of the same files.
///
/// ```
/// use std::path::Path;
/// use firehost::jail::Chroot;
/// let root = Chroot::new("/srv/jailer/firecracker/vm1/root");
/// assert_eq!(
///     root.host_path(Path::new("/api.sock")),
///     Path::new("/srv/jailer/firecracker/vm1/root/api.sock")
/// );
/// assert_eq!(
///     root.jail_path(Path::new("/srv/jailer/firecracker/vm1/root/drives/rootfs")),
///     Some(Path::new("/drives/rootfs").to_owned())
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chroot {
    root: PathBuf,
}

impl Chroot {
    /// The chroot at `root` (a host path).
    pub fn new(root: impl Into<PathBuf>) -> Chroot {
        Chroot { root: root.into() }
    }

    /// The host path of the chroot.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host path of `inside`, a path as Firecracker sees it. Only
    /// normal components count: `..` cannot climb out of the chroot.
    pub fn host_path(&self, inside: &Path) -> PathBuf {
        let mut host = self.root.clone();
        for component in inside.components() {
            if let Component::Normal(part) = component {
                host.push(part);
            }
        }
        host
    }

    /// The path Firecracker sees for `host`, if it is inside the chroot.
    pub fn jail_path(&self, host: &Path) -> Option<PathBuf> {
        let rest = host.strip_prefix(&self.root).ok()?;
        Some(Path::new("/").join(rest))
    }
}

/// A jail cannot be made, used or removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JailError {
    /// A VM asked for a jail, and the manager has no jail configuration.
    #[error("the manager has no jail configuration (ManagerConfig::jail)")]
    NotConfigured,
    /// The `jailer` binary is not there.
    #[error("jailer binary {} not found (set FIREHOST_JAILER or --jailer)", path.display())]
    JailerNotFound {
        /// What was looked for.
        path: PathBuf,
    },
    /// The chroot base cannot be used or made: not an absolute path, not
    /// a directory, or it cannot be created.
    #[error("chroot base {}: {why}", path.display())]
    ChrootBase {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The chroot base, or a directory on its path, could be changed by a
    /// user other than root (see [`base::ensure_chroot_base`]).
    #[error("chroot base: {} is unsafe: {why}", path.display())]
    UnsafeChrootBase {
        /// The directory at fault.
        path: PathBuf,
        /// What is wrong, with the fix.
        why: String,
    },
    /// A jail spec value is out of range.
    #[error("jail {field}: {why}")]
    InvalidSpec {
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The jail id breaks the jailer's rule (alphanumerics and `-`, at most
    /// 64 characters).
    #[error("jail id {id:?} is not 1-64 letters, digits and hyphens")]
    InvalidId {
        /// The id.
        id: String,
    },
    /// The exec file's name cannot name a chroot directory.
    #[error("exec file {} has no usable file name", path.display())]
    ExecFileName {
        /// The path.
        path: PathBuf,
    },
    /// The parent cgroup is not a plain relative path.
    #[error("parent cgroup {} must be a relative path without . or ..", path.display())]
    ParentCgroup {
        /// The path.
        path: PathBuf,
    },
    /// A chroot for this jail id exists already: another VM (or a leftover
    /// nobody owns) has it.
    #[error("jail {} exists already", path.display())]
    JailExists {
        /// The jail directory.
        path: PathBuf,
    },
    /// A snapshot taken jailed restores only into a jail, and one taken
    /// unjailed only outside one: the drive paths in its vmstate are the
    /// ones Firecracker saw.
    #[error("snapshot {name} was taken {taken}, so it cannot be restored {restored}")]
    SnapshotLayout {
        /// The snapshot.
        name: String,
        /// "in a jail" or "outside a jail".
        taken: &'static str,
        /// The other.
        restored: &'static str,
    },
    /// Every uid of the range is in use by a live VM.
    #[error("no free uid in {start}..{end}: {start}..{end} are all in use by live VMs")]
    UidsExhausted {
        /// Range start.
        start: u32,
        /// Range end (exclusive).
        end: u32,
    },
    /// A requested uid is in use by another live VM.
    #[error("uid {uid} is in use by VM {holder}")]
    UidTaken {
        /// The uid.
        uid: u32,
        /// The VM that has it.
        holder: String,
    },
    /// No cgroup hierarchy offers a controller the limits need.
    #[error("the cgroup controller {controller:?} is not available on this host ({detail})")]
    ControllerMissing {
        /// The controller.
        controller: String,
        /// Where it was looked for.
        detail: String,
    },
    /// The host's cgroup mounts cannot be read.
    #[error("cannot read the cgroup mounts")]
    Mounts {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Staging a file into the chroot failed.
    #[error("cannot {op} {}", path.display())]
    Stage {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The Firecracker pid file of a `--new-pid-ns` jail never appeared or
    /// holds no pid.
    #[error("the jailer wrote no usable pid file at {}", path.display())]
    PidFile {
        /// The file.
        path: PathBuf,
    },
    /// The jailer exited with an error before Firecracker started.
    #[error("the jailer failed ({exit}); its stderr is in the VM's console")]
    JailerFailed {
        /// How it exited.
        exit: String,
    },
    /// Removing the jail failed.
    #[error("cannot remove {}", path.display())]
    Remove {
        /// What could not be removed.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Checks `id` against the jailer's rule for `--id`.
pub fn validate_jail_id(id: &str) -> Result<(), JailError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_JAIL_ID_LEN
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(JailError::InvalidId { id: id.to_owned() })
    }
}

/// Checks the parent cgroup: relative, with only plain components.
pub fn validate_parent_cgroup(path: &Path) -> Result<(), JailError> {
    let plain = path.components().count() > 0
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        Err(JailError::ParentCgroup {
            path: path.to_owned(),
        })
    }
}

/// The chroot the jailer will use: `<base>/<exec file name>/<id>/root`,
/// with the exec file's name taken after resolving symlinks, as the jailer
/// does.
pub fn chroot_dir(base: &Path, exec_file: &Path, jail_id: &str) -> Result<PathBuf, JailError> {
    validate_jail_id(jail_id)?;
    let resolved = std::fs::canonicalize(exec_file).unwrap_or_else(|_| exec_file.to_owned());
    let name = resolved
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| JailError::ExecFileName {
            path: exec_file.to_owned(),
        })?;
    Ok(base.join(name).join(jail_id).join("root"))
}

impl JailError {
    /// The class of this failure (see [`ErrorKind`](crate::ErrorKind)).
    pub fn kind(&self) -> crate::ErrorKind {
        use crate::ErrorKind;
        match self {
            JailError::UidsExhausted { .. }
            | JailError::UidTaken { .. }
            | JailError::JailExists { .. } => ErrorKind::Conflict,
            JailError::InvalidSpec { .. }
            | JailError::InvalidId { .. }
            | JailError::ParentCgroup { .. }
            | JailError::SnapshotLayout { .. } => ErrorKind::InvalidInput,
            JailError::NotConfigured
            | JailError::JailerNotFound { .. }
            | JailError::ChrootBase { .. }
            | JailError::UnsafeChrootBase { .. }
            | JailError::ControllerMissing { .. } => ErrorKind::HostNotReady,
            JailError::ExecFileName { .. }
            | JailError::Mounts { .. }
            | JailError::Stage { .. }
            | JailError::PidFile { .. }
            | JailError::JailerFailed { .. }
            | JailError::Remove { .. } => ErrorKind::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_ids_follow_the_jailer() {
        for ok in ["a", "vm-1", "ABC-def-123", &"x".repeat(64)] {
            assert!(validate_jail_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a_b", "a.b", "a/b", "é", &"x".repeat(65)] {
            assert!(
                matches!(validate_jail_id(bad), Err(JailError::InvalidId { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn parent_cgroups_are_plain_relative_paths() {
        assert!(validate_parent_cgroup(Path::new("firehost")).is_ok());
        assert!(validate_parent_cgroup(Path::new("a/b")).is_ok());
        for bad in ["", "/abs", "../up", "a/../b", "./a"] {
            assert!(validate_parent_cgroup(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn chroot_layout_is_base_exec_name_id_root() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("firecracker-v1.16");
        std::fs::write(&real, b"").unwrap();
        let link = dir.path().join("firecracker");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        // The jailer names the directory after the resolved file.
        assert_eq!(
            chroot_dir(Path::new("/srv/j"), &link, "vm-1").unwrap(),
            Path::new("/srv/j/firecracker-v1.16/vm-1/root")
        );
        assert!(chroot_dir(Path::new("/srv/j"), &link, "vm_1").is_err());
    }

    #[test]
    fn host_paths_never_leave_the_chroot() {
        let root = Chroot::new("/j/root");
        assert_eq!(
            root.host_path(Path::new("/../../etc/passwd")),
            Path::new("/j/root/etc/passwd")
        );
        assert_eq!(root.host_path(Path::new("/")), Path::new("/j/root"));
        assert_eq!(root.jail_path(Path::new("/elsewhere")), None);
        assert_eq!(
            root.jail_path(Path::new("/j/root")),
            Some(PathBuf::from("/"))
        );
    }

    #[test]
    fn spec_values_are_checked() {
        let bad = [
            JailSpec {
                cpus: Some("zero".into()),
                ..JailSpec::default()
            },
            JailSpec {
                cpu_weight: Some(0),
                ..JailSpec::default()
            },
            JailSpec {
                cpu_quota_percent: Some(0),
                ..JailSpec::default()
            },
            JailSpec {
                memory_max_mib: Some(0),
                ..JailSpec::default()
            },
            JailSpec {
                pids_max: Some(0),
                ..JailSpec::default()
            },
            JailSpec {
                uid: Some(0),
                ..JailSpec::default()
            },
            JailSpec {
                gid: Some(0),
                ..JailSpec::default()
            },
        ];
        for spec in bad {
            assert!(spec.validate().is_err(), "{spec:?}");
        }
        assert!(JailSpec::default().validate().is_ok());
    }
}
