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

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::VmId;
use crate::spec::ResolvedSpec;
use crate::state::VmState;
use crate::vmm::ConsoleMode;

/// The record format this build writes.
pub const RECORD_FORMAT: u32 = 1;
/// The record's file name inside a VM's directory.
pub const RECORD_FILE: &str = "record.json";

/// Everything firehost knows about one VM, as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// Format version, for upgrades.
    pub format: u32,
    /// The VM's id.
    pub id: VmId,
    /// False until the create transaction has committed: a restarted
    /// manager reaps uncommitted VMs entirely.
    pub committed: bool,
    /// The resolved spec the VM was created from.
    pub spec: ResolvedSpec,
    /// Lifecycle state at the last change.
    #[serde(flatten)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<crate::id::SnapshotName>,
    /// The VM's latest snapshot (or the one it was restored from): the
    /// parent of its next diff snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot: Option<crate::id::SnapshotName>,
    /// The VM's memory is served by a page server. An in-process one ends
    /// with the manager that restored the VM, so a manager that re-opens
    /// the state directory kills such a VM rather than leave it hanging on
    /// its next missing page; one in a helper process
    /// ([`page_server_helper`](Self::page_server_helper)) keeps the VM
    /// alive as long as the helper lives (or once it has detached).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub page_server_attached: bool,
    /// The helper process serving the VM's memory, if it runs in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_server_helper: Option<HelperProcess>,
    /// The VM's place on the default network: address, MAC, TAP, ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<crate::net::host::VmNet>,
    /// The VM's vsock device and its agent's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VmVsock>,
    /// The VM's jail, if it runs in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<crate::jail::VmJail>,
    /// A snapshot under way: written (durably) before the VM is paused for
    /// it and cleared after, so that a manager that finds it set knows the
    /// one that took the snapshot died midway, and recovers (see
    /// [`PendingSnapshot`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_snapshot: Option<PendingSnapshot>,
    /// A stop was asked for: a VMM found gone afterwards was stopped, not
    /// crashed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop_requested: bool,
}

/// A snapshot that a manager started and may not have finished.
///
/// A manager that finds this in a live VM's record waits until the VMM
/// answers again (Firecracker's API is busy while it writes the memory
/// file), resumes the guest if the snapshot paused it, and keeps the
/// bundle only if it was sealed (its manifest written last); an unsealed
/// bundle is removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperProcess {
    /// The process id.
    pub pid: i32,
    /// Its start time (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

/// A VM's vsock device as recorded (the record file is private: the token
/// is in it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmVsock {
    /// The device's unix socket.
    pub uds_path: PathBuf,
    /// The guest CID.
    pub guest_cid: u32,
    /// The token the guest's agent checks (printed as `***` by `Debug`).
    pub token: firehost_proto::Token,
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
        let bytes = serde_json::to_vec_pretty(self).expect("records always serialise");
        write_atomic(&dir.join(RECORD_FILE), &bytes, durability)
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
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        // One parse in the common case; the format alone is looked at only
        // to tell a newer record from a damaged one.
        let newer = |format: u32| format > RECORD_FORMAT;
        match serde_json::from_slice::<VmRecord>(&bytes) {
            Ok(record) if newer(record.format) => Err(RecordError::UnknownFormat {
                path,
                found: record.format,
            }),
            Ok(record) => Ok(record),
            Err(source) => match serde_json::from_slice::<Format>(&bytes) {
                Ok(f) if newer(f.format) => Err(RecordError::UnknownFormat {
                    path,
                    found: f.format,
                }),
                _ => Err(RecordError::Malformed { path, source }),
            },
        }
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
    pub fn read(dir: &Path) -> Salvaged {
        let Ok(bytes) = std::fs::read(dir.join(RECORD_FILE)) else {
            return Salvaged::default();
        };
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(&bytes) else {
            return Salvaged::default();
        };
        let field = |name: &str| fields.get(name).cloned();
        let typed = |name: &str| field(name).filter(|v| !v.is_null());
        let pid = typed("pid").and_then(|v| serde_json::from_value::<i32>(v).ok());
        let start = typed("start_time").and_then(|v| serde_json::from_value::<u64>(v).ok());
        Salvaged {
            process: pid.zip(start).filter(|(pid, _)| *pid > 0),
            net: typed("net").and_then(|v| serde_json::from_value(v).ok()),
            jail: typed("jail").and_then(|v| serde_json::from_value(v).ok()),
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
            format: RECORD_FORMAT,
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
            vsock: Some(VmVsock {
                uds_path: "/x/vsock.sock".into(),
                guest_cid: 3,
                token: firehost_proto::Token("t".into()),
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
            }),
        }
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
        let mut value = serde_json::to_value(sample("vm1")).unwrap();
        value["added_by_a_newer_firehost"] = serde_json::json!({"x": [1, 2]});
        std::fs::write(
            dir.path().join(RECORD_FILE),
            serde_json::to_vec(&value).unwrap(),
        )
        .unwrap();
        assert_eq!(VmRecord::read(dir.path()).unwrap(), sample("vm1"));
    }

    #[test]
    fn salvage_takes_what_is_well_formed_from_an_unreadable_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut value = serde_json::to_value(sample("vm1")).unwrap();
        value["format"] = 99.into();
        value["spec"] = "changed beyond recognition".into();
        std::fs::write(
            dir.path().join(RECORD_FILE),
            serde_json::to_vec(&value).unwrap(),
        )
        .unwrap();
        assert!(VmRecord::read(dir.path()).is_err());
        let salvaged = Salvaged::read(dir.path());
        assert_eq!(salvaged.process, Some((42, 7)));
        assert_eq!(salvaged.net, sample("vm1").net);
        assert_eq!(salvaged.jail, None);

        // A pid without a start time names no process for certain.
        value["start_time"] = serde_json::Value::Null;
        std::fs::write(
            dir.path().join(RECORD_FILE),
            serde_json::to_vec(&value).unwrap(),
        )
        .unwrap();
        assert_eq!(Salvaged::read(dir.path()).process, None);

        for garbage in [&b"{not json"[..], b"[1,2]", b""] {
            std::fs::write(dir.path().join(RECORD_FILE), garbage).unwrap();
            assert_eq!(Salvaged::read(dir.path()), Salvaged::default());
        }
    }

    #[test]
    fn tampered_id_in_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let json = serde_json::to_string(&sample("vm1"))
            .unwrap()
            .replace("\"vm1\"", "\"../../etc\"");
        std::fs::write(dir.path().join(RECORD_FILE), json).unwrap();
        assert!(VmRecord::read(dir.path()).is_err());
    }
}
