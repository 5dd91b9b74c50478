//! Cgroups for jailed VMs: which hierarchy can hold the limits, the
//! jailer's `--cgroup` arguments for them, and removing the cgroups after.
//!
//! Hosts differ. Production hosts are usually pure cgroup v2 (one
//! `cgroup2` mount with every controller); older or container hosts mount
//! v1 hierarchies, one per controller, sometimes beside a v2 mount that
//! holds no controllers. [`CgroupMounts`] reads what this host has (from
//! `/proc/self/mountinfo` and the v2 root's `cgroup.controllers`), and
//! [`CgroupMounts::choose`] picks the version that has every controller
//! the limits need.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::JailError;

/// The CFS period firehost uses for CPU quotas, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// A cgroup hierarchy version (`--cgroup-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupVersion {
    /// One hierarchy per controller (or group of controllers).
    #[serde(rename = "1")]
    V1,
    /// The unified hierarchy.
    #[serde(rename = "2")]
    V2,
}

impl CgroupVersion {
    /// The jailer's spelling.
    pub fn as_arg(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "1",
            CgroupVersion::V2 => "2",
        }
    }
}

impl std::str::FromStr for CgroupVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "1" | "v1" => Ok(CgroupVersion::V1),
            "2" | "v2" => Ok(CgroupVersion::V2),
            other => Err(format!("{other:?} is not a cgroup version (1 or 2)")),
        }
    }
}

/// The cgroup limits of one VMM. `None` leaves a limit as the parent has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    /// `cpuset.cpus`.
    pub cpus: Option<String>,
    /// Percent of one CPU per period.
    pub cpu_quota_percent: Option<u32>,
    /// Weight 1..=10000 (v2 scale; v1 gets the matching `cpu.shares`).
    pub cpu_weight: Option<u32>,
    /// Bytes are this many MiB.
    pub memory_max_mib: Option<u64>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
}

impl CgroupLimits {
    /// Whether no limit is set (then the jailer makes no cgroup).
    pub fn is_empty(&self) -> bool {
        self == &CgroupLimits::default()
    }

    /// The controllers these limits need, in a stable order.
    pub fn controllers(&self) -> Vec<&'static str> {
        let mut needed = Vec::new();
        if self.cpus.is_some() {
            needed.push("cpuset");
        }
        if self.cpu_quota_percent.is_some() || self.cpu_weight.is_some() {
            needed.push("cpu");
        }
        if self.memory_max_mib.is_some() {
            needed.push("memory");
        }
        if self.pids_max.is_some() {
            needed.push("pids");
        }
        needed
    }

    /// The `(file, value)` pairs to pass as `--cgroup file=value`, in the
    /// order they must be written.
    ///
    /// ```
    /// use firehost::jail::{CgroupLimits, CgroupVersion};
    /// let limits = CgroupLimits { memory_max_mib: Some(256), cpu_quota_percent: Some(50), ..Default::default() };
    /// assert_eq!(
    ///     limits.properties(CgroupVersion::V2),
    ///     [("cpu.max".to_string(), "50000 100000".to_string()),
    ///      ("memory.max".to_string(), "268435456".to_string())]
    /// );
    /// ```
    pub fn properties(&self, version: CgroupVersion) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut put = |file: &str, value: String| out.push((file.to_owned(), value));
        if let Some(cpus) = &self.cpus {
            put("cpuset.cpus", cpus.clone());
        }
        let quota_us = self
            .cpu_quota_percent
            .map(|pct| u64::from(pct) * CPU_PERIOD_US / 100);
        match version {
            CgroupVersion::V2 => {
                if let Some(quota) = quota_us {
                    put("cpu.max", format!("{quota} {CPU_PERIOD_US}"));
                }
                if let Some(weight) = self.cpu_weight {
                    put("cpu.weight", weight.to_string());
                }
                if let Some(mib) = self.memory_max_mib {
                    put("memory.max", (mib << 20).to_string());
                }
            }
            CgroupVersion::V1 => {
                if let Some(quota) = quota_us {
                    // The period first: a quota is checked against it.
                    put("cpu.cfs_period_us", CPU_PERIOD_US.to_string());
                    put("cpu.cfs_quota_us", quota.to_string());
                }
                if let Some(weight) = self.cpu_weight {
                    put("cpu.shares", shares_for_weight(weight).to_string());
                }
                if let Some(mib) = self.memory_max_mib {
                    put("memory.limit_in_bytes", (mib << 20).to_string());
                }
            }
        }
        if let Some(pids) = self.pids_max {
            put("pids.max", pids.to_string());
        }
        out
    }
}

/// The v1 `cpu.shares` that matches a v2 `cpu.weight`: the defaults (100
/// and 1024) line up, and so does every other value, proportionally.
fn shares_for_weight(weight: u32) -> u64 {
    (u64::from(weight) * 1024 / 100).max(2)
}

/// Whether `text` is a CPU list as `cpuset.cpus` takes it (`0-3,6`).
pub(crate) fn is_cpu_list(text: &str) -> bool {
    let number = |s: &str| !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    !text.is_empty()
        && text.split(',').all(|part| match part.split_once('-') {
            Some((a, b)) => {
                number(a) && number(b) && a.parse::<u32>().ok() <= b.parse::<u32>().ok()
            }
            None => number(part),
        })
}

/// The host's cgroup mounts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupMounts {
    /// v1 hierarchies: mount point and the controllers it holds.
    pub v1: Vec<(PathBuf, Vec<String>)>,
    /// The v2 mount, if any.
    pub v2: Option<PathBuf>,
    /// The controllers the v2 root offers (`cgroup.controllers`).
    pub v2_controllers: BTreeSet<String>,
}

impl CgroupMounts {
    /// Reads this host's mounts.
    pub fn read() -> Result<CgroupMounts, JailError> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|source| JailError::Mounts { source })?;
        let mut mounts = parse_mountinfo(&text);
        if let Some(v2) = &mounts.v2 {
            let listed = std::fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
            mounts.v2_controllers = listed.split_whitespace().map(str::to_owned).collect();
        }
        Ok(mounts)
    }

    fn v1_mount(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(_, controllers)| controllers.iter().any(|c| c == controller))
            .map(|(mount, _)| mount.as_path())
    }

    fn missing(&self, version: CgroupVersion, limits: &CgroupLimits) -> Option<JailError> {
        let controller = limits.controllers().into_iter().find(|c| match version {
            CgroupVersion::V2 => self.v2.is_none() || !self.v2_controllers.contains(*c),
            CgroupVersion::V1 => self.v1_mount(c).is_none(),
        })?;
        let detail = match (version, &self.v2) {
            (CgroupVersion::V2, Some(root)) => format!(
                "cgroup v2 at {} offers {:?}",
                root.display(),
                self.v2_controllers
            ),
            (CgroupVersion::V2, None) => "no cgroup v2 mount".to_owned(),
            (CgroupVersion::V1, _) => "no cgroup v1 hierarchy holds it".to_owned(),
        };
        Some(JailError::ControllerMissing {
            controller: controller.to_owned(),
            detail,
        })
    }

    /// The version to use for `limits`: `wanted` if given (it must have the
    /// controllers), else v2 if it has them all, else v1 if it has them all.
    pub fn choose(
        &self,
        wanted: Option<CgroupVersion>,
        limits: &CgroupLimits,
    ) -> Result<CgroupVersion, JailError> {
        if let Some(version) = wanted {
            return match self.missing(version, limits) {
                None => Ok(version),
                Some(e) => Err(e),
            };
        }
        match (
            self.missing(CgroupVersion::V2, limits),
            self.missing(CgroupVersion::V1, limits),
        ) {
            (None, _) if self.v2.is_some() => Ok(CgroupVersion::V2),
            (_, None) if !self.v1.is_empty() => Ok(CgroupVersion::V1),
            (None, _) => Ok(CgroupVersion::V2),
            (Some(v2), _) if self.v2.is_some() && self.v1.is_empty() => Err(v2),
            (_, Some(v1)) => Err(v1),
            (Some(v2), None) => Err(v2),
        }
    }

    /// The cgroup directories the jailer makes for `limits` under
    /// `parent/jail_id` (none without limits).
    pub fn dirs(
        &self,
        version: CgroupVersion,
        limits: &CgroupLimits,
        parent: &Path,
        jail_id: &str,
    ) -> Vec<PathBuf> {
        if limits.is_empty() {
            return Vec::new();
        }
        let mut dirs: Vec<PathBuf> = match version {
            CgroupVersion::V2 => self.v2.iter().cloned().collect(),
            CgroupVersion::V1 => limits
                .controllers()
                .iter()
                .filter_map(|c| self.v1_mount(c).map(Path::to_owned))
                .collect(),
        };
        dirs.dedup();
        dirs.into_iter()
            .map(|root| root.join(parent).join(jail_id))
            .collect()
    }
}

/// The v1 controllers; a v1 mount's other options (`rw`, `xattr`,
/// `name=systemd`…) are not.
const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

impl CgroupMounts {
    /// The cgroups named `parent/jail_id` that exist in any hierarchy: for
    /// reaping a jail whose record was never written.
    pub fn existing_dirs(&self, parent: &Path, jail_id: &str) -> Vec<PathBuf> {
        self.v1
            .iter()
            .map(|(mount, _)| mount.clone())
            .chain(self.v2.clone())
            .map(|root| root.join(parent).join(jail_id))
            .filter(|dir| dir.is_dir())
            .collect()
    }
}

/// Reads the cgroup mounts out of a `/proc/<pid>/mountinfo` text.
pub fn parse_mountinfo(text: &str) -> CgroupMounts {
    let mut mounts = CgroupMounts::default();
    for line in text.lines() {
        // `id parent major:minor root mount-point options [optional…] - fstype source super-options`
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = before.split_whitespace().nth(4) else {
            continue;
        };
        let mut after = after.split_whitespace();
        let (Some(fstype), Some(_source), Some(options)) =
            (after.next(), after.next(), after.next())
        else {
            continue;
        };
        let mount_point = PathBuf::from(unescape_mount_path(mount_point));
        match fstype {
            "cgroup2" => {
                mounts.v2.get_or_insert(mount_point);
            }
            "cgroup" => {
                let controllers: Vec<String> = options
                    .split(',')
                    .filter(|o| V1_CONTROLLERS.contains(o))
                    .map(str::to_owned)
                    .collect();
                if !controllers.is_empty() {
                    mounts.v1.push((mount_point, controllers));
                }
            }
            _ => {}
        }
    }
    mounts
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match escaped {
            Some(value) => {
                out.push(value);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes a VM's cgroup directories (leaf first, as the kernel requires
/// them empty). A cgroup still holding a task for a moment after the VMM
/// was reaped is retried briefly; one missing already is fine.
pub fn remove_dirs(dirs: &[PathBuf]) -> Result<(), JailError> {
    for dir in dirs {
        let mut delay = Duration::from_millis(1);
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        && delay < Duration::from_millis(500) =>
                {
                    // The kernel drops an exited task from its cgroup
                    // asynchronously after the reap.
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                Err(source) => {
                    return Err(JailError::Remove {
                        path: dir.clone(),
                        source,
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's layout: v1 per controller, and a v2 mount without
    /// controllers.
    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const PURE_V2: &str = "\
25 20 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    fn limits() -> CgroupLimits {
        CgroupLimits {
            cpus: Some("0-1".into()),
            cpu_quota_percent: Some(150),
            cpu_weight: Some(200),
            memory_max_mib: Some(512),
            pids_max: Some(100),
        }
    }

    #[test]
    fn mountinfo_gives_v1_hierarchies_and_the_v2_mount() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(
            mounts.v1_mount("memory"),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            mounts.v1_mount("cpu"),
            Some(Path::new("/sys/fs/cgroup/cpu"))
        );
        assert_eq!(mounts.v1_mount("name=systemd"), None);
        assert_eq!(mounts.v1_mount("xattr"), None);
        let pure = parse_mountinfo(PURE_V2);
        assert!(pure.v1.is_empty());
        assert_eq!(pure.v2, Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn a_hybrid_host_without_v2_controllers_uses_v1() {
        let mounts = parse_mountinfo(HYBRID);
        assert!(matches!(
            mounts.choose(None, &limits()),
            Ok(CgroupVersion::V1)
        ));
        // Asking for v2 there names what it lacks.
        let err = mounts
            .choose(Some(CgroupVersion::V2), &limits())
            .unwrap_err();
        assert!(
            matches!(err, JailError::ControllerMissing { .. }),
            "{err:?}"
        );
        // Without limits there is nothing to check.
        assert!(mounts.choose(None, &CgroupLimits::default()).is_ok());
    }

    #[test]
    fn pure_v2_with_controllers_uses_v2_and_names_a_missing_one() {
        let mut mounts = parse_mountinfo(PURE_V2);
        mounts.v2_controllers = ["cpuset", "cpu", "memory", "pids"].map(String::from).into();
        assert!(matches!(
            mounts.choose(None, &limits()),
            Ok(CgroupVersion::V2)
        ));
        mounts.v2_controllers.remove("pids");
        let err = mounts.choose(None, &limits()).unwrap_err();
        assert!(
            matches!(&err, JailError::ControllerMissing { controller, .. } if controller == "pids"),
            "{err:?}"
        );
        // Asking for v1 on a host without it is refused too.
        assert!(mounts.choose(Some(CgroupVersion::V1), &limits()).is_err());
    }

    #[test]
    fn properties_follow_each_versions_files() {
        let v2 = limits().properties(CgroupVersion::V2);
        assert_eq!(
            v2,
            [
                ("cpuset.cpus", "0-1"),
                ("cpu.max", "150000 100000"),
                ("cpu.weight", "200"),
                ("memory.max", "536870912"),
                ("pids.max", "100"),
            ]
            .map(|(f, v)| (f.to_owned(), v.to_owned()))
        );
        let v1 = limits().properties(CgroupVersion::V1);
        assert_eq!(
            v1,
            [
                ("cpuset.cpus", "0-1"),
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "150000"),
                ("cpu.shares", "2048"),
                ("memory.limit_in_bytes", "536870912"),
                ("pids.max", "100"),
            ]
            .map(|(f, v)| (f.to_owned(), v.to_owned()))
        );
        // Every file names its controller first, as the jailer requires.
        for (file, _) in v1.iter().chain(&v2) {
            let controller = file.split('.').next().unwrap();
            assert!(limits().controllers().contains(&controller), "{file}");
        }
    }

    #[test]
    fn dirs_are_one_per_hierarchy_under_parent_and_id() {
        let mounts = parse_mountinfo(HYBRID);
        let dirs = mounts.dirs(CgroupVersion::V1, &limits(), Path::new("firehost"), "vm-1");
        assert_eq!(
            dirs,
            ["cpuset", "cpu", "memory", "pids"]
                .map(|c| PathBuf::from(format!("/sys/fs/cgroup/{c}/firehost/vm-1")))
        );
        let v2 = mounts.dirs(CgroupVersion::V2, &limits(), Path::new("firehost"), "vm-1");
        assert_eq!(v2, [PathBuf::from("/sys/fs/cgroup/unified/firehost/vm-1")]);
        assert!(
            mounts
                .dirs(
                    CgroupVersion::V1,
                    &CgroupLimits::default(),
                    Path::new("p"),
                    "x"
                )
                .is_empty()
        );
    }

    #[test]
    fn cpu_lists_are_checked() {
        for ok in ["0", "0-3", "0-3,6", "1,2,3"] {
            assert!(is_cpu_list(ok), "{ok}");
        }
        for bad in ["", "a", "3-1", "0-", ",", "0;1", "0 1"] {
            assert!(!is_cpu_list(bad), "{bad}");
        }
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount_path(r"/plain"), "/plain");
    }

    #[test]
    fn removing_dirs_tolerates_missing_ones_and_keeps_others() {
        let root = tempfile::tempdir().unwrap();
        let a = root.path().join("firehost/vm-1");
        std::fs::create_dir_all(&a).unwrap();
        let sibling = root.path().join("firehost/vm-2");
        std::fs::create_dir_all(&sibling).unwrap();
        remove_dirs(&[a.clone(), root.path().join("firehost/gone")]).unwrap();
        assert!(!a.exists());
        assert!(sibling.exists());
    }
}
