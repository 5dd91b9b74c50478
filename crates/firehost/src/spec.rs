//! What a VM should look like: [`VmSpec`] (per-VM overrides), [`HostDefaults`]
//! (the host's fallbacks) and [`ResolvedSpec`] (the two merged and checked).
//!
//! Everything here is validated before any process starts, so a bad spec
//! costs nothing on the host. The rules mirror Firecracker's own (vCPU count,
//! SMT, memory, command-line length, drive ids) so a spec that passes here
//! is not rejected later by the VMM for the same reason.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::vocab::{Bucket, IfName, MacAddr, MmdsSpec, NetSpec, RateLimit, RateLimitError};
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
    /// How Firecracker does the root filesystem's I/O: cache, engine and
    /// limits.
    #[serde(skip_serializing_if = "DriveIo::is_default")]
    pub rootfs_io: DriveIo,
    /// The partition the kernel mounts as `/` (`root=PARTUUID=…`), for a
    /// root image with a partition table; without it the whole image is
    /// `/dev/vda`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs_partuuid: Option<String>,
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
    /// A virtio-rng device, so the guest's kernel can draw on the host's
    /// entropy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropySpec>,
    /// A memory balloon, through which the host takes back memory the
    /// guest does not use (see [`BalloonSpec`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonSpec>,
    /// A CPU template: the CPU features the guest is shown, so guests see
    /// the same CPU on different hosts (see [`CpuTemplateSpec`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplateSpec>,
    /// Firecracker's own log for this VM, in place of the manager's
    /// [`vmm_log`](crate::ManagerConfig::vmm_log) level (see [`LogSpec`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<LogSpec>,
    /// virtio-pmem devices: files mapped into the guest's address space
    /// (see [`PmemSpec`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pmem: Vec<PmemSpec>,
    /// A limit on the guest's serial console output, in bytes: what goes
    /// over it is dropped (and counted in the `uart` metrics), so a guest
    /// cannot flood its console.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_limit: Option<Bucket>,
    /// Memory the guest can be given after boot (virtio-mem; see
    /// [`MemoryHotplugSpec`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_hotplug: Option<MemoryHotplugSpec>,
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
///     rx_limit: Default::default(),
///     tx_limit: Default::default(),
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
    /// Limits on what the guest receives.
    #[serde(default, skip_serializing_if = "RateLimit::is_unlimited")]
    pub rx_limit: RateLimit,
    /// Limits on what the guest sends.
    #[serde(default, skip_serializing_if = "RateLimit::is_unlimited")]
    pub tx_limit: RateLimit,
}

/// The virtio-rng device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EntropySpec {
    /// Limits on the bytes (and requests) the guest may draw.
    #[serde(skip_serializing_if = "RateLimit::is_unlimited")]
    pub limit: RateLimit,
}

/// A CPU template: which CPU features the guest is shown.
///
/// Firecracker's static templates mask the guest's CPU down to that of an
/// EC2 instance family (Firecracker deprecates them); a custom template is
/// a JSON file in Firecracker's `cpu-config` format. A static template for
/// the other CPU vendor is refused before anything starts
/// ([`SpecError::CpuTemplateVendor`]), as is one for a CPU model
/// Firecracker does not apply it on ([`SpecError::CpuTemplateModel`]:
/// static templates are for particular EC2 CPU generations), and a custom
/// template that
/// does not parse or is for the other architecture
/// ([`SpecError::CpuTemplateFile`]).
///
/// # Examples
///
/// ```
/// use firehost::spec::{CpuTemplateSpec, StaticCpuTemplate};
///
/// let t2a: CpuTemplateSpec = "t2a".parse().unwrap();
/// assert_eq!(t2a, CpuTemplateSpec::Static(StaticCpuTemplate::T2A));
/// let custom: CpuTemplateSpec = "/etc/firehost/cpu.json".parse().unwrap();
/// assert!(matches!(custom, CpuTemplateSpec::Custom(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuTemplateSpec {
    /// One of Firecracker's static templates.
    Static(StaticCpuTemplate),
    /// A custom template file.
    Custom(PathBuf),
}

impl std::str::FromStr for CpuTemplateSpec {
    type Err = std::convert::Infallible;

    /// A static template's name (any case), else a file.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text.parse::<StaticCpuTemplate>() {
            Ok(t) => CpuTemplateSpec::Static(t),
            Err(()) => CpuTemplateSpec::Custom(PathBuf::from(text)),
        })
    }
}

/// Firecracker's static CPU templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StaticCpuTemplate {
    /// Intel, like C3 instances.
    C3,
    /// Intel, like T2 instances.
    T2,
    /// Intel, like T2 instances, for moving snapshots between hosts.
    T2S,
    /// Intel Cascade Lake and newer, like T2 instances.
    T2CL,
    /// AMD, like T2 instances.
    T2A,
    /// ARM Neoverse V1, like N1.
    V1N1,
}

impl StaticCpuTemplate {
    /// The CPU vendor (`/proc/cpuinfo`'s `vendor_id`) or architecture it is
    /// for.
    pub fn vendor(self) -> &'static str {
        match self {
            StaticCpuTemplate::C3
            | StaticCpuTemplate::T2
            | StaticCpuTemplate::T2S
            | StaticCpuTemplate::T2CL => "GenuineIntel",
            StaticCpuTemplate::T2A => "AuthenticAMD",
            StaticCpuTemplate::V1N1 => "aarch64",
        }
    }
}

/// CPU signatures (see [`crate::cpu::HostCpu::signature`]): Intel Skylake,
/// Cascade Lake and Ice Lake, AMD Milan.
const SKYLAKE: u32 = 0x0005_0654;
const CASCADE_LAKE: u32 = 0x0005_0657;
const ICE_LAKE: u32 = 0x0006_06A6;
const MILAN: u32 = 0x00A0_0F11;

impl StaticCpuTemplate {
    /// The CPU models Firecracker applies it on (it refuses the template
    /// at boot on any other); `None`: any of its vendor's.
    pub fn models(self) -> Option<&'static [u32]> {
        match self {
            StaticCpuTemplate::C3 | StaticCpuTemplate::T2 => {
                Some(&[SKYLAKE, CASCADE_LAKE, ICE_LAKE])
            }
            StaticCpuTemplate::T2S => Some(&[SKYLAKE, CASCADE_LAKE]),
            StaticCpuTemplate::T2CL => Some(&[CASCADE_LAKE, ICE_LAKE]),
            StaticCpuTemplate::T2A => Some(&[MILAN]),
            StaticCpuTemplate::V1N1 => None,
        }
    }
}

impl std::str::FromStr for StaticCpuTemplate {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        Ok(match text.to_ascii_uppercase().as_str() {
            "C3" => StaticCpuTemplate::C3,
            "T2" => StaticCpuTemplate::T2,
            "T2S" => StaticCpuTemplate::T2S,
            "T2CL" => StaticCpuTemplate::T2CL,
            "T2A" => StaticCpuTemplate::T2A,
            "V1N1" => StaticCpuTemplate::V1N1,
            _ => return Err(()),
        })
    }
}

impl std::fmt::Display for StaticCpuTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// A checked CPU template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolvedCpuTemplate {
    /// A static template for this host's vendor.
    Static(StaticCpuTemplate),
    /// A custom template: its file, and the content it had at create (what
    /// the VM was given, whatever happens to the file later).
    Custom {
        /// The canonical path.
        path: PathBuf,
        /// Firecracker's `cpu-config` body.
        config: serde_json::Value,
    },
}

/// The largest custom CPU template file read.
pub const MAX_CPU_TEMPLATE_BYTES: u64 = 1 << 20;

fn resolve_cpu_template(template: &CpuTemplateSpec) -> Result<ResolvedCpuTemplate, SpecError> {
    match template {
        CpuTemplateSpec::Static(t) => {
            let host = crate::cpu::HostCpu::detect();
            if host.vendor != t.vendor() {
                return Err(SpecError::CpuTemplateVendor {
                    template: *t,
                    host: host.vendor,
                });
            }
            if t.models()
                .is_some_and(|models| !models.contains(&host.signature))
            {
                return Err(SpecError::CpuTemplateModel {
                    template: *t,
                    model: host.model,
                    signature: host.signature,
                });
            }
            Ok(ResolvedCpuTemplate::Static(*t))
        }
        CpuTemplateSpec::Custom(path) => {
            let canonical = resolve_file(FileRole::CpuTemplate, path)?;
            let bad = |why: String| SpecError::CpuTemplateFile {
                path: path.clone(),
                why,
            };
            let len = std::fs::metadata(&canonical).map_or(0, |m| m.len());
            if len > MAX_CPU_TEMPLATE_BYTES {
                return Err(bad(format!("larger than {MAX_CPU_TEMPLATE_BYTES} bytes")));
            }
            let text = std::fs::read(&canonical).map_err(|e| bad(e.to_string()))?;
            let config: serde_json::Value =
                serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
            let parsed: firehost_api::CpuConfig = serde_json::from_value(config.clone())
                .map_err(|e| bad(format!("not a Firecracker CPU template: {e}")))?;
            let x86 = parsed.cpuid_modifiers.is_some() || parsed.msr_modifiers.is_some();
            let arm = parsed.reg_modifiers.is_some() || parsed.vcpu_features.is_some();
            let host_x86 = cfg!(target_arch = "x86_64");
            if (x86 && !host_x86) || (arm && host_x86) {
                return Err(bad(format!(
                    "it is for another architecture than this host's {}",
                    std::env::consts::ARCH
                )));
            }
            Ok(ResolvedCpuTemplate::Custom {
                path: canonical,
                config,
            })
        }
    }
}

/// How Firecracker logs for one VM, into `firecracker.log` in the VM's
/// directory (bounded, like the console).
///
/// # Examples
///
/// ```
/// use firehost::api::models::LogLevel;
/// use firehost::spec::LogSpec;
///
/// let debug = LogSpec {
///     level: LogLevel::Debug,
///     show_level: true,
///     ..LogSpec::new(LogLevel::Info)
/// };
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSpec {
    /// The most verbose level written.
    pub level: firehost_api::LogLevel,
    /// Only messages from Rust modules whose path starts with this
    /// (`--module`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Put each message's level in its line.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub show_level: bool,
    /// Put each message's source file and line in its line.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub show_origin: bool,
}

impl LogSpec {
    /// `level`, with Firecracker's defaults for the rest.
    pub fn new(level: firehost_api::LogLevel) -> LogSpec {
        LogSpec {
            level,
            module: None,
            show_level: false,
            show_origin: false,
        }
    }
}

/// The longest log module filter accepted.
pub const MAX_LOG_MODULE_LEN: usize = 128;

pub(crate) fn check_log_module(module: &str) -> Result<(), SpecError> {
    let ok = !module.is_empty()
        && module.len() <= MAX_LOG_MODULE_LEN
        && module
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadLogModule {
            module: module.to_owned(),
        })
    }
}

/// A virtio-pmem device: a host file mapped into the guest's memory, which
/// the guest sees as a persistent-memory disk it can use without a page
/// cache (DAX). Only read-only devices are supported: a root filesystem
/// image shared by many VMs, for instance (`root`, with no `rootfs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PmemSpec {
    /// Firecracker's device id: ASCII letters, digits and `_`, at most 64.
    pub id: String,
    /// The backing file.
    pub path: PathBuf,
    /// Mapped read-only; must be true.
    #[serde(default = "yes")]
    pub read_only: bool,
    /// The guest boots from it (the VM then has no `rootfs` drive).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub root: bool,
    /// Limits on what the guest reads and writes.
    #[serde(default, skip_serializing_if = "RateLimit::is_unlimited")]
    pub limit: RateLimit,
}

fn yes() -> bool {
    true
}

/// The hotpluggable memory region (virtio-mem): `total_mib` the guest can
/// be given after boot, handed over in `slot_mib` steps by the host and
/// `block_mib` blocks by the guest's driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryHotplugSpec {
    /// The region's size: a multiple of `slot_mib`.
    pub total_mib: u64,
    /// At least 128 and a multiple of `block_mib` (default 128).
    #[serde(default = "default_slot_mib")]
    pub slot_mib: u64,
    /// A power of two, at least 2 (default 2).
    #[serde(default = "default_block_mib")]
    pub block_mib: u64,
    /// The memory asked of the guest's driver so far: 0 at create, changed
    /// with [`Manager::update`](crate::Manager::update).
    #[serde(default, skip_serializing_if = "is_default")]
    pub requested_mib: u64,
}

fn default_slot_mib() -> u64 {
    128
}

fn default_block_mib() -> u64 {
    2
}

impl MemoryHotplugSpec {
    /// A region of `total_mib` with Firecracker's default slot and block.
    pub fn new(total_mib: u64) -> MemoryHotplugSpec {
        MemoryHotplugSpec {
            total_mib,
            slot_mib: default_slot_mib(),
            block_mib: default_block_mib(),
            requested_mib: 0,
        }
    }

    /// Firecracker's rules for the sizes.
    pub fn validate(&self) -> Result<(), SpecError> {
        let why = if self.block_mib < 2 || !self.block_mib.is_power_of_two() {
            "the block size must be a power of two of at least 2 MiB"
        } else if self.slot_mib < 128 || !self.slot_mib.is_multiple_of(self.block_mib) {
            "the slot size must be at least 128 MiB and a multiple of the block size"
        } else if self.total_mib < self.slot_mib || !self.total_mib.is_multiple_of(self.slot_mib) {
            "the total size must be at least one slot and a multiple of the slot size"
        } else if self.requested_mib > self.total_mib
            || !self.requested_mib.is_multiple_of(self.block_mib)
        {
            "the requested size must be a multiple of the block size within the total"
        } else {
            return Ok(());
        };
        Err(SpecError::MemoryHotplug {
            why: why.to_owned(),
        })
    }
}

/// pmem ids are valid and unique, the devices read-only, and at most one is
/// the root device, in a VM without a root drive.
fn check_pmem(spec: &VmSpec, root_drive: bool) -> Result<(), SpecError> {
    let mut seen: Vec<&str> = Vec::new();
    let mut root = root_drive;
    for p in &spec.pmem {
        let valid = !p.id.is_empty()
            && p.id.len() <= MAX_DRIVE_ID_LEN
            && p.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid || seen.contains(&p.id.as_str()) {
            return Err(SpecError::BadPmemId { id: p.id.clone() });
        }
        seen.push(&p.id);
        let refuse = |why| SpecError::Pmem {
            id: p.id.clone(),
            why,
        };
        if !p.read_only {
            return Err(refuse("only read-only pmem devices are supported"));
        }
        if p.root {
            if root {
                return Err(refuse("the VM already has a root device"));
            }
            root = true;
        }
        p.limit.validate().map_err(|source| SpecError::RateLimit {
            device: format!("pmem {:?}", p.id),
            source,
        })?;
    }
    Ok(())
}

/// The virtio balloon: memory the guest hands back to the host.
///
/// The device needs a driver in the guest (`CONFIG_VIRTIO_BALLOON`):
/// until the guest's driver has set it up, Firecracker refuses to change
/// its target ([`Manager::update`](crate::Manager::update) then fails
/// with the VMM's error and changes nothing).
///
/// # Examples
///
/// ```
/// use firehost::spec::BalloonSpec;
///
/// // Start with nothing taken, give memory back if the guest runs out,
/// // and report the guest's memory every 5 seconds.
/// let balloon = BalloonSpec {
///     deflate_on_oom: true,
///     stats_interval_s: 5,
///     ..BalloonSpec::default()
/// };
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalloonSpec {
    /// Memory the balloon holds (taken from the guest), in MiB; at most
    /// the guest's memory.
    pub amount_mib: u32,
    /// The guest's driver gives memory back when the guest runs out, rather
    /// than the guest's OOM killer ending a process.
    pub deflate_on_oom: bool,
    /// Seconds between the guest's memory reports
    /// ([`Manager::balloon_stats`](crate::Manager::balloon_stats)); 0 turns
    /// them off, and they cannot be turned on or off once the VM runs.
    pub stats_interval_s: u16,
    /// Free page hinting: the guest reports free pages on request.
    pub free_page_hinting: bool,
    /// Free page reporting: the guest reports pages as it frees them, and
    /// the host drops them.
    pub free_page_reporting: bool,
}

/// How Firecracker does a drive's I/O.
///
/// # Examples
///
/// ```
/// use firehost::spec::{DriveCache, DriveIo};
/// use firehost::vocab::{Bucket, RateLimit};
///
/// let io = DriveIo {
///     cache: DriveCache::Writeback,
///     limit: RateLimit {
///         bandwidth: Some(Bucket::per_second(50 << 20)),
///         ops: Some(Bucket::per_second(2000)),
///     },
///     ..DriveIo::default()
/// };
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriveIo {
    /// What a flush from the guest does.
    #[serde(skip_serializing_if = "is_default")]
    pub cache: DriveCache,
    /// How the VMM performs the I/O.
    #[serde(skip_serializing_if = "is_default")]
    pub engine: IoEngine,
    /// Limits on bytes and requests.
    #[serde(skip_serializing_if = "RateLimit::is_unlimited")]
    pub limit: RateLimit,
}

impl DriveIo {
    /// Whether every setting is Firecracker's default.
    pub fn is_default(&self) -> bool {
        *self == DriveIo::default()
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// What a flush from the guest does to a drive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriveCache {
    /// Acknowledged without syncing the backing file: fast, and what the
    /// guest wrote may be lost if the host crashes (Firecracker's default).
    #[default]
    Unsafe,
    /// The backing file is synced.
    Writeback,
}

/// How the VMM performs a drive's I/O.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoEngine {
    /// Blocking I/O on the device's thread (Firecracker's default).
    #[default]
    Sync,
    /// `io_uring` (host kernel 5.10.51 or later). Firecracker marks it as
    /// in developer preview.
    Async,
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
    /// Cache, engine and limits.
    #[serde(default, skip_serializing_if = "DriveIo::is_default")]
    pub io: DriveIo,
}

impl DriveSpec {
    /// A drive with Firecracker's defaults for everything but its id, file
    /// and mode.
    pub fn new(id: impl Into<String>, path: impl Into<PathBuf>, read_only: bool) -> DriveSpec {
        DriveSpec {
            id: id.into(),
            path: path.into(),
            read_only,
            shared: false,
            io: DriveIo::default(),
        }
    }
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
    /// The root filesystem's cache, engine and limits.
    #[serde(default, skip_serializing_if = "DriveIo::is_default")]
    pub rootfs_io: DriveIo,
    /// The root partition's PARTUUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_partuuid: Option<String>,
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
    /// The entropy device asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropySpec>,
    /// The balloon asked for; `amount_mib` is its current target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonSpec>,
    /// The CPU template, a custom one with the content it had at create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<ResolvedCpuTemplate>,
    /// Firecracker's log settings asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogSpec>,
    /// pmem devices with canonical paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pmem: Vec<PmemSpec>,
    /// The serial console's output limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_limit: Option<Bucket>,
    /// The hotpluggable memory region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_hotplug: Option<MemoryHotplugSpec>,
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
            rootfs_io: DriveIo::default(),
            rootfs_partuuid: None,
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
            entropy: None,
            balloon: None,
            cpu_template: None,
            log: None,
            pmem: vec![],
            serial_limit: None,
            memory_hotplug: None,
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
    /// A custom CPU template.
    CpuTemplate,
    /// A pmem device, by id.
    Pmem(String),
}

impl std::fmt::Display for FileRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileRole::Kernel => f.write_str("kernel"),
            FileRole::Initrd => f.write_str("initrd"),
            FileRole::Rootfs => f.write_str("rootfs"),
            FileRole::Drive(id) => write!(f, "drive {id:?}"),
            FileRole::CpuTemplate => f.write_str("CPU template"),
            FileRole::Pmem(id) => write!(f, "pmem {id:?}"),
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
    /// A device's limits would not be enforced (see
    /// [`RateLimitError`]).
    #[error("the limits of {device} are invalid")]
    RateLimit {
        /// The device: `drive "rootfs"`, `nic "eth0" rx`, `entropy`…
        device: String,
        /// What is wrong.
        #[source]
        source: RateLimitError,
    },
    /// A static CPU template for another CPU vendor than the host's.
    #[error("CPU template {template} is for {} CPUs; this host's is {host}", template.vendor())]
    CpuTemplateVendor {
        /// The template.
        template: StaticCpuTemplate,
        /// The host's vendor.
        host: String,
    },
    /// A static CPU template Firecracker does not apply on this CPU model.
    #[error(
        "CPU template {template} is not for this CPU model ({model}, signature {signature:#x})"
    )]
    CpuTemplateModel {
        /// The template.
        template: StaticCpuTemplate,
        /// The host's model name.
        model: String,
        /// The host's CPU signature.
        signature: u32,
    },
    /// A custom CPU template that cannot be used.
    #[error("CPU template {path:?} cannot be used: {why}")]
    CpuTemplateFile {
        /// The file as given.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A pmem id that Firecracker would refuse, or one used twice.
    #[error(
        "pmem id {id:?} must be unique and 1 to {MAX_DRIVE_ID_LEN} ASCII letters, digits or '_'"
    )]
    BadPmemId {
        /// The id.
        id: String,
    },
    /// A pmem device that cannot be used as asked: writable (only
    /// read-only pmem is supported), or a second root device.
    #[error("pmem {id:?}: {why}")]
    Pmem {
        /// The id.
        id: String,
        /// Why.
        why: &'static str,
    },
    /// An empty pmem backing file (Firecracker maps it whole).
    #[error("pmem {id:?}: the backing file is empty")]
    EmptyPmem {
        /// The id.
        id: String,
    },
    /// Memory hotplug sizes Firecracker would refuse.
    #[error("memory hotplug: {why}")]
    MemoryHotplug {
        /// Which rule.
        why: String,
    },
    /// A log module filter that is not a Rust module path.
    #[error(
        "log module {module:?} must be 1 to {MAX_LOG_MODULE_LEN} ASCII letters, digits, '_' or ':'"
    )]
    BadLogModule {
        /// The filter given.
        module: String,
    },
    /// A balloon larger than the guest's memory.
    #[error("a balloon of {amount_mib} MiB is larger than the guest's {mem_mib} MiB")]
    BalloonTooLarge {
        /// The balloon's size.
        amount_mib: u32,
        /// The guest's memory.
        mem_mib: u32,
    },
    /// A PARTUUID with a character other than hex digits and `-`, or
    /// longer than 64 (it goes on the kernel command line).
    #[error("partuuid {partuuid:?} must be 1 to 64 hex digits and '-'")]
    BadPartuuid {
        /// The PARTUUID given.
        partuuid: String,
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
        check_limits(self)?;
        if let Some(module) = self.log.as_ref().and_then(|l| l.module.as_deref()) {
            check_log_module(module)?;
        }
        check_pmem(self, self.rootfs.is_some() || defaults.rootfs.is_some())?;
        if let Some(bucket) = &self.serial_limit {
            bucket.validate().map_err(|source| SpecError::RateLimit {
                device: "serial".to_owned(),
                source,
            })?;
        }
        if let Some(hotplug) = &self.memory_hotplug {
            hotplug.validate()?;
            if hotplug.requested_mib != 0 {
                return Err(SpecError::MemoryHotplug {
                    why: "memory is requested of a running guest (Manager::update), not at create"
                        .to_owned(),
                });
            }
        }
        if let Some(balloon) = &self.balloon
            && balloon.amount_mib > mem_mib
        {
            return Err(SpecError::BalloonTooLarge {
                amount_mib: balloon.amount_mib,
                mem_mib,
            });
        }
        if let Some(partuuid) = &self.rootfs_partuuid {
            check_partuuid(partuuid)?;
        }
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
        let pmem = self
            .pmem
            .iter()
            .map(|p| {
                let path = resolve_file(FileRole::Pmem(p.id.clone()), &p.path)?;
                if std::fs::metadata(&path).map_or(0, |m| m.len()) == 0 {
                    return Err(SpecError::EmptyPmem { id: p.id.clone() });
                }
                Ok(PmemSpec { path, ..p.clone() })
            })
            .collect::<Result<Vec<_>, SpecError>>()?;
        let cpu_template = self
            .cpu_template
            .as_ref()
            .map(resolve_cpu_template)
            .transpose()?;
        let extra_drives = self
            .extra_drives
            .iter()
            .map(|d| {
                Ok(DriveSpec {
                    path: resolve_file(FileRole::Drive(d.id.clone()), &d.path)?,
                    ..d.clone()
                })
            })
            .collect::<Result<Vec<_>, SpecError>>()?;

        Ok(ResolvedSpec {
            kernel,
            initrd,
            rootfs,
            rootfs_read_only: self.rootfs_read_only.unwrap_or(defaults.rootfs_read_only),
            rootfs_io: self.rootfs_io,
            rootfs_partuuid: self.rootfs_partuuid.clone(),
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
            entropy: self.entropy,
            balloon: self.balloon,
            cpu_template,
            log: self.log.clone(),
            pmem,
            serial_limit: self.serial_limit,
            memory_hotplug: self.memory_hotplug,
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

/// Every limit in the spec is one Firecracker would enforce.
fn check_limits(spec: &VmSpec) -> Result<(), SpecError> {
    let check = |device: String, limit: &RateLimit| {
        limit
            .validate()
            .map_err(|source| SpecError::RateLimit { device, source })
    };
    check(format!("drive {ROOTFS_DRIVE_ID:?}"), &spec.rootfs_io.limit)?;
    for drive in &spec.extra_drives {
        check(format!("drive {:?}", drive.id), &drive.io.limit)?;
    }
    if let Some(net) = &spec.net {
        let id = crate::vocab::DEFAULT_IFACE_ID;
        check(format!("nic {id:?} rx"), &net.rx_limit)?;
        check(format!("nic {id:?} tx"), &net.tx_limit)?;
    }
    for nic in &spec.extra_nics {
        check(format!("nic {:?} rx", nic.iface_id), &nic.rx_limit)?;
        check(format!("nic {:?} tx", nic.iface_id), &nic.tx_limit)?;
    }
    if let Some(entropy) = &spec.entropy {
        check("entropy".to_owned(), &entropy.limit)?;
    }
    Ok(())
}

/// A PARTUUID lands on the kernel command line: only hex digits and `-`
/// (a GPT UUID, or an MBR disk id with a partition number).
pub(crate) fn check_partuuid(partuuid: &str) -> Result<(), SpecError> {
    let ok = !partuuid.is_empty()
        && partuuid.len() <= 64
        && partuuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadPartuuid {
            partuuid: partuuid.to_owned(),
        })
    }
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

pub(crate) fn resolve_file(role: FileRole, path: &Path) -> Result<PathBuf, SpecError> {
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
            rx_limit: RateLimit::default(),
            tx_limit: RateLimit::default(),
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
        let d = |id: &str| DriveSpec::new(id, files.path("data.img"), false);
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
                "a drive bucket of size 0",
                VmSpec {
                    extra_drives: vec![DriveSpec {
                        io: DriveIo {
                            limit: RateLimit {
                                bandwidth: Some(crate::vocab::Bucket::per_second(0)),
                                ops: None,
                            },
                            ..DriveIo::default()
                        },
                        ..d("data")
                    }],
                    ..base.clone()
                },
                |e| matches!(e, SpecError::RateLimit { device, source: RateLimitError::ZeroSize } if device == "drive \"data\""),
            ),
            (
                "a root drive refill time of 0",
                VmSpec {
                    rootfs_io: DriveIo {
                        limit: RateLimit {
                            bandwidth: None,
                            ops: Some(crate::vocab::Bucket {
                                refill_time_ms: 0,
                                ..crate::vocab::Bucket::per_second(1)
                            }),
                        },
                        ..DriveIo::default()
                    },
                    ..base.clone()
                },
                |e| {
                    matches!(
                        e,
                        SpecError::RateLimit {
                            source: RateLimitError::RefillTime { refill_time_ms: 0 },
                            ..
                        }
                    )
                },
            ),
            (
                "an empty nic bucket",
                VmSpec {
                    net: Some(NetSpec {
                        tx_limit: RateLimit {
                            bandwidth: Some(crate::vocab::Bucket::per_second(0)),
                            ops: None,
                        },
                        ..NetSpec::default()
                    }),
                    ..base.clone()
                },
                |e| matches!(e, SpecError::RateLimit { device, .. } if device == "nic \"eth0\" tx"),
            ),
            (
                "an empty entropy bucket",
                VmSpec {
                    entropy: Some(EntropySpec {
                        limit: RateLimit {
                            bandwidth: None,
                            ops: Some(crate::vocab::Bucket::per_second(0)),
                        },
                    }),
                    ..base.clone()
                },
                |e| matches!(e, SpecError::RateLimit { device, .. } if device == "entropy"),
            ),
            (
                "a partuuid with a space",
                VmSpec {
                    rootfs_partuuid: Some("abc init=/bin/sh".into()),
                    ..base.clone()
                },
                |e| matches!(e, SpecError::BadPartuuid { .. }),
            ),
            (
                "an empty partuuid",
                VmSpec {
                    rootfs_partuuid: Some(String::new()),
                    ..base.clone()
                },
                |e| matches!(e, SpecError::BadPartuuid { .. }),
            ),
            (
                "a balloon larger than the guest",
                VmSpec {
                    mem_mib: Some(64),
                    balloon: Some(BalloonSpec {
                        amount_mib: 65,
                        ..BalloonSpec::default()
                    }),
                    ..base.clone()
                },
                |e| {
                    matches!(
                        e,
                        SpecError::BalloonTooLarge {
                            amount_mib: 65,
                            mem_mib: 64
                        }
                    )
                },
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
                    extra_drives: vec![DriveSpec::new("data", files.path("missing.img"), true)],
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
