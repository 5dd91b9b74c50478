//! Asking the upstream DNS servers, in order, each with a deadline; an
//! answer counts only if it answers the question asked (same id, same
//! question), from a socket of its own with a fresh port.

use std::net::{Ipv4Addr, SocketAddrV4};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use super::{CONNECT_TIMEOUT, UPSTREAM_TIMEOUT, dns};

/// The largest DNS message over UDP the gateway takes (EDNS's common
/// limit); over TCP, a message has a 2-byte length.
const MAX_UDP_MESSAGE: usize = 4096;

/// Sends `query` over UDP to each server in turn until one answers it.
pub(super) async fn udp(servers: &[SocketAddrV4], query: &[u8]) -> Option<Vec<u8>> {
    for server in servers {
        match timeout(UPSTREAM_TIMEOUT, udp_once(*server, query)).await {
            Ok(Ok(Some(answer))) => return Some(answer),
            Ok(Ok(None)) | Err(_) => {}
            Ok(Err(e)) => tracing::debug!(%server, error = %e, "upstream DNS over UDP failed"),
        }
    }
    None
}

async fn udp_once(server: SocketAddrV4, query: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    let socket = tokio::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; MAX_UDP_MESSAGE];
    // Datagrams that do not answer the query (late answers to another,
    // forgeries) are skipped until the deadline.
    loop {
        let n = socket.recv(&mut buf).await?;
        if dns::answers(&buf[..n], query) {
            buf.truncate(n);
            return Ok(Some(buf));
        }
    }
}

/// Sends `query` over TCP to each server in turn until one answers it.
pub(super) async fn tcp(servers: &[SocketAddrV4], query: &[u8]) -> Option<Vec<u8>> {
    for server in servers {
        match timeout(UPSTREAM_TIMEOUT + CONNECT_TIMEOUT, tcp_once(*server, query)).await {
            Ok(Ok(Some(answer))) => return Some(answer),
            Ok(Ok(None)) | Err(_) => {}
            Ok(Err(e)) => tracing::debug!(%server, error = %e, "upstream DNS over TCP failed"),
        }
    }
    None
}

async fn tcp_once(server: SocketAddrV4, query: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    let mut stream = tokio::net::TcpStream::connect(server).await?;
    write_message(&mut stream, query).await?;
    let answer = read_message(&mut stream).await?;
    Ok(answer.filter(|a| dns::answers(a, query)))
}

/// Writes one length-prefixed DNS message.
pub(super) async fn write_message(
    stream: &mut (impl AsyncWriteExt + Unpin),
    message: &[u8],
) -> std::io::Result<()> {
    let Ok(len) = u16::try_from(message.len()) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a DNS message over 64 KiB",
        ));
    };
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// Reads one length-prefixed DNS message; `None` at a clean end of stream.
pub(super) async fn read_message(
    stream: &mut (impl AsyncReadExt + Unpin),
) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}

/// The IPv4 addresses of `name`, as the upstream has them (empty when it
/// has none or does not answer).
pub(super) async fn resolve(servers: &[SocketAddrV4], name: &str) -> Vec<Ipv4Addr> {
    let id = random_id();
    let Some(query) = dns::a_query(id, name) else {
        return Vec::new();
    };
    let answer = match udp(servers, &query).await {
        Some(answer) if dns::truncated(&answer) => tcp(servers, &query).await,
        answer => answer,
    };
    answer
        .map(|a| dns::addresses(&a).into_iter().map(|(ip, _)| ip).collect())
        .unwrap_or_default()
}

/// A query id nobody can guess.
fn random_id() -> u16 {
    let mut bytes = [0u8; 2];
    if rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()).is_err() {
        // No entropy: the fresh source port still keeps off blind forgery.
        return 0x4f48;
    }
    u16::from_ne_bytes(bytes)
}
