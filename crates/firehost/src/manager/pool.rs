//! Warm pools: VMs made ahead of demand from a template, each handed to a
//! caller under the caller's name.
//!
//! A pool is a [`PoolSpec`] stored in `pools/<name>.json` in the state
//! directory. Its members are ordinary VMs named `<pool>-<8 hex digits>`
//! whose records say which pool they belong to
//! ([`VmInfo::pool`](super::VmInfo::pool)), so a restarted manager finds
//! them with the rest of its VMs. [`Manager::pool_claim`] takes a running
//! member and renames it to the caller's name, leaving the pool in the same
//! record write (see [`super::rename`]): a crash leaves it a member or the
//! caller's VM, never both.
//!
//! A manager keeps each pool at its size in the background (unless
//! [`ManagerConfig::pool_refill`] is off, as in the CLI, which fills with
//! [`Manager::pool_fill`]): it makes at most [`PoolSpec::parallel`]
//! members at once, replaces members whose VMM died, and after a failure
//! waits 1 s, doubling up to a minute, before it tries again; the failure
//! is in [`PoolInfo::failure`] meanwhile, never swallowed.
//!
//! [`Manager::pool_claim`]: super::Manager::pool_claim
//! [`Manager::pool_fill`]: super::Manager::pool_fill
//! [`ManagerConfig::pool_refill`]: super::ManagerConfig::pool_refill

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Shared, VmError, VmInfo};
use crate::id::{MAX_POOL_NAME_LEN, PoolName};
use crate::snapshot::SnapshotName;
use crate::spec::VmSpec;
use crate::{ErrorKind, VmId};

/// The directory of pool specs, in the state directory.
pub(super) const POOLS_DIR: &str = "pools";
/// The most members a pool may keep.
pub const MAX_POOL_SIZE: u32 = 1_000;
/// The first wait after a failed member, doubled after each further one.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between attempts of a failing pool.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a member made from a [`PoolTemplate::Spec`] with a vsock
/// device gets for its agent to answer.
const AGENT_READY: Duration = Duration::from_secs(60);

/// What a pool's members are made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolTemplate {
    /// Restored from this full snapshot (the fast way: milliseconds each).
    Snapshot(SnapshotName),
    /// Booted from this spec; a member with a vsock device is ready once
    /// its agent answers.
    Spec(Box<VmSpec>),
}

/// A warm pool: what its members are made from and how many are kept.
///
/// # Examples
///
/// ```no_run
/// # async fn f(manager: &firehost::Manager) -> Result<(), Box<dyn std::error::Error>> {
/// use firehost::manager::{ClaimOptions, PoolSpec, PoolTemplate};
///
/// let pool = "py".parse()?;
/// let spec = PoolSpec::new(PoolTemplate::Snapshot("py-template".parse()?), 8);
/// manager.pool_create(&pool, spec).await?;
/// // Later, per request: a running VM under the caller's name.
/// let vm = manager.pool_claim(&pool, &"job-42".parse()?, ClaimOptions::default()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// What members are made from.
    pub template: PoolTemplate,
    /// How many running members the pool keeps (1 to [`MAX_POOL_SIZE`]).
    pub size: u32,
    /// How many members are made at once (1 to `size`).
    pub parallel: u32,
}

impl PoolSpec {
    /// A pool of `size` members made from `template`, two at a time.
    pub fn new(template: PoolTemplate, size: u32) -> Self {
        PoolSpec {
            template,
            size,
            parallel: 2.min(size.max(1)),
        }
    }

    /// Why this spec cannot make a pool, if it cannot.
    fn problem(&self) -> Option<String> {
        if self.size == 0 || self.size > MAX_POOL_SIZE {
            return Some(format!(
                "size {} is out of range: 1 to {MAX_POOL_SIZE}",
                self.size
            ));
        }
        if self.parallel == 0 || self.parallel > self.size {
            return Some(format!(
                "parallel {} is out of range: 1 to the size, {}",
                self.parallel, self.size
            ));
        }
        None
    }
}

/// How [`Manager::pool_claim`](super::Manager::pool_claim) hands out a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimOptions {
    /// How long to wait for a member when none is ready (default: not at
    /// all).
    pub wait: Duration,
    /// With no member ready after `wait`, make the VM from the template
    /// under the caller's name now, as the pool would have (default true);
    /// false fails with [`VmError::PoolEmpty`] instead.
    pub cold_start: bool,
    /// The claimed VM's metadata, for a template with a metadata service
    /// (`None`: the template's). Its `"firehost"` identity is always the
    /// VM's own, under its new name.
    pub mmds: Option<serde_json::Value>,
    /// Before the VM is handed out, give its guest an identity of its own
    /// through its agent (default true): reseed the CRNG, so that its
    /// random numbers differ from its siblings', and give the agent a
    /// fresh token (see `manager::rekey`). Only for members with a vsock
    /// device, and only if their agent answers within [`RESEED_WAIT`]: a
    /// guest without one is handed out as it is, and must reseed itself.
    pub reseed: bool,
}

/// How long a claim waits for a member's agent to reseed its CRNG.
pub const RESEED_WAIT: Duration = Duration::from_secs(2);

impl Default for ClaimOptions {
    fn default() -> Self {
        ClaimOptions {
            wait: Duration::ZERO,
            cold_start: true,
            mmds: None,
            reseed: true,
        }
    }
}

/// Why a pool is not at its size, while it is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolFailure {
    /// The last error making a member.
    pub error: String,
    /// Its class.
    pub kind: ErrorKind,
    /// Failed attempts in a row.
    pub attempts: u32,
    /// How long until the next attempt.
    pub retry_in: Duration,
}

/// A pool as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    /// The pool's name.
    pub name: PoolName,
    /// Its spec.
    pub spec: PoolSpec,
    /// Running members, ready to be claimed, by name.
    pub members: Vec<VmId>,
    /// Members being made now.
    pub making: u32,
    /// Why the pool is short of its size, if making members fails.
    pub failure: Option<PoolFailure>,
}

/// A pool in a manager: its spec and what the refill knows.
#[derive(Debug)]
pub(super) struct Pool {
    spec: PoolSpec,
    making: u32,
    failure: Option<PoolFailure>,
    /// Wakes the background refill (a claim, an update).
    wake: Arc<tokio::sync::Notify>,
    /// Bumped whenever a member is made: claims that wait watch it.
    made: tokio::sync::watch::Sender<u64>,
    refill: Option<tokio::task::AbortHandle>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(task) = self.refill.take() {
            task.abort();
        }
    }
}

/// A pool's members, as [`Shared::members`] sorts them.
#[derive(Debug, Default)]
struct Members {
    ready: Vec<VmId>,
    other: u32,
    dead: Vec<VmId>,
}

/// The pools of a manager.
pub(super) type Pools = std::sync::Mutex<BTreeMap<PoolName, Pool>>;

fn lock(pools: &Pools) -> std::sync::MutexGuard<'_, BTreeMap<PoolName, Pool>> {
    pools
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn spec_path(dir: &Path, name: &PoolName) -> PathBuf {
    dir.join(format!("{name}.json"))
}

fn io_err(
    pool: &PoolName,
    op: &'static str,
    path: PathBuf,
) -> impl FnOnce(std::io::Error) -> VmError {
    let pool = pool.clone();
    move |source| VmError::PoolIo {
        pool,
        op,
        path,
        source,
    }
}

/// Writes `spec` to its file, atomically.
fn write_spec(dir: &Path, name: &PoolName, spec: &PoolSpec) -> Result<(), VmError> {
    let path = spec_path(dir, name);
    crate::fsutil::create_private_dir_all(dir).map_err(io_err(name, "create", dir.to_owned()))?;
    let text = serde_json::to_vec_pretty(spec).map_err(|e| VmError::InvalidPool {
        pool: name.clone(),
        why: e.to_string(),
    })?;
    let temporary = dir.join(format!(".{name}.json.tmp"));
    std::fs::write(&temporary, text).map_err(io_err(name, "write", temporary.clone()))?;
    std::fs::rename(&temporary, &path).map_err(io_err(name, "write", path))
}

impl Shared {
    fn pools_dir(&self) -> PathBuf {
        self.config.state_dir.join(POOLS_DIR)
    }

    /// The members of `pool` by name, oldest first: running ones (ready
    /// to claim), other live ones (paused or created by hand) and dead
    /// ones (their VMM is gone). Every VM must be loaded.
    fn members(&self, pool: &PoolName) -> Members {
        let mut infos: Vec<VmInfo> = self
            .lock_registry()
            .values()
            .filter_map(|slot| slot.info())
            .filter(|info| info.pool.as_ref() == Some(pool))
            .collect();
        // Oldest first; members made in the same millisecond by name, so
        // every listing agrees.
        infos.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        let mut members = Members::default();
        for info in infos {
            match &info.state {
                crate::state::VmState::Running => members.ready.push(info.id),
                state if state.is_live() => members.other += 1,
                _ => members.dead.push(info.id),
            }
        }
        members
    }

    fn pool_info(&self, name: &PoolName) -> Result<PoolInfo, VmError> {
        let members = self.members(name).ready;
        let pools = lock(&self.pools);
        let pool = pools
            .get(name)
            .ok_or_else(|| VmError::PoolNotFound { pool: name.clone() })?;
        Ok(PoolInfo {
            name: name.clone(),
            spec: pool.spec.clone(),
            members,
            making: pool.making,
            failure: pool.failure.clone(),
        })
    }
}

/// Loads the pools recorded in the state directory and, unless the manager
/// is read-only or refills are off, starts keeping them full.
pub(super) fn open_all(shared: &Arc<Shared>) {
    let Ok(entries) = std::fs::read_dir(shared.pools_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(name) = file
            .to_str()
            .and_then(|f| f.strip_suffix(".json"))
            .and_then(|n| n.parse::<PoolName>().ok())
        else {
            continue;
        };
        let spec = std::fs::read(entry.path())
            .map_err(|e| e.to_string())
            .and_then(|bytes| serde_json::from_slice::<PoolSpec>(&bytes).map_err(|e| e.to_string()))
            .and_then(|spec| match spec.problem() {
                // Written by hand, or by a newer firehost: not kept.
                Some(why) => Err(why),
                None => Ok(spec),
            });
        match spec {
            Ok(spec) => install(shared, name, spec),
            Err(e) => {
                tracing::error!(pool = %name, error = %e, "cannot read the pool's spec; leaving it alone")
            }
        }
    }
}

/// Adds the pool to the manager and starts its refill.
fn install(shared: &Arc<Shared>, name: PoolName, spec: PoolSpec) {
    let wake = Arc::new(tokio::sync::Notify::new());
    let refill = (shared.config.pool_refill && shared.config.recovery != super::Recovery::ReadOnly)
        .then(|| {
            tokio::spawn(keep_full(
                Arc::downgrade(shared),
                name.clone(),
                wake.clone(),
            ))
            .abort_handle()
        });
    lock(&shared.pools).insert(
        name,
        Pool {
            spec,
            making: 0,
            failure: None,
            wake,
            made: tokio::sync::watch::Sender::new(0),
            refill,
        },
    );
}

/// Makes a pool: checks the spec and the template, records the spec and
/// starts keeping the pool full.
pub(super) async fn create(
    shared: &Arc<Shared>,
    name: &PoolName,
    spec: PoolSpec,
) -> Result<PoolInfo, VmError> {
    check(shared, name, &spec)?;
    if lock(&shared.pools).contains_key(name) {
        return Err(VmError::PoolExists { pool: name.clone() });
    }
    let (dir, owned, stored) = (shared.pools_dir(), name.clone(), spec.clone());
    tokio::task::spawn_blocking(move || write_spec(&dir, &owned, &stored))
        .await
        .expect("writing a pool spec does not panic")?;
    install(shared, name.clone(), spec);
    super::recovery::load_all(shared).await;
    shared.pool_info(name)
}

/// Refuses a spec that cannot make a pool: a bad size, a template that
/// does not resolve or a snapshot that is not there.
fn check(shared: &Shared, name: &PoolName, spec: &PoolSpec) -> Result<(), VmError> {
    let invalid = |why: String| VmError::InvalidPool {
        pool: name.clone(),
        why,
    };
    if name.as_str().len() > MAX_POOL_NAME_LEN {
        return Err(invalid(format!(
            "the name is {} bytes long; a pool's is at most {MAX_POOL_NAME_LEN}, to leave room for its members' suffix",
            name.as_str().len()
        )));
    }
    if let Some(why) = spec.problem() {
        return Err(invalid(why));
    }
    match &spec.template {
        PoolTemplate::Snapshot(snapshot) => {
            let bundle = shared
                .store()
                .open(snapshot)
                .map_err(|e| invalid(format!("snapshot {snapshot}: {e}")))?;
            if bundle.manifest().kind != crate::snapshot::SnapshotKind::Full {
                return Err(invalid(format!(
                    "snapshot {snapshot} is a diff; members restore from a full snapshot (merge it first)"
                )));
            }
        }
        PoolTemplate::Spec(vm) => {
            vm.as_ref()
                .clone()
                .resolve(&shared.config.defaults)
                .map_err(|e| invalid(format!("the template spec: {e}")))?;
        }
    }
    Ok(())
}

/// Replaces a pool's spec; members made from the old one stay until
/// claimed, and the pool is filled or trimmed to its new size.
pub(super) async fn update(
    shared: &Arc<Shared>,
    name: &PoolName,
    spec: PoolSpec,
) -> Result<PoolInfo, VmError> {
    check(shared, name, &spec)?;
    if !lock(&shared.pools).contains_key(name) {
        return Err(VmError::PoolNotFound { pool: name.clone() });
    }
    let (dir, owned, stored) = (shared.pools_dir(), name.clone(), spec.clone());
    tokio::task::spawn_blocking(move || write_spec(&dir, &owned, &stored))
        .await
        .expect("writing a pool spec does not panic")?;
    if let Some(pool) = lock(&shared.pools).get_mut(name) {
        pool.spec = spec;
        pool.failure = None;
        pool.wake.notify_one();
    }
    super::recovery::load_all(shared).await;
    trim(shared, name).await?;
    shared.pool_info(name)
}

/// Removes the members past the pool's size, newest first.
async fn trim(shared: &Arc<Shared>, name: &PoolName) -> Result<(), VmError> {
    let size = match lock(&shared.pools).get(name) {
        Some(pool) => pool.spec.size as usize,
        None => return Ok(()),
    };
    let ready = shared.members(name).ready;
    for extra in ready.iter().skip(size).rev() {
        remove_member(shared, extra).await?;
    }
    Ok(())
}

/// Stops and removes a member.
async fn remove_member(shared: &Arc<Shared>, vm: &VmId) -> Result<(), VmError> {
    match super::ops::stop(
        shared.clone(),
        vm.clone(),
        super::StopOptions {
            graceful: Some(false),
            grace: None,
        },
    )
    .await
    {
        Ok(_) | Err(VmError::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    match super::ops::destroy(shared.clone(), vm.clone()).await {
        Ok(()) | Err(VmError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes a pool: its refill stops, its unclaimed members go, then its
/// spec.
pub(super) async fn delete(shared: &Arc<Shared>, name: &PoolName) -> Result<(), VmError> {
    let pool = lock(&shared.pools)
        .remove(name)
        .ok_or_else(|| VmError::PoolNotFound { pool: name.clone() })?;
    drop(pool);
    super::recovery::load_all(shared).await;
    let members = shared.members(name);
    for member in members.ready.iter().chain(&members.dead) {
        remove_member(shared, member).await?;
    }
    let path = spec_path(&shared.pools_dir(), name);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(name, "remove", path)(e)),
        _ => Ok(()),
    }
}

/// The pools, by name.
pub(super) async fn list(shared: &Arc<Shared>) -> Vec<PoolInfo> {
    super::recovery::load_all(shared).await;
    let names: Vec<PoolName> = lock(&shared.pools).keys().cloned().collect();
    names
        .iter()
        .filter_map(|name| shared.pool_info(name).ok())
        .collect()
}

/// One pool.
pub(super) async fn get(shared: &Arc<Shared>, name: &PoolName) -> Result<PoolInfo, VmError> {
    super::recovery::load_all(shared).await;
    shared.pool_info(name)
}

/// Makes members until the pool is at its size; the first failure ends
/// the fill and is returned (and recorded in the pool's state).
pub(super) async fn fill(shared: &Arc<Shared>, name: &PoolName) -> Result<PoolInfo, VmError> {
    super::recovery::load_all(shared).await;
    loop {
        let members = shared.members(name);
        for member in &members.dead {
            tracing::info!(pool = %name, vm = %member, "replacing a pool member whose VMM is gone");
            remove_member(shared, member).await?;
        }
        // A smaller size may have come while members were being made.
        trim(shared, name).await?;
        let (template, batch) = {
            let mut pools = lock(&shared.pools);
            let pool = pools
                .get_mut(name)
                .ok_or_else(|| VmError::PoolNotFound { pool: name.clone() })?;
            let ready = u32::try_from(members.ready.len()).unwrap_or(u32::MAX);
            let have = ready
                .saturating_add(members.other)
                .saturating_add(pool.making);
            let missing = pool.spec.size.saturating_sub(have);
            let batch = missing.min(pool.spec.parallel.saturating_sub(pool.making));
            if batch == 0 {
                drop(pools);
                return shared.pool_info(name);
            }
            pool.making += batch;
            (pool.spec.template.clone(), batch)
        };
        let made = futures_util::future::join_all(
            (0..batch).map(|_| make_member(shared, name, &template)),
        )
        .await;
        let mut pools = lock(&shared.pools);
        let pool = pools.get_mut(name);
        let mut failed = None;
        for result in made {
            match result {
                Ok(_) => {
                    if let Some(pool) = &pool {
                        pool.made.send_modify(|n| *n += 1);
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(pool) = pool {
            pool.making -= batch;
            if failed.is_none() {
                pool.failure = None;
            }
        }
        drop(pools);
        if let Some(e) = failed {
            return Err(e);
        }
    }
}

/// Makes one member of `pool` from `template`, under a fresh name.
async fn make_member(
    shared: &Arc<Shared>,
    pool: &PoolName,
    template: &PoolTemplate,
) -> Result<VmInfo, VmError> {
    let name = member_name(shared, pool)?;
    make_vm(shared, &name, Some(pool.clone()), template).await
}

/// Makes a VM named `name` from `template`, as a member of `pool` when
/// given.
async fn make_vm(
    shared: &Arc<Shared>,
    name: &VmId,
    pool: Option<PoolName>,
    template: &PoolTemplate,
) -> Result<VmInfo, VmError> {
    match template {
        PoolTemplate::Snapshot(snapshot) => {
            let options = super::RestoreOptions::default();
            let made = tokio::spawn(super::restore::restore(
                shared.clone(),
                name.clone(),
                snapshot.clone(),
                options,
                pool,
            ));
            made.await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        }
        PoolTemplate::Spec(spec) => {
            let made = tokio::spawn(super::create::create(
                shared.clone(),
                name.clone(),
                spec.as_ref().clone(),
                true,
                pool,
            ));
            let info = made
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
            if info.vsock.is_some() {
                let manager = super::Manager {
                    shared: shared.clone(),
                };
                let ready = async {
                    manager
                        .agent(name)
                        .await?
                        .wait_ready(AGENT_READY)
                        .await
                        .map_err(|source| VmError::Agent {
                            id: name.clone(),
                            source: Box::new(source),
                        })
                };
                if let Err(e) = ready.await {
                    let _ = remove_member(shared, name).await;
                    return Err(e);
                }
            }
            Ok(info)
        }
    }
}

/// A free member name: the pool's name and 8 random hex digits. Fails for
/// a pool name too long to leave room for them (one read from a file that
/// was not made by [`create`]).
fn member_name(shared: &Shared, pool: &PoolName) -> Result<VmId, VmError> {
    loop {
        let mut bytes = [0u8; 4];
        let _ = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty());
        let name = VmId::new(format!("{pool}-{:08x}", u32::from_le_bytes(bytes))).map_err(|e| {
            VmError::InvalidPool {
                pool: pool.clone(),
                why: format!("its members cannot be named after it: {e}"),
            }
        })?;
        if !shared.lock_registry().contains_key(&name) && !shared.vm_dir(&name).exists() {
            return Ok(name);
        }
    }
}

/// The background refill of one pool: fills, then sleeps until woken (a
/// claim, an update) or, after a failure, until its back-off is over. Ends
/// with the manager or the pool.
async fn keep_full(shared: Weak<Shared>, name: PoolName, wake: Arc<tokio::sync::Notify>) {
    let mut attempts: u32 = 0;
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let mut alive = strong.alive.subscribe();
        let outcome = fill(&strong, &name).await;
        let pause = match outcome {
            Ok(_) => {
                attempts = 0;
                None
            }
            Err(VmError::PoolNotFound { .. }) => return,
            Err(e) => {
                attempts += 1;
                let pause = backoff(attempts);
                tracing::warn!(pool = %name, error = %e, attempts, retry_in = ?pause, "cannot make a pool member");
                if let Some(pool) = lock(&strong.pools).get_mut(&name) {
                    pool.failure = Some(PoolFailure {
                        error: e.to_string(),
                        kind: e.kind(),
                        attempts,
                        retry_in: pause,
                    });
                }
                Some(pause)
            }
        };
        drop(strong);
        tokio::select! {
            _ = wake.notified() => {}
            _ = alive.changed() => return,
            _ = async {
                match pause {
                    Some(pause) => tokio::time::sleep(pause).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// The wait after `attempts` failures in a row.
fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// Hands a running member of `pool` to the caller as `name` (see
/// [`ClaimOptions`]).
pub(super) async fn claim(
    shared: &Arc<Shared>,
    pool: &PoolName,
    name: &VmId,
    options: ClaimOptions,
) -> Result<VmInfo, VmError> {
    super::recovery::load_all(shared).await;
    let (mut made, template) = {
        let pools = lock(&shared.pools);
        let found = pools
            .get(pool)
            .ok_or_else(|| VmError::PoolNotFound { pool: pool.clone() })?;
        (found.made.subscribe(), found.spec.template.clone())
    };
    let deadline = tokio::time::Instant::now() + options.wait;
    loop {
        made.mark_unchanged();
        for member in shared.members(pool).ready {
            if options.reseed {
                refresh(shared, &member).await;
            }
            let claim = super::rename::Claim {
                pool: pool.clone(),
                mmds: options.mmds.clone(),
            };
            match super::rename::rename_as(shared.clone(), member, name.clone(), Some(claim)).await
            {
                Ok(info) => {
                    wake(shared, pool);
                    return Ok(info);
                }
                // Claimed by another caller, died or busy: the next one.
                Err(VmError::NotFound { .. } | VmError::MidOperation { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if tokio::time::Instant::now() < deadline
            && tokio::time::timeout_at(deadline, made.changed())
                .await
                .is_ok_and(|r| r.is_ok())
        {
            continue;
        }
        break;
    }
    if !options.cold_start {
        return Err(VmError::PoolEmpty { pool: pool.clone() });
    }
    wake(shared, pool);
    let info = make_vm(shared, name, None, &template).await?;
    if options.reseed {
        refresh(shared, name).await;
    }
    if let Some(data) = &options.mmds {
        let slot = shared.find(name).await?;
        let guard = slot.vm.lock().await;
        if let Some(vm) = guard.as_ref() {
            super::rename::write_identity(vm, name, Some(data)).await?;
        }
    }
    Ok(info)
}

/// Gives `vm`'s guest an identity of its own through its agent, if it has
/// a vsock device and the agent answers within [`RESEED_WAIT`]: reseeds
/// its CRNG, then gives the agent a fresh token. Says so if it cannot.
async fn refresh(shared: &Arc<Shared>, vm: &VmId) {
    let manager = super::Manager {
        shared: shared.clone(),
    };
    let Ok(agent) = manager.agent(vm).await else {
        return;
    };
    match tokio::time::timeout(RESEED_WAIT, agent.reseed()).await {
        Ok(Ok(())) => tracing::debug!(vm = %vm, "reseeded the guest's CRNG"),
        Ok(Err(e)) => {
            tracing::warn!(vm = %vm, error = %e, "cannot reseed the guest's CRNG; it shares its siblings' random state until it reseeds");
            // No agent that answers: no token to change either.
            return;
        }
        Err(_) => {
            tracing::warn!(vm = %vm, "the guest's agent did not reseed its CRNG in time");
            return;
        }
    }
    let Ok(slot) = shared.find(vm).await else {
        return;
    };
    let mut guard = slot.vm.lock().await;
    if let Some(member) = guard.as_mut()
        && let Err(e) = super::rekey::rekey(member).await
    {
        tracing::warn!(vm = %vm, error = %e, "cannot give the guest's agent a token of its own; it keeps its siblings'");
    }
}

/// Wakes the refill of `pool`.
fn wake(shared: &Shared, pool: &PoolName) {
    if let Some(pool) = lock(&shared.pools).get(pool) {
        pool.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn specs_are_checked_for_their_sizes() {
        let template = PoolTemplate::Snapshot("t".parse().unwrap());
        assert_eq!(PoolSpec::new(template.clone(), 1).parallel, 1);
        assert_eq!(PoolSpec::new(template.clone(), 9).parallel, 2);
        assert!(PoolSpec::new(template.clone(), 3).problem().is_none());
        for (size, parallel) in [(0, 1), (MAX_POOL_SIZE + 1, 1), (3, 0), (3, 4)] {
            let spec = PoolSpec {
                template: template.clone(),
                size,
                parallel,
            };
            assert!(spec.problem().is_some(), "{size}/{parallel}");
        }
    }

    #[test]
    fn a_spec_survives_its_file() {
        let spec = PoolSpec::new(PoolTemplate::Spec(Box::default()), 4);
        let text = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<PoolSpec>(&text).unwrap(), spec);
        assert!(
            serde_json::from_str::<PoolSpec>(
                r#"{"template":{"snapshot":"../x"},"size":1,"parallel":1}"#
            )
            .is_err()
        );
    }
}
