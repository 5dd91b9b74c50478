//! Errors of VM operations and of opening a manager.

use std::path::PathBuf;
use std::time::Duration;

use crate::api::ApiError;
use crate::record::RecordError;
use crate::spec::SpecError;
use crate::state::TransitionError;
use crate::vmm::{ProcessError, ReadyError, SpawnError};
use crate::{ErrorKind, Operation, VmId};

pub use crate::socket_path::MAX_SOCKET_PATH_BYTES;

/// A VM operation failed. Every variant names the VM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmError {
    /// No VM has this id.
    #[error("no VM named {id}")]
    NotFound {
        /// The id.
        id: VmId,
    },
    /// A VM with this id exists (or is being created).
    #[error("a VM named {id} already exists")]
    AlreadyExists {
        /// The id.
        id: VmId,
    },
    /// The spec was refused; nothing was started.
    #[error("VM {id}: invalid spec")]
    InvalidSpec {
        /// The id.
        id: VmId,
        /// Which rule failed.
        #[source]
        source: SpecError,
    },
    /// A device update was refused before anything was sent; nothing
    /// changed.
    #[error("VM {id}: invalid update")]
    InvalidUpdate {
        /// The id.
        id: VmId,
        /// Which rule failed.
        #[source]
        source: super::update::UpdateError,
    },
    /// The snapshot was taken on a host whose CPU has features this host's
    /// lacks: its guest may be using them. Nothing was started.
    #[error("snapshot {name} needs CPU features this host lacks: {}", missing.join(", "))]
    CpuMismatch {
        /// The snapshot.
        name: String,
        /// The features, by name where they have one.
        missing: Vec<String>,
    },
    /// Metrics were asked of a manager that does not collect them
    /// ([`ManagerConfig::vmm_metrics`](crate::ManagerConfig::vmm_metrics)).
    #[error("VM {id}: the manager does not collect metrics (vmm_metrics is off)")]
    MetricsOff {
        /// The id.
        id: VmId,
    },
    /// A metrics flush did not reach the VM's metrics file in time.
    #[error("VM {id}: the metrics flush did not arrive in time")]
    MetricsTimeout {
        /// The id.
        id: VmId,
    },
    /// The operation is not allowed in the VM's state; nothing changed.
    /// (The transition is part of the message, not a separate cause: it is
    /// the whole explanation.)
    #[error("VM {id}: {refused}")]
    Transition {
        /// The id.
        id: VmId,
        /// The refused operation and the state that refused it.
        refused: TransitionError,
    },
    /// A path would be too long for a unix socket.
    #[error(
        "VM {id}: socket path {path:?} is {len} bytes; unix sockets allow {MAX_SOCKET_PATH_BYTES}"
    )]
    SocketPathTooLong {
        /// The id.
        id: VmId,
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// A file-system operation failed.
    #[error("VM {id}: cannot {op} {path:?}")]
    Io {
        /// The id.
        id: VmId,
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// The VMM could not be started.
    #[error("VM {id}: cannot start the VMM")]
    Spawn {
        /// The id.
        id: VmId,
        /// The cause.
        #[source]
        source: SpawnError,
    },
    /// The VMM's API never came up.
    #[error("VM {id}: the VMM did not become ready")]
    NotReady {
        /// The id.
        id: VmId,
        /// Timeout or early exit.
        #[source]
        source: ReadyError,
        /// The console and VMM stderr at that moment.
        console_tail: Vec<String>,
    },
    /// A drive the snapshot's vmstate names is gone or changed: Firecracker
    /// would reopen it while loading. Checked before anything is spawned.
    #[error("snapshot {name} needs drive {drive} at {path:?}, which {problem}")]
    SnapshotDrive {
        /// The snapshot.
        name: String,
        /// The drive id (`rootfs` for the root filesystem).
        drive: String,
        /// The file the restore would use.
        path: PathBuf,
        /// What is wrong with it.
        problem: DriveProblem,
    },
    /// The VMM exited while handling a request instead of answering it.
    /// `reason` is what it logged last (Firecracker's fault message when it
    /// logged one).
    #[error("VM {id}: the VMM exited during {op}: {reason}")]
    VmmGaveUp {
        /// The id.
        id: VmId,
        /// The step, e.g. "load the snapshot".
        op: &'static str,
        /// Its last words, from its log or stderr.
        reason: String,
        /// The API error (a closed connection).
        #[source]
        source: Box<ApiError>,
    },
    /// A call to the VM's guest agent failed (not ready, refused, broken
    /// off, a request over the protocol's limit).
    #[error("VM {id}: the guest agent call failed")]
    Agent {
        /// The id.
        id: VmId,
        /// What the agent client said.
        #[source]
        source: Box<crate::agent::AgentError>,
    },
    /// A Firecracker API call failed.
    #[error("VM {id}: {op} failed")]
    Api {
        /// The id.
        id: VmId,
        /// The step, e.g. "configure boot source".
        op: &'static str,
        /// The API error, with Firecracker's status and fault message.
        #[source]
        source: ApiError,
    },
    /// Signalling or watching the VMM failed.
    #[error("VM {id}: process control failed")]
    Process {
        /// The id.
        id: VmId,
        /// The cause.
        #[source]
        source: ProcessError,
    },
    /// The VMM outlived every step of stop, SIGKILL included.
    #[error("VM {id}: the VMM (pid {pid}) did not exit within {waited:?} of SIGKILL")]
    StopTimeout {
        /// The id.
        id: VmId,
        /// The VMM's pid.
        pid: i32,
        /// How long we waited after SIGKILL.
        waited: Duration,
    },
    /// The VM's record could not be written.
    #[error("VM {id}: cannot persist its record")]
    Record {
        /// The id.
        id: VmId,
        /// The cause.
        #[source]
        source: RecordError,
    },
    /// The VMM exited during the operation.
    #[error("VM {id}: the VMM exited during {op}")]
    VmmExited {
        /// The id.
        id: VmId,
        /// The operation.
        op: Operation,
    },
    /// A snapshot bundle is missing, incomplete, corrupt, in use, or could
    /// not be written.
    #[error("snapshot bundle {name}")]
    SnapshotBundle {
        /// The snapshot's name.
        name: String,
        /// What is wrong with it (boxed: store errors are large, and
        /// `VmError` travels through every result).
        #[source]
        source: Box<crate::snapshot::StoreError>,
    },
    /// Only full snapshots can be restored; a diff must be merged onto its
    /// parents first.
    #[error("snapshot {name} is a diff; merge it onto its parent before restoring")]
    SnapshotIsDiff {
        /// The snapshot's name.
        name: String,
    },
    /// A diff snapshot cannot keep the disks: its memory is a layer over
    /// its parent's, and a merge could not tell which disk goes with it.
    /// Take a full snapshot with [`SnapshotOptions::disks`](super::SnapshotOptions::disks).
    #[error("VM {id}: only a full snapshot keeps the disks")]
    DisksNeedFullSnapshot {
        /// The id.
        id: VmId,
    },
    /// A diff snapshot was asked for, but the VM has no earlier snapshot to
    /// be the diff's parent.
    #[error("VM {id} has no earlier snapshot to take a diff against")]
    NoParentSnapshot {
        /// The id.
        id: VmId,
    },
    /// The bundle was written by another Firecracker version than the one
    /// that would load it; Firecracker loads only its own version's
    /// snapshots.
    #[error(
        "snapshot {name} was taken with Firecracker {snapshot_version}, this VMM is {vmm_version}"
    )]
    SnapshotVersion {
        /// The snapshot's name.
        name: String,
        /// The version in the bundle's manifest.
        snapshot_version: String,
        /// The version the VMM reports.
        vmm_version: String,
    },
    /// The page server of a restore failed.
    #[error("VM {id}: page server failed")]
    PageServer {
        /// The id.
        id: VmId,
        /// Why (boxed: the page server's errors are large).
        #[source]
        source: Box<crate::snapshot::uffd::PageServerError>,
    },
    /// The VM's network could not be set up or torn down. A create that
    /// fails this way leaves nothing behind.
    #[error("VM {id}: network")]
    Network {
        /// The id.
        id: VmId,
        /// Why.
        #[source]
        source: Box<crate::net::host::NetError>,
    },
    /// The VM's jail cannot be made (or a jail was asked of a manager
    /// without a jail configuration); nothing was left behind.
    #[error("VM {id}: jail")]
    Jail {
        /// The id.
        id: VmId,
        /// Why.
        #[source]
        source: Box<crate::jail::JailError>,
    },
    /// Another live VM writes to the file this VM would attach read-write:
    /// two guests writing one disk image corrupt it. Share the drive on
    /// purpose in both specs (`VmSpec::rootfs_shared`, `DriveSpec::shared`)
    /// if the guests coordinate. Nothing was left behind.
    #[error("VM {id}: drive {drive} at {path:?} is written to by VM {holder}")]
    DriveInUse {
        /// The id.
        id: VmId,
        /// The drive id (`rootfs` for the root filesystem).
        drive: String,
        /// The file.
        path: PathBuf,
        /// The live VM that writes to it.
        holder: VmId,
    },
    /// A copy of a writable drive could not be made (a clone's own, or a
    /// snapshot's kept disk); the operation left nothing behind.
    #[error("VM {id}: cannot make its own copy of drive {drive}")]
    DriveCopy {
        /// The id.
        id: VmId,
        /// The drive id (`rootfs` for the root filesystem).
        drive: String,
        /// Why.
        #[source]
        source: Box<crate::jail::JailError>,
    },
    /// The VM has no vsock device, so no agent can be reached.
    #[error("VM {id} has no vsock device (the agent needs one: set VmSpec::vsock)")]
    NoVsock {
        /// The id.
        id: VmId,
    },
    /// The VM's record cannot be read: the VM is quarantined. Its process
    /// and files are left alone; [`Manager::remove_unreadable`] removes it.
    ///
    /// [`Manager::remove_unreadable`]: super::Manager::remove_unreadable
    #[error(
        "VM {id} is left alone because its record is unreadable ({reason}); `rm -f` removes it"
    )]
    Unreadable {
        /// The VM.
        id: VmId,
        /// Why.
        reason: UnreadableReason,
    },
    /// [`Manager::remove_unreadable`] was asked to remove a VM whose record
    /// is readable: [`Manager::destroy`] removes it.
    ///
    /// [`Manager::remove_unreadable`]: super::Manager::remove_unreadable
    /// [`Manager::destroy`]: super::Manager::destroy
    #[error("VM {id}'s record is readable: destroy it instead")]
    NotUnreadable {
        /// The VM.
        id: VmId,
    },
    /// The VMM is alive (verified by pid, start time and pidfd) but its
    /// API did not answer in time: it may be busy writing a snapshot. It is
    /// never killed for that; try again later.
    #[error(
        "VM {id}: the VMM (pid {pid}) is alive but busy: its API did not answer within {waited:?}; try again later"
    )]
    Busy {
        /// The VM.
        id: VmId,
        /// The VMM's pid.
        pid: i32,
        /// How long it was given.
        waited: std::time::Duration,
    },
    /// Another operation on the VM is under way (a rename does not wait
    /// for one): try again once it is done.
    #[error("VM {id} is in the middle of another operation; try again once it is done")]
    MidOperation {
        /// The VM.
        id: VmId,
    },
    /// No pool has this name.
    #[error("no pool named {pool}")]
    PoolNotFound {
        /// The pool.
        pool: crate::id::PoolName,
    },
    /// A pool with this name exists already.
    #[error("pool {pool} already exists")]
    PoolExists {
        /// The pool.
        pool: crate::id::PoolName,
    },
    /// A pool's spec cannot make members: a bad size, a missing snapshot,
    /// a template that does not resolve.
    #[error("pool {pool}: {why}")]
    InvalidPool {
        /// The pool.
        pool: crate::id::PoolName,
        /// What is wrong.
        why: String,
    },
    /// A claim found no ready member and was told not to make one.
    #[error("pool {pool} has no member ready")]
    PoolEmpty {
        /// The pool.
        pool: crate::id::PoolName,
    },
    /// A pool's spec could not be written or removed.
    #[error("pool {pool}: cannot {op} {path:?}")]
    PoolIo {
        /// The pool.
        pool: crate::id::PoolName,
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// A snapshot with this name exists already.
    #[error("snapshot {name} already exists")]
    SnapshotExists {
        /// The snapshot's name.
        name: String,
    },
}

/// Why a VM's record cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnreadableReason {
    /// It is not a record this build can parse (corrupt, truncated, edited).
    #[error("malformed record: {detail}")]
    Malformed {
        /// The parser's words.
        detail: String,
    },
    /// A newer firehost wrote it.
    #[error("record format {found} is newer than this build's {supported}")]
    NewerFormat {
        /// Its format.
        found: u32,
        /// The newest format this build reads.
        supported: u32,
    },
    /// It cannot be read at all.
    #[error("cannot read the record: {detail}")]
    Io {
        /// The errno, in words.
        detail: String,
    },
}

impl VmError {
    /// The Firecracker status and fault message behind this error, if any.
    pub fn fault(&self) -> Option<(http::StatusCode, &str)> {
        match self {
            VmError::Api { source, .. } => source.fault(),
            _ => None,
        }
    }
}

/// A manager could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// Another manager holds the state directory.
    #[error("state directory {state_dir:?} is in use by another manager{}", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        /// The directory.
        state_dir: PathBuf,
        /// The pid written by the holder, if readable.
        holder: Option<u32>,
    },
    /// A file-system operation failed.
    #[error("cannot {op} {path:?}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// The state directory path leaves no room for VM sockets.
    #[error(
        "state directory {path:?} is too long: VM socket paths would exceed {MAX_SOCKET_PATH_BYTES} bytes"
    )]
    StateDirTooLong {
        /// The directory.
        path: PathBuf,
    },
    /// The network configuration is invalid.
    #[error("invalid network configuration")]
    Network {
        /// Why.
        #[source]
        source: crate::net::host::NetError,
    },
    /// The recorded host settings cannot be read or written.
    #[error("host settings")]
    Settings {
        /// Why.
        #[source]
        source: super::settings::SettingsError,
    },
    /// The configuration's host settings differ from the ones the state
    /// directory's VMs run with ([`SettingsPolicy::Require`]).
    ///
    /// [`SettingsPolicy::Require`]: super::SettingsPolicy::Require
    #[error(
        "host settings differ from the ones recorded in {state_dir:?}: {}; use the recorded ones, or change them explicitly",
        show_all(differences)
    )]
    SettingsDiffer {
        /// The state directory.
        state_dir: PathBuf,
        /// Each differing setting, with both values.
        differences: Vec<super::settings::SettingDifference>,
    },
    /// A change of host settings was refused: live VMs depend on them
    /// ([`SettingsPolicy::Change`]).
    ///
    /// [`SettingsPolicy::Change`]: super::SettingsPolicy::Change
    #[error(
        "cannot change {}: live VMs depend on it ({})",
        show_all(differences),
        vms.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    SettingsInUse {
        /// The settings that would change.
        differences: Vec<super::settings::SettingDifference>,
        /// The live VMs that depend on them.
        vms: Vec<VmId>,
    },
}

fn show_all(differences: &[super::settings::SettingDifference]) -> String {
    differences
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What is wrong with a drive file a snapshot needs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DriveProblem {
    /// There is no file there.
    Missing,
    /// There is something else there (a directory, a device…), or it
    /// cannot be read: the text says which.
    Unusable(String),
    /// Its size changed since the snapshot: the guest's block device would
    /// not match what the vmstate remembers.
    Resized {
        /// Its size when the snapshot was taken.
        recorded: u64,
        /// Its size now.
        now: u64,
    },
}

impl std::fmt::Display for DriveProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DriveProblem::Missing => f.write_str("is missing"),
            DriveProblem::Unusable(why) => write!(f, "cannot be used: {why}"),
            DriveProblem::Resized { recorded, now } => {
                write!(
                    f,
                    "is {now} bytes, not the {recorded} it was at the snapshot"
                )
            }
        }
    }
}

impl VmError {
    /// [`VmError::SocketPathTooLong`] for VM `id`.
    pub(crate) fn socket_path_too_long(
        id: &VmId,
        e: crate::socket_path::SocketPathTooLong,
    ) -> Self {
        VmError::SocketPathTooLong {
            id: id.clone(),
            path: e.path,
            len: e.len,
        }
    }

    /// The class of this failure (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            VmError::NotFound { .. } | VmError::PoolNotFound { .. } => ErrorKind::NotFound,
            VmError::PoolExists { .. } | VmError::PoolEmpty { .. } => ErrorKind::Conflict,
            VmError::InvalidPool { .. } => ErrorKind::InvalidInput,
            VmError::AlreadyExists { .. }
            | VmError::DriveInUse { .. }
            | VmError::Unreadable { .. }
            | VmError::NotUnreadable { .. }
            | VmError::Busy { .. }
            | VmError::MidOperation { .. }
            | VmError::Transition { .. }
            | VmError::SnapshotExists { .. }
            | VmError::SnapshotIsDiff { .. }
            | VmError::NoParentSnapshot { .. } => ErrorKind::Conflict,
            VmError::InvalidSpec { .. }
            | VmError::InvalidUpdate { .. }
            | VmError::MetricsOff { .. }
            | VmError::SocketPathTooLong { .. }
            | VmError::NoVsock { .. }
            | VmError::DisksNeedFullSnapshot { .. } => ErrorKind::InvalidInput,
            VmError::SnapshotDrive { .. } | VmError::CpuMismatch { .. } => ErrorKind::HostNotReady,
            VmError::Agent { source, .. } => match **source {
                crate::agent::AgentError::RequestTooLarge { .. } => ErrorKind::InvalidInput,
                _ => ErrorKind::Failed,
            },
            VmError::SnapshotBundle { source, .. } => source.kind(),
            VmError::Network { source, .. } => source.kind(),
            VmError::Jail { source, .. } | VmError::DriveCopy { source, .. } => source.kind(),
            VmError::Io { .. }
            | VmError::PoolIo { .. }
            | VmError::Spawn { .. }
            | VmError::NotReady { .. }
            | VmError::VmmGaveUp { .. }
            | VmError::Api { .. }
            | VmError::Process { .. }
            | VmError::StopTimeout { .. }
            | VmError::Record { .. }
            | VmError::VmmExited { .. }
            | VmError::MetricsTimeout { .. }
            | VmError::SnapshotVersion { .. }
            | VmError::PageServer { .. } => ErrorKind::Failed,
        }
    }
}

impl ManagerError {
    /// The class of this failure (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ManagerError::Locked { .. } | ManagerError::SettingsInUse { .. } => ErrorKind::Conflict,
            ManagerError::StateDirTooLong { .. } | ManagerError::SettingsDiffer { .. } => {
                ErrorKind::InvalidInput
            }
            ManagerError::Network { source, .. } => match source.kind() {
                ErrorKind::Failed => ErrorKind::HostNotReady,
                kind => kind,
            },
            ManagerError::Io { .. } | ManagerError::Settings { .. } => ErrorKind::Failed,
        }
    }
}
