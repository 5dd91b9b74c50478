//! The jailer's command line.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{CgroupVersion, JailError, validate_jail_id, validate_parent_cgroup};

/// A `--resource-limit` the jailer sets before it execs Firecracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceLimit {
    /// `fsize`: the largest file the process may write, in bytes.
    FileSize(u64),
    /// `no-file`: one more than the highest file descriptor it may open.
    OpenFiles(u64),
}

impl ResourceLimit {
    fn arg(self) -> String {
        match self {
            ResourceLimit::FileSize(bytes) => format!("fsize={bytes}"),
            ResourceLimit::OpenFiles(n) => format!("no-file={n}"),
        }
    }
}

/// One jailer invocation, followed by Firecracker's own arguments.
///
/// ```
/// use firehost::jail::{CgroupVersion, JailerCommand};
/// let mut jailer = JailerCommand::new("/usr/bin/jailer", "/usr/bin/firecracker", "vm-1", 900000, 900000);
/// jailer.cgroup_version = CgroupVersion::V2;
/// jailer.cgroups.push(("memory.max".into(), "268435456".into()));
/// let args = jailer.args(&["--api-sock".into(), "/api.sock".into()]);
/// assert_eq!(
///     args,
///     ["--id", "vm-1", "--exec-file", "/usr/bin/firecracker", "--uid", "900000",
///      "--gid", "900000", "--chroot-base-dir", "/srv/jailer", "--cgroup-version", "2",
///      "--cgroup", "memory.max=268435456", "--", "--api-sock", "/api.sock"]
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerCommand {
    /// The `jailer` binary.
    pub jailer: PathBuf,
    /// `--exec-file`: a statically linked Firecracker of the jailer's
    /// version.
    pub exec_file: PathBuf,
    /// `--id`.
    pub jail_id: String,
    /// `--uid`.
    pub uid: u32,
    /// `--gid`.
    pub gid: u32,
    /// `--chroot-base-dir`.
    pub chroot_base: PathBuf,
    /// `--cgroup-version`.
    pub cgroup_version: CgroupVersion,
    /// `--cgroup FILE=VALUE`, in order.
    pub cgroups: Vec<(String, String)>,
    /// `--parent-cgroup`.
    pub parent_cgroup: Option<PathBuf>,
    /// `--netns`: a network namespace file to join.
    pub netns: Option<PathBuf>,
    /// `--resource-limit`.
    pub resource_limits: Vec<ResourceLimit>,
    /// `--new-pid-ns`.
    pub new_pid_ns: bool,
    /// `--daemonize`.
    pub daemonize: bool,
}

impl JailerCommand {
    /// A jailer command with the default chroot base, cgroup v1 (the
    /// jailer's default) and nothing optional.
    pub fn new(
        jailer: impl Into<PathBuf>,
        exec_file: impl Into<PathBuf>,
        jail_id: impl Into<String>,
        uid: u32,
        gid: u32,
    ) -> JailerCommand {
        JailerCommand {
            jailer: jailer.into(),
            exec_file: exec_file.into(),
            jail_id: jail_id.into(),
            uid,
            gid,
            chroot_base: PathBuf::from(super::DEFAULT_CHROOT_BASE),
            cgroup_version: CgroupVersion::V1,
            cgroups: Vec::new(),
            parent_cgroup: None,
            netns: None,
            resource_limits: Vec::new(),
            new_pid_ns: false,
            daemonize: false,
        }
    }

    /// Checks the command against the jailer's rules, so that it fails
    /// here with a clear error instead of in the jailer.
    pub fn validate(&self) -> Result<(), JailError> {
        validate_jail_id(&self.jail_id)?;
        if let Some(parent) = &self.parent_cgroup {
            validate_parent_cgroup(parent)?;
        }
        for (file, value) in &self.cgroups {
            let plain_file = !file.is_empty()
                && file.contains('.')
                && !file.contains(['/', '='])
                && file != "."
                && file != "..";
            if !plain_file || value.is_empty() || value.contains(['=', '\n']) {
                return Err(JailError::InvalidSpec {
                    field: "cgroup",
                    why: format!("{file}={value} is not FILE=VALUE"),
                });
            }
        }
        if self.uid == 0 || self.gid == 0 {
            return Err(JailError::InvalidSpec {
                field: "uid",
                why: "a jailed VM never runs as root".into(),
            });
        }
        if !self.chroot_base.is_dir() {
            return Err(JailError::ChrootBase {
                path: self.chroot_base.clone(),
                why: "it is not a directory".into(),
            });
        }
        Ok(())
    }

    /// The whole argument list: the jailer's, then `--`, then
    /// `firecracker_args` (which must not hold `--id`: the jailer passes
    /// it).
    pub fn args(&self, firecracker_args: &[OsString]) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--id".into(),
            self.jail_id.clone().into(),
            "--exec-file".into(),
            self.exec_file.clone().into(),
            "--uid".into(),
            self.uid.to_string().into(),
            "--gid".into(),
            self.gid.to_string().into(),
            "--chroot-base-dir".into(),
            self.chroot_base.clone().into(),
            "--cgroup-version".into(),
            self.cgroup_version.as_arg().into(),
        ];
        for (file, value) in &self.cgroups {
            args.extend(["--cgroup".into(), format!("{file}={value}").into()]);
        }
        if let Some(parent) = &self.parent_cgroup {
            args.extend(["--parent-cgroup".into(), parent.clone().into()]);
        }
        if let Some(netns) = &self.netns {
            args.extend(["--netns".into(), netns.clone().into()]);
        }
        for limit in &self.resource_limits {
            args.extend(["--resource-limit".into(), limit.arg().into()]);
        }
        if self.daemonize {
            args.push("--daemonize".into());
        }
        if self.new_pid_ns {
            args.push("--new-pid-ns".into());
        }
        args.push("--".into());
        args.extend(firecracker_args.iter().cloned());
        args
    }
}

/// The pid file a `--new-pid-ns` jailer writes for Firecracker:
/// `<chroot>/<exec file name>.pid`.
pub fn pid_file(chroot: &Path, exec_file: &Path) -> PathBuf {
    let resolved = std::fs::canonicalize(exec_file).unwrap_or_else(|_| exec_file.to_owned());
    let name = resolved.file_name().unwrap_or_default().to_string_lossy();
    chroot.join(format!("{name}.pid"))
}

/// Reads a pid file the jailer wrote.
pub fn read_pid_file(path: &Path) -> Result<i32, JailError> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .filter(|pid| *pid > 0)
        .ok_or_else(|| JailError::PidFile {
            path: path.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(base: &Path) -> JailerCommand {
        let mut c = JailerCommand::new("/j", "/fc", "vm-1", 1000, 1001);
        c.chroot_base = base.to_owned();
        c
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn every_option_has_its_flag_and_firecracker_args_follow_the_separator() {
        let mut c = command(Path::new("/srv/j"));
        c.cgroup_version = CgroupVersion::V1;
        c.cgroups = vec![
            ("cpu.cfs_period_us".into(), "100000".into()),
            ("cpu.cfs_quota_us".into(), "50000".into()),
        ];
        c.parent_cgroup = Some("firehost".into());
        c.netns = Some("/run/netns/vm-1".into());
        c.resource_limits = vec![
            ResourceLimit::OpenFiles(4096),
            ResourceLimit::FileSize(1 << 30),
        ];
        c.new_pid_ns = true;
        c.daemonize = true;
        let args = strings(c.args(&["--api-sock".into(), "/api.sock".into()]));
        assert_eq!(
            args,
            [
                "--id",
                "vm-1",
                "--exec-file",
                "/fc",
                "--uid",
                "1000",
                "--gid",
                "1001",
                "--chroot-base-dir",
                "/srv/j",
                "--cgroup-version",
                "1",
                "--cgroup",
                "cpu.cfs_period_us=100000",
                "--cgroup",
                "cpu.cfs_quota_us=50000",
                "--parent-cgroup",
                "firehost",
                "--netns",
                "/run/netns/vm-1",
                "--resource-limit",
                "no-file=4096",
                "--resource-limit",
                "fsize=1073741824",
                "--daemonize",
                "--new-pid-ns",
                "--",
                "--api-sock",
                "/api.sock",
            ]
        );
    }

    #[test]
    fn the_minimal_command_has_only_the_required_flags() {
        let args = strings(command(Path::new("/b")).args(&[]));
        assert_eq!(args.last().map(String::as_str), Some("--"));
        assert!(
            !args
                .iter()
                .any(|a| a == "--daemonize" || a == "--new-pid-ns")
        );
        assert!(!args.iter().any(|a| a == "--cgroup" || a == "--netns"));
    }

    #[test]
    fn validation_follows_the_jailers_rules() {
        let base = tempfile::tempdir().unwrap();
        assert!(command(base.path()).validate().is_ok());
        let mut bad_id = command(base.path());
        bad_id.jail_id = "vm_1".into();
        assert!(matches!(
            bad_id.validate(),
            Err(JailError::InvalidId { .. })
        ));
        let mut root = command(base.path());
        root.uid = 0;
        assert!(root.validate().is_err());
        let mut parent = command(base.path());
        parent.parent_cgroup = Some("/abs".into());
        assert!(matches!(
            parent.validate(),
            Err(JailError::ParentCgroup { .. })
        ));
        for (file, value) in [
            ("../x.y", "1"),
            ("memory.max", ""),
            ("nodot", "1"),
            ("a.b", "x=y"),
        ] {
            let mut c = command(base.path());
            c.cgroups = vec![(file.into(), value.into())];
            assert!(c.validate().is_err(), "{file}={value}");
        }
        let missing = command(&base.path().join("missing"));
        assert!(matches!(
            missing.validate(),
            Err(JailError::ChrootBase { .. })
        ));
    }

    #[test]
    fn pid_files_are_read_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firecracker.pid");
        std::fs::write(&path, "1234").unwrap();
        assert_eq!(read_pid_file(&path).unwrap(), 1234);
        std::fs::write(&path, "x").unwrap();
        assert!(read_pid_file(&path).is_err());
        assert!(read_pid_file(&dir.path().join("none")).is_err());
        assert_eq!(
            pid_file(Path::new("/j/root"), Path::new("/nonexistent/firecracker")),
            Path::new("/j/root/firecracker.pid")
        );
    }
}
