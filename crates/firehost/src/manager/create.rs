//! Create as a transaction: every side effect goes on an undo stack as it
//! happens, and any failure unwinds the stack before the error is returned.

use std::sync::Arc;

use super::launch::{Launched, Reservation};
use super::{Shared, Vm, VmError, VmInfo};
use crate::VmId;
use crate::api::ApiClient;
use crate::api::models::{
    ActionType, BootSource, InstanceActionInfo, MachineConfiguration, MmdsConfig, Vsock,
};
use crate::net::host::VmNet;
use crate::record::VmVsock;
use crate::spec::{ResolvedSpec, VmSpec};
use crate::state::VmState;
use crate::undo::{UndoStack, UndoStep};

/// Creates a VM and, with `then_start`, boots it within the same
/// transaction (so a failed start undoes the create).
pub(super) async fn create(
    shared: Arc<Shared>,
    id: VmId,
    spec: VmSpec,
    then_start: bool,
    pool: Option<crate::id::PoolName>,
) -> Result<VmInfo, VmError> {
    let name = id;
    shared.check_free(&name).await?;
    let reservation = Reservation::take(&shared, &name)?;
    // Everything on the host goes by the key (see `names`).
    let key = reservation.key.clone();
    if let Err(e) =
        super::ops::begin_intent(&shared.intents_dir, &key, super::intent::Intent::Create)
    {
        shared.lock_registry().remove(&name);
        return Err(e);
    }
    let mut undo = UndoStack::default();
    let result = build(&shared, &key, &name, spec, then_start, pool, &mut undo).await;
    let settled = reservation.settle(&shared, &name, result, undo).await;
    super::intent::end(&shared.intents_dir, &key);
    settled
}

async fn build(
    shared: &Arc<Shared>,
    id: &VmId,
    name: &VmId,
    spec: VmSpec,
    then_start: bool,
    pool: Option<crate::id::PoolName>,
    undo: &mut UndoStack,
) -> Result<Vm, VmError> {
    let defaults = shared.config.defaults.clone();
    let spec = tokio::task::spawn_blocking(move || spec.resolve(&defaults))
        .await
        .expect("spec resolution does not panic")
        .map_err(|source| VmError::InvalidSpec {
            id: id.clone(),
            source,
        })?;
    // A jailed VM writes to its copies in its jail, not to these files.
    if super::jailed::jail_spec_of(&spec, shared.config.jail.as_ref()).is_none() {
        shared.hold_writes(id, &spec).await?;
    }
    shared.prepare_for(&spec).await;
    let net = match &spec.net {
        Some(net_spec) => {
            let owner = super::jailed::tap_owner(shared, id, &spec, undo)?;
            let net = shared
                .net
                .attach_owned(id, net_spec, owner)
                .await
                .map_err(|source| VmError::Network {
                    id: id.clone(),
                    source: Box::new(source),
                })?;
            undo.push(UndoStep::DetachNetwork {
                net: shared.net.clone(),
                vm: id.clone(),
            });
            Some(net)
        }
        None => None,
    };
    let mut launched = Launched::spawn(shared, id, name, spec, net, None, undo).await?;
    launched.vm.record.pool = pool;
    let outcome = async {
        launched.vm.record.vsock = match &launched.vm.record.spec.vsock {
            Some(vsock) => Some(vsock_of(&launched.vm, vsock.guest_cid)?),
            None => None,
        };
        let api = launched.connect(shared).await?;
        let record = &launched.vm.record;
        configure(&api, record)
            .await
            .map_err(|(op, source)| VmError::Api {
                id: id.clone(),
                op,
                source,
            })?;
        if then_start {
            api.create_sync_action(&InstanceActionInfo {
                action_type: ActionType::InstanceStart,
            })
            .await
            .map_err(|source| VmError::Api {
                id: id.clone(),
                op: "start the guest",
                source,
            })?;
            launched.vm.record.state = VmState::Running;
        }
        Ok(api)
    }
    .await;
    launched.commit(outcome).await
}

/// The configuration requests, in the order Firecracker's docs use.
async fn configure(
    api: &ApiClient,
    record: &crate::record::VmRecord,
) -> Result<(), (&'static str, crate::api::ApiError)> {
    // What Firecracker sees: inside a jail, files are at their places in
    // the chroot.
    let spec = &match record.jail {
        Some(_) => super::jailed::vmm_spec(&record.spec),
        None => record.spec.clone(),
    };
    let (net, vsock) = (record.net.as_ref(), record.vsock.as_ref());
    api.put_machine_configuration(&machine_config(spec))
        .await
        .map_err(|e| ("configure the machine", e))?;
    if let Some(crate::spec::ResolvedCpuTemplate::Custom { config, .. }) = &spec.cpu_template {
        // Checked when the spec was resolved; a record edited since is
        // Firecracker's to refuse.
        let config: crate::api::models::CpuConfig =
            serde_json::from_value(config.clone()).unwrap_or_default();
        api.put_cpu_configuration(&config)
            .await
            .map_err(|e| ("apply the CPU template", e))?;
    }
    api.put_guest_boot_source(&boot_source(spec, net, vsock))
        .await
        .map_err(|e| ("configure the boot source", e))?;
    for drive in super::devices::drives(spec) {
        api.put_guest_drive_by_id(&drive)
            .await
            .map_err(|e| ("attach a drive", e))?;
    }
    if let Some(net) = net {
        api.put_guest_network_interface_by_id(&super::devices::network_interface(net, spec))
            .await
            .map_err(|e| ("attach the network interface", e))?;
    }
    for nic in &spec.extra_nics {
        api.put_guest_network_interface_by_id(&super::devices::extra_nic(nic))
            .await
            .map_err(|e| ("attach an extra network interface", e))?;
    }
    for pmem in &spec.pmem {
        api.put_guest_pmem_by_id(&super::devices::pmem(pmem))
            .await
            .map_err(|e| ("attach a pmem device", e))?;
    }
    if let Some(limit) = &spec.serial_limit {
        api.put_serial_device(&super::devices::serial(limit))
            .await
            .map_err(|e| ("limit the serial console", e))?;
    }
    if let Some(hotplug) = &spec.memory_hotplug {
        api.put_memory_hotplug(&super::devices::memory_hotplug(hotplug))
            .await
            .map_err(|e| ("attach hotpluggable memory", e))?;
    }
    if let Some(balloon) = &spec.balloon {
        api.put_balloon(&super::devices::balloon(balloon))
            .await
            .map_err(|e| ("attach the balloon", e))?;
    }
    if let Some(entropy) = &spec.entropy {
        api.put_entropy_device(&super::devices::entropy(entropy))
            .await
            .map_err(|e| ("attach the entropy device", e))?;
    }
    if let Some(vsock) = vsock {
        api.put_guest_vsock(&Vsock::new(
            vsock.guest_cid,
            record.vmm_path(&vsock.uds_path),
        ))
        .await
        .map_err(|e| ("attach the vsock device", e))?;
    }
    if let (Some(mmds), Some(net)) = (&spec.mmds, net) {
        let config = MmdsConfig {
            version: Some(mmds.version),
            ..MmdsConfig::new([net.iface_id.as_str()])
        };
        api.put_mmds_config(&config)
            .await
            .map_err(|e| ("configure the metadata service", e))?;
        let identity = crate::mmds::identity(&record.name, Some(net), None);
        api.put_mmds(&crate::mmds::contents(&mmds.data, identity))
            .await
            .map_err(|e| ("write the metadata", e))?;
    }
    Ok(())
}

/// The VM's vsock device: its socket in the VM's directory and a fresh
/// agent token.
fn vsock_of(vm: &Vm, guest_cid: u32) -> Result<VmVsock, VmError> {
    let id = &vm.record.id;
    let uds_path =
        super::jailed::socket_path(vm.record.jail.as_ref(), &vm.dir, crate::vsock::SOCKET_FILE);
    // Guest-initiated connections land on `<uds>_<port>`: leave room for
    // the longest port.
    crate::socket_path::check(&uds_path, "_4294967295".len())
        .map_err(|e| VmError::socket_path_too_long(id, e))?;
    let token = crate::agent::new_token().map_err(|source| VmError::Io {
        id: id.clone(),
        op: "make an agent token from",
        path: "getrandom".into(),
        source,
    })?;
    Ok(VmVsock {
        uds_path,
        guest_cid,
        token,
        next_token: None,
    })
}

pub(crate) fn machine_config(spec: &ResolvedSpec) -> MachineConfiguration {
    use crate::api::models::CpuTemplate;
    use crate::spec::{ResolvedCpuTemplate, StaticCpuTemplate};
    let cpu_template = match &spec.cpu_template {
        Some(ResolvedCpuTemplate::Static(t)) => Some(match t {
            StaticCpuTemplate::C3 => CpuTemplate::C3,
            StaticCpuTemplate::T2 => CpuTemplate::T2,
            StaticCpuTemplate::T2S => CpuTemplate::T2S,
            StaticCpuTemplate::T2CL => CpuTemplate::T2CL,
            StaticCpuTemplate::T2A => CpuTemplate::T2A,
            StaticCpuTemplate::V1N1 => CpuTemplate::V1N1,
        }),
        _ => None,
    };
    MachineConfiguration {
        smt: Some(spec.smt),
        track_dirty_pages: Some(spec.track_dirty_pages),
        cpu_template,
        ..MachineConfiguration::new(spec.vcpus, spec.mem_mib.into())
    }
}

/// The boot source. With a network whose spec asks for it, the kernel's
/// `ip=` argument is appended so the guest configures `eth0` by itself;
/// with a vsock device, the agent's token (`firehost.token=`).
pub(crate) fn boot_source(
    spec: &ResolvedSpec,
    net: Option<&VmNet>,
    vsock: Option<&VmVsock>,
) -> BootSource {
    let mut boot_args = spec.boot_args.clone();
    let mut append = |arg: &str| {
        if !boot_args.is_empty() {
            boot_args.push(' ');
        }
        boot_args.push_str(arg);
    };
    let wants_ip_arg = spec.net.as_ref().is_some_and(|n| n.kernel_ip_arg);
    if let Some(net) = net.filter(|_| wants_ip_arg) {
        append(&net.guest_net().kernel_ip_arg(None, "eth0"));
    }
    if let Some(vsock) = vsock {
        append(&format!(
            "{}={}",
            firehost_proto::TOKEN_BOOT_ARG,
            vsock.token.0
        ));
    }
    BootSource {
        initrd_path: spec.initrd.clone(),
        boot_args: Some(boot_args),
        ..BootSource::new(&spec.kernel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::models::CpuTemplate;
    use crate::spec::{ResolvedCpuTemplate, StaticCpuTemplate};

    #[test]
    fn a_static_cpu_template_goes_in_the_machine_configuration() {
        let mut spec = ResolvedSpec::for_tests();
        assert_eq!(machine_config(&spec).cpu_template, None);
        spec.cpu_template = Some(ResolvedCpuTemplate::Static(StaticCpuTemplate::T2CL));
        assert_eq!(machine_config(&spec).cpu_template, Some(CpuTemplate::T2CL));
        // A custom one goes to PUT /cpu-config instead.
        spec.cpu_template = Some(ResolvedCpuTemplate::Custom {
            path: "/t.json".into(),
            config: serde_json::json!({}),
        });
        assert_eq!(machine_config(&spec).cpu_template, None);
    }
}
