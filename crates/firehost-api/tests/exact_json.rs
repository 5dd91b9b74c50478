//! Exact JSON for the bodies that are easy to get subtly wrong: enum
//! spellings, hyphenated keys, and responses as Firecracker really sends them.

use firehost_api::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

fn spelling<T: Serialize>(value: T) -> String {
    serde_json::to_value(value)
        .expect("serialises")
        .as_str()
        .expect("a string")
        .to_owned()
}

fn assert_round_trip<T: Serialize + DeserializeOwned>(value: T, expected: &str) {
    assert_eq!(spelling(&value), expected);
    let back: T = serde_json::from_value(json!(expected)).expect("parses its own spelling");
    assert_eq!(spelling(back), expected);
}

#[test]
fn enums_use_the_spec_spellings() {
    let cases: Vec<(String, &str)> = vec![
        (spelling(InstanceState::NotStarted), "Not started"),
        (spelling(InstanceState::Running), "Running"),
        (spelling(InstanceState::Paused), "Paused"),
        (spelling(ActionType::SendCtrlAltDel), "SendCtrlAltDel"),
        (spelling(VmState::Resumed), "Resumed"),
        (spelling(SnapshotType::Diff), "Diff"),
        (spelling(MemoryBackendType::Uffd), "Uffd"),
        (spelling(CpuTemplate::T2CL), "T2CL"),
        (spelling(CpuTemplate::None), "None"),
        (spelling(HugePages::Hugetlbfs2M), "2M"),
        (spelling(HugePages::None), "None"),
        (spelling(LogLevel::Warning), "Warning"),
        (spelling(MmdsVersion::V2), "V2"),
        (spelling(CacheType::Writeback), "Writeback"),
        (spelling(IoEngine::Async), "Async"),
        (spelling(CpuidRegister::Ecx), "ecx"),
    ];
    for (actual, expected) in cases {
        assert_eq!(actual, expected);
    }
    assert_round_trip(InstanceState::NotStarted, "Not started");
    assert_round_trip(HugePages::Hugetlbfs2M, "2M");
}

#[test]
fn enum_defaults_match_firecracker_defaults() {
    assert_eq!(CpuTemplate::default(), CpuTemplate::None);
    assert_eq!(HugePages::default(), HugePages::None);
    assert_eq!(LogLevel::default(), LogLevel::Info);
    assert_eq!(MmdsVersion::default(), MmdsVersion::V1);
    assert_eq!(CacheType::default(), CacheType::Unsafe);
    assert_eq!(IoEngine::default(), IoEngine::Sync);
    assert_eq!(SnapshotType::default(), SnapshotType::Full);
}

#[test]
fn log_level_parses_any_casing_but_not_other_words() {
    for text in ["warning", "WARNING", "Warning", "wArNiNg"] {
        let level: LogLevel = serde_json::from_value(json!(text)).expect(text);
        assert_eq!(level, LogLevel::Warning);
    }
    assert!(serde_json::from_value::<LogLevel>(json!("Warn")).is_err());
}

#[test]
fn instance_info_parses_a_real_firecracker_response() {
    let body = concat!(
        r#"{"id":"anonymous-instance","state":"Running","#,
        r#""vmm_version":"1.16.1","app_name":"Firecracker"}"#
    );
    let info: InstanceInfo = serde_json::from_str(body).expect("parses");
    assert_eq!(
        info,
        InstanceInfo {
            app_name: "Firecracker".into(),
            id: "anonymous-instance".into(),
            state: InstanceState::Running,
            vmm_version: "1.16.1".into(),
        }
    );
}

#[test]
fn instance_info_tolerates_fields_a_later_firecracker_adds() {
    let body = json!({
        "id": "a", "state": "Paused", "vmm_version": "1.17.0", "app_name": "Firecracker",
        "uptime_s": 3
    });
    let info: InstanceInfo = serde_json::from_value(body).expect("parses");
    assert_eq!(info.state, InstanceState::Paused);
}

#[test]
fn error_body_carries_the_fault_message() {
    let body = r#"{"fault_message":"The requested operation is not supported after boot."}"#;
    let error: Error = serde_json::from_str(body).expect("parses");
    assert_eq!(
        error.fault_message.as_deref(),
        Some("The requested operation is not supported after boot.")
    );
    assert_eq!(serde_json::to_string(&error).unwrap(), body);
    assert_eq!(
        serde_json::from_str::<Error>("{}").unwrap(),
        Error::default()
    );
}

#[test]
fn full_vm_configuration_parses_a_real_response_with_nulls_and_hyphens() {
    // Shape of `GET /vm/config` from a booted Firecracker: unset resources
    // come back as null, device lists as arrays.
    let body = json!({
        "balloon": null,
        "drives": [{
            "drive_id": "rootfs", "partuuid": null, "is_root_device": true,
            "cache_type": "Unsafe", "is_read_only": false, "path_on_host": "/rootfs.ext4",
            "rate_limiter": null, "io_engine": "Sync", "socket": null
        }],
        "boot-source": {
            "kernel_image_path": "/vmlinux", "initrd_path": null, "boot_args": "console=ttyS0"
        },
        "cpu-config": null,
        "logger": null,
        "machine-config": {
            "vcpu_count": 2, "mem_size_mib": 1024, "smt": false,
            "track_dirty_pages": false, "huge_pages": "None"
        },
        "metrics": null,
        "memory-hotplug": null,
        "mmds-config": null,
        "network-interfaces": [{
            "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02",
            "rx_rate_limiter": null, "tx_rate_limiter": null
        }],
        "pmem": [],
        "vsock": {"guest_cid": 3, "uds_path": "/v.sock"},
        "entropy": null
    });
    let config: FullVmConfiguration = serde_json::from_value(body).expect("parses");
    assert_eq!(config.drives.as_ref().map(Vec::len), Some(1));
    assert_eq!(
        config.machine_config,
        Some(MachineConfiguration {
            smt: Some(false),
            track_dirty_pages: Some(false),
            huge_pages: Some(HugePages::None),
            ..MachineConfiguration::new(2, 1024)
        })
    );
    assert_eq!(
        config.boot_source.unwrap().boot_args.as_deref(),
        Some("console=ttyS0")
    );
    assert_eq!(config.network_interfaces.unwrap()[0].host_dev_name, "tap0");
    assert_eq!(config.vsock, Some(Vsock::new(3, "/v.sock")));
    assert!(config.balloon.is_none());

    let keys = serde_json::to_value(FullVmConfiguration {
        boot_source: Some(BootSource::new("/k")),
        cpu_config: Some(CpuConfig::default()),
        machine_config: Some(MachineConfiguration::new(1, 128)),
        memory_hotplug: Some(MemoryHotplugConfig::default()),
        mmds_config: Some(MmdsConfig::new(["eth0"])),
        network_interfaces: Some(vec![]),
        ..FullVmConfiguration::default()
    })
    .unwrap();
    let mut keys: Vec<&String> = keys.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "boot-source",
            "cpu-config",
            "machine-config",
            "memory-hotplug",
            "mmds-config",
            "network-interfaces"
        ]
    );
}

#[test]
fn request_bodies_with_an_unknown_field_are_refused() {
    // Mirrors Firecracker's `deny_unknown_fields`: a typo must fail loudly,
    // not be dropped.
    fn refused<T: DeserializeOwned>(body: serde_json::Value, field: &str) {
        let error = serde_json::from_value::<T>(body)
            .err()
            .unwrap_or_else(|| panic!("a body with `{field}` was accepted"));
        assert!(error.to_string().contains(field), "{error}");
    }
    refused::<Drive>(
        json!({"drive_id": "d", "is_root_device": false, "read_only": true}),
        "read_only",
    );
    refused::<MachineConfiguration>(
        json!({"vcpu_count": 1, "mem_size_mib": 128, "ht_enabled": false}),
        "ht_enabled",
    );
    refused::<TokenBucket>(
        json!({"size": 1, "refill_time": 1, "refill_ms": 1}),
        "refill_ms",
    );
    refused::<SnapshotLoadParams>(
        json!({
            "snapshot_path": "/s",
            "mem_backend": {"backend_type": "File", "backend_path": "/m", "page_size": 4096}
        }),
        "page_size",
    );
}

#[test]
fn optional_fields_are_left_out_when_unset() {
    let load = SnapshotLoadParams::new("/s", MemoryBackend::new(MemoryBackendType::File, "/m"));
    assert_eq!(
        serde_json::to_value(&load).unwrap(),
        json!({
            "snapshot_path": "/s",
            "mem_backend": {"backend_type": "File", "backend_path": "/m"}
        })
    );
    assert_eq!(
        serde_json::to_string(&EntropyDevice::default()).unwrap(),
        "{}"
    );
}

#[test]
fn deprecated_snapshot_load_fields_are_still_expressible() {
    let body = r#"{"snapshot_path":"/s","mem_file_path":"/m","enable_diff_snapshots":true}"#;
    let load: SnapshotLoadParams = serde_json::from_str(body).expect("parses");
    assert_eq!(
        load.mem_file_path.as_deref(),
        Some(std::path::Path::new("/m"))
    );
    assert_eq!(load.enable_diff_snapshots, Some(true));
    assert!(load.mem_backend.is_none());
    assert_eq!(
        serde_json::to_value(&load).unwrap(),
        serde_json::from_str::<serde_json::Value>(body).unwrap()
    );
}

#[test]
fn mmds_contents_accept_any_object_and_nothing_else() {
    let contents: MmdsContentsObject =
        serde_json::from_value(json!({"a": {"b": [1, 2]}, "c": null})).unwrap();
    assert_eq!(
        serde_json::to_value(&contents).unwrap(),
        json!({"a": {"b": [1, 2]}, "c": null})
    );
    assert!(serde_json::from_value::<MmdsContentsObject>(json!("text")).is_err());
}
