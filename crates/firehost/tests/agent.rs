//! The whole host → vsock → agent → process path, with no VM: the manager
//! runs fake-firecracker, whose stand-in guest starts a real
//! `firehost-agent` when it boots (`FAKE_FC_AGENT`), with the token from the
//! kernel command line, and relays the vsock device's `CONNECT` handshake
//! to it. Everything else is real: the manager's vsock device and token,
//! the handshake, the protocol, the agent, the processes it runs.
//!
//! Needs `firehost-agent` built (`cargo test --workspace` builds it); each
//! test says so and skips otherwise. With a real Firecracker these tests
//! skip (booting a guest to the agent is tier 4).

mod common;

/// Deterministic test bytes (the low byte of a mixing function).
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect()
}

use std::time::{Duration, Instant};

use common::TestHost;
use firehost::agent::{
    AgentClient, AgentError, ErrorCode, ExecEvent, ExecRequest, Secret, Token, WriteFileRequest,
};
use firehost::manager::{Manager, RestoreOptions, SnapshotOptions, StopOptions, VmError};
use firehost::vsock::VsockSpec;
use firehost::{VmId, VmSpec};

const READY: Duration = Duration::from_secs(10);

fn id(s: &str) -> VmId {
    VmId::new(s).unwrap()
}

fn vsock_spec() -> VmSpec {
    VmSpec {
        vsock: Some(VsockSpec::default()),
        ..VmSpec::default()
    }
}

/// A manager whose fake guests run the agent, or `None` (after saying
/// why) where that cannot be.
async fn manager_with_agent(host: &TestHost, test: &str) -> Option<Manager> {
    if !host.backend.is_fake() {
        common::skip(
            test,
            "the agent runs in the fake's stand-in guest (tier 4 boots a real one)",
        );
        return None;
    }
    let Some(agent) = common::agent_path() else {
        common::skip(
            test,
            "firehost-agent is not built (run cargo test --workspace)",
        );
        return None;
    };
    let mut config = host.config();
    config.vmm_env = vec![("FAKE_FC_AGENT".into(), agent.into_os_string())];
    Some(Manager::open(config).await.unwrap())
}

/// The agent token the record of the VM whose key is `key` holds.
fn recorded_token(host: &TestHost, key: &VmId) -> String {
    let path = host
        .state_dir()
        .join("vms")
        .join(key.as_str())
        .join("record.json");
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    record["vsock"]["token"].as_str().unwrap().to_owned()
}

/// A running VM with a ready agent.
async fn ready_vm(manager: &Manager, name: &str) -> AgentClient {
    let vm = id(name);
    manager.run(&vm, vsock_spec()).await.unwrap();
    let agent = manager.agent(&vm).await.unwrap();
    let health = agent.wait_ready(READY).await.unwrap();
    assert!(health.ready);
    agent
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}

#[tokio::test]
async fn exec_returns_output_and_exit_codes() {
    let host = TestHost::new();
    let Some(manager) = manager_with_agent(&host, "exec_returns_output_and_exit_codes").await
    else {
        return;
    };
    let agent = ready_vm(&manager, "exec").await;
    let out = agent
        .output(ExecRequest::new(["echo", "hello", "world"]), None)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"hello world\n");
    assert!(out.status.success());

    let out = agent
        .output(sh("echo out; echo err >&2; exit 7"), None)
        .await
        .unwrap();
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    assert_eq!(out.status.code, Some(7));
    assert!(!out.status.success());

    // Binary data through stdin and back, larger than many frames.
    let data = pattern(8 << 20);
    let out = agent
        .output(ExecRequest::new(["cat"]), Some(data.clone()))
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "stdin came back changed");

    // A program that does not exist is the agent's refusal, not a hang.
    let err = agent
        .output(ExecRequest::new(["/nonexistent/program"]), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Refused {
                code: ErrorCode::ExecFailed,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn signals_timeouts_and_concurrent_sessions() {
    let host = TestHost::new();
    let Some(manager) = manager_with_agent(&host, "signals_timeouts_and_concurrent_sessions").await
    else {
        return;
    };
    let agent = ready_vm(&manager, "signals").await;

    let mut session = agent
        .exec(ExecRequest::new(["sleep", "100"]))
        .await
        .unwrap();
    assert!(session.pid() > 0);
    session.signal(15).await.unwrap();
    let status = loop {
        match session.next().await.unwrap() {
            Some(ExecEvent::Exited(status)) => break status,
            Some(_) => {}
            None => panic!("no exit status"),
        }
    };
    assert_eq!((status.code, status.signal), (None, Some(15)));

    let mut slow = ExecRequest::new(["sleep", "100"]);
    slow.timeout_ms = Some(200);
    let started = Instant::now();
    let out = agent.output(slow, None).await.unwrap();
    assert!(out.status.timed_out, "{:?}", out.status);
    assert!(started.elapsed() < Duration::from_secs(50));

    // Many sessions at once, each on its own connection.
    let runs = (0..16).map(|i| {
        let agent = agent.clone();
        async move {
            let out = agent
                .output(sh(&format!("echo {i}; exit {i}")), None)
                .await
                .unwrap();
            assert_eq!(out.stdout, format!("{i}\n").into_bytes());
            assert_eq!(out.status.code, Some(i));
        }
    });
    futures_util::future::join_all(runs).await;
}

#[tokio::test]
async fn a_100_mib_file_round_trips_with_its_checksum() {
    let host = TestHost::new();
    let Some(manager) =
        manager_with_agent(&host, "a_100_mib_file_round_trips_with_its_checksum").await
    else {
        return;
    };
    let agent = ready_vm(&manager, "files").await;
    let size = 100usize << 20;
    let data = pattern(size);
    let path = host.dir.path().join("guest-file.bin");
    let path_str = path.to_str().unwrap().to_owned();
    let request = WriteFileRequest {
        path: path_str.clone(),
        mode: 0o640,
        uid: None,
        gid: None,
        create_dirs: false,
    };
    let written = agent.write_file(request, &data[..]).await.unwrap();
    assert_eq!(written, size as u64);

    let mut back = Vec::with_capacity(size);
    let (stat, copied) = agent.read_file(&path_str, &mut back).await.unwrap();
    assert_eq!((stat.size, copied), (size as u64, size as u64));
    assert_eq!(stat.mode & 0o777, 0o640);
    assert_eq!(blake3::hash(&back), blake3::hash(&data));

    let listing = agent.list(host.dir.path().to_str().unwrap()).await.unwrap();
    assert!(listing.iter().any(|e| e.path == "guest-file.bin"));
    let err = agent
        .read_file("/nonexistent/file", Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Refused {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_agent_reseeds_the_guests_crng() {
    let host = TestHost::new();
    let Some(manager) = manager_with_agent(&host, "the_agent_reseeds_the_guests_crng").await else {
        return;
    };
    let agent = ready_vm(&manager, "reseed").await;
    // The stand-in guest is a process on this host: the ioctls reach the
    // host's /dev/random, which needs CAP_SYS_ADMIN, as in a guest.
    match agent.reseed().await {
        Ok(()) => {}
        Err(firehost::agent::AgentError::Refused {
            code: firehost_proto::ErrorCode::PermissionDenied,
            message,
        }) => {
            common::skip(
                "the_agent_reseeds_the_guests_crng",
                &format!("no CAP_SYS_ADMIN here: {message}"),
            );
        }
        Err(e) => panic!("reseed failed: {e:?}"),
    }
    // The agent still serves after it.
    let out = agent.output(sh("echo ok"), None).await.unwrap();
    assert_eq!(out.stdout, b"ok\n");
}

#[tokio::test]
async fn a_pool_of_agent_ready_vms_hands_out_members_whose_agents_answer() {
    use firehost::manager::{ClaimOptions, PoolSpec, PoolTemplate};
    const T: &str = "a_pool_of_agent_ready_vms_hands_out_members_whose_agents_answer";
    let host = TestHost::new();
    let Some(manager) = manager_with_agent(&host, T).await else {
        return;
    };
    // Booted from a spec: a member is ready once its agent answers.
    let pool = "agents".parse().unwrap();
    let mut spec = PoolSpec::new(PoolTemplate::Spec(Box::new(vsock_spec())), 2);
    spec.parallel = 2;
    manager.pool_create(&pool, spec).await.unwrap();
    let filled = manager.pool_fill(&pool).await.unwrap();
    assert_eq!(filled.members.len(), 2);
    // The claim reseeds the member's CRNG through its agent, gives the
    // agent a token of its own, then renames the member; its agent
    // answers under the new name.
    let member = filled.members[0].clone();
    let before = recorded_token(&host, &member);
    let claimed = manager
        .pool_claim(&pool, &id("worker"), ClaimOptions::default())
        .await
        .unwrap();
    assert_eq!(claimed.id, id("worker"));
    let agent = manager.agent(&id("worker")).await.unwrap();
    let out = agent.output(sh("echo claimed"), None).await.unwrap();
    assert_eq!(out.stdout, b"claimed\n");
    // The key (and so the record's directory) is still the member's name.
    let after = recorded_token(&host, &member);
    assert_ne!(after, before, "a token of its own");
    let socket = claimed.vsock.as_ref().unwrap().uds_path.clone();
    let stale = AgentClient::new(&socket, firehost_proto::DEFAULT_PORT, Token(before));
    let refused = stale.health().await.unwrap_err();
    assert!(
        matches!(
            refused,
            AgentError::Refused {
                code: ErrorCode::BadToken,
                ..
            }
        ),
        "{refused:?}"
    );
    manager.pool_delete(&pool).await.unwrap();
    manager
        .stop(&id("worker"), StopOptions::default())
        .await
        .unwrap();
    manager.destroy(&id("worker")).await.unwrap();
}

#[tokio::test]
async fn a_crash_in_the_middle_of_a_rekey_leaves_an_agent_the_manager_can_reach() {
    use firehost::manager::{ClaimOptions, PoolSpec, PoolTemplate};
    use futures_util::FutureExt;
    const T: &str = "a_crash_in_the_middle_of_a_rekey_leaves_an_agent_the_manager_can_reach";
    // Recorded only: the agent kept its token. Agent rekeyed: it demands
    // the new one. Either way the next manager finds which.
    for (step, changed) in [("rekey:recorded", false), ("rekey:agent", true)] {
        let host = TestHost::new();
        let Some(manager) = manager_with_agent(&host, T).await else {
            return;
        };
        let pool = "rk".parse().unwrap();
        let spec = PoolSpec::new(PoolTemplate::Spec(Box::new(vsock_spec())), 1);
        manager.pool_create(&pool, spec).await.unwrap();
        let member = manager.pool_fill(&pool).await.unwrap().members[0].clone();
        let before = recorded_token(&host, &member);
        firehost::manager::fault::crash_at(&member, step);
        let crashed = std::panic::AssertUnwindSafe(manager.pool_claim(
            &pool,
            &id("mine"),
            ClaimOptions::default(),
        ))
        .catch_unwind()
        .await;
        assert!(crashed.is_err(), "{step}");
        drop(manager);

        let manager = manager_with_agent(&host, T).await.unwrap();
        let agent = manager.agent(&member).await.unwrap();
        let out = agent.output(sh("echo reached"), None).await.unwrap();
        assert_eq!(out.stdout, b"reached\n", "{step}");
        let record: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                host.state_dir()
                    .join("vms")
                    .join(member.as_str())
                    .join("record.json"),
            )
            .unwrap(),
        )
        .unwrap();
        assert!(record["vsock"]["next_token"].is_null(), "{step}: settled");
        assert_eq!(recorded_token(&host, &member) != before, changed, "{step}");
        manager.pool_delete(&pool).await.unwrap();
    }
}

#[tokio::test]
async fn env_set_for_later_execs_reaches_them() {
    let host = TestHost::new();
    let Some(manager) = manager_with_agent(&host, "env_set_for_later_execs_reaches_them").await
    else {
        return;
    };
    let agent = ready_vm(&manager, "env").await;
    let mut vars = std::collections::BTreeMap::new();
    vars.insert("FH_SECRET".to_owned(), Secret("hunter2".into()));
    agent.set_env(vars).await.unwrap();
    let out = agent
        .output(sh("printf %s \"$FH_SECRET\""), None)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"hunter2");
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_a_vm_without_an_agent_is_never_ready() {
    let host = TestHost::new();
    let Some(manager) = manager_with_agent(
        &host,
        "a_wrong_token_is_refused_and_a_vm_without_an_agent_is_never_ready",
    )
    .await
    else {
        return;
    };
    let real = ready_vm(&manager, "tokened").await;
    let impostor = AgentClient::new(
        real.socket(),
        firehost::agent::DEFAULT_PORT,
        Token("0".repeat(64)),
    );
    let err = impostor.health().await.unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Refused {
                code: ErrorCode::BadToken,
                ..
            }
        ),
        "{err:?}"
    );
    let err = impostor.wait_ready(READY).await.unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Refused {
                code: ErrorCode::BadToken,
                ..
            }
        ),
        "{err:?}"
    );

    // No vsock device: no agent at all, a typed error.
    manager.run(&id("plain"), VmSpec::default()).await.unwrap();
    let err = manager.agent(&id("plain")).await.unwrap_err();
    assert!(matches!(err, VmError::NoVsock { .. }), "{err:?}");

    // A guest whose agent never comes up: the wait ends at its deadline.
    let mut config = host.config();
    config.state_dir = host.dir.path().join("state-no-agent");
    drop(manager);
    let bare = Manager::open(config).await.unwrap();
    bare.run(&id("silent"), vsock_spec()).await.unwrap();
    let started = Instant::now();
    let err = bare
        .agent(&id("silent"))
        .await
        .unwrap()
        .wait_ready(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::NotReady(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn an_agent_killed_mid_stream_ends_the_session_with_an_error() {
    let host = TestHost::new();
    let Some(manager) = manager_with_agent(
        &host,
        "an_agent_killed_mid_stream_ends_the_session_with_an_error",
    )
    .await
    else {
        return;
    };
    let agent = ready_vm(&manager, "dying").await;
    let mut session = agent
        .exec(sh("echo started; exec sleep 100"))
        .await
        .unwrap();
    assert_eq!(
        session.next().await.unwrap(),
        Some(ExecEvent::Stdout(b"started\n".to_vec()))
    );
    // The guest dies under the session: its VMM (and with it the agent).
    manager
        .stop(&id("dying"), StopOptions::default())
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), session.next())
        .await
        .expect("the session ends, it does not hang");
    assert!(ended.is_err(), "{ended:?}");
}

#[tokio::test]
async fn a_restored_vm_has_its_own_socket_and_the_same_agent_token() {
    let host = TestHost::new();
    let Some(manager) = manager_with_agent(
        &host,
        "a_restored_vm_has_its_own_socket_and_the_same_agent_token",
    )
    .await
    else {
        return;
    };
    let agent = ready_vm(&manager, "origin").await;
    let snap = "agent-snap".parse().unwrap();
    manager
        .snapshot(&id("origin"), &snap, SnapshotOptions::default())
        .await
        .unwrap();
    let clone = id("clone");
    manager
        .restore(&clone, &snap, RestoreOptions::default())
        .await
        .unwrap();
    let restored = manager.agent(&clone).await.unwrap();
    assert_ne!(restored.socket(), agent.socket());
    restored.wait_ready(READY).await.unwrap();
    let out = restored
        .output(ExecRequest::new(["echo", "clone"]), None)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"clone\n");
}

#[tokio::test]
async fn an_exec_request_over_the_frame_limit_is_refused_not_a_panic() {
    let host = TestHost::new();
    let Some(manager) = manager_with_agent(
        &host,
        "an_exec_request_over_the_frame_limit_is_refused_not_a_panic",
    )
    .await
    else {
        return;
    };
    let agent = ready_vm(&manager, "big-argv").await;
    // `python -c <user code>` with 2 MiB of code: one argument.
    let code = "x".repeat(2 << 20);
    let err = agent
        .output(ExecRequest::new(["sh", "-c", &code]), None)
        .await
        .unwrap_err();
    match err {
        AgentError::RequestTooLarge { len, max } => {
            assert!(
                len > code.len() && max == firehost_proto::MAX_PAYLOAD,
                "{len} {max}"
            );
        }
        other => panic!("expected RequestTooLarge, got {other:?}"),
    }
    // Nothing broke: the next call works.
    let out = agent.output(sh("echo ok"), None).await.unwrap();
    assert_eq!(out.stdout, b"ok\n");
}

#[tokio::test]
async fn output_keeps_at_most_the_limit_and_counts_what_it_dropped() {
    let host = TestHost::new();
    let Some(manager) = manager_with_agent(
        &host,
        "output_keeps_at_most_the_limit_and_counts_what_it_dropped",
    )
    .await
    else {
        return;
    };
    let agent = ready_vm(&manager, "flood")
        .await
        .with_output_limit(64 << 10);
    // 1 MiB on stdout, 100 bytes on stderr.
    let out = agent
        .output(
            sh("head -c 1048576 /dev/zero; head -c 100 /dev/zero >&2; exit 3"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(out.stdout.len(), 64 << 10);
    assert_eq!(out.stdout_dropped, (1 << 20) - (64 << 10));
    assert_eq!((out.stderr.len(), out.stderr_dropped), (100, 0));
    assert!(out.truncated());
    // The process still ran to its end and its status is reported.
    assert_eq!(out.status.code, Some(3));

    let out = agent.output(sh("echo small"), None).await.unwrap();
    assert!(!out.truncated());
    assert_eq!(out.stdout, b"small\n");
}
