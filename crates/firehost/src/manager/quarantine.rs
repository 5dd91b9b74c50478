//! VMs whose records cannot be read.
//!
//! A record may be corrupt, edited by hand, or written by a newer firehost
//! (a rolling upgrade, then a rollback). Its VM may well be running, and
//! the record is the only thing that says what the VM owns, so a manager
//! acts on nothing it cannot read: the VM is *quarantined*. Its VMM, files,
//! jail and network are left alone; it is listed apart
//! ([`Manager::unreadable`]); every operation on it fails with
//! [`VmError::Unreadable`]; a create with its name is refused. Only an
//! explicit [`Manager::remove_unreadable`] (the CLI's `rm -f`) removes it,
//! and that stops its VMM only as far as the VMM can be verified:
//!
//! - the pid and start time the record still holds, if those two fields
//!   are readable (see [`Salvaged`]);
//! - else the process serving the VM's API socket (by its `--api-sock`
//!   argument), or, for a jail the record still names, the processes rooted
//!   in that jail.
//!
//! The network the record still shows (if its `net` field is readable)
//! stays attached while the VM is quarantined; so do the links labelled
//! with its id and its namespace, even when the record says nothing of
//! them. An address that only an unreadable record held can be handed out
//! again: it is logged, and the quarantine is the operator's to resolve.
//!
//! [`Manager::unreadable`]: super::Manager::unreadable
//! [`Manager::remove_unreadable`]: super::Manager::remove_unreadable

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustix::process::Signal;
use serde::Serialize;

use super::{Shared, UnreadableReason, VmError};
use crate::VmId;
use crate::record::Salvaged;
use crate::undo::remove_dir_if_present;
use crate::vmm::VmmProcess;

/// A VM whose record cannot be read, as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnreadableVm {
    /// Its id (its directory's name).
    pub id: VmId,
    /// Its directory.
    pub dir: PathBuf,
    /// Why the record cannot be read.
    #[serde(serialize_with = "as_text")]
    pub reason: UnreadableReason,
    /// Its VMM's pid, if one was found and verified.
    pub pid: Option<i32>,
}

fn as_text<S: serde::Serializer>(reason: &UnreadableReason, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(reason)
}

/// A quarantined VM: what callers see, what the record still says, and the
/// VMMs found for it.
#[derive(Debug)]
pub(super) struct Quarantined {
    pub(super) info: UnreadableVm,
    pub(super) salvaged: Salvaged,
    processes: Vec<VmmProcess>,
}

impl Quarantined {
    /// Looks for what can be verified of the VM in `dir`.
    pub(super) async fn find(id: VmId, dir: PathBuf, reason: UnreadableReason) -> Quarantined {
        let found = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                let salvaged = Salvaged::read(&dir);
                let pids = candidate_pids(&salvaged, &dir);
                (salvaged, pids)
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        };
        let (salvaged, pids) = found;
        // A pidfd is opened on the runtime (it is watched from there).
        let processes: Vec<VmmProcess> = pids
            .into_iter()
            .filter_map(|(pid, start)| VmmProcess::attach(pid, start).ok().flatten())
            .collect();
        if salvaged.net.is_none() {
            tracing::warn!(vm = %id, "an unreadable record's network is unknown: its address may be handed out again");
        }
        Quarantined {
            info: UnreadableVm {
                id,
                dir,
                reason,
                pid: processes.first().map(VmmProcess::pid),
            },
            salvaged,
            processes,
        }
    }
}

/// The processes that can be verified to be the VM's VMM, with their start
/// times (blocking: reads `/proc`).
fn candidate_pids(salvaged: &Salvaged, dir: &std::path::Path) -> Vec<(i32, u64)> {
    if let Some(process) = salvaged.process {
        return vec![process];
    }
    let mut pids = crate::vmm::find_by_api_socket(&dir.join(super::launch::API_SOCKET));
    if let Some(jail) = &salvaged.jail {
        pids.extend(crate::vmm::process::find_rooted_in(&jail.chroot));
    }
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter()
        .filter_map(|pid| {
            crate::vmm::process::read_start_time(pid)
                .ok()
                .map(|start| (pid, start))
        })
        .collect()
}

/// [`Manager::remove_unreadable`](super::Manager::remove_unreadable).
pub(super) async fn remove(shared: Arc<Shared>, id: VmId) -> Result<bool, VmError> {
    // Make sure the whole directory is loaded, so that the quarantine is
    // complete and the network knows every live VM.
    super::recovery::load_all(&shared).await;
    let taken = shared.lock_quarantine().remove(&id);
    let Some(quarantined) = taken else {
        return Err(match shared.known_vm(&id) {
            true => VmError::NotUnreadable { id },
            false => VmError::NotFound { id },
        });
    };
    let grace = shared.config.timeouts.stop_grace;
    let after_kill = shared.config.timeouts.after_kill;
    let mut stopped = false;
    for process in quarantined.processes.clone() {
        if process.exit_reason().is_some() {
            continue;
        }
        stopped = true;
        if let Err(e) = end(&process, grace, after_kill).await {
            // Still running: back into quarantine, nothing else touched.
            shared.lock_quarantine().insert(id.clone(), quarantined);
            return Err(e(id));
        }
    }
    let network = shared.network().await;
    let net_err = |source| VmError::Network {
        id: id.clone(),
        source: Box::new(source),
    };
    network.detach(&id).await.map_err(net_err)?;
    if let Err(e) = network.remove_leftovers(&id).await {
        tracing::warn!(vm = %id, error = %e, "cannot look for the links of an unreadable VM");
    }
    if let Some(jail) = &quarantined.salvaged.jail
        && let Err(source) = super::jailed::remove_owned(jail, &shared.vms_dir)
    {
        return Err(VmError::Jail {
            id,
            source: Box::new(source),
        });
    }
    let dir = quarantined.info.dir.clone();
    tokio::task::spawn_blocking(move || remove_dir_if_present(&dir))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .map_err(|source| VmError::Io {
            id: id.clone(),
            op: "remove directory",
            path: quarantined.info.dir.clone(),
            source,
        })?;
    // Jails of ours that no record knows any more (a jail the record no
    // longer named).
    let known: Vec<PathBuf> = shared.known_jail_dirs();
    let spared: Vec<VmId> = {
        let quarantine = shared.lock_quarantine();
        quarantine.keys().cloned().collect()
    };
    super::jailed::reap_orphans(&shared, &known, &spared).await;
    let store = shared.store();
    let vm = id.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.release_all(&vm)).await {
        tracing::warn!(vm = %id, error = %e, "cannot release snapshot leases; gc will");
    }
    Ok(stopped)
}

/// SIGTERM, then SIGKILL after `grace`; the error names the pid that
/// outlived both.
async fn end(
    process: &VmmProcess,
    grace: Duration,
    after_kill: Duration,
) -> Result<(), impl FnOnce(VmId) -> VmError> {
    let pid = process.pid();
    let _ = process.signal(Signal::TERM);
    if process.wait_timeout(grace).await.is_some() {
        return Ok(());
    }
    let _ = process.signal(Signal::KILL);
    match process.wait_timeout(after_kill).await {
        Some(_) => Ok(()),
        None => Err(move |id| VmError::StopTimeout {
            id,
            pid,
            waited: after_kill,
        }),
    }
}
