//! Create as a transaction: every side effect goes on an undo stack as it
//! happens, and any failure unwinds the stack before the error is returned.

use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;

use super::{Shared, Slot, Vm, VmError, VmInfo, now_ms, watch_for_crash};
use crate::VmId;
use crate::api::ApiClient;
use crate::api::models::{ActionType, BootSource, Drive, InstanceActionInfo, MachineConfiguration};
use crate::console::ConsoleRing;
use crate::manager::config::ConsoleTarget;
use crate::manager::error::MAX_SOCKET_PATH_BYTES;
use crate::record::{Durability, RECORD_FORMAT, VmRecord};
use crate::spec::{ROOTFS_DRIVE_ID, ResolvedSpec, VmSpec};
use crate::state::VmState;
use crate::undo::{UndoStack, UndoStep};
use crate::vmm::ready::wait_for_api_socket;
use crate::vmm::{ConsoleMode, SeccompPolicy, VmmCommand};

/// File names inside a VM's directory.
pub(crate) const API_SOCKET: &str = "api.sock";
pub(crate) const CONSOLE_FILE: &str = "console.log";
pub(crate) const VMM_LOG_FILE: &str = "firecracker.log";
pub(crate) const METRICS_FILE: &str = "metrics.json";

/// Creates a VM and, with `then_start`, boots it within the same
/// transaction (so a failed start undoes the create).
pub(super) async fn create(
    shared: Arc<Shared>,
    id: VmId,
    spec: VmSpec,
    then_start: bool,
) -> Result<VmInfo, VmError> {
    // Reserve the id: the slot's lock is held until the create is decided,
    // so other operations on this id wait, and a second create fails.
    let slot = Arc::new(Slot::new());
    let mut guard = slot
        .vm
        .clone()
        .try_lock_owned()
        .expect("a new slot is unlocked");
    {
        let mut vms = shared.lock_registry();
        if vms.contains_key(&id) {
            return Err(VmError::AlreadyExists { id });
        }
        vms.insert(id.clone(), slot.clone());
    }

    let mut undo = UndoStack::default();
    match build(&shared, &id, spec, then_start, &mut undo).await {
        Ok(vm) => {
            undo.commit();
            let info = vm.info();
            if let Some(process) = vm.process.clone() {
                watch_for_crash(&shared, slot.clone(), process);
            }
            slot.publish(Some(&vm));
            *guard = Some(vm);
            Ok(info)
        }
        Err(e) => {
            undo.unwind().await;
            shared.lock_registry().remove(&id);
            Err(e)
        }
    }
}

async fn build(
    shared: &Shared,
    id: &VmId,
    spec: VmSpec,
    then_start: bool,
    undo: &mut UndoStack,
) -> Result<Vm, VmError> {
    let config = &shared.config;
    let defaults = config.defaults.clone();
    let spec = tokio::task::spawn_blocking(move || spec.resolve(&defaults))
        .await
        .expect("spec resolution does not panic")
        .map_err(|source| VmError::InvalidSpec {
            id: id.clone(),
            source,
        })?;

    let dir = shared.vm_dir(id);
    let api_socket = dir.join(API_SOCKET);
    let socket_len = api_socket.as_os_str().len();
    if socket_len > MAX_SOCKET_PATH_BYTES {
        return Err(VmError::SocketPathTooLong {
            id: id.clone(),
            path: api_socket,
            len: socket_len,
        });
    }

    // Not `create_dir_all`: an existing directory means another process
    // (or a crashed one) owns this id, and it must not be adopted.
    let io = |op, path: &std::path::Path| {
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
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(io("create directory", &dir))?;
    undo.push(UndoStep::RemoveDir(dir.clone()));

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
    // Firecracker opens its log and metrics paths without O_CREAT (they
    // are usually FIFOs), so plain files must exist first.
    if let Some(level) = config.vmm_log {
        let path = dir.join(VMM_LOG_FILE);
        create_private_file(&path).map_err(io("create", &path))?;
        command.log_path = Some(path);
        command.log_level = Some(level);
    }
    if config.vmm_metrics {
        let path = dir.join(METRICS_FILE);
        create_private_file(&path).map_err(io("create", &path))?;
        command.metrics_path = Some(path);
    }

    let ring = ConsoleRing::new(config.console_lines);
    let process = command.spawn(&ring).map_err(|source| VmError::Spawn {
        id: id.clone(),
        source,
    })?;
    undo.push(UndoStep::KillProcess(process.clone()));

    let mut vm = Vm {
        record: VmRecord {
            format: RECORD_FORMAT,
            id: id.clone(),
            committed: false,
            spec,
            state: VmState::Created,
            pid: Some(process.pid()),
            start_time: Some(process.start_time()),
            api_socket: api_socket.clone(),
            console: command.console.clone(),
            created_at_ms: now_ms(),
        },
        dir,
        process: Some(process.clone()),
        api: None,
        ring,
    };
    // Recorded before anything else can fail, so that a manager crash from
    // here on leaves a record the next manager can reap by pid (a crash
    // before the write lands is covered by the search for the VMM's
    // --api-sock argument). A host crash ends the VMM too, so the page cache
    // is durable enough, and the write proceeds while the VMM starts up.
    let first_record = {
        let (record, dir) = (vm.record.clone(), vm.dir.clone());
        tokio::task::spawn_blocking(move || record.write_with(&dir, Durability::Cached))
    };
    let configured = bring_up(config, id, &mut vm, &api_socket, &process, then_start).await;
    // Joined on every path: the undo must not race a write into the
    // directory it removes.
    let first_write = first_record.await.expect("record writes do not panic");
    configured?;
    first_write.map_err(|source| VmError::Record {
        id: id.clone(),
        source,
    })?;
    vm.record.committed = true;
    vm.persist(Durability::Synced).await?;
    Ok(vm)
}

/// Waits for the API, configures the VM and, if asked, starts it.
async fn bring_up(
    config: &super::ManagerConfig,
    id: &VmId,
    vm: &mut Vm,
    api_socket: &std::path::Path,
    process: &crate::vmm::VmmProcess,
    then_start: bool,
) -> Result<(), VmError> {
    let stream = match wait_for_api_socket(api_socket, process, config.timeouts.api_socket).await {
        Ok(stream) => stream,
        Err(source) => {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(200), vm.ring.drained())
                .await;
            return Err(VmError::NotReady {
                id: id.clone(),
                source,
                console_tail: vm.console_tail(20).await,
            });
        }
    };
    let api = ApiClient::from_stream(api_socket, stream, config.timeouts.request)
        .await
        .map_err(|source| VmError::Api {
            id: id.clone(),
            op: "connect to the API",
            source,
        })?;
    configure(&api, &vm.record.spec)
        .await
        .map_err(|(op, source)| VmError::Api {
            id: id.clone(),
            op,
            source,
        })?;

    if then_start {
        api.create_sync_action(&InstanceActionInfo {
            action_type: ActionType::InstanceStart,
        })
        .await
        .map_err(|source| VmError::Api {
            id: id.clone(),
            op: "start the guest",
            source,
        })?;
        vm.record.state = VmState::Running;
    }
    vm.api = Some(Arc::new(api));
    Ok(())
}

/// The configuration requests, in the order Firecracker's docs use.
async fn configure(
    api: &ApiClient,
    spec: &ResolvedSpec,
) -> Result<(), (&'static str, crate::api::ApiError)> {
    api.put_machine_configuration(&machine_config(spec))
        .await
        .map_err(|e| ("configure the machine", e))?;
    api.put_guest_boot_source(&boot_source(spec))
        .await
        .map_err(|e| ("configure the boot source", e))?;
    for drive in drives(spec) {
        api.put_guest_drive_by_id(&drive)
            .await
            .map_err(|e| ("attach a drive", e))?;
    }
    Ok(())
}

pub(crate) fn machine_config(spec: &ResolvedSpec) -> MachineConfiguration {
    MachineConfiguration {
        smt: Some(spec.smt),
        track_dirty_pages: Some(spec.track_dirty_pages),
        ..MachineConfiguration::new(spec.vcpus, spec.mem_mib.into())
    }
}

pub(crate) fn boot_source(spec: &ResolvedSpec) -> BootSource {
    BootSource {
        initrd_path: spec.initrd.clone(),
        boot_args: Some(spec.boot_args.clone()),
        ..BootSource::new(&spec.kernel)
    }
}

pub(crate) fn drives(spec: &ResolvedSpec) -> Vec<Drive> {
    let drive = |id: &str, path: &std::path::Path, read_only: bool, root: bool| Drive {
        drive_id: id.to_owned(),
        path_on_host: Some(path.to_owned()),
        is_root_device: root,
        is_read_only: Some(read_only),
        partuuid: None,
        cache_type: None,
        rate_limiter: None,
        io_engine: None,
        socket: None,
    };
    let mut drives = Vec::new();
    if let Some(rootfs) = &spec.rootfs {
        drives.push(drive(ROOTFS_DRIVE_ID, rootfs, spec.rootfs_read_only, true));
    }
    for extra in &spec.extra_drives {
        drives.push(drive(&extra.id, &extra.path, extra.read_only, false));
    }
    drives
}

fn create_private_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(drop)
}
