//! One conformance suite, two providers: the Firecracker-backed manager
//! and the in-memory adapter must accept and refuse the same things with
//! the same errors, so a service tested against the adapter behaves the
//! same in production.

mod common;

use common::{TestHost, id};
use firehost::manager::{RestoreOptions, SnapshotOptions, StopOptions};
use firehost::{
    HostDefaults, InMemoryProvider, Operation, SpecError, VmError, VmProvider, VmSpec, VmState,
};

/// Everything the suite checks, against any provider.
async fn conformance(provider: &dyn VmProvider, host: &TestHost) {
    let vm = id("conform");
    let spec = VmSpec::default();

    // Bad specs are refused the same way.
    let err = provider
        .create(
            &vm,
            VmSpec {
                vcpus: Some(0),
                ..VmSpec::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VmError::InvalidSpec {
                source: SpecError::VcpuCount { vcpus: 0 },
                ..
            }
        ),
        "{err:?}"
    );
    let err = provider
        .create(
            &vm,
            VmSpec {
                kernel: Some(host.dir.path().join("nope")),
                ..VmSpec::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VmError::InvalidSpec {
                source: SpecError::File { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(provider.list().await.is_empty());

    // Unknown VMs.
    assert!(matches!(
        provider.start(&vm).await,
        Err(VmError::NotFound { .. })
    ));
    assert!(matches!(
        provider.get(&vm).await,
        Err(VmError::NotFound { .. })
    ));
    assert!(matches!(
        provider.destroy(&vm).await,
        Err(VmError::NotFound { .. })
    ));

    // The lifecycle.
    let created = provider.create(&vm, spec.clone()).await.unwrap();
    assert_eq!(created.state, VmState::Created);
    assert_eq!((created.spec.vcpus, created.spec.mem_mib), (1, 128));
    assert!(matches!(
        provider.create(&vm, spec.clone()).await,
        Err(VmError::AlreadyExists { .. })
    ));
    let snap = "conform-snap".parse().unwrap();
    let diff: firehost::snapshot::SnapshotName = "conform-diff".parse().unwrap();
    expect_refused(
        provider
            .snapshot(&vm, &snap, SnapshotOptions::default())
            .await
            .map(drop),
        Operation::Snapshot,
    );
    expect_refused(provider.pause(&vm).await.map(drop), Operation::Pause);

    assert_eq!(provider.start(&vm).await.unwrap().state, VmState::Running);
    expect_refused(provider.start(&vm).await.map(drop), Operation::Start);
    expect_refused(provider.destroy(&vm).await, Operation::Destroy);
    // No diff before a first full snapshot.
    let diff_options = SnapshotOptions {
        diff: true,
        ..SnapshotOptions::default()
    };
    assert!(matches!(
        provider.snapshot(&vm, &diff, diff_options.clone()).await,
        Err(VmError::NoParentSnapshot { .. })
    ));
    assert_eq!(provider.pause(&vm).await.unwrap().state, VmState::Paused);
    expect_refused(provider.pause(&vm).await.map(drop), Operation::Pause);
    assert_eq!(provider.resume(&vm).await.unwrap().state, VmState::Running);

    let taken = provider
        .snapshot(&vm, &snap, SnapshotOptions::default())
        .await
        .unwrap();
    assert_eq!(taken.manifest.source_vm, vm);
    assert_eq!(provider.get(&vm).await.unwrap().state, VmState::Running);
    assert!(matches!(
        provider
            .snapshot(&vm, &snap, SnapshotOptions::default())
            .await,
        Err(VmError::SnapshotExists { .. })
    ));

    // Restores: into a new name, paused on request; never into a taken
    // name; never from an unknown snapshot.
    let clone = id("conform-clone");
    let restored = provider
        .restore(
            &clone,
            &snap,
            RestoreOptions {
                resume: false,
                ..RestoreOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(restored.state, VmState::Paused);
    assert_eq!(restored.spec, taken.manifest.spec);
    assert!(matches!(
        provider
            .restore(&clone, &snap, RestoreOptions::default())
            .await,
        Err(VmError::AlreadyExists { .. })
    ));
    // A uid is for jailed snapshots only, and refused before anything.
    let with_uid = RestoreOptions {
        uid: Some(40_000),
        ..RestoreOptions::default()
    };
    let err = provider
        .restore(&id("conform-uid"), &snap, with_uid)
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::Jail { .. }), "{err:?}");
    assert!(matches!(
        provider.get(&id("conform-uid")).await,
        Err(VmError::NotFound { .. })
    ));

    // Many clones, all or nothing: one name is taken (by `clone`), so the
    // others are removed again, and `clone` is left as it was.
    let (m0, m1) = (id("conform-m0"), id("conform-m1"));
    let many = |names: &[&firehost::VmId]| {
        names
            .iter()
            .map(|n| ((*n).clone(), RestoreOptions::default()))
            .collect::<Vec<_>>()
    };
    let err = provider
        .clone_many(&snap, many(&[&m0, &clone, &m1]))
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::AlreadyExists { .. }), "{err:?}");
    for gone in [&m0, &m1] {
        assert!(
            matches!(provider.get(gone).await, Err(VmError::NotFound { .. })),
            "{gone} was left"
        );
    }
    assert_eq!(provider.get(&clone).await.unwrap().state, VmState::Paused);
    let made = provider.clone_many(&snap, many(&[&m1, &m0])).await.unwrap();
    let names: Vec<&firehost::VmId> = made.iter().map(|vm| &vm.id).collect();
    assert_eq!(names, [&m1, &m0], "in the order asked");
    for vm in [&m0, &m1] {
        provider.stop(vm, StopOptions::default()).await.unwrap();
        provider.destroy(vm).await.unwrap();
    }
    let unknown = "no-such-snap".parse().unwrap();
    assert!(matches!(
        provider
            .restore(&id("conform-x"), &unknown, RestoreOptions::default())
            .await,
        Err(VmError::SnapshotBundle { .. })
    ));
    provider.stop(&clone, StopOptions::default()).await.unwrap();
    provider.destroy(&clone).await.unwrap();

    let stopped = provider.stop(&vm, StopOptions::default()).await.unwrap();
    assert!(stopped.stopped);
    assert!(matches!(stopped.info.state, VmState::Stopped { .. }));
    expect_refused(provider.start(&vm).await.map(drop), Operation::Start);
    // Stopping a stopped VM succeeds, says so and changes nothing.
    let again = provider.stop(&vm, StopOptions::default()).await.unwrap();
    assert!(!again.stopped);
    assert_eq!(again.info, stopped.info);
    assert_eq!(provider.list().await.len(), 1);
    assert!(provider.console_tail(&vm, 10).await.is_ok());

    provider.destroy(&vm).await.unwrap();
    assert!(matches!(
        provider.get(&vm).await,
        Err(VmError::NotFound { .. })
    ));
    assert!(provider.list().await.is_empty());

    // run = create + start.
    let ran = provider.run(&vm, spec).await.unwrap();
    assert_eq!(ran.state, VmState::Running);
    let changes = provider.subscribe(&vm).unwrap();
    assert_eq!(
        changes.borrow().as_ref().map(|i| i.state.clone()),
        Some(VmState::Running)
    );
    // No vsock device, no agent; no network, no ports.
    let err = provider
        .exec(&vm, firehost::agent::ExecRequest::new(["true"]), None)
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::NoVsock { .. }), "{err:?}");
    let err = provider
        .publish(&vm, "8080:80".parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::Network { .. }), "{err:?}");
    provider.stop(&vm, StopOptions::default()).await.unwrap();
    assert!(matches!(
        changes.borrow().as_ref().map(|i| i.state.clone()),
        Some(VmState::Stopped { .. })
    ));
    provider.destroy(&vm).await.unwrap();
    assert!(changes.borrow().is_none(), "destroyed");
    assert!(matches!(
        provider.subscribe(&vm),
        Err(VmError::NotFound { .. })
    ));

    writers_conformance(provider).await;
    rename_conformance(provider).await;
}

/// A rename moves a VM, in any state, to a free name; everything it holds
/// goes with it, and the old name is free.
async fn rename_conformance(provider: &dyn VmProvider) {
    let writing = VmSpec {
        rootfs_read_only: Some(false),
        ..VmSpec::default()
    };
    let (old, new, other) = (id("conform-r1"), id("conform-r2"), id("conform-r3"));
    let ran = provider.run(&old, writing.clone()).await.unwrap();
    let mut changes = provider.subscribe(&old).unwrap();
    provider.create(&other, VmSpec::default()).await.unwrap();

    let taken = provider.rename(&old, &other).await.unwrap_err();
    assert!(
        matches!(&taken, VmError::AlreadyExists { id } if *id == other),
        "{taken:?}"
    );
    assert_eq!(taken.kind(), firehost::ErrorKind::Conflict);
    let missing = provider
        .rename(&id("conform-nobody"), &new)
        .await
        .unwrap_err();
    assert!(matches!(missing, VmError::NotFound { .. }), "{missing:?}");
    assert_eq!(provider.rename(&old, &old).await.unwrap().id, old);

    let renamed = provider.rename(&old, &new).await.unwrap();
    assert_eq!(renamed.id, new);
    assert_eq!(
        (renamed.state.clone(), renamed.pid),
        (ran.state.clone(), ran.pid)
    );
    assert_eq!(renamed.dir, ran.dir, "the VM's files stay where they are");
    assert!(matches!(
        provider.get(&old).await,
        Err(VmError::NotFound { .. })
    ));
    assert_eq!(provider.get(&new).await.unwrap().id, new);
    let names: Vec<firehost::VmId> = provider.list().await.into_iter().map(|v| v.id).collect();
    assert!(names.contains(&new) && !names.contains(&old), "{names:?}");
    assert_eq!(
        changes.borrow_and_update().as_ref().map(|v| v.id.clone()),
        Some(new.clone()),
        "a watcher follows the VM"
    );

    // The image is still held, now by the new name.
    let err = provider.run(&old, writing.clone()).await.unwrap_err();
    assert!(
        matches!(&err, VmError::DriveInUse { holder, .. } if *holder == new),
        "{err:?}"
    );
    // Two renames at once: one wins; the other finds the name gone or the
    // VM busy, and changes nothing.
    let (x, y) = (id("conform-rx"), id("conform-ry"));
    let (rx, ry) = tokio::join!(provider.rename(&new, &x), provider.rename(&new, &y));
    let won: Vec<firehost::VmId> = [&rx, &ry]
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|info| info.id.clone()))
        .collect();
    assert_eq!(won.len(), 1, "{rx:?} {ry:?}");
    let lost = if rx.is_ok() { ry } else { rx };
    assert!(
        matches!(
            lost,
            Err(VmError::NotFound { .. } | VmError::MidOperation { .. })
        ),
        "{lost:?}"
    );
    let new = won[0].clone();
    provider.stop(&new, StopOptions::default()).await.unwrap();
    provider.destroy(&new).await.unwrap();
    // Everything released: the old name and the image are free again.
    provider.run(&old, writing).await.unwrap();
    for vm in [&old, &other] {
        if provider.get(vm).await.unwrap().state.is_live() {
            provider.stop(vm, StopOptions::default()).await.unwrap();
        }
        provider.destroy(vm).await.unwrap();
    }
}

/// One image, one live writer (unless shared on purpose); a clone writes
/// to a copy of its own, in its directory.
async fn writers_conformance(provider: &dyn VmProvider) {
    let writing = VmSpec {
        rootfs_read_only: Some(false),
        ..VmSpec::default()
    };
    let (first, second) = (id("conform-w1"), id("conform-w2"));
    let ran = provider.run(&first, writing.clone()).await.unwrap();
    let err = provider.run(&second, writing.clone()).await.unwrap_err();
    assert!(
        matches!(&err, VmError::DriveInUse { holder, drive, .. } if *holder == first && drive == "rootfs"),
        "{err:?}"
    );
    assert_eq!(err.kind(), firehost::ErrorKind::Conflict);
    assert!(matches!(
        provider.get(&second).await,
        Err(VmError::NotFound { .. })
    ));

    let snap = "conform-w-snap".parse().unwrap();
    provider
        .snapshot(&first, &snap, SnapshotOptions::default())
        .await
        .unwrap();
    let clone = provider
        .restore(&id("conform-wc"), &snap, RestoreOptions::default())
        .await
        .unwrap();
    let copy = clone.spec.rootfs.clone().unwrap();
    assert!(copy.starts_with(&clone.dir), "{copy:?}");
    assert_ne!(Some(copy), ran.spec.rootfs);

    for vm in [&first, &clone.id] {
        provider.stop(vm, StopOptions::default()).await.unwrap();
        provider.destroy(vm).await.unwrap();
    }
    provider.run(&second, writing).await.unwrap();
    provider
        .stop(&second, StopOptions::default())
        .await
        .unwrap();
    provider.destroy(&second).await.unwrap();
}

/// The agent through the trait: `provider`'s VMs run commands on this
/// host (the fake's stand-in guest runs the real agent; the in-memory
/// provider a callback that runs the process).
async fn agent_conformance(provider: &dyn VmProvider) {
    use firehost::agent::ExecRequest;
    use std::time::Duration;
    let vm = id("agent");
    let spec = VmSpec {
        vsock: Some(firehost::vsock::VsockSpec::default()),
        ..VmSpec::default()
    };
    provider.create(&vm, spec).await.unwrap();
    let err = provider
        .wait_ready(&vm, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::Agent { .. }), "not started: {err:?}");
    provider.start(&vm).await.unwrap();
    provider
        .wait_ready(&vm, Duration::from_secs(10))
        .await
        .unwrap();
    let out = provider
        .exec(
            &vm,
            ExecRequest::new(["sh", "-c", "cat; echo err >&2; exit 3"]),
            Some(b"in".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            out.stdout.as_slice(),
            out.stderr.as_slice(),
            out.status.code
        ),
        (&b"in"[..], &b"err\n"[..], Some(3))
    );
    let huge = "x".repeat(2 << 20);
    let err = provider
        .exec(&vm, ExecRequest::new(["sh", "-c", &huge]), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), firehost::ErrorKind::InvalidInput, "{err:?}");
    provider.stop(&vm, StopOptions::default()).await.unwrap();
    provider.destroy(&vm).await.unwrap();
}

/// The in-memory agent the tests give: runs the process here.
fn local_process(
    _vm: &firehost::VmId,
    request: &firehost::agent::ExecRequest,
    stdin: Option<&[u8]>,
) -> firehost::agent::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(&request.argv[0])
        .args(&request.argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let status = firehost::agent::ExitStatus {
        code: out.status.code(),
        ..Default::default()
    };
    firehost::agent::Output::new(out.stdout, out.stderr, status)
}

#[tokio::test]
async fn manager_passes_the_agent_conformance_suite() {
    let host = TestHost::new();
    if !host.backend.is_fake() {
        return common::skip(
            "manager_passes_the_agent_conformance_suite",
            "the agent runs in the fake's stand-in guest",
        );
    }
    let Some(agent) = common::agent_path() else {
        return common::skip(
            "manager_passes_the_agent_conformance_suite",
            "firehost-agent is not built (run cargo test --workspace)",
        );
    };
    let mut config = host.config();
    config.vmm_env = vec![("FAKE_FC_AGENT".into(), agent.into_os_string())];
    let manager = firehost::Manager::open(config).await.unwrap();
    agent_conformance(&manager).await;
}

#[tokio::test]
async fn in_memory_provider_passes_the_agent_conformance_suite() {
    let host = TestHost::new();
    let provider = InMemoryProvider::new(HostDefaults {
        kernel: Some(host.kernel.clone()),
        rootfs: Some(host.rootfs.clone()),
        ..HostDefaults::default()
    })
    .with_agent(local_process);
    agent_conformance(&provider).await;
}

fn expect_refused(result: Result<(), VmError>, op: Operation) {
    match result {
        Err(VmError::Transition { refused, .. }) => assert_eq!(refused.op, op),
        other => panic!("{op} should be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn manager_passes_the_conformance_suite() {
    let host = TestHost::new();
    let manager = host.manager().await;
    conformance(&manager, &host).await;
}

#[tokio::test]
async fn in_memory_provider_passes_the_conformance_suite() {
    let host = TestHost::new();
    let provider = InMemoryProvider::new(HostDefaults {
        kernel: Some(host.kernel.clone()),
        rootfs: Some(host.rootfs.clone()),
        // As the test host's manager: the shared image is read-only.
        rootfs_read_only: true,
        ..HostDefaults::default()
    });
    conformance(&provider, &host).await;
}

#[tokio::test]
async fn in_memory_crash_marks_a_live_vm_failed() {
    let host = TestHost::new();
    let provider = InMemoryProvider::new(HostDefaults {
        kernel: Some(host.kernel.clone()),
        ..HostDefaults::default()
    });
    let vm = id("crashy");
    provider.run(&vm, VmSpec::default()).await.unwrap();
    let info = provider
        .crash(&vm, firehost::ExitReason::Signal(11))
        .await
        .unwrap();
    assert!(matches!(info.state, VmState::Failed { .. }));
    provider.destroy(&vm).await.unwrap();
}

#[tokio::test]
async fn in_memory_provider_passes_the_network_conformance_suite() {
    let host = TestHost::new();
    let provider = InMemoryProvider::new(HostDefaults {
        kernel: Some(host.kernel.clone()),
        rootfs: Some(host.rootfs.clone()),
        rootfs_read_only: true,
        ..HostDefaults::default()
    });
    common::net_conformance::net_conformance(&provider).await;
}
