//! `PUT /snapshot/create` and `PUT /snapshot/load`: the fake's vmstate
//! file (its resources as JSON) and guest memory written and read back.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use firehost_api::{MemoryBackendType, SnapshotCreateParams, SnapshotLoadParams, SnapshotType};
use serde::{Deserialize, Serialize};

use crate::console::{self};
use crate::guest::Guest;
use crate::memory::{self, GuestMemory};
use crate::telemetry::Level;

use super::{ActionError, Effect, Outcome, Reply, Resources, SNAPSHOT_VERSION, VmState, Vmm};

/// Marker at the top of the fake's vmstate files.
const VMSTATE_MAGIC: &str = "fake-firecracker-vmstate";

/// The vmstate file the fake writes on snapshot create.
#[derive(Debug, Serialize, Deserialize)]
struct VmStateFile {
    magic: String,
    version: String,
    /// Whether the memory file holds every page or only the dirty ones.
    #[serde(default)]
    snapshot_type: SnapshotType,
    resources: Resources,
}

impl Vmm {
    pub(super) fn create_snapshot(
        &mut self,
        params: &SnapshotCreateParams,
    ) -> Result<Reply, ActionError> {
        if self.state != VmState::Paused {
            return Err(ActionError::CreateSnapshot(
                "Cannot save the microVM state: Operation not allowed: save/restore unavailable while running".into(),
            ));
        }
        let diff = params.snapshot_type == Some(SnapshotType::Diff);
        let state = VmStateFile {
            magic: VMSTATE_MAGIC.into(),
            version: SNAPSHOT_VERSION.into(),
            snapshot_type: params.snapshot_type.unwrap_or_default(),
            resources: self.resources.clone(),
        };
        let text = serde_json::to_vec(&state).map_err(|e| {
            ActionError::CreateSnapshot(format!("Cannot serialize the microVM state: {e}"))
        })?;
        let backing = |op: &str, e: io::Error| {
            ActionError::CreateSnapshot(format!(
                "Cannot perform {op} on the snapshot backing file: {e}"
            ))
        };
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&params.snapshot_path)
            .map_err(|e| backing("open", e))?;
        f.write_all(&text).map_err(|e| backing("write", e))?;
        f.flush().map_err(|e| backing("flush", e))?;

        self.snapshot_memory_to_file(&params.mem_file_path, diff)?;
        Ok(Reply::Empty)
    }

    /// Firecracker's `snapshot_memory_to_file`: the file keeps its content when it
    /// already has the memory's size (a diff merges into it), is emptied
    /// otherwise; a full snapshot writes every page, a diff only the dirty ones.
    fn snapshot_memory_to_file(&mut self, path: &Path, diff: bool) -> Result<(), ActionError> {
        let mem = |op: &str, e: io::Error| {
            ActionError::CreateSnapshot(format!(
                "Cannot perform {op} on the memory backing file: {e}"
            ))
        };
        let expected = self.resources.machine_config.mem_size_mib << 20;
        let existed = path.exists();
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| mem("open", e))?;
        if existed {
            let len = file.metadata().map_err(|e| mem("get_metadata", e))?.len();
            if len != expected {
                file.set_len(0).map_err(|e| mem("truncate", e))?;
            }
        }
        file.set_len(expected).map_err(|e| mem("set_length", e))?;
        let Some(guest) = &self.guest else {
            return Ok(());
        };
        guest.quiesce();
        let memory = guest.memory();
        let write =
            |e: io::Error| ActionError::CreateSnapshot(format!("Cannot write memory file: {e}"));
        if diff {
            let track = self.resources.machine_config.track_dirty_pages;
            let pages = memory.diff_pages(track).map_err(|e| {
                ActionError::CreateSnapshot(format!("Cannot get dirty bitmap: {e}"))
            })?;
            memory.dump(&file, Some(&pages)).map_err(write)?;
            if track {
                // Reading KVM's dirty log clears it.
                memory.reset_dirty();
            }
        } else {
            memory.dump(&file, None).map_err(write)?;
            memory.reset_dirty();
        }
        Ok(())
    }

    pub(super) fn load_snapshot(&mut self, params: SnapshotLoadParams) -> Outcome {
        if self.boot_path {
            self.telemetry.log(
                Level::Info,
                "fc_vmm",
                "Loading a microVM snapshot not allowed after configuring boot-specific resources.",
            );
            return Outcome::from(Err(ActionError::LoadSnapshot(
                "Loading a microVM snapshot not allowed after configuring boot-specific resources."
                    .into(),
            )));
        }
        match self.restore(&params) {
            Ok(()) => {
                self.state = if params.resume_vm == Some(true) {
                    VmState::Running
                } else {
                    VmState::Paused
                };
                let mut outcome = Outcome::from(Ok(Reply::Empty));
                if self.state == VmState::Running {
                    if let Some(g) = &self.guest {
                        g.resume();
                    }
                    self.sync_balloon();
                    self.start_guest_agent(&self.boot_args());
                    outcome.effects.push(Effect::Booted {
                        console: self.console(),
                        lines: console::resume_lines(),
                    });
                }
                outcome
            }
            // A failed restore is fatal in Firecracker: it answers, then exits with 1.
            Err(message) => Outcome {
                result: Err(ActionError::LoadSnapshot(format!(
                    "Failed to restore from snapshot: {message}"
                ))),
                effects: vec![Effect::Exit {
                    code: 1,
                    after: Duration::ZERO,
                    lines: Vec::new(),
                    console: self.console(),
                }],
            },
        }
    }

    fn restore(&mut self, params: &SnapshotLoadParams) -> Result<(), String> {
        let text = std::fs::read(&params.snapshot_path).map_err(|e| {
            format!("Failed to get snapshot state from file: Failed to open snapshot file: {e}")
        })?;
        let state: VmStateFile = serde_json::from_slice(&text)
            .ok()
            .filter(|s: &VmStateFile| s.magic == VMSTATE_MAGIC)
            .ok_or_else(|| {
                "Failed to get snapshot state from file: Failed to load snapshot state from file: Magic value does not match arch: 0"
                    .to_owned()
            })?;
        let mut resources = state.resources;
        for o in params.network_overrides.iter().flatten() {
            let iface = resources
                .network_interfaces
                .iter_mut()
                .find(|n| n.iface_id == o.iface_id)
                .ok_or("Failed to get snapshot state from file: Unknown Network Device.")?;
            iface.host_dev_name = o.host_dev_name.clone();
        }
        for iface in &resources.network_interfaces {
            let tap = crate::tap::attach(&iface.host_dev_name).map_err(|e| {
                format!(
                    "Failed to restore network devices: {}",
                    crate::tap::open_error(&iface.host_dev_name, &e)
                )
            })?;
            self.taps.insert(iface.iface_id.clone(), tap);
        }
        if let Some(o) = &params.vsock_override {
            let vsock = resources
                .vsock
                .as_mut()
                .ok_or("Failed to get snapshot state from file: Unknown Vsock Device.")?;
            vsock.uds_path = o.uds_path.clone();
        }
        if let Some(vsock) = &resources.vsock {
            // Firecracker binds the (overridden) socket while it restores
            // the device: its directory must exist by then.
            let listener = UnixListener::bind(&vsock.uds_path).map_err(|e| {
                format!(
                    "Failed to restore devices: Vsock: Error binding to the host-side Unix socket: {e}"
                )
            })?;
            crate::vsock::serve(listener, vsock.uds_path.clone());
        }
        let (backend_type, backend_path) = match (&params.mem_backend, &params.mem_file_path) {
            (Some(b), _) => (b.backend_type, b.backend_path.clone()),
            (None, Some(p)) => (MemoryBackendType::File, p.clone()),
            (None, None) => unreachable!("checked when parsing"),
        };
        let mem_bytes = resources.machine_config.mem_size_mib << 20;
        let memory = match backend_type {
            MemoryBackendType::File => {
                let from_file = |e: String| {
                    format!(
                        "Failed to load guest memory: Error creating guest memory from file: {e}"
                    )
                };
                let file = File::open(&backend_path)
                    .map_err(|e| from_file(format!("Failed to load guest memory: {e}")))?;
                let len = file
                    .metadata()
                    .map_err(|e| from_file(format!("Failed to load guest memory: {e}")))?
                    .len();
                if len < mem_bytes {
                    return Err(from_file(
                        "Failed to restore guest memory: Cannot create guest memory".into(),
                    ));
                }
                GuestMemory::from_file(&file, mem_bytes)
                    .map_err(|e| from_file(format!("Failed to restore guest memory: {e}")))?
            }
            MemoryBackendType::Uffd => {
                let (memory, stream) =
                    GuestMemory::from_uffd(&backend_path, mem_bytes).map_err(|e| {
                        format!("Failed to load guest memory: Error creating guest memory from uffd: {e}")
                    })?;
                self.uffd = Some(stream);
                memory
            }
        };
        // Firecracker updates a few device pages while it restores, so a `Uffd`
        // load only completes once the page server answers.
        for offset in memory::RESTORE_TOUCHED_OFFSETS {
            memory.touch(offset);
        }
        resources.machine_config.track_dirty_pages =
            params.track_dirty_pages == Some(true) || params.enable_diff_snapshots == Some(true);
        self.guest = Some(Guest::restored(
            Arc::new(memory),
            self.console(),
            self.options.guest_touch,
        ));
        // Firecracker keeps the metadata service's configuration in a
        // snapshot, not its data store (docs/snapshotting): a restored VM
        // with a configuration has an empty store.
        resources.mmds = resources
            .mmds_config
            .as_ref()
            .map(|_| serde_json::Value::Object(serde_json::Map::new()));
        resources.serial = self.resources.serial.take();
        self.resources = resources;
        Ok(())
    }
}

/// Reads the data format version of a vmstate file (`--describe-snapshot`).
///
/// The error is Firecracker's `SnapshotError`: its `Display` (logged) and its
/// `Debug` (inside `PrintSnapshotDataFormat(...)` on stderr). A file that is not
/// the fake's vmstate gets the answer Firecracker gives for a file that is not
/// its own format.
pub fn describe_snapshot(path: &Path) -> Result<String, (String, String)> {
    let text = std::fs::read(path).map_err(|e| {
        (
            format!("When printing Snapshot Data format: Unable to open snapshot state file: {e}"),
            format!("OpenSnapshot({e:?})"),
        )
    })?;
    let state: VmStateFile = serde_json::from_slice(&text).map_err(|_| {
        (
            "When printing Snapshot Data format: Invalid data format version of snapshot file: An error occurred during bitcode serialization: bitcode error".to_owned(),
            "SnapshotVersion(Bitcode(Error(\"bitcode error\")))".to_owned(),
        )
    })?;
    Ok(format!("v{}", state.version))
}
