//! Durable per-VM records: what a restarted manager needs to find a VM's
//! process and clean up everything it owns.
//!
//! A record is JSON, written atomically: a temporary file in the same
//! directory, fsync, rename over the old one, fsync of the directory. A
//! crash at any point leaves either the old record or the new one, never a
//! torn one.
//!
//! The fsyncs only matter if the *host* goes down, which also ends every
//! VMM; a crash of the manager process alone loses nothing that reached the
//! page cache. So writes whose content a restarted manager re-derives from
//! the live VMM anyway (running ↔ paused) or that precede the committing
//! write skip them ([`Durability::Cached`]); writes that a dead VM's cleanup
//! depends on are [`Durability::Synced`].
//!
//! The file has types of its own (the private `file` module), converted
//! to and from [`VmRecord`] on each write and read, so the library's API
//! types can change without changing what is on disk. A file of an older
//! format is upgraded as it is read; one of a newer format is refused.

mod file;

use std::path::{Path, PathBuf};

use crate::VmId;
use crate::spec::ResolvedSpec;
use crate::state::VmState;
use crate::vmm::ConsoleMode;

/// The record format this build writes (and the newest it reads).
pub const RECORD_FORMAT: u32 = file::CURRENT;
/// The record's file name inside a VM's directory.
pub const RECORD_FILE: &str = "record.json";

/// Everything firehost knows about one VM, as kept on disk (through the
/// file's own types; see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRecord {
    /// The VM's key: the name it was created under, which its directory,
    /// jail, namespace, sockets and every other host resource go by for
    /// its whole life (a running Firecracker keeps the paths it was
    /// given). A new VM's key is its name, unless a VM renamed away from
    /// that name still holds it.
    pub id: VmId,
    /// The VM's name: what callers know it by. Its key until a
    /// [`rename`](crate::manager::Manager::rename).
    pub name: VmId,
    /// False until the create transaction has committed: a restarted
    /// manager reaps uncommitted VMs entirely.
    pub committed: bool,
    /// The resolved spec the VM was created from.
    pub spec: ResolvedSpec,
    /// Lifecycle state at the last change.
    pub state: VmState,
    /// The VMM's pid, once spawned.
    pub pid: Option<i32>,
    /// The VMM's start time (`/proc/<pid>/stat` field 22), to tell it from
    /// a later process that got the same pid.
    pub start_time: Option<u64>,
    /// The API socket.
    pub api_socket: PathBuf,
    /// Where the console goes.
    pub console: ConsoleMode,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The snapshot the VM was restored from, if it was.
    pub restored_from: Option<crate::id::SnapshotName>,
    /// The VM's latest snapshot (or the one it was restored from): the
    /// parent of its next diff snapshot.
    pub last_snapshot: Option<crate::id::SnapshotName>,
    /// The VM's memory is served by a page server. An in-process one ends
    /// with the manager that restored the VM, so a manager that re-opens
    /// the state directory kills such a VM rather than leave it hanging on
    /// its next missing page; one in a helper process
    /// ([`page_server_helper`](Self::page_server_helper)) keeps the VM
    /// alive as long as the helper lives (or once it has detached).
    pub page_server_attached: bool,
    /// The helper process serving the VM's memory, if it runs in one.
    pub page_server_helper: Option<HelperProcess>,
    /// The VM's place on the default network: address, MAC, TAP, ports.
    pub net: Option<crate::net::host::VmNet>,
    /// The VM's vsock device and its agent's token.
    pub vsock: Option<VmVsock>,
    /// The VM's jail, if it runs in one.
    pub jail: Option<crate::jail::VmJail>,
    /// A snapshot under way: written (durably) before the VM is paused for
    /// it and cleared after, so that a manager that finds it set knows the
    /// one that took the snapshot died midway, and recovers (see
    /// [`PendingSnapshot`]).
    pub pending_snapshot: Option<PendingSnapshot>,
    /// A stop was asked for: a VMM found gone afterwards was stopped, not
    /// crashed.
    pub stop_requested: bool,
    /// The VM's own copies of writable drives (a clone's), and how each was
    /// made.
    pub own_drives: Vec<OwnDrive>,
    /// The warm pool the VM was made for, until a claim takes it (in the
    /// same record write as its new name).
    pub pool: Option<crate::id::PoolName>,
}

/// A restored VM's own copy of one writable drive.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OwnDrive {
    /// The drive id (`rootfs` for the root filesystem).
    pub drive: String,
    /// The copy.
    pub path: PathBuf,
    /// How it was made.
    pub copy: CopyMethod,
}

/// How a drive was copied for a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyMethod {
    /// A reflink: the data is shared until written, whatever the size.
    Reflink,
    /// The data extents were copied (the file system has no reflinks): it
    /// cost what the image holds.
    Extents,
}

/// A snapshot that a manager started and may not have finished.
///
/// A manager that finds this in a live VM's record waits until the VMM
/// answers again (Firecracker's API is busy while it writes the memory
/// file), resumes the guest if the snapshot paused it, and keeps the
/// bundle only if it was sealed (its manifest written last); an unsealed
/// bundle is removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSnapshot {
    /// The bundle being written.
    pub name: crate::id::SnapshotName,
    /// The VM was running and the snapshot paused it: recovery resumes it.
    pub paused_vm: bool,
}

impl VmRecord {
    /// The path Firecracker sees for `host`: the same path, or for a
    /// jailed VM its place inside the chroot (`host` must be inside it).
    pub fn vmm_path(&self, host: &Path) -> PathBuf {
        match &self.jail {
            Some(jail) => jail
                .root()
                .jail_path(host)
                .unwrap_or_else(|| host.to_owned()),
            None => host.to_owned(),
        }
    }

    /// The host path of `inside`, a path as Firecracker sees it.
    pub fn host_path(&self, inside: &Path) -> PathBuf {
        match &self.jail {
            Some(jail) => jail.root().host_path(inside),
            None => inside.to_owned(),
        }
    }
}

/// A page-server helper process, as recorded: with the start time, the pid
/// names that process and no later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelperProcess {
    /// The process id.
    pub pid: i32,
    /// Its start time (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

/// A VM's vsock device as recorded (the record file is private: the token
/// is in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmVsock {
    /// The device's unix socket.
    pub uds_path: PathBuf,
    /// The guest CID.
    pub guest_cid: u32,
    /// The token the guest's agent checks (printed as `***` by `Debug`).
    pub token: firehost_proto::Token,
    /// A token the agent is being asked to take instead, recorded before
    /// the request: after a crash, the agent demands one of the two (see
    /// `manager::rekey`).
    pub next_token: Option<firehost_proto::Token>,
}

pub use crate::fsutil::Durability;

/// A record could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// File-system failure.
    #[error("cannot {op} record {path:?}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid record.
    #[error("record {path:?} is malformed")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The file parses but holds a value firehost refuses (an id, name
    /// or address that is not valid).
    #[error("record {path:?} is invalid: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The record was written by a newer firehost.
    #[error("record {path:?} has format {found}; this build reads up to {RECORD_FORMAT}")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// Its format number.
        found: u32,
    },
}

impl VmRecord {
    /// Writes the record into `dir` atomically and durably (blocking).
    pub fn write(&self, dir: &Path) -> Result<(), RecordError> {
        self.write_with(dir, Durability::Synced)
    }

    /// Writes the record into `dir` atomically, as durably as asked
    /// (blocking).
    pub fn write_with(&self, dir: &Path, durability: Durability) -> Result<(), RecordError> {
        let path = dir.join(RECORD_FILE);
        let bytes =
            serde_json::to_vec_pretty(&file::RecordFile::from_record(self)).map_err(|source| {
                RecordError::Malformed {
                    path: path.clone(),
                    source,
                }
            })?;
        write_atomic(&path, &bytes, durability)
    }

    /// Reads the record in `dir` (blocking).
    pub fn read(dir: &Path) -> Result<VmRecord, RecordError> {
        let path = dir.join(RECORD_FILE);
        let io = |source| RecordError::Io {
            op: "read",
            path: path.clone(),
            source,
        };
        // Records are a few KiB: read into a buffer of that size rather
        // than asking the file its size first (one system call fewer per VM
        // when a manager loads a thousand).
        let mut bytes = Vec::with_capacity(8 << 10);
        std::fs::File::open(&path)
            .and_then(|file| {
                std::io::Read::read_to_end(&mut std::io::Read::take(file, u64::MAX), &mut bytes)
            })
            .map_err(io)?;
        let fields = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Object(fields)) => fields,
            Ok(_) => {
                return Err(RecordError::Invalid {
                    path,
                    why: "it is not a JSON object".into(),
                });
            }
            Err(source) => return Err(RecordError::Malformed { path, source }),
        };
        let fields = current(fields).map_err(|found| RecordError::UnknownFormat {
            path: path.clone(),
            found,
        })?;
        let record: file::RecordFile = serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|source| RecordError::Malformed {
                path: path.clone(),
                source,
            })?;
        record
            .into_record()
            .map_err(|why| RecordError::Invalid { path, why })
    }
}

/// `fields`, a record file's top level, in the current format; or the
/// format number that is too new to read.
fn current(
    mut fields: serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Map<String, serde_json::Value>, u32> {
    // A record without a readable format number is left to the parse to
    // refuse, as malformed.
    let format = fields
        .get("format")
        .and_then(serde_json::Value::as_u64)
        .map(|f| u32::try_from(f).unwrap_or(u32::MAX));
    match format {
        Some(format) if format > RECORD_FORMAT => Err(format),
        Some(format) => {
            file::upgrade(&mut fields, format);
            Ok(fields)
        }
        None => Ok(fields),
    }
}

/// What can still be learnt from a record that cannot be read as a
/// [`VmRecord`] (corrupt, or from a newer format): each field is taken only
/// if it is present and well-formed on its own. A manager uses it to leave
/// the VM's process and network alone, and to stop them on an explicit
/// removal; it never acts on anything else in such a record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Salvaged {
    /// The VMM's pid and start time, if both were readable.
    pub process: Option<(i32, u64)>,
    /// The VM's network attachment.
    pub net: Option<crate::net::host::VmNet>,
    /// The VM's jail.
    pub jail: Option<crate::jail::VmJail>,
}

impl Salvaged {
    /// Picks the fields out of the record in `dir`, if it is JSON at all.
    /// A record of an older format is upgraded first; one of a newer format
    /// is read as if it were current (its fields are only ever taken when
    /// they parse).
    pub fn read(dir: &Path) -> Salvaged {
        let Ok(bytes) = std::fs::read(dir.join(RECORD_FILE)) else {
            return Salvaged::default();
        };
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(&bytes) else {
            return Salvaged::default();
        };
        let fields = current(fields.clone()).unwrap_or(fields);
        let typed = |name: &str| fields.get(name).filter(|v| !v.is_null()).cloned();
        let process = typed("vmm")
            .and_then(|v| serde_json::from_value::<file::ProcessFile>(v).ok())
            .map(|p| (p.pid, p.start_time));
        Salvaged {
            process: process.filter(|(pid, _)| *pid > 0),
            net: typed("net")
                .and_then(|v| serde_json::from_value::<file::NetFile>(v).ok())
                .and_then(|n| n.into_net().ok()),
            jail: typed("jail")
                .and_then(|v| serde_json::from_value::<file::JailFile>(v).ok())
                .map(file::JailFile::into_jail),
        }
    }
}

/// [`fsutil::write_atomic`](crate::fsutil::write_atomic), with a record's
/// error.
pub fn write_atomic(path: &Path, bytes: &[u8], durability: Durability) -> Result<(), RecordError> {
    crate::fsutil::write_atomic(path, bytes, durability).map_err(|e| RecordError::Io {
        op: e.op,
        path: e.path,
        source: e.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ExitReason;

    pub(crate) fn sample(id: &str) -> VmRecord {
        VmRecord {
            name: VmId::new(id).unwrap(),
            id: VmId::new(id).unwrap(),
            committed: true,
            spec: ResolvedSpec {
                track_dirty_pages: false,
                ..ResolvedSpec::for_tests()
            },
            state: VmState::Stopped {
                exit: ExitReason::Code(0),
            },
            pid: Some(42),
            start_time: Some(7),
            api_socket: "/x/api.sock".into(),
            console: ConsoleMode::Ring,
            created_at_ms: 1,
            restored_from: None,
            last_snapshot: None,
            page_server_attached: false,
            page_server_helper: None,
            jail: None,
            pending_snapshot: None,
            stop_requested: false,
            own_drives: Vec::new(),
            pool: None,
            vsock: Some(VmVsock {
                uds_path: "/x/vsock.sock".into(),
                guest_cid: 3,
                token: firehost_proto::Token("t".into()),
                next_token: None,
            }),
            net: Some(crate::net::host::VmNet {
                ip: "172.30.0.2".parse().unwrap(),
                prefix_len: 16,
                gateway: "172.30.0.1".parse().unwrap(),
                mac: crate::net::ipam::MacAddr::new([6, 1, 2, 3, 4, 5]),
                tap: crate::net::IfName::new("fh0123456789abc").unwrap(),
                iface_id: "eth0".into(),
                dns: vec!["1.1.1.1".parse().unwrap()],
                published: vec!["8080:80".parse().unwrap()],
                peer_groups: vec!["g".parse().unwrap()],
                netns: None,
                guest: None,
                egress: Default::default(),
            }),
        }
    }

    /// A record with every optional part set, as the format fixtures hold.
    pub(crate) fn rich() -> VmRecord {
        use crate::spec::{DriveSpec, NicSpec};
        let mut record = sample("rich-1");
        record.spec = ResolvedSpec {
            initrd: Some("/images/initrd".into()),
            rootfs_read_only: true,
            rootfs_shared: false,
            vcpus: 2,
            mem_mib: 256,
            smt: true,
            extra_drives: vec![DriveSpec {
                id: "data".into(),
                path: "/images/data.ext4".into(),
                read_only: false,
                shared: false,
                io: Default::default(),
            }],
            net: Some(crate::net::host::NetSpec {
                ip: Some("172.30.0.9".parse().unwrap()),
                mac: Some(crate::net::ipam::MacAddr::new([6, 0, 0, 0, 0, 9])),
                publish: vec!["8080:80".parse().unwrap(), "5353:53/udp".parse().unwrap()],
                peer_groups: vec!["web".parse().unwrap()],
                kernel_ip_arg: false,
                netns: true,
                rx_limit: Default::default(),
                tx_limit: Default::default(),
                egress: Default::default(),
            }),
            extra_nics: vec![NicSpec {
                iface_id: "eth1".into(),
                tap: crate::net::IfName::new("mytap1").unwrap(),
                guest_mac: Some(crate::net::ipam::MacAddr::new([6, 0, 0, 0, 1, 1])),
                rx_limit: Default::default(),
                tx_limit: Default::default(),
            }],
            vsock: Some(crate::vsock::VsockSpec { guest_cid: 7 }),
            mmds: Some(crate::mmds::MmdsSpec {
                version: crate::mmds::MmdsVersion::V1,
                data: serde_json::json!({"tenant": "t-1", "n": [1, 2]}),
            }),
            jail: Some(crate::jail::JailSpec {
                uid: Some(10_007),
                gid: Some(10_007),
                cpus: Some("0-1".into()),
                cpu_quota_percent: Some(150),
                cpu_weight: Some(200),
                memory_max_mib: Some(512),
                pids_max: Some(64),
                fsize_max_bytes: Some(1 << 30),
            }),
            ..record.spec
        };
        record.state = VmState::Failed {
            exit: ExitReason::Signal(9),
            console_tail: vec!["last line".into(), "".into()],
        };
        record.console = ConsoleMode::RingAndFile("/x/console.log".into());
        record.restored_from = Some("template".parse().unwrap());
        record.last_snapshot = Some("template".parse().unwrap());
        record.page_server_attached = true;
        record.page_server_helper = Some(HelperProcess {
            pid: 77,
            start_time: 88,
        });
        record.jail = Some(crate::jail::VmJail {
            jail_id: "rich-1".into(),
            chroot: "/srv/jailer/firecracker/rich-1/root".into(),
            uid: 10_007,
            gid: 10_007,
            cgroups: vec!["/sys/fs/cgroup/firehost/rich-1".into()],
        });
        record.pending_snapshot = Some(PendingSnapshot {
            name: "snap".parse().unwrap(),
            paused_vm: true,
        });
        record.stop_requested = true;
        if let Some(net) = &mut record.net {
            net.netns = Some(crate::net::netns::VmNetns {
                path: "/run/firehost/netns/rich-1".into(),
                host_port: crate::net::IfName::new("fhv0123456789ab").unwrap(),
            });
        }
        record
    }

    /// The record as its file holds it.
    fn json(record: &VmRecord) -> serde_json::Value {
        serde_json::to_value(file::RecordFile::from_record(record)).unwrap()
    }

    fn write_json(dir: &Path, value: &serde_json::Value) {
        std::fs::write(dir.join(RECORD_FILE), serde_json::to_vec(value).unwrap()).unwrap();
    }

    #[test]
    fn every_field_round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = rich();
        // Added in format 2, so not in the format-1 fixture.
        record.name = VmId::new("renamed-1").unwrap();
        record.pool = Some("warm".parse().unwrap());
        if let Some(net) = &mut record.net {
            net.guest = Some(crate::net::host::GuestAddress {
                ip: "172.30.0.2".parse().unwrap(),
                mac: crate::net::ipam::MacAddr::new([6, 0, 0, 0, 0, 2]),
            });
        }
        record.own_drives = vec![
            OwnDrive {
                drive: "rootfs".into(),
                path: "/x/drives/rootfs".into(),
                copy: CopyMethod::Reflink,
            },
            OwnDrive {
                drive: "data".into(),
                path: "/x/drives/data".into(),
                copy: CopyMethod::Extents,
            },
        ];
        record.write(dir.path()).unwrap();
        assert_eq!(VmRecord::read(dir.path()).unwrap(), record);
    }

    /// `testdata/format-1.json` was written by firehost 0.1 (format 1,
    /// the API types serialised as they were) from the record `rich()`
    /// builds.
    #[test]
    fn a_format_1_record_is_upgraded_as_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(RECORD_FILE),
            include_bytes!("testdata/format-1.json"),
        )
        .unwrap();
        assert_eq!(VmRecord::read(dir.path()).unwrap(), rich());
        // Rewritten, it is in the current format: the process as one field.
        rich().write(dir.path()).unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(RECORD_FILE)).unwrap()).unwrap();
        assert_eq!(written["format"], RECORD_FORMAT);
        assert_eq!(
            written["vmm"],
            serde_json::json!({"pid": 42, "start_time": 7})
        );
        assert!(written.get("pid").is_none(), "{written}");
    }

    #[test]
    fn a_format_1_pid_without_a_start_time_names_no_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut value: serde_json::Value =
            serde_json::from_slice(include_bytes!("testdata/format-1.json")).unwrap();
        value["start_time"] = serde_json::Value::Null;
        write_json(dir.path(), &value);
        let record = VmRecord::read(dir.path()).unwrap();
        assert_eq!((record.pid, record.start_time), (None, None));
    }

    /// The file's layout is its own: this is what the current format looks
    /// like, so a change to an API type that would change it fails here.
    #[test]
    fn the_current_format_is_pinned() {
        let mut expected: serde_json::Value =
            serde_json::from_slice(include_bytes!("testdata/format-1.json")).unwrap();
        let fields = expected.as_object_mut().unwrap();
        file::upgrade(fields, 1);
        assert_eq!(json(&rich()), expected);
    }

    #[test]
    fn device_settings_round_trip_through_the_file() {
        use crate::spec::{DriveCache, DriveIo, EntropySpec, IoEngine};
        use crate::vocab::{Bucket, RateLimit};
        let limit = RateLimit {
            bandwidth: Some(Bucket {
                one_time_burst: Some(1 << 20),
                ..Bucket::per_second(10 << 20)
            }),
            ops: Some(Bucket::per_second(500)),
        };
        let mut record = rich();
        record.spec.rootfs_io = DriveIo {
            cache: DriveCache::Writeback,
            engine: IoEngine::Async,
            limit,
        };
        record.spec.rootfs_partuuid = Some("0eadbeef-01".into());
        record.spec.extra_drives[0].io.limit = limit;
        if let Some(net) = &mut record.spec.net {
            net.rx_limit = limit;
        }
        record.spec.extra_nics[0].tx_limit = limit;
        record.spec.entropy = Some(EntropySpec { limit });
        record.spec.log = Some(crate::spec::LogSpec {
            level: firehost_api::LogLevel::Debug,
            module: Some("firecracker::api_server".into()),
            show_level: true,
            show_origin: true,
        });
        record.spec.balloon = Some(crate::spec::BalloonSpec {
            amount_mib: 64,
            deflate_on_oom: true,
            stats_interval_s: 3,
            free_page_hinting: true,
            free_page_reporting: true,
        });
        let dir = tempfile::tempdir().unwrap();
        record.write(dir.path()).unwrap();
        assert_eq!(VmRecord::read(dir.path()).unwrap(), record);
    }

    #[test]
    fn a_hand_edited_limit_firecracker_would_ignore_is_refused() {
        let mut record = rich();
        record.spec.entropy = Some(crate::spec::EntropySpec::default());
        let dir = tempfile::tempdir().unwrap();
        record.write(dir.path()).unwrap();
        let path = dir.path().join(RECORD_FILE);
        let mut file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        file["spec"]["entropy"]["limit"] =
            serde_json::json!({"ops": {"size": 0, "refill_time_ms": 1000}});
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        assert!(VmRecord::read(dir.path()).is_err());
    }

    #[test]
    fn egress_policies_round_trip_and_a_hand_edited_shadowed_rule_is_refused() {
        use crate::vocab::{EgressAction, EgressPolicy, EgressRule};
        let policy = EgressPolicy::new(
            EgressAction::Deny,
            vec![
                EgressRule::allow("10.0.0.0/8:8000-8100/udp".parse().unwrap()),
                EgressRule::deny_domain("evil.example.com".parse().unwrap()),
                EgressRule::allow_domain("*.example.com".parse().unwrap()),
            ],
        )
        .unwrap();
        let mut record = rich();
        if let Some(net) = &mut record.spec.net {
            net.egress = policy.clone();
        }
        if let Some(net) = &mut record.net {
            net.egress = policy;
        }
        let dir = tempfile::tempdir().unwrap();
        record.write(dir.path()).unwrap();
        assert_eq!(VmRecord::read(dir.path()).unwrap(), record);

        let path = dir.path().join(RECORD_FILE);
        let mut file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(file["net"]["egress"]["default"], "deny");
        file["net"]["egress"]["rules"][0] =
            serde_json::json!({"action": "allow", "net": "0.0.0.0/0"});
        file["net"]["egress"]["rules"][1] = serde_json::json!({"action": "deny", "net": "1.2.3.4"});
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        let err = VmRecord::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("can never match"), "{err}");
    }

    #[test]
    fn record_round_trips_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        let record = sample("vm1");
        record.write(dir.path()).unwrap();
        assert_eq!(VmRecord::read(dir.path()).unwrap(), record);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [RECORD_FILE]);
    }

    #[test]
    fn record_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        sample("vm1").write(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(RECORD_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn rewrite_replaces_the_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        sample("vm1").write(dir.path()).unwrap();
        let mut second = sample("vm1");
        second.pid = None;
        second.write(dir.path()).unwrap();
        assert_eq!(VmRecord::read(dir.path()).unwrap().pid, None);
    }

    #[test]
    fn malformed_and_future_records_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(RECORD_FILE), b"{not json").unwrap();
        assert!(matches!(
            VmRecord::read(dir.path()),
            Err(RecordError::Malformed { .. })
        ));
        std::fs::write(dir.path().join(RECORD_FILE), br#"{"format": 99}"#).unwrap();
        assert!(matches!(
            VmRecord::read(dir.path()),
            Err(RecordError::UnknownFormat { found: 99, .. })
        ));
    }

    #[test]
    fn fields_added_within_the_same_format_are_tolerated() {
        let dir = tempfile::tempdir().unwrap();
        let mut value = json(&sample("vm1"));
        value["added_by_a_newer_firehost"] = serde_json::json!({"x": [1, 2]});
        write_json(dir.path(), &value);
        assert_eq!(VmRecord::read(dir.path()).unwrap(), sample("vm1"));
    }

    #[test]
    fn salvage_takes_what_is_well_formed_from_an_unreadable_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut value = json(&sample("vm1"));
        value["format"] = 99.into();
        value["spec"] = "changed beyond recognition".into();
        write_json(dir.path(), &value);
        assert!(VmRecord::read(dir.path()).is_err());
        let salvaged = Salvaged::read(dir.path());
        assert_eq!(salvaged.process, Some((42, 7)));
        assert_eq!(salvaged.net, sample("vm1").net);
        assert_eq!(salvaged.jail, None);

        // A pid without a start time names no process for certain.
        value["vmm"]["start_time"] = serde_json::Value::Null;
        write_json(dir.path(), &value);
        assert_eq!(Salvaged::read(dir.path()).process, None);

        // A damaged format-1 record is upgraded before its fields are
        // picked.
        let mut old: serde_json::Value =
            serde_json::from_slice(include_bytes!("testdata/format-1.json")).unwrap();
        old["spec"] = "changed beyond recognition".into();
        write_json(dir.path(), &old);
        let salvaged = Salvaged::read(dir.path());
        assert_eq!(salvaged.process, Some((42, 7)));
        assert_eq!(salvaged.net, rich().net);
        assert_eq!(salvaged.jail, rich().jail);

        for garbage in [&b"{not json"[..], b"[1,2]", b""] {
            std::fs::write(dir.path().join(RECORD_FILE), garbage).unwrap();
            assert_eq!(Salvaged::read(dir.path()), Salvaged::default());
        }
    }

    #[test]
    fn tampered_id_in_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut value = json(&sample("vm1"));
        value["id"] = "../../etc".into();
        write_json(dir.path(), &value);
        assert!(matches!(
            VmRecord::read(dir.path()),
            Err(RecordError::Invalid { .. })
        ));
        // So is any other value the API types refuse.
        let mut value = json(&rich());
        value["net"]["mac"] = "not-a-mac".into();
        write_json(dir.path(), &value);
        let err = VmRecord::read(dir.path()).unwrap_err();
        assert!(err.to_string().contains("invalid"), "{err}");
    }
}
