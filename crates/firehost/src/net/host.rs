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
use std::sync::Arc;

use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};

pub use super::config::{NetworkConfig, Uplink};
pub use super::vm_net::{DEFAULT_IFACE_ID, NetSpec, PeerGroup, PeerGroupError, VmNet};

use super::bridge::{Bridge, BridgeError};
use super::firewall::{Firewall, FirewallConfig, FirewallError, GuestPort, PortMapping, Proto};
use super::ipam::{Allocator, IpamError, Lease};
use super::nft::Nftables;
use super::tap::{Tap, TapError, TapOwner, tap_name_for_vm};
use super::{IfName, LinkState, Netlink, sysctl};
use crate::VmId;

/// How many TAP names a VM tries before giving up on name clashes.
const TAP_NAME_ATTEMPTS: u32 = 8;

/// The state file, beside `vms/` and `snapshots/`.
const STATE_FILE: &str = "network.json";
/// Where VMs' own network namespaces are pinned, in the state directory.
const NETNS_DIR: &str = "netns";

/// Why the network could not be set up, attached or detached. A failed
/// attach leaves nothing behind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The network's state file cannot be read: firehost will not guess
    /// what it set up on the host, so it changes nothing until the file is
    /// fixed or removed.
    #[error("the network state file {path:?} is unreadable ({detail}); fix or remove it")]
    StateFile {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// nftables is missing or refused a transaction.
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    /// No uplink: no default route for [`Uplink::Auto`], or the named
    /// interface does not exist.
    #[error(
        "no uplink for guest traffic: {detail}; name one in the network config (or choose Uplink::None for guests without a way out)"
    )]
    UplinkMissing {
        /// What was looked for.
        detail: String,
    },
    /// The bridge could not be set up or removed.
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    /// The TAP could not be created or deleted.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// Every TAP name candidate of the VM is taken by another device.
    #[error("every TAP name tried for VM {vm} is taken ({tried:?})")]
    TapNamesTaken {
        /// The VM.
        vm: VmId,
        /// The names tried.
        tried: Vec<IfName>,
    },
    /// The address or MAC could not be allocated.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// A host port is already forwarded to another VM.
    #[error("host port {port}/{proto} is already published by VM {holder}")]
    PortInUse {
        /// The protocol.
        proto: Proto,
        /// The host port.
        port: u16,
        /// The VM it forwards to.
        holder: VmId,
    },
    /// The same host port appears twice in one request.
    #[error("host port {port}/{proto} is published twice")]
    PortTwice {
        /// The protocol.
        proto: Proto,
        /// The host port.
        port: u16,
    },
    /// The VM has no network.
    #[error("VM {vm} has no network")]
    NotAttached {
        /// The VM.
        vm: VmId,
    },
    /// A netlink request outside the TAP and bridge steps failed.
    #[error("netlink {op} failed")]
    Netlink {
        /// What was asked.
        op: &'static str,
        /// The netlink error.
        #[source]
        source: super::NetlinkError,
    },
    /// A kernel setting or the state file could not be read or written.
    #[error("cannot {op} {path:?}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

/// What this manager set up on the host, persisted so that a restarted
/// manager undoes only its own work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Footprint {
    /// The bridge was created by this state directory's manager.
    bridge_created: bool,
    /// The firehost tables were installed by it.
    firewall_installed: bool,
}

/// The kernel side, once set up.
struct Live {
    nl: Netlink,
    bridge: Bridge,
    firewall: Firewall,
}

struct Inner {
    live: Option<Live>,
    allocator: Allocator,
    attached: BTreeMap<VmId, VmNet>,
    footprint: Footprint,
    /// Why the state file could not be read, if it could not: then nothing
    /// on the host is touched.
    unreadable: Option<String>,
}

/// One manager's default network. See the [module docs](self).
pub struct HostNetwork {
    config: NetworkConfig,
    gateway: Ipv4Addr,
    state_file: PathBuf,
    /// Marks this state directory's TAPs (in their interface alias).
    tag: String,
    /// One network change at a time: each is a few netlink round trips and
    /// one nftables transaction, well under a millisecond of kernel work.
    inner: tokio::sync::Mutex<Inner>,
}

impl fmt::Debug for HostNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostNetwork")
            .field("config", &self.config)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
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
            state_file,
            tag: hash.to_hex()[..12].to_owned(),
            inner: tokio::sync::Mutex::new(Inner {
                live: None,
                allocator,
                attached: BTreeMap::new(),
                footprint,
                unreadable,
            }),
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
        let inner = self.inner.lock().await;
        inner
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
        let mut inner = self.inner.lock().await;
        self.check_state_file(&inner)?;
        // Refusals first: a request that cannot be met touches nothing.
        check_ports(&inner.attached, vm, &spec.publish)?;
        let lease = inner.allocator.allocate_requested(vm, spec.ip, spec.mac)?;
        let mut fresh_setup = false;
        if inner.live.is_none() {
            if let Err(e) = self.set_up(&mut inner).await {
                inner.allocator.release(vm);
                return Err(e);
            }
            fresh_setup = true;
        }
        let result = self.attach_locked(&mut inner, vm, lease, spec, owner).await;
        if result.is_err() && fresh_setup && inner.attached.is_empty() {
            self.tear_down(&mut inner).await;
        }
        result
    }

    /// The device and firewall steps of an attach; releases `lease` on
    /// failure.
    async fn attach_locked(
        &self,
        inner: &mut Inner,
        vm: &VmId,
        lease: Lease,
        spec: &NetSpec,
        owner: TapOwner,
    ) -> Result<VmNet, NetError> {
        let live = inner.live.as_ref().expect("set up by the caller");
        let created = if spec.netns {
            self.create_namespaced_tap(live, vm, owner).await
        } else {
            self.create_tap(live, vm, owner)
                .await
                .map(|tap| (tap.name, None))
        };
        let (tap, netns) = match created {
            Ok(made) => made,
            Err(e) => {
                inner.allocator.release(vm);
                return Err(e);
            }
        };
        let mut net = VmNet::new(&self.config, self.gateway, lease, tap, self.dns(), spec);
        net.netns = netns;
        let peers = peer_pairs(inner.attached.values(), &net);
        if let Err(e) = live.firewall.add_port(&net.port(), &peers) {
            if let Err(undo) = self.delete_devices(live, &net).await {
                tracing::warn!(vm = %vm, tap = %net.tap, error = %undo, "cannot delete TAP after a failed attach");
            }
            inner.allocator.release(vm);
            return Err(e.into());
        }
        inner.attached.insert(vm.clone(), net.clone());
        tracing::debug!(vm = %vm, ip = %net.ip, tap = %net.tap, "network attached");
        Ok(net)
    }

    /// Removes `vm`'s firewall elements, TAP and lease; tears the network
    /// down after the last VM. A VM without a network is not an error.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped midway, some of the VM's devices and rules may
    /// be gone and the rest not; calling it again finishes the job.
    pub async fn detach(&self, vm: &VmId) -> Result<(), NetError> {
        let mut inner = self.inner.lock().await;
        let Some(net) = inner.attached.get(vm).cloned() else {
            return Ok(());
        };
        if let Some(live) = &inner.live {
            let peers = peer_pairs(inner.attached.values(), &net);
            live.firewall.remove_port(&net.port(), &peers)?;
            self.delete_devices(live, &net).await?;
        }
        inner.attached.remove(vm);
        inner.allocator.release(vm);
        if inner.attached.is_empty() {
            self.tear_down(&mut inner).await;
        }
        Ok(())
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
        let inner = self.inner.lock().await;
        self.check_state_file(&inner)?;
        let namespace = self.netns_dir().join(vm.as_str());
        if namespace.exists() {
            super::netns::remove(&namespace)?;
        }
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
    /// Not cancel safe: dropped after the firewall change, the port is
    /// forwarded but not recorded; publish it again (idempotent) or unpublish
    /// it.
    pub async fn publish(&self, vm: &VmId, mapping: PortMapping) -> Result<VmNet, NetError> {
        let mut inner = self.inner.lock().await;
        let net = inner
            .attached
            .get(vm)
            .cloned()
            .ok_or_else(|| NetError::NotAttached { vm: vm.clone() })?;
        check_ports(&inner.attached, vm, &[mapping])?;
        if net.published.contains(&mapping) {
            return Ok(net);
        }
        let live = inner
            .live
            .as_ref()
            .expect("attached VMs imply a live network");
        live.firewall.publish(net.ip, mapping)?;
        let net = inner.attached.get_mut(vm).expect("checked above");
        net.published.push(mapping);
        Ok(net.clone())
    }

    /// Stops forwarding a host port to a VM; no error if it was not.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped after the firewall change, the port is no
    /// longer forwarded but still recorded; unpublish it again (idempotent).
    pub async fn unpublish(&self, vm: &VmId, mapping: PortMapping) -> Result<VmNet, NetError> {
        let mut inner = self.inner.lock().await;
        let net = inner
            .attached
            .get(vm)
            .cloned()
            .ok_or_else(|| NetError::NotAttached { vm: vm.clone() })?;
        if !net.published.contains(&mapping) {
            return Ok(net);
        }
        let live = inner
            .live
            .as_ref()
            .expect("attached VMs imply a live network");
        live.firewall.unpublish(net.ip, mapping)?;
        let net = inner.attached.get_mut(vm).expect("checked above");
        net.published.retain(|m| *m != mapping);
        Ok(net.clone())
    }

    /// Fails if the state file could not be read.
    fn check_state_file(&self, inner: &Inner) -> Result<(), NetError> {
        match &inner.unreadable {
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
        let mut inner = self.inner.lock().await;
        if let Err(e) = self.check_state_file(&inner) {
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
        match Allocator::from_leases(self.config.subnet, self.config.gateway, leases) {
            Ok(allocator) => inner.allocator = allocator,
            Err(e) => {
                tracing::error!(error = %e, "live VMs' addresses conflict; allocations start empty")
            }
        }
        inner.attached = live_vms.into_iter().collect();

        if !inner.attached.is_empty() {
            if let Err(e) = self.set_up(&mut inner).await {
                tracing::error!(error = %e, "cannot restore the network of live VMs");
                return;
            }
        } else if inner.footprint != Footprint::default() {
            // Ours to undo, from a manager that stopped with networked VMs
            // that have died since.
            match self.connect_kernel() {
                Ok((nl, firewall)) => {
                    let bridge =
                        Bridge::adopt(&nl, &self.config.bridge, inner.footprint.bridge_created)
                            .await;
                    match bridge {
                        Ok(bridge) => {
                            inner.live = Some(Live {
                                nl,
                                bridge,
                                firewall,
                            })
                        }
                        Err(BridgeError::Missing { .. }) => {
                            let _ = firewall.uninstall();
                            inner.footprint = Footprint::default();
                            let _ = write_footprint(&self.state_file, &inner.footprint);
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot inspect the bridge"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot reach the network to clean up"),
            }
        }
        if let Some(live) = &inner.live {
            // A namespaced VM's TAP is in its namespace; its veth's host end
            // is what carries our label here.
            let keep: BTreeSet<IfName> = inner
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
        self.remove_stale_namespaces(&inner.attached, spared);
        if inner.attached.is_empty() && inner.live.is_some() && spared.is_empty() {
            self.tear_down(&mut inner).await;
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
        };
        Ok((nl, Firewall::new(nft, firewall_config)))
    }

    /// Sets up the bridge, forwarding and the tables (holding the VMs in
    /// `inner.attached`); undoes its own steps on failure.
    async fn set_up(&self, inner: &mut Inner) -> Result<(), NetError> {
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
        // A bridge found is ours if a previous run of this manager made it.
        let created_now = bridge.created();
        let bridge = if !created_now && inner.footprint.bridge_created {
            Bridge::adopt(&nl, &self.config.bridge, true).await?
        } else {
            bridge
        };
        let footprint = Footprint {
            bridge_created: bridge.created(),
            firewall_installed: true,
        };
        let steps = async {
            write_footprint(&self.state_file, &footprint)?;
            if let Some(uplink) = &uplink {
                for iface in [&self.config.bridge, uplink] {
                    sysctl::enable_forwarding(iface).map_err(|source| NetError::Io {
                        op: "enable forwarding in",
                        path: sysctl::forwarding_path(iface),
                        source,
                    })?;
                }
            }
            let ports: Vec<GuestPort> = inner.attached.values().map(VmNet::port).collect();
            let nets: Vec<&VmNet> = inner.attached.values().collect();
            let peers: Vec<_> = nets
                .iter()
                .enumerate()
                .flat_map(|(i, a)| peer_pairs(nets[i + 1..].iter().copied(), a))
                .collect();
            firewall.install(&ports, &peers)?;
            Ok::<(), NetError>(())
        };
        if let Err(e) = steps.await {
            if created_now {
                let _ = bridge.clone().remove_if_created(&nl).await;
            }
            let _ = write_footprint(&self.state_file, &inner.footprint);
            return Err(e);
        }
        inner.footprint = footprint;
        inner.live = Some(Live {
            nl,
            bridge,
            firewall,
        });
        Ok(())
    }

    /// Removes the tables, and the bridge if ours. Failures are logged.
    async fn tear_down(&self, inner: &mut Inner) {
        let Some(live) = inner.live.take() else {
            return;
        };
        if let Err(e) = live.firewall.uninstall() {
            tracing::warn!(error = %e, "cannot remove the firehost nftables tables");
        }
        if inner.footprint.bridge_created {
            match live.bridge.clone().remove_if_created(&live.nl).await {
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot remove the bridge"),
            }
        }
        inner.footprint = Footprint::default();
        if let Err(e) = write_footprint(&self.state_file, &inner.footprint) {
            tracing::warn!(error = %e, "cannot write the network state file");
        }
    }

    /// Deletes a VM's TAP, or its namespace with the TAP in it.
    async fn delete_devices(&self, live: &Live, net: &VmNet) -> Result<(), NetError> {
        match &net.netns {
            Some(netns) => super::netns::unplumb(&live.nl, netns, &net.tap).await,
            None => Tap::delete(&live.nl, &net.tap)
                .await
                .map(drop)
                .map_err(Into::into),
        }
    }

    /// Unpins the namespaces of VMs that are not attached (their TAPs and
    /// bridges go with them).
    fn remove_stale_namespaces(&self, attached: &BTreeMap<VmId, VmNet>, spared: &[VmId]) {
        let Ok(entries) = std::fs::read_dir(self.netns_dir()) else {
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
            let tap = tap_name_for_vm(vm, 0, attempt);
            match super::tap::create_persistent_tap(&tap, owner) {
                Ok(()) => {}
                Err(TapError::NameTaken { .. }) => {
                    tried.push(tap);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            let suffix = &tap.as_str()[super::tap::TAP_PREFIX.len()..];
            let host_port = IfName::new(format!("fv{suffix}")).expect("as long as the TAP's");
            let inner_port = IfName::new(format!("fp{suffix}")).expect("as long as the TAP's");
            let plumbed = super::netns::plumb(
                &live.nl,
                live.bridge.name(),
                &tap,
                &path,
                &host_port,
                &inner_port,
                &self.alias(vm),
            )
            .await;
            return match plumbed {
                Ok(netns) => Ok((tap, Some(netns))),
                Err(e) => {
                    // Still in our namespace if it was never moved.
                    let _ = Tap::delete(&live.nl, &tap).await;
                    Err(e)
                }
            };
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
        .map(|other| (net.tap.clone(), other.tap.clone()))
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
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<Ipv4Addr>().ok())
        .filter(|ip| !ip.is_loopback())
        .collect()
}

/// The footprint in `path`: none if there is no file; an error (in words)
/// if there is one that cannot be read.
fn read_footprint(path: &Path) -> Result<Footprint, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Footprint::default()),
        Err(e) => Err(e.to_string()),
    }
}

fn write_footprint(path: &Path, footprint: &Footprint) -> Result<(), NetError> {
    let io = |op| {
        move |source| NetError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    if *footprint == Footprint::default() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove")(e)),
            _ => Ok(()),
        };
    }
    let json = serde_json::to_vec_pretty(footprint).map_err(|e| io("serialise")(e.into()))?;
    crate::fsutil::write_atomic(path, &json, crate::fsutil::Durability::Synced).map_err(|e| {
        NetError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    })
}

impl NetError {
    /// The class of this failure (see [`ErrorKind`](crate::ErrorKind)): a
    /// taken address, MAC or port is a conflict; an address or MAC the
    /// subnet refuses is invalid; no uplink or no nftables means the host
    /// is not ready; the rest (netlink, TAPs, a rejected transaction)
    /// failed.
    pub fn kind(&self) -> crate::ErrorKind {
        use super::ipam::IpamError;
        use crate::ErrorKind;
        match self {
            NetError::Ipam(IpamError::IpTaken { .. } | IpamError::MacTaken { .. })
            | NetError::PortInUse { .. }
            | NetError::PortTwice { .. }
            | NetError::TapNamesTaken { .. } => ErrorKind::Conflict,
            NetError::Ipam(
                IpamError::OutOfSubnet { .. }
                | IpamError::Reserved { .. }
                | IpamError::MacNotUnicast { .. }
                | IpamError::SubnetSyntax { .. }
                | IpamError::PrefixLen { .. }
                | IpamError::HostBitsSet { .. }
                | IpamError::MacSyntax { .. },
            ) => ErrorKind::InvalidInput,
            NetError::UplinkMissing { .. } => ErrorKind::HostNotReady,
            NetError::Firewall(super::firewall::FirewallError::Nft(
                super::nft::NftError::Missing { .. },
            )) => ErrorKind::HostNotReady,
            _ => ErrorKind::Failed,
        }
    }
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
