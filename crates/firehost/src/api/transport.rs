//! HTTP/1.1 over the API unix socket, on one kept-alive connection.
//!
//! Firecracker's API server handles one request at a time, so a single
//! connection per VM loses nothing and saves a connect (and an accept in the
//! VMM) per request. The connection is re-established when Firecracker or
//! the network stack closed it; a request that may have reached the VMM is
//! never re-sent, since not every Firecracker request is idempotent.

use std::path::{Path, PathBuf};
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

/// One API connection, re-opened as needed.
#[derive(Debug)]
pub(crate) struct Transport {
    socket: PathBuf,
    timeout: Duration,
    conn: Mutex<Option<SendRequest<Full<Bytes>>>>,
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
        let sender = handshake(&self.socket, stream).await?;
        *self.conn.lock().await = Some(sender);
        Ok(())
    }

    /// Sends one request and reads the whole response.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<RawResponse, ApiError> {
        let timeout = self.timeout;
        let exchange = self.exchange(method.clone(), path, body);
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                // The response may still arrive later on this connection;
                // drop it so the next request can't read a stale answer.
                *self.conn.lock().await = None;
                Err(ApiError::Timeout {
                    method,
                    path: path.to_owned(),
                    after: timeout,
                })
            }
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<RawResponse, ApiError> {
        let mut guard = self.conn.lock().await;
        // Reuse the connection if it is still open and ready; otherwise
        // connect anew. Nothing has been sent yet, so this is always safe.
        let reusable = match guard.as_mut() {
            Some(sender) => !sender.is_closed() && sender.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            let stream =
                UnixStream::connect(&self.socket)
                    .await
                    .map_err(|source| ApiError::Connect {
                        socket: self.socket.clone(),
                        source,
                    })?;
            *guard = Some(handshake(&self.socket, stream).await?);
        }
        let sender = guard.as_mut().expect("connection set above");

        let has_body = body.is_some();
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::HOST, "localhost")
            .header(http::header::ACCEPT, "application/json");
        if has_body {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .expect("method, path and headers are valid");
        let transport_err = |source| ApiError::Transport {
            method: method.clone(),
            path: path.to_owned(),
            source,
        };
        let response = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                *guard = None;
                return Err(transport_err(e));
            }
        };
        let status = response.status();
        let body = match response.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                *guard = None;
                return Err(transport_err(e));
            }
        };
        Ok(RawResponse { status, body })
    }
}

async fn handshake(
    socket: &Path,
    stream: UnixStream,
) -> Result<SendRequest<Full<Bytes>>, ApiError> {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ApiError::Connect {
            socket: socket.to_owned(),
            source: std::io::Error::other(source),
        })?;
    // The connection task ends when the sender is dropped or the VMM closes
    // the socket; its error, if any, shows up on the next request.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
