//! `AF_VSOCK` listening, on tokio.
//!
//! Neither std nor tokio has vsock sockets, and rustix has the address
//! family but no vsock address type, so this module does the three calls
//! that need `sockaddr_vm` (`bind`, `accept4`) with libc and everything
//! else with rustix, on non-blocking descriptors driven by
//! [`AsyncFd`]. The agent binds `VMADDR_CID_ANY`: the host reaches it at
//! the guest's CID through Firecracker's vsock device, and a process in the
//! guest may reach it at `VMADDR_CID_LOCAL` where the loopback transport
//! exists.

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustix::net::{AddressFamily, Shutdown, SocketFlags, SocketType};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How many connections may wait for `accept`.
const BACKLOG: i32 = 128;

/// A vsock address: context id and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VsockAddr {
    /// The context id (`2` is the host, `VMADDR_CID_ANY` binds every CID).
    pub cid: u32,
    /// The port.
    pub port: u32,
}

impl std::fmt::Display for VsockAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vsock:{}:{}", self.cid, self.port)
    }
}

fn sockaddr(addr: VsockAddr) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain integers, for which all-zero is a valid
    // value (and the required value of the reserved fields).
    let mut raw: libc::sockaddr_vm = unsafe { mem::zeroed() };
    raw.svm_family = libc::sa_family_t::try_from(libc::AF_VSOCK).expect("AF_VSOCK is 40");
    raw.svm_cid = addr.cid;
    raw.svm_port = addr.port;
    raw
}

fn sockaddr_len() -> libc::socklen_t {
    libc::socklen_t::try_from(mem::size_of::<libc::sockaddr_vm>()).expect("sockaddr_vm is 16 bytes")
}

/// A listening vsock socket.
#[derive(Debug)]
pub struct VsockListener {
    fd: AsyncFd<OwnedFd>,
}

impl VsockListener {
    /// Listens on `port` for every CID (`VMADDR_CID_ANY`).
    ///
    /// Must be called inside a tokio runtime.
    pub fn bind(port: u32) -> io::Result<VsockListener> {
        VsockListener::bind_addr(VsockAddr {
            cid: libc::VMADDR_CID_ANY,
            port,
        })
    }

    /// Listens on `addr`.
    pub fn bind_addr(addr: VsockAddr) -> io::Result<VsockListener> {
        let fd = rustix::net::socket_with(
            AddressFamily::VSOCK,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?;
        let raw = sockaddr(addr);
        // SAFETY: `fd` is an open socket; the pointer and length describe
        // `raw`, a sockaddr_vm that lives across the call.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const raw).cast::<libc::sockaddr>(),
                sockaddr_len(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        rustix::net::listen(&fd, BACKLOG)?;
        Ok(VsockListener {
            fd: crate::fd::register(fd)?,
        })
    }

    /// The bound address (`getsockname`).
    pub fn local_addr(&self) -> io::Result<VsockAddr> {
        let mut raw = sockaddr(VsockAddr { cid: 0, port: 0 });
        let mut len = sockaddr_len();
        // SAFETY: the pointer and length describe `raw`, which is writable
        // and as large as the kernel may write for this family.
        let rc = unsafe {
            libc::getsockname(
                self.fd.as_raw_fd(),
                (&raw mut raw).cast::<libc::sockaddr>(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(VsockAddr {
            cid: raw.svm_cid,
            port: raw.svm_port,
        })
    }

    /// Waits for a connection.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a connection is only taken from the queue when it is
    /// returned.
    pub async fn accept(&self) -> io::Result<(VsockStream, VsockAddr)> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| accept(fd.get_ref())) {
                Ok(Ok((fd, peer))) => return Ok((VsockStream::new(fd)?, peer)),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

fn accept(listener: &OwnedFd) -> io::Result<(OwnedFd, VsockAddr)> {
    let mut raw = sockaddr(VsockAddr { cid: 0, port: 0 });
    let mut len = sockaddr_len();
    // SAFETY: `listener` is an open socket; the pointer and length describe
    // `raw`, which is writable and large enough for a vsock peer address.
    let rc = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            (&raw mut raw).cast::<libc::sockaddr>(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 succeeded, so `rc` is a new descriptor that nothing
    // else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(rc) };
    Ok((
        fd,
        VsockAddr {
            cid: raw.svm_cid,
            port: raw.svm_port,
        },
    ))
}

/// A connected vsock socket.
#[derive(Debug)]
pub struct VsockStream {
    fd: AsyncFd<OwnedFd>,
}

impl VsockStream {
    /// Wraps a connected, non-blocking vsock socket.
    pub fn new(fd: OwnedFd) -> io::Result<VsockStream> {
        Ok(VsockStream {
            fd: crate::fd::register(fd)?,
        })
    }

    /// Connects to `addr` (blocking until the peer answers; used by tests
    /// and by guest-side clients of the loopback transport).
    pub fn connect_blocking(addr: VsockAddr) -> io::Result<OwnedFd> {
        let fd = rustix::net::socket_with(
            AddressFamily::VSOCK,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        let raw = sockaddr(addr);
        // SAFETY: `fd` is an open socket; the pointer and length describe
        // `raw`, which lives across the call.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&raw const raw).cast::<libc::sockaddr>(),
                sockaddr_len(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

impl AsyncRead for VsockStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut *unfilled)?)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for VsockStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| Ok(rustix::io::write(fd.get_ref(), buf)?)) {
                Ok(Ok(n)) => return Poll::Ready(Ok(n)),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Writes go straight to the socket: nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(rustix::net::shutdown(
            self.fd.get_ref().as_fd(),
            Shutdown::Write,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// `VMADDR_CID_LOCAL`: this machine, through the loopback transport.
    const CID_LOCAL: u32 = 1;

    fn vsock_available() -> bool {
        rustix::net::socket(AddressFamily::VSOCK, SocketType::STREAM, None).is_ok()
    }

    #[tokio::test]
    async fn binds_any_cid_on_the_given_port() {
        if !vsock_available() {
            eprintln!("skipped: this kernel has no AF_VSOCK");
            return;
        }
        // Port 0 is not "any port" for vsock (that is u32::MAX): ask for
        // VMADDR_PORT_ANY to get a free one, as the agent's port is fixed.
        let listener = VsockListener::bind(libc::VMADDR_PORT_ANY).unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(addr.cid, libc::VMADDR_CID_ANY);
        assert_ne!(addr.port, libc::VMADDR_PORT_ANY);
        // Binding the same port again fails: the address is really taken.
        let err = VsockListener::bind(addr.port).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    }

    #[tokio::test]
    async fn carries_bytes_both_ways_over_the_loopback_transport() {
        if !std::path::Path::new("/sys/module/vsock_loopback").exists() {
            eprintln!("skipped: no vsock_loopback transport on this kernel");
            return;
        }
        let listener = VsockListener::bind(libc::VMADDR_PORT_ANY).unwrap();
        let port = listener.local_addr().unwrap().port;
        let client = tokio::task::spawn_blocking(move || {
            VsockStream::connect_blocking(VsockAddr {
                cid: CID_LOCAL,
                port,
            })
        });
        let (mut server, _peer) = listener.accept().await.unwrap();
        let client = client.await.unwrap().unwrap();
        rustix::fs::fcntl_setfl(&client, rustix::fs::OFlags::NONBLOCK).unwrap();
        let mut client = VsockStream::new(client).unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong");
    }
}
