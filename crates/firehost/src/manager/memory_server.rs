//! The page server behind a VM restored with a userfaultfd memory backend:
//! in this process ([`PageServer`]) or in a helper process of its own
//! ([`Helper`], when the configuration names a [`PageServerProgram`]).
//! The manager treats both alike through [`MemoryServer`].
//!
//! [`PageServerProgram`]: crate::snapshot::uffd::PageServerProgram

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::restore::RestoreMemory;
use crate::record::HelperProcess;
use crate::snapshot::MEMORY_FILE;
use crate::snapshot::uffd::{
    Helper, HelperMode, HelperRequest, PageServer, PageServerError, PageServerProgram,
    left_unfenced, store_working_set,
};
use crate::vmm::VmmProcess;

/// The page server's socket in the VM's directory.
pub(crate) const PAGE_SERVER_SOCKET: &str = "uffd.sock";
/// A helper's stderr, in the VM's directory.
pub(crate) const HELPER_LOG: &str = "page-server.log";
/// Pages a page server records, at most (1 GiB of 4 KiB pages).
const RECORD_LIMIT_PAGES: usize = 1 << 18;
/// How long a helper has to exit on its own once its VMM is gone.
const HELPER_GRACE: Duration = Duration::from_secs(5);

/// A VM's page server.
#[derive(Debug)]
pub(super) enum MemoryServer {
    InProcess(Fenced),
    Helper(Helper),
}

impl MemoryServer {
    /// Starts a page server for `vmm`, restored from `bundle`, listening
    /// on `socket` (owned by `owner`, a jailed VMM's uid and gid), with a
    /// helper's log in `dir`.
    #[allow(clippy::too_many_arguments)] // one call site, each argument distinct
    pub(super) async fn start(
        program: Option<&PageServerProgram>,
        dir: &Path,
        socket: PathBuf,
        bundle: &Path,
        mode: RestoreMemory,
        vmm: &VmmProcess,
        timeout: Duration,
        owner: Option<(u32, u32)>,
    ) -> Result<MemoryServer, PageServerError> {
        let mode = match mode {
            RestoreMemory::Populate => HelperMode::Populate,
            RestoreMemory::Prefetch => HelperMode::Prefetch,
            RestoreMemory::OnDemand | RestoreMemory::File => HelperMode::OnDemand,
        };
        if let Some(program) = program {
            let request = HelperRequest {
                socket,
                bundle: bundle.to_owned(),
                mode,
                record_limit: RECORD_LIMIT_PAGES,
                vmm_pid: vmm.pid(),
                vmm_start_time: vmm.start_time(),
                handshake_timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                socket_owner: owner,
            };
            let helper = Helper::start(program, &request, &dir.join(HELPER_LOG), timeout).await?;
            return Ok(MemoryServer::Helper(helper));
        }
        let bundle = bundle.to_owned();
        let server = tokio::task::spawn_blocking(move || {
            let mut options = mode.options(&bundle, RECORD_LIMIT_PAGES);
            options.socket_owner = owner;
            PageServer::bind(&socket, &bundle.join(MEMORY_FILE), options)
        })
        .await
        .expect("binding a page server does not panic")?;
        Ok(MemoryServer::InProcess(Fenced {
            server: Some(server),
            vmm: vmm.clone(),
        }))
    }

    /// Finds the helper an earlier manager recorded, listening on
    /// `socket`; `None` if it is gone.
    pub(super) fn adopt(helper: &HelperProcess, socket: PathBuf) -> Option<MemoryServer> {
        Helper::adopt(helper.pid, helper.start_time, socket).map(MemoryServer::Helper)
    }

    /// Whether the helper of `socket` detached before it exited (so its VM
    /// is whole without it).
    pub(super) fn detached_before(socket: &Path) -> bool {
        crate::snapshot::uffd::helper_detached_marker(socket).exists()
    }

    /// Where the page server of the VM recorded in `record` listens, on
    /// the host: in its directory, or inside its jail.
    pub(super) fn socket_of(record: &crate::record::VmRecord, dir: &Path) -> PathBuf {
        super::jailed::socket_path(record.jail.as_ref(), dir, PAGE_SERVER_SOCKET)
    }

    /// The socket to hand Firecracker.
    pub(super) fn socket(&self) -> PathBuf {
        match self {
            MemoryServer::InProcess(fenced) => fenced.server().socket_path().to_owned(),
            MemoryServer::Helper(helper) => helper.socket().to_owned(),
        }
    }

    /// The helper process to record, if the server runs in one.
    pub(super) fn helper_process(&self) -> Option<HelperProcess> {
        match self {
            MemoryServer::InProcess(_) => None,
            MemoryServer::Helper(helper) => Some(HelperProcess {
                pid: helper.process().pid(),
                start_time: helper.process().start_time(),
            }),
        }
    }

    /// Waits until Firecracker's handshake was accepted.
    pub(super) async fn wait_connected(
        &mut self,
        timeout: Duration,
    ) -> Result<(), PageServerError> {
        match self {
            MemoryServer::InProcess(fenced) => {
                fenced.server().wait_connected(timeout).await.map(drop)
            }
            MemoryServer::Helper(helper) => helper.wait_connected(timeout).await,
        }
    }

    /// Waits until a populating server has detached. Other modes never
    /// detach ([`PageServerError::NotPopulating`]).
    pub(super) async fn wait_detached(&mut self, timeout: Duration) -> Result<(), PageServerError> {
        match self {
            MemoryServer::InProcess(fenced) => {
                fenced.server().wait_detached(timeout).await.map(drop)
            }
            MemoryServer::Helper(helper) => helper.wait_detached(timeout).await,
        }
    }

    /// Ends the server of a restore that failed (its VMM is killed next).
    pub(super) async fn abort(self) {
        match self {
            MemoryServer::Helper(helper) => helper.kill().await,
            MemoryServer::InProcess(fenced) => drop(fenced),
        }
    }

    /// Ends the server once the VMM is gone (or the server has detached).
    /// An in-process server's recorded working set is stored in `bundle`
    /// if it has none; a helper stores its own. Best effort: a VM's end
    /// never fails for a hint.
    pub(super) async fn retire(self, vm: &crate::VmId, bundle: Option<&Path>) {
        let mut fenced = match self {
            MemoryServer::Helper(helper) => return helper.retire(HELPER_GRACE).await,
            MemoryServer::InProcess(fenced) => fenced,
        };
        let server = fenced
            .server
            .take()
            .expect("a fenced server holds one until retired");
        let report = match server.shutdown().await {
            Ok(report) => report,
            Err(e) => {
                tracing::warn!(%vm, error = %e, "page server ended with an error");
                return;
            }
        };
        let (Some(set), Some(bundle)) = (report.working_set, bundle) else {
            return;
        };
        if let Err(e) = store_working_set(bundle, set).await {
            tracing::warn!(%vm, error = %e, "cannot store the recorded working set");
        }
    }
}

/// An in-process page server that, if dropped while its VM still depends
/// on it (the manager is going away), fences the VM's memory, and kills the
/// VMM where fencing is impossible: a VM left to hang forever on a missing
/// page is worse than one that is gone.
#[derive(Debug)]
pub(super) struct Fenced {
    server: Option<PageServer>,
    vmm: VmmProcess,
}

impl Fenced {
    fn server(&self) -> &PageServer {
        self.server
            .as_ref()
            .expect("a fenced server holds one until retired")
    }
}

impl Drop for Fenced {
    fn drop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        let phase = server.stop_blocking();
        if left_unfenced(&phase) && self.vmm.exit_reason().is_none() {
            tracing::warn!(
                pid = self.vmm.pid(),
                ?phase,
                "a restored VM's memory could not be fenced; killing its VMM"
            );
            let _ = self.vmm.signal(rustix::process::Signal::KILL);
        }
    }
}
