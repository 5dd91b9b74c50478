//! Exit codes, and errors as the user sees them.
//!
//! Every failure ends in [`finish`]: one line on stderr,
//! `firehost: <error>: <cause>: <cause>…` (the library's messages never
//! repeat their cause, so the chain is walked here, once), and the exit
//! code of [`CliError::exit`]. With `--json`, stdout then stays empty.
//! A closed stdout (`firehost ls | head -1`) is not an error: exit 0.

use std::error::Error;
use std::io::Write;
use std::process::ExitCode;

use firehost::image::ImageError;
use firehost::net::IfNameError;
use firehost::net::firewall::PortSyntaxError;
use firehost::net::host::PeerGroupError;
use firehost::net::ipam::IpamError;
use firehost::snapshot::StoreError;
use firehost::{ErrorKind, ManagerError, VmError, VmIdError};

/// The exit codes of `firehost`. Scripts may rely on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done (also when stdout was closed early).
    Success,
    /// 1: the operation failed: Firecracker refused a request, the VMM
    /// exited or did not answer in time, a file could not be written, a
    /// snapshot bundle is incomplete or damaged (`snapshots verify` found
    /// it bad, or a restore did), `mkfs.ext4` or `debugfs` failed.
    Failed,
    /// 2: the command line is wrong (unknown flag, invalid name or network
    /// setting, a VM spec the library refuses, an address outside the
    /// subnet, an image source, archive entry, agent or busybox binary
    /// refused, an image size too small for its content), or the host is
    /// not ready (`doctor` found a failure, `quickstart` misses something,
    /// the network has no uplink or nftables is missing, e2fsprogs is not
    /// installed).
    Usage,
    /// 3: no VM or snapshot has that name.
    NotFound,
    /// 4: conflict: the VM or snapshot name is taken, the VM's state does
    /// not allow the operation (`rm` of a running VM without `-f`), the
    /// snapshot is in use (`snapshots rm` while a VM restored from it
    /// exists or a diff builds on it), the snapshot's kind does not allow
    /// the operation (restoring a diff, merging a full snapshot), a diff
    /// was asked of a VM with no earlier snapshot, the address or MAC asked
    /// for is held by another VM, a host port is published by another VM
    /// (or twice), another firehost process kept the state directory
    /// locked, or an image's output file exists (without `--force`).
    Conflict,
    /// 130: interrupted by Ctrl-C (quickstart cleans up first).
    Interrupted,
    /// `exec`: the guest process's own exit code, or 128 + the signal that
    /// ended it, or 124 when its timeout killed it (as `timeout(1)` does).
    /// These overlap the codes above: a script that must tell a failed
    /// `exec` from a process's own failure reads stderr, or uses the
    /// library.
    Process(u8),
}

impl Exit {
    /// The numeric code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::NotFound => 3,
            Exit::Conflict => 4,
            Exit::Interrupted => 130,
            Exit::Process(code) => code,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// An error that ends a command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A VM operation failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The state directory could not be opened.
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// A snapshot store operation failed (its message names the snapshot).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An image could not be built.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// `snapshots verify` found the snapshot or a parent bad (the report
    /// is on stdout).
    #[error("snapshot {name} failed verification")]
    BadSnapshot {
        /// The snapshot verified.
        name: String,
        /// What is wrong.
        source: StoreError,
    },
    /// A VM or snapshot name breaks the naming rules.
    #[error("invalid {what} {value:?}")]
    InvalidName {
        /// "VM name" or "snapshot name".
        what: &'static str,
        /// The name as given.
        value: String,
        /// The rule it breaks.
        source: VmIdError,
    },
    /// An option's value does not parse (the cause is the library's own
    /// parser, so the CLI and the library say the same).
    #[error("invalid {option} {value:?}")]
    InvalidValue {
        /// The option, e.g. "--publish".
        option: &'static str,
        /// The value as given (one element of a list).
        value: String,
        /// Why.
        source: ValueError,
    },
    /// Some doctor checks failed (the report is on stdout).
    #[error("{failed} host check(s) failed")]
    ChecksFailed {
        /// How many.
        failed: usize,
    },
    /// Quickstart cannot run (the list is on stdout).
    #[error("quickstart cannot run: {missing} prerequisite(s) missing")]
    NotReady {
        /// How many.
        missing: usize,
    },
    /// A combination of options this command can't honour.
    #[error("{what}")]
    Unsupported {
        /// What and why.
        what: String,
    },
    /// A call to the guest agent failed (not ready, refused, broken off).
    #[error(transparent)]
    Agent(#[from] firehost::agent::AgentError),
    /// A local file of `cp` could not be read or written.
    #[error("cannot {op} {path:?}")]
    LocalFile {
        /// What was done.
        op: &'static str,
        /// The path as given.
        path: String,
        /// The errno.
        source: std::io::Error,
    },
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
    /// A temporary directory could not be made or removed.
    #[error("cannot {op} temporary state directory")]
    TempDir {
        /// "create" or "remove".
        op: &'static str,
        /// The errno.
        source: std::io::Error,
    },
    /// The async runtime could not start.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// Writing to stdout failed.
    #[error("cannot write to stdout")]
    Output(#[source] std::io::Error),
}

/// Why an option's value does not parse: the error of the library type (or
/// the std one, for addresses) it was parsed into.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// Not an IPv4 address.
    #[error(transparent)]
    Ip(#[from] std::net::AddrParseError),
    /// Not a subnet.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// Not a MAC address.
    #[error(transparent)]
    Mac(#[from] firehost::net::ipam::MacSyntaxError),
    /// Not a port mapping or host service.
    #[error(transparent)]
    Port(#[from] PortSyntaxError),
    /// Not an interface name.
    #[error(transparent)]
    IfName(#[from] IfNameError),
    /// Not a peer group name.
    #[error(transparent)]
    PeerGroup(#[from] PeerGroupError),
    /// Not a drive, rate or device limit.
    #[error(transparent)]
    Device(#[from] crate::device_args::DeviceSyntaxError),
    /// Not an egress rule, or a policy that cannot be.
    #[error(transparent)]
    Egress(#[from] firehost::vocab::EgressError),
}

impl CliError {
    /// The one mapping from errors to exit codes.
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Vm(e) => e.kind().into(),
            CliError::Manager(e) => e.kind().into(),
            CliError::Store(e) => e.kind().into(),
            CliError::Image(e) => e.kind().into(),
            CliError::BadSnapshot { .. } => Exit::Failed,
            CliError::InvalidName { .. }
            | CliError::InvalidValue { .. }
            | CliError::ChecksFailed { .. }
            | CliError::NotReady { .. }
            | CliError::Unsupported { .. } => Exit::Usage,
            CliError::Interrupted => Exit::Interrupted,
            CliError::Agent(_) | CliError::LocalFile { .. } => Exit::Failed,
            CliError::TempDir { .. } | CliError::Runtime(_) | CliError::Output(_) => Exit::Failed,
        }
    }
}

/// The library classifies its errors ([`firehost::ErrorKind`]); the exit
/// codes follow: invalid input and an unready host are both 2.
impl From<ErrorKind> for Exit {
    fn from(kind: ErrorKind) -> Exit {
        match kind {
            ErrorKind::NotFound => Exit::NotFound,
            ErrorKind::Conflict => Exit::Conflict,
            ErrorKind::InvalidInput | ErrorKind::HostNotReady => Exit::Usage,
            _ => Exit::Failed,
        }
    }
}

/// `firehost: <error>: <cause>: …` on one line.
/// The library's messages never repeat their cause, so each link of the
/// chain appears once.
pub fn error_line(err: &(dyn Error + 'static)) -> String {
    format!("firehost: {}", chain_text(err))
}

/// `<error>: <cause>: …` on one line, as [`error_line`] prints it without
/// the `firehost: ` prefix (for errors that are part of a JSON report).
pub fn chain_text(err: &(dyn Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        line.push_str(": ");
        line.push_str(&e.to_string());
        cause = e.source();
    }
    // Fault messages and paths may hold newlines; the line must stay one.
    line.replace(['\n', '\r'], " ")
}

/// Maps a command's outcome to the process exit code, printing the error
/// line if there is one.
pub fn finish(result: Result<Exit, CliError>) -> ExitCode {
    match result {
        Ok(exit) => exit.into(),
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            Exit::Success.into()
        }
        Err(e) => {
            // Nothing useful is left to do if stderr is gone too.
            let _ = writeln!(std::io::stderr(), "{}", error_line(&e));
            e.exit().into()
        }
    }
}

/// Handles a clap error: help and version go to stdout with exit 0; usage
/// errors become one stderr line with exit 2.
pub fn clap_exit(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            Exit::Success.into()
        }
        _ => {
            let line = format!("firehost: {}", clap_one_line(&err.render().to_string()));
            let _ = writeln!(std::io::stderr(), "{line}");
            Exit::Usage.into()
        }
    }
}

/// Folds clap's multi-line message (error, details, tips, usage) into one
/// line: the text up to the usage block, with the "error: " prefix gone and
/// a pointer to `--help` at the end.
fn clap_one_line(rendered: &str) -> String {
    let mut line = String::new();
    for part in rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let part = part.strip_prefix("error: ").unwrap_or(part);
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(part);
    }
    line.push_str(" (see firehost --help)");
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use firehost::net::NftError;
    use firehost::net::firewall::FirewallError;
    use firehost::net::host::NetError;
    use firehost::snapshot::BundleError;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner\nwith newline")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn error_line_walks_the_chain_on_one_line() {
        let err = Outer(Inner(std::io::Error::from_raw_os_error(2)));
        let line = error_line(&err);
        assert!(
            line.starts_with("firehost: outer: inner with newline: No such file"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn refused_transition_is_said_once() {
        let id: firehost::VmId = "a".parse().unwrap();
        let err = VmError::Transition {
            id,
            refused: firehost::VmState::Created
                .check(firehost::Operation::Snapshot)
                .unwrap_err(),
        };
        assert_eq!(
            error_line(&err),
            "firehost: VM a: cannot snapshot a VM that is created"
        );
    }

    #[test]
    fn exit_codes_follow_the_documented_table() {
        let id: firehost::VmId = "a".parse().unwrap();
        let cases = [
            (
                CliError::Vm(VmError::NotFound { id: id.clone() }),
                Exit::NotFound,
            ),
            (
                CliError::Vm(VmError::AlreadyExists { id: id.clone() }),
                Exit::Conflict,
            ),
            (
                CliError::Manager(ManagerError::Locked {
                    state_dir: "/s".into(),
                    holder: None,
                }),
                Exit::Conflict,
            ),
            (
                CliError::Vm(VmError::InvalidSpec {
                    id: id.clone(),
                    source: firehost::SpecError::MissingKernel,
                }),
                Exit::Usage,
            ),
            (CliError::NotReady { missing: 1 }, Exit::Usage),
            (
                CliError::Vm(VmError::StopTimeout {
                    id,
                    pid: 1,
                    waited: std::time::Duration::ZERO,
                }),
                Exit::Failed,
            ),
        ];
        for (err, exit) in cases {
            assert_eq!(err.exit(), exit, "{err}");
        }
    }

    #[test]
    fn snapshot_errors_follow_the_documented_table() {
        let name: firehost::snapshot::SnapshotName = "s".parse().unwrap();
        let id: firehost::VmId = "a".parse().unwrap();
        let not_found = || StoreError::Bundle(BundleError::NotFound { dir: "/s/s".into() });
        let in_vm = |source| {
            CliError::Vm(VmError::SnapshotBundle {
                name: "s".into(),
                source: Box::new(source),
            })
        };
        let cases = [
            (CliError::Store(not_found()), Exit::NotFound),
            (in_vm(not_found()), Exit::NotFound),
            (
                CliError::Store(StoreError::Leased {
                    name: name.clone(),
                    vms: vec![id.clone()],
                }),
                Exit::Conflict,
            ),
            (
                in_vm(StoreError::HasChildren {
                    name: name.clone(),
                    children: vec![name.clone()],
                }),
                Exit::Conflict,
            ),
            (
                in_vm(StoreError::Exists { name: name.clone() }),
                Exit::Conflict,
            ),
            (
                CliError::Store(StoreError::NotDiff { name: name.clone() }),
                Exit::Conflict,
            ),
            (
                in_vm(StoreError::Bundle(BundleError::Incomplete {
                    dir: "/s/s".into(),
                })),
                Exit::Failed,
            ),
            (
                CliError::Vm(VmError::SnapshotIsDiff { name: "s".into() }),
                Exit::Conflict,
            ),
            (
                CliError::Vm(VmError::NoParentSnapshot { id }),
                Exit::Conflict,
            ),
            (
                CliError::BadSnapshot {
                    name: "s".into(),
                    source: StoreError::Bundle(BundleError::MissingParent {
                        name: name.clone(),
                        parent: name,
                    }),
                },
                Exit::Failed,
            ),
        ];
        for (err, exit) in cases {
            assert_eq!(err.exit(), exit, "{err}");
        }
    }

    #[test]
    fn network_errors_follow_the_documented_table() {
        let id: firehost::VmId = "a".parse().unwrap();
        let holder: firehost::VmId = "b".parse().unwrap();
        let subnet: firehost::net::ipam::Subnet = "172.30.0.0/16".parse().unwrap();
        let ip = std::net::Ipv4Addr::new(172, 30, 0, 9);
        let tcp = firehost::net::firewall::Proto::Tcp;
        let net = |source| {
            CliError::Vm(VmError::Network {
                id: id.clone(),
                source: Box::new(source),
            })
        };
        let cases = [
            (
                net(NetError::Ipam(IpamError::IpTaken {
                    ip,
                    holder: holder.clone(),
                })),
                Exit::Conflict,
            ),
            (
                net(NetError::Ipam(IpamError::MacTaken {
                    mac: "06:00:ac:1e:00:02".parse().unwrap(),
                    holder: holder.clone(),
                })),
                Exit::Conflict,
            ),
            (
                net(NetError::PortInUse {
                    proto: tcp,
                    port: 8080,
                    holder,
                }),
                Exit::Conflict,
            ),
            (
                net(NetError::PortTwice {
                    proto: tcp,
                    port: 8080,
                }),
                Exit::Conflict,
            ),
            (
                net(NetError::Ipam(IpamError::OutOfSubnet {
                    ip: std::net::Ipv4Addr::new(10, 0, 0, 1),
                    subnet,
                })),
                Exit::Usage,
            ),
            (
                net(NetError::UplinkMissing {
                    detail: "no default route".into(),
                }),
                Exit::Usage,
            ),
            (
                net(NetError::Firewall(FirewallError::Nft(NftError::Missing {
                    detail: "not found".into(),
                }))),
                Exit::Usage,
            ),
            (
                net(NetError::Firewall(FirewallError::Nft(NftError::Rejected {
                    message: "no".into(),
                }))),
                Exit::Failed,
            ),
            (net(NetError::NotAttached { vm: id.clone() }), Exit::Failed),
            (
                CliError::InvalidValue {
                    option: "--publish",
                    value: "0:80".into(),
                    source: "0:80"
                        .parse::<firehost::net::firewall::PortMapping>()
                        .unwrap_err()
                        .into(),
                },
                Exit::Usage,
            ),
        ];
        for (err, exit) in cases {
            assert_eq!(err.exit(), exit, "{err}");
        }
    }

    #[test]
    fn image_errors_follow_the_documented_table() {
        let cases = [
            (
                ImageError::OutputExists { path: "/o".into() },
                Exit::Conflict,
            ),
            (
                ImageError::ToolMissing {
                    tool: "mkfs.ext4",
                    package: "e2fsprogs",
                },
                Exit::Usage,
            ),
            (
                ImageError::UnsafeEntry {
                    entry: "../x".into(),
                    reason: firehost::image::UnsafeReason::ParentDir,
                },
                Exit::Usage,
            ),
            (
                ImageError::TooSmall {
                    size_mib: 1,
                    needed_mib: 70,
                },
                Exit::Usage,
            ),
            (
                ImageError::Inject {
                    detail: "no".into(),
                },
                Exit::Failed,
            ),
            (
                ImageError::Io {
                    op: "write",
                    path: "/o".into(),
                    source: std::io::Error::from_raw_os_error(28),
                },
                Exit::Failed,
            ),
        ];
        for (err, exit) in cases {
            let err = CliError::Image(err);
            assert_eq!(err.exit(), exit, "{err}");
        }
    }

    #[test]
    fn clap_messages_fold_into_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  --kernel <PATH>\n\nUsage: firehost run --kernel <PATH>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            clap_one_line(rendered),
            "the following required arguments were not provided: --kernel <PATH> (see firehost --help)"
        );
        let tip = "error: unexpected argument '--kernl' found\n\n  tip: a similar argument exists: '--kernel'\n\nUsage: x\n";
        assert_eq!(
            clap_one_line(tip),
            "unexpected argument '--kernl' found; tip: a similar argument exists: '--kernel' (see firehost --help)"
        );
    }
}
