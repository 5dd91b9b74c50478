//! Every operation of Firecracker's API spec has a client method: each
//! method is called against a recording server, and the set of
//! (method, path template) pairs that arrived must equal the spec's.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use firehost::api::ApiClient;
use firehost::api::models::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

fn spec_path() -> Option<PathBuf> {
    let path = std::env::var_os("FIREHOST_API_SPEC")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/firecracker-v1.16.1/firecracker.yaml")
        });
    if path.exists() {
        Some(path)
    } else if std::env::var_os("FIREHOST_REQUIRE_SPEC").is_some() {
        panic!("the API spec is missing at {path:?} and FIREHOST_REQUIRE_SPEC is set");
    } else {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped: the Firecracker API spec is not at {path:?}; set FIREHOST_API_SPEC \
             to check the client against it (FIREHOST_REQUIRE_SPEC=1 makes this a failure)"
        );
        None
    }
}

/// (METHOD, /path/{template}) for every operation in the spec.
fn spec_operations(path: &PathBuf) -> BTreeSet<(String, String)> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut ops = BTreeSet::new();
    for (p, item) in doc["paths"].as_mapping().unwrap() {
        for (method, _) in item.as_mapping().unwrap() {
            let method = method.as_str().unwrap().to_uppercase();
            if ["GET", "PUT", "PATCH", "POST", "DELETE"].contains(&method.as_str()) {
                ops.insert((method, p.as_str().unwrap().to_owned()));
            }
        }
    }
    ops
}

/// Maps a concrete path back to the spec's template.
fn template(path: &str) -> String {
    for prefix in ["/drives/", "/network-interfaces/", "/pmem/"] {
        if let Some(rest) = path.strip_prefix(prefix) {
            let param = match prefix {
                "/drives/" => "{drive_id}",
                "/network-interfaces/" => "{iface_id}",
                _ => "{id}",
            };
            assert!(!rest.contains('/'));
            return format!("{prefix}{param}");
        }
    }
    path.to_owned()
}

/// Answers every request with 400 and records its request line. The
/// client's answer parsing is tested elsewhere; here only the requests
/// matter.
async fn recording_server(listener: UnixListener, seen: Arc<Mutex<Vec<(String, String)>>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_owned();
                let path = parts.next().unwrap_or_default().to_owned();
                let mut length = 0usize;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).await.unwrap();
                    if header == "\r\n" {
                        break;
                    }
                    if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).await.unwrap();
                seen.lock().unwrap().push((method, template(&path)));
                let answer = br#"{"fault_message":"recorded"}"#;
                let head = format!(
                    "HTTP/1.1 400 \r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    answer.len()
                );
                let stream = reader.get_mut();
                stream.write_all(head.as_bytes()).await.unwrap();
                stream.write_all(answer).await.unwrap();
            }
        });
    }
}

#[tokio::test]
async fn every_spec_operation_has_a_client_method() {
    let Some(spec) = spec_path() else { return };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(recording_server(listener, seen.clone()));

    let api = ApiClient::new(&socket);
    let drive = Drive::virtio_block("d1", "/img", false, false);
    let action = InstanceActionInfo {
        action_type: ActionType::FlushMetrics,
    };
    // Each call fails with the recorded 400; only the request counts.
    let _ = api.describe_instance().await;
    let _ = api.create_sync_action(&action).await;
    let _ = api.get_firecracker_version().await;
    let _ = api
        .patch_vm(&Vm {
            state: VmState::Paused,
        })
        .await;
    let _ = api.get_export_vm_config().await;
    let _ = api.describe_balloon_config().await;
    let _ = api.put_balloon(&Balloon::new(64, true)).await;
    let _ = api.patch_balloon(&BalloonUpdate { amount_mib: 32 }).await;
    let _ = api.describe_balloon_stats().await;
    let _ = api
        .patch_balloon_stats_interval(&BalloonStatsUpdate {
            stats_polling_interval_s: 1,
        })
        .await;
    let _ = api.start_balloon_hinting(None).await;
    let _ = api.describe_balloon_hinting().await;
    let _ = api.stop_balloon_hinting().await;
    let _ = api.put_guest_boot_source(&BootSource::new("/k")).await;
    let _ = api.put_cpu_configuration(&CpuConfig::default()).await;
    let _ = api.get_machine_configuration().await;
    let _ = api
        .put_machine_configuration(&MachineConfiguration::new(1, 128))
        .await;
    let _ = api
        .patch_machine_configuration(&MachineConfiguration::new(1, 128))
        .await;
    let _ = api.put_guest_drive_by_id(&drive).await;
    let _ = api
        .patch_guest_drive_by_id(&PartialDrive {
            drive_id: "d1".into(),
            path_on_host: None,
            rate_limiter: None,
        })
        .await;
    let _ = api.put_guest_pmem_by_id(&Pmem::new("p1", "/pmem")).await;
    let _ = api
        .patch_guest_pmem_by_id(&PartialPmem {
            id: "p1".into(),
            rate_limiter: None,
        })
        .await;
    let _ = api.put_logger(&Logger::default()).await;
    let _ = api
        .put_metrics(&Metrics {
            metrics_path: "/m".into(),
        })
        .await;
    let _ = api.put_mmds(&MmdsContentsObject::default()).await;
    let _ = api.patch_mmds(&MmdsContentsObject::default()).await;
    let _ = api.get_mmds().await;
    let _ = api.put_mmds_config(&MmdsConfig::new(["eth0"])).await;
    let _ = api.put_entropy_device(&EntropyDevice::default()).await;
    let _ = api.put_serial_device(&SerialDevice::default()).await;
    let _ = api
        .put_memory_hotplug(&MemoryHotplugConfig::default())
        .await;
    let _ = api
        .patch_memory_hotplug(&MemoryHotplugSizeUpdate {
            requested_size_mib: Some(0),
        })
        .await;
    let _ = api.get_memory_hotplug().await;
    let _ = api
        .put_guest_network_interface_by_id(&NetworkInterface::new("eth0", "tap0"))
        .await;
    let _ = api
        .patch_guest_network_interface_by_id(&PartialNetworkInterface {
            iface_id: "eth0".into(),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        })
        .await;
    let _ = api.put_guest_vsock(&Vsock::new(3, "/v.sock")).await;
    let _ = api
        .create_snapshot(&SnapshotCreateParams::new("/s", "/m"))
        .await;
    let _ = api
        .load_snapshot(&SnapshotLoadParams::new(
            "/s",
            MemoryBackend::new(MemoryBackendType::File, "/m"),
        ))
        .await;

    let called: BTreeSet<_> = seen.lock().unwrap().iter().cloned().collect();
    let wanted = spec_operations(&spec);
    let missing: Vec<_> = wanted.difference(&called).collect();
    let extra: Vec<_> = called.difference(&wanted).collect();
    assert!(
        missing.is_empty(),
        "spec operations without a client method: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "client requests not in the spec: {extra:?}"
    );
}

#[tokio::test]
async fn fault_message_and_status_reach_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    tokio::spawn(recording_server(listener, Arc::new(Mutex::new(Vec::new()))));
    let api = ApiClient::new(&socket);
    let err = api.describe_instance().await.unwrap_err();
    let (status, message) = err.fault().expect("a fault");
    assert_eq!((status.as_u16(), message), (400, "recorded"));
    // One kept-alive connection serves many requests.
    for _ in 0..10 {
        assert!(
            api.get_firecracker_version()
                .await
                .unwrap_err()
                .fault()
                .is_some()
        );
    }
}

#[tokio::test]
async fn request_to_a_missing_socket_is_a_connect_error() {
    let api = ApiClient::new("/nonexistent/firehost/api.sock");
    let err = api.describe_instance().await.unwrap_err();
    assert!(
        matches!(err, firehost::api::ApiError::Connect { .. }),
        "{err:?}"
    );
}
