//! The vsock device and its host side.
//!
//! Firecracker exposes a guest's vsock device on the host as one unix
//! socket (hybrid vsock, Firecracker's `docs/vsock.md`):
//!
//! - **host → guest**: connect to the socket, write `CONNECT <port>\n`; the
//!   device answers `OK <host port>\n` once a guest process listening on
//!   vsock port `<port>` accepted, and relays bytes from then on. When
//!   nothing listens (the guest is still booting, say) the device closes
//!   the connection. [`connect`] does the handshake, retrying until a
//!   deadline, and reads the answer byte by byte so that nothing the guest
//!   sends right after it is lost.
//! - **guest → host**: a guest process connecting to the host (CID 2) on
//!   port `P` reaches whatever listens on the unix socket `<uds>_<P>`;
//!   [`listen`] binds it.
//!
//! firehost puts each VM's device socket in the VM's directory
//! ([`SOCKET_FILE`]); guest CIDs only need to be unique per socket, so every
//! VM can use the default [`DEFAULT_GUEST_CID`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// The device socket's file name in a VM's directory.
pub const SOCKET_FILE: &str = "vsock.sock";

/// The guest CID firehost gives a VM unless told otherwise (0–2 are
/// reserved).
pub const DEFAULT_GUEST_CID: u32 = 3;

/// The longest answer line the device sends (`OK 4294967295\n` is 14).
const MAX_ANSWER: usize = 32;

/// What a VM spec asks of the vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockSpec {
    /// The guest's context id, 3 or more.
    #[serde(default = "default_cid")]
    pub guest_cid: u32,
}

fn default_cid() -> u32 {
    DEFAULT_GUEST_CID
}

impl Default for VsockSpec {
    fn default() -> Self {
        VsockSpec {
            guest_cid: DEFAULT_GUEST_CID,
        }
    }
}

/// Why a vsock connection could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VsockError {
    /// Nothing accepted on the guest port before the deadline (the guest is
    /// not up, or nothing listens on the port).
    #[error("vsock port {port} behind {uds:?} did not accept within {waited:?} (last: {last})")]
    Timeout {
        /// The device socket.
        uds: PathBuf,
        /// The guest port.
        port: u32,
        /// How long we tried.
        waited: Duration,
        /// The last failure.
        last: String,
    },
    /// The device answered something other than `OK <n>`.
    #[error("vsock device {uds:?} answered {answer:?} to CONNECT {port}")]
    BadAnswer {
        /// The device socket.
        uds: PathBuf,
        /// The guest port.
        port: u32,
        /// What it said.
        answer: String,
    },
    /// Binding a host-side listener failed.
    #[error("cannot listen on {path:?}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One handshake attempt's failure: try again or give up.
enum Attempt {
    Retry(String),
    Fatal(VsockError),
}

/// Connects to guest port `port` through the device socket `uds`, retrying
/// (10 ms, growing to 200 ms between attempts) until `timeout` has passed.
/// The stream returned is positioned right after the device's `OK` line.
///
/// # Cancel safety
///
/// Cancel safe: a dropped attempt closes its connection.
pub async fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VsockError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        let last = match attempt(uds, port).await {
            Ok(stream) => return Ok(stream),
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(why)) => why,
        };
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(VsockError::Timeout {
                uds: uds.to_owned(),
                port,
                waited,
                last,
            });
        }
        // The guest gives no signal when it starts listening: retrying is
        // the protocol.
        tokio::time::sleep(pause.min(timeout - waited)).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

async fn attempt(uds: &Path, port: u32) -> Result<UnixStream, Attempt> {
    let mut stream = UnixStream::connect(uds)
        .await
        .map_err(|e| Attempt::Retry(format!("connect: {e}")))?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| Attempt::Retry(format!("write CONNECT: {e}")))?;
    // Byte by byte: whatever follows the newline belongs to the caller.
    let mut answer = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        match stream.read(&mut byte).await {
            Ok(0) => return Err(Attempt::Retry("closed before answering".into())),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if answer.len() < MAX_ANSWER => answer.push(byte[0]),
            Ok(_) => return Err(bad_answer(uds, port, &answer)),
            Err(e) => return Err(Attempt::Retry(format!("read answer: {e}"))),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    match text.strip_prefix("OK ").map(|n| n.trim().parse::<u32>()) {
        Some(Ok(_)) => Ok(stream),
        _ => Err(bad_answer(uds, port, &answer)),
    }
}

fn bad_answer(uds: &Path, port: u32, answer: &[u8]) -> Attempt {
    Attempt::Fatal(VsockError::BadAnswer {
        uds: uds.to_owned(),
        port,
        answer: String::from_utf8_lossy(answer).into_owned(),
    })
}

/// The unix socket where guest connections to host port `port` arrive.
pub fn host_port_path(uds: &Path, port: u32) -> PathBuf {
    let mut path = uds.as_os_str().to_owned();
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

/// Listens for guest connections to host port `port` (`<uds>_<port>`).
/// A stale socket file from an earlier listener is replaced.
pub fn listen(uds: &Path, port: u32) -> Result<UnixListener, VsockError> {
    let path = host_port_path(uds, port);
    let bind = || UnixListener::bind(&path);
    let listener = match bind() {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let _ = std::fs::remove_file(&path);
            bind()
        }
        other => other,
    };
    listener.map_err(|source| VsockError::Listen { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    /// A device that answers each connection with `reply` (after reading
    /// the CONNECT line) and then sends `extra`.
    async fn device(dir: &Path, reply: &'static [u8], extra: &'static [u8]) -> PathBuf {
        let uds = dir.join("v.sock");
        let listener = UnixListener::bind(&uds).unwrap();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let mut conn = tokio::io::BufReader::new(conn);
                let mut line = String::new();
                conn.read_line(&mut line).await.unwrap();
                assert_eq!(line, "CONNECT 52\n");
                let mut conn = conn.into_inner();
                conn.write_all(reply).await.unwrap();
                conn.write_all(extra).await.unwrap();
            }
        });
        uds
    }

    #[tokio::test]
    async fn the_handshake_keeps_the_bytes_after_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let uds = device(dir.path(), b"OK 1073741824\n", b"hello").await;
        let mut stream = connect(&uds, 52, Duration::from_secs(5)).await.unwrap();
        let mut got = [0u8; 5];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn a_bad_answer_is_an_error_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let uds = device(dir.path(), b"NOPE\n", b"").await;
        let err = connect(&uds, 52, Duration::from_secs(5)).await.unwrap_err();
        assert!(
            matches!(err, VsockError::BadAnswer { ref answer, .. } if answer == "NOPE"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_device_that_never_accepts_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("absent.sock");
        let err = connect(&uds, 52, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, VsockError::Timeout { port: 52, .. }), "{err}");
    }

    #[tokio::test]
    async fn host_ports_listen_beside_the_device_socket() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let listener = listen(&uds, 1234).unwrap();
        assert_eq!(host_port_path(&uds, 1234), dir.path().join("v.sock_1234"));
        let client = tokio::spawn({
            let path = host_port_path(&uds, 1234);
            async move { UnixStream::connect(path).await.unwrap() }
        });
        let (_conn, _) = listener.accept().await.unwrap();
        client.await.unwrap();
        drop(listener);
        // A stale socket file does not stop the next listener.
        listen(&uds, 1234).unwrap();
    }
}
