//! The undo stack of a create transaction.
//!
//! Each side effect is pushed as it happens; on failure the stack is
//! unwound in reverse order. Steps are data, not closures, so the stack can
//! be logged and so every kind of undo is written (and tested) once.

use std::path::PathBuf;
use std::time::Duration;

use rustix::process::Signal;

use crate::VmId;
use crate::snapshot::{SnapshotName, SnapshotStore};
use crate::vmm::VmmProcess;

/// How long an undo waits for a killed VMM to be gone.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// One side effect to reverse.
#[derive(Debug)]
pub(crate) enum UndoStep {
    /// Remove a directory and everything in it.
    RemoveDir(PathBuf),
    /// Remove a file (or symlink); one that is gone is fine.
    RemoveFile(PathBuf),
    /// SIGKILL a VMM and wait until it has exited.
    KillProcess(VmmProcess),
    /// Take a VM off the default network (TAP, firewall, address).
    DetachNetwork {
        /// The network.
        net: std::sync::Arc<crate::net::host::HostNetwork>,
        /// The VM.
        vm: VmId,
    },
    /// Remove a jail: its cgroups and its directory under the chroot base.
    RemoveJail {
        /// The chroot base.
        base: PathBuf,
        /// The jail.
        jail: crate::jail::VmJail,
    },
    /// Free a jailed VM's uid.
    ReleaseUid {
        /// The allocator.
        uids: std::sync::Arc<std::sync::Mutex<crate::jail::uid::UidAllocator>>,
        /// The VM.
        vm: VmId,
    },
    /// Drop a VM's lease on a snapshot bundle.
    ReleaseLease {
        /// The store holding the bundle.
        store: SnapshotStore,
        /// The bundle.
        name: SnapshotName,
        /// The VM that held the lease.
        vm: VmId,
    },
}

/// Side effects of an operation in progress, reversed unless committed.
#[derive(Debug, Default)]
pub(crate) struct UndoStack {
    steps: Vec<UndoStep>,
}

impl UndoStack {
    pub(crate) fn push(&mut self, step: UndoStep) {
        self.steps.push(step);
    }

    /// Forgets every step: the operation succeeded.
    pub(crate) fn commit(mut self) {
        self.steps.clear();
    }

    /// Reverses every step, newest first. Failures are logged and the
    /// unwinding goes on: one stuck step must not leave the others undone.
    pub(crate) async fn unwind(mut self) {
        while let Some(step) = self.steps.pop() {
            match step {
                UndoStep::KillProcess(process) => {
                    if let Err(e) = process.signal(Signal::KILL) {
                        tracing::warn!(pid = process.pid(), error = %e, "undo: kill failed");
                    }
                    if process.wait_timeout(KILL_WAIT).await.is_none() {
                        tracing::warn!(pid = process.pid(), "undo: VMM still alive after SIGKILL");
                    }
                }
                UndoStep::ReleaseLease { store, name, vm } => {
                    let result =
                        tokio::task::spawn_blocking(move || store.release(&name, &vm)).await;
                    if let Ok(Err(e)) = result {
                        tracing::warn!(error = %e, "undo: cannot release a snapshot lease");
                    }
                }
                UndoStep::RemoveJail { base, jail } => {
                    let shown = jail.jail_dir().to_owned();
                    let result = tokio::task::spawn_blocking(move || {
                        crate::jail::stage::remove_jail(&base, &jail)
                    })
                    .await;
                    if let Ok(Err(e)) = result {
                        tracing::warn!(jail = ?shown, error = %e, "undo: cannot remove the jail");
                    }
                }
                UndoStep::ReleaseUid { uids, vm } => {
                    uids.lock().expect("uid lock").release(&vm);
                }
                UndoStep::DetachNetwork { net, vm } => {
                    if let Err(e) = net.detach(&vm).await {
                        tracing::warn!(vm = %vm, error = %e, "undo: cannot detach the network");
                    }
                }
                UndoStep::RemoveFile(file) => match std::fs::remove_file(&file) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        tracing::warn!(file = ?file, error = %e, "undo: cannot remove file");
                    }
                    _ => {}
                },
                UndoStep::RemoveDir(dir) => {
                    let shown = dir.clone();
                    let result =
                        tokio::task::spawn_blocking(move || remove_dir_if_present(&dir)).await;
                    if let Ok(Err(e)) = result {
                        tracing::warn!(dir = ?shown, error = %e, "undo: cannot remove directory");
                    }
                }
            }
        }
    }
}

impl Drop for UndoStack {
    fn drop(&mut self) {
        if !self.steps.is_empty() {
            // Only reachable if a future holding the stack is dropped
            // mid-operation; the manager runs creates in their own task so
            // that this does not happen. Say so rather than leak silently.
            tracing::error!(steps = ?self.steps, "undo stack dropped without unwinding");
        }
    }
}

/// `remove_dir_all` that treats "already gone" as done.
pub(crate) fn remove_dir_if_present(dir: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
