//! What a warm pool buys (issue 14): the time from asking for a sandbox to
//! holding a running VM under one's own name, claimed from a pool against
//! restored on the spot from the same snapshot, interleaved in one run
//! (see BENCHMARKS.md).
//!
//! The pool's manager does not refill in the background while a claim is
//! timed (the refill would compete for the two cores); it is filled
//! between rounds.
//!
//! Run: `cargo bench -p firehost --bench pool` (after `cargo build
//! --release -p fake-firecracker`); `BENCH_ITERS` scales the rounds.

mod common;

use std::time::{Duration, Instant};

use common::{iters, median};
use firehost::manager::{ClaimOptions, PoolSpec, PoolTemplate, RestoreOptions};
use firehost::{Manager, StopOptions, VmId, VmSpec};

/// Members made per fill: one claim per round comes out of them.
const POOL: u32 = 4;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::fake_config(dir.path());
    config.pool_refill = false;
    let manager = Manager::open(config).await.unwrap();

    let template = VmId::new("template").unwrap();
    manager.run(&template, VmSpec::default()).await.unwrap();
    let snap = "template-snap".parse().unwrap();
    manager
        .snapshot(&template, &snap, Default::default())
        .await
        .unwrap();
    let pool = "bench".parse().unwrap();
    manager
        .pool_create(
            &pool,
            PoolSpec::new(PoolTemplate::Snapshot(snap.clone()), POOL),
        )
        .await
        .unwrap();

    let gone = |vm: VmId| {
        let manager = manager.clone();
        async move {
            let stop = StopOptions {
                graceful: Some(false),
                grace: None,
            };
            manager.stop(&vm, stop).await.unwrap();
            manager.destroy(&vm).await.unwrap();
        }
    };
    let rounds = iters(40);
    let (mut claimed, mut restored) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % POOL as usize == 0 {
            manager.pool_fill(&pool).await.unwrap();
        }
        let vm = VmId::new(format!("claimed-{round}")).unwrap();
        let t = Instant::now();
        let options = ClaimOptions {
            cold_start: false,
            ..ClaimOptions::default()
        };
        manager.pool_claim(&pool, &vm, options).await.unwrap();
        claimed.push(t.elapsed());
        gone(vm).await;

        let vm = VmId::new(format!("restored-{round}")).unwrap();
        let t = Instant::now();
        manager
            .restore(&vm, &snap, RestoreOptions::default())
            .await
            .unwrap();
        restored.push(t.elapsed());
        gone(vm).await;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (claim, restore) = (median(claimed), median(restored));
    println!("a running VM under one's own name ({rounds} rounds, interleaved; median)");
    println!(
        "  restore from the snapshot   {:8.3} ms   1.00x",
        ms(restore)
    );
    println!(
        "  claim from a warm pool      {:8.3} ms   {:.3}x",
        ms(claim),
        ms(claim) / ms(restore)
    );
    manager.pool_delete(&pool).await.unwrap();
    gone(template).await;
}
