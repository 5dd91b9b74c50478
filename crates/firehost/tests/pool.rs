//! Warm pools through the manager: filling, claiming under the caller's
//! name, refilling in the background, failing visibly, surviving a
//! restart, and removal.
//!
//! Most tests turn the background refill off (`pool_refill = false`) and
//! fill with `pool_fill`, so that how many members exist at each step is
//! certain; one test leaves it on and waits for it.

mod common;

use std::time::Duration;

use common::TestHost;
use firehost::manager::{
    ClaimOptions, Manager, ManagerConfig, PoolInfo, PoolName, PoolSpec, PoolTemplate, StopOptions,
    VmError,
};
use firehost::snapshot::SnapshotName;
use firehost::{ErrorKind, VmId, VmState};
use firehost_testkit::{fake_only, poll_until_async};

const FILLED: Duration = Duration::from_secs(30);

fn id(s: &str) -> VmId {
    VmId::new(s).unwrap()
}

fn pool(s: &str) -> PoolName {
    s.parse().unwrap()
}

/// A manager that fills pools only when told to.
fn manual(host: &TestHost) -> ManagerConfig {
    let mut config = host.config();
    config.pool_refill = false;
    config
}

/// Runs a template VM and snapshots it as `tpl-snap`.
async fn template(host: &TestHost, manager: &Manager) -> SnapshotName {
    manager.run(&id("tpl"), host.spec()).await.unwrap();
    let snap: SnapshotName = "tpl-snap".parse().unwrap();
    manager
        .snapshot(&id("tpl"), &snap, Default::default())
        .await
        .unwrap();
    snap
}

fn pool_files(host: &TestHost) -> Vec<String> {
    std::fs::read_dir(host.state_dir().join("pools"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Stops and removes every VM.
async fn clean(manager: &Manager) {
    for vm in manager.list().await {
        if vm.state.is_live() {
            manager.stop(&vm.id, StopOptions::default()).await.unwrap();
        }
        manager.destroy(&vm.id).await.unwrap();
    }
}

#[tokio::test]
async fn a_filled_pool_hands_out_running_members_under_the_callers_names() {
    let host = TestHost::new();
    let manager = Manager::open(manual(&host)).await.unwrap();
    let snap = template(&host, &manager).await;
    let name = pool("py");
    let spec = PoolSpec::new(PoolTemplate::Snapshot(snap.clone()), 3);
    let made = manager.pool_create(&name, spec.clone()).await.unwrap();
    assert!(made.members.is_empty(), "nothing is made in the background");
    assert_eq!(pool_files(&host), ["py.json"]);

    let full = manager.pool_fill(&name).await.unwrap();
    assert_eq!(full.members.len(), 3);
    assert!(full.failure.is_none());
    for member in &full.members {
        assert!(member.as_str().starts_with("py-"), "{member}");
        let info = manager.get(member).await.unwrap();
        assert_eq!(info.pool, Some(name.clone()));
        assert_eq!(info.state, VmState::Running);
    }

    let claimed = manager
        .pool_claim(&name, &id("job-1"), ClaimOptions::default())
        .await
        .unwrap();
    assert_eq!(claimed.id, id("job-1"));
    assert_eq!(claimed.state, VmState::Running);
    assert_eq!(claimed.pool, None, "no longer a member");
    assert_eq!(claimed.dir, manager.get(&id("job-1")).await.unwrap().dir);
    let was = &full.members[0];
    assert!(
        matches!(manager.get(was).await, Err(VmError::NotFound { .. })),
        "the oldest member went"
    );
    let left = manager.pool_get(&name).await.unwrap();
    assert_eq!(left.members, full.members[1..]);

    // A name already taken is refused, and no member is spent on it.
    let taken = manager
        .pool_claim(&name, &id("job-1"), ClaimOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(taken, VmError::AlreadyExists { .. }), "{taken:?}");
    assert_eq!(manager.pool_get(&name).await.unwrap().members.len(), 2);

    // Emptied, a claim makes the VM itself, or fails if told not to.
    for n in 2..=3 {
        manager
            .pool_claim(&name, &id(&format!("job-{n}")), ClaimOptions::default())
            .await
            .unwrap();
    }
    let no_cold = ClaimOptions {
        cold_start: false,
        ..ClaimOptions::default()
    };
    let empty = manager
        .pool_claim(&name, &id("job-4"), no_cold)
        .await
        .unwrap_err();
    assert!(matches!(empty, VmError::PoolEmpty { .. }), "{empty:?}");
    assert_eq!(empty.kind(), ErrorKind::Conflict);
    let cold = manager
        .pool_claim(&name, &id("job-4"), ClaimOptions::default())
        .await
        .unwrap();
    assert_eq!((cold.state, cold.pool), (VmState::Running, None));

    // Removing the pool removes its members only.
    manager.pool_fill(&name).await.unwrap();
    manager.pool_delete(&name).await.unwrap();
    assert!(pool_files(&host).is_empty());
    let mut left: Vec<VmId> = manager.list().await.into_iter().map(|v| v.id).collect();
    left.sort();
    assert_eq!(
        left,
        [
            id("job-1"),
            id("job-2"),
            id("job-3"),
            id("job-4"),
            id("tpl")
        ]
    );
    let gone = manager.pool_get(&name).await.unwrap_err();
    assert!(matches!(gone, VmError::PoolNotFound { .. }), "{gone:?}");
    clean(&manager).await;
}

#[tokio::test]
async fn a_pool_refills_in_the_background_after_each_claim() {
    let host = TestHost::new();
    let manager = host.manager().await;
    let snap = template(&host, &manager).await;
    let name = pool("bg");
    manager
        .pool_create(&name, PoolSpec::new(PoolTemplate::Snapshot(snap), 2))
        .await
        .unwrap();
    let full = |want: usize| {
        let (manager, name) = (manager.clone(), name.clone());
        async move {
            let info: PoolInfo = manager.pool_get(&name).await.unwrap();
            (info.members.len() == want && info.making == 0).then_some(info)
        }
    };
    let first = poll_until_async("the pool to fill", FILLED, || full(2)).await;
    manager
        .pool_claim(&name, &id("taken"), ClaimOptions::default())
        .await
        .unwrap();
    let again = poll_until_async("the pool to refill", FILLED, || full(2)).await;
    assert!(!again.members.contains(&first.members[0]));
    assert!(again.members.contains(&first.members[1]));

    // A larger size is filled; a smaller one trimmed, newest first.
    let mut spec = again.spec.clone();
    spec.size = 3;
    manager.pool_update(&name, spec.clone()).await.unwrap();
    let three = poll_until_async("the pool to grow", FILLED, || full(3)).await;
    spec.size = 1;
    spec.parallel = 1;
    let one = manager.pool_update(&name, spec).await.unwrap();
    assert_eq!(one.members, three.members[..1]);
    manager.pool_delete(&name).await.unwrap();
    clean(&manager).await;
}

#[tokio::test]
async fn a_failing_pool_says_why_and_claims_fail_typed() {
    fake_only!("a failing snapshot load is injected");
    let host = TestHost::new();
    let snap = {
        let manager = host.manager().await;
        template(&host, &manager).await
    };
    let mut config = host.config_with_faults(&[("FAKE_FC_FAIL", "PUT /snapshot/load")]);
    config.pool_refill = false;
    let manager = Manager::open(config).await.unwrap();
    let name = pool("broken");
    manager
        .pool_create(&name, PoolSpec::new(PoolTemplate::Snapshot(snap), 2))
        .await
        .unwrap();
    let err = manager.pool_fill(&name).await.unwrap_err();
    assert!(matches!(err, VmError::Api { .. }), "{err:?}");
    let info = manager.pool_get(&name).await.unwrap();
    assert!(info.members.is_empty());
    assert_eq!(info.making, 0);
    let no_cold = ClaimOptions {
        cold_start: false,
        ..ClaimOptions::default()
    };
    let empty = manager
        .pool_claim(&name, &id("j"), no_cold)
        .await
        .unwrap_err();
    assert!(matches!(empty, VmError::PoolEmpty { .. }), "{empty:?}");
    let cold = manager
        .pool_claim(&name, &id("j"), ClaimOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(cold, VmError::Api { .. }), "{cold:?}");
    assert!(matches!(
        manager.get(&id("j")).await,
        Err(VmError::NotFound { .. })
    ));
    let names: Vec<VmId> = manager.list().await.into_iter().map(|v| v.id).collect();
    assert_eq!(names, [id("tpl")], "failed members leave nothing");
    manager.pool_delete(&name).await.unwrap();
    clean(&manager).await;
}

#[tokio::test]
async fn a_background_refill_that_fails_shows_its_failure_and_backs_off() {
    fake_only!("a failing snapshot load is injected");
    let host = TestHost::new();
    let snap = {
        let manager = host.manager().await;
        template(&host, &manager).await
    };
    let config = host.config_with_faults(&[("FAKE_FC_FAIL", "PUT /snapshot/load")]);
    let manager = Manager::open(config).await.unwrap();
    let name = pool("flaky");
    manager
        .pool_create(&name, PoolSpec::new(PoolTemplate::Snapshot(snap), 1))
        .await
        .unwrap();
    let failure = poll_until_async("the pool to report its failure", FILLED, || {
        let (manager, name) = (manager.clone(), name.clone());
        async move { manager.pool_get(&name).await.unwrap().failure }
    })
    .await;
    assert_eq!(failure.kind, ErrorKind::Failed);
    assert!(failure.attempts >= 1);
    assert!(failure.retry_in >= Duration::from_secs(1), "{failure:?}");
    assert!(failure.error.contains("snapshot"), "{failure:?}");
    manager.pool_delete(&name).await.unwrap();
    clean(&manager).await;
}

#[tokio::test]
async fn pools_and_their_members_survive_a_restart() {
    let host = TestHost::new();
    let name = pool("durable");
    let members = {
        let manager = Manager::open(manual(&host)).await.unwrap();
        let snap = template(&host, &manager).await;
        manager
            .pool_create(&name, PoolSpec::new(PoolTemplate::Snapshot(snap), 2))
            .await
            .unwrap();
        manager.pool_fill(&name).await.unwrap().members
    };
    let manager = Manager::open(manual(&host)).await.unwrap();
    let info = manager.pool_get(&name).await.unwrap();
    assert_eq!(info.members, members);
    assert_eq!(manager.pool_list().await.len(), 1);
    let claimed = manager
        .pool_claim(&name, &id("after"), ClaimOptions::default())
        .await
        .unwrap();
    assert_eq!(claimed.state, VmState::Running);
    assert_eq!(manager.pool_get(&name).await.unwrap().members, members[1..]);
    manager.pool_delete(&name).await.unwrap();
    clean(&manager).await;
}

#[tokio::test]
async fn bad_pools_are_refused_and_record_nothing() {
    let host = TestHost::new();
    let manager = Manager::open(manual(&host)).await.unwrap();
    let missing: SnapshotName = "no-such-snap".parse().unwrap();
    let cases = [
        (
            pool("zero"),
            PoolSpec::new(PoolTemplate::Snapshot(missing.clone()), 0),
        ),
        (
            pool("nosnap"),
            PoolSpec::new(PoolTemplate::Snapshot(missing.clone()), 1),
        ),
        (
            pool(&"p".repeat(56)),
            PoolSpec::new(PoolTemplate::Snapshot(missing.clone()), 1),
        ),
        (
            pool("nokernel"),
            PoolSpec::new(
                PoolTemplate::Spec(Box::new(firehost::VmSpec {
                    kernel: Some("/no/such/kernel".into()),
                    ..Default::default()
                })),
                1,
            ),
        ),
    ];
    for (name, spec) in cases {
        let err = manager.pool_create(&name, spec).await.unwrap_err();
        assert!(
            matches!(err, VmError::InvalidPool { .. }),
            "{name}: {err:?}"
        );
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
    assert!(pool_files(&host).is_empty());
    assert!(manager.pool_list().await.is_empty());
    let unknown = manager
        .pool_claim(&pool("nobody"), &id("x"), ClaimOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, VmError::PoolNotFound { .. }),
        "{unknown:?}"
    );
    assert_eq!(unknown.kind(), ErrorKind::NotFound);

    let snap = template(&host, &manager).await;
    // A diff cannot be restored by itself.
    let diff: SnapshotName = "tpl-diff".parse().unwrap();
    let options = firehost::manager::SnapshotOptions {
        diff: true,
        ..Default::default()
    };
    manager.snapshot(&id("tpl"), &diff, options).await.unwrap();
    let err = manager
        .pool_create(
            &pool("diffs"),
            PoolSpec::new(PoolTemplate::Snapshot(diff), 1),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::InvalidPool { .. }), "{err:?}");
    let spec = PoolSpec::new(PoolTemplate::Snapshot(snap), 1);
    manager
        .pool_create(&pool("once"), spec.clone())
        .await
        .unwrap();
    let twice = manager.pool_create(&pool("once"), spec).await.unwrap_err();
    assert!(matches!(twice, VmError::PoolExists { .. }), "{twice:?}");
    manager.pool_delete(&pool("once")).await.unwrap();
    clean(&manager).await;
}

#[tokio::test]
async fn a_crash_during_a_claim_leaves_a_member_or_the_callers_vm() {
    use futures_util::FutureExt;
    for (step, claimed) in [("rename:metadata", false), ("rename:record", true)] {
        let host = TestHost::new();
        let name = pool("crashy");
        let member = {
            let manager = Manager::open(manual(&host)).await.unwrap();
            let snap = template(&host, &manager).await;
            manager
                .pool_create(&name, PoolSpec::new(PoolTemplate::Snapshot(snap), 1))
                .await
                .unwrap();
            let member = manager.pool_fill(&name).await.unwrap().members[0].clone();
            firehost::manager::fault::crash_at(&member, step);
            let crashed = std::panic::AssertUnwindSafe(manager.pool_claim(
                &name,
                &id("mine"),
                ClaimOptions::default(),
            ))
            .catch_unwind()
            .await;
            assert!(crashed.is_err(), "{step}");
            member
        };
        let manager = Manager::open(manual(&host)).await.unwrap();
        let members = manager.pool_get(&name).await.unwrap().members;
        let mine = manager.get(&id("mine")).await;
        if claimed {
            assert!(members.is_empty(), "{step}: {members:?}");
            assert_eq!(mine.unwrap().pool, None, "{step}");
        } else {
            assert_eq!(members, [member], "{step}");
            assert!(matches!(mine, Err(VmError::NotFound { .. })), "{step}");
        }
        manager.pool_delete(&name).await.unwrap();
        clean(&manager).await;
    }
}

#[tokio::test]
async fn pool_files_written_by_hand_cannot_make_the_manager_panic() {
    let host = TestHost::new();
    let snap = {
        let manager = Manager::open(manual(&host)).await.unwrap();
        template(&host, &manager).await
    };
    let dir = host.state_dir().join("pools");
    std::fs::create_dir_all(&dir).unwrap();
    let long = "p".repeat(60);
    let spec =
        serde_json::json!({"template": {"snapshot": snap.as_str()}, "size": 1, "parallel": 1});
    std::fs::write(dir.join(format!("{long}.json")), spec.to_string()).unwrap();
    let zero =
        serde_json::json!({"template": {"snapshot": snap.as_str()}, "size": 0, "parallel": 1});
    std::fs::write(dir.join("zero.json"), zero.to_string()).unwrap();
    std::fs::write(dir.join("junk.json"), b"{ not json").unwrap();

    let manager = Manager::open(manual(&host)).await.unwrap();
    let names: Vec<String> = manager
        .pool_list()
        .await
        .into_iter()
        .map(|p| p.name.to_string())
        .collect();
    assert_eq!(
        names,
        std::slice::from_ref(&long),
        "the bad specs are left out"
    );
    // Its members could not be named: a typed error, not a panic.
    let err = manager.pool_fill(&pool(&long)).await.unwrap_err();
    assert!(matches!(err, VmError::InvalidPool { .. }), "{err:?}");
    let names: Vec<VmId> = manager.list().await.into_iter().map(|v| v.id).collect();
    assert_eq!(names, [id("tpl")]);
    clean(&manager).await;
}

#[tokio::test]
async fn claims_at_once_get_distinct_members() {
    let host = TestHost::new();
    let manager = Manager::open(manual(&host)).await.unwrap();
    let snap = template(&host, &manager).await;
    let name = pool("race");
    manager
        .pool_create(&name, PoolSpec::new(PoolTemplate::Snapshot(snap), 3))
        .await
        .unwrap();
    let members = manager.pool_fill(&name).await.unwrap().members;
    let no_cold = || ClaimOptions {
        cold_start: false,
        ..ClaimOptions::default()
    };
    let (j1, j2, j3) = (id("j1"), id("j2"), id("j3"));
    let (a, b, c) = tokio::join!(
        manager.pool_claim(&name, &j1, no_cold()),
        manager.pool_claim(&name, &j2, no_cold()),
        manager.pool_claim(&name, &j3, no_cold()),
    );
    let mut dirs: Vec<_> = [a, b, c]
        .into_iter()
        .map(|claimed| claimed.unwrap().dir)
        .collect();
    dirs.sort();
    dirs.dedup();
    assert_eq!(dirs.len(), 3, "three members, one each");
    for member in &members {
        assert!(matches!(
            manager.get(member).await,
            Err(VmError::NotFound { .. })
        ));
    }
    assert!(manager.pool_get(&name).await.unwrap().members.is_empty());
    manager.pool_delete(&name).await.unwrap();
    clean(&manager).await;
}
