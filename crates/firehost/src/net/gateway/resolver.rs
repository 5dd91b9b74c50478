//! The gateway's resolver: a VM's queries, answered by the upstream for
//! names its policy allows (their addresses learned by the firewall
//! first), "no such name" for the others, nothing for strangers.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::time::timeout;

use super::{GatewayVm, Shared, dns, upstream};

/// Queries in flight at once, over UDP and TCP each: beyond it a flood
/// from one guest is dropped, not queued.
const MAX_IN_FLIGHT: usize = 1024;
/// How long a TCP client may sit between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Answers queries on `socket` until the gateway stops.
pub(super) async fn serve_udp(shared: Arc<Shared>, socket: tokio::net::UdpSocket) {
    let socket = Arc::new(socket);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!(error = %e, "resolver receive failed");
                continue;
            }
        };
        let SocketAddr::V4(from) = from else {
            continue;
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let (query, shared, socket) = (buf[..n].to_vec(), shared.clone(), socket.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(reply) = answer(&shared, *from.ip(), &query, false).await {
                let _ = socket.send_to(&reply, from).await;
            }
        });
    }
}

/// Answers queries over TCP connections to `listener`.
pub(super) async fn serve_tcp(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!(error = %e, "resolver accept failed");
                continue;
            }
        };
        let SocketAddr::V4(peer) = peer else {
            continue;
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            while let Ok(Ok(Some(query))) =
                timeout(TCP_IDLE, upstream::read_message(&mut stream)).await
            {
                let Some(reply) = answer(&shared, *peer.ip(), &query, true).await else {
                    return;
                };
                if upstream::write_message(&mut stream, &reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The reply to `query` from the VM at `from`; `None` sends nothing (a
/// stranger, bytes that are not a query, no upstream answer: the guest
/// asks again).
async fn answer(shared: &Shared, from: Ipv4Addr, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let vm = shared.vm(from)?;
    let parsed = dns::parse_query(query)?;
    if !shared.host.name_allowed(&vm.policy, &parsed.name) {
        Shared::refuse(&vm);
        tracing::debug!(vm = %from, name = %parsed.name, "name refused");
        return dns::no_such_name(query);
    }
    let reply = if tcp {
        upstream::tcp(&shared.upstream, query).await?
    } else {
        upstream::udp(&shared.upstream, query).await?
    };
    learn(shared, from, &vm, &reply).await;
    Some(reply)
}

/// Opens the addresses of `reply` to the VM at `vm_ip` for their TTL,
/// before the guest has the answer (else its first packet could beat the
/// firewall). Addresses the VM must not reach are left out.
async fn learn(shared: &Shared, vm_ip: Ipv4Addr, vm: &GatewayVm, reply: &[u8]) {
    let now = Instant::now();
    let open_until = |ip: &Ipv4Addr| {
        vm.learned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(ip)
            .copied()
    };
    let learned: Vec<(Ipv4Addr, Duration)> = dns::addresses(reply)
        .into_iter()
        .filter(|(ip, _)| shared.host.learnable(&vm.policy, *ip))
        .map(|(ip, ttl)| {
            let ttl = Duration::from_secs(u64::from(ttl));
            (ip, ttl.clamp(shared.min_ttl, shared.max_ttl))
        })
        // Already open for more than half of what this answer would give.
        .filter(|(ip, ttl)| open_until(ip).is_none_or(|until| until < now + *ttl / 2))
        .collect();
    if learned.is_empty() {
        return;
    }
    let firewall = shared.firewall.clone();
    let opening = learned.clone();
    let done = tokio::task::spawn_blocking(move || firewall.learn(vm_ip, &opening)).await;
    match done {
        Ok(Ok(())) => {
            // The kernel counts each timeout from its commit, a moment
            // after `now`: the address closes no earlier than recorded.
            let mut open = vm
                .learned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            open.retain(|_, until| *until > now);
            for (ip, ttl) in learned {
                open.insert(ip, now + ttl);
            }
        }
        Ok(Err(e)) => tracing::warn!(vm = %vm_ip, error = %e, "cannot open learned addresses"),
        Err(e) => tracing::warn!(vm = %vm_ip, error = %e, "learning addresses panicked"),
    }
}
