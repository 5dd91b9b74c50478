//! `--config-file`: a whole VM configuration as the actions it stands for.

use crate::action::Action;

/// Applies a `--config-file` document: the same actions, in Firecracker's order,
/// then `InstanceStart`.
pub fn config_file_actions(text: &str) -> Result<Vec<Action>, serde_json::Error> {
    let c: firehost_api::FullVmConfiguration = serde_json::from_str(text)?;
    let mut actions = Vec::new();
    if let Some(l) = c.logger {
        actions.push(Action::PutLogger(l));
    }
    if let Some(m) = c.metrics {
        actions.push(Action::PutMetrics(m));
    }
    if let Some(m) = c.machine_config {
        actions.push(Action::PutMachineConfig(m.into()));
    }
    if let Some(cpu) = c.cpu_config {
        actions.push(Action::PutCpuConfig(Box::new(cpu)));
    }
    if let Some(b) = c.boot_source {
        actions.push(Action::PutBootSource(b));
    }
    for d in c.drives.into_iter().flatten() {
        actions.push(Action::PutDrive(d));
    }
    for p in c.pmem.into_iter().flatten() {
        actions.push(Action::PutPmem(p));
    }
    for n in c.network_interfaces.into_iter().flatten() {
        actions.push(Action::PutNetworkInterface(n));
    }
    if let Some(v) = c.vsock {
        actions.push(Action::PutVsock(v));
    }
    if let Some(b) = c.balloon {
        actions.push(Action::PutBalloon(b));
    }
    if let Some(e) = c.entropy {
        actions.push(Action::PutEntropy(e));
    }
    if let Some(m) = c.mmds_config {
        actions.push(Action::PutMmdsConfig(m));
    }
    if let Some(m) = c.memory_hotplug {
        actions.push(Action::PutMemoryHotplug(m));
    }
    actions.push(Action::InstanceStart);
    Ok(actions)
}
