//! The gateway's name-aware half of egress policy: a DNS resolver and a
//! TLS/HTTP proxy on the bridge's address, serving every VM whose policy
//! has domain rules. One per network, started with the first such VM.
//!
//! - **The resolver** ([`resolver`]) answers a VM's query only for a name
//!   its policy allows, by asking the upstream; before answering, it adds
//!   the answer's addresses to the VM's `learned_<key>` set in the
//!   firewall with the answer's TTL, so that non-web protocols to allowed
//!   names work while the answer is fresh. Other names get "no such
//!   name".
//! - **The proxy** ([`proxy`]) takes the VM's TCP connections to ports 80
//!   and 443 (redirected by the firewall), reads the TLS server name or
//!   the HTTP `Host`, and when the policy allows that name connects to the
//!   name itself, resolved on the host: a guest cannot pair an allowed
//!   name with an address of its choosing. A resolved address in a denied
//!   range (the LAN, loopback, link-local) is not used. A connection that
//!   names nothing is decided by its address, as the firewall would.
//!
//! Which VM asks is the packet's source address: the firewall drops any
//! frame from a TAP whose source address or MAC is not the VM's, so it
//! cannot be forged.
//!
//! What this does not cover is in the README ("Egress policy").

pub mod decide;
pub mod dns;
mod proxy;
pub mod remote;
mod resolver;
pub mod sniff;
mod upstream;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::task::JoinSet;

use super::config::DomainConfig;
use super::firewall::Firewall;
use crate::vocab::EgressPolicy;
use decide::HostRules;

/// How long the proxy waits for a connection's first bytes to name a host.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection to the upstream or a destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the upstream has to answer one query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// One VM as the gateway knows it.
#[derive(Debug)]
pub(crate) struct GatewayVm {
    /// Its policy.
    pub policy: EgressPolicy,
    /// Names and connections refused to it since the gateway started.
    pub refused: AtomicU64,
    /// When each address this gateway opened to it closes again: an
    /// answer that would not extend an address by much more than half its
    /// time costs no firewall transaction.
    pub learned: std::sync::Mutex<HashMap<Ipv4Addr, std::time::Instant>>,
}

/// The VMs the gateway serves, by host address.
type Vms = Arc<RwLock<HashMap<Ipv4Addr, Arc<GatewayVm>>>>;

/// What the resolver and the proxy share.
#[derive(Debug)]
struct Shared {
    vms: Vms,
    host: HostRules,
    upstream: Vec<SocketAddrV4>,
    firewall: Firewall,
    min_ttl: Duration,
    max_ttl: Duration,
}

impl Shared {
    /// The VM at `ip`, if the gateway serves it.
    fn vm(&self, ip: Ipv4Addr) -> Option<Arc<GatewayVm>> {
        self.vms
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&ip)
            .cloned()
    }

    /// Counts a refusal for `vm`.
    fn refuse(vm: &GatewayVm) {
        vm.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// The running resolver and proxy. Dropping it stops them.
#[derive(Debug)]
pub struct Gateway {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl Gateway {
    /// Binds the resolver (UDP and TCP) and the proxy on `gateway` and
    /// starts serving; fails (binding nothing) if a port is taken. Its
    /// sockets belong to the calling thread's network namespace.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped before it returns, the sockets it bound are
    /// closed and nothing is served.
    pub async fn start(
        gateway: Ipv4Addr,
        config: &DomainConfig,
        upstream: Vec<SocketAddrV4>,
        host: HostRules,
        firewall: Firewall,
    ) -> std::io::Result<Gateway> {
        let resolver_addr = SocketAddrV4::new(gateway, config.resolver_port);
        let proxy_addr = SocketAddrV4::new(gateway, config.proxy_port);
        let udp = tokio::net::UdpSocket::bind(resolver_addr).await?;
        let tcp = tokio::net::TcpListener::bind(resolver_addr).await?;
        let proxy = tokio::net::TcpListener::bind(proxy_addr).await?;
        let shared = Arc::new(Shared {
            vms: Arc::default(),
            host,
            upstream,
            firewall,
            min_ttl: config.min_ttl,
            max_ttl: config.max_ttl.max(config.min_ttl),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(resolver::serve_udp(shared.clone(), udp));
        tasks.spawn(resolver::serve_tcp(shared.clone(), tcp));
        tasks.spawn(proxy::serve(shared.clone(), proxy));
        tracing::info!(resolver = %resolver_addr, proxy = %proxy_addr, "egress gateway started");
        Ok(Gateway { shared, tasks })
    }

    /// Serves the VM at `ip` under `policy` from now on, or stops serving
    /// it (`None`). Its refusal count starts again when it is added.
    pub(crate) fn set(&self, ip: Ipv4Addr, policy: Option<EgressPolicy>) {
        let mut vms = self
            .shared
            .vms
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match policy {
            // Unchanged: the entry stays, with what it has learned (every
            // sync names every VM, so this is the common case).
            Some(policy) if vms.get(&ip).is_some_and(|vm| vm.policy == policy) => {}
            Some(policy) => {
                let refused = vms
                    .get(&ip)
                    .map_or(0, |vm| vm.refused.load(Ordering::Relaxed));
                vms.insert(
                    ip,
                    Arc::new(GatewayVm {
                        policy,
                        refused: AtomicU64::new(refused),
                        learned: std::sync::Mutex::default(),
                    }),
                );
            }
            None => {
                vms.remove(&ip);
            }
        }
    }

    /// Serves exactly `vms` from now on: the others are forgotten, and
    /// the ones kept keep their refusal counts.
    pub fn serve_exactly(&self, vms: Vec<(Ipv4Addr, EgressPolicy)>) {
        let wanted: std::collections::HashSet<Ipv4Addr> = vms.iter().map(|(ip, _)| *ip).collect();
        let gone: Vec<Ipv4Addr> = self
            .shared
            .vms
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .filter(|ip| !wanted.contains(ip))
            .copied()
            .collect();
        for ip in gone {
            self.set(ip, None);
        }
        for (ip, policy) in vms {
            self.set(ip, Some(policy));
        }
    }

    /// Names and connections refused to each VM it serves.
    pub(crate) fn refused_all(&self) -> std::collections::BTreeMap<Ipv4Addr, u64> {
        self.shared
            .vms
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(ip, vm)| (*ip, vm.refused.load(Ordering::Relaxed)))
            .collect()
    }
}

impl Gateway {
    /// Stops the resolver and the proxy and waits until their sockets are
    /// closed, so the ports can be bound again at once. Connections being
    /// proxied run on until either side closes.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the tasks are aborted at once; dropped early, their
    /// sockets close a moment later.
    pub async fn stop(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}
