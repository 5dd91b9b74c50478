//! The gateway's proxy: a VM's TCP connections to ports 80 and 443, read
//! until they name a host, then joined to that host as the policy allows.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::timeout;

use super::sniff::{MAX_SNIFF, Sniffed, sniff};
use super::{CONNECT_TIMEOUT, SNIFF_TIMEOUT, Shared, upstream};

/// How much one `splice` moves at most, and the size asked of each
/// relay's pipe.
const PIPE_SIZE: usize = 256 << 10;

/// Connections proxied at once; beyond it new ones are closed at once.
const MAX_CONNECTIONS: usize = 4096;

/// Proxies connections to `listener` until the gateway stops.
pub(super) async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!(error = %e, "proxy accept failed");
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = proxy(&shared, stream, peer).await {
                tracing::debug!(%peer, error = %e, "proxied connection ended");
            }
        });
    }
}

/// One connection, from the VM at `peer`.
async fn proxy(shared: &Shared, mut guest: TcpStream, peer: SocketAddr) -> std::io::Result<()> {
    let SocketAddr::V4(peer) = peer else {
        return Ok(());
    };
    let Some(vm) = shared.vm(*peer.ip()) else {
        return Ok(());
    };
    // Where the guest meant to go, before the firewall redirected it here.
    let original = rustix::net::sockopt::ip_original_dst(&guest)?;
    let mut first = Vec::with_capacity(2048);
    let sniffed = timeout(SNIFF_TIMEOUT, read_until_named(&mut guest, &mut first))
        .await
        .unwrap_or(Ok(Sniffed::Nameless))?;
    let port = original.port();
    let targets: Vec<SocketAddrV4> = match &sniffed {
        Sniffed::Name(name) if shared.host.name_allowed(&vm.policy, name) => {
            // The name, not the guest's address: a guest cannot pair an
            // allowed name with a server of its own.
            upstream::resolve(&shared.upstream, name)
                .await
                .into_iter()
                .filter(|ip| shared.host.resolved_usable(&vm.policy, *ip, port))
                .map(|ip| SocketAddrV4::new(ip, port))
                .collect()
        }
        Sniffed::Name(_) => Vec::new(),
        Sniffed::Nameless | Sniffed::NeedMore => {
            if shared
                .host
                .address_allowed(&vm.policy, *original.ip(), port)
            {
                vec![original]
            } else {
                Vec::new()
            }
        }
    };
    let Some(mut server) = connect_any(&targets).await else {
        Shared::refuse(&vm);
        tracing::debug!(vm = %peer.ip(), to = %original, ?sniffed, "connection refused");
        return Ok(());
    };
    server.write_all(&first).await?;
    tokio::try_join!(relay(&guest, &server), relay(&server, &guest))?;
    Ok(())
}

/// Reads from the guest into `first` until its bytes name a host, say
/// they never will, or reach [`MAX_SNIFF`].
async fn read_until_named(guest: &mut TcpStream, first: &mut Vec<u8>) -> std::io::Result<Sniffed> {
    let mut chunk = [0u8; 2048];
    loop {
        let n = guest.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Sniffed::Nameless);
        }
        first.extend_from_slice(&chunk[..n]);
        match sniff(first) {
            Sniffed::NeedMore if first.len() < MAX_SNIFF => {}
            Sniffed::NeedMore => return Ok(Sniffed::Nameless),
            decided => return Ok(decided),
        }
    }
}

/// Moves what `from` sends to `to` until `from` ends its side, then ends
/// `to`'s: through a pipe with `splice`, so the bytes never enter this
/// process (a copy through user space costs the proxy most of a
/// connection's throughput).
async fn relay(from: &TcpStream, to: &TcpStream) -> std::io::Result<()> {
    use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};
    use tokio::io::Interest;
    let (pipe_out, pipe_in) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    // A larger pipe moves more per call; the default size still works.
    let _ = rustix::pipe::fcntl_setpipe_size(&pipe_in, PIPE_SIZE);
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    loop {
        let filled = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                Ok(splice(from, None, &pipe_in, None, PIPE_SIZE, flags)?)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        };
        if filled == 0 {
            // Half-close: the other direction may still be talking.
            let _ = rustix::net::shutdown(to, rustix::net::Shutdown::Write);
            return Ok(());
        }
        let mut left = filled;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                Ok(splice(&pipe_out, None, to, None, left, flags)?)
            }) {
                Ok(n) => left -= n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A connection to the first of `targets` that answers.
async fn connect_any(targets: &[SocketAddrV4]) -> Option<TcpStream> {
    for target in targets {
        match timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(e)) => tracing::debug!(%target, error = %e, "proxy cannot connect"),
            Err(_) => tracing::debug!(%target, "proxy connect timed out"),
        }
    }
    None
}
