//! Host checks: can this machine run Firecracker VMs, and if not, what to fix.
//!
//! An operator who installs firehost on a new host wants one answer before
//! the first VM fails: is everything firehost needs there, and if not, what
//! exactly to do about it. [`run_checks`] answers with one [`Check`] per
//! prerequisite, each with a status, what was found and a one-line fix.
//!
//! | name | what | fails when |
//! | --- | --- | --- |
//! | `kvm` | `/dev/kvm` exists and opens read-write | missing or not accessible |
//! | `firecracker` | the binary is found and `--version` answers | not found, does not answer (warns on a version other than [`TESTED_FIRECRACKER`]) |
//! | `jailer` | likewise for the jailer | never (warns) |
//! | `chroot_base` | the jailer's chroot base is safe (root-owned, writable by no one else), or can be created so | never (warns) |
//! | `agent` | the guest agent for `image build` is found and statically linked (a guest image may have no loader for it) | never (warns) |
//! | `host_kernel` | the running kernel's version | below [`MIN_HOST_KERNEL`] (warns below [`RECOMMENDED_HOST_KERNEL`]) |
//! | `tun` | `/dev/net/tun` opens read-write | never (warns: only VM networking needs it) |
//! | `nft` | `libnftables` loads (the default network's firewall needs it) and the `nft` tool is on `PATH` | never (warns) |
//! | `cgroup` | the cgroup layout (v2, v1 or hybrid) | never (information; warns if none is mounted) |
//! | `userfaultfd` | restore with a page server is possible | never (warns) |
//! | `state_dir` | the state directory exists (created 0700 if missing) and is writable | not creatable or not writable |
//!
//! The names are stable: programs may match on them. New checks may be
//! added. The checks are synchronous and quick (the slowest runs
//! `firecracker --version`, bounded by [`VERSION_TIMEOUT`]); call them from
//! a blocking context (`spawn_blocking` inside a runtime).
//!
//! ```no_run
//! use firehost::doctor::{CheckStatus, DoctorConfig, run_checks};
//!
//! let checks = run_checks(&DoctorConfig::from_env("/var/lib/firehost"));
//! for check in &checks {
//!     println!("{:?} {}: {}", check.status, check.name, check.detail);
//! }
//! let ready = checks.iter().all(|c| c.status != CheckStatus::Fail);
//! # let _ = ready;
//! ```

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::fsutil::find_binary;
use crate::socket_path::MAX_SOCKET_PATH_BYTES;

/// The environment variable that names the Firecracker binary.
pub const FIRECRACKER_ENV: &str = "FIREHOST_FIRECRACKER";
/// The environment variable that names the jailer binary.
pub const JAILER_ENV: &str = "FIREHOST_JAILER";
/// The Firecracker release line firehost is tested against (major, minor).
pub const TESTED_FIRECRACKER: (u32, u32) = (1, 16);
/// Below this host kernel (major, minor) firehost cannot work: it watches
/// VMMs through pidfds (`pidfd_open` 5.3, `waitid(P_PIDFD)` 5.4) and
/// Firecracker itself supports hosts from 5.10.
pub const MIN_HOST_KERNEL: (u32, u32) = (5, 10);
/// Host kernels below this (major, minor) work but get a warning:
/// Firecracker v1.16 is tested on 5.10 and 6.1, and `/dev/userfaultfd`
/// arrived in 6.1.
pub const RECOMMENDED_HOST_KERNEL: (u32, u32) = (6, 1);
/// How long `firecracker --version` (or the jailer's) may take.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// What to check. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoctorConfig {
    /// The Firecracker binary: a path, or a bare name looked up in `PATH`.
    pub firecracker: PathBuf,
    /// The jailer binary. `None` looks for `jailer` next to the Firecracker
    /// binary, then in `PATH`.
    pub jailer: Option<PathBuf>,
    /// The state directory a manager would use.
    pub state_dir: PathBuf,
    /// The jailer's chroot base; `None` skips the check (no jails).
    pub chroot_base: Option<PathBuf>,
    /// The guest agent `image build` would put into images; `None` looks
    /// for `firehost-agent` in `PATH`.
    pub agent: Option<PathBuf>,
}

impl DoctorConfig {
    /// A configuration for `state_dir` with the binaries named by
    /// [`FIRECRACKER_ENV`] and [`JAILER_ENV`], or else `firecracker` and
    /// `jailer` looked up as described on the fields.
    pub fn from_env(state_dir: impl Into<PathBuf>) -> Self {
        let non_empty = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        DoctorConfig {
            firecracker: non_empty(FIRECRACKER_ENV)
                .map_or_else(|| PathBuf::from("firecracker"), PathBuf::from),
            jailer: non_empty(JAILER_ENV).map(PathBuf::from),
            state_dir: state_dir.into(),
            chroot_base: Some(PathBuf::from(crate::jail::DEFAULT_CHROOT_BASE)),
            agent: None,
        }
    }
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// Fine.
    Ok,
    /// Works, with limits (a feature is unavailable, or an untested version).
    Warn,
    /// firehost cannot run VMs until this is fixed.
    Fail,
}

impl fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckStatus::Ok => "ok",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => "fail",
        })
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The check's stable name (`kvm`, `firecracker`…).
    pub name: &'static str,
    /// How it came out.
    pub status: CheckStatus,
    /// What was found, in one line.
    pub detail: String,
    /// What to do about a warning or failure, in one line.
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Check {
            name,
            status: CheckStatus::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name,
            status: CheckStatus::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name,
            status: CheckStatus::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Runs every check, in the order of the table in the [module docs](self).
///
/// Blocking; creates the state directory if it is missing.
pub fn run_checks(config: &DoctorConfig) -> Vec<Check> {
    let firecracker = check_firecracker(&config.firecracker);
    let jailer = check_jailer(config.jailer.as_deref(), &config.firecracker);
    vec![
        check_kvm(Path::new("/dev/kvm")),
        firecracker,
        jailer,
        check_chroot_base(config.chroot_base.as_deref()),
        check_agent(config.agent.as_deref()),
        check_host_kernel(),
        check_tun(Path::new("/dev/net/tun")),
        check_nft(),
        check_cgroup(),
        check_userfaultfd(),
        check_state_dir(&config.state_dir),
    ]
}

/// True if any check failed.
pub fn has_failures(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.status == CheckStatus::Fail)
}

/// `/dev/kvm` (or `path`) must exist and open read-write.
pub fn check_kvm(path: &Path) -> Check {
    const NAME: &str = "kvm";
    match open_rw(path) {
        Ok(()) => Check::ok(NAME, format!("{} opens read-write", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Check::fail(
            NAME,
            format!("{} does not exist", path.display()),
            "enable virtualization (VT-x/AMD-V) in the firmware and load the module \
             (sudo modprobe kvm_intel or kvm_amd); in a cloud VM, pick an instance type \
             with nested virtualization or bare metal",
        ),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Check::fail(
            NAME,
            format!("{} is not accessible: {e}", path.display()),
            format!(
                "add yourself to its group (sudo usermod -aG kvm $USER, then log in again) \
                 or grant access: sudo setfacl -m u:$USER:rw {}",
                path.display()
            ),
        ),
        Err(e) => Check::fail(
            NAME,
            format!("cannot open {}: {e}", path.display()),
            "check that KVM works on this host (dmesg | grep -i kvm)",
        ),
    }
}

/// A Firecracker or jailer release, as `--version` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Finds `<program> vX.Y.Z` in `--version` output (Firecracker prints
/// `Firecracker v1.16.1`, the jailer `Jailer v1.16.1`, each followed by
/// other lines). A suffix after the patch number (`-dev`) is ignored.
///
/// ```
/// use firehost::doctor::{Version, parse_version_output};
///
/// let out = "Firecracker v1.16.1\n\n2026-01-01T00:00:00 [main] exiting\n";
/// assert_eq!(
///     parse_version_output(out, "Firecracker"),
///     Some(Version { major: 1, minor: 16, patch: 1 })
/// );
/// assert_eq!(parse_version_output("Jailer v1.16.1", "Firecracker"), None);
/// ```
pub fn parse_version_output(output: &str, program: &str) -> Option<Version> {
    output.lines().find_map(|line| {
        let rest = line.trim().strip_prefix(program)?.strip_prefix(" v")?;
        match leading_numbers(rest)? {
            [Some(major), Some(minor), Some(patch)] => Some(Version {
                major,
                minor,
                patch,
            }),
            _ => None,
        }
    })
}

/// Up to three dot-separated leading numbers of `s` (`6.1.0-13-amd64` gives
/// 6, 1, 0; `5.10` gives 5, 10, none). `None` if `s` does not start with a
/// number.
fn leading_numbers(s: &str) -> Option<[Option<u32>; 3]> {
    let mut out = [None; 3];
    let mut rest = s;
    for (i, slot) in out.iter_mut().enumerate() {
        if i > 0 {
            match rest.strip_prefix('.') {
                Some(r) => rest = r,
                None => break,
            }
        }
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            break;
        }
        *slot = rest[..digits].parse().ok();
        rest = &rest[digits..];
    }
    out[0].is_some().then_some(out)
}

/// Parses a kernel release (`uname -r`, `/proc/sys/kernel/osrelease`) into
/// (major, minor, patch); a missing patch is 0.
///
/// ```
/// use firehost::doctor::parse_kernel_release;
///
/// assert_eq!(parse_kernel_release("6.1.0-13-amd64"), Some((6, 1, 0)));
/// assert_eq!(parse_kernel_release("5.10"), Some((5, 10, 0)));
/// assert_eq!(parse_kernel_release("linux"), None);
/// ```
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32, u32)> {
    match leading_numbers(release.trim())? {
        [Some(major), Some(minor), patch] => Some((major, minor, patch.unwrap_or(0))),
        _ => None,
    }
}

/// The Firecracker binary must be found and answer `--version`.
pub fn check_firecracker(binary: &Path) -> Check {
    const NAME: &str = "firecracker";
    let Some(path) = find_binary(binary) else {
        return Check::fail(
            NAME,
            format!("{} not found (or not executable)", binary.display()),
            format!(
                "install Firecracker v{}.{}.x from https://github.com/firecracker-microvm/firecracker/releases \
                 and put it on PATH, or name it with --firecracker PATH or {FIRECRACKER_ENV}",
                TESTED_FIRECRACKER.0, TESTED_FIRECRACKER.1
            ),
        );
    };
    match binary_version(&path, "Firecracker") {
        Ok(version) => versioned(NAME, &path, version),
        Err(why) => Check::fail(
            NAME,
            format!("{}: {why}", path.display()),
            "check that the file is a Firecracker binary for this architecture",
        ),
    }
}

/// The jailer is looked for as [`DoctorConfig::jailer`] says; a missing or
/// broken jailer only warns (VMs run unjailed).
pub fn check_jailer(jailer: Option<&Path>, firecracker: &Path) -> Check {
    const NAME: &str = "jailer";
    let candidates: Vec<PathBuf> = match jailer {
        Some(path) => vec![path.to_owned()],
        None => find_binary(firecracker)
            .and_then(|fc| fc.parent().map(|dir| dir.join("jailer")))
            .into_iter()
            .chain([PathBuf::from("jailer")])
            .collect(),
    };
    let Some(path) = candidates.iter().find_map(|c| find_binary(c)) else {
        return Check::warn(
            NAME,
            "jailer not found: VMs can only run unjailed",
            format!(
                "install the jailer from the same Firecracker release, next to firecracker or \
                 on PATH, or name it with {JAILER_ENV}"
            ),
        );
    };
    // The jailer copies Firecracker into a chroot without its libraries.
    if let Some(fc) = find_binary(firecracker)
        && matches!(crate::elf::file_interpreter(&fc), Ok(Some(_)))
    {
        return Check::warn(
            NAME,
            format!(
                "{} is dynamically linked: it cannot run in the jailer's chroot",
                fc.display()
            ),
            "use a statically linked Firecracker (the release binaries are) for jailed VMs",
        );
    }
    match binary_version(&path, "Jailer") {
        Ok(version) => versioned(NAME, &path, version),
        Err(why) => Check::warn(
            NAME,
            format!("{}: {why}", path.display()),
            "check that the file is the jailer of the Firecracker release you use",
        ),
    }
}

/// The jailer's chroot base: usable, or missing and creatable (the first
/// jailed VM creates it), or unsafe (warns: jailed VMs are refused).
pub fn check_chroot_base(base: Option<&Path>) -> Check {
    const NAME: &str = "chroot_base";
    let Some(base) = base else {
        return Check::ok(NAME, "no chroot base configured (VMs run unjailed)");
    };
    match crate::jail::base::check_chroot_base(base) {
        Ok(None) => Check::ok(NAME, format!("{} is root-owned and safe", base.display())),
        Ok(Some(_)) => Check::ok(
            NAME,
            format!(
                "{} does not exist yet; the first jailed VM creates it (root, 0755)",
                base.display()
            ),
        ),
        Err(e) => Check::warn(
            NAME,
            e.to_string(),
            "give the chroot base to root alone (chown root:root, chmod 0755), or choose \
             another with --chroot-base",
        ),
    }
}

/// The guest agent `image build` would use: found, and statically linked.
/// A dynamically linked agent put into a tree without its loader cannot
/// start as the guest's init.
pub fn check_agent(agent: Option<&Path>) -> Check {
    const NAME: &str = "agent";
    let found = match agent {
        Some(path) => path.is_file().then(|| path.to_owned()),
        None => find_binary(Path::new(crate::image::AGENT_BINARY)),
    };
    let Some(path) = found else {
        return Check::warn(
            NAME,
            "firehost-agent not found: image build needs it (--agent)",
            "build it with `cargo build --release -p firehost-agent` (it is linked statically)",
        );
    };
    match crate::elf::file_interpreter(&path) {
        Ok(None) => Check::ok(NAME, format!("{} is statically linked", path.display())),
        Ok(Some(loader)) => Check::warn(
            NAME,
            format!(
                "{} is dynamically linked (it needs {loader}): it cannot start as init in an \
                 image without that loader",
                path.display()
            ),
            "rebuild it without FIREHOST_AGENT_DYNAMIC (`cargo build --release -p \
             firehost-agent` links it statically), or only use images that have the loader",
        ),
        Err(e) => Check::warn(
            NAME,
            format!("{}: {e}", path.display()),
            "give a readable agent binary (--agent)",
        ),
    }
}

fn versioned(name: &'static str, path: &Path, version: Version) -> Check {
    let (major, minor) = TESTED_FIRECRACKER;
    let detail = format!("{} {version}", path.display());
    if (version.major, version.minor) == (major, minor) {
        Check::ok(name, detail)
    } else {
        Check::warn(
            name,
            format!("{detail}; firehost is tested against v{major}.{minor}.x"),
            format!(
                "install v{major}.{minor}.x from https://github.com/firecracker-microvm/firecracker/releases"
            ),
        )
    }
}

/// Runs `binary --version` (explicit arguments, empty environment, no
/// shell) and parses its output, within [`VERSION_TIMEOUT`].
fn binary_version(binary: &Path, program: &str) -> Result<Version, String> {
    let mut child = Command::new(binary)
        .arg("--version")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run --version: {e}"))?;
    // Read on a thread so that the wait below has a deadline even if the
    // program never closes its output.
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.by_ref().take(64 * 1024).read_to_end(&mut out);
        out
    });
    let deadline = Instant::now() + VERSION_TIMEOUT;
    let mut delay = Duration::from_micros(500);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "--version did not finish within {VERSION_TIMEOUT:?}"
                ));
            }
            Ok(None) => {
                std::thread::sleep(delay.min(deadline.saturating_duration_since(Instant::now())));
                delay = (delay * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("cannot wait for --version: {e}")),
        }
    };
    let out = reader.join().unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    match parse_version_output(&text, program) {
        Some(version) => Ok(version),
        None if !status.success() => Err(format!("--version failed ({status})")),
        None => Err(format!(
            "--version printed no \"{program} vX.Y.Z\" line: {:?}",
            text.lines().next().unwrap_or("")
        )),
    }
}

/// The host kernel must be at least [`MIN_HOST_KERNEL`].
pub fn check_host_kernel() -> Check {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy().into_owned();
    kernel_check(&release)
}

fn kernel_check(release: &str) -> Check {
    const NAME: &str = "host_kernel";
    let Some((major, minor, _)) = parse_kernel_release(release) else {
        return Check::warn(
            NAME,
            format!("cannot parse the kernel release {release:?}"),
            format!(
                "make sure the host kernel is at least {}.{}",
                MIN_HOST_KERNEL.0, MIN_HOST_KERNEL.1
            ),
        );
    };
    let (min, rec) = (MIN_HOST_KERNEL, RECOMMENDED_HOST_KERNEL);
    if (major, minor) < min {
        Check::fail(
            NAME,
            format!(
                "Linux {release}: firehost needs {}.{} or later (pidfd, waitid(P_PIDFD))",
                min.0, min.1
            ),
            format!("upgrade the host kernel to {}.{} or later", rec.0, rec.1),
        )
    } else if (major, minor) < rec {
        Check::warn(
            NAME,
            format!(
                "Linux {release}: works; Firecracker is tested on {}.{}+ and /dev/userfaultfd needs {}.{}",
                rec.0, rec.1, rec.0, rec.1
            ),
            format!("upgrade the host kernel to {}.{} or later", rec.0, rec.1),
        )
    } else {
        Check::ok(NAME, format!("Linux {release}"))
    }
}

/// `/dev/net/tun` (or `path`) for TAP devices: only VM networking needs it.
pub fn check_tun(path: &Path) -> Check {
    const NAME: &str = "tun";
    match open_rw(path) {
        Ok(()) => Check::ok(NAME, format!("{} opens read-write", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Check::warn(
            NAME,
            format!(
                "{} does not exist: VMs can't have network devices",
                path.display()
            ),
            "load the module (sudo modprobe tun); in a container, pass the device in \
             (--device /dev/net/tun)",
        ),
        Err(e) => Check::warn(
            NAME,
            format!(
                "cannot open {}: {e}: VMs can't have network devices",
                path.display()
            ),
            "run firehost as root or with CAP_NET_ADMIN to create TAP devices",
        ),
    }
}

/// nftables: `libnftables`, which the default network's firewall runs its
/// transactions through, and the `nft` tool to inspect the rules by hand.
/// Only VMs with a network need them, so this never fails.
pub fn check_nft() -> Check {
    const NAME: &str = "nft";
    const FIX: &str = "install nftables (apt install nftables / dnf install nftables)";
    if let Err(e) = crate::net::nft::Nftables::open() {
        return Check::warn(
            NAME,
            format!("{e}: VMs without a network work, VMs with one cannot be created"),
            FIX,
        );
    }
    match find_binary(Path::new("nft")) {
        Some(path) => Check::ok(
            NAME,
            format!("{} loads; {}", crate::net::nft::LIBRARY, path.display()),
        ),
        None => Check::warn(
            NAME,
            format!(
                "{} loads, but nft is not on PATH: firewall rules can't be inspected by hand",
                crate::net::nft::LIBRARY
            ),
            FIX,
        ),
    }
}

/// How the host mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupLayout {
    /// cgroup v2 only, mounted at `/sys/fs/cgroup`.
    Unified,
    /// v1 controllers with a v2 hierarchy beside them (often at
    /// `/sys/fs/cgroup/unified`).
    Hybrid,
    /// cgroup v1 only.
    Legacy,
    /// No cgroup file system mounted.
    None,
}

impl fmt::Display for CgroupLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupLayout::Unified => "cgroup v2 (unified)",
            CgroupLayout::Hybrid => "hybrid (cgroup v1 controllers and a v2 hierarchy)",
            CgroupLayout::Legacy => "cgroup v1 (legacy)",
            CgroupLayout::None => "no cgroup file system mounted",
        })
    }
}

impl CgroupLayout {
    /// Detects the layout from the text of `/proc/self/mountinfo`.
    ///
    /// ```
    /// use firehost::doctor::CgroupLayout;
    ///
    /// let v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
    /// assert_eq!(CgroupLayout::from_mountinfo(v2), CgroupLayout::Unified);
    /// ```
    pub fn from_mountinfo(mountinfo: &str) -> Self {
        let (mut v1, mut v2) = (false, false);
        for line in mountinfo.lines() {
            // "<id> <parent> <maj:min> <root> <mount point> <options>
            //  [optional fields] - <fstype> <source> <super options>"
            let Some((_, right)) = line.split_once(" - ") else {
                continue;
            };
            match right.split(' ').next() {
                Some("cgroup") => v1 = true,
                Some("cgroup2") => v2 = true,
                _ => {}
            }
        }
        match (v1, v2) {
            (true, true) => CgroupLayout::Hybrid,
            (true, false) => CgroupLayout::Legacy,
            (false, true) => CgroupLayout::Unified,
            (false, false) => CgroupLayout::None,
        }
    }
}

/// The cgroup layout, for information (the jailer's `--cgroup-version`
/// must match it).
pub fn check_cgroup() -> Check {
    const NAME: &str = "cgroup";
    match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => cgroup_check(CgroupLayout::from_mountinfo(&text)),
        Err(e) => Check::warn(
            NAME,
            format!("cannot read /proc/self/mountinfo: {e}"),
            "mount /proc",
        ),
    }
}

fn cgroup_check(layout: CgroupLayout) -> Check {
    const NAME: &str = "cgroup";
    match layout {
        CgroupLayout::Unified => Check::ok(NAME, format!("{layout}: jailer --cgroup-version 2")),
        CgroupLayout::Hybrid | CgroupLayout::Legacy => {
            Check::ok(NAME, format!("{layout}: jailer --cgroup-version 1"))
        }
        CgroupLayout::None => Check::warn(
            NAME,
            format!("{layout}: the jailer can't limit VMs"),
            "mount cgroup2 at /sys/fs/cgroup (mount -t cgroup2 none /sys/fs/cgroup)",
        ),
    }
}

/// Whether a VMM can create a userfaultfd, which restoring a snapshot with
/// a page server needs (file-backed restore works without it).
pub fn check_userfaultfd() -> Check {
    const NAME: &str = "userfaultfd";
    let dev = Path::new("/dev/userfaultfd");
    if open_rw(dev).is_ok() {
        return Check::ok(NAME, "/dev/userfaultfd opens read-write");
    }
    if rustix::process::geteuid().is_root() {
        return Check::ok(NAME, "running as root");
    }
    let sysctl = "/proc/sys/vm/unprivileged_userfaultfd";
    match std::fs::read_to_string(sysctl).map(|s| s.trim().to_owned()) {
        Ok(v) if v == "1" => Check::ok(NAME, "vm.unprivileged_userfaultfd = 1"),
        found => Check::warn(
            NAME,
            format!(
                "not root, /dev/userfaultfd not accessible, vm.unprivileged_userfaultfd = {}: \
                 snapshots restore only from files, without a page server",
                found.as_deref().unwrap_or("unknown")
            ),
            "grant access to /dev/userfaultfd (sudo setfacl -m u:$USER:rw /dev/userfaultfd) \
             or set sudo sysctl vm.unprivileged_userfaultfd=1",
        ),
    }
}

/// The state directory must exist or be creatable (0700) and be writable,
/// and leave room for VM socket paths.
pub fn check_state_dir(dir: &Path) -> Check {
    use std::os::unix::fs::OpenOptionsExt;
    const NAME: &str = "state_dir";
    let fix_perm = format!(
        "run as a user that can write {}, or choose another directory with --state-dir or FIREHOST_STATE_DIR",
        dir.display()
    );
    if let Err(e) = crate::fsutil::create_private_dir_all(dir) {
        return Check::fail(
            NAME,
            format!("cannot create {}: {e}", dir.display()),
            fix_perm,
        );
    }
    let probe = dir.join(format!(".doctor-probe-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe);
    if let Err(e) = written {
        return Check::fail(
            NAME,
            format!("{} is not writable: {e}", dir.display()),
            fix_perm,
        );
    }
    let _ = std::fs::remove_file(&probe);
    // <state>/vms/<id>/api.sock with the longest id must fit a unix socket.
    let longest =
        dir.as_os_str().len() + "/vms/".len() + crate::id::MAX_VM_ID_LEN + "/api.sock".len();
    if longest > MAX_SOCKET_PATH_BYTES {
        let room = MAX_SOCKET_PATH_BYTES
            .saturating_sub(dir.as_os_str().len() + "/vms/".len() + "/api.sock".len());
        return Check::warn(
            NAME,
            format!(
                "{} is writable, but long: VM names over {room} characters won't fit a unix socket path",
                dir.display()
            ),
            "choose a shorter state directory",
        );
    }
    Check::ok(NAME, format!("{} is writable", dir.display()))
}

fn open_rw(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (major, minor, patch) as the tests expect it.
    type Triple = Option<(u32, u32, u32)>;

    #[test]
    fn a_dynamic_agent_warns_and_a_static_one_is_ok() {
        // This test binary is dynamically linked; the fake ELF is static.
        let me = std::env::current_exe().unwrap();
        let check = check_agent(Some(&me));
        assert_eq!(check.status, CheckStatus::Warn, "{check:?}");
        assert!(check.detail.contains("dynamically linked"), "{check:?}");
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("firehost-agent");
        std::fs::write(&agent, fake_elf()).unwrap();
        let check = check_agent(Some(&agent));
        assert_eq!(check.status, CheckStatus::Ok, "{check:?}");
        let missing = check_agent(Some(&dir.path().join("missing")));
        assert_eq!(missing.status, CheckStatus::Warn);
    }

    #[test]
    fn a_chroot_base_others_can_write_warns() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("jails");
        let check = check_chroot_base(Some(&base));
        assert_eq!(check.status, CheckStatus::Ok, "{check:?}");
        assert!(check.detail.contains("does not exist yet"), "{check:?}");
        assert!(!base.exists(), "doctor creates nothing");
        std::fs::create_dir(&base).unwrap();
        std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let check = check_chroot_base(Some(&base));
        assert_eq!(check.status, CheckStatus::Warn, "{check:?}");
        assert_eq!(check_chroot_base(None).status, CheckStatus::Ok);
    }

    /// A minimal ELF64 header with one `PT_LOAD` program header.
    fn fake_elf() -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes());
        elf
    }

    #[test]
    fn version_lines_are_found_among_other_output() {
        let cases: &[(&str, &str, Triple)] = &[
            (
                "Firecracker v1.16.1\n\nlog line\n",
                "Firecracker",
                Some((1, 16, 1)),
            ),
            ("Jailer v1.16.1\n", "Jailer", Some((1, 16, 1))),
            (
                "noise\nFirecracker v1.7.0-dev\n",
                "Firecracker",
                Some((1, 7, 0)),
            ),
            ("Firecracker v1.16\n", "Firecracker", None),
            ("Firecracker 1.16.1\n", "Firecracker", None),
            ("Jailer v1.16.1\n", "Firecracker", None),
            ("", "Firecracker", None),
        ];
        for (out, program, expected) in cases {
            let got = parse_version_output(out, program).map(|v| (v.major, v.minor, v.patch));
            assert_eq!(got, *expected, "{out:?}");
        }
    }

    #[test]
    fn kernel_releases_parse_and_grade() {
        let cases: &[(&str, Triple, CheckStatus)] = &[
            ("6.18.44-fc-v669", Some((6, 18, 44)), CheckStatus::Ok),
            ("6.1.0-13-amd64", Some((6, 1, 0)), CheckStatus::Ok),
            ("5.10.0", Some((5, 10, 0)), CheckStatus::Warn),
            ("5.15", Some((5, 15, 0)), CheckStatus::Warn),
            ("5.4.0-150-generic", Some((5, 4, 0)), CheckStatus::Fail),
            ("4.19.0", Some((4, 19, 0)), CheckStatus::Fail),
            ("weird", None, CheckStatus::Warn),
            ("6", None, CheckStatus::Warn),
        ];
        for (release, parsed, status) in cases {
            assert_eq!(parse_kernel_release(release), *parsed, "{release}");
            assert_eq!(kernel_check(release).status, *status, "{release}");
        }
    }

    #[test]
    fn cgroup_layout_is_detected_from_mountinfo() {
        let unified = "25 1 0:23 / /sys rw - sysfs sysfs rw\n\
                       30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let legacy = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                      32 31 0:29 / /sys/fs/cgroup/memory rw shared:9 - cgroup cgroup rw,memory\n";
        let none = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n";
        for (text, expected) in [
            (unified, CgroupLayout::Unified),
            (hybrid, CgroupLayout::Hybrid),
            (legacy, CgroupLayout::Legacy),
            (none, CgroupLayout::None),
            ("", CgroupLayout::None),
        ] {
            assert_eq!(CgroupLayout::from_mountinfo(text), expected, "{text}");
        }
        assert_eq!(cgroup_check(CgroupLayout::None).status, CheckStatus::Warn);
        assert_eq!(cgroup_check(CgroupLayout::Hybrid).status, CheckStatus::Ok);
    }

    #[test]
    fn missing_devices_and_binaries_fail_with_a_fix() {
        let kvm = check_kvm(Path::new("/nonexistent/kvm"));
        assert_eq!(kvm.status, CheckStatus::Fail);
        assert!(kvm.fix.is_some());
        let fc = check_firecracker(Path::new("/nonexistent/firecracker"));
        assert_eq!(fc.status, CheckStatus::Fail);
        assert!(fc.fix.as_deref().unwrap().contains(FIRECRACKER_ENV));
        let jailer = check_jailer(Some(Path::new("/nonexistent/jailer")), Path::new("x"));
        assert_eq!(jailer.status, CheckStatus::Warn);
        assert_eq!(
            check_tun(Path::new("/nonexistent/tun")).status,
            CheckStatus::Warn
        );
    }

    #[test]
    fn a_program_without_a_version_line_fails_the_check() {
        // `true` exits 0 and prints nothing.
        let check = check_firecracker(Path::new("true"));
        assert_eq!(check.status, CheckStatus::Fail, "{check:?}");
        assert!(check.detail.contains("printed no"), "{}", check.detail);
    }

    #[test]
    fn state_dir_is_created_private_and_probed() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/b");
        let check = check_state_dir(&dir);
        assert_eq!(check.status, CheckStatus::Ok, "{check:?}");
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "probe removed");

        let file = base.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(check_state_dir(&file).status, CheckStatus::Fail);
    }

    #[test]
    fn versions_other_than_the_tested_line_warn() {
        let p = Path::new("/x/firecracker");
        let v = |major, minor| Version {
            major,
            minor,
            patch: 0,
        };
        assert_eq!(
            versioned("firecracker", p, v(1, 16)).status,
            CheckStatus::Ok
        );
        assert_eq!(
            versioned("firecracker", p, v(1, 15)).status,
            CheckStatus::Warn
        );
    }
}
