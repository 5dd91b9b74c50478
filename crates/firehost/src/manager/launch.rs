//! The steps every new VM shares, whether it is created from a spec or
//! restored from a snapshot: reserve the id, make the VM's directory, spawn
//! the VMM, record it, wait for its API, and finally commit or undo.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Shared, Slot, Vm, VmError, VmInfo, jailed, now_ms, watch_for_crash};
use crate::VmId;
use crate::api::ApiClient;
use crate::console::ConsoleRing;
use crate::manager::config::ConsoleTarget;
use crate::net::host::VmNet;
use crate::record::{Durability, RecordError, VmRecord};
use crate::spec::ResolvedSpec;
use crate::state::VmState;
use crate::undo::{UndoStack, UndoStep};
use crate::vmm::ready::wait_for_api_socket;
use crate::vmm::{ConsoleMode, SeccompPolicy, VmmCommand, VmmProcess};

/// File names inside a VM's directory.
pub(crate) const API_SOCKET: &str = "api.sock";
pub(crate) const CONSOLE_FILE: &str = "console.log";
pub(crate) const VMM_LOG_FILE: &str = "firecracker.log";
pub(crate) const METRICS_FILE: &str = "metrics.json";

/// A name held for a VM being made: its slot is in the registry, locked,
/// so other operations on the name wait and a second create fails. It
/// also says the new VM's key (see [`super::names`]).
pub(super) struct Reservation {
    slot: Arc<Slot>,
    guard: tokio::sync::OwnedMutexGuard<Option<Vm>>,
    /// The new VM's key: its name, unless a VM renamed away from that name
    /// still holds it.
    pub(super) key: VmId,
}

impl Reservation {
    /// Holds the free name `id` (see [`Shared::check_free`]).
    pub(super) fn take(shared: &Shared, id: &VmId) -> Result<Self, VmError> {
        let key = if shared.vm_dir(id).exists() {
            super::names::fresh_key(&shared.vms_dir, id)
        } else {
            id.clone()
        };
        let slot = Arc::new(Slot::new(key.clone()));
        let guard = slot
            .vm
            .clone()
            .try_lock_owned()
            .expect("a new slot is unlocked");
        let mut vms = shared.lock_registry();
        if vms.contains_key(id) {
            return Err(VmError::AlreadyExists { id: id.clone() });
        }
        vms.insert(id.clone(), slot.clone());
        Ok(Reservation { slot, guard, key })
    }

    /// Installs the VM and starts watching it, or undoes everything and
    /// frees the id.
    pub(super) async fn settle(
        mut self,
        shared: &Shared,
        id: &VmId,
        result: Result<Vm, VmError>,
        undo: UndoStack,
    ) -> Result<VmInfo, VmError> {
        match result {
            Ok(vm) => {
                undo.commit();
                let info = vm.info();
                if let Some(process) = vm.process.clone() {
                    watch_for_crash(shared, self.slot.clone(), process);
                }
                self.slot.publish(Some(&vm));
                *self.guard = Some(vm);
                Ok(info)
            }
            Err(e) => {
                undo.unwind().await;
                super::writers::release(&shared.writers, &self.key);
                shared.lock_registry().remove(id);
                Err(e)
            }
        }
    }
}

/// A freshly spawned VMM in its own directory, not yet committed.
pub(super) struct Launched {
    pub(super) vm: Vm,
    process: VmmProcess,
    first_record: tokio::task::JoinHandle<Result<(), RecordError>>,
}

impl Launched {
    /// Makes the VM's directory and spawns its VMM, pushing both on `undo`,
    /// and starts writing the first record (which holds `net`, already
    /// attached by the caller).
    ///
    /// `drives_from` is the chroot of a jailed snapshot's source VM: a
    /// restored VM's writable drives are copied from the copies in there
    /// while they exist.
    pub(super) async fn spawn(
        shared: &Shared,
        id: &VmId,
        name: &VmId,
        spec: ResolvedSpec,
        net: Option<VmNet>,
        drives_from: Option<&Path>,
        undo: &mut UndoStack,
    ) -> Result<Launched, VmError> {
        let config = &shared.config;
        let dir = shared.vm_dir(id);
        crate::socket_path::check(dir.join(API_SOCKET), 0)
            .map_err(|e| VmError::socket_path_too_long(id, e))?;

        // Not `create_dir_all`: an existing directory means another process
        // (or a crashed one) owns this id, and it must not be adopted.
        let io = |op, path: &Path| {
            let (id, path) = (id.clone(), path.to_owned());
            move |source: std::io::Error| {
                if source.kind() == std::io::ErrorKind::AlreadyExists && op == "create directory" {
                    VmError::AlreadyExists { id }
                } else {
                    VmError::Io {
                        id,
                        op,
                        path,
                        source,
                    }
                }
            }
        };
        crate::fsutil::create_private_dir(&dir).map_err(io("create directory", &dir))?;
        undo.push(UndoStep::RemoveDir(dir.clone()));
        if name != id {
            // Before the record names the VM, so a manager that looks the
            // name up after a crash finds it (see `names`).
            let link = super::names::link_path(&shared.names_dir, name);
            super::names::link(&shared.names_dir, name, id).map_err(io("link the name", &link))?;
            undo.push(UndoStep::RemoveFile(link));
        }

        let netns = net
            .as_ref()
            .and_then(|n| n.netns.as_ref())
            .map(|ns| ns.path.as_path());
        let jail = super::jailed::prepare(shared, id, &spec, drives_from, netns, undo).await?;
        // The socket on the host; Firecracker may see it elsewhere.
        let api_socket = jailed::socket_path(
            jail.as_ref().map(|prepared| &prepared.jail),
            &dir,
            API_SOCKET,
        );
        crate::socket_path::check(&api_socket, 0)
            .map_err(|e| VmError::socket_path_too_long(id, e))?;

        let mut command = VmmCommand::new(&shared.firecracker, &api_socket, id.clone());
        command.seccomp = config.seccomp.clone();
        command.boot_timer = config.boot_timer;
        if command.seccomp != SeccompPolicy::Default {
            tracing::warn!(vm = %id, seccomp = ?command.seccomp, "VMM runs without Firecracker's default seccomp filter");
        }
        command.nofile_limit = config.nofile_limit;
        command.env = config.vmm_env.clone();
        command.console = match config.console {
            ConsoleTarget::Ring => ConsoleMode::Ring,
            ConsoleTarget::RingAndFile => ConsoleMode::RingAndFile(dir.join(CONSOLE_FILE)),
            ConsoleTarget::File => ConsoleMode::File(dir.join(CONSOLE_FILE)),
        };
        command.log_limits = config.log_limits;
        command.keeper = config.log_keeper_program.clone();
        // Firecracker opens its log and metrics paths without O_CREAT, so
        // they must exist first: in the VM's directory, or inside the jail,
        // where staging made them (owned by the VM's uid). They are FIFOs
        // the log keeper copies into bounded files in the VM's directory.
        let chroot = jail.as_ref().map(|prepared| prepared.jail.clone());
        let mut vmm_file = |inside: &str, name: &str| -> Result<PathBuf, VmError> {
            let host = match &chroot {
                Some(jail) => jail.root().host_path(Path::new(inside)),
                None => dir.join(format!("{name}.fifo")),
            };
            crate::vmm::keeper::make_fifo(&host).map_err(io("create a FIFO", &host))?;
            if let Some(jail) = &chroot {
                std::os::unix::fs::chown(&host, Some(jail.uid), Some(jail.gid))
                    .map_err(io("chown", &host))?;
            }
            command.kept.push((host.clone(), dir.join(name)));
            // What Firecracker opens: inside the jail, the path in it.
            Ok(match &chroot {
                Some(_) => PathBuf::from(inside),
                None => host,
            })
        };
        // The VM's own log settings win over the manager's level.
        let log_level = spec.log.as_ref().map(|l| l.level).or(config.vmm_log);
        if let Some(level) = log_level {
            command.log_level = Some(level);
            command.log_path = Some(vmm_file(jailed::layout::LOG, VMM_LOG_FILE)?);
        }
        if let Some(log) = &spec.log {
            command.log_module.clone_from(&log.module);
            command.log_show_level = log.show_level;
            command.log_show_origin = log.show_origin;
        }
        if config.vmm_metrics {
            command.metrics_path = Some(vmm_file(jailed::layout::METRICS, METRICS_FILE)?);
        }
        if jail.is_none() {
            command.netns = netns.map(Path::to_owned);
        }
        if let Some(prepared) = &jail {
            command.api_socket = prepared
                .jail
                .root()
                .jail_path(&api_socket)
                .expect("the API socket is in the chroot");
            if let SeccompPolicy::Filter(_) = command.seccomp {
                command.seccomp = SeccompPolicy::Filter(jailed::layout::SECCOMP.into());
            }
            command.jailer = Some(prepared.jailer.clone());
        }

        let ring = ConsoleRing::new(config.console_lines);
        let pid_watch = match &jail {
            Some(prepared) if jailed::forks(&prepared.jailer) => {
                Some(jailed::watch_pid_file(shared, id, &prepared.jail)?)
            }
            _ => None,
        };
        let process = command.spawn(&ring).map_err(|source| VmError::Spawn {
            id: id.clone(),
            source,
        })?;
        undo.push(UndoStep::KillProcess(process.clone()));
        let process = match &pid_watch {
            Some(watch) => {
                let firecracker = jailed::follow_pid_file(shared, id, watch, &process).await?;
                undo.push(UndoStep::KillProcess(firecracker.clone()));
                firecracker
            }
            None => process,
        };

        let vm = Vm {
            record: VmRecord {
                id: id.clone(),
                name: name.clone(),
                committed: false,
                spec,
                state: VmState::Created,
                pid: Some(process.pid()),
                start_time: Some(process.start_time()),
                api_socket,
                console: command.console.clone(),
                created_at_ms: now_ms(),
                restored_from: None,
                last_snapshot: None,
                page_server_attached: false,
                page_server_helper: None,
                net,
                vsock: None,
                jail: jail.map(|prepared| prepared.jail),
                pending_snapshot: None,
                stop_requested: false,
                own_drives: Vec::new(),
                pool: None,
            },
            dir,
            process: Some(process.clone()),
            api: None,
            ring,
            page_server: None,
            verified: true,
            busy: false,
            seen: None,
        };
        // Recorded before anything else can fail, so that a manager crash
        // from here on leaves a record the next manager can reap by pid (a
        // crash before the write lands is covered by the search for the
        // VMM's --api-sock argument). A host crash ends the VMM too, so the
        // page cache is durable enough, and the write proceeds while the
        // VMM starts up.
        let first_record = {
            let (record, dir) = (vm.record.clone(), vm.dir.clone());
            tokio::task::spawn_blocking(move || record.write_with(&dir, Durability::Cached))
        };
        Ok(Launched {
            vm,
            process,
            first_record,
        })
    }

    /// Waits for the VMM's API socket and connects the client.
    pub(super) async fn connect(&mut self, shared: &Shared) -> Result<ApiClient, VmError> {
        let config = &shared.config;
        let id = &self.vm.record.id;
        let socket = &self.vm.record.api_socket;
        let stream =
            match wait_for_api_socket(socket, &self.process, config.timeouts.api_socket).await {
                Ok(stream) => stream,
                Err(source) => {
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_millis(200),
                        self.vm.ring.drained(),
                    )
                    .await;
                    return Err(VmError::NotReady {
                        id: id.clone(),
                        source,
                        console_tail: self.vm.console_tail(20).await,
                    });
                }
            };
        ApiClient::from_stream(socket, stream, config.timeouts.request)
            .await
            .map_err(|source| VmError::Api {
                id: id.clone(),
                op: "connect to the API",
                source,
            })
    }

    /// Joins the first record write (on every path: an undo must not race a
    /// write into the directory it removes), then, if the VM-specific steps
    /// succeeded, commits the record durably.
    pub(super) async fn commit(self, outcome: Result<ApiClient, VmError>) -> Result<Vm, VmError> {
        let Launched {
            mut vm,
            first_record,
            ..
        } = self;
        let first_write = first_record.await.expect("record writes do not panic");
        let api = outcome?;
        first_write.map_err(|source| VmError::Record {
            id: vm.record.id.clone(),
            source,
        })?;
        vm.api = Some(Arc::new(api));
        vm.record.committed = true;
        vm.persist(Durability::Synced).await?;
        Ok(vm)
    }
}
