//! firehost: run Firecracker microVMs from a tokio service.
//!
//! A sandboxing service needs to boot VMs sized to each job, watch them,
//! stop them for certain, and never leak a process, socket or directory,
//! even when the service itself crashes. firehost does that around an
//! external `firecracker` binary.
//!
//! The layers, bottom up. Each module imports only from the layers below
//! it; `tests/layers.rs` checks that for everything under the manager:
//!
//! 1. Leaves, which import nothing of the crate: [`id`] (`VmId`,
//!    `SnapshotName`), [`fsutil`] (atomic writes, private directories, PATH
//!    lookup), [`socket_path`], [`elf`], [`bounded_log`], [`error_kind`],
//!    [`console`], and [`state`], the lifecycle state machine.
//! 2. [`vocab`]: the words a spec is written in, with nothing behind
//!    them (interface names, MACs, port mappings, [`NetSpec`], the
//!    metadata spec).
//! 3. [`api`]: Firecracker's HTTP API, typed, over its unix socket;
//!    [`vsock`] and [`agent`]: the host↔guest channel and the guest
//!    agent's client (run commands, move files, wait until ready).
//! 4. [`jail`]: the jailer's command line, chroots, uids and cgroups;
//!    [`vmm`]: one Firecracker process (spawn, readiness, exit watch
//!    through a pidfd, signals) and the log keeper.
//! 5. [`spec`]: what a VM should be, validated against the host's defaults.
//! 6. [`net`]: the default network (addresses, TAPs, bridge, firewall);
//!    [`mmds`]: the metadata service's contents; [`image`]: guest images.
//! 7. [`snapshot`]: bundles, the store and the userfaultfd page server.
//! 8. [`record`]: the durable per-VM record a restarted manager reads, in
//!    a file format of its own.
//! 9. [`Manager`] (many VMs, per-VM locking, create as a transaction,
//!    re-attach and reaping), [`VmProvider`] (implemented by [`Manager`]
//!    and by [`InMemoryProvider`] for services' tests) and [`doctor`].
//!
//! The types a caller works with are re-exported here, so one `use` line
//! covers a service:
//!
//! ```
//! use firehost::{
//!     AgentClient, ErrorKind, ExecRequest, Manager, ManagerConfig, NetSpec, PortMapping,
//!     RestoreOptions, SnapshotName, SnapshotOptions, StopOptions, VmId, VmProvider, VmSpec,
//! };
//! let spec = VmSpec {
//!     net: Some(NetSpec {
//!         publish: vec!["8080:80".parse::<PortMapping>().unwrap()],
//!         ..NetSpec::default()
//!     }),
//!     ..VmSpec::default()
//! };
//! let template: SnapshotName = "template".parse().unwrap();
//! # let _ = (spec, template, RestoreOptions::default(), SnapshotOptions::default());
//! ```

pub mod agent;
pub mod api;
pub mod bounded_log;
pub mod console;
pub mod cpu;
pub mod elf;
pub mod error_kind;
pub mod fsutil;
pub mod id;
pub mod jail;
pub mod metrics;
pub mod net;
pub mod record;
pub mod socket_path;
pub mod spec;
pub mod state;
pub mod vmm;
pub mod vocab;
pub mod vsock;

pub use error_kind::ErrorKind;
pub use id::{VmId, VmIdError};
pub use spec::{DriveSpec, HostDefaults, ResolvedSpec, SpecError, VmSpec};
pub use state::{ExitReason, Operation, TransitionError, VmState};
pub mod manager;
pub mod mmds;
pub mod snapshot;
mod undo;

pub use manager::{
    Manager, ManagerConfig, ManagerError, RestoreMemory, RestoreOptions, SnapshotOptions,
    StopOptions, StopOutcome, VmError, VmInfo,
};
pub mod provider;

pub use agent::{AgentClient, AgentError, ExecRequest, Output};
pub use id::SnapshotName;
pub use net::host::{NetworkConfig, VmNet};
pub use provider::{InMemoryProvider, VmProvider};
pub use snapshot::SnapshotInfo;
pub use vocab::{NetSpec, PortMapping};
pub mod doctor;
pub mod image;

/// The README's Rust examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
