//! The listening sockets, one type for the three transports.
//!
//! A session does not care how its bytes arrive, so [`Listener::accept`]
//! hands out a boxed [`Connection`] plus a peer description for the log.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::config::ListenAddr;
use crate::vsock::VsockListener;

/// A byte stream a session runs on.
pub trait Connection: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connection for T {}

/// A listening socket.
#[derive(Debug)]
pub enum Listener {
    /// `vsock:PORT`.
    Vsock(VsockListener),
    /// `unix:PATH`.
    Unix {
        /// The socket.
        listener: UnixListener,
        /// Its path, removed again by [`Listener::cleanup`].
        path: PathBuf,
    },
    /// `tcp:IP:PORT`.
    Tcp(TcpListener),
}

impl Listener {
    /// Starts listening on `addr`. A unix socket file left behind by an
    /// earlier run is replaced; any other file at that path is an error.
    ///
    /// Must be called inside a tokio runtime.
    pub async fn bind(addr: &ListenAddr) -> io::Result<Listener> {
        match addr {
            ListenAddr::Vsock { port } => Ok(Listener::Vsock(VsockListener::bind(*port)?)),
            ListenAddr::Unix { path } => {
                match tokio::fs::symlink_metadata(path).await {
                    Ok(md) if md.file_type().is_socket() => tokio::fs::remove_file(path).await?,
                    Ok(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            "a file that is not a socket is in the way",
                        ));
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                Ok(Listener::Unix {
                    listener: UnixListener::bind(path)?,
                    path: path.clone(),
                })
            }
            ListenAddr::Tcp { addr } => Ok(Listener::Tcp(TcpListener::bind(addr).await?)),
        }
    }

    /// Where it listens, as `--listen` would say it (with the real port
    /// when port 0 was asked for).
    pub fn describe(&self) -> String {
        match self {
            Listener::Vsock(l) => match l.local_addr() {
                Ok(a) => format!("vsock:{}", a.port),
                Err(_) => "vsock".to_owned(),
            },
            Listener::Unix { path, .. } => format!("unix:{}", path.display()),
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("tcp:{a}"),
                Err(_) => "tcp".to_owned(),
            },
        }
    }

    /// Waits for a connection; returns it and a description of the peer.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, like the underlying `accept`s.
    pub async fn accept(&self) -> io::Result<(Box<dyn Connection>, String)> {
        match self {
            Listener::Vsock(l) => {
                let (stream, peer) = l.accept().await?;
                Ok((Box::new(stream), peer.to_string()))
            }
            Listener::Unix { listener, path } => {
                let (stream, _) = listener.accept().await?;
                Ok((Box::new(stream), format!("unix:{}", path.display())))
            }
            Listener::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                // Frames are written header first, then payload: without
                // this, Nagle would hold the payload back.
                stream.set_nodelay(true)?;
                Ok((Box::new(stream), format!("tcp:{peer}")))
            }
        }
    }

    /// Removes the socket file of a unix listener (best effort, at exit).
    pub fn cleanup(&self) {
        if let Listener::Unix { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}
