//! Checks the models against Firecracker's own API document.
//!
//! The spec (swagger 2.0, YAML) is read from `FIREHOST_API_SPEC`, or else from
//! `shared/firecracker-v1.16.1/firecracker.yaml` beside the workspace. When it
//! is missing the tests print why and pass, except with `FIREHOST_REQUIRE_SPEC`
//! set (`.ci/run` sets it), where they fail.
//!
//! How the check works:
//!
//! 1. [`models`] pairs every definition of the spec with its Rust type and a
//!    few representative values: one with every optional field set, one with
//!    only the required fields, and one per enum variant where that matters.
//! 2. Each value is serialised and validated with the `jsonschema` crate
//!    against `{"definitions": <the spec's>, "$ref": "#/definitions/<Name>"}`,
//!    so `$ref`s resolve inside the spec. Swagger lets objects carry
//!    undeclared fields; Firecracker does not, so every object schema that
//!    does not say otherwise is given `additionalProperties: false` first.
//! 3. Each value must also survive serialise → deserialise unchanged, and
//!    the table must cover exactly the spec's definitions.
//! 4. Which definitions are request bodies is read from the spec's body
//!    parameters (and what they reference): those types must refuse unknown
//!    fields, the response-only ones must accept them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use firehost_api::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

// ---------------------------------------------------------------- the spec

/// Where the spec is expected.
fn spec_path() -> PathBuf {
    match std::env::var_os("FIREHOST_API_SPEC") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/firecracker-v1.16.1/firecracker.yaml"),
    }
}

/// The whole spec as JSON, or `None` (after saying so) when it is absent
/// unless `FIREHOST_REQUIRE_SPEC` is set.
fn load_spec() -> Option<Value> {
    let path = spec_path();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if std::env::var_os("FIREHOST_REQUIRE_SPEC").is_some() => {
            panic!(
                "spec not found at {} ({err}) and FIREHOST_REQUIRE_SPEC is set",
                path.display()
            )
        }
        Err(err) => {
            println!(
                "skipped: the Firecracker API spec is not at {} ({err}); set FIREHOST_API_SPEC \
                 to check the models against it (FIREHOST_REQUIRE_SPEC=1 makes this a failure)",
                path.display()
            );
            return None;
        }
    };
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|err| panic!("{} is not YAML: {err}", path.display()));
    Some(serde_json::to_value(yaml).expect("the spec converts to JSON"))
}

/// The spec's `definitions`, each object schema closed with
/// `additionalProperties: false` unless it declares its own.
fn closed_definitions(spec: &Value) -> Value {
    fn close(schema: &mut Value) {
        match schema {
            Value::Object(map) => {
                if map.get("type") == Some(&json!("object"))
                    && !map.contains_key("additionalProperties")
                {
                    map.insert("additionalProperties".into(), Value::Bool(false));
                }
                map.values_mut().for_each(close);
            }
            Value::Array(items) => items.iter_mut().for_each(close),
            _ => {}
        }
    }
    let mut definitions = spec["definitions"].clone();
    close(&mut definitions);
    definitions
}

/// Every `"$ref": "#/definitions/X"` under `value`, as `X`.
fn refs_in(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                let name = target
                    .strip_prefix("#/definitions/")
                    .unwrap_or_else(|| panic!("unexpected $ref {target}"));
                out.insert(name.to_owned());
            }
            map.values().for_each(|v| refs_in(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs_in(v, out)),
        _ => {}
    }
}

/// Definitions that appear, directly or through `$ref`s, in a request body.
fn request_definitions(spec: &Value) -> BTreeSet<String> {
    let mut pending = BTreeSet::new();
    for operations in spec["paths"].as_object().expect("paths").values() {
        for operation in operations.as_object().expect("operations").values() {
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                if parameter["in"] == "body" {
                    refs_in(&parameter["schema"], &mut pending);
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    while let Some(name) = pending.pop_first() {
        if seen.insert(name.clone()) {
            refs_in(&spec["definitions"][&name], &mut pending);
        }
    }
    seen
}

/// Validates `instance` against definition `name`; the error lists every
/// violation with its location.
fn validate(definitions: &Value, name: &str, instance: &Value) -> Result<(), String> {
    let root = json!({ "definitions": definitions, "$ref": format!("#/definitions/{name}") });
    let validator = jsonschema::draft4::new(&root)
        .unwrap_or_else(|err| panic!("schema of {name} does not compile: {err}"));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|err| format!("{err} (at '{}')", err.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

// ---------------------------------------------------------------- the table

/// How a type treats fields it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fields {
    /// Refuses them (request bodies).
    Strict,
    /// Ignores them (response bodies).
    Tolerant,
    /// Every field is data (`MmdsContentsObject`), or the type is not an
    /// object.
    Free,
}

/// One representative value of a model, serialised.
struct Sample {
    label: String,
    json: Value,
    /// Deserialises `json` back and compares it with the original.
    round_trip: Box<dyn Fn() -> Result<(), String>>,
    /// Deserialises arbitrary JSON into the sample's type.
    parse: fn(Value) -> Result<(), String>,
}

/// A spec definition, its Rust type's behaviour and its samples.
struct Model {
    definition: &'static str,
    fields: Fields,
    samples: Vec<Sample>,
}

fn parse_as<T: DeserializeOwned>(json: Value) -> Result<(), String> {
    serde_json::from_value::<T>(json)
        .map(drop)
        .map_err(|err| err.to_string())
}

fn model<T>(definition: &'static str, fields: Fields, values: Vec<(&str, T)>) -> Model
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
{
    let samples = values
        .into_iter()
        .map(|(label, value)| {
            let json = serde_json::to_value(&value)
                .unwrap_or_else(|err| panic!("{definition} {label} does not serialise: {err}"));
            let serialised = json.clone();
            Sample {
                label: label.to_owned(),
                json,
                round_trip: Box::new(move || {
                    let back: T =
                        serde_json::from_value(serialised.clone()).map_err(|e| e.to_string())?;
                    if back == value {
                        Ok(())
                    } else {
                        Err(format!("{value:?} came back as {back:?}"))
                    }
                }),
                parse: parse_as::<T>,
            }
        })
        .collect();
    Model {
        definition,
        fields,
        samples,
    }
}

fn bucket() -> TokenBucket {
    TokenBucket {
        one_time_burst: Some(1 << 20),
        refill_time: 100,
        size: 1 << 16,
    }
}

fn limiter() -> RateLimiter {
    RateLimiter {
        bandwidth: Some(bucket()),
        ops: Some(TokenBucket::new(1000, 1000)),
    }
}

fn full_balloon() -> Balloon {
    Balloon {
        amount_mib: 64,
        deflate_on_oom: true,
        stats_polling_interval_s: Some(1),
        free_page_hinting: Some(true),
        free_page_reporting: Some(false),
    }
}

fn full_drive() -> Drive {
    Drive {
        drive_id: "rootfs".into(),
        partuuid: Some("0eaa91a0-01".into()),
        is_root_device: true,
        cache_type: Some(CacheType::Writeback),
        is_read_only: Some(false),
        path_on_host: Some("/srv/rootfs.ext4".into()),
        rate_limiter: Some(limiter()),
        io_engine: Some(IoEngine::Async),
        socket: Some("/run/vhost-blk.sock".into()),
    }
}

fn full_pmem() -> Pmem {
    Pmem {
        root_device: Some(true),
        read_only: Some(true),
        rate_limiter: Some(limiter()),
        ..Pmem::new("pmem0", "/srv/pmem.img")
    }
}

fn full_cpu_config() -> CpuConfig {
    CpuConfig {
        kvm_capabilities: Some(vec!["171".into(), "!56".into()]),
        cpuid_modifiers: Some(vec![full_cpuid_leaf()]),
        msr_modifiers: Some(vec![MsrModifier {
            addr: "0x10a".into(),
            bitmap: format!("0b{}", "x".repeat(64)),
        }]),
        reg_modifiers: Some(vec![ArmRegisterModifier {
            addr: "0x603000000013c020".into(),
            bitmap: "0bx0".into(),
        }]),
        vcpu_features: Some(vec![VcpuFeatures {
            index: 0,
            bitmap: format!("0b{}", "x".repeat(32)),
        }]),
    }
}

fn full_cpuid_leaf() -> CpuidLeafModifier {
    CpuidLeafModifier {
        leaf: "0x1".into(),
        subleaf: "0x0".into(),
        flags: 1,
        modifiers: [
            CpuidRegister::Eax,
            CpuidRegister::Ebx,
            CpuidRegister::Ecx,
            CpuidRegister::Edx,
        ]
        .into_iter()
        .map(|register| CpuidRegisterModifier {
            register,
            bitmap: format!("0b{}1", "x".repeat(31)),
        })
        .collect(),
    }
}

fn full_logger() -> Logger {
    Logger {
        level: Some(LogLevel::Debug),
        log_path: Some("/run/fc.log".into()),
        show_level: Some(true),
        show_log_origin: Some(true),
        module: Some("api_server::request".into()),
    }
}

fn full_machine() -> MachineConfiguration {
    MachineConfiguration {
        cpu_template: Some(CpuTemplate::T2S),
        smt: Some(true),
        mem_size_mib: 1024,
        track_dirty_pages: Some(true),
        vcpu_count: 32,
        huge_pages: Some(HugePages::Hugetlbfs2M),
    }
}

fn full_mmds_config() -> MmdsConfig {
    MmdsConfig {
        version: Some(MmdsVersion::V2),
        ipv4_address: Some(Ipv4Addr::new(169, 254, 170, 2)),
        imds_compat: Some(true),
        ..MmdsConfig::new(["eth0"])
    }
}

fn full_net() -> NetworkInterface {
    NetworkInterface {
        guest_mac: Some("06:00:ac:10:00:02".into()),
        mtu: Some(9000),
        rx_rate_limiter: Some(limiter()),
        tx_rate_limiter: Some(RateLimiter::default()),
        ..NetworkInterface::new("eth0", "tap0")
    }
}

fn full_hotplug() -> MemoryHotplugConfig {
    MemoryHotplugConfig {
        total_size_mib: Some(1024),
        slot_size_mib: Some(128),
        block_size_mib: Some(2),
    }
}

fn full_vsock() -> Vsock {
    Vsock {
        vsock_id: Some("vsock0".into()),
        ..Vsock::new(3, "/run/v.sock")
    }
}

fn full_snapshot_load() -> SnapshotLoadParams {
    SnapshotLoadParams {
        enable_diff_snapshots: Some(true),
        track_dirty_pages: Some(true),
        mem_file_path: Some("/srv/snap/mem".into()),
        mem_backend: Some(MemoryBackend::new(MemoryBackendType::File, "/srv/snap/mem")),
        snapshot_path: "/srv/snap/vmstate".into(),
        resume_vm: Some(true),
        network_overrides: Some(vec![NetworkOverride {
            iface_id: "eth0".into(),
            host_dev_name: "tap9".into(),
        }]),
        vsock_override: Some(VsockOverride {
            uds_path: "/run/v2.sock".into(),
        }),
        clock_realtime: Some(true),
    }
}

fn full_balloon_stats() -> BalloonStats {
    BalloonStats {
        target_pages: 2,
        actual_pages: 1,
        target_mib: 8,
        actual_mib: 4,
        swap_in: Some(1),
        swap_out: Some(2),
        major_faults: Some(3),
        minor_faults: Some(4),
        free_memory: Some(5),
        total_memory: Some(6),
        available_memory: Some(7),
        disk_caches: Some(8),
        hugetlb_allocations: Some(9),
        hugetlb_failures: Some(10),
        oom_kill: Some(11),
        alloc_stall: Some(12),
        async_scan: Some(13),
        direct_scan: Some(14),
        async_reclaim: Some(15),
        direct_reclaim: Some(16),
    }
}

fn full_vm_configuration() -> FullVmConfiguration {
    FullVmConfiguration {
        balloon: Some(full_balloon()),
        drives: Some(vec![
            full_drive(),
            Drive::virtio_block("d1", "/d1", false, true),
        ]),
        boot_source: Some(BootSource::new("/srv/vmlinux")),
        cpu_config: Some(full_cpu_config()),
        logger: Some(full_logger()),
        machine_config: Some(full_machine()),
        metrics: Some(Metrics {
            metrics_path: "/run/metrics".into(),
        }),
        memory_hotplug: Some(full_hotplug()),
        mmds_config: Some(full_mmds_config()),
        network_interfaces: Some(vec![full_net()]),
        pmem: Some(vec![full_pmem()]),
        vsock: Some(full_vsock()),
        entropy: Some(EntropyDevice {
            rate_limiter: Some(limiter()),
        }),
    }
}

fn file_backend() -> MemoryBackend {
    MemoryBackend::new(MemoryBackendType::File, "/m")
}

/// Every definition of the spec, with representative values of its type.
fn models() -> Vec<Model> {
    [
        balloon_models(),
        machine_models(),
        device_models(),
        snapshot_models(),
        instance_models(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn balloon_models() -> Vec<Model> {
    use Fields::{Strict, Tolerant};
    let minimal_stats: BalloonStats = serde_json::from_value(json!({
        "target_pages": 0, "actual_pages": 0, "target_mib": 0, "actual_mib": 0
    }))
    .expect("minimal stats");
    vec![
        model(
            "Balloon",
            Strict,
            vec![
                ("full", full_balloon()),
                ("minimal", Balloon::new(0, false)),
            ],
        ),
        model(
            "BalloonUpdate",
            Strict,
            vec![("minimal", BalloonUpdate { amount_mib: 128 })],
        ),
        model(
            "BalloonStatsUpdate",
            Strict,
            vec![(
                "minimal",
                BalloonStatsUpdate {
                    stats_polling_interval_s: 10,
                },
            )],
        ),
        model(
            "BalloonStats",
            Tolerant,
            vec![("full", full_balloon_stats()), ("minimal", minimal_stats)],
        ),
        model(
            "BalloonStartCmd",
            Strict,
            vec![
                (
                    "full",
                    BalloonStartCmd {
                        acknowledge_on_stop: Some(true),
                    },
                ),
                ("minimal", BalloonStartCmd::default()),
            ],
        ),
        model(
            "BalloonHintingStatus",
            Tolerant,
            vec![
                (
                    "full",
                    BalloonHintingStatus {
                        host_cmd: 1,
                        guest_cmd: Some(2),
                    },
                ),
                (
                    "minimal",
                    BalloonHintingStatus {
                        host_cmd: 0,
                        guest_cmd: None,
                    },
                ),
            ],
        ),
    ]
}

fn machine_models() -> Vec<Model> {
    use Fields::{Free, Strict};
    let templates = [
        CpuTemplate::C3,
        CpuTemplate::T2,
        CpuTemplate::T2S,
        CpuTemplate::T2CL,
        CpuTemplate::T2A,
        CpuTemplate::V1N1,
        CpuTemplate::None,
    ];
    let no_template = MachineConfiguration {
        cpu_template: Some(CpuTemplate::None),
        huge_pages: Some(HugePages::None),
        ..MachineConfiguration::new(2, 256)
    };
    let minimal_leaf = CpuidLeafModifier {
        modifiers: vec![],
        ..full_cpuid_leaf()
    };
    vec![
        model(
            "BootSource",
            Strict,
            vec![
                (
                    "full",
                    BootSource {
                        boot_args: Some("console=ttyS0".into()),
                        initrd_path: Some("/srv/initrd".into()),
                        kernel_image_path: "/srv/vmlinux".into(),
                    },
                ),
                ("minimal", BootSource::new("/srv/vmlinux")),
            ],
        ),
        model(
            "MachineConfiguration",
            Strict,
            vec![
                ("full", full_machine()),
                ("minimal", MachineConfiguration::new(1, 128)),
                ("no-template", no_template),
            ],
        ),
        model(
            "CpuTemplate",
            Free,
            templates.into_iter().map(|t| ("variant", t)).collect(),
        ),
        model(
            "CpuConfig",
            Strict,
            vec![
                ("full", full_cpu_config()),
                ("minimal", CpuConfig::default()),
            ],
        ),
        model(
            "CpuidLeafModifier",
            Strict,
            vec![("full", full_cpuid_leaf()), ("minimal", minimal_leaf)],
        ),
        model(
            "CpuidRegisterModifier",
            Strict,
            full_cpuid_leaf()
                .modifiers
                .into_iter()
                .map(|m| ("variant", m))
                .collect(),
        ),
        model(
            "MsrModifier",
            Strict,
            vec![(
                "minimal",
                MsrModifier {
                    addr: "266".into(),
                    bitmap: "0b1".into(),
                },
            )],
        ),
        model(
            "ArmRegisterModifier",
            Strict,
            vec![(
                "minimal",
                ArmRegisterModifier {
                    addr: "0x0".into(),
                    bitmap: "0b0".into(),
                },
            )],
        ),
        model(
            "VcpuFeatures",
            Strict,
            vec![(
                "minimal",
                VcpuFeatures {
                    index: 0,
                    bitmap: "0b1".into(),
                },
            )],
        ),
        model(
            "MemoryHotplugConfig",
            Strict,
            vec![
                ("full", full_hotplug()),
                ("minimal", MemoryHotplugConfig::default()),
            ],
        ),
        model(
            "MemoryHotplugSizeUpdate",
            Strict,
            vec![
                (
                    "full",
                    MemoryHotplugSizeUpdate {
                        requested_size_mib: Some(512),
                    },
                ),
                ("minimal", MemoryHotplugSizeUpdate::default()),
            ],
        ),
        model(
            "MemoryHotplugStatus",
            Fields::Tolerant,
            vec![
                (
                    "full",
                    MemoryHotplugStatus {
                        total_size_mib: Some(1024),
                        slot_size_mib: Some(128),
                        block_size_mib: Some(2),
                        plugged_size_mib: Some(256),
                        requested_size_mib: Some(512),
                    },
                ),
                ("minimal", MemoryHotplugStatus::default()),
            ],
        ),
    ]
}

fn device_models() -> Vec<Model> {
    use Fields::{Free, Strict};
    let minimal_drive = Drive {
        is_read_only: None,
        path_on_host: None,
        ..Drive::virtio_block("d", "/", false, false)
    };
    let unsafe_sync_drive = Drive {
        cache_type: Some(CacheType::Unsafe),
        io_engine: Some(IoEngine::Sync),
        ..full_drive()
    };
    let full_partial_drive = PartialDrive {
        drive_id: "d".into(),
        path_on_host: Some("/new".into()),
        rate_limiter: Some(limiter()),
    };
    let full_partial_net = PartialNetworkInterface {
        iface_id: "eth0".into(),
        rx_rate_limiter: Some(limiter()),
        tx_rate_limiter: Some(limiter()),
    };
    let mmds: MmdsContentsObject = serde_json::from_value(json!({
        "latest": { "meta-data": { "ami-id": "ami-1", "tags": [1, "two", null, 3.5, true] } }
    }))
    .expect("an object");
    let full_serial = SerialDevice {
        serial_out_path: Some("/run/serial".into()),
        rate_limiter: Some(bucket()),
    };
    vec![
        model(
            "Drive",
            Strict,
            vec![
                ("full", full_drive()),
                ("minimal", minimal_drive),
                (
                    "virtio-block",
                    Drive::virtio_block("data", "/data.img", false, true),
                ),
                (
                    "vhost-user-block",
                    Drive::vhost_user_block("vu", "/run/vu.sock", false),
                ),
                ("unsafe-sync", unsafe_sync_drive),
            ],
        ),
        model(
            "PartialDrive",
            Strict,
            vec![
                ("full", full_partial_drive),
                (
                    "minimal",
                    PartialDrive {
                        drive_id: "d".into(),
                        path_on_host: None,
                        rate_limiter: None,
                    },
                ),
            ],
        ),
        model(
            "Pmem",
            Strict,
            vec![
                ("full", full_pmem()),
                ("minimal", Pmem::new("pmem0", "/srv/pmem.img")),
            ],
        ),
        model(
            "PartialPmem",
            Strict,
            vec![
                (
                    "full",
                    PartialPmem {
                        id: "pmem0".into(),
                        rate_limiter: Some(limiter()),
                    },
                ),
                (
                    "minimal",
                    PartialPmem {
                        id: "pmem0".into(),
                        rate_limiter: None,
                    },
                ),
            ],
        ),
        model(
            "NetworkInterface",
            Strict,
            vec![
                ("full", full_net()),
                ("minimal", NetworkInterface::new("eth0", "tap0")),
            ],
        ),
        model(
            "PartialNetworkInterface",
            Strict,
            vec![
                ("full", full_partial_net),
                (
                    "minimal",
                    PartialNetworkInterface {
                        iface_id: "eth0".into(),
                        rx_rate_limiter: None,
                        tx_rate_limiter: None,
                    },
                ),
            ],
        ),
        model(
            "RateLimiter",
            Strict,
            vec![("full", limiter()), ("minimal", RateLimiter::default())],
        ),
        model(
            "TokenBucket",
            Strict,
            vec![
                ("full", bucket()),
                ("minimal", TokenBucket::new(0, 0)),
                ("large", TokenBucket::new(u64::MAX >> 1, 1)),
            ],
        ),
        model(
            "Vsock",
            Strict,
            vec![
                ("full", full_vsock()),
                ("minimal", Vsock::new(3, "/run/v.sock")),
            ],
        ),
        model(
            "EntropyDevice",
            Strict,
            vec![
                (
                    "full",
                    EntropyDevice {
                        rate_limiter: Some(limiter()),
                    },
                ),
                ("minimal", EntropyDevice::default()),
            ],
        ),
        model(
            "SerialDevice",
            Strict,
            vec![("full", full_serial), ("minimal", SerialDevice::default())],
        ),
        model(
            "Logger",
            Strict,
            LogLevel::ALL
                .into_iter()
                .map(|level| {
                    (
                        "variant",
                        Logger {
                            level: Some(level),
                            ..full_logger()
                        },
                    )
                })
                .chain([("minimal", Logger::default())])
                .collect(),
        ),
        model(
            "Metrics",
            Strict,
            vec![(
                "minimal",
                Metrics {
                    metrics_path: "/run/metrics".into(),
                },
            )],
        ),
        model(
            "MmdsConfig",
            Strict,
            vec![
                ("full", full_mmds_config()),
                ("minimal", MmdsConfig::new(Vec::<String>::new())),
                (
                    "v1",
                    MmdsConfig {
                        version: Some(MmdsVersion::V1),
                        ..MmdsConfig::new(["eth0", "eth1"])
                    },
                ),
            ],
        ),
        model(
            "MmdsContentsObject",
            Free,
            vec![("full", mmds), ("minimal", MmdsContentsObject::default())],
        ),
    ]
}

fn snapshot_models() -> Vec<Model> {
    use Fields::Strict;
    let create = |snapshot_type| SnapshotCreateParams {
        snapshot_type,
        ..SnapshotCreateParams::new("/s", "/m")
    };
    let minimal_load = SnapshotLoadParams {
        mem_backend: None,
        ..SnapshotLoadParams::new("/s", file_backend())
    };
    let deprecated_load = SnapshotLoadParams {
        mem_backend: None,
        mem_file_path: Some("/m".into()),
        enable_diff_snapshots: Some(true),
        ..SnapshotLoadParams::new("/s", file_backend())
    };
    vec![
        model(
            "SnapshotCreateParams",
            Strict,
            vec![
                ("diff", create(Some(SnapshotType::Diff))),
                ("full", create(Some(SnapshotType::Full))),
                ("minimal", create(None)),
            ],
        ),
        model(
            "SnapshotLoadParams",
            Strict,
            vec![
                ("full", full_snapshot_load()),
                ("minimal", minimal_load),
                ("deprecated", deprecated_load),
            ],
        ),
        model(
            "MemoryBackend",
            Strict,
            vec![
                ("file", file_backend()),
                (
                    "uffd",
                    MemoryBackend::new(MemoryBackendType::Uffd, "/run/uffd.sock"),
                ),
            ],
        ),
        model(
            "NetworkOverride",
            Strict,
            vec![(
                "minimal",
                NetworkOverride {
                    iface_id: "eth0".into(),
                    host_dev_name: "tap1".into(),
                },
            )],
        ),
        model(
            "VsockOverride",
            Strict,
            vec![(
                "minimal",
                VsockOverride {
                    uds_path: "/run/v.sock".into(),
                },
            )],
        ),
    ]
}

fn instance_models() -> Vec<Model> {
    use Fields::{Strict, Tolerant};
    let actions = [
        ActionType::FlushMetrics,
        ActionType::InstanceStart,
        ActionType::SendCtrlAltDel,
    ];
    let states = [
        InstanceState::NotStarted,
        InstanceState::Running,
        InstanceState::Paused,
    ];
    let info = |state| InstanceInfo {
        app_name: "Firecracker".into(),
        id: "vm-1".into(),
        state,
        vmm_version: "1.16.1".into(),
    };
    vec![
        model(
            "InstanceActionInfo",
            Strict,
            actions
                .into_iter()
                .map(|a| ("variant", InstanceActionInfo::new(a)))
                .collect(),
        ),
        model(
            "InstanceInfo",
            Tolerant,
            states.into_iter().map(|s| ("variant", info(s))).collect(),
        ),
        model(
            "Vm",
            Strict,
            [VmState::Paused, VmState::Resumed]
                .into_iter()
                .map(|state| ("variant", Vm { state }))
                .collect(),
        ),
        model(
            "FirecrackerVersion",
            Tolerant,
            vec![(
                "minimal",
                FirecrackerVersion {
                    firecracker_version: "1.16.1".into(),
                },
            )],
        ),
        model(
            "FullVmConfiguration",
            Tolerant,
            vec![
                ("full", full_vm_configuration()),
                ("minimal", FullVmConfiguration::default()),
            ],
        ),
        model(
            "Error",
            Tolerant,
            vec![
                (
                    "full",
                    Error {
                        fault_message: Some("Invalid request".into()),
                    },
                ),
                ("minimal", Error::default()),
            ],
        ),
    ]
}

// ---------------------------------------------------------------- the tests

#[test]
fn every_spec_definition_has_exactly_one_model() {
    let Some(spec) = load_spec() else { return };
    let in_spec: BTreeSet<&str> = spec["definitions"]
        .as_object()
        .expect("definitions")
        .keys()
        .map(String::as_str)
        .collect();
    let models = models();
    let mut in_table = BTreeMap::new();
    for m in &models {
        *in_table.entry(m.definition).or_insert(0) += 1;
    }
    let missing: Vec<_> = in_spec
        .iter()
        .filter(|name| !in_table.contains_key(*name))
        .collect();
    let stale: Vec<_> = in_table
        .keys()
        .filter(|name| !in_spec.contains(*name))
        .collect();
    let doubled: Vec<_> = in_table
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(name, _)| name)
        .collect();
    assert!(
        missing.is_empty(),
        "spec definitions without a model: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "models of definitions the spec no longer has: {stale:?}"
    );
    assert!(doubled.is_empty(), "definitions listed twice: {doubled:?}");
}

#[test]
fn every_sample_validates_against_its_definition() {
    let Some(spec) = load_spec() else { return };
    let definitions = closed_definitions(&spec);
    let mut failures = Vec::new();
    for m in models() {
        assert!(!m.samples.is_empty(), "{} has no sample", m.definition);
        for sample in &m.samples {
            if let Err(why) = validate(&definitions, m.definition, &sample.json) {
                failures.push(format!(
                    "{} ({}): {why}\n    {}",
                    m.definition, sample.label, sample.json
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "samples the spec rejects:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_sample_round_trips() {
    let failures: Vec<String> = models()
        .iter()
        .flat_map(|m| m.samples.iter().map(move |s| (m.definition, s)))
        .filter_map(|(name, s)| {
            (s.round_trip)()
                .err()
                .map(|why| format!("{name} ({}): {why}", s.label))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "samples that do not round-trip:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_optional_field_is_set_in_some_sample() {
    // The "full" samples must exercise every property the spec declares, or
    // a wrongly named optional field would go unnoticed.
    let Some(spec) = load_spec() else { return };
    let mut failures = Vec::new();
    for m in models() {
        let Some(properties) = spec["definitions"][m.definition]["properties"].as_object() else {
            continue;
        };
        for property in properties.keys() {
            if !m.samples.iter().any(|s| s.json.get(property).is_some()) {
                failures.push(format!("{}.{property}", m.definition));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "properties no sample sets: {failures:?}"
    );
}

#[test]
fn request_bodies_refuse_unknown_fields_and_responses_accept_them() {
    let Some(spec) = load_spec() else { return };
    let requests = request_definitions(&spec);
    let mut failures = Vec::new();
    for m in models() {
        let schema = &spec["definitions"][m.definition];
        let expected = if schema["type"] != "object" || schema.get("additionalProperties").is_some()
        {
            Fields::Free
        } else if requests.contains(m.definition) {
            Fields::Strict
        } else {
            Fields::Tolerant
        };
        if m.fields != expected {
            failures.push(format!(
                "{} is marked {:?}, the spec makes it {expected:?}",
                m.definition, m.fields
            ));
            continue;
        }
        for sample in &m.samples {
            let Value::Object(mut body) = sample.json.clone() else {
                continue;
            };
            body.insert("not_in_the_spec".into(), json!(1));
            let outcome = (sample.parse)(Value::Object(body));
            match (m.fields, outcome) {
                (Fields::Strict, Ok(())) => failures.push(format!(
                    "{} ({}) accepted an unknown field",
                    m.definition, sample.label
                )),
                (Fields::Tolerant | Fields::Free, Err(why)) => failures.push(format!(
                    "{} ({}) refused an unknown field: {why}",
                    m.definition, sample.label
                )),
                _ => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn schema_check_rejects_undeclared_fields_bad_enums_and_out_of_range_values() {
    // Guards the check itself: the closed schemas must catch what Firecracker
    // would refuse.
    let Some(spec) = load_spec() else { return };
    let definitions = closed_definitions(&spec);
    let cases = [
        (
            "Balloon",
            json!({"amount_mib": 1, "deflate_on_oom": true, "extra": 1}),
        ),
        ("Balloon", json!({"amount_mib": 1})),
        ("Vm", json!({"state": "Running"})),
        (
            "InstanceInfo",
            json!({"app_name": "a", "id": "i", "state": "NotStarted", "vmm_version": "1"}),
        ),
        (
            "MachineConfiguration",
            json!({"mem_size_mib": 128, "vcpu_count": 33}),
        ),
        (
            "NetworkInterface",
            json!({"iface_id": "e", "host_dev_name": "t", "mtu": 67}),
        ),
        ("Vsock", json!({"guest_cid": 2, "uds_path": "/v"})),
        ("TokenBucket", json!({"size": -1, "refill_time": 0})),
        ("Drive", json!({"drive_id": "d", "is_root_device": "yes"})),
        (
            "SnapshotLoadParams",
            json!({
                "snapshot_path": "/s",
                "mem_backend": {"backend_type": "File", "backend_path": "/m", "x": 1}
            }),
        ),
    ];
    for (name, instance) in cases {
        assert!(
            validate(&definitions, name, &instance).is_err(),
            "{name} accepted {instance}"
        );
    }
}
