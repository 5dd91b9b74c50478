//! The agent as PID 1 (`init=/sbin/firehost-agent`).
//!
//! A microVM that boots straight into the agent has nobody else to set up
//! the basics, and PID 1 has duties no other process has: orphans are
//! re-parented to it and must be reaped, and if it ever exits (or panics)
//! the kernel panics. So the work is split:
//!
//! 1. [`boot`] (once, before anything else): mount `/proc`, `/sys`,
//!    `/dev` (devtmpfs), `/dev/pts`, and tmpfs on `/run` and `/tmp`, each
//!    only where the directory exists and nothing is mounted yet (the
//!    kernel may have mounted devtmpfs itself), and the tmpfs ones only on
//!    empty directories (never hiding files); write `/etc/resolv.conf`
//!    from the DNS servers the kernel's `ip=` autoconfiguration found
//!    ([`resolv_conf_from_pnp`]), when the file is writable; bring up `lo`
//!    (nothing else does without `ip=`); let Ctrl-Alt-Del send `SIGINT`
//!    here instead of resetting the VM unsynced.
//! 2. [`fork_server`]: fork. The child returns and becomes the server
//!    (with its own tokio runtime; forking before any thread exists keeps
//!    that sound). With `--init PATH`, a second child runs that program.
//!    PID 1 itself never returns: it waits for signals, reaps every child
//!    (`waitpid(-1)`), forwards `SIGTERM` and `SIGINT` to its children,
//!    and when the server exits, syncs and ends the VM ([`end_vm`]).
//!
//! Everything PID 1 runs after the fork is a handful of system calls in a
//! loop, with no allocation, no unwrap and no panicking print: the log
//! helper ignores write errors.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::io::{self, Write};
use std::mem;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::ptr;

use rustix::mount::MountFlags;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::process::{Pid, Signal, WaitOptions};
use rustix::system::RebootCommand;

use crate::log::{debug, error, info, warning};

/// Whether this process is PID 1.
pub fn is_pid1() -> bool {
    rustix::process::getpid().is_init()
}

/// One filesystem PID 1 mounts.
struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MountFlags,
    data: Option<&'static CStr>,
}

/// What [`boot`] mounts, in order (`/dev/pts` needs `/dev`).
fn mounts() -> [Mount; 6] {
    let nosuid_nodev_noexec = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    [
        Mount {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: nosuid_nodev_noexec,
            data: None,
        },
        Mount {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: nosuid_nodev_noexec,
            data: None,
        },
        Mount {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MountFlags::NOSUID,
            data: Some(c"mode=0755"),
        },
        Mount {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: MountFlags::NOSUID | MountFlags::NOEXEC,
            // ptmxmode makes /dev/pts/ptmx usable where /dev/ptmx is not a
            // device node.
            data: Some(c"mode=0620,ptmxmode=0666"),
        },
        Mount {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: MountFlags::NOSUID | MountFlags::NODEV,
            data: Some(c"mode=0755"),
        },
        Mount {
            source: "tmpfs",
            target: "/tmp",
            fstype: "tmpfs",
            flags: MountFlags::NOSUID | MountFlags::NODEV,
            data: Some(c"mode=1777"),
        },
    ]
}

/// The mount points listed in a `/proc/self/mountinfo` text (the fifth
/// field, with the kernel's octal escapes for space, tab, newline and
/// backslash undone).
pub fn parse_mount_points(mountinfo: &str) -> HashSet<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_octal)
        .collect()
}

fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(byte) = bytes.get(i + 1..i + 4).and_then(octal_byte)
        {
            out.push(byte);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Three octal digits as a byte.
fn octal_byte(digits: &[u8]) -> Option<u8> {
    let value = digits.iter().try_fold(0u32, |acc, d| {
        (b'0'..=b'7')
            .contains(d)
            .then(|| acc * 8 + u32::from(d - b'0'))
    })?;
    u8::try_from(value).ok()
}

/// What is mounted now; empty while `/proc` is not mounted (which is then
/// the truth for `/proc` itself).
fn mounted() -> HashSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| parse_mount_points(&text))
        .unwrap_or_default()
}

/// A `/etc/resolv.conf` with the name servers (and domain) from the
/// kernel's `/proc/net/pnp`, or `None` when it lists no usable server.
///
/// ```
/// use firehost_agent::pid1::resolv_conf_from_pnp;
///
/// let pnp = "#MANUAL\ndomain example.org\nnameserver 10.0.0.1\nnameserver 0.0.0.0\n";
/// let conf = resolv_conf_from_pnp(pnp).unwrap();
/// assert!(conf.contains("\nnameserver 10.0.0.1\n"));
/// assert!(!conf.contains("0.0.0.0"));
/// assert!(conf.contains("\nsearch example.org\n"));
/// ```
pub fn resolv_conf_from_pnp(pnp: &str) -> Option<String> {
    let mut servers = Vec::new();
    let mut domain = None;
    for line in pnp.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("nameserver"), Some(addr)) => {
                let usable = addr
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| !ip.is_unspecified() && !ip.is_multicast());
                let broadcast = addr == "255.255.255.255";
                if usable && !broadcast && !servers.contains(&addr) {
                    servers.push(addr);
                }
            }
            (Some("domain"), Some(name)) => domain = Some(name),
            _ => {}
        }
    }
    if servers.is_empty() {
        return None;
    }
    let mut conf = String::from("# Written by firehost-agent from /proc/net/pnp\n");
    if let Some(domain) = domain {
        conf.push_str(&format!("search {domain}\n"));
    }
    for server in servers {
        conf.push_str(&format!("nameserver {server}\n"));
    }
    Some(conf)
}

/// Prepares the guest; see the [module docs](self). Failures are logged,
/// never fatal: a guest with a missing mount is still better than a kernel
/// panic.
pub fn boot() {
    for m in mounts() {
        mount_if_missing(&m);
    }
    write_resolv_conf();
    if let Err(e) = loopback_up() {
        warning!("cannot bring up lo: {e}");
    }
    if let Err(e) = rustix::system::reboot(RebootCommand::CadOff) {
        warning!("cannot route Ctrl-Alt-Del to PID 1: {e}");
    }
}

fn mount_if_missing(m: &Mount) {
    let target = Path::new(m.target);
    // A fresh devtmpfs has no pts directory; without devpts no terminal can
    // be allocated, so this one mount point is made.
    if m.target == "/dev/pts"
        && !target.exists()
        && mounted().contains("/dev")
        && let Err(e) = std::fs::DirBuilder::new().mode(0o755).create(target)
    {
        warning!("cannot create /dev/pts: {e}");
    }
    if !target.is_dir() || mounted().contains(m.target) {
        return;
    }
    // A tmpfs over a directory that holds files would hide them (an image
    // may ship /run or /tmp contents): only empty ones get one.
    if m.fstype == "tmpfs" && !is_empty_dir(target) {
        info!("not mounting tmpfs on {}: it is not empty", m.target);
        return;
    }
    match rustix::mount::mount(m.source, m.target, m.fstype, m.flags, m.data) {
        Ok(()) => info!("mounted {} on {}", m.fstype, m.target),
        Err(e) => warning!("cannot mount {} on {}: {e}", m.fstype, m.target),
    }
}

/// Whether `dir` has no entries (an unreadable one counts as not empty).
fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

fn write_resolv_conf() {
    let Ok(pnp) = std::fs::read_to_string("/proc/net/pnp") else {
        return;
    };
    let Some(conf) = resolv_conf_from_pnp(&pnp) else {
        return;
    };
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open("/etc/resolv.conf")
        .and_then(|mut f| f.write_all(conf.as_bytes()));
    match written {
        Ok(()) => info!("wrote /etc/resolv.conf from the kernel's IP configuration"),
        // A read-only root keeps whatever resolv.conf it has.
        Err(e) => info!("not writing /etc/resolv.conf: {e}"),
    }
}

/// `ip link set lo up`, with the two classic ioctls.
fn loopback_up() -> io::Result<()> {
    let sock = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data (a name and a union of integers), for
    // which all-zero is valid.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of `req`, a
    // valid ifreq that outlives the call, on an open socket.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just filled in the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let up = libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
    if flags & up != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | up;
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &raw mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes sure descriptors 0, 1 and 2 are open (on `/dev/console`, else
/// `/dev/null`). The kernel starts init without them when the root has no
/// `/dev/console`; the first sockets would then become "stderr", and a log
/// line would land in a session.
pub fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only asks whether `fd` is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            continue;
        }
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open("/dev/console")
            .or_else(|_| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
            });
        let Ok(file) = opened else { continue };
        // The lowest free descriptor is `fd` itself (all lower ones are
        // open), but do not rely on it.
        let raw = file.into_raw_fd();
        if raw != fd {
            // SAFETY: `raw` is a descriptor we own and `fd` is closed, so
            // dup2 takes nothing from anyone; `raw` is then closed once.
            unsafe {
                libc::dup2(raw, fd);
                libc::close(raw);
            }
        }
    }
}

/// Why PID 1 could not start the server.
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    /// The `--init` path has a NUL byte.
    #[error("the init path has a NUL byte")]
    InitPath,
    /// `fork` failed.
    #[error("cannot fork the server")]
    Fork(#[source] io::Error),
}

/// The signals PID 1 waits for.
fn supervised_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it, and
    // sigaddset only sets bits for valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Forks; returns `Ok(())` in the child, which becomes the server. The
/// parent (PID 1) never returns: it supervises until the server exits, then
/// ends the VM. With `init`, a second child runs that program.
///
/// Call it before any thread exists.
pub fn fork_server(init: Option<&Path>) -> Result<(), ForkError> {
    let init = init
        .map(|p| CString::new(p.as_os_str().as_bytes()).map_err(|_| ForkError::InitPath))
        .transpose()?;
    let wanted = supervised_signals();
    // SAFETY: sigset_t is plain data; sigprocmask fills it in.
    let mut old: libc::sigset_t = unsafe { mem::zeroed() };
    // Block the signals before forking so none is lost before PID 1 waits
    // for them; the children restore the old mask (an inherited blocked
    // SIGCHLD would stop tokio from ever seeing its children exit).
    // SAFETY: both sets are valid; this thread is the only one.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &wanted, &mut old) };
    // SAFETY: no other thread exists (the caller's duty), so the child
    // starts with a consistent copy of everything, locks included.
    let server = unsafe { libc::fork() };
    if server < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: restores the mask saved above.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old, ptr::null_mut()) };
        return Err(ForkError::Fork(e));
    }
    if server == 0 {
        // SAFETY: restores the mask saved above.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old, ptr::null_mut()) };
        return Ok(());
    }
    info!("PID 1: the server runs as pid {server}");
    let init_pid = init.and_then(|path| spawn_init(&path, &old));
    supervise(server, init_pid, &wanted)
}

/// Starts the `--init` program as a child of PID 1, in its own session.
fn spawn_init(path: &CStr, mask: &libc::sigset_t) -> Option<libc::pid_t> {
    let argv = [path.as_ptr(), ptr::null()];
    // SAFETY: still single-threaded; the child only makes system calls and
    // exits without running destructors.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child: restore the mask, leave PID 1's session and
        // exec; `argv` is a NULL-terminated array of valid C strings. If
        // exec fails, _exit skips the parent's atexit handlers and buffers.
        unsafe {
            libc::sigprocmask(libc::SIG_SETMASK, mask, ptr::null_mut());
            libc::setsid();
            libc::execv(path.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
    }
    if pid < 0 {
        error!(
            "PID 1: cannot fork {}: {}",
            path.to_string_lossy(),
            io::Error::last_os_error()
        );
        return None;
    }
    info!("PID 1: started {} as pid {pid}", path.to_string_lossy());
    Some(pid)
}

/// PID 1's loop: reap, forward, and end the VM when the server is gone.
fn supervise(server: libc::pid_t, mut init: Option<libc::pid_t>, wanted: &libc::sigset_t) -> ! {
    let mut server_alive = true;
    loop {
        // SAFETY: `wanted` is a valid set, blocked in this thread; no
        // siginfo is asked for.
        let sig = unsafe { libc::sigwaitinfo(wanted, ptr::null_mut()) };
        match sig {
            libc::SIGCHLD => {
                // `wait`, i.e. waitpid(-1): orphans sit in process groups
                // of their own, which waitpid(0) would never see.
                while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
                    let pid = pid.as_raw_nonzero().get();
                    if pid == server && server_alive {
                        server_alive = false;
                        info!(
                            "PID 1: the server exited (code {:?}, signal {:?}); ending the VM",
                            status.exit_status(),
                            status.terminating_signal()
                        );
                        end_vm();
                    } else if Some(pid) == init {
                        info!("PID 1: init {pid} exited");
                        init = None;
                    } else {
                        debug!("PID 1: reaped pid {pid}");
                    }
                }
            }
            libc::SIGTERM | libc::SIGINT => {
                let forwarded = if sig == libc::SIGTERM {
                    Signal::TERM
                } else {
                    Signal::INT
                };
                let children = [server_alive.then_some(server), init];
                for pid in children.into_iter().flatten().filter_map(Pid::from_raw) {
                    let _ = rustix::process::kill_process(pid, forwarded);
                }
            }
            // Interrupted (sig == -1) or anything else: wait again.
            _ => {}
        }
    }
}

/// Syncs and ends the VM. On `x86_64` that is a reboot: Firecracker has no
/// ACPI power-off there, so a powered-off guest only halts while the VMM
/// lives on, whereas a reboot makes Firecracker exit. Elsewhere (aarch64's
/// PSCI) power-off ends the VM properly. Returns only if the kernel refused,
/// after logging it; PID 1 then goes on reaping.
pub fn end_vm() {
    let reboot = cfg!(target_arch = "x86_64");
    let e = crate::power::power_off(reboot);
    error!("PID 1: cannot end the VM: {e}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_come_from_the_fifth_field_unescaped() {
        let mountinfo = "\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw,mode=755
24 22 0:21 / /proc rw,nosuid,nodev,noexec shared:3 - proc proc rw
25 22 0:30 / /mnt/with\\040space rw - tmpfs tmpfs rw
26 22 0:31 / /mnt/back\\134slash rw - tmpfs tmpfs rw
";
        let points = parse_mount_points(mountinfo);
        for expected in ["/", "/dev", "/proc", "/mnt/with space", "/mnt/back\\slash"] {
            assert!(points.contains(expected), "{expected} in {points:?}");
        }
        assert!(!points.contains("/sys"));
        assert!(parse_mount_points("").is_empty());
    }

    #[test]
    fn octal_escapes_that_are_not_escapes_stay() {
        assert_eq!(unescape_octal("a\\0"), "a\\0");
        assert_eq!(unescape_octal("a\\9999"), "a\\9999");
        assert_eq!(unescape_octal("\\011x"), "\tx");
        assert_eq!(unescape_octal("end\\"), "end\\");
    }

    #[test]
    fn this_machines_mountinfo_parses() {
        // Not PID 1 here, but the format is the same one PID 1 reads.
        let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
            eprintln!("skipped: no /proc/self/mountinfo");
            return;
        };
        assert!(parse_mount_points(&text).contains("/"));
    }

    #[test]
    fn resolv_conf_takes_usable_name_servers_from_pnp() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "#PROTO: DHCP\ndomain corp.example\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nbootserver 10.0.0.1\n",
                Some(
                    "# Written by firehost-agent from /proc/net/pnp\nsearch corp.example\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n",
                ),
            ),
            (
                "#MANUAL\nnameserver 1.1.1.1\nnameserver 1.1.1.1\n",
                Some("# Written by firehost-agent from /proc/net/pnp\nnameserver 1.1.1.1\n"),
            ),
            (
                "#MANUAL\nnameserver 0.0.0.0\nnameserver 255.255.255.255\n",
                None,
            ),
            ("#MANUAL\nbootserver 10.0.0.1\n", None),
            ("nameserver not-an-ip\n", None),
            ("", None),
        ];
        for (pnp, expected) in cases {
            assert_eq!(resolv_conf_from_pnp(pnp).as_deref(), *expected, "{pnp:?}");
        }
    }

    #[test]
    fn this_process_is_not_pid_1() {
        assert!(!is_pid1());
    }
}
