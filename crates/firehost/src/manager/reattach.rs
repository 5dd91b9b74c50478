//! Recovery when a manager opens a state directory that an earlier manager
//! used: live VMs are re-attached, dead ones reaped.
//!
//! For each `vms/<id>/` directory:
//!
//! - no readable record, or a record of a create that never committed:
//!   the VM never existed for any caller. Its VMM (found by recorded pid +
//!   start time, or by its `--api-sock` argument) is killed and the
//!   directory removed.
//! - a committed record of a live VM: the process must still exist (pid and
//!   start time match) and its API must answer `GET /`. Then the VM is
//!   adopted, its state taken from Firecracker. A process whose API does
//!   not answer is killed; the VM is marked failed.
//! - a live VM whose process is gone: marked failed, its socket removed;
//!   the record and console stay for post-mortem until destroyed.
//! - stopped or failed VMs: loaded as they are.
//!
//! Then the default network is reconciled with the VMs that are live (see
//! [`crate::net::host`]): their addresses stay allocated and their TAPs and
//! rules stay; TAPs and rules of VMs that are gone are removed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustix::process::Signal;

use super::memory_server::MemoryServer;
use super::{ManagerError, Shared, Slot, Vm, remove_file_if_present, watch_for_crash};
use crate::VmId;
use crate::api::ApiClient;
use crate::api::models::InstanceState;
use crate::console::ConsoleRing;
use crate::record::{Durability, VmRecord};
use crate::state::{ExitReason, VmState};
use crate::undo::remove_dir_if_present;
use crate::vmm::{VmmProcess, find_by_api_socket};

/// How long a surviving VMM gets to answer `GET /` on re-attach.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn recover(shared: &Arc<Shared>) -> Result<(), ManagerError> {
    let vms_dir = shared.vms_dir.clone();
    let entries = std::fs::read_dir(&vms_dir).map_err(|source| ManagerError::Io {
        op: "list",
        path: vms_dir.clone(),
        source,
    })?;
    let mut live_nets = Vec::new();
    let mut known_jails = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        let Some(id) = entry.file_name().to_str().and_then(|n| VmId::new(n).ok()) else {
            tracing::warn!(dir = ?dir, "ignoring a directory that is not named like a VM");
            continue;
        };
        match VmRecord::read(&dir) {
            Ok(record) if record.committed && record.id == id => {
                let vm = adopt(record, dir, shared.config.console_lines).await;
                if let Some(jail) = &vm.record.jail {
                    known_jails.push(jail.jail_dir().to_owned());
                    if vm.process.is_some() {
                        shared.uids.lock().expect("uid lock").hold(jail.uid, &id);
                    } else if let Err(e) = crate::jail::cgroup::remove_dirs(&jail.cgroups) {
                        tracing::warn!(vm = %id, error = %e, "cannot remove a dead VM's cgroups");
                    }
                }
                if let Some(net) = &vm.record.net
                    && vm.process.is_some()
                {
                    live_nets.push((id.clone(), net.clone()));
                }
                let slot = Arc::new(Slot::new());
                slot.publish(Some(&vm));
                if let Some(process) = vm.process.clone() {
                    watch_for_crash(shared, slot.clone(), process);
                }
                *slot.vm.lock().await = Some(vm);
                shared.lock_registry().insert(id, slot);
            }
            Ok(record) => {
                tracing::info!(vm = %id, "reaping a VM whose create never completed");
                kill_recorded(record.pid, record.start_time).await;
                if let Some(jail) = &record.jail
                    && let Err(e) = super::jailed::remove_owned(jail, &shared.vms_dir)
                {
                    tracing::warn!(vm = %id, error = %e, "cannot remove the jail of a VM never made");
                }
                reap_dir(&dir).await;
            }
            Err(e) => {
                tracing::warn!(vm = %id, error = %e, "reaping a VM directory without a usable record");
                reap_dir(&dir).await;
            }
        }
    }
    super::jailed::reap_orphans(shared, &known_jails).await;
    // Only now, with every dead VMM killed: the network keeps the live VMs'
    // TAPs, addresses and rules, and drops everything else of ours.
    shared.net.reconcile(live_nets).await;
    Ok(())
}

/// Kills every VMM still serving `dir/api.sock`, then removes `dir`.
async fn reap_dir(dir: &Path) {
    let socket = dir.join(super::launch::API_SOCKET);
    for pid in find_by_api_socket(&socket) {
        if let Ok(Some(process)) = VmmProcess::attach(pid, start_time_of(pid)) {
            kill(&process).await;
        }
    }
    let owned = dir.to_owned();
    let _ = tokio::task::spawn_blocking(move || remove_dir_if_present(&owned)).await;
}

fn start_time_of(pid: i32) -> u64 {
    crate::vmm::process::read_start_time(pid).unwrap_or(0)
}

async fn kill_recorded(pid: Option<i32>, start_time: Option<u64>) {
    if let (Some(pid), Some(start)) = (pid, start_time)
        && let Ok(Some(process)) = VmmProcess::attach(pid, start)
    {
        kill(&process).await;
    }
}

async fn kill(process: &VmmProcess) {
    let _ = process.signal(Signal::KILL);
    if process
        .wait_timeout(Duration::from_secs(10))
        .await
        .is_none()
    {
        tracing::error!(pid = process.pid(), "VMM survived SIGKILL during recovery");
    }
}

/// Builds the live view of a recorded VM, re-attaching to its VMM if it
/// still runs and answers.
async fn adopt(mut record: VmRecord, dir: std::path::PathBuf, console_lines: usize) -> Vm {
    let ring = ConsoleRing::new(console_lines);
    let mut vm = Vm {
        record: record.clone(),
        dir,
        process: None,
        api: None,
        ring,
        page_server: None,
    };
    if !record.state.is_live() {
        return vm;
    }
    let process = match (record.pid, record.start_time) {
        (Some(pid), Some(start)) => VmmProcess::attach(pid, start).ok().flatten(),
        _ => None,
    };
    // A VM whose memory a helper serves lives on with it; so does one whose
    // helper detached before it exited. An in-process server died with the
    // manager that ran it.
    let mut memory_whole = !record.page_server_attached;
    if let (true, Some(helper)) = (record.page_server_attached, &record.page_server_helper) {
        let socket = MemoryServer::socket_of(&record, &vm.dir);
        if let Some(server) = MemoryServer::adopt(helper, socket.clone()) {
            vm.page_server = Some(server);
            memory_whole = true;
        } else if MemoryServer::detached_before(&socket) {
            record.page_server_attached = false;
            record.page_server_helper = None;
            memory_whole = true;
        }
    }
    let new_state = match process {
        Some(process) if !memory_whole => {
            tracing::warn!(vm = %record.id, "VM's memory was served by a page server that is gone; killing it");
            kill(&process).await;
            let _ = remove_file_if_present(&record.api_socket);
            failed(&vm, ExitReason::Unknown, console_lines).await
        }
        Some(process) => {
            let api = ApiClient::with_timeout(&record.api_socket, PROBE_TIMEOUT);
            match api.describe_instance().await {
                Ok(info) => {
                    vm.process = Some(process);
                    vm.api = Some(Arc::new(api));
                    match info.state {
                        InstanceState::NotStarted => VmState::Created,
                        InstanceState::Running => VmState::Running,
                        InstanceState::Paused => VmState::Paused,
                    }
                }
                Err(e) => {
                    tracing::warn!(vm = %record.id, error = %e, "VMM alive but its API does not answer; killing it");
                    kill(&process).await;
                    let _ = remove_file_if_present(&record.api_socket);
                    failed(&vm, ExitReason::Unknown, console_lines).await
                }
            }
        }
        None => {
            tracing::info!(vm = %record.id, "VMM exited while no manager was watching");
            let _ = remove_file_if_present(&record.api_socket);
            failed(&vm, ExitReason::Unknown, console_lines).await
        }
    };
    if !new_state.is_live() {
        // Its helper ends with the VMM; make sure it has.
        if let Some(server) = vm.page_server.take() {
            server.retire(&record.id, None).await;
        }
    }
    let server_gone = record.page_server_attached && vm.page_server.is_none();
    if new_state != record.state || server_gone || record != vm.record {
        record.state = new_state;
        if server_gone {
            record.page_server_attached = false;
            record.page_server_helper = None;
        }
        vm.record = record;
        if let Err(e) = vm.persist(Durability::Synced).await {
            tracing::error!(vm = %vm.record.id, error = %e, "cannot update the record during recovery");
        }
    }
    vm
}

async fn failed(vm: &Vm, exit: ExitReason, console_lines: usize) -> VmState {
    VmState::Failed {
        exit,
        console_tail: vm.console_tail(console_lines).await,
    }
}
