//! `network.json`: what a manager set up on the host (the bridge, the
//! tables), so that a restarted one undoes only its own work. Written with
//! the one durable writer; a file that cannot be read is an error, never
//! "nothing set up".

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::NetError;

/// What this manager set up on the host, persisted so that a restarted
/// manager undoes only its own work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Footprint {
    /// The bridge was created by this state directory's manager.
    pub(super) bridge_created: bool,
    /// The firehost tables were installed by it.
    pub(super) firewall_installed: bool,
}

/// The footprint in `path`: none if there is no file; an error (in words)
/// if there is one that cannot be read.
pub(super) fn read_footprint(path: &Path) -> Result<Footprint, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Footprint::default()),
        Err(e) => Err(e.to_string()),
    }
}

pub(super) fn write_footprint(path: &Path, footprint: &Footprint) -> Result<(), NetError> {
    let io = |op| {
        move |source| NetError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    if *footprint == Footprint::default() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove")(e)),
            _ => Ok(()),
        };
    }
    let json = serde_json::to_vec_pretty(footprint).map_err(|e| io("serialise")(e.into()))?;
    crate::fsutil::write_atomic(path, &json, crate::fsutil::Durability::Synced).map_err(|e| {
        NetError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    })
}
