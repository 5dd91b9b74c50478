//! The [`Manager`]: the registry of a host's VMs.
//!
//! It owns a state directory, creates VMs as transactions, runs lifecycle
//! operations with one lock per VM (operations on different VMs never wait
//! for each other), keeps a durable record per VM, and on opening
//! re-attaches to VMs that outlived a previous manager and reaps what dead
//! ones left behind.
//!
//! ```text
//! <state>/
//!     lock                 flock'd by the one manager using this directory
//!     vms/<key>/           0700, one per VM, by its key (see `names`)
//!         record.json      the durable record
//!         api.sock         Firecracker's API socket
//!         console.log      with ConsoleTarget::File or RingAndFile
//!         firecracker.log  with ManagerConfig::vmm_log
//!         metrics.json     with ManagerConfig::vmm_metrics
//!         uffd.sock        a restore's page server, until Firecracker connects
//!         drives/          a clone's own copies of its writable drives
//!     names/<name>         -> ../vms/<key>, for a VM whose name is not its key
//!     pools/<name>.json    a warm pool's spec (see `pool`)
//!     snapshots/<name>/    snapshot bundles (see [`crate::snapshot`])
//!     intents/<key>        an operation under way on a VM (see [`intent`])
//!     settings.json        the host settings the VMs run with (see [`settings`])
//!     network.json         what the default network set up on the host
//!     netns/<key>          a VM's pinned network namespace
//! ```
//!
//! A VM is known to callers by its name and to the host by its key, the
//! name it was created under: [`Manager::rename`] changes only the name
//! (see `names` and `rename`). Warm pools ([`Manager::pool_create`]) keep
//! VMs made from a template ready to be claimed under a caller's name
//! (see `pool`); a claim gives the guest its own CRNG seed and agent token
//! (see `rekey`).
//!
//! Dropping a `Manager` leaves its VMs running: they can be picked up by
//! the next manager on the same directory. The exception is a VM whose
//! memory is still served by this manager's page server (restored with
//! [`RestoreMemory::OnDemand`] or `Prefetch`, or `Populate` before it
//! detached): it cannot run without it, and the next manager kills it.

mod config;
mod copies;
mod create;
mod devices;
mod error;
#[cfg(feature = "test-internals")]
pub mod fault;
#[cfg(not(feature = "test-internals"))]
mod fault;
mod intent;
mod jailed;
mod launch;
mod lock;
mod memory_server;
mod metrics;
mod names;
mod ops;
mod pool;
mod quarantine;
mod reclaim;
mod recovery;
mod rekey;
mod rename;
mod restore;
pub mod settings;
mod snapshots;
mod swap;
mod update;
mod verify;
pub(crate) mod writers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};

use serde::Serialize;
use tokio::sync::Mutex;

pub use crate::id::{MAX_POOL_NAME_LEN, PoolName};
pub use config::{
    ConsoleTarget, DEFAULT_STATE_DIR, ManagerConfig, Recovery, SettingsPolicy, Timeouts,
    find_binary,
};
pub use error::{DriveProblem, MAX_SOCKET_PATH_BYTES, ManagerError, UnreadableReason, VmError};
pub use metrics::{MetricsSubscription, VmMetrics};
pub use ops::{SnapshotOptions, StopOptions, StopOutcome};
pub use pool::{
    ClaimOptions, MAX_POOL_SIZE, PoolFailure, PoolInfo, PoolSpec, PoolTemplate, RESEED_WAIT,
};
pub use quarantine::UnreadableVm;
pub use reclaim::{BalloonReclaim, RECLAIM_HEADROOM_MIB};
pub use restore::{RestoreMemory, RestoreOptions};
pub(crate) use restore::{name_own_copies, restored_net, restored_spec};
pub use snapshots::Snapshots;
pub use update::{DriveLimitUpdate, NicLimitUpdate, UpdateError, VmUpdate};

use crate::VmId;
use crate::agent::AgentClient;
use crate::api::ApiClient;
use crate::console::ConsoleRing;
use crate::net::firewall::PortMapping;
use crate::net::host::{HostNetwork, NetError, VmNet};
use crate::record::{Durability, VmRecord};
use crate::snapshot::{SnapshotInfo, SnapshotName, SnapshotStore};
use crate::spec::{ResolvedSpec, VmSpec};
use crate::state::VmState;
use crate::vmm::{ConsoleMode, VmmProcess};
use lock::StateLock;

/// What a caller sees of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmInfo {
    /// Its id.
    pub id: VmId,
    /// Its state.
    #[serde(flatten)]
    pub state: VmState,
    /// The VMM's pid while one runs.
    pub pid: Option<i32>,
    /// Firecracker's API socket.
    pub api_socket: PathBuf,
    /// The VM's directory under the state directory.
    pub dir: PathBuf,
    /// The console file, when consoles go to files.
    pub console_file: Option<PathBuf>,
    /// The resolved spec.
    pub spec: ResolvedSpec,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The VM's place on the default network, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net: Option<crate::net::host::VmNet>,
    /// The VM's vsock device, if it has one (the agent's token is not
    /// part of the info).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockInfo>,
    /// The VM's jail: chroot, uid and gid, cgroups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jail: Option<crate::jail::VmJail>,
    /// The VMM is alive (its pid, start time and pidfd say so) but did not
    /// answer the manager's last request in time: it may be writing a
    /// snapshot. `state` is the recorded one until it answers; operations
    /// fail with [`VmError::Busy`] meanwhile. It is never killed for this.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub busy: bool,
    /// A snapshot that a manager began and did not finish (it crashed or
    /// was killed): the next manager to reach the VMM resumes the guest if
    /// the snapshot paused it, and keeps the bundle only if it was sealed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted_snapshot: Option<SnapshotName>,
    /// A clone's own copies of writable drives, and how each was made (a
    /// copy of the data extents costs what the image holds: the file
    /// system has no reflinks).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub own_drives: Vec<crate::record::OwnDrive>,
    /// The warm pool the VM is a member of, until it is claimed (see
    /// [`Manager::pool_create`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolName>,
}

/// A VM's vsock device, as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VsockInfo {
    /// The device's unix socket (see [`crate::vsock`]).
    pub uds_path: PathBuf,
    /// The guest CID.
    pub guest_cid: u32,
}

/// Runs many Firecracker VMs on one host. See the [module docs](self).
///
/// `Manager` is cheap to clone (it is an `Arc` inside) and every method
/// takes `&self`, so one manager can serve a whole service.
///
/// A method about one VM takes that VM's id first, then what it acts
/// with: `snapshot(&vm, &name, options)` and `restore(&vm, &snapshot,
/// options)` alike.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use firehost::{VmSpec, manager::{Manager, ManagerConfig, StopOptions}};
///
/// let manager = Manager::open(ManagerConfig::new("/var/lib/firehost", "firecracker")).await?;
/// let spec = VmSpec {
///     kernel: Some("/images/vmlinux".into()),
///     rootfs: Some("/images/rootfs.ext4".into()),
///     vcpus: Some(2),
///     ..VmSpec::default()
/// };
/// let id = "job-42".parse()?;
/// manager.create(&id, spec).await?;
/// manager.start(&id).await?;
/// manager.stop(&id, StopOptions::default()).await?;
/// manager.destroy(&id).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Manager {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: ManagerConfig,
    /// `config.firecracker` resolved to an absolute path at open.
    firecracker: PathBuf,
    vms_dir: PathBuf,
    /// Links from renamed VMs' names to their keys (see [`names`]).
    names_dir: PathBuf,
    /// The warm pools (see [`pool`]).
    pools: pool::Pools,
    snapshots_dir: PathBuf,
    /// Operations under way (see [`intent`]).
    intents_dir: PathBuf,
    /// The default network (set up with its first VM).
    net: Arc<HostNetwork>,
    /// The registry. A std mutex: it is held only to look up, insert or
    /// remove a slot, never across an `.await`.
    vms: StdMutex<HashMap<VmId, Arc<Slot>>>,
    /// The uids of live jailed VMs.
    uids: Arc<StdMutex<crate::jail::uid::UidAllocator>>,
    /// The files live VMs write to.
    writers: Arc<StdMutex<writers::Writers>>,
    /// VMs whose records cannot be read: left alone, listed apart.
    quarantine: StdMutex<std::collections::BTreeMap<VmId, quarantine::Quarantined>>,
    /// How far the state directory has been loaded (see [`recovery`]).
    /// Held while loading, so that a VM is loaded once.
    loaded: Mutex<recovery::Progress>,
    /// Dropped with the manager: background watchers see the channel close
    /// and stop, so a dropped manager never writes into a state directory
    /// whose lock it no longer holds.
    alive: tokio::sync::watch::Sender<()>,
    _lock: Arc<StateLock>,
}

/// One VM's place in the registry, under its name.
#[derive(Debug)]
struct Slot {
    /// The VM's key (see [`names`]), which never changes.
    key: VmId,
    /// The VM, behind the per-VM async lock that every operation takes.
    /// `None` while a create is still running or after a destroy.
    vm: Arc<Mutex<Option<Vm>>>,
    /// A copy of the VM's info, refreshed after every change, so listing
    /// never waits for a slow operation on some VM, and watchers learn of
    /// every change.
    info: tokio::sync::watch::Sender<Option<VmInfo>>,
}

/// A VM's live data, owned by its slot.
#[derive(Debug)]
struct Vm {
    record: VmRecord,
    dir: PathBuf,
    process: Option<VmmProcess>,
    api: Option<Arc<ApiClient>>,
    ring: ConsoleRing,
    /// The userfaultfd page server of a VM restored with one, until it is
    /// retired after the VMM ends (or it detached).
    page_server: Option<memory_server::MemoryServer>,
    /// The VMM's API has answered this manager, so `record.state` is
    /// Firecracker's. False for a VMM adopted from an earlier manager until
    /// its first answer (see [`verify`]).
    verified: bool,
    /// The last attempt to reach an adopted VMM's API timed out.
    busy: bool,
    /// A VMM that a read-only load saw running (pid, start time) without
    /// holding it: it is attached (a pidfd opened) when the VM is used.
    seen: Option<(i32, u64)>,
}

impl Slot {
    fn new(key: VmId) -> Self {
        Slot {
            key,
            vm: Arc::new(Mutex::new(None)),
            info: tokio::sync::watch::Sender::new(None),
        }
    }

    fn publish(&self, vm: Option<&Vm>) {
        self.info.send_replace(vm.map(Vm::info));
    }

    fn info(&self) -> Option<VmInfo> {
        self.info.borrow().clone()
    }
}

impl Vm {
    fn info(&self) -> VmInfo {
        VmInfo {
            id: self.record.name.clone(),
            state: self.record.state.clone(),
            pid: self
                .process
                .as_ref()
                .map(VmmProcess::pid)
                .or(self.seen.map(|(pid, _)| pid)),
            api_socket: self.record.api_socket.clone(),
            dir: self.dir.clone(),
            console_file: match &self.record.console {
                ConsoleMode::Ring => None,
                ConsoleMode::RingAndFile(p) | ConsoleMode::File(p) => Some(p.clone()),
            },
            spec: self.record.spec.clone(),
            created_at_ms: self.record.created_at_ms,
            net: self.record.net.clone(),
            vsock: self.record.vsock.as_ref().map(|v| VsockInfo {
                uds_path: v.uds_path.clone(),
                guest_cid: v.guest_cid,
            }),
            jail: self.record.jail.clone(),
            // Only a VMM that is still there can be busy.
            busy: self.busy && (self.process.is_some() || self.seen.is_some()),
            interrupted_snapshot: self
                .record
                .pending_snapshot
                .as_ref()
                .map(|p| p.name.clone()),
            own_drives: self.record.own_drives.clone(),
            pool: self.record.pool.clone(),
        }
    }

    /// The last `n` console lines, from the ring or the console file.
    async fn console_tail(&self, n: usize) -> Vec<String> {
        match &self.record.console {
            ConsoleMode::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || crate::console::tail_of_file(&path, n))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default()
            }
            ConsoleMode::Ring | ConsoleMode::RingAndFile(_) => self.ring.tail_text(n),
        }
    }

    /// Writes the record on the blocking pool.
    async fn persist(&self, durability: Durability) -> Result<(), VmError> {
        let record = self.record.clone();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || record.write_with(&dir, durability))
            .await
            .expect("record writes do not panic")
            .map_err(|source| VmError::Record {
                id: self.record.id.clone(),
                source,
            })
    }
}

impl Manager {
    /// Opens (creating if needed) the state directory, takes its lock,
    /// checks the host settings recorded there (see [`settings`]) and,
    /// with [`Recovery::Full`], re-attaches to or reaps the VMs recorded
    /// there (see the recovery section of [`Manager`]).
    ///
    /// Fails with [`ManagerError::Locked`] if another manager uses the
    /// directory (after waiting up to `config.timeouts.lock`), and with
    /// [`ManagerError::SettingsDiffer`] or [`ManagerError::SettingsInUse`]
    /// per [`ManagerConfig::settings`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped midway, some dead VMs may be left unreaped
    /// until the next open (which finishes the job).
    pub async fn open(mut config: ManagerConfig) -> Result<Manager, ManagerError> {
        let state_dir = config.state_dir.clone();
        create_private_dir_all(&state_dir)?;
        let lock = Arc::new(StateLock::acquire(&state_dir, config.timeouts.lock).await?);
        create_private_dir_all(&state_dir.join("vms"))?;
        create_private_dir_all(&state_dir.join("snapshots"))?;
        create_private_dir_all(&state_dir.join(intent::INTENTS_DIR))?;
        let settings_err = |source| ManagerError::Settings { source };
        let recorded = settings::HostSettings::read(&state_dir).map_err(settings_err)?;
        let requested = settings::HostSettings::of(&config);
        if let Some(recorded) = &recorded {
            let differences = recorded.differences(&requested);
            match config.settings {
                _ if differences.is_empty() => {}
                SettingsPolicy::Require => {
                    return Err(ManagerError::SettingsDiffer {
                        state_dir,
                        differences,
                    });
                }
                SettingsPolicy::Adopt => recorded.apply_to(&mut config),
                SettingsPolicy::Change => {
                    // Look (and only look) at the VMs, with the settings
                    // they run with: a refused change changes nothing.
                    let mut current = config.clone();
                    recorded.apply_to(&mut current);
                    current.recovery = Recovery::ReadOnly;
                    let shared = Shared::new(current, lock.clone())?;
                    recovery::load_all(&shared).await;
                    let vms = shared.depending_on(&differences);
                    if !vms.is_empty() {
                        return Err(ManagerError::SettingsInUse { differences, vms });
                    }
                }
            }
        }
        // A read-only manager records nothing: the first one that may
        // change things does.
        let next = settings::HostSettings::merged(recorded.as_ref(), &requested, config.settings);
        if let Some(next) = next
            && config.recovery != Recovery::ReadOnly
        {
            next.write(&state_dir).map_err(settings_err)?;
        }
        let shared = Shared::new(config, lock)?;
        if shared.config.recovery != Recovery::ReadOnly {
            recovery::settle_intents(&shared).await;
        }
        if shared.config.recovery == Recovery::Full {
            recovery::load_all(&shared).await;
        }
        pool::open_all(&shared);
        Ok(Manager { shared })
    }

    /// The configuration the manager runs with.
    pub fn config(&self) -> &ManagerConfig {
        &self.shared.config
    }

    /// Where snapshot bundles are stored.
    pub fn snapshots_dir(&self) -> &Path {
        &self.shared.snapshots_dir
    }

    /// The snapshot store (list, inspect, verify, delete, gc, merge), with
    /// async methods that do their file work on the blocking pool.
    pub fn snapshots(&self) -> Snapshots {
        Snapshots::new(self.shared.clone())
    }

    /// Creates a VM: validates the spec, starts its VMM and configures it
    /// (machine, boot source, drives). The VM ends in state
    /// [`VmState::Created`]; [`start`](Self::start) boots it.
    ///
    /// Every side effect is undone if any step fails, and the first error
    /// is returned: no process, socket, directory or record is left.
    ///
    /// # Cancel safety
    ///
    /// The create runs in a task of its own: dropping this future does not
    /// interrupt it. It finishes (the VM then shows in [`list`](Self::list))
    /// or fails and undoes itself.
    pub async fn create(&self, id: &VmId, spec: VmSpec) -> Result<VmInfo, VmError> {
        let task = tokio::spawn(create::create(
            self.shared.clone(),
            id.clone(),
            spec,
            false,
            None,
        ));
        task.await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Creates and starts a VM as one transaction: if the start fails, the
    /// VM is destroyed again and the start's error returned, so a failed
    /// `run` leaves nothing behind either.
    ///
    /// # Cancel safety
    ///
    /// Runs in its own task: it completes (or undoes itself) even if this
    /// future is dropped.
    pub async fn run(&self, id: &VmId, spec: VmSpec) -> Result<VmInfo, VmError> {
        let task = tokio::spawn(create::create(
            self.shared.clone(),
            id.clone(),
            spec,
            true,
            None,
        ));
        task.await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Follows a VM's info: the receiver sees every change of state (a
    /// crash included) and `None` once the VM is destroyed.
    ///
    /// With [`Recovery::Lazy`] or [`Recovery::ReadOnly`], a VM is known
    /// once an async call has named it (or listed all): call
    /// [`get`](Self::get) first.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(manager: firehost::Manager, id: firehost::VmId) -> Result<(), firehost::VmError> {
    /// let mut changes = manager.subscribe(&id)?;
    /// // Wait until the VM is no longer live, whatever the reason.
    /// let _ = changes
    ///     .wait_for(|info| info.as_ref().is_none_or(|i| !i.state.is_live()))
    ///     .await;
    /// # Ok(()) }
    /// ```
    pub fn subscribe(
        &self,
        id: &VmId,
    ) -> Result<tokio::sync::watch::Receiver<Option<VmInfo>>, VmError> {
        Ok(self.shared.slot(id)?.info.subscribe())
    }

    /// Restores snapshot `snapshot` from the store into a new VM `id`: a
    /// fresh VMM loads the bundle and (by default) resumes the guest. The
    /// same snapshot can be restored many times, concurrently, into VMs of
    /// different names (clones).
    ///
    /// Like create, a restore is a transaction: a missing or incomplete
    /// bundle, a Firecracker version other than the bundle's, or a failed
    /// load leaves nothing behind.
    ///
    /// # Cancel safety
    ///
    /// Runs in its own task: it completes (or undoes itself) even if this
    /// future is dropped.
    pub async fn restore(
        &self,
        id: &VmId,
        snapshot: &SnapshotName,
        options: RestoreOptions,
    ) -> Result<VmInfo, VmError> {
        let task = tokio::spawn(restore::restore(
            self.shared.clone(),
            id.clone(),
            snapshot.clone(),
            options,
            None,
        ));
        task.await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Waits until a VM restored with [`RestoreMemory::Populate`] holds all
    /// its memory and its page server has detached, so the VM no longer
    /// depends on this manager; then retires the server. Returns at once
    /// for a VM without a page server. A VM served on demand never
    /// detaches: that is a [`VmError::PageServer`] timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the server goes on populating; call again to wait.
    pub async fn wait_memory_detached(
        &self,
        id: &VmId,
        timeout: std::time::Duration,
    ) -> Result<(), VmError> {
        let slot = self.shared.find(id).await?;
        let mut guard = slot.vm.lock().await;
        let vm = guard
            .as_mut()
            .ok_or_else(|| VmError::NotFound { id: id.clone() })?;
        let Some(server) = &mut vm.page_server else {
            return Ok(());
        };
        server
            .wait_detached(timeout)
            .await
            .map_err(|source| VmError::PageServer {
                id: id.clone(),
                source: Box::new(source),
            })?;
        restore::retire_page_server(vm, &self.shared.snapshots_dir).await;
        // From now on the VM survives this manager: say so durably.
        vm.persist(Durability::Synced).await
    }

    /// Boots the guest (`InstanceStart`).
    ///
    /// # Cancel safety
    ///
    /// If dropped after the request went out, the VM may have started while
    /// the record still says created; the next operation or manager open
    /// corrects it from Firecracker's own state.
    pub async fn start(&self, id: &VmId) -> Result<VmInfo, VmError> {
        ops::start(&self.shared, id).await
    }

    /// Pauses the guest's vCPUs.
    ///
    /// # Cancel safety
    ///
    /// As for [`start`](Self::start).
    pub async fn pause(&self, id: &VmId) -> Result<VmInfo, VmError> {
        ops::pause(&self.shared, id).await
    }

    /// Resumes the guest's vCPUs.
    ///
    /// # Cancel safety
    ///
    /// As for [`start`](Self::start).
    pub async fn resume(&self, id: &VmId) -> Result<VmInfo, VmError> {
        ops::resume(&self.shared, id).await
    }

    /// Stops the VM: Ctrl-Alt-Del if the guest is expected to honour it,
    /// then SIGTERM, then SIGKILL, each step given [`StopOptions::grace`]
    /// to take effect. The exit is observed through the pidfd.
    ///
    /// Stopping a VM that has already stopped or failed succeeds with
    /// [`StopOutcome::stopped`] false and its state unchanged (a failed VM's
    /// network is released then), so cleanup code can stop whatever it
    /// finds. A VM that does not exist is still [`VmError::NotFound`].
    ///
    /// # Cancel safety
    ///
    /// Runs in its own task: once called, the stop completes even if this
    /// future is dropped.
    pub async fn stop(&self, id: &VmId, options: StopOptions) -> Result<StopOutcome, VmError> {
        let task = tokio::spawn(ops::stop(self.shared.clone(), id.clone(), options));
        task.await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Changes a running or paused VM's devices: drive and NIC limits,
    /// the balloon's target and statistics interval (see [`VmUpdate`]).
    ///
    /// The update is checked against the VM's spec first
    /// ([`VmError::InvalidUpdate`]), then sent to Firecracker one `PATCH`
    /// at a time. It is all or nothing: if Firecracker refuses one change
    /// (a balloon the guest's driver has not set up, say), the changes
    /// already made are taken back, the VMM's error is returned
    /// ([`VmError::Api`]) and the VM's spec is unchanged. On success the
    /// new values are the VM's spec from then on ([`VmInfo::spec`]): they
    /// are recorded, shown by `inspect` and kept by snapshots.
    ///
    /// A VM that has not been started cannot be updated (Firecracker takes
    /// no `PATCH` before boot): [`VmError::Transition`].
    ///
    /// # Cancel safety
    ///
    /// Runs in its own task: once called, the update completes (or is
    /// taken back) even if this future is dropped.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(manager: &firehost::Manager, id: &firehost::VmId) -> Result<(), firehost::VmError> {
    /// use firehost::manager::{DriveLimitUpdate, VmUpdate};
    /// use firehost::vocab::{Bucket, BucketChange, LimitChange};
    ///
    /// let update = VmUpdate {
    ///     drives: vec![DriveLimitUpdate {
    ///         drive_id: "rootfs".into(),
    ///         limit: LimitChange {
    ///             ops: BucketChange::Set(Bucket::per_second(500)),
    ///             ..LimitChange::default()
    ///         },
    ///     }],
    ///     ..VmUpdate::default()
    /// };
    /// let info = manager.update(id, &update).await?;
    /// assert_eq!(info.spec.rootfs_io.limit.ops, Some(Bucket::per_second(500)));
    /// # Ok(()) }
    /// ```
    pub async fn update(&self, id: &VmId, update: &VmUpdate) -> Result<VmInfo, VmError> {
        let task = tokio::spawn(ops::update(self.shared.clone(), id.clone(), update.clone()));
        task.await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Points drive `drive_id` (`rootfs` for the root drive) of a running
    /// or paused VM at another file, which the guest sees as new media
    /// behind the same device (Firecracker's hot swap). The drive keeps its
    /// id, mode, cache, engine and limits.
    ///
    /// The file must be a regular file ([`VmError::InvalidSpec`]). For a
    /// writable drive it must not be a file another live VM writes to
    /// ([`VmError::DriveInUse`]), and from then on this VM holds it and no
    /// longer holds the old one. A jailed VM gets the file as at create: a
    /// link when read-only, a private copy when writable, at the drive's
    /// place in its jail. When Firecracker refuses the swap the VM keeps
    /// its old file ([`VmError::Api`]). A VM that was not started:
    /// [`VmError::Transition`]. A clone's own copy of the drive stays in
    /// its directory until the VM is removed.
    ///
    /// # Cancel safety
    ///
    /// Runs in its own task: once called, the swap completes (or is taken
    /// back) even if this future is dropped.
    pub async fn swap_drive(
        &self,
        id: &VmId,
        drive_id: &str,
        path: &std::path::Path,
    ) -> Result<VmInfo, VmError> {
        let task = tokio::spawn(swap::swap_drive(
            self.shared.clone(),
            id.clone(),
            drive_id.to_owned(),
            path.to_owned(),
        ));
        task.await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Asks the VM's Firecracker to flush its metrics and returns them:
    /// what happened since its previous flush (Firecracker also flushes
    /// every 60 seconds on its own, and whenever this is called), typed
    /// (see [`crate::metrics`]).
    ///
    /// Needs [`ManagerConfig::vmm_metrics`] ([`VmError::MetricsOff`]) and
    /// a live VMM. [`VmError::MetricsTimeout`] when the flush does not
    /// reach the VM's `metrics.json` within [`Timeouts::request`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a dropped call leaves at most an extra flush in the
    /// file.
    ///
    /// [`Timeouts::request`]: crate::manager::Timeouts::request
    pub async fn metrics(&self, id: &VmId) -> Result<VmMetrics, VmError> {
        metrics::metrics(&self.shared, id).await
    }

    /// The VM's metrics every `every` (at least 10 ms): a flush each time,
    /// as [`metrics`](Self::metrics). A failed flush is passed on and the
    /// subscription goes on; it ends once the VM, or its VMM, is gone.
    /// Dropping it stops its flushes.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(manager: &firehost::Manager, id: &firehost::VmId) {
    /// use std::time::Duration;
    ///
    /// let mut every_second = manager.subscribe_metrics(id, Duration::from_secs(1));
    /// while let Some(Ok(flush)) = every_second.next().await {
    ///     let rx = flush.metrics.net.rx_bytes_count;
    ///     println!("{}: {rx} bytes in over {:?} ms", flush.vm, flush.interval_ms);
    /// }
    /// # }
    /// ```
    pub fn subscribe_metrics(&self, id: &VmId, every: std::time::Duration) -> MetricsSubscription {
        metrics::subscribe(self.shared.clone(), id.clone(), every)
    }

    /// The guest's memory as its balloon driver last reported it
    /// (Firecracker's `GET /balloon/statistics`): the balloon's target and
    /// actual size, and, once the driver reports them, the guest's free,
    /// available and total memory, page faults and more.
    ///
    /// Needs a balloon with statistics on ([`BalloonSpec::stats_interval_s`]
    /// above 0): [`VmError::InvalidUpdate`] otherwise.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only reads.
    ///
    /// [`BalloonSpec::stats_interval_s`]: crate::spec::BalloonSpec::stats_interval_s
    pub async fn balloon_stats(
        &self,
        id: &VmId,
    ) -> Result<crate::api::models::BalloonStats, VmError> {
        ops::balloon_stats(&self.shared, id).await
    }

    /// Takes a full snapshot into a new bundle named `name` in the snapshot
    /// store, pausing a running VM first and (by default) resuming it after.
    ///
    /// # Cancel safety
    ///
    /// Runs in its own task: it completes (or undoes itself: the partial
    /// bundle is removed and the VM resumed) even if this future is dropped.
    pub async fn snapshot(
        &self,
        id: &VmId,
        name: &SnapshotName,
        options: SnapshotOptions,
    ) -> Result<SnapshotInfo, VmError> {
        let task = tokio::spawn(ops::snapshot(
            self.shared.clone(),
            id.clone(),
            name.clone(),
            options,
        ));
        task.await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Restores `snapshot` into every VM of `clones` at once, each with its
    /// own [`RestoreOptions`] (its own uid, metadata, memory backend), all
    /// or nothing: if one restore fails, the clones that came up are
    /// stopped and destroyed, and the first error in the order of `clones`
    /// is returned. On success the infos are in the order of `clones`.
    ///
    /// ```no_run
    /// # async fn demo(manager: firehost::Manager) -> Result<(), firehost::VmError> {
    /// use firehost::manager::RestoreOptions;
    /// let snapshot = "template".parse().unwrap();
    /// let clones = (0..8)
    ///     .map(|i| (format!("job-{i}").parse().unwrap(), RestoreOptions::default()))
    ///     .collect();
    /// let vms = manager.clone_many(&snapshot, clones).await?;
    /// assert_eq!(vms.len(), 8);
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Runs in its own task: it completes, or undoes itself, even if this
    /// future is dropped.
    pub async fn clone_many(
        &self,
        snapshot: &SnapshotName,
        clones: Vec<(VmId, RestoreOptions)>,
    ) -> Result<Vec<VmInfo>, VmError> {
        let (manager, snapshot) = (self.clone(), snapshot.clone());
        let task =
            tokio::spawn(
                async move { crate::provider::clone_all(&manager, &snapshot, clones).await },
            );
        task.await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Forwards host port `mapping.host_port` to the VM's guest port, at
    /// runtime (the VM must have a network). The mapping is kept in the
    /// record and removed with the VM.
    ///
    /// # Cancel safety
    ///
    /// Runs in its own task: it completes even if this future is dropped.
    pub async fn publish(&self, id: &VmId, mapping: PortMapping) -> Result<VmInfo, VmError> {
        let task = tokio::spawn(ops::publish(self.shared.clone(), id.clone(), mapping, true));
        task.await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Stops forwarding a host port to the VM (no error if it was not).
    ///
    /// # Cancel safety
    ///
    /// Runs in its own task: it completes even if this future is dropped.
    pub async fn unpublish(&self, id: &VmId, mapping: PortMapping) -> Result<VmInfo, VmError> {
        let task = tokio::spawn(ops::publish(
            self.shared.clone(),
            id.clone(),
            mapping,
            false,
        ));
        task.await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Replaces the egress policy of a VM on the default network (see
    /// [`EgressPolicy`](crate::vocab::EgressPolicy)), at runtime, in one
    /// nftables transaction. The old policy applies until the new one
    /// does; open connections are checked against the new one at their
    /// next packet, so taking an address out of a policy cuts the
    /// connections to it. When the firewall refuses the new policy, or the
    /// record cannot be written, the old policy stays in force. The policy
    /// is the VM's spec from then on: its snapshots, and the restores and
    /// clones made from them, keep it. A VM without a network:
    /// [`VmError::Network`].
    ///
    /// # Cancel safety
    ///
    /// Runs in its own task: it completes (or is taken back) even if this
    /// future is dropped.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(manager: &firehost::Manager, id: &firehost::VmId) -> Result<(), firehost::VmError> {
    /// use firehost::vocab::{EgressAction, EgressPolicy, EgressRule};
    ///
    /// let policy = EgressPolicy::new(
    ///     EgressAction::Deny,
    ///     vec![EgressRule::allow("203.0.113.0/24:443".parse().unwrap())],
    /// )
    /// .expect("a valid policy");
    /// let info = manager.set_egress(id, policy.clone()).await?;
    /// assert_eq!(info.net.map(|n| n.egress), Some(policy));
    /// # Ok(()) }
    /// ```
    pub async fn set_egress(
        &self,
        id: &VmId,
        policy: crate::vocab::EgressPolicy,
    ) -> Result<VmInfo, VmError> {
        let task = tokio::spawn(ops::set_egress(self.shared.clone(), id.clone(), policy));
        task.await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// A VM's traffic on the default network since it was attached: bytes
    /// and packets each way, and packets its egress policy dropped (see
    /// [`TrafficCounters`](crate::net::firewall::TrafficCounters)). The
    /// counts live in the kernel's firewall and survive a manager restart.
    /// A VM without a network: [`VmError::Network`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn traffic(
        &self,
        id: &VmId,
    ) -> Result<crate::net::firewall::TrafficCounters, VmError> {
        let network = |source| VmError::Network {
            id: id.clone(),
            source: Box::new(source),
        };
        let not_attached = || network(NetError::NotAttached { vm: id.clone() });
        let net = self.get(id).await?.net.ok_or_else(not_attached)?;
        let by_ip = self
            .shared
            .network()
            .await
            .traffic(std::slice::from_ref(&net))
            .await
            .map_err(network)?;
        by_ip.get(&net.ip).copied().ok_or_else(not_attached)
    }

    /// The traffic of every VM on the default network, in id order (see
    /// [`traffic`](Self::traffic)). A read-only manager reads the
    /// counters too (it changes nothing). Empty when the firewall cannot
    /// be read (logged).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn network_traffic(&self) -> Vec<(VmId, crate::net::firewall::TrafficCounters)> {
        let attachments = self.network_attachments().await;
        let nets: Vec<VmNet> = attachments.iter().map(|(_, net)| net.clone()).collect();
        let by_ip = match self.shared.network().await.traffic(&nets).await {
            Ok(by_ip) => by_ip,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the traffic counters");
                return Vec::new();
            }
        };
        attachments
            .into_iter()
            .filter_map(|(id, net)| by_ip.get(&net.ip).map(|t| (id, *t)))
            .collect()
    }

    /// A client for the VM's guest agent (the VM needs a vsock device:
    /// [`VmSpec::vsock`](crate::VmSpec::vsock)). Calls connect when made:
    /// use [`AgentClient::wait_ready`](crate::agent::AgentClient::wait_ready)
    /// after a start or restore.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads the VM's record.
    pub async fn agent(&self, id: &VmId) -> Result<AgentClient, VmError> {
        let slot = self.shared.find(id).await?;
        let mut guard = slot.vm.lock().await;
        let vm = guard
            .as_mut()
            .ok_or_else(|| VmError::NotFound { id: id.clone() })?;
        rekey::settle(vm).await;
        let vsock = vm
            .record
            .vsock
            .as_ref()
            .ok_or_else(|| VmError::NoVsock { id: id.clone() })?;
        Ok(AgentClient::new(
            &vsock.uds_path,
            firehost_proto::DEFAULT_PORT,
            vsock.token.clone(),
        ))
    }

    /// The VMs on the default network now, with their addresses, MACs,
    /// TAPs and published ports, in id order.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn network_attachments(&self) -> Vec<(VmId, VmNet)> {
        if self.shared.config.recovery == Recovery::ReadOnly {
            // As the records say: a read-only manager does not take over
            // the network.
            return self
                .list()
                .await
                .into_iter()
                .filter(|vm| vm.pid.is_some())
                .filter_map(|vm| vm.net.map(|net| (vm.id, net)))
                .collect();
        }
        let attached = self.shared.network().await.attached().await;
        // The network knows VMs by their keys; callers, by their names.
        let names: HashMap<VmId, VmId> = self
            .shared
            .lock_registry()
            .iter()
            .map(|(name, slot)| (slot.key.clone(), name.clone()))
            .collect();
        attached
            .into_iter()
            .map(|(key, net)| (names.get(&key).cloned().unwrap_or(key), net))
            .collect()
    }

    /// Removes a VM that is created, stopped or failed, with its directory,
    /// socket, console and record. A created VM's VMM is killed first; a
    /// running or paused VM must be stopped first.
    ///
    /// # Cancel safety
    ///
    /// Runs in its own task: it completes even if this future is dropped.
    pub async fn destroy(&self, id: &VmId) -> Result<(), VmError> {
        let task = tokio::spawn(ops::destroy(self.shared.clone(), id.clone()));
        task.await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Gives the VM `old` the name `new`, in any state, and returns its
    /// info under the new name. The VM itself is untouched: its key (the
    /// name it was created under) stays, and with it its directory, jail,
    /// sockets, TAP and namespace, which a running Firecracker keeps (see
    /// the `names` module); a guest with a metadata service finds its new
    /// name in the `"firehost"` identity. A crash at any point leaves the
    /// VM under the old name or the new one.
    ///
    /// Refused with [`VmError::AlreadyExists`] if `new` names a VM, and
    /// with [`VmError::MidOperation`] if another operation on the VM is
    /// still under way after [`Timeouts::probe`] (a rename is not queued
    /// behind a snapshot or a stop); renaming a VM to its own name changes
    /// nothing.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(manager: &firehost::Manager) -> Result<(), Box<dyn std::error::Error>> {
    /// // A VM made ahead of demand goes to the job that asked for it.
    /// let vm = manager.rename(&"warm-7".parse()?, &"job-1234".parse()?).await?;
    /// assert_eq!(vm.id.as_str(), "job-1234");
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Runs in its own task: it completes even if this future is dropped.
    pub async fn rename(&self, old: &VmId, new: &VmId) -> Result<VmInfo, VmError> {
        let task = tokio::spawn(rename::rename(
            self.shared.clone(),
            old.clone(),
            new.clone(),
        ));
        task.await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Makes the warm pool `name`: records `spec` in the state directory
    /// and (unless [`ManagerConfig::pool_refill`] is off) starts making
    /// members in the background, up to its size. The template is checked
    /// first: a missing snapshot or a spec that does not resolve is
    /// [`VmError::InvalidPool`], and nothing is recorded. See the `pool`
    /// module for how pools are kept.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe until the spec is written; after that the pool exists
    /// (a later [`pool_delete`](Self::pool_delete) removes it).
    pub async fn pool_create(&self, name: &PoolName, spec: PoolSpec) -> Result<PoolInfo, VmError> {
        pool::create(&self.shared, name, spec).await
    }

    /// Replaces a pool's spec. Members made from the old template stay
    /// until claimed; members past a smaller size are removed, newest
    /// first, and a larger size is filled.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped midway, the new spec may be recorded
    /// without the extra members removed; calling it again finishes.
    pub async fn pool_update(&self, name: &PoolName, spec: PoolSpec) -> Result<PoolInfo, VmError> {
        pool::update(&self.shared, name, spec).await
    }

    /// Removes a pool and its unclaimed members (claimed VMs are the
    /// callers' and stay).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped midway, some members may be left; calling
    /// it again is refused ([`VmError::PoolNotFound`]) once the pool is
    /// gone from the manager, and the members left are ordinary VMs.
    pub async fn pool_delete(&self, name: &PoolName) -> Result<(), VmError> {
        pool::delete(&self.shared, name).await
    }

    /// Every pool, by name, with its ready members and state.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn pool_list(&self) -> Vec<PoolInfo> {
        pool::list(&self.shared).await
    }

    /// One pool, with its ready members and state.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn pool_get(&self, name: &PoolName) -> Result<PoolInfo, VmError> {
        pool::get(&self.shared, name).await
    }

    /// Makes members now, until the pool is at its size, and returns it;
    /// the first failure is returned (and shown in
    /// [`PoolInfo::failure`]). For managers that do not refill in the
    /// background, as the CLI's.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: members being made when it is dropped are made
    /// all the same (each in a task of its own).
    pub async fn pool_fill(&self, name: &PoolName) -> Result<PoolInfo, VmError> {
        pool::fill(&self.shared, name).await
    }

    /// Hands a running member of pool `pool` to the caller under the name
    /// `name`: a rename that takes the member out of the pool in the same
    /// record write (see [`rename`](Self::rename)), with the caller's
    /// metadata if [`ClaimOptions::mmds`] says so. Before that, a member
    /// whose agent answers gets a reseeded CRNG and an agent token of its
    /// own ([`ClaimOptions::reseed`]). The pool then makes a
    /// new member in the background. With no member ready, it waits up to
    /// [`ClaimOptions::wait`], then makes the VM from the template under
    /// `name` ([`ClaimOptions::cold_start`]) or fails with
    /// [`VmError::PoolEmpty`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped after a member was renamed, the VM is the
    /// caller's all the same, under `name`.
    pub async fn pool_claim(
        &self,
        pool: &PoolName,
        name: &VmId,
        options: ClaimOptions,
    ) -> Result<VmInfo, VmError> {
        self.shared.check_free(name).await?;
        pool::claim(&self.shared, pool, name, options).await
    }

    /// One VM's info. Waits for an operation in progress on that VM.
    ///
    /// A VMM adopted from an earlier manager is asked for its state the
    /// first time (so a pause made behind the manager's back shows); if it
    /// does not answer within [`Timeouts::probe`], the info has
    /// [`VmInfo::busy`] set and the recorded state. A VM whose record
    /// cannot be read is a [`VmError::Unreadable`] (see
    /// [`unreadable`](Self::unreadable)).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn get(&self, id: &VmId) -> Result<VmInfo, VmError> {
        let slot = self.shared.find(id).await?;
        let mut guard = slot.vm.lock().await;
        let vm = guard
            .as_mut()
            .ok_or_else(|| VmError::NotFound { id: id.clone() })?;
        match verify::verify(&self.shared.verifier(), vm).await {
            Ok(()) | Err(VmError::Busy { .. }) => {}
            Err(e) => return Err(e),
        }
        slot.publish(Some(vm));
        Ok(vm.info())
    }

    /// Every VM, sorted by id. Never waits for operations in progress: a VM
    /// that is being created is not listed yet. The states are the recorded
    /// ones (no VMM is asked); VMs whose record cannot be read are listed
    /// by [`unreadable`](Self::unreadable) instead.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a VM loaded before the future is dropped stays loaded.
    pub async fn list(&self) -> Vec<VmInfo> {
        recovery::load_all(&self.shared).await;
        let slots: Vec<Arc<Slot>> = self.shared.lock_registry().values().cloned().collect();
        let mut infos: Vec<VmInfo> = slots.iter().filter_map(|s| s.info()).collect();
        infos.sort_by(|a, b| a.id.cmp(&b.id));
        infos
    }

    /// The bundles that snapshots cut short by an earlier manager's death
    /// may still be written into: a VMM busy with one goes on writing it.
    /// They stay until the snapshot is settled (see the recovery section of [`Manager`]); pass
    /// them to [`GcOptions::keep`](crate::snapshot::store::GcOptions::keep).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn snapshots_in_progress(&self) -> Vec<SnapshotName> {
        let mut names = Vec::new();
        for (key, _) in intent::pending(&self.shared.intents_dir) {
            let Ok(slot) = self.shared.find_by_key(&key).await else {
                continue;
            };
            if let Some(pending) = slot.info().and_then(|i| i.interrupted_snapshot) {
                names.push(pending);
            }
        }
        names
    }

    /// The VMs whose records cannot be read (corrupt, or written by a newer
    /// firehost), sorted by id. They are quarantined: their VMMs and files
    /// are left alone, every operation on them fails with
    /// [`VmError::Unreadable`], and only
    /// [`remove_unreadable`](Self::remove_unreadable) removes them.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn unreadable(&self) -> Vec<UnreadableVm> {
        recovery::load_all(&self.shared).await;
        self.shared
            .lock_quarantine()
            .values()
            .map(|q| q.info.clone())
            .collect()
    }

    /// Removes a quarantined VM (see [`unreadable`](Self::unreadable)):
    /// stops its VMM as far as it can be verified (the pid and start time
    /// the record still holds, or the process serving the VM's API
    /// socket), then removes its network, jail and directory as far as the
    /// record still says where they are. Returns whether a VMM was
    /// stopped. Fails with [`VmError::NotUnreadable`] for a VM whose record
    /// is readable, and [`VmError::NotFound`] for no VM at all.
    ///
    /// # Cancel safety
    ///
    /// Runs in its own task: it completes even if this future is dropped.
    pub async fn remove_unreadable(&self, id: &VmId) -> Result<bool, VmError> {
        let task = tokio::spawn(quarantine::remove(self.shared.clone(), id.clone()));
        task.await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// The last `lines` lines of the VM's console and VMM stderr.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn console_tail(&self, id: &VmId, lines: usize) -> Result<Vec<String>, VmError> {
        let slot = self.shared.find(id).await?;
        let guard = slot.vm.lock().await;
        match guard.as_ref() {
            Some(vm) => Ok(vm.console_tail(lines).await),
            None => Err(VmError::NotFound { id: id.clone() }),
        }
    }

    /// The VM's console ring, to follow or wait for output. Empty for VMs
    /// whose console goes straight to a file.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn console(&self, id: &VmId) -> Result<ConsoleRing, VmError> {
        let slot = self.shared.find(id).await?;
        let guard = slot.vm.lock().await;
        match guard.as_ref() {
            Some(vm) => Ok(vm.ring.clone()),
            None => Err(VmError::NotFound { id: id.clone() }),
        }
    }

    /// The VM's API client, for Firecracker features the manager does not
    /// wrap (balloon, rate-limiter updates, drive hot-swap…). `None` once
    /// the VMM is gone. Requests made this way do not update the manager's
    /// state or the VM's record, so they are lost on restore and re-attach;
    /// MMDS is wrapped ([`VmSpec::mmds`](crate::VmSpec::mmds),
    /// [`RestoreOptions::mmds`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn api(&self, id: &VmId) -> Result<Option<Arc<ApiClient>>, VmError> {
        let slot = self.shared.find(id).await?;
        let guard = slot.vm.lock().await;
        match guard.as_ref() {
            Some(vm) => Ok(vm.api.clone()),
            None => Err(VmError::NotFound { id: id.clone() }),
        }
    }
}

impl Shared {
    fn new(config: ManagerConfig, lock: Arc<StateLock>) -> Result<Arc<Shared>, ManagerError> {
        let vms_dir = config.state_dir.join("vms");
        let snapshots_dir = config.state_dir.join("snapshots");
        // A missing binary is reported per create (as a spawn error), so
        // that a host without Firecracker can still list and clean up.
        let firecracker =
            find_binary(&config.firecracker).unwrap_or_else(|| config.firecracker.clone());
        let net = HostNetwork::new(config.network.clone(), &config.state_dir)
            .map_err(|source| ManagerError::Network { source })?;
        let uids = uid_allocator(&config.jail);
        Ok(Arc::new(Shared {
            intents_dir: config.state_dir.join(intent::INTENTS_DIR),
            names_dir: config.state_dir.join(names::NAMES_DIR),
            pools: pool::Pools::default(),
            config,
            firecracker,
            vms_dir,
            snapshots_dir,
            net: Arc::new(net),
            vms: StdMutex::new(HashMap::new()),
            uids: Arc::new(StdMutex::new(uids)),
            writers: Arc::default(),
            quarantine: StdMutex::new(Default::default()),
            loaded: Mutex::new(recovery::Progress::default()),
            alive: tokio::sync::watch::Sender::new(()),
            _lock: lock,
        }))
    }

    /// The live VMs that depend on a setting in `differences`, in id order.
    fn depending_on(&self, differences: &[settings::SettingDifference]) -> Vec<VmId> {
        use settings::SettingGroup;
        let network = differences.iter().any(|d| d.group == SettingGroup::Network);
        let jail = differences.iter().any(|d| d.group == SettingGroup::Jail);
        let slots: Vec<Arc<Slot>> = self.lock_registry().values().cloned().collect();
        let mut vms: Vec<VmId> = slots
            .iter()
            .filter_map(|slot| slot.info())
            .filter(|info| info.state.is_live())
            .filter(|info| (network && info.net.is_some()) || (jail && info.jail.is_some()))
            .map(|info| info.id)
            .collect();
        vms.extend(self.lock_quarantine().keys().cloned());
        vms.sort();
        vms.dedup();
        vms
    }

    fn lock_quarantine(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<VmId, quarantine::Quarantined>> {
        self.quarantine.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_registry(&self) -> std::sync::MutexGuard<'_, HashMap<VmId, Arc<Slot>>> {
        // The registry map stays consistent through a panic (single
        // insert/remove calls), so a poisoned lock is still usable.
        self.vms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot(&self, id: &VmId) -> Result<Arc<Slot>, VmError> {
        self.lock_registry()
            .get(id)
            .cloned()
            .ok_or_else(|| VmError::NotFound { id: id.clone() })
    }

    fn vm_dir(&self, id: &VmId) -> PathBuf {
        self.vms_dir.join(id.as_str())
    }

    /// The snapshot store over this state directory.
    fn store(&self) -> SnapshotStore {
        SnapshotStore::new(&self.snapshots_dir, &self.vms_dir)
    }

    /// Records that VM `id` writes to the writable drives of `spec`;
    /// refuses a file another live VM writes to (see [`writers`]). For
    /// unjailed VMs: a jailed one writes to its own copies in its jail.
    /// Every VM on disk is loaded first (once per manager): a lazily
    /// opened manager would not know the writers it has not loaded.
    async fn hold_writes(self: &Arc<Self>, id: &VmId, spec: &ResolvedSpec) -> Result<(), VmError> {
        if writers::writable_drives(spec).is_empty() {
            return Ok(());
        }
        recovery::load_all(self).await;
        self.hold_known_writes(id, spec)
    }

    /// [`hold_writes`](Self::hold_writes) among the VMs loaded so far.
    fn hold_known_writes(&self, id: &VmId, spec: &ResolvedSpec) -> Result<(), VmError> {
        let drives = writers::writable_drives(spec);
        if drives.is_empty() {
            return Ok(());
        }
        let held = self
            .writers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .hold_for(id, spec);
        // The writers go by key; the error names the other VM as callers
        // know it.
        held.map_err(|e| match e {
            VmError::DriveInUse {
                id,
                drive,
                path,
                holder,
            } => VmError::DriveInUse {
                id,
                drive,
                path,
                holder: self.name_of(&holder).unwrap_or(holder),
            },
            other => other,
        })
    }

    /// The name of the loaded VM whose key is `key`.
    fn name_of(&self, key: &VmId) -> Option<VmId> {
        self.lock_registry()
            .iter()
            .find(|(_, slot)| slot.key == *key)
            .map(|(name, _)| name.clone())
    }
}

/// Watches a VMM that should keep running; if it exits while the VM is
/// live (not during a stop, which takes the VM lock first), the VM is marked
/// failed with its exit status and console tail. The watch ends with the
/// manager.
fn watch_for_crash(shared: &Shared, slot: Arc<Slot>, process: VmmProcess) {
    let mut alive = shared.alive.subscribe();
    let tail_lines = shared.config.console_lines;
    let snapshots_dir = shared.snapshots_dir.clone();
    let uids = shared.uids.clone();
    let writers = shared.writers.clone();
    tokio::spawn(async move {
        let exit = tokio::select! {
            exit = process.wait() => exit,
            _ = alive.changed() => return,
        };
        let mut guard = slot.vm.lock().await;
        let Some(vm) = guard.as_mut() else { return };
        let same_process = vm.process.as_ref().map(VmmProcess::pid) == Some(process.pid());
        if !same_process || !vm.record.state.is_live() {
            return;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), vm.ring.drained()).await;
        let console_tail = vm.console_tail(tail_lines).await;
        tracing::warn!(vm = %vm.record.id, %exit, "VMM exited unexpectedly");
        vm.record.state = VmState::Failed { exit, console_tail };
        vm.process = None;
        vm.api = None;
        restore::retire_page_server(vm, &snapshots_dir).await;
        if let Some(jail) = &vm.record.jail {
            jailed::release_on_stop(&uids, &vm.record.id, jail);
        }
        writers::release(&writers, &vm.record.id);
        let _ = remove_file_if_present(&vm.record.api_socket);
        if let Err(e) = vm.persist(Durability::Synced).await {
            tracing::error!(vm = %vm.record.id, error = %e, "cannot record the VM's failure");
        }
        slot.publish(Some(vm));
    });
}

fn uid_allocator(jail: &Option<crate::jail::JailConfig>) -> crate::jail::uid::UidAllocator {
    let defaults = crate::jail::JailConfig::default();
    let jail = jail.as_ref().unwrap_or(&defaults);
    crate::jail::uid::UidAllocator::new(jail.uid_range.clone(), jail.share_uids)
}

fn create_private_dir_all(path: &Path) -> Result<(), ManagerError> {
    crate::fsutil::create_private_dir_all(path).map_err(|source| ManagerError::Io {
        op: "create directory",
        path: path.to_owned(),
        source,
    })
}

fn remove_file_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
