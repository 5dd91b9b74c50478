//! The manager's side of jailed VMs: deciding whether a VM is jailed,
//! making its jail (uid, directory, staged files, cgroup arguments) as part
//! of the create transaction, and taking it away again.
//!
//! Everything Firecracker opens by path lives at a fixed place inside the
//! chroot ([`layout`]); the record keeps the host side, and
//! [`VmRecord::vmm_path`](crate::record::VmRecord::vmm_path) maps a host
//! path to what Firecracker sees.

use std::path::{Path, PathBuf};

use super::{Shared, VmError, find_binary};
use crate::VmId;
use crate::jail::command::ResourceLimit;
use crate::jail::stage::{self, Staged};
use crate::jail::{CgroupMounts, JailConfig, JailError, JailSpec, JailerCommand, VmJail};
use crate::spec::{DriveSpec, ResolvedSpec};
use crate::undo::{UndoStack, UndoStep};
use crate::vmm::SeccompPolicy;

/// Where a jailed VM's files are, as Firecracker sees them. Sockets are
/// not listed: they keep the names they have in an unjailed VM's
/// directory, at the root of the jail (see [`socket_path`]).
pub(crate) mod layout {
    /// Firecracker's log.
    pub const LOG: &str = "/firecracker.log";
    /// Firecracker's metrics.
    pub const METRICS: &str = "/metrics.json";
    /// pmem devices, by id.
    pub const PMEM: &str = "/pmem";
    /// A seccomp filter file.
    pub const SECCOMP: &str = "/seccomp.bpf";
    /// The kernel.
    pub const KERNEL: &str = "/kernel";
    /// The initrd.
    pub const INITRD: &str = "/initrd";
    /// The root filesystem.
    pub const ROOTFS: &str = "/rootfs";
    /// Extra drives, by id.
    pub const DRIVES: &str = "/drives";
    /// Where snapshots are written before they move to the store.
    pub const SNAPSHOT: &str = "/snapshot";
    /// Where a restore's vmstate (and memory file, for the file backend)
    /// are staged.
    pub const RESTORE: &str = "/restore";
    /// The marker naming the state directory that owns a jail.
    pub const OWNER_FILE: &str = "firehost.owner";
}

/// Where the socket `name` of a VM lives on the host: in its directory, or
/// for a jailed VM at the root of its chroot (`/name` to Firecracker).
pub(super) fn socket_path(jail: Option<&VmJail>, dir: &Path, name: &str) -> PathBuf {
    match jail {
        Some(jail) => jail.chroot.join(name),
        None => dir.join(name),
    }
}

/// The jail of a VM being made, ready for the jailer.
pub(super) struct PreparedJail {
    pub(super) jail: VmJail,
    pub(super) jailer: JailerCommand,
}

/// The jail spec of a VM, if it is jailed: its own, or the default when
/// the configuration jails every VM.
pub(super) fn jail_spec_of(spec: &ResolvedSpec, config: Option<&JailConfig>) -> Option<JailSpec> {
    match (&spec.jail, config) {
        (Some(jail), _) => Some(jail.clone()),
        (None, Some(config)) if config.always => Some(JailSpec::default()),
        _ => None,
    }
}

/// The spec with every file at its place inside the chroot.
pub(crate) fn vmm_spec(spec: &ResolvedSpec) -> ResolvedSpec {
    let mut view = spec.clone();
    view.kernel = PathBuf::from(layout::KERNEL);
    view.initrd = spec.initrd.as_ref().map(|_| PathBuf::from(layout::INITRD));
    view.rootfs = spec.rootfs.as_ref().map(|_| PathBuf::from(layout::ROOTFS));
    view.extra_drives = spec
        .extra_drives
        .iter()
        .map(|d| DriveSpec {
            path: Path::new(layout::DRIVES).join(&d.id),
            ..d.clone()
        })
        .collect();
    view.pmem = spec
        .pmem
        .iter()
        .map(|p| crate::spec::PmemSpec {
            path: Path::new(layout::PMEM).join(&p.id),
            ..p.clone()
        })
        .collect();
    view
}

/// Makes the jail of VM `id` if its spec (or the configuration) asks for
/// one: a uid, the jail directory, the staged files and the jailer's
/// command. Every step is on `undo`.
pub(super) async fn prepare(
    shared: &Shared,
    id: &VmId,
    spec: &ResolvedSpec,
    drives_from: Option<&Path>,
    netns: Option<&Path>,
    undo: &mut UndoStack,
) -> Result<Option<PreparedJail>, VmError> {
    let config = shared.config.jail.as_ref();
    let Some(jail_spec) = jail_spec_of(spec, config) else {
        return Ok(None);
    };
    let err = |source: JailError| VmError::Jail {
        id: id.clone(),
        source: Box::new(source),
    };
    let config = config.ok_or_else(|| err(JailError::NotConfigured))?;
    let jailer = find_binary(&config.jailer).ok_or_else(|| {
        err(JailError::JailerNotFound {
            path: config.jailer.clone(),
        })
    })?;
    crate::jail::base::ensure_chroot_base(&config.chroot_base).map_err(err)?;
    let jail_id = id.firecracker_id();
    let chroot =
        crate::jail::chroot_dir(&config.chroot_base, &shared.firecracker, &jail_id).map_err(err)?;
    let limits = jail_spec.limits();
    let mounts = CgroupMounts::read().map_err(err)?;
    let version = mounts.choose(config.cgroup_version, &limits).map_err(err)?;

    let (uid, gid) = reserve_ids(shared, id, &jail_spec, config, undo).map_err(err)?;

    let mut jailer = JailerCommand::new(jailer, &shared.firecracker, &jail_id, uid, gid);
    jailer.chroot_base = config.chroot_base.clone();
    jailer.cgroup_version = version;
    jailer.cgroups = limits.properties(version);
    jailer.parent_cgroup = Some(config.parent_cgroup.clone());
    jailer.new_pid_ns = config.new_pid_ns;
    jailer.daemonize = config.daemonize;
    jailer.netns = netns.map(Path::to_owned);
    jailer.resource_limits = vec![ResourceLimit::OpenFiles(shared.config.nofile_limit)];
    if let Some(bytes) = jail_spec.fsize_max_bytes {
        jailer.resource_limits.push(ResourceLimit::FileSize(bytes));
    }
    jailer.validate().map_err(err)?;

    let jail = VmJail {
        jail_id,
        chroot,
        uid,
        gid,
        cgroups: mounts.dirs(version, &limits, &config.parent_cgroup, &jailer.jail_id),
    };
    make_jail_dir(&jail, &shared.vms_dir).map_err(err)?;
    undo.push(UndoStep::RemoveJail {
        base: config.chroot_base.clone(),
        jail: jail.clone(),
    });
    let staged = {
        let (jail, spec) = (jail.clone(), spec.clone());
        let seccomp = shared.config.seccomp.clone();
        let log = shared.config.vmm_log.is_some() || spec.log.is_some();
        let metrics = shared.config.vmm_metrics;
        let drives_from = drives_from.map(|c| crate::jail::Chroot::new(c.to_owned()));
        tokio::task::spawn_blocking(move || {
            stage_files(&jail, &spec, drives_from.as_ref(), &seccomp, log, metrics)
        })
        .await
        .expect("staging does not panic")
    };
    staged.map_err(err)?;
    Ok(Some(PreparedJail { jail, jailer }))
}

/// The uid and gid of VM `id`: the ones it holds already (reserved for its
/// TAP), else new ones, released on undo.
fn reserve_ids(
    shared: &Shared,
    id: &VmId,
    jail_spec: &JailSpec,
    config: &JailConfig,
    undo: &mut UndoStack,
) -> Result<(u32, u32), JailError> {
    let mut uids = shared.uids.lock().expect("uid lock");
    let uid = match uids.held_by(id) {
        Some(uid) => uid,
        None => {
            let uid = uids.allocate(id, jail_spec.uid)?;
            undo.push(UndoStep::ReleaseUid {
                uids: shared.uids.clone(),
                vm: id.clone(),
            });
            uid
        }
    };
    Ok((uid, jail_spec.gid.or(config.gid).unwrap_or(uid)))
}

/// The owner of a VM's TAP: for a jailed VM its own uid and gid (reserved
/// here, before the network is attached), else the configured owner.
pub(super) fn tap_owner(
    shared: &Shared,
    id: &VmId,
    spec: &ResolvedSpec,
    undo: &mut UndoStack,
) -> Result<crate::net::tap::TapOwner, VmError> {
    let config = shared.config.jail.as_ref();
    let Some(jail_spec) = jail_spec_of(spec, config) else {
        return Ok(shared.config.network.tap_owner);
    };
    let err = |source: JailError| VmError::Jail {
        id: id.clone(),
        source: Box::new(source),
    };
    let config = config.ok_or_else(|| err(JailError::NotConfigured))?;
    let (uid, gid) = reserve_ids(shared, id, &jail_spec, config, undo).map_err(err)?;
    Ok(crate::net::tap::TapOwner {
        uid: Some(uid),
        gid: Some(gid),
    })
}

/// Whether the jailer forks (so Firecracker's pid is in the pid file).
pub(super) fn forks(jailer: &JailerCommand) -> bool {
    jailer.new_pid_ns || jailer.daemonize
}

/// A watch for the pid file of a jailer that forks; made before the spawn.
pub(super) fn watch_pid_file(
    shared: &Shared,
    id: &VmId,
    jail: &VmJail,
) -> Result<crate::jail::pidfile::PidFileWatch, VmError> {
    let pid_file = crate::jail::command::pid_file(&jail.chroot, &shared.firecracker);
    crate::jail::pidfile::PidFileWatch::new(&jail.chroot, pid_file).map_err(|source| {
        VmError::Jail {
            id: id.clone(),
            source: Box::new(source),
        }
    })
}

/// With `--new-pid-ns` or `--daemonize` the jailer forks, writes
/// Firecracker's pid into the chroot and exits: waits for the pid (failing
/// at once if the jailer exits with an error) and returns Firecracker's
/// process.
pub(super) async fn follow_pid_file(
    shared: &Shared,
    id: &VmId,
    watch: &crate::jail::pidfile::PidFileWatch,
    jailer: &crate::vmm::VmmProcess,
) -> Result<crate::vmm::VmmProcess, VmError> {
    let err = |source: JailError| VmError::Jail {
        id: id.clone(),
        source: Box::new(source),
    };
    let timeout = shared.config.timeouts.api_socket;
    let failed = async {
        match jailer.wait().await {
            // The forking parent's exit says nothing yet.
            crate::state::ExitReason::Code(0) => std::future::pending().await,
            other => other,
        }
    };
    let pid = tokio::select! {
        pid = watch.wait(timeout) => pid.map_err(err)?,
        exit = failed => {
            return Err(err(JailError::JailerFailed { exit: exit.to_string() }));
        }
    };
    // The forking jailer exits once the pid is written: wait, so that it
    // is reaped now rather than left a zombie.
    if jailer.wait_timeout(timeout).await.is_none() {
        tracing::warn!(vm = %id, pid = jailer.pid(), "the jailer did not exit after forking");
    }
    let attached = crate::vmm::process::read_start_time(pid)
        .ok()
        .and_then(|start| crate::vmm::VmmProcess::attach(pid, start).ok().flatten());
    attached.ok_or_else(|| {
        err(JailError::JailerFailed {
            exit: format!("Firecracker (pid {pid}) exited at once"),
        })
    })
}

/// Creates `<base>/<exec>/<id>` (which must not exist: it would be another
/// VM's, or a leftover nobody owns) with the owner marker, and the chroot
/// in it.
fn make_jail_dir(jail: &VmJail, vms_dir: &Path) -> Result<(), JailError> {
    use std::os::unix::fs::DirBuilderExt;
    let jail_dir = jail.jail_dir();
    let io = |op, path: &Path| {
        let path = path.to_owned();
        move |source| JailError::Stage { op, path, source }
    };
    if let Some(exec_dir) = jail_dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(exec_dir)
            .map_err(io("create", exec_dir))?;
    }
    match std::fs::DirBuilder::new().mode(0o755).create(jail_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(JailError::JailExists {
                path: jail_dir.to_owned(),
            });
        }
        Err(e) => return Err(io("create", jail_dir)(e)),
    }
    let made = std::fs::write(
        jail_dir.join(layout::OWNER_FILE),
        vms_dir.as_os_str().as_encoded_bytes(),
    )
    .map_err(io("write", jail_dir))
    .and_then(|()| {
        crate::fsutil::create_private_dir(&jail.chroot).map_err(io("create", &jail.chroot))
    })
    .and_then(|()| {
        rustix::fs::chown(
            &jail.chroot,
            Some(rustix::fs::Uid::from_raw(jail.uid)),
            Some(rustix::fs::Gid::from_raw(jail.gid)),
        )
        .map_err(|e| io("chown", &jail.chroot)(e.into()))
    });
    if made.is_err() {
        let _ = std::fs::remove_dir_all(jail_dir);
    }
    made
}

/// The drive files a VMM with `spec` opens, as host paths, with their ids
/// and whether they are read-only: the spec's own for an unjailed VM; for
/// a jailed one, the files in its chroot.
pub(super) fn drive_files(
    spec: &ResolvedSpec,
    jail: Option<&VmJail>,
) -> Vec<(String, PathBuf, bool)> {
    let mut drives = Vec::new();
    let at = |id: &str, original: &Path| match jail {
        Some(jail) => jail.root().host_path(&drive_place(id)),
        None => original.to_owned(),
    };
    if let Some(rootfs) = &spec.rootfs {
        let id = crate::spec::ROOTFS_DRIVE_ID;
        drives.push((id.to_owned(), at(id, rootfs), spec.rootfs_read_only));
    }
    for drive in &spec.extra_drives {
        let path = at(&drive.id, &drive.path);
        drives.push((drive.id.clone(), path, drive.read_only));
    }
    drives
}

/// Where drive `id` is in a chroot, as Firecracker sees it.
pub(super) fn drive_place(id: &str) -> PathBuf {
    if id == crate::spec::ROOTFS_DRIVE_ID {
        PathBuf::from(layout::ROOTFS)
    } else {
        Path::new(layout::DRIVES).join(id)
    }
}

/// Puts the VM's files at their [`layout`] places in the chroot.
fn stage_files(
    jail: &VmJail,
    spec: &ResolvedSpec,
    drives_from: Option<&crate::jail::Chroot>,
    seccomp: &SeccompPolicy,
    log: bool,
    metrics: bool,
) -> Result<(), JailError> {
    let root = jail.root();
    let at = |inside: &str| root.host_path(Path::new(inside));
    let (uid, gid) = (jail.uid, jail.gid);
    let mut report = Vec::new();
    // A restore (it has a source to take drives from) loads the guest from
    // memory: its kernel and initrd are not needed, and may be gone.
    let restore = drives_from.is_some();
    if !restore {
        report.push((
            "kernel",
            stage::link_read_only(&spec.kernel, &at(layout::KERNEL), uid, gid)?,
        ));
    }
    if let Some(initrd) = spec.initrd.as_ref().filter(|_| !restore) {
        report.push((
            "initrd",
            stage::link_read_only(initrd, &at(layout::INITRD), uid, gid)?,
        ));
    }
    // A restore's writable drives: the source VM's copies, with what it
    // wrote, while its jail is there; else the originals.
    let source = |original: &Path, inside: &Path, read_only: bool| -> PathBuf {
        match drives_from {
            Some(from) if !read_only && from.host_path(inside).is_file() => from.host_path(inside),
            _ => original.to_owned(),
        }
    };
    if let Some(rootfs) = &spec.rootfs {
        let src = source(rootfs, Path::new(layout::ROOTFS), spec.rootfs_read_only);
        report.push((
            "rootfs",
            stage_drive(&src, &at(layout::ROOTFS), spec.rootfs_read_only, uid, gid)?,
        ));
    }
    if !spec.extra_drives.is_empty() {
        stage::create_owned_dir(&at(layout::DRIVES), uid, gid)?;
    }
    for drive in &spec.extra_drives {
        let inside = Path::new(layout::DRIVES).join(&drive.id);
        let src = source(&drive.path, &inside, drive.read_only);
        let dst = root.host_path(&inside);
        report.push(("drive", stage_drive(&src, &dst, drive.read_only, uid, gid)?));
    }
    // pmem devices are read-only: a link each (or a copy across file
    // systems), as read-only drives.
    if !spec.pmem.is_empty() {
        stage::create_owned_dir(&at(layout::PMEM), uid, gid)?;
    }
    for pmem in &spec.pmem {
        let dst = root.host_path(&Path::new(layout::PMEM).join(&pmem.id));
        report.push(("pmem", stage::link_read_only(&pmem.path, &dst, uid, gid)?));
    }
    if let SeccompPolicy::Filter(filter) = seccomp {
        stage::link_read_only(filter, &at(layout::SECCOMP), uid, gid)?;
    }
    if log {
        stage::create_owned_file(&at(layout::LOG), uid, gid)?;
    }
    if metrics {
        stage::create_owned_file(&at(layout::METRICS), uid, gid)?;
    }
    tracing::debug!(jail = %jail.jail_id, ?report, "staged the jail's files");
    Ok(())
}

/// A drive: shared when read-only, a private copy when writable.
pub(super) fn stage_drive(
    src: &Path,
    dst: &Path,
    read_only: bool,
    uid: u32,
    gid: u32,
) -> Result<Staged, JailError> {
    if read_only {
        stage::link_read_only(src, dst, uid, gid)
    } else {
        stage::copy_private(src, dst, uid, gid)
    }
}

/// Removes a jail that the record says is ours, after checking the jail
/// directory says so too (its owner marker names our state directory): a
/// stale or corrupt record must not remove another manager's jail.
pub(super) fn remove_owned(jail: &VmJail, vms_dir: &Path) -> Result<(), JailError> {
    // `<base>/<exec>/<id>/root`: the base is three levels up.
    let base = jail
        .chroot
        .ancestors()
        .nth(3)
        .map(Path::to_owned)
        .unwrap_or_default();
    let marker = jail.jail_dir().join(layout::OWNER_FILE);
    match std::fs::read(&marker) {
        Ok(owner) if owner == vms_dir.as_os_str().as_encoded_bytes() => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !jail.jail_dir().exists() => {
            // Gone already; the cgroups may not be.
            return crate::jail::cgroup::remove_dirs(&jail.cgroups);
        }
        _ => {
            return Err(JailError::Remove {
                path: jail.jail_dir().to_owned(),
                source: std::io::Error::other("the jail is not this manager's"),
            });
        }
    }
    stage::remove_jail(&base, jail)
}

/// Removes the jails under the configured chroot base that this state
/// directory made (their owner marker says so) and no VM record knows: a
/// create that crashed before its first record. Any process still rooted
/// in such a jail is killed first; its cgroups are found by name. The jails
/// of the VMs in `spared` (quarantined: their records cannot be read) are
/// left alone.
pub(super) async fn reap_orphans(shared: &Shared, known: &[PathBuf], spared: &[VmId]) {
    let Some(config) = &shared.config.jail else {
        return;
    };
    let Some(exec_name) = crate::jail::chroot_dir(Path::new("/"), &shared.firecracker, "x")
        .ok()
        .and_then(|c| {
            c.ancestors()
                .nth(2)
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
    else {
        return;
    };
    let ours = shared.vms_dir.as_os_str().as_encoded_bytes().to_vec();
    for jail_dir in stage::jail_dirs(&config.chroot_base, &exec_name) {
        let owner = std::fs::read(jail_dir.join(layout::OWNER_FILE)).unwrap_or_default();
        let is_spared = jail_dir.file_name().is_some_and(|name| {
            spared
                .iter()
                .any(|id| name == std::ffi::OsStr::new(&id.firecracker_id()))
        });
        if owner != ours || known.contains(&jail_dir) || is_spared {
            continue;
        }
        let chroot = jail_dir.join("root");
        for pid in crate::vmm::process::find_rooted_in(&chroot) {
            if let Some(process) = crate::vmm::process::read_start_time(pid)
                .ok()
                .and_then(|start| crate::vmm::VmmProcess::attach(pid, start).ok().flatten())
            {
                let _ = process.signal(rustix::process::Signal::KILL);
                let _ = process
                    .wait_timeout(std::time::Duration::from_secs(5))
                    .await;
            }
        }
        let jail_id = jail_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cgroups = CgroupMounts::read()
            .map(|mounts| mounts.existing_dirs(&config.parent_cgroup, &jail_id))
            .unwrap_or_default();
        let orphan = VmJail {
            jail_id,
            chroot,
            uid: 0,
            gid: 0,
            cgroups,
        };
        tracing::info!(jail = ?jail_dir, "reaping a jail no VM owns");
        if let Err(e) = stage::remove_jail(&config.chroot_base, &orphan) {
            tracing::warn!(jail = ?jail_dir, error = %e, "cannot reap an orphaned jail");
        }
    }
}

/// Makes the (empty) directory a jailed VM writes a snapshot into, inside
/// its chroot and owned by it; returns its host path.
pub(super) async fn snapshot_staging(jail: &VmJail) -> Result<PathBuf, JailError> {
    let dir = jail.root().host_path(Path::new(layout::SNAPSHOT));
    let (owned, uid, gid) = (dir.clone(), jail.uid, jail.gid);
    tokio::task::spawn_blocking(move || {
        // A crashed snapshot may have left one behind.
        match std::fs::remove_dir_all(&owned) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(JailError::Stage {
                    op: "clear",
                    path: owned,
                    source: e,
                });
            }
            _ => {}
        }
        stage::create_owned_dir(&owned, uid, gid)
    })
    .await
    .expect("staging does not panic")?;
    Ok(dir)
}

/// Moves a snapshot a jailed VM wrote into `staging` into `bundle`, owned
/// by us and private again; then removes `staging`.
pub(super) async fn collect_snapshot(staging: &Path, bundle: &Path) -> Result<(), JailError> {
    let (staging, bundle) = (staging.to_owned(), bundle.to_owned());
    tokio::task::spawn_blocking(move || {
        for name in [crate::snapshot::VMSTATE_FILE, crate::snapshot::MEMORY_FILE] {
            stage::move_out(&staging.join(name), &bundle.join(name))?;
        }
        std::fs::remove_dir_all(&staging).map_err(|source| JailError::Remove {
            path: staging.clone(),
            source,
        })
    })
    .await
    .expect("collecting does not panic")
}

/// Stages a bundle's vmstate (and, with `memory`, its memory file) in a
/// jailed VM's chroot for loading; returns their paths as Firecracker sees
/// them. The bundle's files are private to us, so these are copies (a
/// link when the VM's uid could read them): restore jailed VMs with a page
/// server to keep guest memory from being copied.
pub(super) async fn stage_restore(
    jail: &VmJail,
    bundle: &Path,
    memory: bool,
) -> Result<(PathBuf, Option<PathBuf>), JailError> {
    let (jail, bundle) = (jail.clone(), bundle.to_owned());
    tokio::task::spawn_blocking(move || {
        let root = jail.root();
        let dir = Path::new(layout::RESTORE);
        stage::create_owned_dir(&root.host_path(dir), jail.uid, jail.gid)?;
        let stage_one = |name: &str| -> Result<PathBuf, JailError> {
            let inside = dir.join(name);
            stage::link_read_only(
                &bundle.join(name),
                &root.host_path(&inside),
                jail.uid,
                jail.gid,
            )?;
            Ok(inside)
        };
        let vmstate = stage_one(crate::snapshot::VMSTATE_FILE)?;
        let memory = memory
            .then(|| stage_one(crate::snapshot::MEMORY_FILE))
            .transpose()?;
        Ok((vmstate, memory))
    })
    .await
    .expect("staging does not panic")
}

/// Takes a stopped VM's uid back and removes its cgroups (the chroot stays
/// until the VM is destroyed: its log is in it).
pub(super) fn release_on_stop(
    uids: &std::sync::Mutex<crate::jail::uid::UidAllocator>,
    id: &VmId,
    jail: &VmJail,
) {
    uids.lock().expect("uid lock").release(id);
    if let Err(e) = crate::jail::cgroup::remove_dirs(&jail.cgroups) {
        tracing::warn!(vm = %id, error = %e, "cannot remove the VM's cgroups");
    }
}

/// Removes a VM's jail for good: cgroups and directory.
pub(super) async fn remove(shared: &Shared, id: &VmId, jail: &VmJail) -> Result<(), VmError> {
    shared.uids.lock().expect("uid lock").release(id);
    let owned = jail.clone();
    let vms_dir = shared.vms_dir.clone();
    tokio::task::spawn_blocking(move || remove_owned(&owned, &vms_dir))
        .await
        .expect("removing a jail does not panic")
        .map_err(|source| VmError::Jail {
            id: id.clone(),
            source: Box::new(source),
        })
}
