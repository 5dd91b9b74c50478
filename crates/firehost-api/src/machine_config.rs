//! vCPUs, memory and CPU model: `GET`, `PUT` and `PATCH /machine-config`.

use serde::{Deserialize, Serialize};

/// The machine's shape: body of `PUT` and `PATCH /machine-config`, response
/// of `GET /machine-config`.
///
/// The spec uses this one definition for the `PATCH` body too, so a `PATCH`
/// must also carry `vcpu_count` and `mem_size_mib`.
///
/// # Examples
///
/// ```
/// use firehost_api::{HugePages, MachineConfiguration};
///
/// let machine = MachineConfiguration {
///     huge_pages: Some(HugePages::Hugetlbfs2M),
///     ..MachineConfiguration::new(2, 512)
/// };
/// assert_eq!(
///     serde_json::to_string(&machine).unwrap(),
///     r#"{"mem_size_mib":512,"vcpu_count":2,"huge_pages":"2M"}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfiguration {
    /// Static CPU template (deprecated by Firecracker in favour of
    /// `PUT /cpu-config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// Simultaneous multithreading (`x86_64` only); default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Guest memory size in MiB.
    pub mem_size_mib: u64,
    /// Whether Firecracker tracks dirty pages, which diff snapshots need;
    /// default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Number of vCPUs: 1 to 32, and 1 or even when `smt` is on.
    pub vcpu_count: u8,
    /// Huge pages backing guest memory; default [`HugePages::None`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

impl MachineConfiguration {
    /// `vcpu_count` vCPUs and `mem_size_mib` MiB, everything else at
    /// Firecracker's defaults.
    pub fn new(vcpu_count: u8, mem_size_mib: u64) -> Self {
        Self {
            cpu_template: None,
            smt: None,
            mem_size_mib,
            track_dirty_pages: None,
            vcpu_count,
            huge_pages: None,
        }
    }
}

/// A static CPU template, masking the guest's CPU features down to those of
/// an EC2 instance family. Deprecated by Firecracker; see
/// [`CpuConfig`](crate::CpuConfig) for custom templates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CpuTemplate {
    /// Intel, like C3 instances.
    C3,
    /// Intel, like T2 instances.
    T2,
    /// Intel, like T2 instances, safe to migrate between hosts.
    T2S,
    /// Intel Cascade Lake and newer, like T2 instances.
    T2CL,
    /// AMD, like T2 instances.
    T2A,
    /// ARM Neoverse V1, like N1.
    V1N1,
    /// No template (the default).
    #[default]
    None,
}

/// Huge pages used to back guest memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HugePages {
    /// Ordinary pages (the default).
    #[default]
    None,
    /// 2 MiB hugetlbfs pages; `mem_size_mib` must then be even.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}
