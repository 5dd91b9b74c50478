//! The `--json` contract.
//!
//! With `--json`, every command that succeeds prints exactly one JSON
//! object on one line on stdout. The objects are this CLI's own types, not
//! the library's, so the library can change without breaking scripts.
//!
//! **Stability.** Fields are added, never renamed, removed or retyped.
//! Consumers must ignore fields they don't know. Enumerated strings
//! (`state`, `status`) may gain new values. A field documented as
//! "or null" is always present.
//!
//! **Errors.** A command that fails prints nothing on stdout, one line on
//! stderr (`firehost: <error>: <cause>…`) and exits non-zero (see
//! [`Exit`](crate::exit::Exit)). Two commands print their report on stdout
//! and *then* fail: `doctor` (exit 2 if a check failed) and `quickstart`
//! (exit 2 with `"ready": false` if something is missing).
//!
//! Paths are strings (non-UTF-8 bytes replaced by U+FFFD); times are
//! milliseconds since the Unix epoch (`_ms` integers) or durations in
//! milliseconds (`_ms` floats).
//!
//! # The VM object ([`VmJson`])
//!
//! Printed by `run`, `inspect`, `pause`, `resume`, `stop`, `restore`,
//! `net publish` and `net unpublish`, and as each element of `ls`'s and
//! `clone`'s `vms`:
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `name` | string | the VM's name |
//! | `state` | string | `created`, `running`, `paused`, `stopped` or `failed` |
//! | `pid` | integer or null | the VMM's pid while it runs |
//! | `api_socket` | string | Firecracker's API socket |
//! | `dir` | string | the VM's directory in the state directory |
//! | `console_file` | string or null | where the serial console is written |
//! | `log_file` | string or null | Firecracker's own log, when it exists |
//! | `vcpus` | integer | vCPU count |
//! | `mem_mib` | integer | guest memory, MiB |
//! | `smt` | boolean | simultaneous multithreading |
//! | `kernel` | string | canonical kernel path |
//! | `initrd` | string or null | canonical initrd path |
//! | `rootfs` | string or null | canonical root filesystem path |
//! | `rootfs_read_only` | boolean | root filesystem attached read-only |
//! | `rootfs_shared` | boolean | writable root filesystem shared on purpose with other live VMs (`run --rootfs-shared`) |
//! | `own_drives` | array | a clone's own copies of writable drives: `[{"drive", "path": string, "copy": "reflink" or "extents"}…]` (`extents`: the file system has no reflinks, so the copy cost what the image holds); empty for other VMs |
//! | `boot_args` | string | kernel command line |
//! | `drives` | array | every drive, the root filesystem first: `[{"id", "path": string, "root", "read_only": boolean, "cache": "unsafe" or "writeback", "engine": "sync" or "async", "partuuid": string or null, "limit": limit or null}…]` |
//! | `nics` | array | every NIC, `eth0` of the default network first: `[{"id", "tap": string, "rx_limit", "tx_limit": limit or null}…]` |
//! | `entropy` | object or null | the virtio-rng device, `{"limit": limit or null}`; null without one |
//! | `pmem` | array | read-only pmem devices: `[{"id", "path": string, "root": boolean, "limit": limit or null}…]` |
//! | `serial_limit` | object or null | the serial console's output bucket (bytes beyond it are dropped) |
//! | `memory_hotplug` | object or null | the hotpluggable memory region, `{"total_mib", "slot_mib", "block_mib", "requested_mib": integer}` |
//! | `cpu_template` | string or null | the CPU template: a static template's name (`T2S`) or a custom template's file |
//! | `balloon` | object or null | the balloon, `{"amount_mib", "stats_interval_s": integer, "deflate_on_oom", "free_page_hinting", "free_page_reporting": boolean}`; `amount_mib` is its current target; null without one |
//! | `created_at_ms` | integer | creation time |
//! | `exit` | object or null | for `stopped` and `failed` VMs: how the VMM ended, `{"code": integer or null, "signal": integer or null}`; both null when no firehost process saw the exit |
//! | `console_tail` | array of strings or null | for `failed` VMs: the last console lines when the VMM died |
//! | `net` | object or null | the VM's place on the default network ([`NetJson`], below); null for a VM without a network |
//! | `jail` | object or null | the VM's jail, `{"chroot": string, "uid": integer, "gid": integer, "cgroups": [string]}` ([`JailJson`]); null for an unjailed VM |
//! | `vsock` | object or null | the VM's vsock device, `{"uds_path": string, "guest_cid": integer}` ([`VsockJson`]); null without one (the agent's token is never printed) |
//! | `busy` | boolean | the VMM is alive but did not answer in time (it may be writing a snapshot): `state` is the recorded one; operations other than `stop` and `rm -f` exit 4 until it answers. It is never killed for this |
//! | `interrupted_snapshot` | string or null | a snapshot a killed `firehost` left under way: the next command that reaches the VMM resumes the guest (if the snapshot paused it) and keeps the bundle only if it was sealed |
//!
//! A limit is `{"bandwidth": bucket or null, "ops": bucket or null}`, a
//! bucket `{"size", "refill_time_ms": integer, "one_time_burst": integer
//! or null}`: `size` bytes (or operations) every `refill_time_ms`, plus a
//! one-off burst. A limit is null when neither is limited.
//!
//! # The unreadable VM object ([`UnreadableVmJson`])
//!
//! A VM whose record cannot be read (corrupt, or written by a newer
//! firehost) is quarantined: its VMM and files are left alone, every
//! command but `rm -f` refuses it (exit 4), and `rm -f` stops its VMM
//! (as far as it can be verified) and removes it. `ls` lists such VMs in
//! `unreadable`, and `inspect` prints this object for one:
//! `{"name": string, "state": "unreadable", "reason": string, "pid":
//! integer or null, "dir": string}`; `pid` is the VMM found for it, if
//! any.
//!
//! `net` is `{"ip": string, "prefix_len": integer, "gateway": string,
//! "mac": string, "tap": string, "dns": [string…], "published":
//! [string…], "peer_groups": [string…], "netns": string or null,
//! "guest": {"ip": string, "mac": string} or null}`: the VM's address on
//! the host's network (where the host and its peers reach it) and the
//! subnet's prefix length, the default gateway (the bridge), the MAC the
//! host sees (`06:00:ac:1e:00:02`), its TAP, its DNS servers, the host
//! ports forwarded to it as `HOST:GUEST/PROTO` (`8080:80/tcp`) in the
//! order they were published, its peer groups, its own network namespace
//! (its pinned file; the TAP is in there) with `run --netns` and for
//! restored VMs, and for a restored VM the address and MAC its guest keeps
//! from the snapshot, which the namespace translates to `ip` (without
//! `restore --keep-address`; `null` when the guest has `ip` and `mac`
//! itself).
//!
//! # Per command
//!
//! | command | object |
//! | --- | --- |
//! | `run`, `inspect`, `pause`, `resume`, `stop`, `update`, `swap-drive` | the VM object, after the operation |
//! | `rename` | the VM object, under its new name |
//! | `ls` | `{"vms": [VM object…], "unreadable": [unreadable VM object…]}`, each sorted by name |
//! | `inspect` of a quarantined VM | the unreadable VM object |
//! | `settings`, `settings set` | [`SettingsJson`]: the host settings recorded in the state directory (after the change) |
//! | `rm` | [`RemovedJson`]: `{"name": string, "removed": true, "stopped": boolean}`; `stopped` is true when `-f` had to stop the VM first |
//! | `snapshot` | [`SnapshotJson`]: `{"name", "vm", "dir", "firecracker_version": string, "vmstate_bytes", "memory_bytes", "memory_data_bytes", "created_at_ms": integer, "vm_state": string, "disks": [string…], "reclaimed": {"target_mib", "balloon_mib": integer} or null}`; `memory_data_bytes` is what the memory file takes on disk (zero pages are holes), `vm_state` the VM's state afterwards, `disks` the drives whose content the bundle keeps (`--disks`), `reclaimed` the balloon's target and what it held at the pause with `--reclaim` |
//! | `console` | [`ConsoleJson`]: `{"name": string, "lines": [string…]}`, oldest first; VMM stderr lines start with `[vmm] ` |
//! | `restore` | the VM object of the new VM |
//! | `clone` | `{"vms": [VM object…]}`, in clone order |
//! | `snapshots ls` (or plain `snapshots`) | [`SnapshotListJson`], below |
//! | `stats` | `{"vms": [{"name": string, "interval_ms": integer or null, "metrics": object}…], "errors": [{"name", "error": string}…]}`, one line per refresh with `--watch`. `metrics` is `firehost::metrics::VmmMetrics`: `{"utc_timestamp_ms": integer, "block", "net", "vsock", "balloon", "entropy", "api": object, "drives", "nics": {id: object}, "vcpu_failures", "vmm_panics", "seccomp_faults": integer}`, every counter what happened during `interval_ms` |
//! | `snapshots inspect` | [`SnapshotDetailsJson`], below |
//! | `snapshots verify` | [`VerifyJson`], below |
//! | `snapshots rm` | [`SnapshotRemovedJson`]: `{"name": string, "removed": true}` |
//! | `snapshots gc` | [`GcJson`], below |
//! | `snapshots merge` | the bundle object of the new full snapshot (its `leases` are empty) |
//! | `net ls` (or plain `net`) | [`NetListJson`]: `{"bridge": string, "subnet": string, "vms": [{"name", "ip", "mac", "tap": string, "published": [string…]}…]}`, the VMs on the default network sorted by name; `bridge` and `subnet` are the network settings the command ran with |
//! | `pool ls` (or plain `pool`) | [`PoolListJson`]: `{"pools": [pool object…]}`, sorted by name |
//! | `pool create`, `pool fill` | the pool object, after the fill |
//! | `pool claim` | the VM object of the claimed VM, under its new name |
//! | `pool rm` | [`PoolRemovedJson`]: `{"name": string, "removed": true}` |
//! | `net publish`, `net unpublish` | the VM object, after the change (its `net.published` says what is forwarded now) |
//! | `doctor` | [`DoctorJson`]: `{"ok": boolean, "checks": [check…]}` |
//! | `quickstart` | [`QuickstartJson`], below |
//! | `image build` | [`ImageJson`], below |
//! | `exec` | nothing: the process's own stdout and stderr stream through, and its exit code is the command's; `--json` is refused |
//! | `cp` | [`CopiedJson`](crate::exec::CopiedJson): `{"name", "direction": "to_vm" \| "from_vm", "vm_path", "local_path": string, "bytes": integer}`; nothing when copying to stdout (`-`) |
//! | `image initramfs` | [`InitramfsJson`]: `{"out": string, "entries": integer, "bytes": integer}`: the file written, its cpio entries (the trailer not counted) and its size in bytes (compressed) |
//!
//! # The snapshot bundle object ([`BundleJson`])
//!
//! One bundle in `<state-dir>/snapshots`, as its manifest describes it.
//! Printed by `snapshots merge`, as each element of `snapshots ls`'s
//! `snapshots`, and as the first fields of `snapshots inspect`:
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `name` | string | the snapshot's name |
//! | `kind` | string | `full` or `diff` (only the pages written since `parent`) |
//! | `parent` | string or null | the snapshot a diff applies on top of; null for a full one |
//! | `vm` | string | the VM it was taken from (which may be gone) |
//! | `dir` | string | the bundle directory |
//! | `format` | integer | manifest format (1 or 2) |
//! | `firecracker_version` | string | the Firecracker that wrote it (only that version loads it) |
//! | `vmstate_bytes` | integer | size of the vmstate file |
//! | `memory_bytes` | integer | logical size of the memory file (sparse for a diff) |
//! | `size_bytes` | integer | logical size of all the bundle's files |
//! | `data_bytes` | integer | bytes the files hold outside holes (for format 1 bundles, their logical size) |
//! | `created_at_ms` | integer | creation time |
//! | `leases` | array of strings | the existing VMs restored from it, sorted; `snapshots rm` refuses while there are any |
//! | `disks` | array of strings | the drives whose content it keeps, as they were at the snapshot (`snapshot --disks`); clones copy these |
//!
//! # `snapshots` commands
//!
//! `snapshots ls` ([`SnapshotListJson`]) prints `{"snapshots": [bundle
//! object…], "incomplete": [string…], "unreadable": [{"name": string,
//! "error": string}…]}`, each sorted by name. `incomplete` names bundles
//! without a manifest (a snapshot being taken, or one a crash
//! interrupted: `snapshots gc` removes the latter); `unreadable` those
//! whose manifest cannot be used, with the reason.
//!
//! `snapshots inspect` ([`SnapshotDetailsJson`]) prints the bundle object's
//! fields and these:
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `stale_leases` | array of strings | leases of VMs that no longer exist (they count for nothing; `snapshots gc` removes them) |
//! | `children` | array of strings | the snapshots naming this one as their parent |
//! | `spec` | object | the source VM's machine: `{"vcpus", "mem_mib": integer, "smt": boolean, "kernel": string, "initrd", "rootfs": string or null, "rootfs_read_only": boolean, "boot_args": string, "drives": [{"id", "path": string, "read_only": boolean}…], "track_dirty_pages": boolean}` |
//! | `files` | array of objects | `{"name": string, "size_bytes": integer, "data_bytes": integer or null, "blake3": string or null}`; the nulls are format 1 bundles |
//! | `working_set` | object or null | the pages a restored guest touched first, when recorded: `{"pages", "page_size_bytes", "size_bytes": integer, "truncated": boolean}` |
//!
//! `snapshots verify` ([`VerifyJson`]) prints `{"name": string, "ok":
//! boolean, "memory_checked": boolean, "chain": [string…] or null,
//! "error": object or null}` whether or not the bundle is good, and exits 1
//! when it is not (an unknown name is an ordinary error: exit 3, nothing
//! on stdout). `chain` lists the snapshot and its parents, newest first,
//! when all are good. `error` ([`VerifyErrorJson`]) is `{"kind": string,
//! "snapshot": string or null, "file": string or null, "message":
//! string}`; `kind` is one of `missing_file`, `size_mismatch`,
//! `checksum_mismatch`, `missing_parent`, `parent_loop`, `incomplete`,
//! `malformed`, `unknown_format`, `invalid`, `version_mismatch`, `io`,
//! `other` (more may be added); `snapshot` is the layer at fault and `file`
//! the file, where the error names them.
//!
//! `snapshots gc` ([`GcJson`]) prints what it removed: `{"incomplete":
//! [string…], "leftovers": [string…], "stale_leases": [{"snapshot",
//! "vm": string}…], "unused": [string…]}`: bundles without a manifest,
//! paths of temporary and half-deleted directories, leases of VMs that are
//! gone, and (with `--older-than-s`) old complete bundles nothing used.
//!
//! A check ([`CheckJson`]) is `{"name": string, "status": "ok" | "warn" |
//! "fail", "detail": string, "fix": string or null}`; the names are those
//! of [`firehost::doctor`] (`kvm`, `firecracker`, `jailer`, `host_kernel`,
//! `tun`, `nft`, `cgroup`, `userfaultfd`, `state_dir`).
//!
//! `quickstart` prints `{"ready": boolean, "missing": [{"what": string,
//! "fix": string}…], "checks": [check…], "state_dir": string, "vm": string
//! or null, "timings_ms": object or null, "console_tail": [string…]}`. When
//! `ready` is false, `missing` says what to supply and nothing was started
//! (`vm` and `timings_ms` are null). Otherwise `timings_ms` is
//! `{"create_ms", "start_ms": float, "first_output_ms": float or null,
//! "stop_ms", "destroy_ms", "total_ms": float}` and `state_dir` (the
//! temporary one) no longer exists.
//!
//! # `image build` ([`ImageJson`])
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `out` | string | the image file written |
//! | `size_mib` | integer | its size, as given by `--size-mib` or computed from the content |
//! | `files` | integer | entries in the image besides its root directory (files, directories, links, device nodes; each hard link counts), the agent included |
//! | `agent` | string | the agent's path in the image: `/sbin/init` or `/sbin/firehost-agent` |
//! | `replaced` | string or null | what the agent replaced at that path (`a symbolic link to /lib/systemd/systemd`, `a file`, `a special file`); null if nothing was there |
//! | `read_only` | boolean | the ext4 `read-only` feature is set |
//! | `owners_kept` | boolean | files keep their owners from the source; false when a tar was unpacked by a non-root user (its files then belong to that user) |
//! | `elapsed_ms` | float | how long the build took |

use std::path::Path;

use firehost::doctor::{Check, CheckStatus};
use firehost::image::{InitramfsReport, RootfsReport};
use firehost::net::firewall::TrafficCounters;
use firehost::net::host::VmNet;
use firehost::snapshot::store::{GcReport, Listing, SnapshotDetails};
use firehost::snapshot::{BundleError, SnapshotInfo, SnapshotKind, StoreError, WorkingSet};
use firehost::spec::{DriveCache, DriveIo, IoEngine};
use firehost::vocab::{Bucket, EgressPolicy, EgressTarget, RateLimit};
use firehost::{ExitReason, ResolvedSpec, VmId, VmInfo, VmState};
use serde::Serialize;

/// A VM. See the [module docs](self).
/// One of a clone's own drive copies, in [`VmJson`].
#[derive(Debug, Clone, Serialize)]
pub struct OwnDriveJson {
    /// The drive id.
    pub drive: String,
    /// The copy.
    pub path: String,
    /// `reflink` or `extents`.
    pub copy: firehost::record::CopyMethod,
}

impl From<&firehost::record::OwnDrive> for OwnDriveJson {
    fn from(own: &firehost::record::OwnDrive) -> Self {
        OwnDriveJson {
            drive: own.drive.clone(),
            path: own.path.display().to_string(),
            copy: own.copy,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VmJson {
    /// Its name.
    pub name: String,
    /// `created`, `running`, `paused`, `stopped` or `failed`.
    pub state: &'static str,
    /// The VMM's pid while it runs.
    pub pid: Option<i32>,
    /// Firecracker's API socket.
    pub api_socket: String,
    /// The VM's directory.
    pub dir: String,
    /// The console file.
    pub console_file: Option<String>,
    /// Firecracker's log file, when it exists.
    pub log_file: Option<String>,
    /// vCPU count.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// SMT on.
    pub smt: bool,
    /// Kernel path.
    pub kernel: String,
    /// Initrd path.
    pub initrd: Option<String>,
    /// Root filesystem path.
    pub rootfs: Option<String>,
    /// Root filesystem read-only.
    pub rootfs_read_only: bool,
    /// Writable root filesystem shared on purpose with other VMs.
    pub rootfs_shared: bool,
    /// A clone's own copies of writable drives.
    pub own_drives: Vec<OwnDriveJson>,
    /// Kernel command line.
    pub boot_args: String,
    /// Every drive, the root filesystem first.
    pub drives: Vec<VmDriveJson>,
    /// Every NIC, the default network's first.
    pub nics: Vec<NicJson>,
    /// The entropy device.
    pub entropy: Option<EntropyJson>,
    /// The balloon.
    pub balloon: Option<BalloonJson>,
    /// The CPU template: a static name or a custom file.
    pub cpu_template: Option<String>,
    /// The pmem devices.
    pub pmem: Vec<PmemJson>,
    /// The serial console's output bucket.
    pub serial_limit: Option<BucketJson>,
    /// The hotpluggable memory region.
    pub memory_hotplug: Option<HotplugJson>,
    /// Creation time, ms since the epoch.
    pub created_at_ms: u64,
    /// How the VMM ended, for stopped and failed VMs.
    pub exit: Option<ExitJson>,
    /// The console when the VMM died, for failed VMs.
    pub console_tail: Option<Vec<String>>,
    /// The VM's place on the default network, if it has one.
    pub net: Option<NetJson>,
    /// The VM's vsock device, if it has one.
    pub vsock: Option<VsockJson>,
    /// The VM's jail, if it runs in one.
    pub jail: Option<JailJson>,
    /// The VMM is alive but did not answer in time.
    pub busy: bool,
    /// A snapshot a killed command left under way.
    pub interrupted_snapshot: Option<String>,
}

/// A quarantined VM: its record cannot be read. See the [module
/// docs](self).
#[derive(Debug, Clone, Serialize)]
pub struct UnreadableVmJson {
    /// Its name.
    pub name: String,
    /// Always `unreadable`.
    pub state: &'static str,
    /// Why its record cannot be read.
    pub reason: String,
    /// The VMM found for it, if any.
    pub pid: Option<i32>,
    /// Its directory.
    pub dir: String,
}

impl From<&firehost::manager::UnreadableVm> for UnreadableVmJson {
    fn from(vm: &firehost::manager::UnreadableVm) -> Self {
        UnreadableVmJson {
            name: vm.id.to_string(),
            state: "unreadable",
            reason: vm.reason.to_string(),
            pid: vm.pid,
            dir: path(&vm.dir),
        }
    }
}

/// `settings`: the host settings recorded in the state directory.
#[derive(Debug, Clone, Serialize)]
pub struct SettingsJson {
    /// The state directory.
    pub state_dir: String,
    /// `{"bridge", "subnet": string, "gateway": string or null, "uplink":
    /// string, "dns": [string…] or null, "host_services": [string…]}`.
    pub network: serde_json::Value,
    /// `{"chroot_base": string, "uid_range": [integer, integer],
    /// "cgroup_version": string or null}`, or null before jails were
    /// used.
    pub jail: serde_json::Value,
}

/// A VM's jail: where its chroot is, whom it runs as, its cgroups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JailJson {
    /// The chroot directory (`<base>/<exec name>/<id>/root`).
    pub chroot: String,
    /// The uid Firecracker runs as.
    pub uid: u32,
    /// The gid Firecracker runs as.
    pub gid: u32,
    /// The cgroup directories holding its limits (empty without limits).
    pub cgroups: Vec<String>,
}

/// A VM's vsock device: `{"uds_path": string, "guest_cid": integer}`.
#[derive(Debug, Clone, Serialize)]
pub struct VsockJson {
    /// The device's unix socket (hybrid vsock: `CONNECT <port>`).
    pub uds_path: String,
    /// The guest CID.
    pub guest_cid: u32,
}

/// A VM's place on the default network. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetJson {
    /// The VM's address on the host's network.
    pub ip: String,
    /// The subnet's prefix length.
    pub prefix_len: u8,
    /// The default gateway (the bridge).
    pub gateway: String,
    /// The MAC the host sees.
    pub mac: String,
    /// The TAP on the host.
    pub tap: String,
    /// DNS servers for the guest.
    pub dns: Vec<String>,
    /// Host ports forwarded to the guest, `HOST:GUEST/PROTO`.
    pub published: Vec<String>,
    /// Peer groups.
    pub peer_groups: Vec<String>,
    /// The VM's own network namespace file, if it has one.
    pub netns: Option<String>,
    /// The address and MAC the guest keeps, translated to `ip`, if they
    /// differ.
    pub guest: Option<GuestJson>,
    /// The egress policy in force.
    pub egress: EgressPolicyJson,
    /// Its traffic since it was attached: in `inspect`, null elsewhere
    /// (reading it costs a look at the firewall).
    pub traffic: Option<TrafficJson>,
}

/// An egress policy: the default and the rules, in the order they are
/// checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressPolicyJson {
    /// `allow` or `deny`: what no rule matches.
    pub default: String,
    /// The rules.
    pub rules: Vec<EgressRuleJson>,
}

/// One egress rule: an address rule has `net`, a name rule `domain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressRuleJson {
    /// `allow` or `deny`.
    pub action: String,
    /// `CIDR[:PORTS]/PROTO`, or null.
    pub net: Option<String>,
    /// `NAME` or `*.NAME`, or null.
    pub domain: Option<String>,
}

impl From<&EgressPolicy> for EgressPolicyJson {
    fn from(policy: &EgressPolicy) -> Self {
        EgressPolicyJson {
            default: policy.default_action().to_string(),
            rules: policy
                .rules()
                .iter()
                .map(|rule| {
                    let (net, domain) = match &rule.target {
                        EgressTarget::Net(m) => (Some(m.to_string()), None),
                        EgressTarget::Domain(d) => (None, Some(d.to_string())),
                    };
                    EgressRuleJson {
                        action: rule.action.to_string(),
                        net,
                        domain,
                    }
                })
                .collect(),
        }
    }
}

/// A VM's traffic on the default network since it was attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TrafficJson {
    /// Bytes the guest sent.
    pub tx_bytes: u64,
    /// Packets the guest sent.
    pub tx_packets: u64,
    /// Bytes the guest received.
    pub rx_bytes: u64,
    /// Packets the guest received.
    pub rx_packets: u64,
    /// Packets its egress policy dropped.
    pub egress_dropped: u64,
    /// Names the gateway refused it (a VM with domain rules).
    pub names_refused: u64,
}

impl From<&TrafficCounters> for TrafficJson {
    fn from(t: &TrafficCounters) -> Self {
        TrafficJson {
            tx_bytes: t.tx_bytes,
            tx_packets: t.tx_packets,
            rx_bytes: t.rx_bytes,
            rx_packets: t.rx_packets,
            egress_dropped: t.egress_dropped,
            names_refused: t.names_refused,
        }
    }
}

/// `net egress`: a VM's egress policy and traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressJson {
    /// The VM's name.
    pub name: String,
    /// The policy in force.
    pub egress: EgressPolicyJson,
    /// Its traffic, or null when the firewall could not be read.
    pub traffic: Option<TrafficJson>,
}

impl EgressJson {
    /// The policy and traffic of VM `name`.
    pub fn new(name: &VmId, policy: &EgressPolicy, traffic: Option<&TrafficCounters>) -> Self {
        EgressJson {
            name: name.to_string(),
            egress: policy.into(),
            traffic: traffic.map(TrafficJson::from),
        }
    }
}

/// A drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmDriveJson {
    /// Its id.
    pub id: String,
    /// Its file.
    pub path: String,
    /// Whether it is the root device.
    pub root: bool,
    /// Attached read-only.
    pub read_only: bool,
    /// `unsafe` or `writeback`.
    pub cache: &'static str,
    /// `sync` or `async`.
    pub engine: &'static str,
    /// The root partition's PARTUUID.
    pub partuuid: Option<String>,
    /// Its limits.
    pub limit: Option<LimitJson>,
}

/// A pmem device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PmemJson {
    /// Its id.
    pub id: String,
    /// Its file.
    pub path: String,
    /// The guest boots from it.
    pub root: bool,
    /// Its limits.
    pub limit: Option<LimitJson>,
}

/// The hotpluggable memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HotplugJson {
    /// Its size.
    pub total_mib: u64,
    /// The host's step.
    pub slot_mib: u64,
    /// The guest's block.
    pub block_mib: u64,
    /// What was asked of the guest.
    pub requested_mib: u64,
}

/// A NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NicJson {
    /// Its interface id.
    pub id: String,
    /// Its TAP.
    pub tap: String,
    /// Limits on what the guest receives.
    pub rx_limit: Option<LimitJson>,
    /// Limits on what the guest sends.
    pub tx_limit: Option<LimitJson>,
}

/// The entropy device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntropyJson {
    /// Its limits.
    pub limit: Option<LimitJson>,
}

/// The balloon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BalloonJson {
    /// Its target, MiB.
    pub amount_mib: u32,
    /// Gives memory back when the guest runs out.
    pub deflate_on_oom: bool,
    /// Seconds between memory reports; 0 when off.
    pub stats_interval_s: u16,
    /// Free page hinting.
    pub free_page_hinting: bool,
    /// Free page reporting.
    pub free_page_reporting: bool,
}

/// A device's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitJson {
    /// Bytes.
    pub bandwidth: Option<BucketJson>,
    /// Operations.
    pub ops: Option<BucketJson>,
}

/// A token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BucketJson {
    /// Tokens.
    pub size: u64,
    /// Milliseconds to refill.
    pub refill_time_ms: u64,
    /// Tokens available once.
    pub one_time_burst: Option<u64>,
}

impl BucketJson {
    /// The JSON form of `b`.
    pub fn of(b: &Bucket) -> BucketJson {
        BucketJson {
            size: b.size,
            refill_time_ms: b.refill_time_ms,
            one_time_burst: b.one_time_burst,
        }
    }
}

impl LimitJson {
    /// `None` when nothing is limited.
    pub fn of(limit: &RateLimit) -> Option<LimitJson> {
        (!limit.is_unlimited()).then(|| LimitJson {
            bandwidth: limit.bandwidth.as_ref().map(BucketJson::of),
            ops: limit.ops.as_ref().map(BucketJson::of),
        })
    }
}

/// The drives of `spec`, root first.
fn drives_of(spec: &ResolvedSpec) -> Vec<VmDriveJson> {
    let drive = |id: &str, file: &Path, root: bool, read_only: bool, io: &DriveIo| VmDriveJson {
        id: id.to_owned(),
        path: path(file),
        root,
        read_only,
        cache: match io.cache {
            DriveCache::Unsafe => "unsafe",
            DriveCache::Writeback => "writeback",
        },
        engine: match io.engine {
            IoEngine::Sync => "sync",
            IoEngine::Async => "async",
        },
        partuuid: None,
        limit: LimitJson::of(&io.limit),
    };
    let mut drives = Vec::new();
    if let Some(rootfs) = &spec.rootfs {
        drives.push(VmDriveJson {
            partuuid: spec.rootfs_partuuid.clone(),
            ..drive(
                firehost::spec::ROOTFS_DRIVE_ID,
                rootfs,
                true,
                spec.rootfs_read_only,
                &spec.rootfs_io,
            )
        });
    }
    for d in &spec.extra_drives {
        drives.push(drive(&d.id, &d.path, false, d.read_only, &d.io));
    }
    drives
}

/// The NICs of a VM, the default network's first.
fn nics_of(vm: &VmInfo) -> Vec<NicJson> {
    let mut nics = Vec::new();
    if let (Some(net), Some(spec)) = (&vm.net, &vm.spec.net) {
        nics.push(NicJson {
            id: net.iface_id.clone(),
            tap: net.tap.to_string(),
            rx_limit: LimitJson::of(&spec.rx_limit),
            tx_limit: LimitJson::of(&spec.tx_limit),
        });
    }
    for nic in &vm.spec.extra_nics {
        nics.push(NicJson {
            id: nic.iface_id.clone(),
            tap: nic.tap.to_string(),
            rx_limit: LimitJson::of(&nic.rx_limit),
            tx_limit: LimitJson::of(&nic.tx_limit),
        });
    }
    nics
}

/// A translated guest's own address: `{"ip": string, "mac": string}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestJson {
    /// The guest's address.
    pub ip: String,
    /// The guest's MAC.
    pub mac: String,
}

/// Each item's text.
fn strings<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

impl From<&VmNet> for NetJson {
    fn from(net: &VmNet) -> Self {
        NetJson {
            ip: net.ip.to_string(),
            prefix_len: net.prefix_len,
            gateway: net.gateway.to_string(),
            mac: net.mac.to_string(),
            tap: net.tap.to_string(),
            dns: strings(&net.dns),
            published: strings(&net.published),
            peer_groups: strings(&net.peer_groups),
            netns: net.netns.as_ref().map(|ns| path(&ns.path)),
            guest: net.guest.map(|g| GuestJson {
                ip: g.ip.to_string(),
                mac: g.mac.to_string(),
            }),
            egress: (&net.egress).into(),
            traffic: None,
        }
    }
}

/// How a VMM ended: an exit code, a signal, or neither when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExitJson {
    /// The exit code.
    pub code: Option<i32>,
    /// The terminating signal.
    pub signal: Option<i32>,
}

impl From<&ExitReason> for ExitJson {
    fn from(exit: &ExitReason) -> Self {
        match exit {
            ExitReason::Code(c) => ExitJson {
                code: Some(*c),
                signal: None,
            },
            ExitReason::Signal(s) => ExitJson {
                code: None,
                signal: Some(*s),
            },
            _ => ExitJson {
                code: None,
                signal: None,
            },
        }
    }
}

/// Where the library puts Firecracker's log in a VM's directory (with
/// `ManagerConfig::vmm_log`, which the CLI sets).
const VMM_LOG_FILE: &str = "firecracker.log";

/// A path as a JSON string.
pub fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl From<&VmInfo> for VmJson {
    fn from(vm: &VmInfo) -> Self {
        let (exit, console_tail) = match &vm.state {
            VmState::Stopped { exit } => (Some(exit.into()), None),
            VmState::Failed { exit, console_tail } => {
                (Some(exit.into()), Some(console_tail.clone()))
            }
            _ => (None, None),
        };
        VmJson {
            name: vm.id.to_string(),
            state: vm.state.name(),
            pid: vm.pid,
            api_socket: path(&vm.api_socket),
            dir: path(&vm.dir),
            console_file: vm.console_file.as_deref().map(path),
            log_file: Some(match &vm.jail {
                Some(jail) => jail.chroot.join(VMM_LOG_FILE),
                None => vm.dir.join(VMM_LOG_FILE),
            })
            .filter(|p| p.is_file())
            .as_deref()
            .map(path),
            vcpus: vm.spec.vcpus,
            mem_mib: vm.spec.mem_mib,
            smt: vm.spec.smt,
            kernel: path(&vm.spec.kernel),
            initrd: vm.spec.initrd.as_deref().map(path),
            rootfs: vm.spec.rootfs.as_deref().map(path),
            rootfs_read_only: vm.spec.rootfs_read_only,
            rootfs_shared: vm.spec.rootfs_shared,
            own_drives: vm.own_drives.iter().map(OwnDriveJson::from).collect(),
            boot_args: vm.spec.boot_args.clone(),
            drives: drives_of(&vm.spec),
            nics: nics_of(vm),
            entropy: vm.spec.entropy.as_ref().map(|e| EntropyJson {
                limit: LimitJson::of(&e.limit),
            }),
            balloon: vm.spec.balloon.map(|b| BalloonJson {
                amount_mib: b.amount_mib,
                deflate_on_oom: b.deflate_on_oom,
                stats_interval_s: b.stats_interval_s,
                free_page_hinting: b.free_page_hinting,
                free_page_reporting: b.free_page_reporting,
            }),
            cpu_template: vm.spec.cpu_template.as_ref().map(|t| match t {
                firehost::spec::ResolvedCpuTemplate::Static(t) => t.to_string(),
                firehost::spec::ResolvedCpuTemplate::Custom { path: p, .. } => path(p),
            }),
            pmem: vm
                .spec
                .pmem
                .iter()
                .map(|p| PmemJson {
                    id: p.id.clone(),
                    path: path(&p.path),
                    root: p.root,
                    limit: LimitJson::of(&p.limit),
                })
                .collect(),
            serial_limit: vm.spec.serial_limit.as_ref().map(BucketJson::of),
            memory_hotplug: vm.spec.memory_hotplug.map(|h| HotplugJson {
                total_mib: h.total_mib,
                slot_mib: h.slot_mib,
                block_mib: h.block_mib,
                requested_mib: h.requested_mib,
            }),
            created_at_ms: vm.created_at_ms,
            exit,
            console_tail,
            net: vm.net.as_ref().map(NetJson::from),
            vsock: vm.vsock.as_ref().map(|v| VsockJson {
                uds_path: path(&v.uds_path),
                guest_cid: v.guest_cid,
            }),
            jail: vm.jail.as_ref().map(|j| JailJson {
                chroot: path(&j.chroot),
                uid: j.uid,
                gid: j.gid,
                cgroups: j.cgroups.iter().map(|c| path(c)).collect(),
            }),
            busy: vm.busy,
            interrupted_snapshot: vm.interrupted_snapshot.as_ref().map(ToString::to_string),
        }
    }
}

/// `ls`.
#[derive(Debug, Clone, Serialize)]
pub struct ListJson {
    /// Every VM, sorted by name.
    pub vms: Vec<VmJson>,
    /// The quarantined VMs, sorted by name.
    pub unreadable: Vec<UnreadableVmJson>,
}

/// `net ls`.
#[derive(Debug, Clone, Serialize)]
pub struct NetListJson {
    /// The bridge the TAPs join.
    pub bridge: String,
    /// The guest subnet.
    pub subnet: String,
    /// The VMs on the network, sorted by name.
    pub vms: Vec<NetVmJson>,
}

impl NetListJson {
    /// The network of `bridge` and `subnet` with these VMs on it, and
    /// the traffic of those the firewall has counters for.
    pub fn new(
        bridge: String,
        subnet: String,
        attachments: &[(VmId, VmNet)],
        traffic: &[(VmId, TrafficCounters)],
    ) -> Self {
        let mut vms: Vec<NetVmJson> = attachments
            .iter()
            .map(|(id, net)| NetVmJson {
                name: id.to_string(),
                ip: net.ip.to_string(),
                mac: net.mac.to_string(),
                tap: net.tap.to_string(),
                published: strings(&net.published),
                egress: (&net.egress).into(),
                traffic: traffic
                    .iter()
                    .find(|(vm, _)| vm == id)
                    .map(|(_, t)| TrafficJson::from(t)),
            })
            .collect();
        vms.sort_by(|a, b| a.name.cmp(&b.name));
        NetListJson {
            bridge,
            subnet,
            vms,
        }
    }
}

/// One VM in `net ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetVmJson {
    /// Its name.
    pub name: String,
    /// The guest's address.
    pub ip: String,
    /// The guest NIC's MAC.
    pub mac: String,
    /// The TAP on the host.
    pub tap: String,
    /// Host ports forwarded to it, `HOST:GUEST/PROTO`.
    pub published: Vec<String>,
    /// Its egress policy.
    pub egress: EgressPolicyJson,
    /// Its traffic, or null when the firewall has no counters for it (a
    /// read-only manager's view).
    pub traffic: Option<TrafficJson>,
}

/// `stop`: the VM object, plus whether this command stopped it.
#[derive(Debug, Clone, Serialize)]
pub struct StopJson {
    /// The VM object's fields.
    #[serde(flatten)]
    pub vm: VmJson,
    /// True if this command ended the VMM; false if the VM had already
    /// stopped or failed (which is not an error).
    pub stopped: bool,
}

/// `rm`.
#[derive(Debug, Clone, Serialize)]
pub struct RemovedJson {
    /// The VM's name.
    pub name: String,
    /// True if this command removed it. False only with `-f`, when there
    /// was no such VM (without `-f` that is an error).
    pub removed: bool,
    /// `-f` stopped the VM first.
    pub stopped: bool,
}

/// `snapshot`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotJson {
    /// The snapshot's name.
    pub name: String,
    /// The VM it was taken from.
    pub vm: String,
    /// The bundle directory.
    pub dir: String,
    /// The Firecracker version that wrote it (only it can load it).
    pub firecracker_version: String,
    /// Size of the vmstate file.
    pub vmstate_bytes: u64,
    /// Size of the memory file.
    pub memory_bytes: u64,
    /// What the memory file takes on disk.
    pub memory_data_bytes: u64,
    /// Creation time, ms since the epoch.
    pub created_at_ms: u64,
    /// The VM's state after the snapshot.
    pub vm_state: &'static str,
    /// The drives whose content the bundle keeps (`--disks`).
    pub disks: Vec<String>,
    /// The balloon before the snapshot (`--reclaim`).
    pub reclaimed: Option<ReclaimedJson>,
}

/// `{"target_mib", "balloon_mib": integer}`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ReclaimedJson {
    /// The balloon's target.
    pub target_mib: u32,
    /// What it held at the pause.
    pub balloon_mib: u32,
}

impl SnapshotJson {
    /// The snapshot `info`, and the state its VM was left in.
    pub fn new(info: &SnapshotInfo, vm_state: &'static str) -> Self {
        SnapshotJson {
            name: info.name.to_string(),
            vm: info.manifest.source_vm.to_string(),
            dir: path(&info.dir),
            firecracker_version: info.manifest.firecracker_version.clone(),
            vmstate_bytes: info.manifest.vmstate_bytes,
            memory_bytes: info.manifest.memory_bytes,
            memory_data_bytes: info
                .manifest
                .file(firehost::snapshot::MEMORY_FILE)
                .and_then(|f| f.data_bytes)
                .unwrap_or(info.manifest.memory_bytes),
            created_at_ms: info.manifest.created_at_ms,
            vm_state,
            disks: info.manifest.disks.clone(),
            reclaimed: info.reclaimed.map(|r| ReclaimedJson {
                target_mib: r.target_mib,
                balloon_mib: r.balloon_mib,
            }),
        }
    }
}

/// A snapshot bundle. See the [module docs](self).
#[derive(Debug, Clone, Serialize)]
pub struct BundleJson {
    /// Its name.
    pub name: String,
    /// `full` or `diff`.
    pub kind: &'static str,
    /// The parent of a diff.
    pub parent: Option<String>,
    /// The VM it was taken from.
    pub vm: String,
    /// The bundle directory.
    pub dir: String,
    /// Manifest format.
    pub format: u32,
    /// The Firecracker version that wrote it.
    pub firecracker_version: String,
    /// Size of the vmstate file.
    pub vmstate_bytes: u64,
    /// Logical size of the memory file.
    pub memory_bytes: u64,
    /// Logical size of all its files.
    pub size_bytes: u64,
    /// Bytes its files hold outside holes.
    pub data_bytes: u64,
    /// Creation time, ms since the epoch.
    pub created_at_ms: u64,
    /// The existing VMs restored from it, sorted.
    pub leases: Vec<String>,
    /// The drives whose content it keeps (`snapshot --disks`).
    pub disks: Vec<String>,
}

impl BundleJson {
    /// The bundle `info`, leased by `leases`.
    pub fn new(info: &SnapshotInfo, leases: &[VmId]) -> Self {
        let m = &info.manifest;
        BundleJson {
            name: info.name.to_string(),
            kind: kind(m.kind),
            parent: m.parent.as_ref().map(ToString::to_string),
            vm: m.source_vm.to_string(),
            dir: path(&info.dir),
            format: m.format,
            firecracker_version: m.firecracker_version.clone(),
            vmstate_bytes: m.vmstate_bytes,
            memory_bytes: m.memory_bytes,
            size_bytes: m.files.iter().map(|f| f.size_bytes).sum(),
            data_bytes: m
                .files
                .iter()
                .map(|f| f.data_bytes.unwrap_or(f.size_bytes))
                .sum(),
            created_at_ms: m.created_at_ms,
            leases: leases.iter().map(ToString::to_string).collect(),
            disks: m.disks.clone(),
        }
    }
}

/// `full` or `diff`.
fn kind(kind: SnapshotKind) -> &'static str {
    match kind {
        SnapshotKind::Full => "full",
        SnapshotKind::Diff => "diff",
    }
}

/// `snapshots ls`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotListJson {
    /// Complete bundles, sorted by name.
    pub snapshots: Vec<BundleJson>,
    /// Bundles without a manifest, sorted.
    pub incomplete: Vec<String>,
    /// Bundles whose manifest cannot be used, sorted by name.
    pub unreadable: Vec<UnreadableJson>,
}

impl SnapshotListJson {
    /// The `listing`, with `leases[i]` the live leases of its `i`th bundle.
    pub fn new(listing: &Listing, leases: &[Vec<VmId>]) -> Self {
        SnapshotListJson {
            snapshots: listing
                .bundles
                .iter()
                .zip(leases)
                .map(|(info, leases)| BundleJson::new(info, leases))
                .collect(),
            incomplete: listing.incomplete.iter().map(ToString::to_string).collect(),
            unreadable: listing
                .unreadable
                .iter()
                .map(|u| UnreadableJson {
                    name: u.name.to_string(),
                    error: crate::exit::chain_text(&u.error),
                })
                .collect(),
        }
    }
}

/// A bundle `snapshots ls` could not read.
#[derive(Debug, Clone, Serialize)]
pub struct UnreadableJson {
    /// Its directory name.
    pub name: String,
    /// Why, with its causes, on one line.
    pub error: String,
}

/// `snapshots inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotDetailsJson {
    /// The bundle object's fields.
    #[serde(flatten)]
    pub bundle: BundleJson,
    /// Leases of VMs that no longer exist, sorted.
    pub stale_leases: Vec<String>,
    /// Snapshots naming this one as their parent, sorted.
    pub children: Vec<String>,
    /// The source VM's machine.
    pub spec: SpecJson,
    /// The bundle's files, as the manifest lists them.
    pub files: Vec<FileJson>,
    /// The recorded working set, if any.
    pub working_set: Option<WorkingSetJson>,
}

impl From<&SnapshotDetails> for SnapshotDetailsJson {
    fn from(d: &SnapshotDetails) -> Self {
        let m = &d.info.manifest;
        SnapshotDetailsJson {
            bundle: BundleJson::new(&d.info, &d.leases),
            stale_leases: d.stale_leases.iter().map(ToString::to_string).collect(),
            children: d.children.iter().map(ToString::to_string).collect(),
            spec: SpecJson::from(&m.spec),
            files: m
                .files
                .iter()
                .map(|f| FileJson {
                    name: f.name.clone(),
                    size_bytes: f.size_bytes,
                    data_bytes: f.data_bytes,
                    blake3: f.blake3.clone(),
                })
                .collect(),
            working_set: d.working_set.as_ref().map(WorkingSetJson::from),
        }
    }
}

/// A snapshot's source machine.
#[derive(Debug, Clone, Serialize)]
pub struct SpecJson {
    /// vCPU count.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// SMT on.
    pub smt: bool,
    /// Kernel path.
    pub kernel: String,
    /// Initrd path.
    pub initrd: Option<String>,
    /// Root filesystem path.
    pub rootfs: Option<String>,
    /// Root filesystem read-only.
    pub rootfs_read_only: bool,
    /// Kernel command line.
    pub boot_args: String,
    /// Extra drives.
    pub drives: Vec<DriveJson>,
    /// Dirty-page tracking on (needed for diff snapshots).
    pub track_dirty_pages: bool,
}

impl From<&ResolvedSpec> for SpecJson {
    fn from(spec: &ResolvedSpec) -> Self {
        SpecJson {
            vcpus: spec.vcpus,
            mem_mib: spec.mem_mib,
            smt: spec.smt,
            kernel: path(&spec.kernel),
            initrd: spec.initrd.as_deref().map(path),
            rootfs: spec.rootfs.as_deref().map(path),
            rootfs_read_only: spec.rootfs_read_only,
            boot_args: spec.boot_args.clone(),
            drives: spec
                .extra_drives
                .iter()
                .map(|d| DriveJson {
                    id: d.id.clone(),
                    path: path(&d.path),
                    read_only: d.read_only,
                })
                .collect(),
            track_dirty_pages: spec.track_dirty_pages,
        }
    }
}

/// An extra drive of a snapshot's source machine.
#[derive(Debug, Clone, Serialize)]
pub struct DriveJson {
    /// Firecracker's drive id.
    pub id: String,
    /// The backing file.
    pub path: String,
    /// Attached read-only.
    pub read_only: bool,
}

/// One file of a bundle.
#[derive(Debug, Clone, Serialize)]
pub struct FileJson {
    /// Its name in the bundle.
    pub name: String,
    /// Logical size.
    pub size_bytes: u64,
    /// Bytes outside holes (format 2 only).
    pub data_bytes: Option<u64>,
    /// BLAKE3 in lower-case hex (format 2 only).
    pub blake3: Option<String>,
}

/// The size of a recorded working set.
#[derive(Debug, Clone, Serialize)]
pub struct WorkingSetJson {
    /// Touched pages.
    pub pages: u64,
    /// The page size they count in.
    pub page_size_bytes: u64,
    /// Their total size.
    pub size_bytes: u64,
    /// Pages were left out because the page server's record limit was
    /// reached.
    pub truncated: bool,
}

impl From<&WorkingSet> for WorkingSetJson {
    fn from(ws: &WorkingSet) -> Self {
        let pages = u64::try_from(ws.pages.len()).unwrap_or(u64::MAX);
        WorkingSetJson {
            pages,
            page_size_bytes: ws.page_size_bytes,
            size_bytes: pages.saturating_mul(ws.page_size_bytes),
            truncated: ws.truncated,
        }
    }
}

/// `snapshots verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyJson {
    /// The snapshot's name.
    pub name: String,
    /// It and every parent are good.
    pub ok: bool,
    /// The memory files were hashed (`--memory`), not only measured.
    pub memory_checked: bool,
    /// The snapshot and its parents, newest first, when all are good.
    pub chain: Option<Vec<String>>,
    /// What is wrong, when something is.
    pub error: Option<VerifyErrorJson>,
}

/// Why `snapshots verify` found a bundle bad.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyErrorJson {
    /// A stable name for the kind of damage.
    pub kind: &'static str,
    /// The snapshot at fault (the named one or a parent), where known.
    pub snapshot: Option<String>,
    /// The file at fault, where known.
    pub file: Option<String>,
    /// The error and its causes, on one line.
    pub message: String,
}

impl From<&StoreError> for VerifyErrorJson {
    fn from(e: &StoreError) -> Self {
        let (kind, snapshot, file) = match e {
            StoreError::Bundle(b) => match b {
                BundleError::MissingFile { name, file } => {
                    ("missing_file", Some(name.to_string()), Some(file.clone()))
                }
                BundleError::SizeMismatch { name, file, .. } => {
                    ("size_mismatch", Some(name.to_string()), Some(file.clone()))
                }
                BundleError::ChecksumMismatch { name, file, .. } => (
                    "checksum_mismatch",
                    Some(name.to_string()),
                    Some(file.clone()),
                ),
                BundleError::MissingParent { name, .. } => {
                    ("missing_parent", Some(name.to_string()), None)
                }
                BundleError::ParentLoop { name, .. } => {
                    ("parent_loop", Some(name.to_string()), None)
                }
                BundleError::VersionMismatch { name, .. } => {
                    ("version_mismatch", Some(name.to_string()), None)
                }
                BundleError::Incomplete { .. } => ("incomplete", None, None),
                BundleError::Malformed { .. } => ("malformed", None, None),
                BundleError::UnknownFormat { .. } => ("unknown_format", None, None),
                BundleError::Invalid { .. } => ("invalid", None, None),
                BundleError::Io { .. } => ("io", None, None),
                _ => ("other", None, None),
            },
            StoreError::Io { .. } => ("io", None, None),
            _ => ("other", None, None),
        };
        VerifyErrorJson {
            kind,
            snapshot,
            file,
            message: crate::exit::chain_text(e),
        }
    }
}

/// `snapshots rm`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRemovedJson {
    /// The snapshot's name.
    pub name: String,
    /// Always true: a snapshot that could not be removed is an error.
    pub removed: bool,
}

/// `snapshots gc`: what it removed.
#[derive(Debug, Clone, Serialize)]
pub struct GcJson {
    /// Bundles without a manifest that nobody was writing.
    pub incomplete: Vec<String>,
    /// Temporary and half-deleted directories.
    pub leftovers: Vec<String>,
    /// Leases of VMs that no longer exist.
    pub stale_leases: Vec<StaleLeaseJson>,
    /// Old complete bundles nothing used (`--older-than-s`).
    pub unused: Vec<String>,
}

impl From<&GcReport> for GcJson {
    fn from(r: &GcReport) -> Self {
        GcJson {
            incomplete: r.incomplete.iter().map(ToString::to_string).collect(),
            leftovers: r.leftovers.iter().map(|p| path(p)).collect(),
            stale_leases: r
                .stale_leases
                .iter()
                .map(|l| StaleLeaseJson {
                    snapshot: l.snapshot.to_string(),
                    vm: l.vm.to_string(),
                })
                .collect(),
            unused: r.unused.iter().map(ToString::to_string).collect(),
        }
    }
}

/// A removed lease of a VM that is gone.
#[derive(Debug, Clone, Serialize)]
pub struct StaleLeaseJson {
    /// The leased snapshot.
    pub snapshot: String,
    /// The VM that held it.
    pub vm: String,
}

/// `console`.
#[derive(Debug, Clone, Serialize)]
pub struct ConsoleJson {
    /// The VM's name.
    pub name: String,
    /// The last lines, oldest first.
    pub lines: Vec<String>,
}

/// One doctor check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckJson {
    /// The check's stable name.
    pub name: String,
    /// `ok`, `warn` or `fail`.
    pub status: &'static str,
    /// What was found.
    pub detail: String,
    /// What to do about a warning or failure.
    pub fix: Option<String>,
}

impl From<&Check> for CheckJson {
    fn from(c: &Check) -> Self {
        CheckJson {
            name: c.name.to_owned(),
            status: match c.status {
                CheckStatus::Ok => "ok",
                CheckStatus::Warn => "warn",
                CheckStatus::Fail => "fail",
            },
            detail: c.detail.clone(),
            fix: c.fix.clone(),
        }
    }
}

/// `doctor`.
#[derive(Debug, Clone, Serialize)]
pub struct DoctorJson {
    /// No check failed.
    pub ok: bool,
    /// Every check, in a fixed order.
    pub checks: Vec<CheckJson>,
}

impl DoctorJson {
    /// The report of `checks`.
    pub fn new(checks: &[Check]) -> Self {
        DoctorJson {
            ok: !firehost::doctor::has_failures(checks),
            checks: checks.iter().map(CheckJson::from).collect(),
        }
    }
}

/// Something quickstart needs and did not find.
#[derive(Debug, Clone, Serialize)]
pub struct MissingJson {
    /// What is missing, and what was found instead.
    pub what: String,
    /// How to supply it.
    pub fix: String,
}

/// Quickstart's timings, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct TimingsJson {
    /// Create (spawn and configure the VMM).
    pub create_ms: f64,
    /// Start (`InstanceStart`).
    pub start_ms: f64,
    /// From start until the first console line, if one came within 10 s.
    pub first_output_ms: Option<f64>,
    /// Stop.
    pub stop_ms: f64,
    /// Destroy.
    pub destroy_ms: f64,
    /// The whole command.
    pub total_ms: f64,
}

/// `quickstart`.
#[derive(Debug, Clone, Serialize)]
pub struct QuickstartJson {
    /// Everything needed was there, and the VM ran.
    pub ready: bool,
    /// What is missing, when not ready.
    pub missing: Vec<MissingJson>,
    /// The doctor checks.
    pub checks: Vec<CheckJson>,
    /// The temporary state directory (removed at the end).
    pub state_dir: String,
    /// The VM's name, when one ran.
    pub vm: Option<String>,
    /// Timings, when a VM ran.
    pub timings_ms: Option<TimingsJson>,
    /// The console's last lines.
    pub console_tail: Vec<String>,
}

/// `image build`. See the [module docs](self).
#[derive(Debug, Clone, Serialize)]
pub struct ImageJson {
    /// The image file.
    pub out: String,
    /// Its size in MiB.
    pub size_mib: u64,
    /// Entries besides the root directory.
    pub files: u64,
    /// The agent's path in the image.
    pub agent: String,
    /// What the agent replaced, if anything.
    pub replaced: Option<String>,
    /// The ext4 read-only feature is set.
    pub read_only: bool,
    /// Files keep the source's owners.
    pub owners_kept: bool,
    /// How long the build took.
    pub elapsed_ms: f64,
}

impl From<&RootfsReport> for ImageJson {
    fn from(r: &RootfsReport) -> Self {
        ImageJson {
            out: path(&r.out),
            size_mib: r.size_mib,
            files: r.files,
            agent: r.agent.to_owned(),
            replaced: r.replaced.as_ref().map(ToString::to_string),
            read_only: r.read_only,
            owners_kept: r.owners_kept,
            elapsed_ms: ms(r.elapsed),
        }
    }
}

/// `image initramfs`.
#[derive(Debug, Clone, Serialize)]
pub struct InitramfsJson {
    /// The file written.
    pub out: String,
    /// Its cpio entries, the trailer not counted.
    pub entries: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

impl From<&InitramfsReport> for InitramfsJson {
    fn from(r: &InitramfsReport) -> Self {
        InitramfsJson {
            out: path(&r.out),
            entries: r.entries,
            bytes: r.bytes,
        }
    }
}

/// Milliseconds of `d`, to 0.01 ms.
pub fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

/// A warm pool ([`PoolJson`]): `{"name": string, "snapshot": string or
/// null, "size": integer, "parallel": integer, "members": [string…],
/// "making": integer, "failure": {"error": string, "attempts": integer,
/// "retry_in_ms": integer} or null}`. `snapshot` is the template (null for
/// a pool the library made from a VM spec); `members` the ready members,
/// oldest first; `failure` why the pool is short of its size, while making
/// members fails.
#[derive(Debug, Clone, Serialize)]
pub struct PoolJson {
    /// The pool's name.
    pub name: String,
    /// The snapshot members are restored from.
    pub snapshot: Option<String>,
    /// How many ready members it keeps.
    pub size: u32,
    /// How many members are made at once.
    pub parallel: u32,
    /// The ready members.
    pub members: Vec<String>,
    /// Members being made.
    pub making: u32,
    /// The last failure, while making members fails.
    pub failure: Option<PoolFailureJson>,
}

/// Why a pool is short of its size.
#[derive(Debug, Clone, Serialize)]
pub struct PoolFailureJson {
    /// The error.
    pub error: String,
    /// Failures in a row.
    pub attempts: u32,
    /// Milliseconds until the next attempt.
    pub retry_in_ms: u64,
}

impl From<&firehost::manager::PoolInfo> for PoolJson {
    fn from(pool: &firehost::manager::PoolInfo) -> Self {
        PoolJson {
            name: pool.name.to_string(),
            snapshot: match &pool.spec.template {
                firehost::manager::PoolTemplate::Snapshot(s) => Some(s.to_string()),
                _ => None,
            },
            size: pool.spec.size,
            parallel: pool.spec.parallel,
            members: strings(&pool.members),
            making: pool.making,
            failure: pool.failure.as_ref().map(|f| PoolFailureJson {
                error: f.error.clone(),
                attempts: f.attempts,
                retry_in_ms: u64::try_from(f.retry_in.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }
}

/// `pool ls`.
#[derive(Debug, Clone, Serialize)]
pub struct PoolListJson {
    /// The pools, by name.
    pub pools: Vec<PoolJson>,
}

/// `pool rm`.
#[derive(Debug, Clone, Serialize)]
pub struct PoolRemovedJson {
    /// The pool's name.
    pub name: String,
    /// Always true.
    pub removed: bool,
}
