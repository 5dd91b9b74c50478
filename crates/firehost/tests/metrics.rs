//! Each VM's Firecracker metrics through the manager: flushed on demand,
//! typed, per device, and as a stream. Against fake-firecracker, or a real
//! Firecracker with `FIREHOST_FIRECRACKER` (see `common`).

mod common;

use std::time::Duration;

use common::{TestHost, id, within};
use firehost::spec::DriveSpec;
use firehost::{Manager, VmError, VmSpec};

const LONG: Duration = Duration::from_secs(20);

async fn manager_with_metrics(host: &TestHost) -> Manager {
    let mut config = host.config();
    config.vmm_metrics = true;
    Manager::open(config).await.unwrap()
}

fn with_data_drive(host: &TestHost) -> VmSpec {
    let data = host.dir.path().join("data.img");
    std::fs::write(&data, vec![0u8; 4096]).unwrap();
    VmSpec {
        extra_drives: vec![DriveSpec::new("data", &data, true)],
        ..host.spec()
    }
}

#[tokio::test]
async fn a_flush_names_every_drive_and_counts_itself() {
    let host = TestHost::new();
    let manager = manager_with_metrics(&host).await;
    let vm = id("measured");
    manager.run(&vm, with_data_drive(&host)).await.unwrap();

    let first = within("a flush", LONG, manager.metrics(&vm)).await.unwrap();
    assert_eq!(first.vm, vm);
    let drives: Vec<&str> = first.metrics.drives.keys().map(String::as_str).collect();
    assert_eq!(drives, ["data", "rootfs"]);
    // The flush is a PUT /actions of its own interval.
    assert!(first.metrics.api.requests >= 1, "{first:?}");
    assert!(first.metrics.utc_timestamp_ms > 0);

    let second = within("a flush", LONG, manager.metrics(&vm)).await.unwrap();
    assert!(second.metrics.utc_timestamp_ms >= first.metrics.utc_timestamp_ms);
    let interval = second.interval_ms.expect("the flush before is in the file");
    assert_eq!(
        interval,
        second.metrics.utc_timestamp_ms - first.metrics.utc_timestamp_ms
    );
}

#[tokio::test]
async fn metrics_need_a_manager_that_collects_them_and_a_live_vmm() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("unmeasured");
    manager.run(&vm, host.spec()).await.unwrap();
    let err = manager.metrics(&vm).await.unwrap_err();
    assert!(matches!(err, VmError::MetricsOff { .. }), "{err:?}");
    drop(manager);

    let manager = manager_with_metrics(&host).await;
    let err = manager.metrics(&id("missing")).await.unwrap_err();
    assert!(matches!(err, VmError::NotFound { .. }), "{err:?}");
    manager
        .stop(&vm, firehost::manager::StopOptions::default())
        .await
        .unwrap();
    let err = manager.metrics(&vm).await.unwrap_err();
    assert!(matches!(err, VmError::VmmExited { .. }), "{err:?}");
}

#[tokio::test]
async fn a_subscription_flushes_every_interval_and_ends_with_the_vm() {
    let host = TestHost::new();
    let manager = manager_with_metrics(&host).await;
    let vm = id("watched");
    manager.run(&vm, host.spec()).await.unwrap();
    let mut stream = manager.subscribe_metrics(&vm, Duration::from_millis(50));
    let mut stamps = Vec::new();
    for _ in 0..3 {
        let flush = within("a flush", LONG, stream.next())
            .await
            .expect("the stream goes on")
            .unwrap();
        stamps.push(flush.metrics.utc_timestamp_ms);
    }
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");

    manager
        .stop(&vm, firehost::manager::StopOptions::default())
        .await
        .unwrap();
    // What was in flight may still arrive, or fail as the VMM goes; the
    // stream ends on the error that says the VMM is gone.
    let last = within("the end of the stream", LONG, async {
        let mut last = None;
        while let Some(flush) = stream.next().await {
            last = Some(flush);
        }
        last
    })
    .await;
    assert!(
        matches!(last, Some(Err(VmError::VmmExited { .. }))),
        "{last:?}"
    );
}
