//! The host side of the default network, as one manager runs it: the
//! bridge, the firewall, and each VM's address, MAC, TAP, published ports
//! and peers.
//!
//! Nothing happens until the first VM asks for a network: then the bridge
//! (created when absent, with the gateway address), IPv4 forwarding on the
//! bridge and the uplink, and the firehost nftables tables are set up, in
//! that order, and undone if a later step fails. When the last networked VM
//! goes, the tables go, and the bridge too if this manager created it.
//!
//! [`HostNetwork::attach`] and [`HostNetwork::detach`] are transactions: a
//! failed attach leaves no TAP, no firewall element and no lease.
//!
//! # What a restarted manager does
//!
//! The VM records are the truth. [`HostNetwork::reconcile`] rebuilds the
//! allocator from the live VMs' records (so no live VM's address is handed
//! out again), replaces the firewall tables with ones holding exactly the
//! live VMs (one transaction), and deletes the TAPs this state directory
//! made for VMs that are gone. It recognises its TAPs by their interface
//! alias, `firehost:<tag>:<vm id>`, where the tag is derived from the state
//! directory: TAPs of other managers, and links that are not firehost's,
//! are never touched.
//!
//! # One manager per network namespace
//!
//! The tables are named `firehost` and the bridge is shared by all the VMs
//! of a manager: two managers with networking in one network namespace
//! would fight over them. Give each its own namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::TryStreamExt;
use tokio::sync::RwLockReadGuard;

pub use super::config::{
    DomainConfig, GatewayProgram, NetworkConfig, PRIVATE_RANGES, PUBLIC_DOH_ADDRESSES,
    PUBLIC_DOH_NAMES, Uplink,
};
pub use super::error::NetError;
pub use super::vm_net::{
    DEFAULT_IFACE_ID, GuestAddress, NetSpec, PeerGroup, PeerGroupError, VmNet,
};

use super::bridge::{Bridge, BridgeError};
use super::firewall::{
    EgressPolicy, Firewall, FirewallConfig, FirewallError, GuestPort, PortMapping, TrafficCounters,
};
use super::footprint::{Footprint, read_footprint, write_footprint};
use super::gateway::decide::HostRules;
use super::gateway::{Gateway, remote};
use super::ipam::{Allocator, Lease};
use super::netns::Inside;
use super::nft::Nftables;
use super::tap::{Tap, TapError, TapOwner, tap_name_for_vm};
use super::translate::Translation;
use super::{IfName, LinkState, Netlink, sysctl};
use crate::VmId;

/// How many TAP names a VM tries before giving up on name clashes.
const TAP_NAME_ATTEMPTS: u32 = 8;

/// The state file, beside `vms/` and `snapshots/`.
const STATE_FILE: &str = "network.json";
/// Where VMs' own network namespaces are pinned, in the state directory.
const NETNS_DIR: &str = "netns";

/// The kernel side, once set up.
struct Live {
    nl: Netlink,
    bridge: Bridge,
    firewall: Firewall,
}

/// The network's bookkeeping. Locked only to read or change it: never
/// across an await or a call into the kernel.
struct Book {
    allocator: Allocator,
    attached: BTreeMap<VmId, VmNet>,
    footprint: Footprint,
    /// Why the state file could not be read, if it could not: then nothing
    /// on the host is touched.
    unreadable: Option<String>,
}

/// One manager's default network. See the [module docs](self).
///
/// # Concurrency
///
/// VMs attach and detach in parallel: each VM's TAP, namespace and
/// firewall elements are its own, so the netlink work of one never waits
/// for another's. Three locks, each held for as little as it guards:
///
/// - the bookkeeping (addresses, MACs, who is attached) is behind a plain
///   mutex, held for map lookups and updates only;
/// - the kernel side is behind a read-write lock: VMs' changes share it,
///   while setting the network up, tearing it down and reconciling take
///   it alone;
/// - a change to the firewall that depends on the other VMs (their peer
///   pairs, their host ports) runs under a third lock, on the blocking pool
///   (libnftables blocks): the other VMs are read, the transaction runs,
///   and the VM joins or leaves the map with no other such change in
///   between, so two VMs of one peer group attaching at once always see
///   each other.
pub struct HostNetwork {
    config: NetworkConfig,
    gateway: Ipv4Addr,
    state_dir: PathBuf,
    state_file: PathBuf,
    /// Marks this state directory's TAPs (in their interface alias).
    tag: String,
    book: Arc<Mutex<Book>>,
    live: tokio::sync::RwLock<Option<Arc<Live>>>,
    membership: Arc<Mutex<()>>,
    /// The resolver and proxy for VMs with domain rules, while any is
    /// attached.
    names: tokio::sync::Mutex<Option<Gateway>>,
}

impl fmt::Debug for HostNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostNetwork")
            .field("config", &self.config)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

/// Locks `mutex`; a panic elsewhere while it was held leaves maps that are
/// still whole (every update is one insert or remove), so it is not fatal.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `work` on the blocking pool, passing a panic on.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

impl HostNetwork {
    /// A network for the manager of `state_dir`. Touches nothing on the
    /// host; fails only on an invalid config (gateway outside the subnet,
    /// say).
    pub fn new(config: NetworkConfig, state_dir: &Path) -> Result<Self, NetError> {
        let allocator = Allocator::new(config.subnet, config.gateway)?;
        let gateway = allocator.gateway();
        let canonical = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_owned());
        let hash = blake3::hash(canonical.as_os_str().as_encoded_bytes());
        let state_file = state_dir.join(STATE_FILE);
        let (footprint, unreadable) = match read_footprint(&state_file) {
            Ok(footprint) => (footprint, None),
            Err(detail) => (Footprint::default(), Some(detail)),
        };
        Ok(HostNetwork {
            config,
            gateway,
            state_dir: state_dir.to_owned(),
            state_file,
            tag: hash.to_hex()[..12].to_owned(),
            book: Arc::new(Mutex::new(Book {
                allocator,
                attached: BTreeMap::new(),
                footprint,
                unreadable,
            })),
            live: tokio::sync::RwLock::new(None),
            membership: Arc::new(Mutex::new(())),
            names: tokio::sync::Mutex::new(None),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// The gateway address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The VMs on the network now, in id order.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn attached(&self) -> Vec<(VmId, VmNet)> {
        lock(&self.book)
            .attached
            .iter()
            .map(|(id, net)| (id.clone(), net.clone()))
            .collect()
    }

    /// Gives `vm` an address, a MAC, a TAP on the bridge, its firewall
    /// elements and its published ports, setting up the network first if
    /// this is its first VM. All or nothing.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: run it in a task that is not dropped (the manager
    /// does). A crash midway leaves at most a TAP, which the next
    /// [`reconcile`](Self::reconcile) deletes.
    pub async fn attach(&self, vm: &VmId, spec: &NetSpec) -> Result<VmNet, NetError> {
        self.attach_owned(vm, spec, self.config.tap_owner).await
    }

    /// Like [`attach`](Self::attach), with the TAP owned by `owner`
    /// instead of the configured owner: a jailed VMM runs as a uid of its
    /// own and can only open a TAP that uid owns.
    ///
    /// # Cancel safety
    ///
    /// As [`attach`](Self::attach).
    pub async fn attach_owned(
        &self,
        vm: &VmId,
        spec: &NetSpec,
        owner: TapOwner,
    ) -> Result<VmNet, NetError> {
        self.attach_as(vm, spec, owner, None).await
    }

    /// Attaches a VM whose guest keeps `guest`, an address and MAC of its
    /// own (a restored guest keeps its snapshot's), in a namespace of its
    /// own that translates between `guest` and the host address the VM
    /// gets here: any number of VMs whose guests share one address can be
    /// on the network at once, each known to the host by its own. See
    /// `translate` in the [module docs](super) for how.
    ///
    /// `spec.ip` and `spec.mac` ask for the host address and MAC (else
    /// they are allocated; never the address of a translated guest, which
    /// that guest could not reach); `spec.netns` is implied. The VM's
    /// [`VmNet::guest`] is `guest`.
    ///
    /// # Cancel safety
    ///
    /// As [`attach`](Self::attach).
    pub async fn attach_translated(
        &self,
        vm: &VmId,
        spec: &NetSpec,
        guest: GuestAddress,
        owner: TapOwner,
    ) -> Result<VmNet, NetError> {
        check_translatable(self.gateway, spec, guest)?;
        self.attach_as(vm, spec, owner, Some(guest)).await
    }

    /// [`attach_owned`](Self::attach_owned), translated to `guest` when
    /// given.
    async fn attach_as(
        &self,
        vm: &VmId,
        spec: &NetSpec,
        owner: TapOwner,
        guest: Option<GuestAddress>,
    ) -> Result<VmNet, NetError> {
        // Refusals first: a request that cannot be met touches nothing.
        let lease = {
            let mut book = lock(&self.book);
            self.check_state_file(&book)?;
            check_ports(&book.attached, vm, &spec.publish)?;
            let mut avoid = translated_guests(&book.attached);
            avoid.extend(guest.map(|g| g.ip));
            book.allocator
                .allocate_avoiding(vm, spec.ip, spec.mac, &avoid)?
        };
        let attached = match self.live_or_set_up().await {
            Ok((_shared, live)) => self.attach_to(&live, vm, lease, spec, owner, guest).await,
            Err(e) => Err(e),
        };
        if attached.is_err() {
            lock(&self.book).allocator.release(vm);
            // A network set up for this VM alone goes again.
            self.tear_down_if_unused().await;
        }
        attached
    }

    /// The kernel side, set up first if it is not; the guard keeps it from
    /// being torn down while the caller uses it.
    async fn live_or_set_up(
        &self,
    ) -> Result<(RwLockReadGuard<'_, Option<Arc<Live>>>, Arc<Live>), NetError> {
        let shared = self.live.read().await;
        if let Some(live) = shared.clone() {
            return Ok((shared, live));
        }
        drop(shared);
        let mut alone = self.live.write().await;
        let live = match alone.clone() {
            Some(live) => live,
            None => {
                let live = Arc::new(self.set_up().await?);
                *alone = Some(live.clone());
                live
            }
        };
        Ok((alone.downgrade(), live))
    }

    /// The device and firewall steps of an attach, undone on failure.
    async fn attach_to(
        &self,
        live: &Arc<Live>,
        vm: &VmId,
        lease: Lease,
        spec: &NetSpec,
        owner: TapOwner,
        guest: Option<GuestAddress>,
    ) -> Result<VmNet, NetError> {
        let translation = guest.map(|guest| Translation {
            guest,
            host_ip: lease.ip,
            host_mac: lease.mac,
            prefix_len: self.config.subnet.prefix_len(),
            gateway: self.gateway,
        });
        let (tap, netns) = match &translation {
            Some(t) => {
                self.create_namespaced_tap(live, vm, owner, Inside::Translated(t))
                    .await?
            }
            None if spec.netns => {
                self.create_namespaced_tap(live, vm, owner, Inside::Bridged)
                    .await?
            }
            None => (self.create_tap(live, vm, owner).await?.name, None),
        };
        let mut net = VmNet::new(&self.config, self.gateway, lease, tap, self.dns(), spec);
        net.netns = netns;
        net.guest = guest;
        let named = net.egress.has_domain_rules();
        let served = if named {
            self.sync_names(live, &[(net.ip, Some(&net.egress))]).await
        } else {
            Ok(())
        };
        let joined = match served {
            Ok(()) => self.join(live, vm, net.clone()).await,
            Err(e) => Err(e),
        };
        if let Err(e) = joined {
            if named && let Err(undo) = self.sync_names(live, &[(net.ip, None)]).await {
                tracing::warn!(vm = %vm, error = %undo, "cannot tell the egress gateway to forget a VM after a failed attach");
            }
            if let Err(undo) = self.delete_devices(live, &net).await {
                tracing::warn!(vm = %vm, tap = %net.tap, error = %undo, "cannot delete TAP after a failed attach");
            }
            return Err(e);
        }
        tracing::debug!(vm = %vm, ip = %net.ip, tap = %net.tap, "network attached");
        Ok(net)
    }

    /// Admits `net` to the firewall with its peers and adds it to the
    /// attached VMs, as one membership change.
    async fn join(&self, live: &Arc<Live>, vm: &VmId, net: VmNet) -> Result<(), NetError> {
        let (book, membership) = (self.book.clone(), self.membership.clone());
        let (live, vm) = (live.clone(), vm.clone());
        blocking(move || {
            let _one_change = lock(&membership);
            let peers = {
                let book = lock(&book);
                // Another VM may have taken one of the ports since the
                // first check.
                check_ports(&book.attached, &vm, &net.published)?;
                peer_pairs(book.attached.values(), &net)
            };
            live.firewall.add_port(&net.port(), &peers)?;
            lock(&book).attached.insert(vm, net);
            Ok(())
        })
        .await
    }

    /// Removes `vm`'s firewall elements and its entry in the attached VMs,
    /// as one membership change.
    async fn leave(&self, live: &Arc<Live>, vm: &VmId) -> Result<(), NetError> {
        let (book, membership) = (self.book.clone(), self.membership.clone());
        let (live, vm) = (live.clone(), vm.clone());
        blocking(move || {
            let _one_change = lock(&membership);
            let (net, peers) = {
                let book = lock(&book);
                let Some(net) = book.attached.get(&vm).cloned() else {
                    return Ok(());
                };
                let peers = peer_pairs(book.attached.values(), &net);
                (net, peers)
            };
            live.firewall.remove_port(&net.port(), &peers)?;
            lock(&book).attached.remove(&vm);
            Ok(())
        })
        .await
    }

    /// Removes `vm`'s TAP (and namespace), firewall elements and lease;
    /// tears the network down after the last VM. A VM without a network
    /// is not an error.
    ///
    /// The devices go first, so the guest's traffic stops before its rules
    /// do; its address is handed out again only once everything is gone.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped midway, some of the VM's devices and rules may
    /// be gone and the rest not; calling it again finishes the job.
    pub async fn detach(&self, vm: &VmId) -> Result<(), NetError> {
        let Some(net) = lock(&self.book).attached.get(vm).cloned() else {
            return Ok(());
        };
        {
            let shared = self.live.read().await;
            match shared.clone() {
                Some(live) => {
                    self.delete_devices(&live, &net).await?;
                    self.leave(&live, vm).await?;
                    if net.egress.has_domain_rules()
                        && let Err(e) = self.sync_names(&live, &[]).await
                    {
                        tracing::warn!(vm = %vm, error = %e, "cannot tell the egress gateway to forget a VM");
                    }
                }
                // Attached VMs imply a live network; without one there is
                // nothing in the kernel to remove.
                None => {
                    lock(&self.book).attached.remove(vm);
                }
            }
        }
        lock(&self.book).allocator.release(vm);
        self.tear_down_if_unused().await;
        Ok(())
    }

    /// Tears the network down if no VM is attached.
    async fn tear_down_if_unused(&self) {
        // Checked first without the kernel side: waiting for it alone would
        // queue every other VM's change behind the VMs whose devices are
        // being deleted now.
        if !lock(&self.book).attached.is_empty() {
            return;
        }
        let mut alone = self.live.write().await;
        if !lock(&self.book).attached.is_empty() {
            return;
        }
        if let Some(live) = alone.take() {
            self.tear_down(live).await;
        }
    }

    /// Deletes what this state directory's network may still hold for `vm`
    /// although no record says what it is (the VM's record was unreadable):
    /// links labelled with its id and its pinned namespace. Call it after
    /// [`detach`](Self::detach), once the VM's VMM is gone.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, but idempotent: calling it again finishes the job.
    pub async fn remove_leftovers(&self, vm: &VmId) -> Result<(), NetError> {
        self.check_state_file(&lock(&self.book))?;
        let namespace = self.netns_dir().join(vm.as_str());
        blocking(move || {
            if namespace.exists() {
                super::netns::remove(&namespace)?;
            }
            Ok::<_, NetError>(())
        })
        .await?;
        let nl = Netlink::connect().map_err(|source| NetError::Io {
            op: "open a netlink socket for",
            path: PathBuf::from("NETLINK_ROUTE"),
            source,
        })?;
        for (link, owner) in self.own_taps(&nl).await? {
            if owner == vm.as_str() {
                super::netns::delete_link(&nl, &link).await?;
            }
        }
        Ok(())
    }

    /// Forwards another host port to a running VM.
    ///
    /// # Cancel safety
    ///
    /// Runs on the blocking pool: it completes even if this future is
    /// dropped.
    pub async fn publish(&self, vm: &VmId, mapping: PortMapping) -> Result<VmNet, NetError> {
        self.change_port(vm, mapping, true).await
    }

    /// Stops forwarding a host port to a VM; no error if it was not.
    ///
    /// # Cancel safety
    ///
    /// Runs on the blocking pool: it completes even if this future is
    /// dropped.
    pub async fn unpublish(&self, vm: &VmId, mapping: PortMapping) -> Result<VmNet, NetError> {
        self.change_port(vm, mapping, false).await
    }

    /// Publishes (`add`) or unpublishes `mapping` for `vm` as one
    /// membership change, on the blocking pool; a mapping already in that
    /// state changes nothing. Returns the VM's network.
    async fn change_port(
        &self,
        vm: &VmId,
        mapping: PortMapping,
        add: bool,
    ) -> Result<VmNet, NetError> {
        let not_attached = || NetError::NotAttached { vm: vm.clone() };
        let shared = self.live.read().await;
        let live = shared.clone().ok_or_else(not_attached)?;
        let (book, membership, id) = (self.book.clone(), self.membership.clone(), vm.clone());
        let changed = blocking(move || {
            let _one_change = lock(&membership);
            let mut net = {
                let book = lock(&book);
                let Some(net) = book.attached.get(&id).cloned() else {
                    return Ok(None);
                };
                if add {
                    check_ports(&book.attached, &id, &[mapping])?;
                }
                net
            };
            if net.published.contains(&mapping) == add {
                return Ok(Some(net));
            }
            if add {
                live.firewall.publish(net.ip, mapping)?;
                net.published.push(mapping);
            } else {
                live.firewall.unpublish(net.ip, mapping)?;
                net.published.retain(|m| *m != mapping);
            }
            lock(&book).attached.insert(id, net.clone());
            Ok::<_, NetError>(Some(net))
        })
        .await?;
        changed.ok_or_else(not_attached)
    }

    /// Replaces `vm`'s egress policy, in one nftables transaction: the old
    /// policy applies until the new one does, and when the kernel refuses
    /// the new one the old one stays. Open connections are checked
    /// against the new policy at their next packet. Returns the VM's
    /// network.
    ///
    /// # Cancel safety
    ///
    /// Runs on the blocking pool: it completes even if this future is
    /// dropped.
    pub async fn set_egress(&self, vm: &VmId, policy: EgressPolicy) -> Result<VmNet, NetError> {
        let not_attached = || NetError::NotAttached { vm: vm.clone() };
        let shared = self.live.read().await;
        let live = shared.clone().ok_or_else(not_attached)?;
        let old = lock(&self.book)
            .attached
            .get(vm)
            .cloned()
            .ok_or_else(not_attached)?;
        // The gateway learns a policy with domain rules before the
        // firewall sends the VM's traffic to it, and forgets one only
        // after the firewall stopped.
        let named = policy.has_domain_rules() || old.egress.has_domain_rules();
        if policy.has_domain_rules() {
            self.sync_names(&live, &[(old.ip, Some(&policy))]).await?;
        }
        let (book, membership, id) = (self.book.clone(), self.membership.clone(), vm.clone());
        let new_policy = policy.clone();
        let changing = live.clone();
        let changed = blocking(move || {
            let live = changing;
            let _one_change = lock(&membership);
            let Some(mut net) = lock(&book).attached.get(&id).cloned() else {
                return Ok(None);
            };
            let old_port = net.port();
            net.egress = new_policy;
            live.firewall.set_egress(&old_port, &net.port())?;
            lock(&book).attached.insert(id, net.clone());
            Ok::<_, NetError>(Some(net))
        })
        .await;
        // The book has the policy in force now, the new one or the old:
        // the gateway follows it.
        if named && let Err(e) = self.sync_names(&live, &[]).await {
            tracing::warn!(vm = %vm, error = %e, "cannot bring the egress gateway up to date");
        }
        changed?.ok_or_else(not_attached)
    }

    /// Makes the gateway serve exactly the attached VMs with domain
    /// rules, with `overrides` applied (a VM about to join, or about to
    /// change its policy; `None` for one about to go): starting it for the
    /// first, stopping it after the last. In this process, or in the
    /// helper that [`DomainConfig::program`] names.
    async fn sync_names(
        &self,
        live: &Arc<Live>,
        overrides: &[(Ipv4Addr, Option<&EgressPolicy>)],
    ) -> Result<(), NetError> {
        let mut vms: BTreeMap<Ipv4Addr, EgressPolicy> = lock(&self.book)
            .attached
            .values()
            .filter(|net| net.egress.has_domain_rules())
            .map(|net| (net.ip, net.egress.clone()))
            .collect();
        for (ip, policy) in overrides {
            match policy {
                Some(policy) if policy.has_domain_rules() => {
                    vms.insert(*ip, (*policy).clone());
                }
                _ => {
                    vms.remove(ip);
                }
            }
        }
        let vms: Vec<(Ipv4Addr, EgressPolicy)> = vms.into_iter().collect();
        let mut local = self.names.lock().await;
        let Some(program) = &self.config.domains.program else {
            if vms.is_empty() {
                if let Some(idle) = local.take() {
                    idle.stop().await;
                }
                return Ok(());
            }
            if local.is_none() {
                *local = Some(self.start_gateway(live).await?);
            }
            if let Some(gateway) = local.as_ref() {
                gateway.serve_exactly(vms);
            }
            return Ok(());
        };
        let socket = self.state_dir.join(remote::SOCKET);
        let request = remote::Request::Serve {
            config: Box::new(self.remote_config()),
            vms,
        };
        let failed = |detail: String| NetError::Gateway {
            addr: std::net::SocketAddrV4::new(self.gateway, self.config.domains.resolver_port),
            source: std::io::Error::other(detail),
        };
        let mut answer = remote::ask(&socket, &request).await;
        if answer.is_none() {
            if matches!(&request, remote::Request::Serve { vms, .. } if vms.is_empty()) {
                // No helper, and none needed.
                return Ok(());
            }
            remote::spawn(program, &self.state_dir)
                .await
                .map_err(|e| failed(e.to_string()))?;
            answer = remote::ask(&socket, &request).await;
        }
        match answer {
            Some(Ok(remote::Response::Served)) => Ok(()),
            Some(Ok(remote::Response::Failed(detail))) => Err(failed(detail)),
            Some(Ok(other)) => Err(failed(format!("unexpected answer {other:?}"))),
            Some(Err(e)) => Err(failed(e.to_string())),
            None => Err(failed("the helper does not listen".into())),
        }
    }

    /// What the gateway helper needs to know of this network.
    fn remote_config(&self) -> remote::RemoteConfig {
        let domains = &self.config.domains;
        remote::RemoteConfig {
            gateway: self.gateway,
            resolver_port: domains.resolver_port,
            proxy_port: domains.proxy_port,
            upstream: self.upstream(),
            min_ttl_ms: u64::try_from(domains.min_ttl.as_millis()).unwrap_or(u64::MAX),
            max_ttl_ms: u64::try_from(domains.max_ttl.as_millis()).unwrap_or(u64::MAX),
            deny: self.config.egress_deny.clone(),
            doh_names: domains.doh_names.clone(),
            doh_addresses: domains.doh_addresses.clone(),
            subnet: self.config.subnet.to_string(),
            bridge: self.config.bridge.clone(),
        }
    }

    /// Names refused to each VM the gateway serves.
    async fn names_refused(&self) -> BTreeMap<Ipv4Addr, u64> {
        if self.config.domains.program.is_none() {
            return self
                .names
                .lock()
                .await
                .as_ref()
                .map(Gateway::refused_all)
                .unwrap_or_default();
        }
        let socket = self.state_dir.join(remote::SOCKET);
        match remote::ask(&socket, &remote::Request::Refused).await {
            Some(Ok(remote::Response::Refused(refused))) => refused,
            _ => BTreeMap::new(),
        }
    }

    /// The upstream DNS servers of the gateway.
    fn upstream(&self) -> Vec<std::net::SocketAddrV4> {
        match &self.config.domains.upstream {
            Some(servers) => servers.clone(),
            None => self
                .upstream_dns()
                .into_iter()
                .map(|ip| std::net::SocketAddrV4::new(ip, 53))
                .collect(),
        }
    }

    /// Starts the resolver and the proxy on the gateway address.
    async fn start_gateway(&self, live: &Arc<Live>) -> Result<Gateway, NetError> {
        let domains = &self.config.domains;
        let upstream = self.upstream();
        let host = HostRules {
            deny: self.config.egress_deny.clone(),
            doh_names: domains.doh_names.clone(),
            doh_addresses: domains.doh_addresses.clone(),
            subnet: self.config.subnet,
        };
        Gateway::start(self.gateway, domains, upstream, host, live.firewall.clone())
            .await
            .map_err(|source| NetError::Gateway {
                addr: std::net::SocketAddrV4::new(self.gateway, domains.resolver_port),
                source,
            })
    }

    /// Where the gateway asks when no upstream is configured: the guests'
    /// DNS servers, else all of the host's own (loopback ones included:
    /// the gateway runs on the host).
    fn upstream_dns(&self) -> Vec<Ipv4Addr> {
        match &self.config.dns {
            Some(dns) => dns.clone(),
            None => std::fs::read_to_string("/etc/resolv.conf")
                .map(|text| resolv_conf_all_nameservers(&text))
                .unwrap_or_default(),
        }
    }

    /// The traffic counters of the VMs on `nets` (see
    /// [`TrafficCounters`]), by address. Reads the kernel even when this
    /// manager has not taken the network over (a read-only manager, which
    /// knows the VMs from their records): nothing is changed. A VM the
    /// firewall has no counters for is left out.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads (on the blocking pool).
    pub async fn traffic(
        &self,
        nets: &[VmNet],
    ) -> Result<BTreeMap<Ipv4Addr, TrafficCounters>, NetError> {
        let live = self.live.read().await.clone();
        let firewall = match live {
            Some(live) => live.firewall.clone(),
            None => self.connect_kernel()?.1,
        };
        let ports: Vec<(IfName, Ipv4Addr)> = nets
            .iter()
            .map(|net| (net.host_port().clone(), net.ip))
            .collect();
        let mut traffic = blocking(move || {
            if !firewall.installed()? {
                return Ok::<_, NetError>(BTreeMap::new());
            }
            Ok(firewall.traffic(&ports)?)
        })
        .await?;
        let refused = self.names_refused().await;
        for (ip, counters) in traffic.iter_mut() {
            counters.names_refused = refused.get(ip).copied().unwrap_or(0);
        }
        Ok(traffic)
    }

    /// One VM's traffic counters.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn traffic_of(&self, vm: &VmId) -> Result<TrafficCounters, NetError> {
        let not_attached = || NetError::NotAttached { vm: vm.clone() };
        let net = lock(&self.book)
            .attached
            .get(vm)
            .cloned()
            .ok_or_else(not_attached)?;
        self.traffic(std::slice::from_ref(&net))
            .await?
            .get(&net.ip)
            .copied()
            .ok_or_else(not_attached)
    }

    /// Fails if the state file could not be read.
    fn check_state_file(&self, book: &Book) -> Result<(), NetError> {
        match &book.unreadable {
            Some(detail) => Err(NetError::StateFile {
                path: self.state_file.clone(),
                detail: detail.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Takes the live VMs' networks from their records and makes the host
    /// match: see the [module docs](self). The links and namespaces of the
    /// VMs in `spared` (whose records cannot be read, so whose networks
    /// may be unknown) are kept whatever they are. Errors are logged, not
    /// returned: a manager must open even when the network cannot be fixed
    /// (the next attach tries again). With an unreadable state file,
    /// nothing is touched.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, but idempotent: the next reconcile finishes the job.
    pub async fn reconcile(&self, live_vms: Vec<(VmId, VmNet)>, spared: &[VmId]) {
        let mut alone = self.live.write().await;
        if let Err(e) = self.check_state_file(&lock(&self.book)) {
            tracing::error!(error = %e, "not reconciling the network");
            return;
        }
        let leases = live_vms
            .iter()
            .map(|(id, net)| {
                (
                    id.clone(),
                    Lease {
                        ip: net.ip,
                        mac: net.mac,
                    },
                )
            })
            .filter(|(_, lease)| self.config.subnet.contains(lease.ip));
        let allocator = Allocator::from_leases(self.config.subnet, self.config.gateway, leases);
        let footprint = {
            let mut book = lock(&self.book);
            match allocator {
                Ok(allocator) => book.allocator = allocator,
                Err(e) => {
                    tracing::error!(error = %e, "live VMs' addresses conflict; allocations start empty")
                }
            }
            book.attached = live_vms.into_iter().collect();
            book.footprint.clone()
        };
        let any_attached = !lock(&self.book).attached.is_empty();

        if any_attached {
            match self.set_up().await {
                Ok(live) => {
                    let live = Arc::new(live);
                    // The VMs with domain rules have their DNS and web
                    // traffic sent to the gateway: it must serve them (and
                    // a helper serving VMs that are gone must not).
                    if let Err(e) = self.sync_names(&live, &[]).await {
                        tracing::error!(error = %e, "cannot serve the VMs' domain rules; their DNS and web traffic fail until this is fixed");
                    }
                    *alone = Some(live);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot restore the network of live VMs");
                    return;
                }
            }
        } else if footprint != Footprint::default() {
            // Ours to undo, from a manager that stopped with networked VMs
            // that have died since.
            match self.connect_kernel() {
                Ok((nl, firewall)) => {
                    match Bridge::adopt(&nl, &self.config.bridge, footprint.bridge_created).await {
                        Ok(bridge) => {
                            *alone = Some(Arc::new(Live {
                                nl,
                                bridge,
                                firewall,
                            }))
                        }
                        Err(BridgeError::Missing { .. }) => {
                            let state_file = self.state_file.clone();
                            let cleared = blocking(move || {
                                let _ = firewall.uninstall();
                                write_footprint(&state_file, &Footprint::default())
                            })
                            .await;
                            if let Err(e) = cleared {
                                tracing::warn!(error = %e, "cannot write the network state file");
                            }
                            lock(&self.book).footprint = Footprint::default();
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot inspect the bridge"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot reach the network to clean up"),
            }
        }
        if let Some(live) = alone.clone() {
            // A namespaced VM's TAP is in its namespace; its veth's host end
            // is what carries our label here.
            let keep: BTreeSet<IfName> = lock(&self.book)
                .attached
                .values()
                .map(|n| n.host_port().clone())
                .collect();
            match self.own_taps(&live.nl).await {
                Ok(taps) => {
                    for (tap, vm) in taps {
                        if !keep.contains(&tap) && !spared.iter().any(|s| s.as_str() == vm) {
                            tracing::info!(link = %tap, vm = %vm, "deleting the TAP (or veth) of a VM that is gone");
                            if let Err(e) = super::netns::delete_link(&live.nl, &tap).await {
                                tracing::warn!(link = %tap, error = %e, "cannot delete a leftover link");
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list TAPs"),
            }
        }
        let attached = lock(&self.book).attached.clone();
        let (netns_dir, spared_ids) = (self.netns_dir(), spared.to_vec());
        blocking(move || remove_stale_namespaces(&netns_dir, &attached, &spared_ids)).await;
        let unused = lock(&self.book).attached.is_empty() && spared.is_empty();
        if unused && let Some(live) = alone.take() {
            self.tear_down(live).await;
        }
    }

    /// Opens netlink and nftables in the calling thread's namespace.
    fn connect_kernel(&self) -> Result<(Netlink, Firewall), NetError> {
        let nft = Arc::new(Nftables::open().map_err(FirewallError::from)?);
        let nl = Netlink::connect().map_err(|source| NetError::Io {
            op: "open a netlink socket for",
            path: PathBuf::from("NETLINK_ROUTE"),
            source,
        })?;
        let firewall_config = FirewallConfig {
            bridge: self.config.bridge.clone(),
            subnet: self.config.subnet,
            gateway: self.gateway,
            uplink: None,
            host_services: self.config.host_services.clone(),
            egress_deny: self.config.egress_deny.clone(),
            dns: self.dns(),
            resolver_port: self.config.domains.resolver_port,
            proxy_port: self.config.domains.proxy_port,
            doh_addresses: self.config.domains.doh_addresses.clone(),
        };
        Ok((nl, Firewall::new(nft, firewall_config)))
    }

    /// Sets up the bridge, forwarding and the tables (holding the VMs
    /// attached now); undoes its own steps on failure. The caller holds the
    /// kernel side alone.
    async fn set_up(&self) -> Result<Live, NetError> {
        let (nl, firewall) = self.connect_kernel()?;
        let uplink = match &self.config.uplink {
            Uplink::None => None,
            Uplink::Interface(name) => {
                if nl
                    .link(name)
                    .await
                    .map_err(|source| NetError::Netlink {
                        op: "look up the uplink",
                        source: source.into(),
                    })?
                    .is_none()
                {
                    return Err(NetError::UplinkMissing {
                        detail: format!("interface {name} does not exist"),
                    });
                }
                Some(name.clone())
            }
            Uplink::Auto => Some(default_route_interface(&nl).await?.ok_or_else(|| {
                NetError::UplinkMissing {
                    detail: "the host has no IPv4 default route".into(),
                }
            })?),
        };
        let mut firewall_config = firewall.config().clone();
        firewall_config.uplink = uplink.clone();
        let firewall = Firewall::new(firewall.nftables().clone(), firewall_config);

        let bridge = Bridge::ensure(
            &nl,
            &self.config.bridge,
            self.gateway,
            self.config.subnet.prefix_len(),
        )
        .await?;
        let (old_footprint, ports, peers) = {
            let book = lock(&self.book);
            let ports: Vec<GuestPort> = book.attached.values().map(VmNet::port).collect();
            let nets: Vec<&VmNet> = book.attached.values().collect();
            let peers: Vec<_> = nets
                .iter()
                .enumerate()
                .flat_map(|(i, a)| peer_pairs(nets[i + 1..].iter().copied(), a))
                .collect();
            (book.footprint.clone(), ports, peers)
        };
        // A bridge found is ours if a previous run of this manager made it.
        let created_now = bridge.created();
        let bridge = if !created_now && old_footprint.bridge_created {
            Bridge::adopt(&nl, &self.config.bridge, true).await?
        } else {
            bridge
        };
        let footprint = Footprint {
            bridge_created: bridge.created(),
            firewall_installed: true,
        };
        let steps = {
            let (state_file, footprint, bridge) = (
                self.state_file.clone(),
                footprint.clone(),
                self.config.bridge.clone(),
            );
            let firewall = firewall.clone();
            blocking(move || {
                write_footprint(&state_file, &footprint)?;
                if let Some(uplink) = &uplink {
                    for iface in [&bridge, uplink] {
                        sysctl::enable_forwarding(iface).map_err(|source| NetError::Io {
                            op: "enable forwarding in",
                            path: sysctl::forwarding_path(iface),
                            source,
                        })?;
                    }
                }
                firewall.install(&ports, &peers)?;
                Ok::<(), NetError>(())
            })
            .await
        };
        if let Err(e) = steps {
            if created_now {
                let _ = bridge.clone().remove_if_created(&nl).await;
            }
            let state_file = self.state_file.clone();
            let _ = blocking(move || write_footprint(&state_file, &old_footprint)).await;
            return Err(e);
        }
        lock(&self.book).footprint = footprint;
        Ok(Live {
            nl,
            bridge,
            firewall,
        })
    }

    /// Removes the tables, and the bridge if ours. Failures are logged. The
    /// caller holds the kernel side alone.
    async fn tear_down(&self, live: Arc<Live>) {
        if let Err(e) = self.sync_names(&live, &[]).await {
            tracing::warn!(error = %e, "cannot stop the egress gateway");
        }
        let firewall = live.firewall.clone();
        if let Err(e) = blocking(move || firewall.uninstall()).await {
            tracing::warn!(error = %e, "cannot remove the firehost nftables tables");
        }
        if lock(&self.book).footprint.bridge_created {
            match live.bridge.clone().remove_if_created(&live.nl).await {
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot remove the bridge"),
            }
        }
        lock(&self.book).footprint = Footprint::default();
        let state_file = self.state_file.clone();
        if let Err(e) = blocking(move || write_footprint(&state_file, &Footprint::default())).await
        {
            tracing::warn!(error = %e, "cannot write the network state file");
        }
    }

    /// Deletes a VM's TAP, or its namespace with the TAP in it.
    async fn delete_devices(&self, live: &Live, net: &VmNet) -> Result<(), NetError> {
        match &net.netns {
            Some(netns) => super::netns::unplumb(&live.nl, netns).await,
            None => Tap::delete(&live.nl, &net.tap)
                .await
                .map(drop)
                .map_err(Into::into),
        }
    }

    /// Where VMs' namespaces are pinned.
    fn netns_dir(&self) -> PathBuf {
        self.state_file
            .parent()
            .unwrap_or(Path::new("/"))
            .join(NETNS_DIR)
    }

    /// Creates the VM's TAP in a namespace of its own, joined to the
    /// bridge by a veth pair whose host end is labelled as ours.
    async fn create_namespaced_tap(
        &self,
        live: &Live,
        vm: &VmId,
        owner: TapOwner,
        inside: Inside<'_>,
    ) -> Result<(IfName, Option<super::netns::VmNetns>), NetError> {
        let dir = self.netns_dir();
        {
            crate::fsutil::create_private_dir_all(&dir).map_err(|source| NetError::Io {
                op: "create",
                path: dir.clone(),
                source,
            })?;
        }
        let path = dir.join(vm.as_str());
        let mut tried = Vec::new();
        for attempt in 0..TAP_NAME_ATTEMPTS {
            // The TAP is alone in the VM's namespace; the name that must
            // be free is its veth's on the host.
            let tap = tap_name_for_vm(vm, 0, attempt);
            let (host_port, inner_port) = super::tap::veth_names_for_tap(&tap);
            let taken = live
                .nl
                .link(&host_port)
                .await
                .map_err(|source| NetError::Netlink {
                    op: "look up a link",
                    source: source.into(),
                })?
                .is_some();
            if taken {
                tried.push(host_port);
                continue;
            }
            let netns = super::netns::plumb(
                &live.nl,
                live.bridge.name(),
                &path,
                &tap,
                owner,
                &host_port,
                &inner_port,
                &self.alias(vm),
                inside,
            )
            .await?;
            return Ok((tap, Some(netns)));
        }
        Err(NetError::TapNamesTaken {
            vm: vm.clone(),
            tried,
        })
    }

    /// Creates the VM's TAP on the bridge and labels it as ours.
    async fn create_tap(&self, live: &Live, vm: &VmId, owner: TapOwner) -> Result<Tap, NetError> {
        let mut tried = Vec::new();
        for attempt in 0..TAP_NAME_ATTEMPTS {
            let name = tap_name_for_vm(vm, 0, attempt);
            match Tap::create(&live.nl, &name, owner, live.bridge.name()).await {
                Ok(tap) => {
                    let alias = self.alias(vm);
                    let msg = rtnetlink::LinkUnspec::new_with_index(tap.index)
                        .alias(alias)
                        .build();
                    if let Err(source) = live.nl.handle().link().set(msg).execute().await {
                        let _ = Tap::delete(&live.nl, &name).await;
                        return Err(NetError::Netlink {
                            op: "label the TAP",
                            source: source.into(),
                        });
                    }
                    return Ok(tap);
                }
                Err(TapError::NameTaken { .. }) => tried.push(name),
                Err(e) => return Err(e.into()),
            }
        }
        Err(NetError::TapNamesTaken {
            vm: vm.clone(),
            tried,
        })
    }

    fn alias(&self, vm: &VmId) -> String {
        format!("firehost:{}:{vm}", self.tag)
    }

    /// This state directory's TAPs on the host, by their alias.
    async fn own_taps(&self, nl: &Netlink) -> Result<Vec<(IfName, String)>, NetError> {
        use rtnetlink::packet_route::link::LinkAttribute;
        let prefix = format!("firehost:{}:", self.tag);
        let links: Vec<_> = nl
            .handle()
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetError::Netlink {
                op: "list links",
                source: source.into(),
            })?;
        let mut taps = Vec::new();
        for link in links {
            // TAPs, and the host ends of namespaced VMs' veth pairs.
            if !matches!(
                LinkState::from_message(&link).kind.as_deref(),
                Some("tun" | "veth")
            ) {
                continue;
            }
            let (mut name, mut vm) = (None, None);
            for attr in &link.attributes {
                match attr {
                    LinkAttribute::IfName(n) => name = IfName::new(n.clone()).ok(),
                    LinkAttribute::IfAlias(a) => vm = a.strip_prefix(&prefix).map(str::to_owned),
                    _ => {}
                }
            }
            if let (Some(name), Some(vm)) = (name, vm) {
                taps.push((name, vm));
            }
        }
        Ok(taps)
    }

    fn dns(&self) -> Vec<Ipv4Addr> {
        match &self.config.dns {
            Some(dns) => dns.clone(),
            None => std::fs::read_to_string("/etc/resolv.conf")
                .map(|text| resolv_conf_nameservers(&text))
                .unwrap_or_default(),
        }
    }
}

/// The egress gateway helper's `main`: `args` is the socket path a
/// manager gave it (see [`DomainConfig::program`]). It serves the
/// resolver and the proxy as the managers of that state directory ask,
/// until one asks it to serve no VM. The `firehost-egress-gateway` binary
/// and `firehost egress-gateway` call this.
pub fn run_gateway_helper(
    mut args: impl Iterator<Item = std::ffi::OsString>,
) -> std::io::Result<()> {
    let (Some(socket), None) = (args.next(), args.next()) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "usage: firehost-egress-gateway SOCKET",
        ));
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(remote::serve(Path::new(&socket)))
}

/// Unpins the namespaces under `netns_dir` of VMs that are not attached
/// (their TAPs and bridges go with them).
fn remove_stale_namespaces(netns_dir: &Path, attached: &BTreeMap<VmId, VmNet>, spared: &[VmId]) {
    let Ok(entries) = std::fs::read_dir(netns_dir) else {
        return;
    };
    let keep: BTreeSet<PathBuf> = attached
        .values()
        .filter_map(|n| n.netns.as_ref().map(|ns| ns.path.clone()))
        .collect();
    for entry in entries.flatten() {
        let path = entry.path();
        let is_spared = spared
            .iter()
            .any(|s| entry.file_name() == std::ffi::OsStr::new(s.as_str()));
        if !keep.contains(&path) && !is_spared {
            tracing::info!(netns = ?path, "removing the network namespace of a VM that is gone");
            if let Err(e) = super::netns::remove(&path) {
                tracing::warn!(netns = ?path, error = %e, "cannot remove a leftover namespace");
            }
        }
    }
}

/// Refuses to translate `guest` to a host address when its namespace could
/// not route it: it is not a unicast address (or its MAC is not), it is the
/// gateway, or it is the host address `spec` asks for. The address comes
/// from a snapshot's manifest, a file: checked before anything is made.
pub(crate) fn check_translatable(
    gateway: Ipv4Addr,
    spec: &NetSpec,
    guest: GuestAddress,
) -> Result<(), NetError> {
    let ip = guest.ip;
    let problem = if ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_link_local()
    {
        // Link-local takes in the metadata service's 169.254.169.254.
        "it is not a unicast address a guest can be given"
    } else if !guest.mac.is_unicast() {
        "its MAC is a multicast address"
    } else if ip == gateway {
        "it is the host's gateway"
    } else if spec.ip == Some(ip) {
        "it is the host address asked for"
    } else {
        return Ok(());
    };
    Err(NetError::GuestAddress {
        ip: guest.ip,
        problem,
    })
}

/// The addresses translated guests keep in their namespaces: never given
/// to another VM as its host address while they are attached, or those
/// guests could not reach it.
pub(crate) fn translated_guests(attached: &BTreeMap<VmId, VmNet>) -> BTreeSet<Ipv4Addr> {
    attached
        .values()
        .filter_map(|net| net.guest.map(|g| g.ip))
        .collect()
}

/// Refuses host ports that `vm` would publish twice or that another VM
/// already publishes.
pub(crate) fn check_ports(
    attached: &BTreeMap<VmId, VmNet>,
    vm: &VmId,
    publish: &[PortMapping],
) -> Result<(), NetError> {
    let mut seen = BTreeSet::new();
    for m in publish {
        if !seen.insert((m.proto, m.host_port)) {
            return Err(NetError::PortTwice {
                proto: m.proto,
                port: m.host_port,
            });
        }
        for (holder, net) in attached {
            if holder != vm
                && net
                    .published
                    .iter()
                    .any(|p| p.proto == m.proto && p.host_port == m.host_port)
            {
                return Err(NetError::PortInUse {
                    proto: m.proto,
                    port: m.host_port,
                    holder: holder.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The peer pairs of `net` among `others`: one with each VM it shares a
/// group with (itself excluded, if it is among them).
fn peer_pairs<'a>(
    others: impl IntoIterator<Item = &'a VmNet>,
    net: &VmNet,
) -> Vec<(IfName, IfName)> {
    others
        .into_iter()
        .filter(|other| other.tap != net.tap && net.shares_group_with(other))
        // The firewall knows a VM by its port on the bridge: the TAP, or a
        // namespaced VM's veth.
        .map(|other| (net.host_port().clone(), other.host_port().clone()))
        .collect()
}

/// The interface of the main table's IPv4 default route, if there is one.
async fn default_route_interface(nl: &Netlink) -> Result<Option<IfName>, NetError> {
    use rtnetlink::packet_route::link::LinkAttribute;
    use rtnetlink::packet_route::route::RouteAttribute;
    let netlink = |op| {
        move |source: rtnetlink::Error| NetError::Netlink {
            op,
            source: source.into(),
        }
    };
    let query = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build();
    let routes: Vec<_> = nl
        .handle()
        .route()
        .get(query)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list routes"))?;
    let Some(index) = routes
        .iter()
        .filter(|r| r.header.destination_prefix_length == 0)
        .find_map(|r| {
            r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            })
        })
    else {
        return Ok(None);
    };
    let mut links = nl.handle().link().get().match_index(index).execute();
    let link = links
        .try_next()
        .await
        .map_err(netlink("look up the uplink"))?;
    Ok(link.and_then(|l| {
        l.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => IfName::new(n.clone()).ok(),
            _ => None,
        })
    }))
}

/// The IPv4 `nameserver`s of a resolv.conf, without loopback ones.
fn resolv_conf_nameservers(text: &str) -> Vec<Ipv4Addr> {
    resolv_conf_all_nameservers(text)
        .into_iter()
        .filter(|ip| !ip.is_loopback())
        .collect()
}

/// Every IPv4 `nameserver` of a resolv.conf.
fn resolv_conf_all_nameservers(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<Ipv4Addr>().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::ipam::MacAddr;

    #[test]
    fn resolv_conf_loopback_servers_are_left_out() {
        let text = "# comment\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch x\nnameserver ::1\nnameserver 1.1.1.1\n";
        assert_eq!(
            resolv_conf_nameservers(text),
            vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(1, 1, 1, 1)]
        );
    }

    fn net(vm_tap: &str, groups: &[&str], published: &[&str]) -> VmNet {
        VmNet {
            ip: Ipv4Addr::new(172, 30, 0, 2),
            prefix_len: 16,
            gateway: Ipv4Addr::new(172, 30, 0, 1),
            mac: MacAddr::new([6, 0, 0, 0, 0, 1]),
            tap: IfName::new(vm_tap).unwrap(),
            iface_id: DEFAULT_IFACE_ID.into(),
            dns: vec![],
            published: published.iter().map(|p| p.parse().unwrap()).collect(),
            peer_groups: groups.iter().map(|g| g.parse().unwrap()).collect(),
            netns: None,
            guest: None,
            egress: Default::default(),
        }
    }

    #[test]
    fn peers_are_the_vms_sharing_a_group() {
        let mut attached = BTreeMap::new();
        attached.insert(VmId::new("a").unwrap(), net("ta", &["g1"], &[]));
        attached.insert(VmId::new("b").unwrap(), net("tb", &["g2"], &[]));
        attached.insert(VmId::new("c").unwrap(), net("tc", &[], &[]));
        let new = net("tn", &["g2", "g1"], &[]);
        let mut pairs = peer_pairs(attached.values(), &new);
        pairs.sort();
        let n = |s: &str| IfName::new(s).unwrap();
        assert_eq!(pairs, vec![(n("tn"), n("ta")), (n("tn"), n("tb"))]);
        assert!(peer_pairs(attached.values(), &net("tz", &[], &[])).is_empty());
        // A VM is never its own peer.
        let a = &attached[&VmId::new("a").unwrap()];
        assert!(peer_pairs(attached.values(), a).is_empty());
    }

    #[test]
    fn host_ports_are_checked_for_clashes() {
        let mut attached = BTreeMap::new();
        let a = VmId::new("a").unwrap();
        attached.insert(a.clone(), net("ta", &[], &["8080:80"]));
        let b = VmId::new("b").unwrap();
        let clash = check_ports(&attached, &b, &["8080:81".parse().unwrap()]);
        assert!(
            matches!(clash, Err(NetError::PortInUse { port: 8080, ref holder, .. }) if *holder == a)
        );
        // Same port, other protocol: fine.
        assert!(check_ports(&attached, &b, &["8080:81/udp".parse().unwrap()]).is_ok());
        // A VM's own port is not a clash (publishing it again is a no-op).
        assert!(check_ports(&attached, &a, &["8080:80".parse().unwrap()]).is_ok());
        let twice = check_ports(
            &attached,
            &b,
            &["9000:1".parse().unwrap(), "9000:2".parse().unwrap()],
        );
        assert!(matches!(twice, Err(NetError::PortTwice { port: 9000, .. })));
    }
}
