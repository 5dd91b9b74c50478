//! Stage two and the library calls: one function per subcommand.
//!
//! Every VM command opens the state directory with a [`Manager`] whose
//! consoles go to files ([`ConsoleTarget::File`]: VMs outlive this
//! process), whose VMMs log at info level into `firecracker.log` (so the
//! console holds only what the guest printed), and that waits up to [`LOCK_TIMEOUT`] for another `firehost`
//! process to release the directory; then it works through the
//! [`VmProvider`] trait only. The `snapshots` group works on the
//! manager's [`Snapshots`] instead (bundles are not VMs), while the
//! manager keeps the state directory locked; the `net` group on the
//! manager's default network.
//!
//! The network settings (`--bridge`, `--subnet`, `--uplink`, `--dns`,
//! `--host-service`) go into every manager's [`NetworkConfig`], parsed by
//! the library's own types: a manager that opens the state directory
//! reconciles the network of the live VMs with them.

use std::io::Write;
use std::str::FromStr;
use std::time::Duration;

use firehost::doctor::{DoctorConfig, run_checks};
use firehost::manager::settings::HostSettings;
use firehost::manager::{
    BalloonReclaim, ClaimOptions, ConsoleTarget, DriveLimitUpdate, NicLimitUpdate, PoolName,
    PoolSpec, PoolTemplate, Recovery, RestoreMemory, RestoreOptions, SettingsPolicy,
    SnapshotOptions, Snapshots, StopOptions, VmUpdate,
};
use firehost::net::firewall::PortMapping;
use firehost::net::host::{NetSpec, NetworkConfig, Uplink};
use firehost::snapshot::store::GcOptions;
use firehost::snapshot::uffd::PageServerProgram;
use firehost::snapshot::{BundleError, SnapshotName, StoreError, VerifyOptions};
use firehost::spec::{BalloonSpec, DriveIo, EntropySpec};
use firehost::vmm::LogLevel;
use firehost::vocab::{
    Bandwidth, Bucket, BucketChange, EgressAction, EgressPolicy, EgressRule, LimitChange, RateLimit,
};
use firehost::vsock::VsockSpec;
use firehost::{Manager, ManagerConfig, VmError, VmId, VmProvider, VmSpec, VmState};
use serde::Serialize;

use crate::args::{
    Cli, CloneArgs, Command, ConsoleArgs, DeviceUpdateArgs, EgressArgs, EgressFlag, GcArgs,
    GlobalArgs, MergeArgs, NameArg, NetArgs, NetCommand, NetEgressArgs, PoolArgs, PoolCommand,
    PoolNameArg, PortArgs, RenameArgs, RestoreArgs, RmArgs, RunArgs, SettingsArgs, SettingsCommand,
    SnapshotArgs, SnapshotNameArg, SnapshotsArgs, SnapshotsCommand, StopArgs, UffdMode, UpdateArgs,
    VerifyArgs,
};
use crate::exit::{CliError, Exit, ValueError};
use crate::human;
use crate::json::{
    BundleJson, ConsoleJson, DoctorJson, EgressJson, GcJson, ListJson, NetListJson, PoolJson,
    PoolListJson, PoolRemovedJson, RemovedJson, SettingsJson, SnapshotDetailsJson, SnapshotJson,
    SnapshotListJson, SnapshotRemovedJson, StopJson, TrafficJson, UnreadableVmJson,
    VerifyErrorJson, VerifyJson, VmJson,
};

/// How long a command waits for another `firehost` process to release the
/// state directory before failing with exit code 4.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// The grace `rm -f` gives the VMM after SIGTERM before SIGKILL.
pub const FORCE_GRACE: Duration = Duration::from_secs(5);

/// Where a command's result goes: JSON or text, on stdout.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    json: bool,
}

impl Out {
    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        self.json
    }

    /// Whether the output is JSON (`--json`).
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Prints `value` as one JSON line, or as the text `human` renders.
    pub fn emit<T: Serialize>(&self, value: &T, human: fn(&T) -> String) -> Result<(), CliError> {
        let mut text = if self.json {
            serde_json::to_string(value).expect("output types always serialise")
        } else {
            human(value)
        };
        if self.json {
            text.push('\n');
        }
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(CliError::Output)
    }
}

/// Runs the parsed command.
pub async fn dispatch(cli: Cli) -> Result<Exit, CliError> {
    let out = Out {
        json: cli.global.json,
    };
    let global = &cli.global;
    match cli.command {
        Command::Doctor => return doctor(global, out).await,
        Command::Quickstart(args) => return crate::quickstart::run(global, args, out).await,
        Command::Image(args) => {
            crate::image::run(args, out).await?;
            return Ok(Exit::Success);
        }
        _ => {}
    }
    if let Command::Settings(args) = cli.command {
        return settings(global, args, out).await;
    }
    let manager = open_manager(global, recovery_for(&cli.command)).await?;
    let provider: &dyn VmProvider = &manager;
    match cli.command {
        Command::Run(args) => run(&manager, *args, out).await,
        Command::Exec(args) => return crate::exec::exec(&manager, args, out).await,
        Command::Cp(args) => crate::exec::cp(&manager, args, out).await,
        Command::Ls => ls(&manager, out).await,
        Command::Inspect(NameArg { name }) => inspect(&manager, &name, out).await,
        Command::Pause(NameArg { name }) => {
            let vm = provider.pause(&vm_id(&name)?).await?;
            out.emit(&VmJson::from(&vm), human::vm_state_line)
        }
        Command::Resume(NameArg { name }) => {
            let vm = provider.resume(&vm_id(&name)?).await?;
            out.emit(&VmJson::from(&vm), human::vm_state_line)
        }
        Command::Stop(args) => stop(provider, args, out).await,
        Command::Rm(args) => rm(&manager, args, out).await,
        Command::Rename(RenameArgs { name, new_name }) => {
            let vm = provider.rename(&vm_id(&name)?, &vm_id(&new_name)?).await?;
            out.emit(&VmJson::from(&vm), human::vm_state_line)
        }
        Command::Update(args) => update(&manager, args, out).await,
        Command::Stats(args) => crate::stats::stats(&manager, args, out).await,
        Command::SwapDrive(args) => {
            let id = vm_id(&args.name)?;
            let info = manager.swap_drive(&id, &args.drive, &args.file).await?;
            out.emit(&VmJson::from(&info), human::vm_record)
        }
        Command::Snapshot(args) => snapshot(provider, args, out).await,
        Command::Restore(args) => restore(&manager, args, out).await,
        Command::Clone(args) => clone(&manager, args, out).await,
        Command::Console(args) => console(provider, args, out).await,
        Command::Snapshots(args) => return snapshots(manager.snapshots(), args, out).await,
        Command::Net(args) => net(&manager, args, out).await,
        Command::Pool(args) => pool(&manager, args, out).await,
        Command::Doctor
        | Command::Quickstart(_)
        | Command::Image(_)
        | Command::PageServer
        | Command::LogKeeper { .. }
        | Command::EgressGateway { .. }
        | Command::Settings(_) => {
            unreachable!("handled above")
        }
    }?;
    Ok(Exit::Success)
}

/// How much recovery a command's manager does: commands that only look
/// change nothing; the others load only what they touch (see
/// [`Recovery`]), so their cost does not grow with the number of VMs.
fn recovery_for(command: &Command) -> Recovery {
    match command {
        Command::Ls | Command::Inspect(_) | Command::Console(_) => Recovery::ReadOnly,
        Command::Net(NetArgs { command: None })
        | Command::Net(NetArgs {
            command: Some(NetCommand::Ls),
        })
        | Command::Pool(PoolArgs { command: None })
        | Command::Pool(PoolArgs {
            command: Some(PoolCommand::Ls),
        }) => Recovery::ReadOnly,
        _ => Recovery::Lazy,
    }
}

/// The manager configuration of this command line: the host settings
/// recorded in the state directory, with what the command line (or the
/// environment) says on top. A value that differs from the recorded one
/// makes opening fail (exit 2), unless `policy` says otherwise.
fn manager_config(
    global: &GlobalArgs,
    recovery: Recovery,
    policy: SettingsPolicy,
) -> Result<ManagerConfig, CliError> {
    let mut config = ManagerConfig::new(&global.state_dir, &global.firecracker);
    config.console = ConsoleTarget::File;
    config.vmm_log = Some(LogLevel::Info);
    // `stats` reads them; Firecracker writes a line a minute otherwise.
    config.vmm_metrics = true;
    config.timeouts.lock = LOCK_TIMEOUT;
    config.recovery = recovery;
    config.settings = policy;
    // A command does not outlive itself: pools fill when told to.
    config.pool_refill = false;
    config.jail = Some(firehost::jail::JailConfig::default());
    let recorded = HostSettings::read(&global.state_dir)
        .map_err(|source| CliError::Manager(firehost::ManagerError::Settings { source }))?;
    if let Some(recorded) = &recorded {
        recorded.apply_to(&mut config);
    }
    apply_network_flags(global, &mut config.network)?;
    if let Some(jail) = config.jail.as_mut() {
        apply_jail_flags(global, jail)?;
    }
    // Restored VMs must outlive this short-lived command: their page
    // servers run in helper processes (this same binary).
    let exe = std::env::current_exe().ok();
    config.page_server_program = exe
        .clone()
        .map(|exe| PageServerProgram::new(exe, crate::args::PAGE_SERVER_ARGS));
    // And the gateway that answers the names of VMs with domain rules.
    config.network.domains.program = exe
        .clone()
        .map(|exe| firehost::net::host::GatewayProgram::new(exe, crate::args::EGRESS_GATEWAY_ARGS));
    // Likewise the keepers that bound what each guest's files can hold.
    config.log_keeper_program =
        exe.map(|exe| firehost::vmm::keeper::KeeperProgram::new(exe, crate::args::LOG_KEEPER_ARGS));
    config.log_limits.max_bytes = global.log_max_mib << 20;
    for pair in &global.vmm_env {
        match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                config.vmm_env.push((key.into(), value.into()));
            }
            _ => {
                return Err(CliError::Unsupported {
                    what: format!("--vmm-env {pair:?} is not KEY=VALUE"),
                });
            }
        }
    }
    Ok(config)
}

async fn open_manager(global: &GlobalArgs, recovery: Recovery) -> Result<Manager, CliError> {
    let config = manager_config(global, recovery, SettingsPolicy::Require)?;
    Ok(Manager::open(config).await?)
}

/// `settings` and `settings set`.
async fn settings(global: &GlobalArgs, args: SettingsArgs, out: Out) -> Result<Exit, CliError> {
    let policy = match args.command.unwrap_or(SettingsCommand::Show) {
        SettingsCommand::Show => SettingsPolicy::Require,
        SettingsCommand::Set => SettingsPolicy::Change,
    };
    let config = manager_config(global, Recovery::Lazy, policy)?;
    let manager = Manager::open(config).await?;
    let recorded = HostSettings::read(&global.state_dir)
        .map_err(|source| CliError::Manager(firehost::ManagerError::Settings { source }))?
        .unwrap_or_else(|| HostSettings::of(manager.config()));
    let mut network = serde_json::to_value(&recorded.network).unwrap_or_default();
    // As the options spell them: `53/udp`.
    network["host_services"] = recorded
        .network
        .host_services
        .iter()
        .map(ToString::to_string)
        .collect();
    let json = SettingsJson {
        state_dir: global.state_dir.display().to_string(),
        network,
        jail: serde_json::to_value(&recorded.jail).unwrap_or_default(),
    };
    out.emit(&json, human::settings)?;
    Ok(Exit::Success)
}

/// The jail `run` asks for: with --jail or any limit.
fn jail_spec(args: &RunArgs) -> Option<firehost::jail::JailSpec> {
    let spec = firehost::jail::JailSpec {
        uid: args.uid,
        gid: args.gid,
        cpus: args.cpus.clone(),
        cpu_quota_percent: args.cpu_quota,
        cpu_weight: args.cpu_weight,
        memory_max_mib: args.memory_max,
        pids_max: args.pids_max,
        fsize_max_bytes: None,
    };
    (args.jail || spec != firehost::jail::JailSpec::default()).then_some(spec)
}

/// Stage two for the jail settings: the flags given go into `config`.
fn apply_jail_flags(
    global: &GlobalArgs,
    config: &mut firehost::jail::JailConfig,
) -> Result<(), CliError> {
    config.jailer = global.jailer.clone();
    config.always = global.jail_all;
    if let Some(base) = &global.chroot_base {
        config.chroot_base = base.clone();
    }
    if let Some(range) = &global.jail_uids {
        let parsed = range
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
            .filter(|(a, b)| 0 < *a && a < b);
        let (start, end) = parsed.ok_or_else(|| CliError::Unsupported {
            what: format!("--jail-uids {range:?} is not START-END with 0 < START < END"),
        })?;
        config.uid_range = start..end;
    }
    if let Some(version) = &global.cgroup_version {
        config.cgroup_version = Some(version.parse().map_err(|what| CliError::Unsupported {
            what: format!("--cgroup-version: {what}"),
        })?);
    }
    Ok(())
}

/// Stage two for the network settings: what the command line (or the
/// environment) says, parsed by the library's own types, goes into
/// `config`.
pub fn apply_network_flags(
    global: &GlobalArgs,
    config: &mut NetworkConfig,
) -> Result<(), CliError> {
    if let Some(bridge) = &global.bridge {
        config.bridge = parse("--bridge", bridge)?;
    }
    if let Some(subnet) = &global.subnet {
        config.subnet = parse("--subnet", subnet)?;
    }
    if let Some(uplink) = &global.uplink {
        config.uplink = match uplink.as_str() {
            "auto" => Uplink::Auto,
            "none" => Uplink::None,
            name => Uplink::Interface(parse("--uplink", name)?),
        };
    }
    if let Some(dns) = &global.dns {
        config.dns = Some(parse_all("--dns", dns)?);
    }
    // Not given is not "none": the recorded services stay.
    if !global.host_services.is_empty() {
        config.host_services = parse_all("--host-service", &global.host_services)?;
    }
    Ok(())
}

/// Stage two for one option value.
fn parse<T>(option: &'static str, value: &str) -> Result<T, CliError>
where
    T: FromStr,
    T::Err: Into<ValueError>,
{
    value.parse().map_err(|e: T::Err| CliError::InvalidValue {
        option,
        value: value.to_owned(),
        source: e.into(),
    })
}

/// Stage two for each value of a repeated option.
fn parse_all<T>(option: &'static str, values: &[String]) -> Result<Vec<T>, CliError>
where
    T: FromStr,
    T::Err: Into<ValueError>,
{
    values.iter().map(|v| parse(option, v)).collect()
}

/// Stage two for `run`'s network flags: `None` unless one of them asks
/// for a network.
fn net_spec(args: &RunArgs) -> Result<Option<NetSpec>, CliError> {
    let wanted = args.net
        || args.net_rx_bw.is_some()
        || args.net_tx_bw.is_some()
        || args.ip.is_some()
        || args.mac.is_some()
        || !args.publish.is_empty()
        || !args.peer_group.is_empty()
        || args.netns
        || args.egress.any();
    if !wanted {
        return Ok(None);
    }
    Ok(Some(NetSpec {
        ip: args.ip.as_deref().map(|ip| parse("--ip", ip)).transpose()?,
        mac: args
            .mac
            .as_deref()
            .map(|mac| parse("--mac", mac))
            .transpose()?,
        publish: parse_all("--publish", &args.publish)?,
        peer_groups: parse_all("--peer-group", &args.peer_group)?,
        kernel_ip_arg: !args.no_ip_arg,
        netns: args.netns,
        rx_limit: bandwidth_limit("--net-rx-bw", args.net_rx_bw.as_deref())?,
        tx_limit: bandwidth_limit("--net-tx-bw", args.net_tx_bw.as_deref())?,
        egress: egress_policy(&args.egress)?.unwrap_or_default(),
    }))
}

/// Stage two for the egress flags: `None` when none was given. The
/// default, unless given, is deny when any rule allows something (an
/// allowlist) and allow otherwise (a denylist).
fn egress_policy(args: &EgressArgs) -> Result<Option<EgressPolicy>, CliError> {
    if !args.any() {
        return Ok(None);
    }
    let mut rules = Vec::with_capacity(args.rules.len());
    for (flag, value) in &args.rules {
        let option = flag.option();
        rules.push(match flag {
            EgressFlag::Allow => EgressRule::allow(parse(option, value)?),
            EgressFlag::Deny => EgressRule::deny(parse(option, value)?),
            EgressFlag::AllowDomain => EgressRule::allow_domain(parse(option, value)?),
            EgressFlag::DenyDomain => EgressRule::deny_domain(parse(option, value)?),
        });
    }
    let default = match args.default.as_deref() {
        Some(text) => parse("--egress-default", text)?,
        None if rules.iter().any(|r| r.action == EgressAction::Allow) => EgressAction::Deny,
        None => EgressAction::Allow,
    };
    let text = args
        .rules
        .iter()
        .map(|(flag, value)| format!("{} {value}", flag.option()))
        .collect::<Vec<_>>()
        .join(" ");
    EgressPolicy::new(default, rules)
        .map(Some)
        .map_err(|e| CliError::InvalidValue {
            option: "egress policy",
            value: text,
            source: e.into(),
        })
}

/// A limit of `rate` bytes a second, or none.
fn bandwidth_limit(option: &'static str, rate: Option<&str>) -> Result<RateLimit, CliError> {
    let bandwidth = rate
        .map(|r| {
            device_value(option, r, |t| {
                Ok::<_, crate::device_args::DeviceSyntaxError>(t.parse::<Bandwidth>()?)
            })
        })
        .transpose()?
        .map(|r| Bucket::per_second(r.bytes_per_second()));
    Ok(RateLimit {
        bandwidth,
        ops: None,
    })
}

/// Stage two for `--rootfs-bw` and `--rootfs-iops`.
fn rootfs_io(args: &RunArgs) -> Result<DriveIo, CliError> {
    let mut limit = bandwidth_limit("--rootfs-bw", args.rootfs_bw.as_deref())?;
    if let Some(n) = &args.rootfs_iops {
        limit.ops = match device_value("--rootfs-iops", n, crate::device_args::ops_change)? {
            BucketChange::Set(bucket) => Some(bucket),
            _ => None,
        };
    }
    Ok(DriveIo {
        limit,
        ..DriveIo::default()
    })
}

/// Stage two for the log flags: a log of the VM's own when any is given.
fn log_spec(args: &RunArgs) -> Result<Option<firehost::spec::LogSpec>, CliError> {
    let wanted = args.log_level.is_some()
        || args.log_module.is_some()
        || args.log_show_level
        || args.log_show_origin;
    if !wanted {
        return Ok(None);
    }
    let level = match args.log_level.as_deref() {
        None => LogLevel::Info,
        Some(text) => {
            // Firecracker's names, in any case.
            let known = [
                ("error", LogLevel::Error),
                ("warning", LogLevel::Warning),
                ("info", LogLevel::Info),
                ("debug", LogLevel::Debug),
                ("trace", LogLevel::Trace),
                ("off", LogLevel::Off),
            ];
            known
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(text))
                .map(|(_, level)| *level)
                .ok_or_else(|| CliError::Unsupported {
                    what: format!(
                        "--log-level {text:?}: expected error, warning, info, debug, trace or off"
                    ),
                })?
        }
    };
    Ok(Some(firehost::spec::LogSpec {
        level,
        module: args.log_module.clone(),
        show_level: args.log_show_level,
        show_origin: args.log_show_origin,
    }))
}

/// Stage two for a device flag's value.
fn device_value<T>(
    option: &'static str,
    value: &str,
    parse: impl Fn(&str) -> Result<T, crate::device_args::DeviceSyntaxError>,
) -> Result<T, CliError> {
    parse(value).map_err(|e| CliError::InvalidValue {
        option,
        value: value.to_owned(),
        source: e.into(),
    })
}

/// A `--mmds` file: one JSON object.
fn read_json_object(path: &std::path::Path) -> Result<serde_json::Value, CliError> {
    let bad = |why: String| CliError::Unsupported {
        what: format!("--mmds {}: {why}", path.display()),
    };
    let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    if !value.is_object() {
        return Err(bad("not a JSON object".into()));
    }
    Ok(value)
}

/// Stage two for a VM name.
pub fn vm_id(name: &str) -> Result<VmId, CliError> {
    VmId::new(name).map_err(|source| CliError::InvalidName {
        what: "VM name",
        value: name.to_owned(),
        source,
    })
}

/// `vm-` and 8 hex digits from `/dev/urandom` (or, failing that, from the
/// clock and pid).
fn generated_name() -> VmId {
    use std::io::Read;
    let mut bytes = [0u8; 4];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map(|()| u32::from_ne_bytes(bytes));
    let n = random.unwrap_or_else(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        nanos ^ std::process::id().rotate_left(16)
    });
    VmId::new(format!("vm-{n:08x}")).expect("generated names are valid")
}

async fn run(manager: &Manager, args: RunArgs, out: Out) -> Result<(), CliError> {
    let provider: &dyn VmProvider = manager;
    let id = match &args.name {
        Some(name) => vm_id(name)?,
        None => generated_name(),
    };
    let net = net_spec(&args)?;
    let jail = jail_spec(&args);
    let rootfs_io = rootfs_io(&args)?;
    let log = log_spec(&args)?;
    let spec = VmSpec {
        kernel: Some(args.kernel),
        initrd: args.initrd,
        rootfs: Some(args.rootfs),
        rootfs_read_only: args.rootfs_ro.then_some(true),
        rootfs_shared: args.rootfs_shared,
        rootfs_io,
        extra_drives: args
            .drive
            .iter()
            .map(|d| device_value("--drive", d, crate::device_args::drive))
            .collect::<Result<_, _>>()?,
        entropy: args.entropy.then(EntropySpec::default),
        log,
        pmem: args
            .pmem
            .iter()
            .map(|p| device_value("--pmem", p, crate::device_args::pmem))
            .collect::<Result<_, _>>()?,
        serial_limit: bandwidth_limit("--serial-bw", args.serial_bw.as_deref())?.bandwidth,
        memory_hotplug: args
            .memory_hotplug_total_mib
            .map(firehost::spec::MemoryHotplugSpec::new),
        cpu_template: args.cpu_template.as_deref().map(|t| {
            t.parse()
                .unwrap_or_else(|never: std::convert::Infallible| match never {})
        }),
        balloon: args.balloon_mib.map(|amount_mib| BalloonSpec {
            amount_mib,
            deflate_on_oom: args.balloon_deflate_on_oom,
            stats_interval_s: args.balloon_stats_s.unwrap_or(0),
            free_page_hinting: false,
            free_page_reporting: args.balloon_free_page_reporting,
        }),
        vcpus: args.vcpus,
        mem_mib: args.mem_mib,
        boot_args: args.boot_args,
        net,
        mmds: args
            .mmds
            .as_deref()
            .map(|path| {
                read_json_object(path).map(|data| firehost::mmds::MmdsSpec {
                    data,
                    ..Default::default()
                })
            })
            .transpose()?,
        jail,
        vsock: (args.vsock || args.guest_cid.is_some() || args.wait_ready.is_some()).then(|| {
            VsockSpec {
                guest_cid: args.guest_cid.unwrap_or(firehost::vsock::DEFAULT_GUEST_CID),
            }
        }),
        ..VmSpec::default()
    };
    // One transaction: a run that fails, or is killed, before the guest
    // started leaves nothing (the next command reaps what a kill left).
    let vm = if args.no_start {
        provider.create(&id, spec).await?
    } else {
        provider.run(&id, spec).await?
    };
    if let Some(secs) = args.wait_ready {
        let ready = async {
            manager
                .agent(&id)
                .await?
                .wait_ready(Duration::from_secs(secs))
                .await?;
            Ok::<(), CliError>(())
        };
        if let Err(e) = ready.await {
            let _ = remove(provider, &id, FORCE_GRACE).await;
            return Err(e);
        }
    }
    out.emit(&VmJson::from(&vm), human::vm_record)
}

async fn ls(manager: &Manager, out: Out) -> Result<(), CliError> {
    let vms = manager.list().await;
    let unreadable = manager.unreadable().await;
    let list = ListJson {
        vms: vms.iter().map(VmJson::from).collect(),
        unreadable: unreadable.iter().map(UnreadableVmJson::from).collect(),
    };
    out.emit(&list, human::vm_table)
}

/// `inspect`: the VM object, or the unreadable VM object for a VM whose
/// record cannot be read.
async fn inspect(manager: &Manager, name: &str, out: Out) -> Result<(), CliError> {
    let id = vm_id(name)?;
    match manager.get(&id).await {
        Ok(vm) => {
            let mut json = VmJson::from(&vm);
            if let Some(net) = json.net.as_mut() {
                net.traffic = manager
                    .traffic(&id)
                    .await
                    .ok()
                    .as_ref()
                    .map(TrafficJson::from);
            }
            out.emit(&json, human::vm_record)
        }
        Err(VmError::Unreadable { .. }) => {
            let quarantined = manager.unreadable().await;
            match quarantined.iter().find(|vm| vm.id == id) {
                Some(vm) => out.emit(&UnreadableVmJson::from(vm), human::unreadable_vm),
                None => Err(VmError::NotFound { id }.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

async fn stop(provider: &dyn VmProvider, args: StopArgs, out: Out) -> Result<(), CliError> {
    let options = StopOptions {
        grace: args.timeout_s.map(Duration::from_secs),
        ..StopOptions::default()
    };
    let outcome = provider.stop(&vm_id(&args.name)?, options).await?;
    let json = StopJson {
        vm: VmJson::from(&outcome.info),
        stopped: outcome.stopped,
    };
    out.emit(&json, human::stopped)
}

async fn rm(manager: &Manager, args: RmArgs, out: Out) -> Result<(), CliError> {
    let id = vm_id(&args.name)?;
    let (removed, stopped) = if args.force {
        match remove(manager, &id, FORCE_GRACE).await {
            Ok(stopped) => (true, stopped),
            // Quarantined: only an explicit rm -f removes it.
            Err(VmError::Unreadable { .. }) => (true, manager.remove_unreadable(&id).await?),
            // Like `docker rm -f`: removing what is not there is done.
            Err(VmError::NotFound { .. }) => (false, false),
            Err(e) => return Err(e.into()),
        }
    } else {
        manager.destroy(&id).await?;
        (true, false)
    };
    let removed = RemovedJson {
        name: id.to_string(),
        removed,
        stopped,
    };
    out.emit(&removed, human::removed)
}

/// Stops the VM if it is running or paused (SIGTERM, then SIGKILL after
/// `grace`), then destroys it. Returns whether it had to stop it.
pub async fn remove(
    provider: &dyn VmProvider,
    id: &VmId,
    grace: Duration,
) -> Result<bool, VmError> {
    let vm = provider.get(id).await?;
    let mut stopped = false;
    if matches!(vm.state, VmState::Running | VmState::Paused) {
        let options = StopOptions {
            graceful: Some(false),
            grace: Some(grace),
        };
        // A VM that died on its own in between is not stopped again.
        stopped = provider.stop(id, options).await?.stopped;
    }
    provider.destroy(id).await?;
    Ok(stopped)
}

async fn snapshot(provider: &dyn VmProvider, args: SnapshotArgs, out: Out) -> Result<(), CliError> {
    let id = vm_id(&args.name)?;
    let name = snapshot_name(&args.snapshot)?;
    let reclaim = match args.reclaim.as_deref() {
        None => None,
        Some(amount) => Some(BalloonReclaim {
            amount_mib: match amount {
                "auto" => None,
                mib => Some(mib.parse().map_err(|_| CliError::Unsupported {
                    what: format!("--reclaim {mib:?}: expected MiB or nothing"),
                })?),
            },
            deadline: Duration::from_secs(args.reclaim_wait_s),
        }),
    };
    let options = SnapshotOptions {
        resume: !args.no_resume,
        diff: args.diff,
        disks: args.disks,
        reclaim,
    };
    let info = provider.snapshot(&id, &name, options).await?;
    let vm = provider.get(&id).await?;
    out.emit(&SnapshotJson::new(&info, vm.state.name()), human::snapshot)
}

fn snapshot_name(text: &str) -> Result<SnapshotName, CliError> {
    SnapshotName::new(text).map_err(|source| CliError::InvalidName {
        what: "snapshot name",
        value: text.to_owned(),
        source,
    })
}

/// Stage two for the device-update flags, one change per device.
fn vm_update(args: &DeviceUpdateArgs) -> Result<VmUpdate, CliError> {
    use crate::device_args::{bandwidth_change, keyed, ops_change};
    let mut drives: Vec<DriveLimitUpdate> = Vec::new();
    fn drive(drives: &mut Vec<DriveLimitUpdate>, id: String) -> &mut DriveLimitUpdate {
        let at = match drives.iter().position(|d| d.drive_id == id) {
            Some(at) => at,
            None => {
                drives.push(DriveLimitUpdate {
                    drive_id: id,
                    limit: LimitChange::default(),
                });
                drives.len() - 1
            }
        };
        &mut drives[at]
    }
    for text in &args.drive_bw {
        let (id, change) = device_value("--drive-bw", text, |t| keyed(t, bandwidth_change))?;
        drive(&mut drives, id).limit.bandwidth = change;
    }
    for text in &args.drive_iops {
        let (id, change) = device_value("--drive-iops", text, |t| keyed(t, ops_change))?;
        drive(&mut drives, id).limit.ops = change;
    }
    let bandwidth = |option, text: &Option<String>| {
        text.as_deref()
            .map(|t| device_value(option, t, bandwidth_change))
            .transpose()
            .map(|c| LimitChange {
                bandwidth: c.unwrap_or_default(),
                ..LimitChange::default()
            })
    };
    let rx = bandwidth("--net-rx-bw", &args.net_rx_bw)?;
    let tx = bandwidth("--net-tx-bw", &args.net_tx_bw)?;
    let nics = if rx.is_noop() && tx.is_noop() {
        Vec::new()
    } else {
        vec![NicLimitUpdate {
            iface_id: firehost::vocab::DEFAULT_IFACE_ID.to_owned(),
            rx,
            tx,
        }]
    };
    Ok(VmUpdate {
        drives,
        nics,
        balloon_mib: args.balloon_mib,
        balloon_stats_interval_s: args.balloon_stats_s,
        memory_hotplug_mib: args.memory_hotplug_mib,
    })
}

async fn update(manager: &Manager, args: UpdateArgs, out: Out) -> Result<(), CliError> {
    let id = vm_id(&args.name)?;
    let update = vm_update(&args.devices)?;
    if update.is_empty() {
        return Err(CliError::Unsupported {
            what: "update with nothing to change (give --drive-bw, --drive-iops, --net-rx-bw, \
                   --net-tx-bw, --balloon-mib, --balloon-stats-s or --memory-hotplug-mib)"
                .into(),
        });
    }
    let info = manager.update(&id, &update).await?;
    out.emit(&VmJson::from(&info), human::vm_record)
}

/// The memory backend for `--uffd`.
fn restore_memory(uffd: Option<UffdMode>) -> RestoreMemory {
    match uffd {
        None => RestoreMemory::File,
        Some(UffdMode::OnDemand) => RestoreMemory::OnDemand,
        Some(UffdMode::Populate) => RestoreMemory::Populate,
        Some(UffdMode::Prefetch) => RestoreMemory::Prefetch,
    }
}

async fn restore(manager: &Manager, args: RestoreArgs, out: Out) -> Result<(), CliError> {
    let snapshot = snapshot_name(&args.snapshot)?;
    let id = vm_id(&args.name)?;
    let memory = restore_memory(args.uffd);
    let options = RestoreOptions {
        resume: !args.paused,
        clock_realtime: !args.snapshot_clock && RestoreOptions::default().clock_realtime,
        verify_memory: args.verify_memory,
        memory,
        mmds: args.mmds.as_deref().map(read_json_object).transpose()?,
        uid: args.uid,
        gid: args.gid,
        keep_address: args.keep_address,
        devices: vm_update(&args.devices)?,
        egress: egress_policy(&args.egress)?,
    };
    let provider: &dyn VmProvider = manager;
    let info = provider.restore(&id, &snapshot, options).await?;
    out.emit(&VmJson::from(&info), human::vm_record)
}

/// A pool name from the command line.
fn pool_name(text: &str) -> Result<PoolName, CliError> {
    PoolName::new(text).map_err(|source| CliError::InvalidName {
        what: "pool name",
        value: text.to_owned(),
        source,
    })
}

async fn pool(manager: &Manager, args: PoolArgs, out: Out) -> Result<(), CliError> {
    match args.command.unwrap_or(PoolCommand::Ls) {
        PoolCommand::Ls => {
            let list = PoolListJson {
                pools: manager
                    .pool_list()
                    .await
                    .iter()
                    .map(PoolJson::from)
                    .collect(),
            };
            out.emit(&list, human::pool_table)
        }
        PoolCommand::Create(args) => {
            let name = pool_name(&args.pool)?;
            let template = PoolTemplate::Snapshot(snapshot_name(&args.snapshot)?);
            let mut spec = PoolSpec::new(template, args.size);
            if let Some(parallel) = args.parallel {
                spec.parallel = parallel;
            }
            let mut info = manager.pool_create(&name, spec).await?;
            if !args.no_fill {
                info = manager.pool_fill(&name).await?;
            }
            out.emit(&PoolJson::from(&info), human::pool_line)
        }
        PoolCommand::Fill(PoolNameArg { pool }) => {
            let info = manager.pool_fill(&pool_name(&pool)?).await?;
            out.emit(&PoolJson::from(&info), human::pool_line)
        }
        PoolCommand::Claim(args) => {
            let options = ClaimOptions {
                cold_start: !args.no_cold_start,
                mmds: args.mmds.as_deref().map(read_json_object).transpose()?,
                ..ClaimOptions::default()
            };
            let vm = manager
                .pool_claim(&pool_name(&args.pool)?, &vm_id(&args.name)?, options)
                .await?;
            out.emit(&VmJson::from(&vm), human::vm_state_line)
        }
        PoolCommand::Rm(PoolNameArg { pool }) => {
            let name = pool_name(&pool)?;
            manager.pool_delete(&name).await?;
            let removed = PoolRemovedJson {
                name: name.to_string(),
                removed: true,
            };
            out.emit(&removed, |r| format!("removed pool {}\n", r.name))
        }
    }
}

async fn clone(manager: &Manager, args: CloneArgs, out: Out) -> Result<(), CliError> {
    let snapshot = snapshot_name(&args.snapshot)?;
    let devices = vm_update(&args.devices)?;
    let egress = egress_policy(&args.egress)?;
    let clones = (0..args.count)
        .map(|i| {
            let id = vm_id(&format!("{}-{i}", args.prefix))?;
            let options = RestoreOptions {
                memory: restore_memory(args.uffd),
                uid: offset_id("--uid", args.uid, i)?,
                gid: offset_id("--gid", args.gid, i)?,
                devices: devices.clone(),
                egress: egress.clone(),
                ..RestoreOptions::default()
            };
            Ok((id, options))
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let vms = manager.clone_many(&snapshot, clones).await?;
    let list = ListJson {
        vms: vms.iter().map(VmJson::from).collect(),
        unreadable: Vec::new(),
    };
    out.emit(&list, human::vm_table)
}

/// `base + i`: clone `i`'s uid or gid when `--uid`/`--gid` gives the first.
fn offset_id(flag: &'static str, base: Option<u32>, i: u16) -> Result<Option<u32>, CliError> {
    base.map(|base| {
        base.checked_add(u32::from(i))
            .ok_or_else(|| CliError::Unsupported {
                what: format!("{flag} {base} + {i} is past the largest id"),
            })
    })
    .transpose()
}

async fn console(provider: &dyn VmProvider, args: ConsoleArgs, out: Out) -> Result<(), CliError> {
    let id = vm_id(&args.name)?;
    let lines = provider.console_tail(&id, args.tail).await?;
    let console = ConsoleJson {
        name: id.to_string(),
        lines,
    };
    out.emit(&console, human::console)
}

/// Runs an image build on the blocking pool (it does file I/O and runs
/// tools), passing a panic on.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The `snapshots` group, through the manager's async store.
async fn snapshots(snapshots: Snapshots, args: SnapshotsArgs, out: Out) -> Result<Exit, CliError> {
    match args.command.unwrap_or(SnapshotsCommand::Ls) {
        SnapshotsCommand::Ls => snapshots_ls(snapshots, out).await?,
        SnapshotsCommand::Inspect(SnapshotNameArg { name }) => {
            let details = snapshots.inspect(&snapshot_name(&name)?).await?;
            out.emit(&SnapshotDetailsJson::from(&details), human::bundle_record)?;
        }
        SnapshotsCommand::Verify(args) => return snapshots_verify(snapshots, args, out).await,
        SnapshotsCommand::Rm(SnapshotNameArg { name }) => {
            let name = snapshot_name(&name)?;
            snapshots.delete(&name).await?;
            let removed = SnapshotRemovedJson {
                name: name.to_string(),
                removed: true,
            };
            out.emit(&removed, human::snapshot_removed)?;
        }
        SnapshotsCommand::Gc(GcArgs { older_than_s }) => {
            let options = GcOptions {
                remove_unused_older_than: older_than_s.map(Duration::from_secs),
                keep: Vec::new(),
            };
            let report = snapshots.gc(options).await?;
            out.emit(&GcJson::from(&report), human::gc)?;
        }
        SnapshotsCommand::Merge(MergeArgs { diff, new }) => {
            let (diff, new) = (snapshot_name(&diff)?, snapshot_name(&new)?);
            let info = snapshots.merge(&diff, &new).await?;
            out.emit(&BundleJson::new(&info, &[]), human::merged)?;
        }
    }
    Ok(Exit::Success)
}

async fn snapshots_ls(snapshots: Snapshots, out: Out) -> Result<(), CliError> {
    let listing = snapshots.list().await?;
    let mut leases = Vec::with_capacity(listing.bundles.len());
    for bundle in &listing.bundles {
        leases.push(snapshots.leases(&bundle.name).await?);
    }
    out.emit(
        &SnapshotListJson::new(&listing, &leases),
        human::snapshot_table,
    )
}

/// Prints the verdict either way; a bad bundle is then an error (exit 1),
/// an unknown name an ordinary one (exit 3, nothing printed).
async fn snapshots_verify(
    snapshots: Snapshots,
    args: VerifyArgs,
    out: Out,
) -> Result<Exit, CliError> {
    let name = snapshot_name(&args.name)?;
    let options = VerifyOptions {
        skip_memory_checksum: !args.memory,
        firecracker_version: None,
    };
    let verified = snapshots.verify(&name, options).await;
    let mut report = VerifyJson {
        name: name.to_string(),
        ok: true,
        memory_checked: args.memory,
        chain: None,
        error: None,
    };
    match verified {
        Ok(chain) => {
            report.chain = Some(chain.iter().map(|b| b.name.to_string()).collect());
            out.emit(&report, human::verified)?;
            Ok(Exit::Success)
        }
        Err(e @ StoreError::Bundle(BundleError::NotFound { .. })) => Err(e.into()),
        Err(e) => {
            report.ok = false;
            report.error = Some(VerifyErrorJson::from(&e));
            out.emit(&report, human::verified)?;
            Err(CliError::BadSnapshot {
                name: name.to_string(),
                source: e,
            })
        }
    }
}

/// The `net` group: the manager's default network (not part of the
/// [`VmProvider`] trait).
async fn net(manager: &Manager, args: NetArgs, out: Out) -> Result<(), CliError> {
    match args.command.unwrap_or(NetCommand::Ls) {
        NetCommand::Ls => {
            let network = &manager.config().network;
            let list = NetListJson::new(
                network.bridge.to_string(),
                network.subnet.to_string(),
                &manager.network_attachments().await,
                &manager.network_traffic().await,
            );
            out.emit(&list, human::net_table)
        }
        NetCommand::Publish(PortArgs { name, mapping }) => {
            let (id, mapping) = (vm_id(&name)?, port_mapping(&mapping)?);
            let vm = manager.publish(&id, mapping).await?;
            out.emit(&VmJson::from(&vm), human::published_line)
        }
        NetCommand::Unpublish(PortArgs { name, mapping }) => {
            let (id, mapping) = (vm_id(&name)?, port_mapping(&mapping)?);
            let vm = manager.unpublish(&id, mapping).await?;
            out.emit(&VmJson::from(&vm), human::published_line)
        }
        NetCommand::Egress(NetEgressArgs { name, egress }) => {
            let id = vm_id(&name)?;
            let policy = egress_policy(&egress)?;
            let info = match policy {
                Some(policy) => manager.set_egress(&id, policy).await?,
                None => manager.get(&id).await?,
            };
            let Some(net) = &info.net else {
                return Err(firehost::VmError::Network {
                    id: id.clone(),
                    source: Box::new(firehost::net::host::NetError::NotAttached { vm: id }),
                }
                .into());
            };
            let traffic = manager.traffic(&id).await.ok();
            out.emit(
                &EgressJson::new(&info.id, &net.egress, traffic.as_ref()),
                human::egress,
            )
        }
    }
}

/// Stage two for a `net publish` or `net unpublish` mapping.
fn port_mapping(text: &str) -> Result<PortMapping, CliError> {
    parse("port mapping", text)
}

/// The doctor configuration for this command line: `--firecracker`, the
/// jailer from `FIREHOST_JAILER` (or next to Firecracker), `--state-dir`.
pub fn doctor_config(global: &GlobalArgs, state_dir: &std::path::Path) -> DoctorConfig {
    let mut config = DoctorConfig::from_env(state_dir);
    config.firecracker = global.firecracker.clone();
    if let Some(base) = &global.chroot_base {
        config.chroot_base = Some(base.clone());
    }
    // The agent `image build` would take: beside this program, else PATH.
    let exe = std::env::current_exe().ok();
    config.agent =
        firehost::image::find_agent(exe.as_deref().and_then(std::path::Path::parent)).ok();
    config
}

async fn doctor(global: &GlobalArgs, out: Out) -> Result<Exit, CliError> {
    let config = doctor_config(global, &global.state_dir);
    let checks = tokio::task::spawn_blocking(move || run_checks(&config))
        .await
        .expect("host checks do not panic");
    let report = DoctorJson::new(&checks);
    out.emit(&report, human::doctor)?;
    let failed = report.checks.iter().filter(|c| c.status == "fail").count();
    if failed > 0 {
        return Err(CliError::ChecksFailed { failed });
    }
    Ok(Exit::Success)
}
