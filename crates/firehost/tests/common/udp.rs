//! UDP probes between namespaces: bind inside one, send until received,
//! and prove that nothing arrived.

use std::net::{SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use super::netns::GuestNs;

/// How long a packet that should arrive may take.
pub const ARRIVAL: Duration = Duration::from_secs(5);

/// A UDP socket bound to `addr` inside `ns`.
pub fn udp_in(ns: &GuestNs, addr: SocketAddrV4) -> UdpSocket {
    ns.run(move || UdpSocket::bind(addr).unwrap())
}

/// Receives one datagram within [`ARRIVAL`].
pub fn recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddrV4) {
    sock.set_read_timeout(Some(ARRIVAL)).unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = sock
        .recv_from(&mut buf)
        .expect("a datagram should have arrived");
    let std::net::SocketAddr::V4(from) = from else {
        panic!("IPv6 source {from}");
    };
    (buf[..n].to_vec(), from)
}

/// Sends to `to` every 100 ms until `receiver` gets it (ARP may have to
/// be retried after a refused attempt), within [`ARRIVAL`].
pub fn send_until_received(
    sender: &UdpSocket,
    to: SocketAddrV4,
    receiver: &UdpSocket,
) -> SocketAddrV4 {
    receiver
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + ARRIVAL;
    let mut buf = [0u8; 64];
    loop {
        sender.send_to(b"probe", to).unwrap();
        match receiver.recv_from(&mut buf) {
            Ok((_, std::net::SocketAddr::V4(from))) => return from,
            Ok((_, from)) => panic!("IPv6 source {from}"),
            Err(_) => assert!(Instant::now() < deadline, "nothing reached {to}"),
        }
    }
}

/// Asserts nothing is queued on `sock`.
pub fn assert_nothing_received(sock: &UdpSocket) {
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let got = sock.recv_from(&mut buf);
    assert!(
        matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a dropped datagram arrived: {got:?}"
    );
    sock.set_nonblocking(false).unwrap();
}
