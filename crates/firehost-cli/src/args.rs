//! Stage one of parsing: the command line as clap sees it.
//!
//! Only the shape is checked here (flags, numbers). Names and VM specs are
//! checked in stage two by the library itself ([`firehost::VmId`],
//! [`firehost::VmSpec`] validation), so the CLI and the library refuse bad
//! input with the same error.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run Firecracker microVMs.
///
/// VMs outlive the command that started them; their records, sockets and
/// consoles live in the state directory. Exit codes: 0 ok, 1 operation
/// failed (or a snapshot failed verification), 2 usage error or host not
/// ready (no uplink, no nftables, no e2fsprogs; an image source refused),
/// 3 no such VM or snapshot, 4 conflict (name taken, operation not allowed
/// in the VM's state, snapshot in use or a diff, address, MAC or host port
/// taken, state directory busy, image output exists).
#[derive(Debug, Parser)]
#[command(name = "firehost", version, propagate_version = true)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// State directory: VM records, sockets, consoles, snapshots.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "FIREHOST_STATE_DIR",
        default_value = firehost::manager::DEFAULT_STATE_DIR
    )]
    pub state_dir: PathBuf,

    /// Print one JSON object on stdout instead of text (a stable format:
    /// fields are added, never renamed or removed).
    #[arg(long, global = true)]
    pub json: bool,

    /// The Firecracker binary: a path, or a name looked up in PATH (used by
    /// run, doctor and quickstart).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "FIREHOST_FIRECRACKER",
        default_value = "firecracker"
    )]
    pub firecracker: PathBuf,

    /// An environment variable for the VMMs this command starts (they
    /// inherit nothing else); repeatable.
    #[arg(long, global = true, value_name = "KEY=VALUE")]
    pub vmm_env: Vec<String>,

    /// The most MiB each file written for a VM's guest (console.log,
    /// firecracker.log) holds; older output moves to NAME.1 and then is
    /// dropped, and counted in NAME.dropped.
    #[arg(
        long,
        global = true,
        value_name = "MIB",
        env = "FIREHOST_LOG_MAX_MIB",
        default_value_t = 8,
        value_parser = clap::value_parser!(u64).range(1..=1 << 20)
    )]
    pub log_max_mib: u64,

    /// The default network's bridge, created when absent [default: fhbr0].
    ///
    /// A network setting: recorded in the state directory by the first
    /// command that opens it; a later command that asks for another value
    /// is refused (exit 2): change it with `settings set`.
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        env = "FIREHOST_BRIDGE",
        help_heading = "Network settings"
    )]
    pub bridge: Option<String>,

    /// The guest subnet; the bridge takes its first address, the guests'
    /// gateway [default: 172.30.0.0/16].
    ///
    /// A network setting: recorded in the state directory by the first
    /// command that opens it; a later command that asks for another value
    /// is refused (exit 2): change it with `settings set`.
    #[arg(
        long,
        global = true,
        value_name = "CIDR",
        env = "FIREHOST_SUBNET",
        help_heading = "Network settings"
    )]
    pub subnet: Option<String>,

    /// Where guest traffic leaves the host, masqueraded: `auto` (the
    /// interface of the default route), `none` (guests reach only the host
    /// services allowed and are reached only through published ports) or
    /// an interface name [default: auto].
    ///
    /// A network setting: recorded in the state directory by the first
    /// command that opens it; a later command that asks for another value
    /// is refused (exit 2): change it with `settings set`.
    #[arg(
        long,
        global = true,
        value_name = "auto|none|IFNAME",
        env = "FIREHOST_UPLINK",
        help_heading = "Network settings"
    )]
    pub uplink: Option<String>,

    /// DNS servers for guests, comma-separated or repeated [default: the
    /// host's from /etc/resolv.conf, without loopback addresses].
    ///
    /// A network setting: recorded in the state directory by the first
    /// command that opens it; a later command that asks for another value
    /// is refused (exit 2): change it with `settings set`.
    #[arg(
        long,
        global = true,
        value_name = "IP,IP",
        value_delimiter = ',',
        env = "FIREHOST_DNS",
        help_heading = "Network settings"
    )]
    pub dns: Option<Vec<String>>,

    /// The jailer binary, for jailed VMs (run --jail, or --jail-all).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "FIREHOST_JAILER",
        default_value = "jailer",
        help_heading = "Jail settings"
    )]
    pub jailer: PathBuf,

    /// Where jails are made: <DIR>/<firecracker binary name>/<VM>/root
    /// [default: /srv/jailer].
    ///
    /// A jail setting, recorded in the state directory on first use.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "FIREHOST_CHROOT_BASE",
        help_heading = "Jail settings"
    )]
    pub chroot_base: Option<PathBuf>,

    /// Jail every VM this command creates or restores, as if each had
    /// --jail (a host default: set `FIREHOST_JAIL_ALL=1` in production).
    #[arg(
        long,
        global = true,
        env = "FIREHOST_JAIL_ALL",
        value_parser = clap::builder::FalseyValueParser::new(),
        help_heading = "Jail settings"
    )]
    pub jail_all: bool,

    /// The uids (and gids) given to jailed VMs, one per live VM: START-END,
    /// END excluded [default: 900000-901000].
    #[arg(
        long,
        global = true,
        value_name = "START-END",
        env = "FIREHOST_JAIL_UIDS",
        help_heading = "Jail settings"
    )]
    pub jail_uids: Option<String>,

    /// The cgroup version for jailed VMs' limits [default: the one whose
    /// hierarchy has the controllers the limits need].
    #[arg(
        long,
        global = true,
        value_name = "1|2",
        env = "FIREHOST_CGROUP_VERSION",
        help_heading = "Jail settings"
    )]
    pub cgroup_version: Option<String>,

    /// A host service guests may connect to at the gateway address (TCP
    /// unless /udp), comma-separated or repeated [default: none].
    ///
    /// A network setting: recorded in the state directory by the first
    /// command that opens it; a later command that asks for another value
    /// is refused (exit 2): change it with `settings set`.
    #[arg(
        long = "host-service",
        global = true,
        value_name = "PORT[/udp]",
        value_delimiter = ',',
        env = "FIREHOST_HOST_SERVICES",
        help_heading = "Network settings"
    )]
    pub host_services: Vec<String>,
}

/// `settings`.
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// What to do [default: show].
    #[command(subcommand)]
    pub command: Option<SettingsCommand>,
}

/// `settings` subcommands.
#[derive(Debug, Subcommand)]
pub enum SettingsCommand {
    /// Print the recorded settings.
    Show,
    /// Record the network and jail settings given on this command line
    /// (--subnet, --bridge, --uplink, --dns, --host-service,
    /// --chroot-base, --jail-uids, --cgroup-version) in place of the
    /// recorded ones. Refused (exit 4) while a live VM depends on a
    /// setting that changes.
    Set,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a VM and start it.
    ///
    /// Either the VM ends up running (or created, with --no-start) or
    /// nothing is left behind: a VM whose start fails is removed.
    Run(Box<RunArgs>),
    /// List VMs.
    #[command(visible_alias = "list")]
    Ls,
    /// Show one VM.
    Inspect(NameArg),
    /// Pause a running VM's vCPUs.
    Pause(NameArg),
    /// Resume a paused VM.
    Resume(NameArg),
    /// Stop a VM: Ctrl-Alt-Del, then SIGTERM, then SIGKILL.
    Stop(StopArgs),
    /// Remove a created, stopped or failed VM and everything it owns.
    Rm(RmArgs),
    /// Give a VM, in any state, a new name.
    ///
    /// The VM itself is untouched: its directory, jail, sockets and network
    /// keep the name it was created under. Refused (exit 4) when the new
    /// name is taken or another command is busy with the VM.
    Rename(RenameArgs),
    /// Change a running or paused VM's drive and NIC limits or its
    /// balloon.
    ///
    /// All or nothing: if Firecracker refuses one change, those already
    /// made are taken back and the VM keeps its old settings (exit 1).
    Update(UpdateArgs),
    /// Point a running or paused VM's drive at another file (the guest
    /// sees new media behind the same device).
    ///
    /// A writable drive's new file must not be one another live VM writes
    /// to (exit 4); a jailed VM gets a private copy of it. If Firecracker
    /// refuses, the drive keeps its old file (exit 1).
    SwapDrive(SwapDriveArgs),
    /// Take a snapshot (full, or --diff) of a running or paused VM.
    Snapshot(SnapshotArgs),
    /// Restore a snapshot into a new VM (running, unless --paused).
    ///
    /// Either the new VM ends up running (or paused) or nothing is left
    /// behind.
    Restore(RestoreArgs),
    /// Restore one snapshot into several new VMs at once, named
    /// PREFIX-0, PREFIX-1, ...
    ///
    /// All or nothing: if any restore fails, the clones already made are
    /// removed again.
    Clone(CloneArgs),
    /// Show the host settings recorded in the state directory, or change
    /// them (`settings set` with the new network or jail settings):
    /// refused while a live VM depends on a setting that changes.
    Settings(SettingsArgs),
    /// Manage snapshot bundles: list, inspect, verify, remove, collect
    /// garbage, merge diffs [default: ls].
    Snapshots(SnapshotsArgs),
    /// Warm pools: VMs restored from a snapshot ahead of demand, each
    /// claimed under a caller's name [default: ls].
    ///
    /// A command does not outlive itself, so the CLI fills a pool when it
    /// is made and on `pool fill`, not in the background (a service that
    /// embeds the library does).
    Pool(PoolArgs),
    /// Show each live VM's VMM counters: block and network bytes and
    /// operations, rate limiter throttling, vsock, balloon, API errors.
    ///
    /// Each refresh flushes the VMMs' metrics, so a row covers the time
    /// since the previous one (INTERVAL).
    Stats(crate::stats::StatsArgs),
    /// Print the last lines of a VM's serial console.
    Console(ConsoleArgs),
    /// The default network: list the VMs on it, publish and unpublish
    /// their ports [default: ls].
    ///
    /// The network settings (--bridge, --subnet, --uplink, --dns,
    /// --host-service) say what the network looks like.
    Net(NetArgs),
    /// Check that this host can run VMs, and say how to fix what is missing.
    ///
    /// Exits 2 if any check fails.
    Doctor,
    /// Boot a throwaway VM to check that everything works, with timings.
    ///
    /// Runs the doctor checks; if anything needed is missing (Firecracker,
    /// KVM access, a guest kernel or rootfs), lists what and how to supply
    /// it and exits 2. Otherwise creates and starts a VM in a temporary
    /// state directory, prints the timings and the console, then stops and
    /// removes it, leaving nothing behind. To run commands inside a VM,
    /// give it an image with the agent (image build) and a vsock device
    /// (run --vsock), then use exec.
    Quickstart(QuickstartArgs),
    /// Build guest images with the firehost agent in them: an ext4 root
    /// filesystem from a directory or a tar (build), or a minimal
    /// initramfs (initramfs).
    Image(ImageArgs),
    /// Run a command in a VM through its guest agent and pass its exit
    /// code through (a signal N gives 128+N, a timeout 124).
    ///
    /// The VM needs a vsock device (run --vsock) and the agent in its
    /// image (image build). Output streams as it comes.
    Exec(ExecArgs),
    /// Copy a file into or out of a VM through its guest agent:
    /// `cp FILE NAME:/path` or `cp NAME:/path FILE` (`-` for stdin or
    /// stdout). Files written into the VM are replaced atomically.
    Cp(CpArgs),
    /// Internal: the page-server helper that `restore --uffd` and `clone
    /// --uffd` start for each VM. It reads its orders on stdin.
    #[command(hide = true)]
    PageServer,
    /// Internal: the log keeper each VM's output goes through, so that
    /// its files stay within --log-max-mib.
    #[command(hide = true)]
    LogKeeper {
        /// The keeper's own arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Internal: the egress gateway (resolver and proxy) that serves VMs
    /// with domain rules, in a process of its own that outlives each
    /// command. Managers talk to it on SOCKET.
    #[command(hide = true)]
    EgressGateway {
        /// The unix socket managers talk to it on.
        socket: std::ffi::OsString,
    },
}

/// The arguments that make this binary an egress gateway helper (before
/// the socket path).
pub const EGRESS_GATEWAY_ARGS: [&str; 1] = ["egress-gateway"];

/// The arguments that make this binary a page-server helper.
pub const PAGE_SERVER_ARGS: [&str; 1] = ["page-server"];

/// The arguments that make this binary a log keeper.
pub const LOG_KEEPER_ARGS: [&str; 1] = ["log-keeper"];

/// `run`'s options.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("network").multiple(true)))]
pub struct RunArgs {
    /// Guest kernel image (an uncompressed ELF vmlinux on Intel and AMD).
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initrd image.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Root filesystem image.
    #[arg(long, value_name = "PATH")]
    pub rootfs: PathBuf,
    /// Attach the root filesystem read-only.
    #[arg(long)]
    pub rootfs_ro: bool,
    /// The writable root filesystem is shared on purpose with other live
    /// VMs that share it too (their guests must coordinate). Without it a
    /// second live VM writing to the image is refused (exit 4).
    #[arg(long, conflicts_with = "rootfs_ro")]
    pub rootfs_shared: bool,
    /// Limit the root filesystem's bandwidth, e.g. 100MiB/s or 400Mbit/s.
    #[arg(long, value_name = "RATE", help_heading = "Devices and limits")]
    pub rootfs_bw: Option<String>,
    /// Limit the root filesystem's requests a second.
    #[arg(long, value_name = "N", help_heading = "Devices and limits")]
    pub rootfs_iops: Option<String>,
    /// Attach another drive: id=ID,path=FILE, then any of ro, shared,
    /// cache=unsafe|writeback, engine=sync|async, bw=RATE, iops=N;
    /// repeatable.
    #[arg(long, value_name = "SPEC", help_heading = "Devices and limits")]
    pub drive: Vec<String>,
    /// Limit what the guest receives on eth0, e.g. 10Mbit/s. Implies --net.
    #[arg(
        long,
        value_name = "RATE",
        group = "network",
        help_heading = "Devices and limits"
    )]
    pub net_rx_bw: Option<String>,
    /// Limit what the guest sends on eth0, e.g. 10Mbit/s. Implies --net.
    #[arg(
        long,
        value_name = "RATE",
        group = "network",
        help_heading = "Devices and limits"
    )]
    pub net_tx_bw: Option<String>,
    /// What the guest may reach beyond the host. Implies --net.
    #[command(flatten)]
    pub egress: EgressArgs,
    /// A CPU template: one of Firecracker's static ones (C3, T2, T2S, T2CL,
    /// T2A, V1N1), refused unless this host's CPU is one it is for, or a
    /// custom template file (Firecracker's cpu-config JSON).
    #[arg(long, value_name = "NAME|FILE", help_heading = "Devices and limits")]
    pub cpu_template: Option<String>,
    /// Firecracker's own log for this VM at this level (error, warning,
    /// info, debug, trace, off), into firecracker.log in its directory
    /// [default: info].
    #[arg(long, value_name = "LEVEL", help_heading = "Devices and limits")]
    pub log_level: Option<String>,
    /// Only log lines from Rust modules whose path starts with this.
    #[arg(long, value_name = "MODULE", help_heading = "Devices and limits")]
    pub log_module: Option<String>,
    /// Put each log line's level in it.
    #[arg(long, help_heading = "Devices and limits")]
    pub log_show_level: bool,
    /// Put each log line's source file and line in it.
    #[arg(long, help_heading = "Devices and limits")]
    pub log_show_origin: bool,
    /// Attach a read-only virtio-pmem device: id=ID,path=FILE, then any of
    /// bw=RATE, iops=N; repeatable.
    #[arg(long, value_name = "SPEC", help_heading = "Devices and limits")]
    pub pmem: Vec<String>,
    /// Drop serial console output beyond this rate, e.g. 64KiB/s.
    #[arg(long, value_name = "RATE", help_heading = "Devices and limits")]
    pub serial_bw: Option<String>,
    /// A hotpluggable memory region of this many MiB (a multiple of 128),
    /// given to the guest later with update --memory-hotplug-mib.
    #[arg(long, value_name = "MIB", help_heading = "Devices and limits")]
    pub memory_hotplug_total_mib: Option<u64>,
    /// Give the guest a virtio-rng device fed by the host's entropy.
    #[arg(long, help_heading = "Devices and limits")]
    pub entropy: bool,
    /// Give the guest a memory balloon holding MIB to start with (0: none
    /// taken yet); needs a balloon driver in the guest to take effect.
    #[arg(long, value_name = "MIB", help_heading = "Devices and limits")]
    pub balloon_mib: Option<u32>,
    /// Seconds between the balloon's memory reports [default: off].
    #[arg(
        long,
        value_name = "SECS",
        requires = "balloon_mib",
        help_heading = "Devices and limits"
    )]
    pub balloon_stats_s: Option<u16>,
    /// Let the guest take memory back from the balloon when it runs out.
    #[arg(long, requires = "balloon_mib", help_heading = "Devices and limits")]
    pub balloon_deflate_on_oom: bool,
    /// Have the guest report pages as it frees them, so the host drops
    /// them (free page reporting).
    #[arg(long, requires = "balloon_mib", help_heading = "Devices and limits")]
    pub balloon_free_page_reporting: bool,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u8>,
    /// Guest memory in MiB [default: 128].
    #[arg(long, value_name = "MIB")]
    pub mem_mib: Option<u32>,
    /// Kernel command line [default: console=ttyS0 reboot=k panic=1 pci=off].
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub boot_args: Option<String>,
    /// The VM's name: letters, digits, '_' and '-', at most 64 [default:
    /// "vm-" and 8 random hex digits].
    #[arg(long)]
    pub name: Option<String>,
    /// Create and configure the VM, but do not boot it.
    #[arg(long)]
    pub no_start: bool,
    /// Attach the VM to the default network: a TAP on the bridge, an
    /// address from the subnet, NAT through the uplink (needs root or
    /// `CAP_NET_ADMIN`). Implied by --ip, --mac, --publish and --peer-group.
    #[arg(long, group = "network")]
    pub net: bool,
    /// The guest's address [default: the lowest free one in the subnet].
    #[arg(long, value_name = "IP", group = "network")]
    pub ip: Option<String>,
    /// The guest NIC's MAC [default: derived from the VM's name].
    #[arg(long, value_name = "MAC", group = "network")]
    pub mac: Option<String>,
    /// Forward host port HOST to guest port GUEST (TCP unless /udp);
    /// repeatable.
    #[arg(long, value_name = "HOST:GUEST[/udp]", group = "network")]
    pub publish: Vec<String>,
    /// Let the VM and the other members of this group reach each other;
    /// repeatable. A VM in no group reaches no other VM.
    #[arg(long, value_name = "NAME", group = "network")]
    pub peer_group: Vec<String>,
    /// Don't append the kernel's ip= argument to the boot arguments (the
    /// guest then configures eth0 itself).
    #[arg(long, requires = "network")]
    pub no_ip_arg: bool,
    /// Put the VM's TAP in a network namespace of its own, bridged to the
    /// default network through a veth pair; Firecracker runs in it (jailed
    /// or not) and sees no host interface. Implies --net.
    #[arg(long, group = "network")]
    pub netns: bool,
    /// Give the VM a vsock device, the channel to the guest agent (exec,
    /// cp); its token goes on the kernel command line. Implied by
    /// --guest-cid and --wait-ready.
    #[arg(long)]
    pub vsock: bool,
    /// The vsock device's guest CID [default: 3].
    #[arg(long, value_name = "CID")]
    pub guest_cid: Option<u32>,
    /// Wait until the guest agent answers, at most SECS seconds [default:
    /// 30]; a VM whose agent does not answer in time is removed again.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "30", conflicts_with = "no_start")]
    pub wait_ready: Option<u64>,
    /// Serve this JSON object to the guest as metadata (MMDS, at
    /// 169.254.169.254, version 2), with the VM's identity added under
    /// "firehost". Needs --net (or a flag that implies it).
    #[arg(long, value_name = "FILE")]
    pub mmds: Option<PathBuf>,

    /// Run the VM through Firecracker's jailer: its own chroot, uid and
    /// cgroups (see the jail settings). The limits below imply it.
    #[arg(long, help_heading = "Jail")]
    pub jail: bool,
    /// Run as this uid instead of one from --jail-uids.
    #[arg(long, value_name = "UID", help_heading = "Jail")]
    pub uid: Option<u32>,
    /// Run as this gid [default: the uid].
    #[arg(long, value_name = "GID", help_heading = "Jail")]
    pub gid: Option<u32>,
    /// Host CPUs the VMM may use (cpuset), e.g. 2-3.
    #[arg(long, value_name = "LIST", help_heading = "Jail")]
    pub cpus: Option<String>,
    /// CPU time, percent of one CPU (150 = one and a half).
    #[arg(long, value_name = "PERCENT", help_heading = "Jail")]
    pub cpu_quota: Option<u32>,
    /// Relative CPU weight, 1-10000 [default: the parent's].
    #[arg(long, value_name = "WEIGHT", help_heading = "Jail")]
    pub cpu_weight: Option<u32>,
    /// Memory limit of the VMM, guest memory included, in MiB.
    #[arg(long, value_name = "MIB", help_heading = "Jail")]
    pub memory_max: Option<u64>,
    /// Most threads in the VMM's cgroup.
    #[arg(long, value_name = "N", help_heading = "Jail")]
    pub pids_max: Option<u64>,
}

/// `exec`'s options.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Forward this command's stdin to the process (else it reads
    /// /dev/null).
    #[arg(short, long)]
    pub interactive: bool,
    /// Run the process on a terminal (stdout and stderr merged); with a
    /// terminal here, it is put in raw mode while the process runs.
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable; repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory in the guest [default: /].
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as UID, or UID:GID [default: the agent's user].
    #[arg(short, long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Kill the process after this many seconds (exit code 124).
    #[arg(long, value_name = "SECS")]
    pub timeout_s: Option<u64>,
    /// How long to wait for the guest agent to answer [default: 10].
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub ready_timeout_s: u64,
    /// The VM's name.
    pub name: String,
    /// The program and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `cp`'s options: exactly one side is `NAME:PATH`.
#[derive(Debug, Args)]
pub struct CpArgs {
    /// The source: a local path, `-` for stdin, or NAME:PATH in a VM.
    pub src: String,
    /// The destination: a local path, `-` for stdout, or NAME:PATH in a VM.
    pub dst: String,
    /// Permission bits of a file written into a VM, in octal [default:
    /// the local file's, or 644 from stdin].
    #[arg(long, value_name = "OCTAL")]
    pub mode: Option<String>,
    /// Create missing parent directories in the VM.
    #[arg(short, long)]
    pub parents: bool,
    /// How long to wait for the guest agent to answer [default: 10].
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub ready_timeout_s: u64,
}

/// A command that takes just a VM name.
#[derive(Debug, Args)]
pub struct NameArg {
    /// The VM's name.
    pub name: String,
}

/// `rename`'s arguments.
#[derive(Debug, Args)]
pub struct RenameArgs {
    /// The VM's name now.
    pub name: String,
    /// Its new name (same rules as any VM name).
    pub new_name: String,
}

/// `update`'s arguments.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The VM's name.
    pub name: String,
    /// What to change.
    #[command(flatten)]
    pub devices: DeviceUpdateArgs,
}

/// `swap-drive`'s arguments.
#[derive(Debug, Args)]
pub struct SwapDriveArgs {
    /// The VM's name.
    pub name: String,
    /// The drive's id (rootfs for the root drive).
    pub drive: String,
    /// The new backing file.
    pub file: PathBuf,
}

/// Changes to a VM's devices, for `update` and, on the snapshot's devices,
/// `restore` and `clone`. A RATE is like 100MiB/s or 10Mbit/s; `none`
/// lifts a limit.
#[derive(Debug, Default, Args)]
pub struct DeviceUpdateArgs {
    /// Limit drive ID's bandwidth (rootfs is the root drive); repeatable.
    #[arg(long, value_name = "ID=RATE", help_heading = "Devices and limits")]
    pub drive_bw: Vec<String>,
    /// Limit drive ID's requests a second; repeatable.
    #[arg(long, value_name = "ID=N", help_heading = "Devices and limits")]
    pub drive_iops: Vec<String>,
    /// Limit what the guest receives on eth0.
    #[arg(long, value_name = "RATE", help_heading = "Devices and limits")]
    pub net_rx_bw: Option<String>,
    /// Limit what the guest sends on eth0.
    #[arg(long, value_name = "RATE", help_heading = "Devices and limits")]
    pub net_tx_bw: Option<String>,
    /// Set the balloon's target: MiB taken from the guest (needs a balloon
    /// driver in the guest).
    #[arg(long, value_name = "MIB", help_heading = "Devices and limits")]
    pub balloon_mib: Option<u32>,
    /// Seconds between the balloon's memory reports (statistics that were
    /// off stay off).
    #[arg(long, value_name = "SECS", help_heading = "Devices and limits")]
    pub balloon_stats_s: Option<u16>,
    /// Ask the guest's virtio-mem driver to plug this much of the VM's
    /// hotpluggable memory (a multiple of its block size).
    #[arg(long, value_name = "MIB", help_heading = "Devices and limits")]
    pub memory_hotplug_mib: Option<u64>,
}

/// `stop`'s options.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// The VM's name.
    pub name: String,
    /// Seconds the guest gets after Ctrl-Alt-Del, and the VMM after
    /// SIGTERM, before the next step [default: 10].
    #[arg(long, value_name = "N")]
    pub timeout_s: Option<u64>,
}

/// `rm`'s options.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// The VM's name.
    pub name: String,
    /// Stop the VM first if it is running or paused (SIGTERM, then SIGKILL
    /// after 5 s; no Ctrl-Alt-Del).
    #[arg(short, long)]
    pub force: bool,
}

/// `snapshot`'s options.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The VM's name.
    pub name: String,
    /// The snapshot's name (same rules as a VM name); it is stored in
    /// `<state-dir>/snapshots/<SNAPSHOT>`.
    pub snapshot: String,
    /// Leave a running VM paused after the snapshot.
    #[arg(long)]
    pub no_resume: bool,
    /// Take a diff snapshot: only memory written since the VM's previous
    /// snapshot (or the one it was restored from), which becomes its parent.
    #[arg(long)]
    pub diff: bool,
    /// Keep a copy of the VM's writable drives in the snapshot, taken while
    /// the guest is paused: clones start from the disk that goes with the
    /// snapshot, whatever the VM writes afterwards. Costs what the drives
    /// hold (a reflink where the file system has them).
    #[arg(long, conflicts_with = "diff")]
    pub disks: bool,
    /// Inflate the VM's balloon to MIB first, so memory the guest does not
    /// use is left out of the snapshot, and let it out again after
    /// [default MIB: what the guest reports free, less 32]. Needs a running
    /// guest with a balloon driver and --balloon-stats-s.
    #[arg(long, value_name = "MIB", num_args = 0..=1, default_missing_value = "auto")]
    pub reclaim: Option<String>,
    /// How long --reclaim waits for the guest to fill the balloon before
    /// the snapshot is taken anyway.
    #[arg(long, value_name = "SECS", default_value_t = 5, requires = "reclaim")]
    pub reclaim_wait_s: u64,
}

/// `restore`'s options.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The snapshot's name in `<state-dir>/snapshots`.
    pub snapshot: String,
    /// The new VM's name.
    #[arg(long)]
    pub name: String,
    /// Leave the restored VM paused.
    #[arg(long)]
    pub paused: bool,
    /// Keep the guest's clock where the snapshot left it (by default it is
    /// moved forward by the time since the snapshot, on Intel and AMD).
    #[arg(long)]
    pub snapshot_clock: bool,
    /// Check the memory file's checksum too before loading (slow for big
    /// VMs; the vmstate, sizes and parents are always checked).
    #[arg(long)]
    pub verify_memory: bool,
    /// Put the VM on the host's network under the snapshot's own address
    /// and MAC, as its source was. By default it gets a network namespace
    /// that translates them to a new address, so that any number of VMs
    /// restored from one snapshot run beside its source; with this flag
    /// the restore fails while another VM holds the address.
    #[arg(long)]
    pub keep_address: bool,
    /// Serve guest memory from a userfaultfd page server instead of letting
    /// Firecracker map the memory file. The server is a helper process
    /// that lives as long as the VM (or, with `populate`, until every page
    /// is in), so the VM outlives this command. An `on-demand` restore
    /// records the pages the guest touches; `prefetch` copies those first
    /// on the next restore.
    #[arg(long, value_name = "MODE")]
    pub uffd: Option<UffdMode>,
    /// Metadata for the restored VM, a JSON object [default: the
    /// snapshot's VM's]; its identity under "firehost" is always its own.
    /// Only for snapshots of VMs that had metadata.
    #[arg(long, value_name = "FILE")]
    pub mmds: Option<PathBuf>,
    /// For a jailed snapshot: run as this uid [default: one from
    /// --jail-uids; never the snapshot's own, which its source may hold].
    #[arg(long, value_name = "UID", help_heading = "Jail")]
    pub uid: Option<u32>,
    /// For a jailed snapshot: run as this gid [default: the jail's gid,
    /// else the uid].
    #[arg(long, value_name = "GID", help_heading = "Jail")]
    pub gid: Option<u32>,
    /// Changes to the snapshot's device limits and balloon, made before
    /// the guest runs.
    #[command(flatten)]
    pub devices: DeviceUpdateArgs,
    /// An egress policy instead of the snapshot's.
    #[command(flatten)]
    pub egress: EgressArgs,
}

/// A `--uffd` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UffdMode {
    /// Serve each page when first touched.
    OnDemand,
    /// Copy every page in the background, then detach.
    Populate,
    /// Copy the bundle's recorded working set first, then serve on demand.
    Prefetch,
}

/// `clone`'s options.
#[derive(Debug, Args)]
pub struct CloneArgs {
    /// The snapshot's name in `<state-dir>/snapshots`.
    pub snapshot: String,
    /// How many VMs to restore.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub count: u16,
    /// Name prefix: the clones are PREFIX-0 .. PREFIX-(N-1).
    #[arg(long)]
    pub prefix: String,
    /// Serve the clones' memory from page servers (see `restore --uffd`),
    /// one helper process per clone. The clones share the bundle's page
    /// cache.
    #[arg(long, value_name = "MODE")]
    pub uffd: Option<UffdMode>,
    /// For a jailed snapshot: clone I runs as uid UID+I [default: each
    /// one from --jail-uids].
    #[arg(long, value_name = "UID", help_heading = "Jail")]
    pub uid: Option<u32>,
    /// For a jailed snapshot: clone I runs as gid GID+I [default: the
    /// jail's gid, else its uid].
    #[arg(long, value_name = "GID", help_heading = "Jail")]
    pub gid: Option<u32>,
    /// Changes to the snapshot's device limits and balloon, the same for
    /// every clone.
    #[command(flatten)]
    pub devices: DeviceUpdateArgs,
    /// An egress policy instead of the snapshot's, the same for every
    /// clone.
    #[command(flatten)]
    pub egress: EgressArgs,
}

/// `snapshots`: a group of subcommands over `<state-dir>/snapshots`.
#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// What to do with the snapshots [default: ls].
    #[command(subcommand)]
    pub command: Option<SnapshotsCommand>,
}

/// `pool`'s subcommands.
#[derive(Debug, Args)]
pub struct PoolArgs {
    /// What to do with the pools [default: ls].
    #[command(subcommand)]
    pub command: Option<PoolCommand>,
}

/// The subcommands of `pool`.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// List the pools with their ready members.
    #[command(visible_alias = "list")]
    Ls,
    /// Make a pool of VMs restored from a snapshot, and fill it.
    Create(PoolCreateArgs),
    /// Make members until the pool is at its size.
    Fill(PoolNameArg),
    /// Take a ready member under a name of your own (made on the spot when
    /// none is ready, unless --no-cold-start).
    Claim(PoolClaimArgs),
    /// Remove a pool and its unclaimed members.
    Rm(PoolNameArg),
}

/// A pool's name.
#[derive(Debug, Args)]
pub struct PoolNameArg {
    /// The pool's name.
    pub pool: String,
}

/// `pool create`'s options.
#[derive(Debug, Args)]
pub struct PoolCreateArgs {
    /// The pool's name (a VM name of at most 55 characters).
    pub pool: String,
    /// The full snapshot members are restored from.
    #[arg(long)]
    pub snapshot: String,
    /// How many ready members the pool keeps.
    #[arg(long)]
    pub size: u32,
    /// How many members are made at once [default: 2, or the size if
    /// smaller].
    #[arg(long)]
    pub parallel: Option<u32>,
    /// Record the pool without making any member yet.
    #[arg(long)]
    pub no_fill: bool,
}

/// `pool claim`'s options.
#[derive(Debug, Args)]
pub struct PoolClaimArgs {
    /// The pool.
    pub pool: String,
    /// The name the claimed VM gets.
    pub name: String,
    /// Fail (exit 4) rather than make the VM when no member is ready (the
    /// CLI does not refill pools in the background, so there is nothing to
    /// wait for: `pool fill` tops a pool up).
    #[arg(long)]
    pub no_cold_start: bool,
    /// The claimed VM's metadata, a JSON object [default: the template's].
    #[arg(long, value_name = "FILE")]
    pub mmds: Option<PathBuf>,
}

/// The subcommands of `snapshots`.
#[derive(Debug, Subcommand)]
pub enum SnapshotsCommand {
    /// List the snapshot bundles, and those that are incomplete or
    /// unreadable.
    #[command(visible_alias = "list")]
    Ls,
    /// Show one snapshot: its manifest, files, leases, children and
    /// recorded working set.
    Inspect(SnapshotNameArg),
    /// Check a snapshot and every parent it depends on against their
    /// manifests: files, sizes, vmstate checksums (and memory checksums
    /// with --memory).
    ///
    /// Prints the result either way; exits 1 if a bundle is bad.
    Verify(VerifyArgs),
    /// Remove a snapshot bundle (complete or not).
    ///
    /// Refused (exit 4) while a VM restored from it exists, or while a diff
    /// snapshot names it as its parent.
    Rm(SnapshotNameArg),
    /// Remove what crashes left behind: bundles without a manifest,
    /// temporary and half-deleted directories, leases of VMs that are gone.
    ///
    /// Bundles that are in use, being written or unreadable are kept.
    Gc(GcArgs),
    /// Merge a diff snapshot and its parents into a new full snapshot,
    /// which can be restored. The diff and its parents are left as they
    /// are.
    Merge(MergeArgs),
}

/// `net`: a group of subcommands over the default network.
#[derive(Debug, Args)]
pub struct NetArgs {
    /// What to do with the network [default: ls].
    #[command(subcommand)]
    pub command: Option<NetCommand>,
}

/// The subcommands of `net`.
#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// List the VMs on the default network with their addresses, MACs,
    /// TAPs and published ports.
    #[command(visible_alias = "list")]
    Ls,
    /// Forward a host port to a VM on the network, now (the mapping stays
    /// until unpublished or the VM is removed).
    ///
    /// Refused (exit 4) if another VM publishes the host port.
    Publish(PortArgs),
    /// Stop forwarding a host port to a VM (not an error if it was not).
    Unpublish(PortArgs),
    /// Print a VM's egress policy and traffic, or replace its policy with
    /// the one the flags give (in one firewall transaction; open
    /// connections follow the new policy at their next packet).
    Egress(NetEgressArgs),
}

/// `net egress`'s arguments.
#[derive(Debug, Args)]
pub struct NetEgressArgs {
    /// The VM's name.
    pub name: String,
    /// The new policy; none of these flags: print the policy in force.
    #[command(flatten)]
    pub egress: EgressArgs,
}

/// `net publish` and `net unpublish`'s arguments.
#[derive(Debug, Args)]
pub struct PortArgs {
    /// The VM's name.
    pub name: String,
    /// The host port and the guest port (TCP unless /udp).
    #[arg(value_name = "HOST:GUEST[/udp]")]
    pub mapping: String,
}

/// A command that takes just a snapshot name.
#[derive(Debug, Args)]
pub struct SnapshotNameArg {
    /// The snapshot's name in `<state-dir>/snapshots`.
    pub name: String,
}

/// `snapshots verify`'s options.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The snapshot's name in `<state-dir>/snapshots`.
    pub name: String,
    /// Hash the memory files too (reads all of guest memory; without it
    /// their sizes are checked).
    #[arg(long)]
    pub memory: bool,
}

/// `snapshots gc`'s options.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Also remove complete snapshots created at least N seconds ago that
    /// no VM uses and no diff builds on.
    #[arg(long, value_name = "N")]
    pub older_than_s: Option<u64>,
}

/// `snapshots merge`'s options.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The diff snapshot to merge with its parents.
    pub diff: String,
    /// The new full snapshot's name.
    pub new: String,
}

/// `console`'s options.
#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// The VM's name.
    pub name: String,
    /// How many lines to print.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub tail: usize,
}

/// `quickstart`'s options.
#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// Guest kernel image.
    #[arg(long, value_name = "PATH", env = "FIREHOST_KERNEL")]
    pub kernel: Option<PathBuf>,
    /// Root filesystem image.
    #[arg(long, value_name = "PATH", env = "FIREHOST_ROOTFS")]
    pub rootfs: Option<PathBuf>,
}

/// `image`: a group of subcommands that build guest images.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// What to build.
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// The subcommands of `image`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build an ext4 root filesystem image from a directory or a tar, with
    /// the agent injected.
    ///
    /// A directory is read, never changed; a tar (plain or gzip'd, as
    /// `docker export` writes) is unpacked into a private directory beside
    /// FILE, and refused if an entry would land outside it. The agent goes
    /// to /sbin/init (replacing what is there; the output says what) or,
    /// with --agent-beside-init, to /sbin/firehost-agent. Needs
    /// e2fsprogs (mkfs.ext4, debugfs, tune2fs); no root and no loop
    /// mount, but only root keeps a tar's file owners. On failure, no
    /// FILE is written.
    Build(ImageBuildArgs),
    /// Write a gzip'd initramfs: the agent as /init, a static busybox with
    /// its common applets in /bin, /dev/console and /dev/null.
    ///
    /// Boot it with `run --initrd FILE`: the kernel runs its /init whatever
    /// root drive is attached. Both binaries must be statically linked. To get a static busybox on Debian or
    /// Ubuntu: `apt-get download busybox-static && dpkg-deb -x
    /// busybox-static_*.deb bb`, then use bb/bin/busybox.
    Initramfs(InitramfsArgs),
}

/// `image build`'s options.
#[derive(Debug, Args)]
pub struct ImageBuildArgs {
    /// The root filesystem: a directory, or a tar archive (plain or
    /// gzip'd).
    #[arg(long, value_name = "DIR|TAR")]
    pub from: PathBuf,
    /// The image file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The image size in MiB [default: the content's size × 1.25 + 64].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub size_mib: Option<u64>,
    /// The agent binary [default: firehost-agent next to this program,
    /// else in PATH].
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
    /// Put the agent at /sbin/init, replacing the image's init: the kernel
    /// starts it as PID 1 (the default).
    #[arg(long)]
    pub agent_as_init: bool,
    /// Put the agent at /sbin/firehost-agent and leave the image's init
    /// alone (which must then start the agent).
    #[arg(long, conflicts_with = "agent_as_init")]
    pub agent_beside_init: bool,
    /// Set the ext4 read-only feature: the guest mounts the image
    /// read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `image initramfs`'s options.
#[derive(Debug, Args)]
pub struct InitramfsArgs {
    /// The agent binary, which becomes /init (statically linked).
    #[arg(long, value_name = "PATH")]
    pub agent: PathBuf,
    /// A statically linked busybox (see above for where to get one).
    #[arg(long, value_name = "PATH")]
    pub busybox: PathBuf,
    /// The gzip'd cpio file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_before_and_after_the_subcommand() {
        let a = Cli::try_parse_from(["firehost", "--json", "ls", "--state-dir", "/s"]).unwrap();
        assert!(a.global.json);
        assert_eq!(a.global.state_dir, PathBuf::from("/s"));
        let b = Cli::try_parse_from(["firehost", "inspect", "x", "--json"]).unwrap();
        assert!(b.global.json);
    }

    #[test]
    fn snapshots_without_a_subcommand_parses_as_the_default() {
        let a = Cli::try_parse_from(["firehost", "snapshots"]).unwrap();
        assert!(matches!(
            a.command,
            Command::Snapshots(SnapshotsArgs { command: None })
        ));
        let b =
            Cli::try_parse_from(["firehost", "snapshots", "gc", "--older-than-s", "60"]).unwrap();
        assert!(matches!(
            b.command,
            Command::Snapshots(SnapshotsArgs {
                command: Some(SnapshotsCommand::Gc(GcArgs {
                    older_than_s: Some(60)
                }))
            })
        ));
    }

    #[test]
    fn network_lists_take_commas_and_repetition() {
        let a = Cli::try_parse_from([
            "firehost",
            "--dns",
            "1.1.1.1,9.9.9.9",
            "net",
            "--host-service",
            "53/udp,8125/udp",
            "--host-service",
            "22",
        ])
        .unwrap();
        assert_eq!(
            a.global.dns,
            Some(vec!["1.1.1.1".to_owned(), "9.9.9.9".to_owned()])
        );
        assert_eq!(a.global.host_services, ["53/udp", "8125/udp", "22"]);
        assert!(matches!(a.command, Command::Net(NetArgs { command: None })));
    }

    #[test]
    fn image_build_takes_one_agent_placement() {
        let build = ["firehost", "image", "build", "--from", "d", "--out", "o"];
        let both = [&build[..], &["--agent-as-init", "--agent-beside-init"]].concat();
        assert!(Cli::try_parse_from(both).is_err());
        let beside = [&build[..], &["--agent-beside-init", "--size-mib", "100"]].concat();
        let parsed = Cli::try_parse_from(beside).unwrap();
        let Command::Image(ImageArgs {
            command: ImageCommand::Build(args),
        }) = parsed.command
        else {
            panic!("not image build");
        };
        assert!(args.agent_beside_init && !args.agent_as_init);
        assert_eq!(args.size_mib, Some(100));
        let zero = [&build[..], &["--size-mib", "0"]].concat();
        assert!(Cli::try_parse_from(zero).is_err());
    }

    #[test]
    fn no_ip_arg_needs_a_network_flag() {
        let run = ["firehost", "run", "--kernel", "k", "--rootfs", "r"];
        let alone = [&run[..], &["--no-ip-arg"]].concat();
        assert!(Cli::try_parse_from(alone).is_err());
        for flag in [
            &["--net"][..],
            &["--ip", "172.30.0.9"],
            &["--publish", "80:80"],
        ] {
            let args = [&run[..], &["--no-ip-arg"], flag].concat();
            assert!(Cli::try_parse_from(&args).is_ok(), "{args:?}");
        }
    }
}

/// Which egress flag a rule came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressFlag {
    /// `--allow CIDR[:PORTS][/udp]`.
    Allow,
    /// `--deny CIDR[:PORTS][/udp]`.
    Deny,
    /// `--allow-domain NAME`.
    AllowDomain,
    /// `--deny-domain NAME`.
    DenyDomain,
}

impl EgressFlag {
    /// Each flag with its clap id.
    pub const ALL: [(EgressFlag, &'static str); 4] = [
        (EgressFlag::Allow, "egress_allow"),
        (EgressFlag::Deny, "egress_deny"),
        (EgressFlag::AllowDomain, "egress_allow_domain"),
        (EgressFlag::DenyDomain, "egress_deny_domain"),
    ];

    /// The option's name, for error messages.
    pub fn option(self) -> &'static str {
        match self {
            EgressFlag::Allow => "--allow",
            EgressFlag::Deny => "--deny",
            EgressFlag::AllowDomain => "--allow-domain",
            EgressFlag::DenyDomain => "--deny-domain",
        }
    }
}

/// The egress flags of `run`, `restore`, `clone` and `net egress`, with
/// the rules in the order they were given on the command line (the order
/// they are checked in). Implemented by hand because clap's derive keeps
/// each flag's values apart and loses that order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EgressArgs {
    /// `--egress-default`.
    pub default: Option<String>,
    /// The rules, in command-line order.
    pub rules: Vec<(EgressFlag, String)>,
}

impl EgressArgs {
    /// Whether any egress flag was given.
    pub fn any(&self) -> bool {
        self.default.is_some() || !self.rules.is_empty()
    }
}

impl clap::FromArgMatches for EgressArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut rules = Vec::new();
        for (flag, id) in EgressFlag::ALL {
            if let (Some(values), Some(indices)) =
                (matches.get_many::<String>(id), matches.indices_of(id))
            {
                rules.extend(values.zip(indices).map(|(v, i)| (i, flag, v.clone())));
            }
        }
        rules.sort_by_key(|(index, _, _)| *index);
        Ok(EgressArgs {
            default: matches.get_one::<String>("egress_default").cloned(),
            rules: rules.into_iter().map(|(_, flag, v)| (flag, v)).collect(),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for EgressArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        use clap::{Arg, ArgAction};
        let heading = "Egress policy";
        let rule =
            |id: &'static str, long: &'static str, value: &'static str, help: &'static str| {
                Arg::new(id)
                    .long(long)
                    .value_name(value)
                    .action(ArgAction::Append)
                    .help(help)
                    .help_heading(heading)
            };
        cmd.arg(
            Arg::new("egress_default")
                .long("egress-default")
                .value_name("allow|deny")
                .value_parser(["allow", "deny"])
                .help(
                    "What the rules do not match [default: deny when an --allow or \
                     --allow-domain is given, else allow]",
                )
                .help_heading(heading),
        )
        .arg(rule(
            "egress_allow",
            "allow",
            "CIDR[:PORTS][/udp]",
            "Let the guest reach these addresses (PORTS like 443 or 8000-8100, TCP unless \
             /udp; no ports: any protocol); repeatable, checked in command-line order",
        ))
        .arg(rule(
            "egress_deny",
            "deny",
            "CIDR[:PORTS][/udp]",
            "Keep the guest from these addresses; repeatable",
        ))
        .arg(rule(
            "egress_allow_domain",
            "allow-domain",
            "NAME",
            "Let the guest resolve and connect to NAME (or *.NAME); repeatable",
        ))
        .arg(rule(
            "egress_deny_domain",
            "deny-domain",
            "NAME",
            "Keep the guest from NAME (or *.NAME); repeatable",
        ))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}
