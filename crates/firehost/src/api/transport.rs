//! HTTP/1.1 over the API unix socket, on one kept-alive connection.
//!
//! Firecracker's API server handles one request at a time, so a single
//! connection per VM loses nothing and saves a connect (and an accept in the
//! VMM) per request. The connection is re-established when Firecracker or
//! the network stack closed it; a request that may have reached the VMM is
//! never re-sent, since not every Firecracker request is idempotent.

use std::future::{Future, poll_fn};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use super::error::ApiError;

/// Default time allowed for one request, including connecting.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A raw response: status and body.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body bytes.
    pub body: Bytes,
}

type Connection = hyper::client::conn::http1::Connection<TokioIo<UnixStream>, Full<Bytes>>;

/// An open HTTP/1.1 connection. The connection future is polled by the task
/// making the request, not by a task of its own: requests are one at a time
/// anyway, and this saves a task (and its memory) per VM and a cross-task
/// hand-off per request.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    connection: Pin<Box<Connection>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

/// Runs `fut` while polling `connection`, which moves the bytes. Fails if
/// the connection ends first.
async fn drive<T>(
    connection: &mut Pin<Box<Connection>>,
    fut: impl Future<Output = T>,
) -> Result<T, Option<hyper::Error>> {
    tokio::select! {
        biased;
        out = fut => Ok(out),
        ended = connection => Err(ended.err()),
    }
}

impl Conn {
    /// Lets the connection notice a close by the VMM since the last request,
    /// without waiting. True if it is still usable.
    fn still_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.connection.as_mut().poll(&mut cx).is_pending() && !self.sender.is_closed()
    }
}

/// One API connection, re-opened as needed.
#[derive(Debug)]
pub(crate) struct Transport {
    socket: PathBuf,
    timeout: Duration,
    conn: Mutex<Option<Conn>>,
}

impl Transport {
    pub(crate) fn new(socket: PathBuf, timeout: Duration) -> Self {
        Transport {
            socket,
            timeout,
            conn: Mutex::new(None),
        }
    }

    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Uses an already connected stream for the next requests.
    pub(crate) async fn adopt(&self, stream: UnixStream) -> Result<(), ApiError> {
        let conn = handshake(&self.socket, stream).await?;
        *self.conn.lock().await = Some(conn);
        Ok(())
    }

    /// Sends one request and reads the whole response.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<RawResponse, ApiError> {
        let mut guard = self.conn.lock().await;
        let timeout = self.timeout;
        let exchange = exchange(&self.socket, &mut guard, method.clone(), path, body);
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                // The response may still arrive later on this connection;
                // drop it so the next request can't read a stale answer.
                *guard = None;
                Err(ApiError::Timeout {
                    method,
                    path: path.to_owned(),
                    after: timeout,
                })
            }
        }
    }
}

async fn exchange(
    socket: &Path,
    slot: &mut Option<Conn>,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<RawResponse, ApiError> {
    let transport_err = |source: Option<hyper::Error>| match source {
        Some(source) => ApiError::Transport {
            method: method.clone(),
            path: path.to_owned(),
            source,
        },
        None => ApiError::Closed {
            method: method.clone(),
            path: path.to_owned(),
        },
    };
    // Reuse the connection if it is still open and ready; otherwise
    // connect anew. Nothing has been sent yet, so this is always safe.
    let reusable = match slot.as_mut() {
        Some(conn) => {
            conn.still_open() && {
                let Conn { sender, connection } = conn;
                let ready = poll_fn(|cx| sender.poll_ready(cx));
                matches!(drive(connection, ready).await, Ok(Ok(())))
            }
        }
        None => false,
    };
    if !reusable {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| ApiError::Connect {
                socket: socket.to_owned(),
                source,
            })?;
        *slot = Some(handshake(socket, stream).await?);
    }
    let conn = slot.as_mut().expect("connection set above");

    let mut req = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(http::header::HOST, "localhost")
        .header(http::header::ACCEPT, "application/json");
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(body.unwrap_or_default()))
        .expect("method, path and headers are valid");

    let sent = conn.sender.send_request(req);
    let response = match drive(&mut conn.connection, sent).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            *slot = None;
            return Err(transport_err(Some(e)));
        }
        Err(e) => {
            *slot = None;
            return Err(transport_err(e));
        }
    };
    let status = response.status();
    let collected = drive(&mut conn.connection, response.into_body().collect()).await;
    let body = match collected {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => {
            *slot = None;
            return Err(transport_err(Some(e)));
        }
        Err(e) => {
            *slot = None;
            return Err(transport_err(e));
        }
    };
    Ok(RawResponse { status, body })
}

async fn handshake(socket: &Path, stream: UnixStream) -> Result<Conn, ApiError> {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ApiError::Connect {
            socket: socket.to_owned(),
            source: std::io::Error::other(source),
        })?;
    Ok(Conn {
        sender,
        connection: Box::pin(connection),
    })
}
