//! [`VmProvider`]: the trait downstream services code against, with two
//! implementations that accept and refuse exactly the same things:
//!
//! - [`Manager`]: real Firecracker processes.
//! - [`InMemoryProvider`]: no processes at all, for the service's own tests.
//!   It validates specs with the same code (so files named in a spec must
//!   exist), enforces the same state machine and returns the same errors.
//!   A conformance suite in firehost's tests runs against both.
//!
//! ```
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use firehost::{HostDefaults, InMemoryProvider, VmProvider, VmSpec};
//!
//! let dir = tempfile::tempdir()?;
//! let kernel = dir.path().join("vmlinux");
//! std::fs::write(&kernel, b"")?;
//! let provider = InMemoryProvider::new(HostDefaults::default());
//! let id = "job-1".parse()?;
//! provider.create(&id, VmSpec { kernel: Some(kernel), ..VmSpec::default() }).await?;
//! let vm = provider.start(&id).await?;
//! assert_eq!(vm.state.name(), "running");
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Mutex, watch};

use crate::agent::{AgentError, ExecRequest, Output};
use crate::net::firewall::PortMapping;

use crate::VmId;
use crate::manager::{
    Manager, RestoreOptions, SnapshotOptions, StopOptions, StopOutcome, VmError, VmInfo, VsockInfo,
};
use crate::manager::{name_own_copies, restored_net, restored_spec};
use crate::net::host::{
    GuestAddress, NetError, NetSpec, NetworkConfig, VmNet, check_ports, check_translatable,
    translated_guests,
};
use crate::net::ipam::Allocator;
use crate::net::netns::VmNetns;
use crate::net::tap::{tap_name_for_vm, veth_names_for_tap};
use crate::snapshot::{
    MANIFEST_FORMAT, NetworkLayout, SnapshotInfo, SnapshotKind, SnapshotManifest, SnapshotName,
    VsockLayout,
};
use crate::spec::{HostDefaults, VmSpec};
use crate::state::{ExitReason, Operation, VmState};

/// What a service can do with VMs, whichever backend runs them.
///
/// Every method has the semantics documented on the [`Manager`] method of
/// the same name.
///
/// # Cancel safety
///
/// Each method is as cancel safe as [`Manager`]'s method of the same name
/// (create, run, stop, snapshot, restore, destroy and `clone_many` run in
/// tasks of their own and complete when dropped). [`InMemoryProvider`]'s
/// make each change at once under the VM's lock, so dropping them leaves
/// either the old state or the new.
#[async_trait]
pub trait VmProvider: Send + Sync + std::fmt::Debug {
    /// Creates and configures a VM (state created).
    async fn create(&self, id: &VmId, spec: VmSpec) -> Result<VmInfo, VmError>;
    /// Creates and starts a VM; a failed start destroys it again.
    async fn run(&self, id: &VmId, spec: VmSpec) -> Result<VmInfo, VmError>;
    /// Boots the guest.
    async fn start(&self, id: &VmId) -> Result<VmInfo, VmError>;
    /// Pauses the vCPUs.
    async fn pause(&self, id: &VmId) -> Result<VmInfo, VmError>;
    /// Resumes the vCPUs.
    async fn resume(&self, id: &VmId) -> Result<VmInfo, VmError>;
    /// Stops the VM, gracefully then certainly. Stopping a VM that has
    /// already stopped or failed succeeds with
    /// [`StopOutcome::stopped`] false.
    async fn stop(&self, id: &VmId, options: StopOptions) -> Result<StopOutcome, VmError>;
    /// Takes a full snapshot named `name`.
    async fn snapshot(
        &self,
        id: &VmId,
        name: &SnapshotName,
        options: SnapshotOptions,
    ) -> Result<SnapshotInfo, VmError>;
    /// Restores snapshot `snapshot` into a new VM `id`.
    async fn restore(
        &self,
        id: &VmId,
        snapshot: &SnapshotName,
        options: RestoreOptions,
    ) -> Result<VmInfo, VmError>;
    /// Removes a created, stopped or failed VM.
    async fn destroy(&self, id: &VmId) -> Result<(), VmError>;
    /// Gives VM `old` the name `new` (see [`Manager::rename`]).
    async fn rename(&self, old: &VmId, new: &VmId) -> Result<VmInfo, VmError>;
    /// One VM's info.
    async fn get(&self, id: &VmId) -> Result<VmInfo, VmError>;
    /// Every VM, sorted by id.
    async fn list(&self) -> Vec<VmInfo>;
    /// The last `lines` lines of the console.
    async fn console_tail(&self, id: &VmId, lines: usize) -> Result<Vec<String>, VmError>;

    /// Runs `request` in the guest through its agent, to its end, feeding
    /// it `stdin` (see [`AgentClient::output`](crate::agent::AgentClient::output):
    /// output past the client's limit is dropped and counted). The VM needs
    /// a vsock device ([`VmError::NoVsock`]) and a ready agent.
    async fn exec(
        &self,
        id: &VmId,
        request: ExecRequest,
        stdin: Option<Vec<u8>>,
    ) -> Result<Output, VmError>;
    /// Waits until the VM's agent answers, for at most `timeout`.
    async fn wait_ready(&self, id: &VmId, timeout: Duration) -> Result<(), VmError>;
    /// Forwards a host port to the VM (which must have a network), at
    /// runtime.
    async fn publish(&self, id: &VmId, mapping: PortMapping) -> Result<VmInfo, VmError>;
    /// Stops forwarding a host port to the VM; no error if it was not.
    async fn unpublish(&self, id: &VmId, mapping: PortMapping) -> Result<VmInfo, VmError>;
    /// Every change of the VM's info from now on (`None` once destroyed).
    fn subscribe(&self, id: &VmId) -> Result<watch::Receiver<Option<VmInfo>>, VmError>;

    /// Restores `snapshot` into every VM of `clones` at once, each with its
    /// own options, all or nothing: if one restore fails, the clones that
    /// did come up are stopped and destroyed, and the first error (in the
    /// order of `clones`) is returned. On success the infos are in the
    /// order of `clones`.
    ///
    /// # Cancel safety
    ///
    /// [`Manager`]'s runs in its own task and completes (or undoes itself)
    /// even if this future is dropped. This default implementation is not
    /// cancel safe: dropped midway, it leaves the clones that came up.
    async fn clone_many(
        &self,
        snapshot: &SnapshotName,
        clones: Vec<(VmId, RestoreOptions)>,
    ) -> Result<Vec<VmInfo>, VmError> {
        clone_all(self, snapshot, clones).await
    }
}

/// How long each clone of a failed [`VmProvider::clone_many`] gets to
/// end after SIGTERM before SIGKILL: it was never handed to anyone.
const UNDO_CLONE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// [`VmProvider::clone_many`] on any provider.
pub(crate) async fn clone_all<P: VmProvider + ?Sized>(
    provider: &P,
    snapshot: &SnapshotName,
    clones: Vec<(VmId, RestoreOptions)>,
) -> Result<Vec<VmInfo>, VmError> {
    let restores = clones
        .iter()
        .map(|(id, options)| provider.restore(id, snapshot, options.clone()));
    let results = futures_util::future::join_all(restores).await;
    if !results.iter().any(Result::is_err) {
        return Ok(results.into_iter().flatten().collect());
    }
    // All or nothing. Only the VMs these restores made are removed: a
    // restore refused because its name was taken made nothing.
    for ((id, _), result) in clones.iter().zip(&results) {
        if result.is_ok() {
            let quick = StopOptions {
                graceful: Some(false),
                grace: Some(UNDO_CLONE_GRACE),
            };
            let removed = match provider.stop(id, quick).await {
                Ok(_) => provider.destroy(id).await,
                Err(e) => Err(e),
            };
            if let Err(e) = removed {
                tracing::warn!(vm = %id, error = %e, "cannot remove a clone of a failed clone_many");
            }
        }
    }
    let first_error = results.into_iter().find_map(Result::err);
    Err(first_error.expect("one restore failed"))
}

#[async_trait]
impl VmProvider for Manager {
    async fn create(&self, id: &VmId, spec: VmSpec) -> Result<VmInfo, VmError> {
        Manager::create(self, id, spec).await
    }
    async fn run(&self, id: &VmId, spec: VmSpec) -> Result<VmInfo, VmError> {
        Manager::run(self, id, spec).await
    }
    async fn start(&self, id: &VmId) -> Result<VmInfo, VmError> {
        Manager::start(self, id).await
    }
    async fn pause(&self, id: &VmId) -> Result<VmInfo, VmError> {
        Manager::pause(self, id).await
    }
    async fn resume(&self, id: &VmId) -> Result<VmInfo, VmError> {
        Manager::resume(self, id).await
    }
    async fn stop(&self, id: &VmId, options: StopOptions) -> Result<StopOutcome, VmError> {
        Manager::stop(self, id, options).await
    }
    async fn snapshot(
        &self,
        id: &VmId,
        name: &SnapshotName,
        options: SnapshotOptions,
    ) -> Result<SnapshotInfo, VmError> {
        Manager::snapshot(self, id, name, options).await
    }
    async fn restore(
        &self,
        id: &VmId,
        snapshot: &SnapshotName,
        options: RestoreOptions,
    ) -> Result<VmInfo, VmError> {
        Manager::restore(self, id, snapshot, options).await
    }
    async fn destroy(&self, id: &VmId) -> Result<(), VmError> {
        Manager::destroy(self, id).await
    }
    async fn rename(&self, old: &VmId, new: &VmId) -> Result<VmInfo, VmError> {
        Manager::rename(self, old, new).await
    }
    async fn get(&self, id: &VmId) -> Result<VmInfo, VmError> {
        Manager::get(self, id).await
    }
    async fn list(&self) -> Vec<VmInfo> {
        Manager::list(self).await
    }
    async fn console_tail(&self, id: &VmId, lines: usize) -> Result<Vec<String>, VmError> {
        Manager::console_tail(self, id, lines).await
    }
    async fn clone_many(
        &self,
        snapshot: &SnapshotName,
        clones: Vec<(VmId, RestoreOptions)>,
    ) -> Result<Vec<VmInfo>, VmError> {
        Manager::clone_many(self, snapshot, clones).await
    }
    async fn exec(
        &self,
        id: &VmId,
        request: ExecRequest,
        stdin: Option<Vec<u8>>,
    ) -> Result<Output, VmError> {
        let agent = Manager::agent(self, id).await?;
        agent
            .output(request, stdin)
            .await
            .map_err(|source| agent_error(id, source))
    }
    async fn wait_ready(&self, id: &VmId, timeout: Duration) -> Result<(), VmError> {
        let agent = Manager::agent(self, id).await?;
        agent
            .wait_ready(timeout)
            .await
            .map(drop)
            .map_err(|source| agent_error(id, source))
    }
    async fn publish(&self, id: &VmId, mapping: PortMapping) -> Result<VmInfo, VmError> {
        Manager::publish(self, id, mapping).await
    }
    async fn unpublish(&self, id: &VmId, mapping: PortMapping) -> Result<VmInfo, VmError> {
        Manager::unpublish(self, id, mapping).await
    }
    fn subscribe(&self, id: &VmId) -> Result<watch::Receiver<Option<VmInfo>>, VmError> {
        Manager::subscribe(self, id)
    }
}

fn agent_error(id: &VmId, source: AgentError) -> VmError {
    VmError::Agent {
        id: id.clone(),
        source: Box::new(source),
    }
}

/// What an in-memory VM's agent does with a command: the test's stand-in
/// for the guest. It gets the VM, the request and its stdin, and returns
/// what the process wrote and how it ended.
pub type AgentHandler =
    Arc<dyn Fn(&VmId, &ExecRequest, Option<&[u8]>) -> Output + Send + Sync + 'static>;

/// A [`VmProvider`] that keeps VMs in memory and starts nothing.
///
/// Paths in its [`VmInfo`]s point under a virtual root that is never
/// created. Use [`crash`](Self::crash) to make a VM fail as if its VMM had
/// died, and [`with_agent`](Self::with_agent) to give its guests an agent
/// that runs commands through a callback.
pub struct InMemoryProvider {
    defaults: HostDefaults,
    root: PathBuf,
    vms: StdMutex<HashMap<VmId, Arc<Mutex<Option<VmInfo>>>>>,
    snapshots: StdMutex<HashMap<SnapshotName, SnapshotInfo>>,
    /// Each VM's latest snapshot: the parent of its next diff.
    last_snapshot: StdMutex<HashMap<VmId, SnapshotName>>,
    /// The default network, without devices.
    net: StdMutex<InMemoryNet>,
    /// Each VM's change feed.
    watchers: StdMutex<HashMap<VmId, watch::Sender<Option<VmInfo>>>>,
    /// The files live VMs write to, as the manager keeps them.
    writers: StdMutex<crate::manager::writers::Writers>,
    /// The guests' agent, if the test gave one.
    agent: Option<AgentHandler>,
}

impl std::fmt::Debug for InMemoryProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryProvider")
            .field("defaults", &self.defaults)
            .field("agent", &self.agent.is_some())
            .finish_non_exhaustive()
    }
}

/// The in-memory provider's default network: the manager's allocator and
/// port rules on [`NetworkConfig::default`]'s subnet, and TAP names as the
/// manager derives them, but no device, rule or DNS server.
#[derive(Debug)]
struct InMemoryNet {
    config: NetworkConfig,
    allocator: Allocator,
    attached: BTreeMap<VmId, VmNet>,
}

impl InMemoryNet {
    fn new() -> Self {
        let config = NetworkConfig::default();
        let allocator = Allocator::new(config.subnet, config.gateway)
            .expect("the default network config is valid");
        InMemoryNet {
            config,
            allocator,
            attached: BTreeMap::new(),
        }
    }

    /// Attaches `vm` as the manager would; translated to `guest` when
    /// given (see [`HostNetwork::attach_translated`](crate::net::host::HostNetwork::attach_translated)).
    fn attach(
        &mut self,
        vm: &VmId,
        spec: &NetSpec,
        guest: Option<GuestAddress>,
    ) -> Result<VmNet, VmError> {
        let network = |source| VmError::Network {
            id: vm.clone(),
            source: Box::new(source),
        };
        if let Some(guest) = guest {
            check_translatable(self.allocator.gateway(), spec, guest).map_err(network)?;
        }
        check_ports(&self.attached, vm, &spec.publish).map_err(network)?;
        let mut avoid = translated_guests(&self.attached);
        avoid.extend(guest.map(|g| g.ip));
        let lease = self
            .allocator
            .allocate_avoiding(vm, spec.ip, spec.mac, &avoid)
            .map_err(|e| network(NetError::Ipam(e)))?;
        let tap = tap_name_for_vm(vm, 0, 0);
        let mut net = VmNet::new(
            &self.config,
            self.allocator.gateway(),
            lease,
            tap.clone(),
            Vec::new(),
            spec,
        );
        if spec.netns || guest.is_some() {
            net.netns = Some(VmNetns {
                path: PathBuf::from("/nonexistent/firehost-in-memory/netns").join(vm.as_str()),
                host_port: veth_names_for_tap(&tap).0,
            });
        }
        net.guest = guest;
        self.attached.insert(vm.clone(), net.clone());
        Ok(net)
    }

    fn detach(&mut self, vm: &VmId) {
        self.attached.remove(vm);
        self.allocator.release(vm);
    }

    /// Moves `old`'s attachment and lease to `new`.
    fn rename(&mut self, old: &VmId, new: &VmId) {
        if let Some(net) = self.attached.remove(old) {
            self.attached.insert(new.clone(), net);
        }
        if let Some(lease) = self.allocator.release(old) {
            // Freed a moment ago, so free now: the same address and MAC.
            let _ = self
                .allocator
                .allocate_requested(new, Some(lease.ip), Some(lease.mac));
        }
    }
}

impl InMemoryProvider {
    /// A provider that resolves specs against `defaults`.
    pub fn new(defaults: HostDefaults) -> Self {
        InMemoryProvider {
            defaults,
            root: PathBuf::from("/nonexistent/firehost-in-memory"),
            vms: StdMutex::new(HashMap::new()),
            snapshots: StdMutex::new(HashMap::new()),
            last_snapshot: StdMutex::new(HashMap::new()),
            net: StdMutex::new(InMemoryNet::new()),
            watchers: StdMutex::new(HashMap::new()),
            writers: StdMutex::default(),
            agent: None,
        }
    }

    /// Gives every guest with a vsock device an agent that answers
    /// [`VmProvider::exec`] with `handler` while the VM runs (without one,
    /// agents are never ready, as in a guest without `firehost-agent`).
    ///
    /// ```
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use firehost::agent::{ExecRequest, ExitStatus, Output};
    /// use firehost::{HostDefaults, InMemoryProvider, VmProvider, VmSpec};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let kernel = dir.path().join("vmlinux");
    /// std::fs::write(&kernel, b"")?;
    /// let provider = InMemoryProvider::new(HostDefaults::default()).with_agent(|_vm, req, _stdin| {
    ///     let status = ExitStatus { code: Some(0), ..ExitStatus::default() };
    ///     Output::new(req.argv.join(" ").into_bytes(), Vec::new(), status)
    /// });
    /// let id = "job-1".parse()?;
    /// let spec = VmSpec {
    ///     kernel: Some(kernel),
    ///     vsock: Some(Default::default()),
    ///     ..VmSpec::default()
    /// };
    /// provider.run(&id, spec).await?;
    /// let out = provider.exec(&id, ExecRequest::new(["echo", "hi"]), None).await?;
    /// assert_eq!(out.stdout, b"echo hi");
    /// # Ok(()) }
    /// ```
    pub fn with_agent(
        mut self,
        handler: impl Fn(&VmId, &ExecRequest, Option<&[u8]>) -> Output + Send + Sync + 'static,
    ) -> Self {
        self.agent = Some(Arc::new(handler));
        self
    }

    /// Tells the VM's subscribers its new info (`None`: destroyed).
    fn announce(&self, id: &VmId, info: Option<&VmInfo>) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        match info {
            Some(info) => {
                watchers
                    .entry(id.clone())
                    .or_insert_with(|| watch::channel(None).0)
                    .send_replace(Some(info.clone()));
            }
            None => {
                if let Some(sender) = watchers.remove(id) {
                    sender.send_replace(None);
                }
            }
        }
    }

    /// The agent of a running VM with a vsock device, or why there is none.
    async fn agent_of(&self, id: &VmId) -> Result<AgentHandler, VmError> {
        let vm = self.get(id).await?;
        if vm.vsock.is_none() {
            return Err(VmError::NoVsock { id: id.clone() });
        }
        match &self.agent {
            Some(handler) if vm.state == VmState::Running => Ok(handler.clone()),
            _ => Err(agent_error(id, AgentError::NotReady(Duration::ZERO))),
        }
    }

    fn network(&self) -> std::sync::MutexGuard<'_, InMemoryNet> {
        self.net.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a live VM failed with `exit`, as when its VMM dies.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the change is made at once, under the VM's lock.
    pub async fn crash(&self, id: &VmId, exit: ExitReason) -> Result<VmInfo, VmError> {
        let slot = self.slot(id)?;
        let mut guard = slot.lock().await;
        let vm = guard
            .as_mut()
            .ok_or_else(|| VmError::NotFound { id: id.clone() })?;
        if vm.state.is_live() {
            vm.state = VmState::Failed {
                exit,
                console_tail: Vec::new(),
            };
            vm.pid = None;
            self.lock_writers().release(id);
        }
        self.announce(id, Some(vm));
        Ok(vm.clone())
    }

    fn lock_writers(&self) -> std::sync::MutexGuard<'_, crate::manager::writers::Writers> {
        self.writers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<VmId, Arc<Mutex<Option<VmInfo>>>>> {
        self.vms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot(&self, id: &VmId) -> Result<Arc<Mutex<Option<VmInfo>>>, VmError> {
        self.registry()
            .get(id)
            .cloned()
            .ok_or_else(|| VmError::NotFound { id: id.clone() })
    }

    /// Takes the VM's lock and checks that `op` is allowed in its state.
    async fn locked(
        &self,
        id: &VmId,
        op: Operation,
    ) -> Result<tokio::sync::OwnedMutexGuard<Option<VmInfo>>, VmError> {
        let guard = self.slot(id)?.lock_owned().await;
        let vm = guard
            .as_ref()
            .ok_or_else(|| VmError::NotFound { id: id.clone() })?;
        vm.state.check(op).map_err(|refused| VmError::Transition {
            id: id.clone(),
            refused,
        })?;
        Ok(guard)
    }

    /// Applies `op` to the VM if its state allows it.
    async fn transition(
        &self,
        id: &VmId,
        op: Operation,
        apply: impl FnOnce(&mut VmInfo) + Send,
    ) -> Result<VmInfo, VmError> {
        let mut guard = self.locked(id, op).await?;
        let vm = guard.as_mut().expect("checked by locked()");
        apply(vm);
        self.announce(id, Some(vm));
        Ok(vm.clone())
    }
}

#[async_trait]
impl VmProvider for InMemoryProvider {
    async fn create(&self, id: &VmId, spec: VmSpec) -> Result<VmInfo, VmError> {
        let slot = Arc::new(Mutex::new(None));
        let mut guard = slot.clone().try_lock_owned().expect("new slot is unlocked");
        {
            let mut vms = self.registry();
            if vms.contains_key(id) {
                return Err(VmError::AlreadyExists { id: id.clone() });
            }
            vms.insert(id.clone(), slot);
        }
        let defaults = self.defaults.clone();
        let resolved = tokio::task::spawn_blocking(move || spec.resolve(&defaults))
            .await
            .expect("spec resolution does not panic");
        let spec = match resolved {
            Ok(spec) => spec,
            Err(source) => {
                self.registry().remove(id);
                return Err(VmError::InvalidSpec {
                    id: id.clone(),
                    source,
                });
            }
        };
        if let Err(e) = self.lock_writers().hold_for(id, &spec) {
            self.registry().remove(id);
            return Err(e);
        }
        let net = match &spec.net {
            Some(net_spec) => match self.network().attach(id, net_spec, None) {
                Ok(net) => Some(net),
                Err(e) => {
                    self.lock_writers().release(id);
                    self.registry().remove(id);
                    return Err(e);
                }
            },
            None => None,
        };
        let dir = self.root.join("vms").join(id.as_str());
        let info = VmInfo {
            jail: None,
            busy: false,
            interrupted_snapshot: None,
            own_drives: Vec::new(),
            pool: None,
            vsock: spec.vsock.as_ref().map(|v| VsockInfo {
                uds_path: dir.join(crate::vsock::SOCKET_FILE),
                guest_cid: v.guest_cid,
            }),
            net,
            id: id.clone(),
            state: VmState::Created,
            pid: None,
            api_socket: dir.join("api.sock"),
            dir,
            console_file: None,
            spec,
            created_at_ms: 0,
        };
        *guard = Some(info.clone());
        self.announce(id, Some(&info));
        Ok(info)
    }

    async fn run(&self, id: &VmId, spec: VmSpec) -> Result<VmInfo, VmError> {
        self.create(id, spec).await?;
        self.start(id).await
    }

    async fn start(&self, id: &VmId) -> Result<VmInfo, VmError> {
        self.transition(id, Operation::Start, |vm| vm.state = VmState::Running)
            .await
    }

    async fn pause(&self, id: &VmId) -> Result<VmInfo, VmError> {
        self.transition(id, Operation::Pause, |vm| vm.state = VmState::Paused)
            .await
    }

    async fn resume(&self, id: &VmId) -> Result<VmInfo, VmError> {
        self.transition(id, Operation::Resume, |vm| vm.state = VmState::Running)
            .await
    }

    async fn stop(&self, id: &VmId, _options: StopOptions) -> Result<StopOutcome, VmError> {
        {
            let guard = self.slot(id)?.lock_owned().await;
            let vm = guard
                .as_ref()
                .ok_or_else(|| VmError::NotFound { id: id.clone() })?;
            if !vm.state.is_live() {
                let info = vm.clone();
                drop(guard);
                self.network().detach(id);
                return Ok(StopOutcome {
                    info,
                    stopped: false,
                });
            }
        }
        let stopped = self
            .transition(id, Operation::Stop, |vm| {
                // What a guest that honours Ctrl-Alt-Del, or a VMM that honours
                // SIGTERM, ends with.
                let exit = if vm.state == VmState::Running && vm.spec.graceful_shutdown {
                    ExitReason::Code(0)
                } else {
                    ExitReason::Signal(15)
                };
                vm.state = VmState::Stopped { exit };
            })
            .await?;
        // As the manager: a stopped VM's network and files are released.
        self.network().detach(id);
        self.lock_writers().release(id);
        Ok(StopOutcome {
            info: stopped,
            stopped: true,
        })
    }

    async fn snapshot(
        &self,
        id: &VmId,
        name: &SnapshotName,
        options: SnapshotOptions,
    ) -> Result<SnapshotInfo, VmError> {
        let mut guard = self.locked(id, Operation::Snapshot).await?;
        let vm = guard.as_mut().expect("checked by locked()");
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = self.last_snapshot.lock().unwrap_or_else(|e| e.into_inner());
        let parent = last.get(id).filter(|p| snapshots.contains_key(*p)).cloned();
        if options.diff && options.disks {
            return Err(VmError::DisksNeedFullSnapshot { id: id.clone() });
        }
        if options.diff && parent.is_none() {
            return Err(VmError::NoParentSnapshot { id: id.clone() });
        }
        if snapshots.contains_key(name) {
            return Err(VmError::SnapshotExists {
                name: name.to_string(),
            });
        }
        // The manager's refusals; with no guest here to fill the balloon,
        // it holds nothing at the pause.
        let reclaimed = match &options.reclaim {
            None => None,
            Some(reclaim) => {
                let refused = |source| VmError::InvalidUpdate {
                    id: id.clone(),
                    source,
                };
                if vm.state != VmState::Running {
                    return Err(refused(crate::manager::UpdateError::NotRunning));
                }
                let balloon = vm
                    .spec
                    .balloon
                    .ok_or(refused(crate::manager::UpdateError::NoBalloon))?;
                if balloon.stats_interval_s == 0 {
                    return Err(refused(crate::manager::UpdateError::NoBalloonStats));
                }
                let target_mib = reclaim
                    .amount_mib
                    .ok_or(refused(crate::manager::UpdateError::NoFreeMemoryReport))?;
                Some(crate::snapshot::Reclaimed {
                    target_mib: target_mib.min(vm.spec.mem_mib),
                    balloon_mib: 0,
                })
            }
        };
        if vm.state == VmState::Running && !options.resume {
            vm.state = VmState::Paused;
            self.announce(id, Some(vm));
        }
        let info = SnapshotInfo {
            reclaimed,
            name: name.clone(),
            dir: self.root.join("snapshots").join(name.as_str()),
            manifest: SnapshotManifest {
                format: MANIFEST_FORMAT,
                name: name.clone(),
                source_vm: id.clone(),
                kind: if options.diff {
                    SnapshotKind::Diff
                } else {
                    SnapshotKind::Full
                },
                parent: if options.diff { parent } else { None },
                firecracker_version: "in-memory".to_owned(),
                spec: vm.spec.clone(),
                network: vm.net.iter().map(NetworkLayout::from).collect(),
                vsock: vm.vsock.as_ref().map(|v| VsockLayout {
                    guest_cid: v.guest_cid,
                    uds_path: v.uds_path.clone(),
                    agent_token: None,
                }),
                source_chroot: None,
                drives: Vec::new(),
                disks: Vec::new(),
                vmstate_bytes: 0,
                memory_bytes: u64::from(vm.spec.mem_mib) << 20,
                files: Vec::new(),
                created_at_ms: 0,
                host_cpu: None,
            },
        };
        snapshots.insert(name.clone(), info.clone());
        last.insert(id.clone(), name.clone());
        Ok(info)
    }

    async fn restore(
        &self,
        id: &VmId,
        snapshot: &SnapshotName,
        options: RestoreOptions,
    ) -> Result<VmInfo, VmError> {
        let taken = self
            .snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(snapshot)
            .cloned();
        let Some(taken) = taken else {
            return Err(VmError::SnapshotBundle {
                name: snapshot.to_string(),
                source: Box::new(
                    crate::snapshot::BundleError::NotFound {
                        dir: self.root.join("snapshots").join(snapshot.as_str()),
                    }
                    .into(),
                ),
            });
        };
        if taken.manifest.kind != SnapshotKind::Full {
            return Err(VmError::SnapshotIsDiff {
                name: snapshot.to_string(),
            });
        }
        let jailed = taken.manifest.spec.jail.is_some();
        let mut spec = restored_spec(&taken.manifest.spec, &options, jailed).map_err(|source| {
            VmError::Jail {
                id: id.clone(),
                source: Box::new(source),
            }
        })?;
        // As the manager: an unjailed clone writes to copies of its own, in
        // its directory (named here; nothing is written).
        if !jailed {
            let dir = self.root.join("vms").join(id.as_str());
            name_own_copies(&mut spec, &dir);
        }
        let mut vms = self.registry();
        if vms.contains_key(id) {
            return Err(VmError::AlreadyExists { id: id.clone() });
        }
        let wanted = restored_net(&taken.manifest, &options).map_err(|e| VmError::Network {
            id: id.clone(),
            source: Box::new(e),
        })?;
        let net = match wanted {
            Some(wanted) => Some(self.network().attach(id, &wanted.spec, wanted.guest)?),
            None => None,
        };
        self.last_snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), snapshot.clone());
        let dir = self.root.join("vms").join(id.as_str());
        let info = VmInfo {
            jail: None,
            busy: false,
            interrupted_snapshot: None,
            own_drives: Vec::new(),
            pool: None,
            vsock: taken.manifest.vsock.as_ref().map(|v| VsockInfo {
                uds_path: dir.join(crate::vsock::SOCKET_FILE),
                guest_cid: v.guest_cid,
            }),
            net,
            id: id.clone(),
            state: if options.resume {
                VmState::Running
            } else {
                VmState::Paused
            },
            pid: None,
            api_socket: dir.join("api.sock"),
            dir,
            console_file: None,
            spec,
            created_at_ms: 0,
        };
        vms.insert(id.clone(), Arc::new(Mutex::new(Some(info.clone()))));
        drop(vms);
        self.announce(id, Some(&info));
        Ok(info)
    }

    async fn destroy(&self, id: &VmId) -> Result<(), VmError> {
        let mut guard = self.locked(id, Operation::Destroy).await?;
        *guard = None;
        self.network().detach(id);
        self.lock_writers().release(id);
        self.registry().remove(id);
        self.announce(id, None);
        Ok(())
    }

    async fn rename(&self, old: &VmId, new: &VmId) -> Result<VmInfo, VmError> {
        let slot = self.slot(old)?;
        let mut guard = slot
            .clone()
            .try_lock_owned()
            .map_err(|_| VmError::MidOperation { id: old.clone() })?;
        let vm = guard
            .as_mut()
            .filter(|vm| vm.id == *old)
            // Gone, or renamed by another caller in the meantime.
            .ok_or_else(|| VmError::NotFound { id: old.clone() })?;
        if old == new {
            return Ok(vm.clone());
        }
        {
            let mut vms = self.registry();
            if vms.contains_key(new) {
                return Err(VmError::AlreadyExists { id: new.clone() });
            }
            vms.remove(old);
            vms.insert(new.clone(), slot.clone());
        }
        // Here the name is the key: whatever goes by it moves.
        vm.id = new.clone();
        self.network().rename(old, new);
        self.lock_writers().rename(old, new);
        let mut last = self.last_snapshot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(snapshot) = last.remove(old) {
            last.insert(new.clone(), snapshot);
        }
        drop(last);
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(feed) = watchers.remove(old) {
            watchers.insert(new.clone(), feed);
        }
        drop(watchers);
        self.announce(new, Some(vm));
        Ok(vm.clone())
    }

    async fn get(&self, id: &VmId) -> Result<VmInfo, VmError> {
        let slot = self.slot(id)?;
        let guard = slot.lock().await;
        guard
            .clone()
            .ok_or_else(|| VmError::NotFound { id: id.clone() })
    }

    async fn list(&self) -> Vec<VmInfo> {
        let slots: Vec<_> = self.registry().values().cloned().collect();
        let mut infos = Vec::new();
        for slot in slots {
            if let Some(info) = slot.lock().await.clone() {
                infos.push(info);
            }
        }
        infos.sort_by(|a, b| a.id.cmp(&b.id));
        infos
    }

    async fn console_tail(&self, id: &VmId, _lines: usize) -> Result<Vec<String>, VmError> {
        self.get(id).await.map(|_| Vec::new())
    }

    async fn exec(
        &self,
        id: &VmId,
        request: ExecRequest,
        stdin: Option<Vec<u8>>,
    ) -> Result<Output, VmError> {
        let handler = self.agent_of(id).await?;
        // As the real client: a request over the frame limit never leaves.
        let message = firehost_proto::ClientMessage::Exec(request.clone());
        crate::agent::check_request_size(&message).map_err(|e| agent_error(id, e))?;
        Ok(handler(id, &request, stdin.as_deref()))
    }

    async fn wait_ready(&self, id: &VmId, timeout: Duration) -> Result<(), VmError> {
        match self.agent_of(id).await {
            Err(VmError::Agent { .. }) => Err(agent_error(id, AgentError::NotReady(timeout))),
            other => other.map(drop),
        }
    }

    async fn publish(&self, id: &VmId, mapping: PortMapping) -> Result<VmInfo, VmError> {
        self.change_ports(id, mapping, true).await
    }

    async fn unpublish(&self, id: &VmId, mapping: PortMapping) -> Result<VmInfo, VmError> {
        self.change_ports(id, mapping, false).await
    }

    fn subscribe(&self, id: &VmId) -> Result<watch::Receiver<Option<VmInfo>>, VmError> {
        let watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        watchers
            .get(id)
            .map(watch::Sender::subscribe)
            .ok_or_else(|| VmError::NotFound { id: id.clone() })
    }
}

impl InMemoryProvider {
    /// Publishes (`add`) or unpublishes a port of a VM on the network, with
    /// the manager's checks.
    async fn change_ports(
        &self,
        id: &VmId,
        mapping: PortMapping,
        add: bool,
    ) -> Result<VmInfo, VmError> {
        let slot = self.slot(id)?;
        let mut guard = slot.lock().await;
        let vm = guard
            .as_mut()
            .ok_or_else(|| VmError::NotFound { id: id.clone() })?;
        let network = |source| VmError::Network {
            id: id.clone(),
            source: Box::new(source),
        };
        let mut net = self.network();
        if !net.attached.contains_key(id) {
            return Err(network(NetError::NotAttached { vm: id.clone() }));
        }
        if add {
            check_ports(&net.attached, id, &[mapping]).map_err(network)?;
        }
        let attached = net.attached.get_mut(id).expect("checked above");
        if !add {
            attached.published.retain(|m| *m != mapping);
        } else if !attached.published.contains(&mapping) {
            attached.published.push(mapping);
        }
        vm.net = Some(attached.clone());
        drop(net);
        self.announce(id, Some(vm));
        Ok(vm.clone())
    }
}
