//! `PUT`/`PATCH /machine-config` and `PUT /boot-source`: the machine's
//! shape and its kernel, checked the way Firecracker checks them.

use std::fs::File;

use firehost_api::{BootSource, CpuTemplate, HugePages};
use serde::{Deserialize, Serialize};

use crate::action::MachineConfigUpdate;

use super::{ActionError, DEFAULT_MEM_SIZE_MIB, MAX_SUPPORTED_VCPUS, Reply, Resources};

/// `MachineConfigError`, with Firecracker's messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineConfigError {
    /// Memory size zero or not a multiple of the page size.
    #[error("The memory size (MiB) is either 0, or not a multiple of the configured page size.")]
    InvalidMemorySize,
    /// Bad vCPU count.
    #[error(
        "The number of vCPUs must be greater than 0, less than {MAX_SUPPORTED_VCPUS} and must be 1 or an even number if SMT is enabled."
    )]
    InvalidVcpuCount,
    /// Memory smaller than the balloon.
    #[error("The memory size (MiB) is smaller than the previously set balloon device target size.")]
    IncompatibleBalloonSize,
}

/// The machine configuration, always complete (Firecracker's `MachineConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// vCPUs.
    pub vcpu_count: u8,
    /// Memory, MiB.
    pub mem_size_mib: u64,
    /// SMT.
    pub smt: bool,
    /// Static CPU template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// Dirty page tracking.
    pub track_dirty_pages: bool,
    /// Huge pages.
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: DEFAULT_MEM_SIZE_MIB,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
        }
    }
}

impl MachineConfig {
    /// Applies an update with `MachineConfig::update`'s checks.
    pub fn update(&self, u: &MachineConfigUpdate) -> Result<Self, MachineConfigError> {
        let vcpu_count = u.vcpu_count.unwrap_or(self.vcpu_count);
        let smt = u.smt.unwrap_or(self.smt);
        if vcpu_count == 0 || vcpu_count > MAX_SUPPORTED_VCPUS {
            return Err(MachineConfigError::InvalidVcpuCount);
        }
        if smt && vcpu_count > 1 && vcpu_count % 2 == 1 {
            return Err(MachineConfigError::InvalidVcpuCount);
        }
        let mem_size_mib = u.mem_size_mib.unwrap_or(self.mem_size_mib);
        let huge_pages = u.huge_pages.unwrap_or(self.huge_pages);
        let page_ok = match huge_pages {
            HugePages::None => true,
            HugePages::Hugetlbfs2M => mem_size_mib.is_multiple_of(2),
        };
        if mem_size_mib == 0 || !page_ok {
            return Err(MachineConfigError::InvalidMemorySize);
        }
        let cpu_template = match u.cpu_template {
            None => self.cpu_template,
            Some(CpuTemplate::None) => None,
            Some(other) => Some(other),
        };
        Ok(Self {
            vcpu_count,
            mem_size_mib,
            smt,
            cpu_template,
            track_dirty_pages: u.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            huge_pages,
        })
    }
}

pub(super) fn set_boot_source(res: &mut Resources, cfg: BootSource) -> Result<Reply, ActionError> {
    File::open(&cfg.kernel_image_path)
        .map_err(|e| ActionError::BootSource(format!("The kernel file cannot be opened: {e}")))?;
    if let Some(initrd) = &cfg.initrd_path {
        File::open(initrd).map_err(|e| {
            ActionError::BootSource(format!(
                "The initrd file cannot be opened due to invalid path or invalid permissions. {e}"
            ))
        })?;
    }
    res.boot_source = Some(cfg);
    Ok(Reply::Empty)
}

pub(super) fn update_machine_config(
    res: &mut Resources,
    u: &MachineConfigUpdate,
) -> Result<Reply, ActionError> {
    let updated = res.machine_config.update(u)?;
    if let Some(b) = &res.balloon
        && u64::from(b.amount_mib) > updated.mem_size_mib
    {
        return Err(MachineConfigError::IncompatibleBalloonSize.into());
    }
    res.machine_config = updated;
    Ok(Reply::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_config_rules_match_firecracker() {
        let cases: &[(MachineConfigUpdate, Option<MachineConfigError>)] = &[
            (
                MachineConfigUpdate {
                    vcpu_count: Some(0),
                    ..Default::default()
                },
                Some(MachineConfigError::InvalidVcpuCount),
            ),
            (
                MachineConfigUpdate {
                    vcpu_count: Some(33),
                    ..Default::default()
                },
                Some(MachineConfigError::InvalidVcpuCount),
            ),
            (
                MachineConfigUpdate {
                    vcpu_count: Some(3),
                    smt: Some(true),
                    ..Default::default()
                },
                Some(MachineConfigError::InvalidVcpuCount),
            ),
            (
                MachineConfigUpdate {
                    vcpu_count: Some(1),
                    smt: Some(true),
                    ..Default::default()
                },
                None,
            ),
            (
                MachineConfigUpdate {
                    mem_size_mib: Some(0),
                    ..Default::default()
                },
                Some(MachineConfigError::InvalidMemorySize),
            ),
            (
                MachineConfigUpdate {
                    mem_size_mib: Some(129),
                    huge_pages: Some(HugePages::Hugetlbfs2M),
                    ..Default::default()
                },
                Some(MachineConfigError::InvalidMemorySize),
            ),
            (
                MachineConfigUpdate {
                    vcpu_count: Some(32),
                    mem_size_mib: Some(4096),
                    ..Default::default()
                },
                None,
            ),
        ];
        for (update, expected) in cases {
            assert_eq!(
                MachineConfig::default().update(update).err(),
                *expected,
                "{update:?}"
            );
        }
    }
}
