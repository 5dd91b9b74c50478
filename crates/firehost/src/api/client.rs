//! [`ApiClient`]: one typed method per operation of Firecracker's API.
//!
//! Methods are named after the spec's `operationId`s (`putGuestDriveByID`
//! becomes [`ApiClient::put_guest_drive_by_id`]), so the spec and the code
//! can be read side by side; a test checks that every operation has one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::error::ApiError;
use super::transport::{DEFAULT_REQUEST_TIMEOUT, RawResponse, Transport};
use crate::api::models::*;

/// A typed client for one Firecracker process's API socket.
///
/// Requests go out one at a time over a single kept-alive HTTP/1.1
/// connection, which matches Firecracker's single-threaded API server.
/// The client is `Sync`: share it behind an `Arc`.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), firehost::api::ApiError> {
/// use firehost::api::{ApiClient, models::MachineConfiguration};
///
/// let api = ApiClient::new("/run/vm1/firecracker.sock");
/// let info = api.describe_instance().await?;
/// println!("{} is {:?}", info.id, info.state);
/// api.put_machine_configuration(&MachineConfiguration::new(2, 256)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ApiClient {
    transport: Transport,
}

/// Drive, interface and pmem ids go into the URL path; anything outside
/// Firecracker's own id alphabet could change the request's meaning.
fn segment<'a>(what: &'static str, value: &'a str) -> Result<&'a str, ApiError> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(value)
    } else {
        Err(ApiError::BadPathSegment {
            what,
            value: value.to_owned(),
        })
    }
}

impl ApiClient {
    /// A client for the socket at `socket`, with the default request
    /// timeout. Nothing is connected until the first request.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self::with_timeout(socket, DEFAULT_REQUEST_TIMEOUT)
    }

    /// Like [`new`](Self::new) with a request timeout of your choosing.
    pub fn with_timeout(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        ApiClient {
            transport: Transport::new(socket.into(), timeout),
        }
    }

    /// A client that starts on an already connected stream (as returned by
    /// the readiness wait), saving one connect.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping it drops the connection and nothing else.
    pub async fn from_stream(
        socket: impl Into<PathBuf>,
        stream: UnixStream,
        timeout: Duration,
    ) -> Result<Self, ApiError> {
        let client = Self::with_timeout(socket, timeout);
        client.transport.adopt(stream).await?;
        Ok(client)
    }

    /// The API socket's path.
    pub fn socket(&self) -> &Path {
        self.transport.socket()
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.transport.timeout()
    }

    /// Sends a raw request: the escape hatch for endpoints newer than this
    /// client. Error statuses are returned, not turned into errors.
    ///
    /// # Cancel safety
    ///
    /// As the request it sends: a `GET` is cancel safe; anything else, once
    /// sent, is carried out by Firecracker even if this future is dropped (its
    /// outcome is then unknown: ask with a `GET`).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<RawResponse, ApiError> {
        self.transport.send(method, path, body).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Bytes, ApiError> {
        let response = self.transport.send(method.clone(), path, body).await?;
        if response.status.is_success() {
            return Ok(response.body);
        }
        Err(ApiError::Fault {
            method,
            path: path.to_owned(),
            status: response.status,
            fault_message: fault_message(&response.body),
        })
    }

    async fn send_json<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<(), ApiError> {
        let encoded = serde_json::to_vec(body).map_err(|source| ApiError::Encode {
            method: method.clone(),
            path: path.to_owned(),
            source,
        })?;
        self.call(method, path, Some(Bytes::from(encoded))).await?;
        Ok(())
    }

    async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, ApiError> {
        let body = self.call(Method::GET, path, None).await?;
        serde_json::from_slice(&body).map_err(|source| ApiError::Decode {
            method: Method::GET,
            path: path.to_owned(),
            source,
        })
    }

    async fn put<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<(), ApiError> {
        self.send_json(Method::PUT, path, body).await
    }

    async fn patch<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<(), ApiError> {
        self.send_json(Method::PATCH, path, body).await
    }

    // ---- instance ---------------------------------------------------------

    /// `GET /`: the instance's id, state and VMM version.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn describe_instance(&self) -> Result<InstanceInfo, ApiError> {
        self.get("/").await
    }

    /// `PUT /actions`: `InstanceStart`, `SendCtrlAltDel` or `FlushMetrics`.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn create_sync_action(&self, action: &InstanceActionInfo) -> Result<(), ApiError> {
        self.put("/actions", action).await
    }

    /// `GET /version`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn get_firecracker_version(&self) -> Result<FirecrackerVersion, ApiError> {
        self.get("/version").await
    }

    /// `PATCH /vm`: pause or resume the vCPUs.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn patch_vm(&self, vm: &Vm) -> Result<(), ApiError> {
        self.patch("/vm", vm).await
    }

    /// `GET /vm/config`: the whole configuration.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn get_export_vm_config(&self) -> Result<FullVmConfiguration, ApiError> {
        self.get("/vm/config").await
    }

    // ---- balloon ----------------------------------------------------------

    /// `GET /balloon`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn describe_balloon_config(&self) -> Result<Balloon, ApiError> {
        self.get("/balloon").await
    }

    /// `PUT /balloon` (before boot).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn put_balloon(&self, balloon: &Balloon) -> Result<(), ApiError> {
        self.put("/balloon", balloon).await
    }

    /// `PATCH /balloon`: change the target size.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn patch_balloon(&self, update: &BalloonUpdate) -> Result<(), ApiError> {
        self.patch("/balloon", update).await
    }

    /// `GET /balloon/statistics`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn describe_balloon_stats(&self) -> Result<BalloonStats, ApiError> {
        self.get("/balloon/statistics").await
    }

    /// `PATCH /balloon/statistics`: change the polling interval.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn patch_balloon_stats_interval(
        &self,
        update: &BalloonStatsUpdate,
    ) -> Result<(), ApiError> {
        self.patch("/balloon/statistics", update).await
    }

    /// `PATCH /balloon/hinting/start`, with or without options.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn start_balloon_hinting(
        &self,
        cmd: Option<&BalloonStartCmd>,
    ) -> Result<(), ApiError> {
        match cmd {
            Some(cmd) => self.patch("/balloon/hinting/start", cmd).await,
            None => {
                self.call(Method::PATCH, "/balloon/hinting/start", None)
                    .await?;
                Ok(())
            }
        }
    }

    /// `GET /balloon/hinting/status`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn describe_balloon_hinting(&self) -> Result<BalloonHintingStatus, ApiError> {
        self.get("/balloon/hinting/status").await
    }

    /// `PATCH /balloon/hinting/stop`.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn stop_balloon_hinting(&self) -> Result<(), ApiError> {
        self.call(Method::PATCH, "/balloon/hinting/stop", None)
            .await?;
        Ok(())
    }

    // ---- boot and machine -------------------------------------------------

    /// `PUT /boot-source`.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn put_guest_boot_source(&self, boot: &BootSource) -> Result<(), ApiError> {
        self.put("/boot-source", boot).await
    }

    /// `PUT /cpu-config` (custom CPU template).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn put_cpu_configuration(&self, config: &CpuConfig) -> Result<(), ApiError> {
        self.put("/cpu-config", config).await
    }

    /// `GET /machine-config`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn get_machine_configuration(&self) -> Result<MachineConfiguration, ApiError> {
        self.get("/machine-config").await
    }

    /// `PUT /machine-config`.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn put_machine_configuration(
        &self,
        config: &MachineConfiguration,
    ) -> Result<(), ApiError> {
        self.put("/machine-config", config).await
    }

    /// `PATCH /machine-config`. The spec gives this body the
    /// `MachineConfiguration` schema, required fields included.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn patch_machine_configuration(
        &self,
        config: &MachineConfiguration,
    ) -> Result<(), ApiError> {
        self.patch("/machine-config", config).await
    }

    // ---- block and pmem ---------------------------------------------------

    /// `PUT /drives/{drive_id}`; the id comes from `drive.drive_id`.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn put_guest_drive_by_id(&self, drive: &Drive) -> Result<(), ApiError> {
        let id = segment("drive id", &drive.drive_id)?;
        self.put(&format!("/drives/{id}"), drive).await
    }

    /// `PATCH /drives/{drive_id}`: new backing file or rate limiter.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn patch_guest_drive_by_id(&self, drive: &PartialDrive) -> Result<(), ApiError> {
        let id = segment("drive id", &drive.drive_id)?;
        self.patch(&format!("/drives/{id}"), drive).await
    }

    /// `PUT /pmem/{id}`.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn put_guest_pmem_by_id(&self, pmem: &Pmem) -> Result<(), ApiError> {
        let id = segment("pmem id", &pmem.id)?;
        self.put(&format!("/pmem/{id}"), pmem).await
    }

    /// `PATCH /pmem/{id}`.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn patch_guest_pmem_by_id(&self, pmem: &PartialPmem) -> Result<(), ApiError> {
        let id = segment("pmem id", &pmem.id)?;
        self.patch(&format!("/pmem/{id}"), pmem).await
    }

    // ---- observability ----------------------------------------------------

    /// `PUT /logger`.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn put_logger(&self, logger: &Logger) -> Result<(), ApiError> {
        self.put("/logger", logger).await
    }

    /// `PUT /metrics`.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn put_metrics(&self, metrics: &Metrics) -> Result<(), ApiError> {
        self.put("/metrics", metrics).await
    }

    // ---- MMDS -------------------------------------------------------------

    /// `PUT /mmds`: replace the metadata store.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn put_mmds(&self, contents: &MmdsContentsObject) -> Result<(), ApiError> {
        self.put("/mmds", contents).await
    }

    /// `PATCH /mmds`: merge into the metadata store (RFC 7396).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn patch_mmds(&self, contents: &MmdsContentsObject) -> Result<(), ApiError> {
        self.patch("/mmds", contents).await
    }

    /// `GET /mmds`: the whole metadata store.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn get_mmds(&self) -> Result<serde_json::Value, ApiError> {
        self.get("/mmds").await
    }

    /// `PUT /mmds/config`.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn put_mmds_config(&self, config: &MmdsConfig) -> Result<(), ApiError> {
        self.put("/mmds/config", config).await
    }

    // ---- other devices ----------------------------------------------------

    /// `PUT /entropy`: a virtio-rng device.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn put_entropy_device(&self, device: &EntropyDevice) -> Result<(), ApiError> {
        self.put("/entropy", device).await
    }

    /// `PUT /serial`: where the serial console goes.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn put_serial_device(&self, device: &SerialDevice) -> Result<(), ApiError> {
        self.put("/serial", device).await
    }

    /// `PUT /hotplug/memory`.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn put_memory_hotplug(&self, config: &MemoryHotplugConfig) -> Result<(), ApiError> {
        self.put("/hotplug/memory", config).await
    }

    /// `PATCH /hotplug/memory`.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn patch_memory_hotplug(
        &self,
        update: &MemoryHotplugSizeUpdate,
    ) -> Result<(), ApiError> {
        self.patch("/hotplug/memory", update).await
    }

    /// `GET /hotplug/memory`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn get_memory_hotplug(&self) -> Result<MemoryHotplugStatus, ApiError> {
        self.get("/hotplug/memory").await
    }

    /// `PUT /network-interfaces/{iface_id}`; the id comes from the body.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn put_guest_network_interface_by_id(
        &self,
        iface: &NetworkInterface,
    ) -> Result<(), ApiError> {
        let id = segment("interface id", &iface.iface_id)?;
        self.put(&format!("/network-interfaces/{id}"), iface).await
    }

    /// `PATCH /network-interfaces/{iface_id}`: new rate limiters.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn patch_guest_network_interface_by_id(
        &self,
        iface: &PartialNetworkInterface,
    ) -> Result<(), ApiError> {
        let id = segment("interface id", &iface.iface_id)?;
        self.patch(&format!("/network-interfaces/{id}"), iface)
            .await
    }

    /// `PUT /vsock`.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn put_guest_vsock(&self, vsock: &Vsock) -> Result<(), ApiError> {
        self.put("/vsock", vsock).await
    }

    // ---- snapshots --------------------------------------------------------

    /// `PUT /snapshot/create` (the VM must be paused).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn create_snapshot(&self, params: &SnapshotCreateParams) -> Result<(), ApiError> {
        self.put("/snapshot/create", params).await
    }

    /// `PUT /snapshot/load` (only into a VMM that has not been configured).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the request is sent, Firecracker carries it out
    /// even if this future is dropped, and the outcome is not learned (ask with
    /// a `GET`). Nothing on the client side is left half-done.
    pub async fn load_snapshot(&self, params: &SnapshotLoadParams) -> Result<(), ApiError> {
        self.put("/snapshot/load", params).await
    }
}

/// Firecracker's error body is `{"fault_message": "..."}`; anything else is
/// passed on as text so that no detail is lost.
fn fault_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        fault_message: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.fault_message,
        Err(_) if body.is_empty() => "(empty body)".to_owned(),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_message_is_taken_from_firecracker_error_body() {
        assert_eq!(fault_message(br#"{"fault_message":"bad"}"#), "bad");
        assert_eq!(fault_message(b"oops"), "oops");
        assert_eq!(fault_message(b""), "(empty body)");
    }

    #[test]
    fn path_segments_that_would_change_the_url_are_refused() {
        for bad in ["", "a/b", "..", "a?b", "a b", "a#"] {
            assert!(segment("drive id", bad).is_err(), "{bad:?}");
        }
        assert!(segment("drive id", "root_fs-1").is_ok());
    }
}
