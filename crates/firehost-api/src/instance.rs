//! The instance as a whole: `GET /`, `PUT /actions`, `PATCH /vm`,
//! `GET /version` and `GET /vm/config`.

use serde::{Deserialize, Serialize};

use crate::{
    Balloon, BootSource, CpuConfig, Drive, EntropyDevice, Logger, MachineConfiguration,
    MemoryHotplugConfig, Metrics, MmdsConfig, NetworkInterface, Pmem, Vsock,
};

/// General information about the instance: response of `GET /`.
///
/// # Examples
///
/// ```
/// use firehost_api::{InstanceInfo, InstanceState};
///
/// let info: InstanceInfo = serde_json::from_str(
///     r#"{"id":"fh-1","state":"Not started","vmm_version":"1.16.1","app_name":"Firecracker"}"#,
/// )
/// .unwrap();
/// assert_eq!(info.state, InstanceState::NotStarted);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Application name (`Firecracker`).
    pub app_name: String,
    /// Instance id, as given by `--id` (default `anonymous-instance`).
    pub id: String,
    /// Where the instance is in its lifecycle.
    pub state: InstanceState,
    /// Version of the VMM binary.
    pub vmm_version: String,
}

/// Lifecycle state of the instance, as reported by `GET /`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InstanceState {
    /// Configuration phase: `InstanceStart` not yet issued (and no snapshot
    /// loaded).
    #[serde(rename = "Not started")]
    NotStarted,
    /// The guest is running.
    Running,
    /// The guest's vCPUs are paused.
    Paused,
}

/// A synchronous action: body of `PUT /actions`.
///
/// # Examples
///
/// ```
/// use firehost_api::{ActionType, InstanceActionInfo};
///
/// let start = InstanceActionInfo::new(ActionType::InstanceStart);
/// assert_eq!(
///     serde_json::to_string(&start).unwrap(),
///     r#"{"action_type":"InstanceStart"}"#
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    /// Which action to perform.
    pub action_type: ActionType,
}

impl InstanceActionInfo {
    /// The body requesting `action_type`.
    pub fn new(action_type: ActionType) -> Self {
        Self { action_type }
    }
}

/// An action for `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActionType {
    /// Write the metrics to the metrics sink now.
    FlushMetrics,
    /// Boot the configured microVM.
    InstanceStart,
    /// Press Ctrl+Alt+Del on the guest's keyboard (`x86_64` only).
    SendCtrlAltDel,
}

/// Requested running state: body of `PATCH /vm`.
///
/// # Examples
///
/// ```
/// use firehost_api::{Vm, VmState};
///
/// let pause = Vm { state: VmState::Paused };
/// assert_eq!(serde_json::to_string(&pause).unwrap(), r#"{"state":"Paused"}"#);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// The state to move to.
    pub state: VmState,
}

/// A running state that `PATCH /vm` can request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VmState {
    /// Stop the vCPUs.
    Paused,
    /// Run the vCPUs again.
    Resumed,
}

/// The VMM's version: response of `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirecrackerVersion {
    /// Build version, e.g. `1.16.1`.
    pub firecracker_version: String,
}

/// Every resource's current configuration: response of `GET /vm/config`.
///
/// After a snapshot restore, `boot-source` and parts of `machine-config`
/// are empty. The nested device types are the request types, so they keep
/// refusing fields the spec does not declare.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullVmConfiguration {
    /// The balloon device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<Balloon>,
    /// Every block device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drives: Option<Vec<Drive>>,
    /// Kernel, initrd and command line.
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    /// Custom CPU template.
    #[serde(
        rename = "cpu-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_config: Option<CpuConfig>,
    /// Logger settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
    /// vCPUs and memory.
    #[serde(
        rename = "machine-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_config: Option<MachineConfiguration>,
    /// Metrics sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// Hot-pluggable memory region.
    #[serde(
        rename = "memory-hotplug",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_hotplug: Option<MemoryHotplugConfig>,
    /// Metadata service settings.
    #[serde(
        rename = "mmds-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub mmds_config: Option<MmdsConfig>,
    /// Every network interface.
    #[serde(
        rename = "network-interfaces",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub network_interfaces: Option<Vec<NetworkInterface>>,
    /// Every pmem device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmem: Option<Vec<Pmem>>,
    /// The vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    /// The entropy device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyDevice>,
}
