//! Create is a transaction: a failure at any step leaves no process,
//! socket, directory, record or registry entry behind.

mod common;

use firehost_testkit::fake_only;
use std::time::Duration;

use common::{TestHost, id};
use firehost::vmm::{ReadyError, SpawnError};
use firehost::{DriveSpec, Manager, VmError, VmSpec};

/// What a failed create must leave behind: nothing.
async fn assert_no_trace(host: &TestHost, manager: &Manager, vm: &firehost::VmId) {
    assert!(host.vm_dirs().is_empty(), "left dirs: {:?}", host.vm_dirs());
    assert!(
        host.vmm_pids(vm).is_empty(),
        "left VMMs: {:?}",
        host.vmm_pids(vm)
    );
    assert!(manager.list().await.is_empty());
    assert!(matches!(
        manager.get(vm).await,
        Err(VmError::NotFound { .. })
    ));
}

/// Opens a manager whose fake VMM has `faults`, creates (or runs) a VM, and
/// returns the error after checking that nothing is left.
async fn failing(faults: &[(&str, &str)], spec_extra: Option<VmSpec>, run: bool) -> VmError {
    let host = TestHost::new();
    let mut config = host.config_with_faults(faults);
    config.timeouts.api_socket = Duration::from_millis(500);
    let manager = Manager::open(config).await.unwrap();
    let vm = id("doomed");
    let spec = spec_extra.unwrap_or_else(|| host.spec());
    let attempt = || async {
        if run {
            manager.run(&vm, spec.clone()).await
        } else {
            manager.create(&vm, spec.clone()).await
        }
    };
    let err = attempt().await.expect_err("the create should fail");
    assert_no_trace(&host, &manager, &vm).await;
    // The id is free again: the same failure, not "already exists".
    let again = attempt().await.expect_err("fails again");
    assert!(!matches!(again, VmError::AlreadyExists { .. }), "{again:?}");
    assert_no_trace(&host, &manager, &vm).await;
    err
}

fn api_step(err: &VmError) -> &'static str {
    match err {
        VmError::Api { op, .. } => op,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn failing_config_calls_roll_back_the_whole_create() {
    fake_only!("fault injection");
    let host = TestHost::new();
    let data = host.dir.path().join("data.img");
    std::fs::write(&data, b"d").unwrap();
    let with_data = VmSpec {
        extra_drives: vec![DriveSpec::new("data", data, true)],
        vsock: Some(firehost::vsock::VsockSpec::default()),
        ..VmSpec::default()
    };
    // Every step of create that talks to the VMM (the network's steps are
    // in net_manager.rs: they need a network namespace). A feature that
    // adds a step adds it here.
    let cases = [
        ("PUT /machine-config", "configure the machine"),
        ("PUT /boot-source", "configure the boot source"),
        ("PUT /drives/rootfs", "attach a drive"),
        ("PUT /drives/data", "attach a drive"),
        ("PUT /vsock", "attach the vsock device"),
    ];
    for (endpoint, step) in cases {
        let err = failing(
            &[("FAKE_FC_FAIL", endpoint)],
            Some(with_data.clone()),
            false,
        )
        .await;
        assert_eq!(api_step(&err), step, "{endpoint}");
        assert_eq!(
            err.fault().map(|(s, m)| (s.as_u16(), m.to_owned())),
            Some((400, "injected failure".to_owned())),
            "{endpoint}"
        );
    }
}

#[tokio::test]
async fn failing_start_in_run_rolls_back_the_created_vm() {
    fake_only!("fault injection");
    let err = failing(&[("FAKE_FC_FAIL", "PUT /actions")], None, true).await;
    assert_eq!(api_step(&err), "start the guest");
}

#[tokio::test]
async fn vmm_crashing_at_each_request_rolls_back() {
    fake_only!("fault injection");
    // Requests of a run: machine-config, boot-source, drive, InstanceStart.
    for n in 0..4 {
        let n_text = n.to_string();
        let err = failing(&[("FAKE_FC_CRASH_AFTER_REQUESTS", &n_text)], None, true).await;
        assert!(
            matches!(err, VmError::Api { .. }),
            "crash after {n}: {err:?}"
        );
    }
}

#[tokio::test]
async fn socket_that_never_appears_times_out_and_rolls_back() {
    fake_only!("fault injection");
    let err = failing(&[("FAKE_FC_NO_SOCKET", "1")], None, false).await;
    assert!(
        matches!(
            err,
            VmError::NotReady {
                source: ReadyError::Timeout { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn vmm_exiting_before_its_socket_is_reported_with_its_output() {
    early_exit_reports_the_output(firehost::manager::ConsoleTarget::Ring).await;
}

#[tokio::test]
async fn with_the_console_in_a_file_the_last_words_are_there_too() {
    // The log keeper copies them; the tail waits for it to finish.
    early_exit_reports_the_output(firehost::manager::ConsoleTarget::File).await;
}

async fn early_exit_reports_the_output(console: firehost::manager::ConsoleTarget) {
    let host = TestHost::new();
    let script = host.dir.path().join("broken-firecracker");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'cannot open /dev/kvm' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut config = host.config();
    config.firecracker = script;
    config.console = console;
    let manager = Manager::open(config).await.unwrap();
    let vm = id("early-exit");
    let err = manager.create(&vm, host.spec()).await.unwrap_err();
    let VmError::NotReady {
        source: ReadyError::Exited { exit, .. },
        console_tail,
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(*exit, firehost::ExitReason::Code(1));
    assert!(
        console_tail
            .iter()
            .any(|l| l.contains("cannot open /dev/kvm")),
        "{console_tail:?}"
    );
    assert_no_trace(&host, &manager, &vm).await;
}

#[tokio::test]
async fn missing_vmm_binary_fails_the_spawn_and_rolls_back() {
    let host = TestHost::new();
    let mut config = host.config();
    config.firecracker = host.dir.path().join("no-such-firecracker");
    let manager = Manager::open(config).await.unwrap();
    let vm = id("no-binary");
    let err = manager.create(&vm, host.spec()).await.unwrap_err();
    assert!(
        matches!(
            err,
            VmError::Spawn {
                source: SpawnError::Exec { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_no_trace(&host, &manager, &vm).await;
}

#[tokio::test]
async fn invalid_spec_fails_before_anything_is_created() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let vm = id("invalid");
    let specs = [
        VmSpec {
            vcpus: Some(0),
            ..VmSpec::default()
        },
        VmSpec {
            vcpus: Some(33),
            ..VmSpec::default()
        },
        VmSpec {
            mem_mib: Some(0),
            ..VmSpec::default()
        },
        VmSpec {
            kernel: Some(host.dir.path().join("missing")),
            ..VmSpec::default()
        },
        VmSpec {
            rootfs: Some(host.dir.path().join("missing.ext4")),
            ..VmSpec::default()
        },
    ];
    for spec in specs {
        let err = manager.create(&vm, spec.clone()).await.unwrap_err();
        assert!(
            matches!(err, VmError::InvalidSpec { .. }),
            "{spec:?}: {err:?}"
        );
        assert_no_trace(&host, &manager, &vm).await;
    }
}

#[tokio::test]
async fn socket_path_over_the_unix_limit_is_refused() {
    let host = TestHost::new();
    let mut config = host.config();
    // 100 bytes of state-dir path leave no room for vms/<id>/api.sock.
    let long = host
        .dir
        .path()
        .join("s".repeat(100 - host.dir.path().as_os_str().len()));
    config.state_dir = long;
    let manager = Manager::open(config).await.unwrap();
    let vm = id("long-path");
    let err = manager.create(&vm, host.spec()).await.unwrap_err();
    assert!(matches!(err, VmError::SocketPathTooLong { .. }), "{err:?}");
    assert!(manager.list().await.is_empty());
}

#[tokio::test]
async fn dropping_a_create_midway_still_leaves_no_trace() {
    fake_only!("fault injection");
    let host = TestHost::new();
    // The boot source request fails after a delay, while the caller has
    // long given up: the transaction must still unwind.
    let config = host.config_with_faults(&[
        ("FAKE_FC_DELAY_MS", "PUT /boot-source=300"),
        ("FAKE_FC_FAIL", "PUT /boot-source"),
    ]);
    let manager = Manager::open(config).await.unwrap();
    let vm = id("abandoned");
    // Give up on the create once its VM directory exists (it is under way).
    let under_way = async {
        while host.vm_dirs().is_empty() {
            tokio::task::yield_now().await;
        }
    };
    tokio::select! {
        _ = manager.create(&vm, host.spec()) => panic!("the create should still be waiting"),
        _ = under_way => {}
    }
    // The create goes on in its own task and unwinds when the fault hits.
    common::within(
        "the abandoned create to unwind",
        Duration::from_secs(10),
        async {
            while !host.vm_dirs().is_empty() || !host.vmm_pids(&vm).is_empty() {
                tokio::task::yield_now().await;
            }
        },
    )
    .await;
    assert!(manager.list().await.is_empty());
}
