//! Restore: a new VM from a snapshot bundle, as a transaction like create.
//!
//! The bundle is read and checked first (it must be complete, and written
//! by the same Firecracker version as the VMM that loads it: Firecracker
//! loads only its own version's snapshots). Then a fresh VMM is spawned in
//! the new VM's own directory and asked to `PUT /snapshot/load`. Any failure
//! undoes everything, as for create.
//!
//! A restored VM reads its read-only drives where the source VM had them,
//! and writes to its own copy of each writable drive (but those its spec
//! shares on purpose): in its jail, or in its directory's `drives/`. The
//! vmstate names the source's files and Firecracker reopens them while it
//! loads, so an unjailed clone is loaded paused and its drives are pointed
//! at the copies with `PATCH /drives` before its guest runs. A snapshot
//! taken with [`SnapshotOptions::disks`](super::SnapshotOptions::disks)
//! keeps the drives' content in its bundle, and clones copy that: the disk
//! that goes with the snapshot's memory. Without it the copies are the
//! source's disks as they are at the restore: a source VM that went on
//! writing after its snapshot gives clones a disk newer than their memory.
//!
//! # What a clone shares with its siblings, and what the guest must do
//!
//! Every clone resumes with the exact memory and device state of the
//! snapshot, so everything the guest keeps in memory is identical across
//! clones.
//!
//! **Its own:** the VMM process, API socket, page server and directory;
//! its key and name (see `names`; a warm pool's claim gives it the
//! caller's); a copy of each writable drive; with networking, a TAP, a
//! namespace and a host address and MAC (below); with vsock, the vsock
//! socket; with a metadata service, the `"firehost"` identity (name, host
//! address, the snapshot) and, if the restore or claim gives it, the data.
//!
//! **Shared with its siblings:** the guest's memory, so its kernel's and
//! processes' state, its own address and MAC, its agent's token (the
//! guest keeps the one it booted with, on its kernel command line too: a
//! guest that reads it could use it on a sibling's agent, if that agent
//! listens on the network; the VMs' 0700 directories keep the vsock
//! sockets to the manager's user), and, on kernels without `VMGenID`
//! support, its random pool. A warm pool's claim gives the guest a fresh
//! agent token and a reseeded CRNG through its agent (see `rekey`); for
//! the rest, and for plain restores, making these unique is the guest's,
//! after it resumes:
//!
//! - **Entropy.** The kernel's random pool and every user-space PRNG seeded
//!   before the snapshot are identical in all clones. Firecracker exposes a
//!   `VMGenID` device whose generation id changes on every restore; guest
//!   kernels from 5.18 on reseed their RNG when it changes. For the others,
//!   the agent reseeds the kernel's CRNG with the host's randomness
//!   ([`AgentClient::reseed`](crate::agent::AgentClient::reseed); a warm
//!   pool's claim does it by itself). User space must re-seed too (re-read
//!   `/dev/urandom`, restart daemons that cached keys), and long-lived
//!   secrets (SSH host keys, TLS keys) must not be in the snapshot at all.
//! - **Network identity.** The guest keeps the MAC and IP it had in the
//!   snapshot, and needs no reconfiguration: by default a restored VM on
//!   the default network gets a network namespace of its own whose
//!   inside translates the guest's address 1:1 to a host address this VM
//!   gets now (see `net::translate`), so any number of clones of one
//!   snapshot run beside each other and beside their source, each known to
//!   the host, its firewall and its peers by its own address
//!   ([`VmNet::ip`](crate::net::host::VmNet::ip); the guest's is in
//!   [`VmNet::guest`](crate::net::host::VmNet::guest) and in the metadata
//!   identity). Connections the guest had open at the snapshot are dead
//!   (their peers knew another VM); ARP and neighbour caches in the guest
//!   stay valid. [`RestoreOptions::keep_address`] puts the VM on the
//!   host's network under the snapshot's address instead, which only one
//!   VM can hold at a time.
//! - **Time.** The guest clock stops while the snapshot sits on disk;
//!   [`RestoreOptions::clock_realtime`] (the default on `x86_64`) moves
//!   kvmclock to the wall clock at the restore; else step the clock in the guest
//!   (NTP/chrony `makestep`), and expect timers to fire late.
//! - **Host-specific ids.** `/etc/machine-id`, hostnames, and anything
//!   derived from them should be regenerated.
//!
//! These steps are the guest's: the image's own scripts, or commands the
//! host runs through the agent ([`crate::agent`]) after the restore. The
//! agent does not run them by itself.

use std::path::PathBuf;
use std::sync::Arc;

use super::launch::{Launched, Reservation};
use super::memory_server::MemoryServer;
use super::{Shared, Vm, VmError, VmInfo};
use crate::VmId;
use crate::api::ApiError;
use crate::api::models::{
    MemoryBackend, MemoryBackendType, NetworkOverride, SnapshotLoadParams, VsockOverride,
};
use crate::manager::error::DriveProblem;
use crate::net::host::{GuestAddress, NetError, NetSpec, VmNet};
use crate::net::ipam::MacAddr;
use crate::record::VmVsock;
use crate::snapshot::{
    MEMORY_FILE, SnapshotKind, SnapshotName, StoreError, VMSTATE_FILE, VerifyOptions,
};
use crate::spec::ResolvedSpec;
use crate::state::VmState;
use crate::undo::{UndoStack, UndoStep};

/// How [`Manager::restore`](super::Manager::restore) brings a snapshot back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Resume the guest once loaded (default true); otherwise the VM is
    /// left paused.
    pub resume: bool,
    /// Ask Firecracker to move the guest's clock forward by the time that
    /// passed since the snapshot (`clock_realtime`), so a clone does not
    /// start out as old as its template. Default true on `x86_64`, the
    /// only architecture where Firecracker has it; false keeps the clock
    /// where the snapshot left it.
    pub clock_realtime: bool,
    /// Also check the memory file's checksum before loading. The vmstate,
    /// the sizes and the parent chain are always checked; hashing guest
    /// memory costs about a second per few GiB, so it is off by default.
    pub verify_memory: bool,
    /// Where guest memory comes from.
    pub memory: RestoreMemory,
    /// The metadata for this VM when the snapshot's VM had a metadata
    /// service (`None`: the snapshot VM's spec's data). Either way the
    /// `"firehost"` identity is this VM's (see [`crate::mmds`]).
    pub mmds: Option<serde_json::Value>,
    /// For a jailed snapshot: the uid the restored VM runs as. `None`
    /// takes one from the manager's uid range. The snapshot's own fixed
    /// uid (its source's [`JailSpec::uid`](crate::jail::JailSpec::uid)) is
    /// never reused: the source, or another restore, may hold it.
    pub uid: Option<u32>,
    /// For a jailed snapshot: the gid. `None`: the jail configuration's
    /// gid, else the uid.
    pub gid: Option<u32>,
    /// For a snapshot of a VM on the default network: put the restored VM
    /// on the host's network under the snapshot's own address and MAC,
    /// as its source was, instead of in a namespace of its own that
    /// translates them to a new host address (the default). Only one VM
    /// can hold them at a time, so this fails while the source VM, or
    /// another VM restored this way, is on the network; use it to bring
    /// one VM back where others expect to find it.
    pub keep_address: bool,
    /// Changes to the snapshot's devices: its drives' and NICs' limits and
    /// its balloon live in the vmstate, so a restore has them unless told
    /// otherwise here. They are made while the guest is still paused, and
    /// are the restored VM's spec from then on. Checked before anything
    /// starts ([`VmError::InvalidUpdate`]).
    pub devices: super::update::VmUpdate,
    /// The restored VM's egress policy, instead of the snapshot's (a VM
    /// keeps the policy it was made under unless told otherwise). For a
    /// snapshot with no default network it changes nothing.
    pub egress: Option<crate::vocab::EgressPolicy>,
}

/// Where a restored guest's memory comes from.
///
/// With a page server in the manager's process (the default) the VM
/// depends on that process until the server detaches (`Populate` does once
/// every page is in; the others never do): if the manager goes away first,
/// the server fences the VM's memory, so the guest faults on its next
/// missing page (or, on kernels that cannot fence, the VMM is killed), and
/// a manager that re-opens the state directory kills such VMs. Set
/// [`ManagerConfig::page_server_program`](super::ManagerConfig::page_server_program)
/// to run each server in a helper process that lives as long as its VM
/// instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RestoreMemory {
    /// Firecracker maps the bundle's memory file privately and faults pages
    /// in from it itself.
    #[default]
    File,
    /// A userfaultfd page server serves each page when first touched, and
    /// records the order; when the VM stops, that order is stored in the
    /// bundle (if it has none yet) for `Prefetch`.
    OnDemand,
    /// A page server serves faults and copies every other page in the
    /// background, then detaches: the VM no longer needs the manager.
    Populate,
    /// A page server first copies the bundle's recorded working set, then
    /// serves on demand (and records, as `OnDemand`, if the bundle has no
    /// working set yet).
    Prefetch,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            resume: true,
            clock_realtime: cfg!(target_arch = "x86_64"),
            verify_memory: false,
            memory: RestoreMemory::File,
            mmds: None,
            uid: None,
            gid: None,
            keep_address: false,
            devices: super::update::VmUpdate::default(),
            egress: None,
        }
    }
}

/// The restored VM's spec: the snapshot's, with the jail ids this restore
/// asks for (a snapshot of an unjailed VM takes none).
pub(crate) fn restored_spec(
    snapshot: &ResolvedSpec,
    options: &RestoreOptions,
    jailed: bool,
) -> Result<ResolvedSpec, crate::jail::JailError> {
    let mut spec = snapshot.clone();
    if let (Some(policy), Some(net)) = (&options.egress, &mut spec.net) {
        net.egress = policy.clone();
    }
    if !jailed {
        if options.uid.is_some() || options.gid.is_some() {
            return Err(crate::jail::JailError::InvalidSpec {
                field: "uid",
                why: "a uid or gid is only for restoring a jailed snapshot".into(),
            });
        }
        return Ok(spec);
    }
    let mut jail = spec.jail.take().unwrap_or_default();
    jail.uid = options.uid;
    jail.gid = options.gid;
    jail.validate()?;
    spec.jail = Some(jail);
    Ok(spec)
}

pub(super) async fn restore(
    shared: Arc<Shared>,
    id: VmId,
    snapshot: SnapshotName,
    options: RestoreOptions,
    pool: Option<crate::id::PoolName>,
) -> Result<VmInfo, VmError> {
    let name = id;
    shared.check_free(&name).await?;
    let reservation = Reservation::take(&shared, &name)?;
    // Everything on the host goes by the key (see `names`).
    let key = reservation.key.clone();
    if let Err(e) =
        super::ops::begin_intent(&shared.intents_dir, &key, super::intent::Intent::Restore)
    {
        shared.lock_registry().remove(&name);
        return Err(e);
    }
    let mut undo = UndoStack::default();
    let result = build(&shared, &snapshot, &key, &name, &options, pool, &mut undo).await;
    let settled = reservation.settle(&shared, &name, result, undo).await;
    super::intent::end(&shared.intents_dir, &key);
    settled
}

async fn build(
    shared: &Arc<Shared>,
    snapshot: &SnapshotName,
    id: &VmId,
    name: &VmId,
    options: &RestoreOptions,
    pool: Option<crate::id::PoolName>,
    undo: &mut UndoStack,
) -> Result<Vm, VmError> {
    // Lease first, verify second: once leased, the bundle can't be deleted
    // between the check and the load.
    let store = shared.store();
    let bundle_err = |source: StoreError| VmError::SnapshotBundle {
        name: snapshot.to_string(),
        source: Box::new(source),
    };
    let verified = {
        let (store, name, vm) = (store.clone(), snapshot.clone(), id.clone());
        let check = VerifyOptions {
            skip_memory_checksum: !options.verify_memory,
            firecracker_version: None,
        };
        tokio::task::spawn_blocking(move || {
            store.lease(&name, &vm).map_err(|e| (false, e))?;
            store.verify(&name, &check).map_err(|e| (true, e))
        })
        .await
        .expect("bundle checks do not panic")
    };
    let chain = match verified {
        Ok(chain) => {
            undo.push(UndoStep::ReleaseLease {
                store,
                name: snapshot.clone(),
                vm: id.clone(),
            });
            chain
        }
        Err((leased, e)) => {
            if leased {
                undo.push(UndoStep::ReleaseLease {
                    store,
                    name: snapshot.clone(),
                    vm: id.clone(),
                });
            }
            return Err(bundle_err(e));
        }
    };
    let manifest = chain
        .first()
        .map(|top| top.manifest.clone())
        .expect("a verified chain holds the bundle itself");
    if manifest.kind != SnapshotKind::Full {
        return Err(VmError::SnapshotIsDiff {
            name: snapshot.to_string(),
        });
    }
    if let Some(recorded) = &manifest.host_cpu {
        let missing = recorded.missing_on(&crate::cpu::HostCpu::detect());
        if !missing.is_empty() {
            return Err(VmError::CpuMismatch {
                name: snapshot.to_string(),
                missing,
            });
        }
    }
    let jail_err = |source| VmError::Jail {
        id: id.clone(),
        source: Box::new(source),
    };
    let jailed = check_jail_layout(shared, snapshot, &manifest).map_err(jail_err)?;
    let spec = restored_spec(&manifest.spec, options, jailed).map_err(jail_err)?;
    let devices =
        super::update::plan(&spec, &options.devices).map_err(|source| VmError::InvalidUpdate {
            id: name.clone(),
            source,
        })?;
    let spec = devices.spec;
    let bundle = shared.snapshots_dir.join(snapshot.as_str());
    check_drives(snapshot, &manifest, &bundle, jailed).await?;
    // Where the writable drives are copied from: the bundle's kept disks,
    // else the source's files.
    let copy_from = from_kept_disks(&manifest.spec, &bundle, &manifest.disks);
    shared.prepare_for(&spec).await;
    let net = attach_network(shared, id, &manifest, &spec, options, undo).await?;
    let overrides: Vec<NetworkOverride> = net
        .iter()
        .map(|net| NetworkOverride {
            iface_id: net.iface_id.clone(),
            host_dev_name: net.tap.to_string(),
        })
        .collect();
    // A jailed VM's drives are staged into its jail from the kept disks
    // when the bundle has them; its record names the originals all the
    // same, as any jailed VM's does.
    let from_kept = jailed && !manifest.disks.is_empty();
    let (spawn_spec, drives_from) = if from_kept {
        (copy_from.clone(), None)
    } else {
        (spec.clone(), manifest.source_chroot.as_deref())
    };
    let mut launched =
        Launched::spawn(shared, id, name, spawn_spec, net, drives_from, undo).await?;
    launched.vm.record.pool = pool;
    if from_kept {
        launched.vm.record.spec = spec;
    }
    // A socket of its own in the new VM's directory or jail (which exists
    // by now: Firecracker binds the socket while it loads); the guest
    // keeps the agent token it booted with.
    let vsock_path = super::jailed::socket_path(
        launched.vm.record.jail.as_ref(),
        &launched.vm.dir,
        crate::vsock::SOCKET_FILE,
    );
    launched.vm.record.vsock = manifest.vsock.as_ref().and_then(|layout| {
        Some(VmVsock {
            uds_path: vsock_path.clone(),
            guest_cid: layout.guest_cid,
            token: layout.agent_token.clone()?,
            next_token: None,
        })
    });
    let vsock_override = manifest.vsock.as_ref().map(|_| VsockOverride {
        uds_path: launched.vm.record.vmm_path(&vsock_path),
    });
    // A jailed Firecracker reads the bundle's files from inside its jail.
    let staged = match &launched.vm.record.jail {
        Some(jail) => Some(
            super::jailed::stage_restore(jail, &bundle, options.memory == RestoreMemory::File)
                .await
                .map_err(|source| VmError::Jail {
                    id: id.clone(),
                    source: Box::new(source),
                })?,
        ),
        None => None,
    };
    // Two guests writing one file corrupt it. A jailed clone has its own
    // copies in its jail; an unjailed one gets them in its directory, and
    // its spec names them. Firecracker reopens the snapshot's drive files
    // while it loads, so the guest stays paused until its drives point at
    // the copies.
    let own_drives = match &launched.vm.record.jail {
        Some(_) => Vec::new(),
        None => copy_writable_drives(id, &copy_from, &launched.vm.dir).await?,
    };
    for own in &own_drives {
        use_copy(&mut launched.vm.record.spec, &own.drive, &own.path);
    }
    launched.vm.record.own_drives = own_drives.clone();
    if launched.vm.record.jail.is_none() {
        shared.hold_writes(id, &launched.vm.record.spec).await?;
    }
    launched.vm.record.restored_from = Some(snapshot.clone());
    launched.vm.record.last_snapshot = Some(snapshot.clone());
    let outcome = async {
        let api = launched.connect(shared).await?;
        let api_err = |op| {
            let id = id.clone();
            move |source| VmError::Api { id, op, source }
        };
        let version = api
            .get_firecracker_version()
            .await
            .map_err(api_err("read the Firecracker version"))?;
        if version.firecracker_version != manifest.firecracker_version {
            return Err(VmError::SnapshotVersion {
                name: snapshot.to_string(),
                snapshot_version: manifest.firecracker_version.clone(),
                vmm_version: version.firecracker_version,
            });
        }
        let memory = match options.memory {
            RestoreMemory::File => MemoryBackend::new(
                MemoryBackendType::File,
                staged
                    .as_ref()
                    .and_then(|(_, memory)| memory.clone())
                    .unwrap_or_else(|| bundle.join(MEMORY_FILE)),
            ),
            mode => {
                let server = start_page_server(shared, &launched.vm, &bundle, mode).await?;
                let socket = launched.vm.record.vmm_path(&server.socket());
                launched.vm.record.page_server_attached = true;
                launched.vm.record.page_server_helper = server.helper_process();
                launched.vm.page_server = Some(server);
                MemoryBackend::new(MemoryBackendType::Uffd, socket)
            }
        };
        let vmstate = staged
            .as_ref()
            .map(|(vmstate, _)| vmstate.clone())
            .unwrap_or_else(|| bundle.join(VMSTATE_FILE));
        let mut load = SnapshotLoadParams::new(vmstate, memory);
        // Firecracker restores the metadata service's configuration but not
        // its data store: with metadata, the guest stays paused until the
        // data (with this VM's identity) is back.
        let mmds = manifest.spec.mmds.as_ref();
        // A balloon may come back inflated by a snapshot's reclaim: it is
        // let out before the guest runs.
        let balloon = manifest.spec.balloon.is_some() && options.devices.balloon_mib.is_none();
        let held = mmds.is_some() || !own_drives.is_empty() || !devices.steps.is_empty() || balloon;
        load.resume_vm = Some(options.resume && !held);
        load.clock_realtime = options.clock_realtime.then_some(true);
        load.network_overrides = (!overrides.is_empty()).then_some(overrides);
        load.vsock_override = vsock_override;
        if let Err(source) = api.load_snapshot(&load).await {
            return Err(gave_up_or(&launched.vm, "load the snapshot", source).await);
        }
        if let Some(server) = &mut launched.vm.page_server {
            // Firecracker has connected by the time the load answers; a
            // server that failed the hand-over fails the restore.
            server
                .wait_connected(shared.config.timeouts.request)
                .await
                .map_err(|source| VmError::PageServer {
                    id: id.clone(),
                    source: Box::new(source),
                })?;
        }
        for own in &own_drives {
            let swap = crate::api::models::PartialDrive {
                drive_id: own.drive.clone(),
                path_on_host: Some(own.path.clone()),
                rate_limiter: None,
            };
            api.patch_guest_drive_by_id(&swap)
                .await
                .map_err(api_err("point a drive at the VM's own copy"))?;
        }
        if let Some(target) = launched.vm.record.spec.balloon.filter(|_| balloon) {
            let loaded = api
                .describe_balloon_config()
                .await
                .map_err(api_err("read the balloon"))?;
            if loaded.amount_mib != target.amount_mib {
                let update = crate::api::models::BalloonUpdate {
                    amount_mib: target.amount_mib,
                };
                api.patch_balloon(&update)
                    .await
                    .map_err(api_err("let the balloon out to its target"))?;
            }
        }
        if let Err((op, source)) = super::update::apply(&api, &devices.steps).await {
            return Err(VmError::Api {
                id: id.clone(),
                op,
                source,
            });
        }
        if let Some(mmds) = mmds {
            let record = &launched.vm.record;
            let identity = crate::mmds::identity(&record.name, record.net.as_ref(), Some(snapshot));
            let data = options.mmds.as_ref().unwrap_or(&mmds.data);
            api.put_mmds(&crate::mmds::contents(data, identity))
                .await
                .map_err(api_err("write the metadata"))?;
        }
        if options.resume && held {
            api.patch_vm(&crate::api::models::Vm {
                state: crate::api::models::VmState::Resumed,
            })
            .await
            .map_err(api_err("resume the guest"))?;
        }
        launched.vm.record.state = if options.resume {
            VmState::Running
        } else {
            VmState::Paused
        };
        Ok(api)
    }
    .await;
    if outcome.is_err()
        && let Some(server) = launched.vm.page_server.take()
    {
        server.abort().await;
    }
    launched.commit(outcome).await
}

/// The directory, in a VM's own, of its copies of writable drives.
const DRIVES_DIR: &str = "drives";

/// Makes `vm`'s own copy of each writable drive of `spec` (but those it
/// shares on purpose) in `vm_dir/drives/` (see [`super::copies`]). The
/// copies go with the VM's directory.
async fn copy_writable_drives(
    vm: &VmId,
    spec: &ResolvedSpec,
    vm_dir: &std::path::Path,
) -> Result<Vec<crate::record::OwnDrive>, VmError> {
    let owner = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let files = super::copies::exclusive_drives(spec);
    super::copies::copy_drives(vm, files, &vm_dir.join(DRIVES_DIR), owner).await
}

/// Where `bundle` keeps the content of drive `drive`.
fn kept_disk(bundle: &std::path::Path, drive: &str) -> PathBuf {
    bundle.join(crate::snapshot::DISKS_DIR).join(drive)
}

/// `spec` with each drive the bundle kept naming the bundle's copy: where
/// a restore copies it from.
fn from_kept_disks(spec: &ResolvedSpec, bundle: &std::path::Path, kept: &[String]) -> ResolvedSpec {
    let mut spec = spec.clone();
    for drive in kept {
        use_copy(&mut spec, drive, &kept_disk(bundle, drive));
    }
    spec
}

/// Where a restored VM in `vm_dir` keeps its own copy of drive `drive`.
fn own_copy(vm_dir: &std::path::Path, drive: &str) -> PathBuf {
    vm_dir.join(DRIVES_DIR).join(drive)
}

/// Makes `spec` name, for each drive its VM writes to alone, the VM's own
/// copy in `vm_dir` (the in-memory provider names them without making
/// them, as the manager's restore makes them).
pub(crate) fn name_own_copies(spec: &mut ResolvedSpec, vm_dir: &std::path::Path) {
    let exclusive: Vec<String> = super::copies::exclusive_drives(spec)
        .into_iter()
        .map(|(drive, _)| drive)
        .collect();
    for drive in exclusive {
        use_copy(spec, &drive, &own_copy(vm_dir, &drive));
    }
}

/// Makes `spec`'s drive `drive` name `copy`.
fn use_copy(spec: &mut ResolvedSpec, drive: &str, copy: &std::path::Path) {
    if drive == crate::spec::ROOTFS_DRIVE_ID {
        spec.rootfs = Some(copy.to_owned());
    } else if let Some(extra) = spec.extra_drives.iter_mut().find(|d| d.id == drive) {
        extra.path = copy.to_owned();
    }
}

/// Checks, before anything is spawned, that every drive the snapshot's
/// vmstate names is there with the size it had (the kernel and initrd are
/// not needed: the guest is in memory). For a jailed snapshot the file is
/// the one the restore will copy: the bundle's kept disk, else the
/// source's copy while its jail is there, else the original. An unjailed
/// Firecracker reopens the originals while it loads, so they must be there
/// too, kept disks or not.
async fn check_drives(
    snapshot: &SnapshotName,
    manifest: &crate::snapshot::SnapshotManifest,
    bundle: &std::path::Path,
    jailed: bool,
) -> Result<(), VmError> {
    let source_chroot = manifest
        .source_chroot
        .as_ref()
        .filter(|_| jailed)
        .map(|c| crate::jail::Chroot::new(c.clone()));
    let needed: Vec<(String, PathBuf, Option<u64>)> =
        super::jailed::drive_files(&manifest.spec, None)
            .into_iter()
            .map(|(id, original, read_only)| {
                let copy = source_chroot
                    .as_ref()
                    .map(|chroot| chroot.host_path(&super::jailed::drive_place(&id)));
                let path = match copy {
                    Some(copy) if !read_only && copy.is_file() => copy,
                    _ => original,
                };
                let recorded = manifest
                    .drives
                    .iter()
                    .find(|d| d.id == id)
                    .map(|d| d.size_bytes);
                (id, path, recorded)
            })
            .collect();
    let needed: Vec<(String, PathBuf, Option<u64>)> = needed
        .into_iter()
        .flat_map(|(id, path, recorded)| {
            let kept = manifest
                .disks
                .contains(&id)
                .then(|| (id.clone(), kept_disk(bundle, &id), recorded));
            let original = (!jailed || kept.is_none()).then_some((id, path, recorded));
            kept.into_iter().chain(original)
        })
        .collect();
    let name = snapshot.to_string();
    tokio::task::spawn_blocking(move || {
        for (drive, path, recorded) in needed {
            let problem = match std::fs::metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(DriveProblem::Missing),
                Err(e) => Some(DriveProblem::Unusable(e.to_string())),
                Ok(meta) if !meta.is_file() => {
                    Some(DriveProblem::Unusable("it is not a regular file".into()))
                }
                Ok(meta) => match recorded {
                    Some(recorded) if recorded != meta.len() => Some(DriveProblem::Resized {
                        recorded,
                        now: meta.len(),
                    }),
                    _ => None,
                },
            };
            if let Some(problem) = problem {
                return Err(VmError::SnapshotDrive {
                    name,
                    drive,
                    path,
                    problem,
                });
            }
        }
        Ok(())
    })
    .await
    .expect("stat does not panic")
}

/// The error for a request the VMM did not answer: if it closed the
/// connection (it exits after refusing some requests, a snapshot load
/// among them, sometimes before its answer is out), what it logged last;
/// else the API error as it is.
async fn gave_up_or(vm: &Vm, op: &'static str, source: ApiError) -> VmError {
    let id = vm.record.id.clone();
    if !matches!(source, ApiError::Closed { .. }) {
        return VmError::Api { id, op, source };
    }
    match last_words(vm).await {
        Some(reason) => VmError::VmmGaveUp {
            id,
            op,
            reason,
            source: Box::new(source),
        },
        None => VmError::Api { id, op, source },
    }
}

/// Why a VMM gave up, from its log file and its console/stderr: the fault
/// message of the last error it answered with, else its last `Error:`
/// line.
async fn last_words(vm: &Vm) -> Option<String> {
    const LINES: usize = 50;
    // The log keeper's copy in the VM's directory (Firecracker writes a
    // FIFO). Only a regular file: opening a FIFO whose writer is gone would
    // block.
    let log = vm.dir.join(super::launch::VMM_LOG_FILE);
    // The VMM is exiting: give the keeper (a writer of the ring until it
    // ends) a moment to copy its last lines.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), vm.ring.drained()).await;
    let mut lines = tokio::task::spawn_blocking(move || {
        std::fs::symlink_metadata(&log)
            .is_ok_and(|m| m.is_file())
            .then(|| crate::console::tail_of_file(&log, LINES).ok())
            .flatten()
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default();
    lines.extend(vm.console_tail(LINES).await);
    fault_message(&lines)
}

/// The reason in Firecracker's log lines, newest first: the message of a
/// refused request (`Received Error. Status code: … Message: M`), else an
/// `Error: E` line.
fn fault_message(lines: &[String]) -> Option<String> {
    const REFUSED: &str = "Received Error.";
    const MESSAGE: &str = "Message: ";
    let refused = lines.iter().rev().find_map(|line| {
        let at = line.find(REFUSED)?;
        let rest = &line[at..];
        rest.find(MESSAGE)
            .map(|m| rest[m + MESSAGE.len()..].trim().to_owned())
    });
    refused.or_else(|| {
        lines.iter().rev().find_map(|line| {
            line.trim()
                .strip_prefix("Error: ")
                .map(|e| e.trim().to_owned())
        })
    })
}

/// A snapshot's vmstate names its drives by the paths its Firecracker saw:
/// places in a jail for a jailed source, host paths otherwise. So a jailed
/// snapshot restores only into a jail, and an unjailed one only outside.
/// Returns whether the restore is jailed.
fn check_jail_layout(
    shared: &Shared,
    snapshot: &SnapshotName,
    manifest: &crate::snapshot::SnapshotManifest,
) -> Result<bool, crate::jail::JailError> {
    let jailed = super::jailed::jail_spec_of(&manifest.spec, shared.config.jail.as_ref()).is_some();
    let taken_jailed = manifest.source_chroot.is_some();
    if jailed == taken_jailed {
        return Ok(jailed);
    }
    let place = |j: bool| if j { "in a jail" } else { "outside a jail" };
    Err(crate::jail::JailError::SnapshotLayout {
        name: snapshot.to_string(),
        taken: place(taken_jailed),
        restored: place(jailed),
    })
}

/// Puts the restored VM on the default network when the snapshot's VM was,
/// on a new TAP (passed to Firecracker as a `network_overrides` entry).
///
/// By default the guest keeps the snapshot's address and MAC in a
/// namespace of its own that translates them to a host address this VM
/// gets now, so any number of VMs restored from one snapshot, and the
/// source VM, run side by side. With [`RestoreOptions::keep_address`] the
/// VM holds the snapshot's address and MAC on the host's network itself;
/// those must be free, or the restore fails with [`IpamError::IpTaken`].
///
/// [`IpamError::IpTaken`]: crate::net::ipam::IpamError::IpTaken
async fn attach_network(
    shared: &Shared,
    id: &VmId,
    manifest: &crate::snapshot::SnapshotManifest,
    spec: &ResolvedSpec,
    options: &RestoreOptions,
    undo: &mut UndoStack,
) -> Result<Option<VmNet>, VmError> {
    let network = |source| VmError::Network {
        id: id.clone(),
        source: Box::new(source),
    };
    let Some(wanted) = restored_net(manifest, options).map_err(network)? else {
        return Ok(None);
    };
    let owner = super::jailed::tap_owner(shared, id, spec, undo)?;
    let attached = match wanted.guest {
        Some(guest) => {
            shared
                .net
                .attach_translated(id, &wanted.spec, guest, owner)
                .await
        }
        None => shared.net.attach_owned(id, &wanted.spec, owner).await,
    };
    let net = attached.map_err(network)?;
    undo.push(UndoStep::DetachNetwork {
        net: shared.net.clone(),
        vm: id.clone(),
    });
    Ok(Some(net))
}

/// What a VM restored from a snapshot asks of the default network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RestoredNet {
    /// The host side: the address and MAC asked for (the snapshot's when
    /// they are kept, else none), the peer groups, the namespace.
    pub spec: NetSpec,
    /// The guest's own address and MAC, to translate to a host address;
    /// `None` when the VM keeps them on the host's network.
    pub guest: Option<GuestAddress>,
}

/// What a VM restored from `manifest` asks of the default network (see
/// [`attach_network`]); `None` if the source VM had no default-network
/// NIC.
pub(crate) fn restored_net(
    manifest: &crate::snapshot::SnapshotManifest,
    options: &RestoreOptions,
) -> Result<Option<RestoredNet>, NetError> {
    let keep_address = options.keep_address;
    let Some(layout) = manifest.network.iter().find(|n| n.guest_ip.is_some()) else {
        return Ok(None);
    };
    let Some(ip) = layout.guest_ip else {
        return Ok(None);
    };
    let mac = layout
        .guest_mac
        .as_deref()
        .map(str::parse::<MacAddr>)
        .transpose()
        .map_err(|e| NetError::Ipam(e.into()))?;
    let mut spec = NetSpec {
        ip: None,
        mac: None,
        // Published ports belong to the source VM; a restored VM publishes
        // its own.
        publish: Vec::new(),
        peer_groups: manifest
            .spec
            .net
            .as_ref()
            .map(|n| n.peer_groups.clone())
            .unwrap_or_default(),
        kernel_ip_arg: false,
        netns: true,
        // The limits live in the vmstate: the restored NIC has the
        // source's until a restore option changes them.
        rx_limit: manifest
            .spec
            .net
            .as_ref()
            .map(|n| n.rx_limit)
            .unwrap_or_default(),
        tx_limit: manifest
            .spec
            .net
            .as_ref()
            .map(|n| n.tx_limit)
            .unwrap_or_default(),
        // The guest was made under this policy and keeps it, unless the
        // restore replaces it.
        egress: match &options.egress {
            Some(policy) => policy.clone(),
            None => manifest
                .spec
                .net
                .as_ref()
                .map(|n| n.egress.clone())
                .unwrap_or_default(),
        },
    };
    if keep_address {
        spec.ip = Some(ip);
        spec.mac = mac;
        // The guest does not notice where its TAP lives: the VM gets a
        // namespace when the snapshot's VM had one.
        spec.netns = manifest.spec.net.as_ref().is_some_and(|n| n.netns);
        return Ok(Some(RestoredNet { spec, guest: None }));
    }
    let Some(mac) = mac else {
        return Err(NetError::GuestAddress {
            ip,
            problem: "the snapshot does not say the guest's MAC",
        });
    };
    Ok(Some(RestoredNet {
        spec,
        guest: Some(GuestAddress { ip, mac }),
    }))
}

/// Starts the page server for a restore, with its socket in the VM's
/// directory: in this process, or in a helper when the configuration names
/// one.
async fn start_page_server(
    shared: &Shared,
    vm: &Vm,
    bundle: &std::path::Path,
    mode: RestoreMemory,
) -> Result<MemoryServer, VmError> {
    let id = vm.record.id.clone();
    let socket = MemoryServer::socket_of(&vm.record, &vm.dir);
    crate::socket_path::check(&socket, 0).map_err(|e| VmError::socket_path_too_long(&id, e))?;
    let vmm = vm
        .process
        .as_ref()
        .expect("a restore starts its page server after spawning the VMM");
    MemoryServer::start(
        shared.config.page_server_program.as_ref(),
        &vm.dir,
        socket,
        bundle,
        mode,
        vmm,
        shared.config.timeouts.request,
        vm.record.jail.as_ref().map(|j| (j.uid, j.gid)),
    )
    .await
    .map_err(|source| VmError::PageServer {
        id,
        source: Box::new(source),
    })
}

/// Ends a VM's page server once its VMM is gone (or the server detached).
/// An in-process server's recorded working set goes into the bundle the VM
/// was restored from, if that has none yet; a helper stores its own.
pub(super) async fn retire_page_server(vm: &mut Vm, snapshots_dir: &std::path::Path) {
    let Some(server) = vm.page_server.take() else {
        return;
    };
    vm.record.page_server_attached = false;
    vm.record.page_server_helper = None;
    let bundle = vm
        .record
        .restored_from
        .as_ref()
        .map(|name| snapshots_dir.join(name.as_str()));
    server.retire(&vm.record.id, bundle.as_deref()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jail::{JailError, JailSpec};

    fn jailed_with_uid(uid: Option<u32>) -> ResolvedSpec {
        ResolvedSpec {
            jail: Some(JailSpec {
                uid,
                gid: uid,
                memory_max_mib: Some(256),
                ..JailSpec::default()
            }),
            ..ResolvedSpec::for_tests()
        }
    }

    #[test]
    fn a_restore_never_takes_the_snapshots_fixed_uid() {
        let snapshot = jailed_with_uid(Some(40_000));
        let pooled = restored_spec(&snapshot, &RestoreOptions::default(), true).unwrap();
        let jail = pooled.jail.unwrap();
        assert_eq!((jail.uid, jail.gid), (None, None), "from the pool");
        assert_eq!(jail.memory_max_mib, Some(256), "the limits are kept");

        let given = RestoreOptions {
            uid: Some(40_001),
            gid: Some(40_002),
            ..RestoreOptions::default()
        };
        let jail = restored_spec(&snapshot, &given, true)
            .unwrap()
            .jail
            .unwrap();
        assert_eq!((jail.uid, jail.gid), (Some(40_001), Some(40_002)));
    }

    #[test]
    fn ids_for_an_unjailed_restore_or_root_are_refused() {
        let root = RestoreOptions {
            uid: Some(0),
            ..RestoreOptions::default()
        };
        let err = restored_spec(&jailed_with_uid(None), &root, true).unwrap_err();
        assert!(matches!(err, JailError::InvalidSpec { .. }), "{err}");
        let given = RestoreOptions {
            uid: Some(40_001),
            ..RestoreOptions::default()
        };
        let err = restored_spec(&ResolvedSpec::for_tests(), &given, false).unwrap_err();
        assert!(matches!(err, JailError::InvalidSpec { .. }), "{err}");
    }
}

#[cfg(test)]
mod fault_tests {
    use super::fault_message;

    #[test]
    fn the_fault_message_of_a_refused_load_is_found_in_firecrackers_log() {
        let lines: Vec<String> = [
            "2026-12-04T17:11:10.364 [anonymous-instance:main] KVM_KVMCLOCK_CTRL call failed",
            "2026-12-04T17:11:10.380 [anonymous-instance:fc_api] Received Error. Status code: 400 Bad Request. Message: Load snapshot error: No such file or directory (os error 2) /tmp/r.ext4",
            "2026-12-04T17:11:10.380 [anonymous-instance:main] RunWithApiError error: Failed to build MicroVM: Loading snapshot failed..",
            "Error: RunWithApi(BuildMicroVmError(Restore))",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            fault_message(&lines).as_deref(),
            Some("Load snapshot error: No such file or directory (os error 2) /tmp/r.ext4")
        );
        assert_eq!(
            fault_message(&lines[3..]).as_deref(),
            Some("RunWithApi(BuildMicroVmError(Restore))")
        );
        assert_eq!(fault_message(&[]), None);
    }
}
