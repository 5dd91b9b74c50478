//! Serde models of every request and response body in Firecracker's v1.16
//! HTTP API.
//!
//! Firecracker is configured and driven through a REST API on a unix
//! socket, described by a swagger 2.0 document. Getting a body
//! subtly wrong (a misspelt enum value, a field Firecracker does not know, a
//! required field left out) only shows up as a `400` at run time, often deep
//! inside a VM create. This crate gives every body a Rust type, named after
//! its definition in the spec, so such mistakes are compile errors; its
//! tests validate a sample of every type against the spec itself. It holds
//! data only: the HTTP client lives in `firehost`, and `fake-firecracker`
//! parses requests with the same types.
//!
//! # Map
//!
//! One module per endpoint group, every type re-exported at the crate root:
//!
//! | Module | Endpoints | Types |
//! | --- | --- | --- |
//! | `instance` | `GET /`, `PUT /actions`, `PATCH /vm`, `GET /version`, `GET /vm/config` | [`InstanceInfo`], [`InstanceState`], [`InstanceActionInfo`], [`ActionType`], [`Vm`], [`VmState`], [`FirecrackerVersion`], [`FullVmConfiguration`] |
//! | `balloon` | `/balloon`, `/balloon/statistics`, `/balloon/hinting/*` | [`Balloon`], [`BalloonUpdate`], [`BalloonStatsUpdate`], [`BalloonStats`], [`BalloonStartCmd`], [`BalloonHintingStatus`] |
//! | `boot_source` | `PUT /boot-source` | [`BootSource`] |
//! | `cpu_config` | `PUT /cpu-config` | [`CpuConfig`], [`CpuidLeafModifier`], [`CpuidRegisterModifier`], [`CpuidRegister`], [`MsrModifier`], [`ArmRegisterModifier`], [`VcpuFeatures`] |
//! | `drive` | `/drives/{drive_id}` | [`Drive`], [`PartialDrive`], [`CacheType`], [`IoEngine`] |
//! | `pmem` | `/pmem/{id}` | [`Pmem`], [`PartialPmem`] |
//! | `logger` | `PUT /logger` | [`Logger`], [`LogLevel`] |
//! | `machine_config` | `/machine-config` | [`MachineConfiguration`], [`CpuTemplate`], [`HugePages`] |
//! | `metrics` | `PUT /metrics` | [`Metrics`] |
//! | `mmds` | `/mmds`, `/mmds/config` | [`MmdsConfig`], [`MmdsVersion`], [`MmdsContentsObject`] |
//! | `entropy` | `PUT /entropy` | [`EntropyDevice`] |
//! | `serial` | `PUT /serial` | [`SerialDevice`] |
//! | `memory_hotplug` | `/hotplug/memory` | [`MemoryHotplugConfig`], [`MemoryHotplugSizeUpdate`], [`MemoryHotplugStatus`] |
//! | `net` | `/network-interfaces/{iface_id}` | [`NetworkInterface`], [`PartialNetworkInterface`] |
//! | `rate_limiter` | (shared by devices) | [`RateLimiter`], [`TokenBucket`] |
//! | `snapshot` | `/snapshot/create`, `/snapshot/load` | [`SnapshotCreateParams`], [`SnapshotType`], [`SnapshotLoadParams`], [`MemoryBackend`], [`MemoryBackendType`], [`NetworkOverride`], [`VsockOverride`] |
//! | `vsock` | `PUT /vsock` | [`Vsock`] |
//! | `error` | every failed request | [`Error`] (the `fault_message` body) |
//!
//! # Conventions
//!
//! - **Names.** A struct has the name of its spec definition, and fields keep
//!   the spec's names, units included (`mem_size_mib`, `refill_time` in
//!   milliseconds). Enums the spec declares inline get a name of their own
//!   ([`ActionType`], [`VmState`], [`HugePages`]...) and serialise to exactly
//!   the spec's strings.
//! - **Optional fields.** A field the spec requires is a plain field; any
//!   other is an `Option`, left out of the JSON when `None`, so that
//!   Firecracker applies its own default. Types whose fields are all optional
//!   implement `Default`; most others have a `new` taking the required ones.
//! - **Strict requests, tolerant responses.** Request bodies refuse unknown
//!   fields, as Firecracker does; response-only bodies ([`InstanceInfo`],
//!   [`BalloonStats`], [`BalloonHintingStatus`], [`MemoryHotplugStatus`],
//!   [`FirecrackerVersion`], [`FullVmConfiguration`], [`Error`]) ignore fields
//!   they do not know. Request types nested in a response (the devices inside
//!   [`FullVmConfiguration`]) stay strict.
//! - **Integers.** Sizes, counts, ids and bit sets are unsigned: nothing in
//!   the API can be negative. Where the spec gives a format (`int32`,
//!   `int64`) the width follows it; where it gives none, the width is the
//!   one Firecracker itself parses, so every value of the Rust type is one
//!   Firecracker can accept (`vcpu_count: u8`, `mtu: u16`,
//!   `amount_mib: u32`, sizes in MiB as `u64`).
//! - **Paths** on the host are [`PathBuf`](std::path::PathBuf)s; serialising
//!   one that is not UTF-8 fails.
//!
//! # Examples
//!
//! ```
//! use firehost_api::{Drive, MachineConfiguration};
//!
//! let machine = MachineConfiguration::new(2, 1024);
//! let rootfs = Drive::virtio_block("rootfs", "/srv/rootfs.ext4", true, false);
//! assert_eq!(
//!     serde_json::to_string(&machine).unwrap(),
//!     r#"{"mem_size_mib":1024,"vcpu_count":2}"#
//! );
//! assert_eq!(serde_json::to_value(&rootfs).unwrap()["is_root_device"], true);
//!
//! // Firecracker refuses fields it does not know, and so do request types.
//! let typo = r#"{"mem_size_mib":1024,"vcpu_count":2,"smt_enabled":true}"#;
//! assert!(serde_json::from_str::<MachineConfiguration>(typo).is_err());
//! ```

mod balloon;
mod boot_source;
mod cpu_config;
mod drive;
mod entropy;
mod error;
mod instance;
mod logger;
mod machine_config;
mod memory_hotplug;
mod metrics;
mod mmds;
mod net;
mod pmem;
mod rate_limiter;
mod serial;
mod snapshot;
mod vsock;

pub use balloon::{
    Balloon, BalloonHintingStatus, BalloonStartCmd, BalloonStats, BalloonStatsUpdate, BalloonUpdate,
};
pub use boot_source::BootSource;
pub use cpu_config::{
    ArmRegisterModifier, CpuConfig, CpuidLeafModifier, CpuidRegister, CpuidRegisterModifier,
    MsrModifier, VcpuFeatures,
};
pub use drive::{CacheType, Drive, IoEngine, PartialDrive};
pub use entropy::EntropyDevice;
pub use error::Error;
pub use instance::{
    ActionType, FirecrackerVersion, FullVmConfiguration, InstanceActionInfo, InstanceInfo,
    InstanceState, Vm, VmState,
};
pub use logger::{LogLevel, Logger};
pub use machine_config::{CpuTemplate, HugePages, MachineConfiguration};
pub use memory_hotplug::{MemoryHotplugConfig, MemoryHotplugSizeUpdate, MemoryHotplugStatus};
pub use metrics::Metrics;
pub use mmds::{MmdsConfig, MmdsContentsObject, MmdsVersion};
pub use net::{NetworkInterface, PartialNetworkInterface};
pub use pmem::{PartialPmem, Pmem};
pub use rate_limiter::{RateLimiter, TokenBucket};
pub use serial::SerialDevice;
pub use snapshot::{
    MemoryBackend, MemoryBackendType, NetworkOverride, SnapshotCreateParams, SnapshotLoadParams,
    SnapshotType, VsockOverride,
};
pub use vsock::Vsock;
