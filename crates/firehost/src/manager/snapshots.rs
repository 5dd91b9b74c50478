//! The snapshot store as async code sees it.
//!
//! [`SnapshotStore`]'s methods read directories and, for `verify` and
//! `merge`, hash whole memory files: called on a runtime worker they would
//! stall every other task on it. [`Snapshots`] runs each one on tokio's
//! blocking pool and, for gc, adds what only a manager knows: the bundles
//! that interrupted snapshots may still be written into.

use std::sync::Arc;

use super::Shared;
use crate::VmId;
use crate::id::SnapshotName;
use crate::snapshot::store::{GcOptions, GcReport, Listing, SnapshotDetails};
use crate::snapshot::{SnapshotInfo, SnapshotStore, StoreError, VerifyOptions};

/// The manager's snapshot store, with async methods that do their file
/// work on the blocking pool. Get one from
/// [`Manager::snapshots`](super::Manager::snapshots); it is cheap to clone.
///
/// ```no_run
/// # async fn demo(manager: firehost::Manager) -> Result<(), firehost::snapshot::StoreError> {
/// let snapshots = manager.snapshots();
/// for bundle in snapshots.list().await?.bundles {
///     println!("{} ({} leases)", bundle.name, snapshots.leases(&bundle.name).await?.len());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Snapshots {
    shared: Arc<Shared>,
}

impl Snapshots {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Snapshots { shared }
    }

    /// The blocking store underneath, for code that is not async or is
    /// already on a blocking thread.
    pub fn store(&self) -> SnapshotStore {
        self.shared.store()
    }

    /// Every bundle, sorted by name; see [`SnapshotStore::list`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn list(&self) -> Result<Listing, StoreError> {
        self.run(|store| store.list()).await
    }

    /// The VMs holding a live lease on `name`, sorted; see
    /// [`SnapshotStore::leases`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn leases(&self, name: &SnapshotName) -> Result<Vec<VmId>, StoreError> {
        let name = name.clone();
        self.run(move |store| store.leases(&name)).await
    }

    /// The bundle's manifest, leases, children and working set; see
    /// [`SnapshotStore::inspect`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn inspect(&self, name: &SnapshotName) -> Result<SnapshotDetails, StoreError> {
        let name = name.clone();
        self.run(move |store| store.inspect(&name)).await
    }

    /// Verifies the bundle and its parents, the named bundle first in the
    /// chain returned; see [`SnapshotStore::verify`]. With memory
    /// checksums this reads every memory file whole.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn verify(
        &self,
        name: &SnapshotName,
        options: VerifyOptions,
    ) -> Result<Vec<SnapshotInfo>, StoreError> {
        let name = name.clone();
        self.run(move |store| store.verify(&name, &options)).await
    }

    /// Deletes a bundle nobody leases and nothing derives from; see
    /// [`SnapshotStore::delete`].
    ///
    /// # Cancel safety
    ///
    /// Runs on the blocking pool: it completes even if this future is
    /// dropped.
    pub async fn delete(&self, name: &SnapshotName) -> Result<(), StoreError> {
        let name = name.clone();
        self.run(move |store| store.delete(&name)).await
    }

    /// Removes crash leftovers and, if asked, old unused bundles; see
    /// [`SnapshotStore::gc`]. The bundles of snapshots an earlier manager's
    /// death interrupted ([`Manager::snapshots_in_progress`]) are added to
    /// [`GcOptions::keep`]: a busy VMM may still be writing them.
    ///
    /// [`Manager::snapshots_in_progress`]: super::Manager::snapshots_in_progress
    ///
    /// # Cancel safety
    ///
    /// Runs on the blocking pool: it completes even if this future is
    /// dropped.
    pub async fn gc(&self, mut options: GcOptions) -> Result<GcReport, StoreError> {
        let manager = super::Manager {
            shared: self.shared.clone(),
        };
        options.keep.extend(manager.snapshots_in_progress().await);
        self.run(move |store| store.gc(&options)).await
    }

    /// Merges diff snapshot `diff` and its parents into a new full bundle
    /// `new`; see [`SnapshotStore::merge`].
    ///
    /// # Cancel safety
    ///
    /// Runs on the blocking pool: it completes even if this future is
    /// dropped.
    pub async fn merge(
        &self,
        diff: &SnapshotName,
        new: &SnapshotName,
    ) -> Result<SnapshotInfo, StoreError> {
        let (diff, new) = (diff.clone(), new.clone());
        self.run(move |store| store.merge(&diff, &new)).await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(SnapshotStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store();
        tokio::task::spawn_blocking(move || work(store))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}
