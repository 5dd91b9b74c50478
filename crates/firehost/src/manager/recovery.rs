//! Recovery: what a manager does with the VMs an earlier manager left in
//! its state directory.
//!
//! The rule above all: **a VMM whose process is alive is never killed
//! because of what a manager cannot read or reach.** Each `vms/<id>/` is
//! loaded as follows:
//!
//! - a committed record of a live VM: the process must still be the one
//!   recorded (pid, start time, then held by a pidfd); the VM is adopted in
//!   its recorded state, with no API round trip. Its state is taken from
//!   Firecracker the first time the VM is used (see [`super::verify`]); a
//!   VMM that does not answer then is reported busy, never killed.
//! - a live VM whose process is gone: marked failed (or stopped, if a stop
//!   was under way), its socket removed; the record and console stay for
//!   post-mortem until destroyed. So is a VM whose memory was served by a
//!   page server that died with its manager: it would hang on its next page
//!   fault, so it is killed.
//! - stopped or failed VMs: loaded as they are.
//! - a record that cannot be read (corrupt, edited, or written by a newer
//!   firehost): the VM is quarantined (see [`super::quarantine`]): its
//!   process, files and network are left alone.
//! - a record of a create or restore that never committed, or a directory
//!   with no record at all (a crash between spawning the VMM and the first
//!   record write): the VM never existed for any caller. Its VMM (found by
//!   the recorded pid and start time, or by its `--api-sock` argument) is
//!   killed and the directory removed.
//!
//! When every VM is loaded, jails this state directory made that no record
//! knows are reaped, and the default network is reconciled with the VMs that
//! are live (see [`crate::net::host`]) — once per manager.
//!
//! How much of this happens at open is [`Recovery`]: everything, nothing
//! until a VM is named (then that VM), or nothing that changes the host. A
//! read-only load only *sees* a VMM running (its `/proc/<pid>/stat` names
//! the recorded start time and is not a zombie's) and holds it by a pidfd
//! once the VM is used (see [`super::verify`]): listing a thousand VMs then
//! costs a record read and a `/proc` read each.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::process::Signal;

use super::memory_server::MemoryServer;
use super::quarantine::Quarantined;
use super::verify::Verifier;
use super::{Recovery, Shared, Slot, Vm, VmError, remove_file_if_present, watch_for_crash};
use crate::VmId;
use crate::api::ApiClient;
use crate::console::ConsoleRing;
use crate::net::host::HostNetwork;
use crate::record::{Durability, RecordError, VmRecord};
use crate::state::{ExitReason, VmState};
use crate::undo::remove_dir_if_present;
use crate::vmm::process::FoundProcess;
use crate::vmm::{VmmProcess, find_by_api_socket};

/// How far a manager has loaded its state directory.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Every VM directory has been loaded.
    all: bool,
    /// The network has been reconciled with the live VMs.
    network: bool,
}

impl Shared {
    /// The slot of `id`, loading the VM from disk the first time it is
    /// named (with [`Recovery::Lazy`] and [`Recovery::ReadOnly`]).
    pub(super) async fn find(self: &Arc<Self>, id: &VmId) -> Result<Arc<Slot>, VmError> {
        if let Some(found) = self.known(id) {
            return found;
        }
        let progress = self.loaded.lock().await;
        if let Some(found) = self.known(id) {
            return found;
        }
        if !progress.all {
            // The VM whose key is the name, and the one the name's link
            // points at (a renamed VM's; see `names`): the records say
            // which answers to the name.
            let mut keys = vec![id.clone()];
            keys.extend(super::names::key_of(&self.names_dir, id));
            for key in keys {
                let dir = self.vm_dir(&key);
                if !self.key_loaded(&key) && dir.is_dir() {
                    self.load(&key, dir).await;
                }
            }
        }
        drop(progress);
        if let Some(found) = self.known(id) {
            return found;
        }
        // A renamed VM whose record became unreadable is quarantined under
        // its key; its name still leads there.
        match super::names::key_of(&self.names_dir, id).and_then(|key| {
            self.lock_quarantine()
                .get(&key)
                .map(|q| q.info.reason.clone())
        }) {
            Some(reason) => Err(VmError::Unreadable {
                id: id.clone(),
                reason,
            }),
            None => Err(VmError::NotFound { id: id.clone() }),
        }
    }

    /// The slot of the VM whose key is `key` (see [`super::names`]),
    /// loading it from `vms/<key>` first if need be.
    pub(super) async fn find_by_key(self: &Arc<Self>, key: &VmId) -> Result<Arc<Slot>, VmError> {
        let by_key = |shared: &Self| {
            shared
                .lock_registry()
                .values()
                .find(|slot| slot.key == *key)
                .cloned()
        };
        if let Some(slot) = by_key(self) {
            return Ok(slot);
        }
        let progress = self.loaded.lock().await;
        if !progress.all && by_key(self).is_none() {
            let dir = self.vm_dir(key);
            if dir.is_dir() && !self.lock_quarantine().contains_key(key) {
                self.load(key, dir).await;
            }
        }
        drop(progress);
        if let Some(slot) = by_key(self) {
            return Ok(slot);
        }
        match self.lock_quarantine().get(key) {
            Some(q) => Err(VmError::Unreadable {
                id: key.clone(),
                reason: q.info.reason.clone(),
            }),
            None => Err(VmError::NotFound { id: key.clone() }),
        }
    }

    /// Fails with [`VmError::AlreadyExists`] if `id` names a VM, readable
    /// or not, loaded or still only on disk.
    pub(super) async fn check_free(self: &Arc<Self>, id: &VmId) -> Result<(), VmError> {
        match self.find(id).await {
            Ok(_) | Err(VmError::Unreadable { .. }) => {
                Err(VmError::AlreadyExists { id: id.clone() })
            }
            Err(VmError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Loads what a new VM needs to know of the others: with a network,
    /// every live VM's address and the network reconciled; with a jail,
    /// every live VM's uid.
    pub(super) async fn prepare_for(self: &Arc<Self>, spec: &crate::spec::ResolvedSpec) {
        let jailed = super::jailed::jail_spec_of(spec, self.config.jail.as_ref()).is_some();
        if spec.net.is_some() || jailed {
            self.network().await;
        }
    }

    /// What the registry or the quarantine says of `id`, if either knows
    /// it.
    fn known(&self, id: &VmId) -> Option<Result<Arc<Slot>, VmError>> {
        if let Some(slot) = self.lock_registry().get(id) {
            return Some(Ok(slot.clone()));
        }
        self.lock_quarantine().get(id).map(|q| {
            Err(VmError::Unreadable {
                id: id.clone(),
                reason: q.info.reason.clone(),
            })
        })
    }

    /// The default network, reconciled with every live VM first (once per
    /// manager): what allocating an address or removing a TAP needs.
    pub(super) async fn network(self: &Arc<Self>) -> &HostNetwork {
        let mut progress = self.loaded.lock().await;
        if !progress.all {
            self.load_rest().await;
            progress.all = true;
        }
        if !progress.network {
            self.reconcile_network().await;
            progress.network = true;
        }
        &self.net
    }

    /// What [`super::verify`] needs of the manager, without holding it.
    pub(super) fn verifier(&self) -> Verifier {
        Verifier {
            probe: self.config.timeouts.probe,
            request: self.config.timeouts.request,
            snapshots_dir: self.snapshots_dir.clone(),
            intents_dir: self.intents_dir.clone(),
            read_only: self.config.recovery == Recovery::ReadOnly,
        }
    }

    fn read_only(&self) -> bool {
        self.config.recovery == Recovery::ReadOnly
    }

    /// Loads every VM directory not loaded yet.
    async fn load_rest(self: &Arc<Self>) {
        let entries = match std::fs::read_dir(&self.vms_dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::error!(dir = ?self.vms_dir, error = %e, "cannot list the VMs");
                return;
            }
        };
        let mut unknown = Vec::new();
        let loaded = self.loaded_keys();
        for entry in entries.flatten() {
            let dir = entry.path();
            let Some(id) = entry.file_name().to_str().and_then(|n| VmId::new(n).ok()) else {
                tracing::warn!(dir = ?dir, "ignoring a directory that is not named like a VM");
                continue;
            };
            if !loaded.contains(&id) {
                unknown.push((id, dir));
            }
        }
        // The records and the processes they name are read on the blocking
        // pool in batches, a few in flight at once, and each batch is placed
        // while the next ones are read: reading and placing overlap, and no
        // more threads are woken than there are cores to run them.
        let mut batches: std::collections::VecDeque<Vec<(VmId, PathBuf)>> = unknown
            .chunks(READ_BATCH)
            .map(<[(VmId, PathBuf)]>::to_vec)
            .collect();
        let mut in_flight = std::collections::VecDeque::new();
        let look_only = self.read_only();
        loop {
            while in_flight.len() < READERS
                && let Some(batch) = batches.pop_front()
            {
                in_flight.push_back(tokio::task::spawn_blocking(move || {
                    batch
                        .into_iter()
                        .map(|(id, dir)| read_vm(id, dir, look_only))
                        .collect::<Vec<_>>()
                }));
            }
            let Some(reader) = in_flight.pop_front() else {
                break;
            };
            let read = reader
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            for found in read {
                self.place(found).await;
            }
        }
        if !self.read_only() {
            self.remove_stale_name_links();
            let known_jails: Vec<PathBuf> = self.known_jail_dirs();
            let spared: Vec<VmId> = self.lock_quarantine().keys().cloned().collect();
            super::jailed::reap_orphans(self, &known_jails, &spared).await;
        }
    }

    /// Whether `id` is a loaded VM with a readable record.
    pub(super) fn known_vm(&self, id: &VmId) -> bool {
        self.lock_registry().contains_key(id)
    }

    /// Whether the VM whose key is `key` is loaded, quarantined or being
    /// made (without collecting every key, as [`loaded_keys`](Self::loaded_keys) does).
    fn key_loaded(&self, key: &VmId) -> bool {
        self.lock_quarantine().contains_key(key)
            || self.lock_registry().values().any(|slot| slot.key == *key)
    }

    /// The keys of the VMs loaded, quarantined or being made.
    fn loaded_keys(&self) -> std::collections::HashSet<VmId> {
        let mut keys: std::collections::HashSet<VmId> = self
            .lock_registry()
            .values()
            .map(|s| s.key.clone())
            .collect();
        keys.extend(self.lock_quarantine().keys().cloned());
        keys
    }

    /// Removes the name links no loaded VM answers to (left by a rename
    /// or destroy a crash cut short: see [`super::names`]). Every VM is
    /// loaded by now.
    fn remove_stale_name_links(&self) {
        let registry = self.lock_registry();
        for (name, key) in super::names::all(&self.names_dir) {
            let current = VmId::new(&name)
                .ok()
                .and_then(|n| registry.get(&n).map(|slot| slot.key.clone()));
            let answers = matches!((&current, &key), (Some(c), Some(k)) if c == k);
            if !answers {
                tracing::info!(name = %name, "removing a name link no VM answers to");
                let _ = std::fs::remove_file(self.names_dir.join(&name));
            }
        }
    }

    /// The jail directories that records (readable or salvaged) know.
    pub(super) fn known_jail_dirs(&self) -> Vec<PathBuf> {
        let slots: Vec<Arc<Slot>> = self.lock_registry().values().cloned().collect();
        let mut jails: Vec<PathBuf> = slots
            .iter()
            .filter_map(|slot| slot.info())
            .filter_map(|info| info.jail.map(|j| j.jail_dir().to_owned()))
            .collect();
        jails.extend(
            self.lock_quarantine()
                .values()
                .filter_map(|q| q.salvaged.jail.as_ref().map(|j| j.jail_dir().to_owned())),
        );
        jails
    }

    /// Makes the host's network match the live VMs, sparing quarantined
    /// ones (their network, where the record still shows it, counts as
    /// live).
    async fn reconcile_network(&self) {
        if self.read_only() {
            return;
        }
        let slots: Vec<Arc<Slot>> = self.lock_registry().values().cloned().collect();
        let mut live: Vec<_> = slots
            .iter()
            .filter_map(|slot| slot.info().map(|info| (slot.key.clone(), info)))
            .filter(|(_, info)| info.pid.is_some())
            .filter_map(|(key, info)| info.net.map(|net| (key, net)))
            .collect();
        let spared: Vec<VmId> = {
            let quarantine = self.lock_quarantine();
            live.extend(
                quarantine
                    .values()
                    .filter_map(|q| q.salvaged.net.clone().map(|n| (q.info.id.clone(), n))),
            );
            quarantine.keys().cloned().collect()
        };
        self.net.reconcile(live, &spared).await;
    }

    /// Loads one VM directory into the registry or the quarantine, or
    /// reaps it.
    async fn load(self: &Arc<Self>, id: &VmId, dir: PathBuf) {
        let (id, look_only) = (id.clone(), self.read_only());
        let found = tokio::task::spawn_blocking(move || read_vm(id, dir, look_only))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        self.place(found).await;
    }

    /// Puts a VM read from its directory in the registry or the
    /// quarantine, or reaps it.
    async fn place(self: &Arc<Self>, found: ReadVm) {
        let ReadVm {
            id,
            dir,
            record,
            process,
            seen,
        } = found;
        let id = &id;
        match record {
            Ok(record) if record.id != *id => {
                let reason = super::UnreadableReason::Malformed {
                    detail: format!("it names VM {}", record.id),
                };
                self.quarantine(id, dir, reason).await;
            }
            Ok(record) if record.committed => {
                let vm = adopt(self, record, dir, process, seen).await;
                self.install(vm);
            }
            Ok(record) => {
                if self.read_only() {
                    return;
                }
                tracing::info!(vm = %id, "reaping a VM whose create never completed");
                kill_recorded(record.pid, record.start_time).await;
                if let Some(jail) = &record.jail
                    && let Err(e) = super::jailed::remove_owned(jail, &self.vms_dir)
                {
                    tracing::warn!(vm = %id, error = %e, "cannot remove the jail of a VM never made");
                }
                self.reap_dir(id, &dir).await;
            }
            Err(RecordError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                if self.read_only() {
                    return;
                }
                tracing::warn!(vm = %id, "reaping a VM directory without a record");
                self.reap_dir(id, &dir).await;
            }
            Err(e) => {
                let reason = match e {
                    RecordError::Malformed { source, .. } => super::UnreadableReason::Malformed {
                        detail: source.to_string(),
                    },
                    RecordError::Invalid { why, .. } => {
                        super::UnreadableReason::Malformed { detail: why }
                    }
                    RecordError::UnknownFormat { found, .. } => {
                        super::UnreadableReason::NewerFormat {
                            found,
                            supported: crate::record::RECORD_FORMAT,
                        }
                    }
                    RecordError::Io { source, .. } => super::UnreadableReason::Io {
                        detail: source.to_string(),
                    },
                };
                self.quarantine(id, dir, reason).await;
            }
        }
    }

    async fn quarantine(&self, id: &VmId, dir: PathBuf, reason: super::UnreadableReason) {
        tracing::error!(vm = %id, %reason, "the VM's record is unreadable: leaving the VM alone");
        let quarantined = Quarantined::find(id.clone(), dir, reason).await;
        self.lock_quarantine().insert(id.clone(), quarantined);
    }

    /// Puts an adopted VM in the registry and watches it.
    fn install(self: &Arc<Self>, vm: Vm) {
        let (id, name) = (vm.record.id.clone(), vm.record.name.clone());
        if let Some(jail) = &vm.record.jail
            && vm.process.is_some()
        {
            self.uids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .hold(jail.uid, &id);
        }
        if vm.process.is_some()
            && vm.record.jail.is_none()
            && let Err(e) = self.hold_known_writes(&id, &vm.record.spec)
        {
            // Both VMs run already: nothing to refuse, but say so.
            tracing::warn!(vm = %id, error = %e, "two live VMs write to one file");
        }
        let interrupted = vm.record.pending_snapshot.is_some() && vm.process.is_some();
        let process = vm.process.clone();
        let slot = Arc::new(Slot::new(id.clone()));
        slot.publish(Some(&vm));
        // A new slot is unlocked.
        if let Ok(mut guard) = slot.vm.clone().try_lock_owned() {
            *guard = Some(vm);
        }
        // A read-only manager writes nothing, a failure record included.
        if let Some(process) = process
            && !self.read_only()
        {
            watch_for_crash(self, slot.clone(), process);
        }
        if interrupted && !self.read_only() {
            super::verify::finish_in_background(self, slot.clone());
        }
        let mut registry = self.lock_registry();
        match registry.get(&name) {
            // Two records cannot claim one name through this manager (a
            // rename checks, and links the name first); say so if a hand
            // edit did, and keep the VM that was there.
            Some(other) if other.key != id => {
                tracing::error!(vm = %id, name = %name, other = %other.key, "two VMs are named alike; the second is not listed under the name");
            }
            _ => {
                registry.insert(name, slot);
            }
        }
    }

    /// Kills every VMM still serving `dir/api.sock`, then removes `dir`
    /// and the VM's leases on snapshots.
    async fn reap_dir(&self, id: &VmId, dir: &Path) {
        let socket = dir.join(super::launch::API_SOCKET);
        for pid in find_by_api_socket(&socket) {
            if let Ok(Some(process)) = VmmProcess::attach(pid, start_time_of(pid)) {
                kill(&process).await;
            }
        }
        let owned = dir.to_owned();
        let _ = tokio::task::spawn_blocking(move || remove_dir_if_present(&owned)).await;
        let store = self.store();
        let vm = id.clone();
        let _ = tokio::task::spawn_blocking(move || store.release_all(&vm)).await;
    }
}

/// Loads every VM not loaded yet; unless the manager is read-only, reaps
/// what dead and half-made VMs left and reconciles the network. Once per
/// manager: later calls return at once.
pub(super) async fn load_all(shared: &Arc<Shared>) {
    let mut progress = shared.loaded.lock().await;
    if !progress.all {
        shared.load_rest().await;
        progress.all = true;
    }
    if !progress.network && !shared.read_only() {
        shared.reconcile_network().await;
        progress.network = true;
    }
}

/// Settles the operations that an earlier manager left under way (see
/// [`super::intent`]).
pub(super) async fn settle_intents(shared: &Arc<Shared>) {
    use super::intent::{self, Intent};
    for (id, what) in intent::pending(&shared.intents_dir) {
        tracing::info!(vm = %id, intent = ?what, "settling an operation an earlier manager left under way");
        // Intents go by the VM's key (see `names`).
        let found = shared.find_by_key(&id).await;
        match (what, found) {
            (Some(Intent::Destroy), Ok(slot)) => {
                let guard = slot.vm.clone().lock_owned().await;
                if guard.is_some()
                    && let Err(e) = super::ops::remove(shared, guard).await
                {
                    // Left for the next manager: the intent stays.
                    tracing::error!(vm = %id, error = %e, "cannot finish an interrupted destroy");
                    continue;
                }
            }
            (Some(Intent::Rename), Ok(slot)) => {
                let mut guard = slot.vm.lock().await;
                let Some(vm) = guard.as_mut() else { continue };
                if vm.process.is_some()
                    && let Err(e) = super::verify::verify(&shared.verifier(), vm).await
                {
                    tracing::warn!(vm = %id, error = %e, "cannot reach the VMM of a VM whose rename was cut short");
                }
                super::rename::settle(shared, vm).await;
                slot.publish(Some(vm));
            }
            (Some(Intent::Devices), Ok(slot)) => {
                let mut guard = slot.vm.lock().await;
                let Some(vm) = guard.as_mut() else { continue };
                if vm.process.is_some()
                    && let Err(e) = super::verify::verify(&shared.verifier(), vm).await
                {
                    tracing::warn!(vm = %id, error = %e, "cannot reach the VMM of a VM whose device change was cut short");
                }
                let swap = intent::detail(&shared.intents_dir, &id)
                    .and_then(|d| serde_json::from_str(&d).ok());
                super::update::settle(vm, swap).await;
                slot.publish(Some(vm));
            }
            (Some(Intent::Snapshot), Ok(slot)) => {
                let mut guard = slot.vm.lock().await;
                let Some(vm) = guard.as_mut() else { continue };
                if vm.record.pending_snapshot.is_some() && vm.process.is_some() {
                    // One try now (a short-lived manager may not live to
                    // see the background one); verify ends the intent once
                    // the VMM answers. A busy VMM is left for later.
                    let outcome = super::verify::verify(&shared.verifier(), vm).await;
                    slot.publish(Some(vm));
                    if let Err(e) = outcome
                        && !matches!(e, VmError::Busy { .. })
                    {
                        tracing::error!(vm = %id, error = %e, "cannot settle an interrupted snapshot");
                    }
                    continue;
                }
            }
            _ => {}
        }
        intent::end(&shared.intents_dir, &id);
    }
}

fn start_time_of(pid: i32) -> u64 {
    crate::vmm::process::read_start_time(pid).unwrap_or(0)
}

async fn kill_recorded(pid: Option<i32>, start_time: Option<u64>) {
    if let (Some(pid), Some(start)) = (pid, start_time)
        && let Ok(Some(process)) = VmmProcess::attach(pid, start)
    {
        kill(&process).await;
    }
}

pub(super) async fn kill(process: &VmmProcess) {
    let _ = process.signal(Signal::KILL);
    if process
        .wait_timeout(Duration::from_secs(10))
        .await
        .is_none()
    {
        tracing::error!(pid = process.pid(), "VMM survived SIGKILL during recovery");
    }
}

/// How many VM directories one blocking task reads when many are loaded:
/// small enough that the first are placed while the rest are read.
const READ_BATCH: usize = 32;
/// How many such tasks run at once: more than this machine's two cores,
/// because most of their time is spent in system calls (measured: 4 beat 2
/// by about a fifth at 1,000 VMs).
const READERS: usize = 4;

/// A VM directory as read from disk: its record, and the process the
/// record names if that still runs.
struct ReadVm {
    id: VmId,
    dir: PathBuf,
    record: Result<VmRecord, RecordError>,
    process: Option<FoundProcess>,
    /// A VMM seen running by a read-only load (pid, start time).
    seen: Option<(i32, u64)>,
}

/// Reads `dir`'s record and finds its VMM (blocking). With `look_only`,
/// the VMM is only seen running (one `/proc` read), not held.
fn read_vm(id: VmId, dir: PathBuf, look_only: bool) -> ReadVm {
    let record = VmRecord::read(&dir);
    let (mut process, mut seen) = (None, None);
    if let Ok(r) = &record
        && r.committed
        && r.state.is_live()
        && let (Some(pid), Some(start)) = (r.pid, r.start_time)
    {
        if look_only {
            seen = FoundProcess::is_running(pid, start).then_some((pid, start));
        } else {
            process = FoundProcess::find(pid, start).ok().flatten();
        }
    }
    ReadVm {
        id,
        dir,
        record,
        process,
        seen,
    }
}

/// Builds the live view of a recorded VM: re-attached to its VMM if the
/// recorded process still runs (`found`; no API round trip), else marked
/// failed and cleaned up (unless the manager is read-only).
async fn adopt(
    shared: &Shared,
    mut record: VmRecord,
    dir: PathBuf,
    found: Option<FoundProcess>,
    seen: Option<(i32, u64)>,
) -> Vm {
    let read_only = shared.read_only();
    let mut vm = Vm {
        record: record.clone(),
        dir,
        process: None,
        api: None,
        ring: ConsoleRing::new(shared.config.console_lines),
        page_server: None,
        verified: true,
        busy: false,
        seen: None,
    };
    if !record.state.is_live() {
        return vm;
    }
    let process = found.map(FoundProcess::watch);
    // A VM whose memory a helper serves lives on with it; so does one whose
    // helper detached before it exited. An in-process server died with the
    // manager that ran it.
    let mut memory_whole = !record.page_server_attached;
    if let (true, Some(helper)) = (record.page_server_attached, &record.page_server_helper) {
        let socket = MemoryServer::socket_of(&record, &vm.dir);
        if let Some(server) = MemoryServer::adopt(helper, socket.clone()) {
            vm.page_server = Some(server);
            memory_whole = true;
        } else if MemoryServer::detached_before(&socket) {
            record.page_server_attached = false;
            record.page_server_helper = None;
            memory_whole = true;
        }
    }
    let new_state = match process {
        Some(process) if !memory_whole && !read_only => {
            tracing::warn!(vm = %record.id, "VM's memory was served by a page server that is gone; killing it");
            kill(&process).await;
            let _ = remove_file_if_present(&record.api_socket);
            failed(&vm, shared.config.console_lines).await
        }
        Some(process) => {
            vm.api = Some(Arc::new(ApiClient::with_timeout(
                &record.api_socket,
                shared.config.timeouts.request,
            )));
            vm.process = Some(process);
            vm.verified = false;
            record.state.clone()
        }
        // Seen running by a read-only load: held once the VM is used.
        None if seen.is_some() => {
            vm.api = Some(Arc::new(ApiClient::with_timeout(
                &record.api_socket,
                shared.config.timeouts.request,
            )));
            vm.seen = seen;
            vm.verified = false;
            record.state.clone()
        }
        None if record.stop_requested => {
            tracing::info!(vm = %record.id, "VMM exited during a stop while no manager was watching");
            VmState::Stopped {
                exit: ExitReason::Unknown,
            }
        }
        None => {
            tracing::info!(vm = %record.id, "VMM exited while no manager was watching");
            failed(&vm, shared.config.console_lines).await
        }
    };
    if read_only {
        record.state = new_state;
        vm.record = record;
        return vm;
    }
    if !new_state.is_live() {
        let _ = remove_file_if_present(&record.api_socket);
        // Its helper ends with the VMM; make sure it has.
        if let Some(server) = vm.page_server.take() {
            server.retire(&record.id, None).await;
        }
        if let Some(jail) = &record.jail
            && let Err(e) = crate::jail::cgroup::remove_dirs(&jail.cgroups)
        {
            tracing::warn!(vm = %record.id, error = %e, "cannot remove a dead VM's cgroups");
        }
        record.stop_requested = false;
    }
    let server_gone = record.page_server_attached && vm.page_server.is_none();
    if server_gone {
        record.page_server_attached = false;
        record.page_server_helper = None;
    }
    record.state = new_state;
    if record != vm.record {
        vm.record = record;
        if let Err(e) = vm.persist(Durability::Synced).await {
            tracing::error!(vm = %vm.record.id, error = %e, "cannot update the record during recovery");
        }
    }
    vm
}

async fn failed(vm: &Vm, console_lines: usize) -> VmState {
    VmState::Failed {
        exit: ExitReason::Unknown,
        console_tail: vm.console_tail(console_lines).await,
    }
}
