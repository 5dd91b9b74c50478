//! Benchmarks of per-VM network setup and teardown (issue 3), each reported
//! as a ratio against a baseline measured in the same run (see
//! BENCHMARKS.md):
//!
//! 1. Ours vs shell-outs. Ours: [`HostNetwork::attach`] then
//!    [`HostNetwork::detach`] of one VM: address and MAC allocation, a TAP by
//!    `TUNSETIFF`, attached to the bridge, brought up and labelled over
//!    netlink, and the VM's firewall elements added in one nftables
//!    transaction through libnftables; then all of it undone. Baseline: the
//!    same kernel work done the way shell scripts do it, one process each:
//!    `ip tuntap add … mode tap vnet_hdr user 0`, `ip link set … master fhbr0
//!    up`, `ip link set … alias …`, `nft add element …` (taps and bindings in
//!    one `nft` call), and for teardown `nft delete element …` and `ip link
//!    del …`: six processes per VM. Both run against the same bridge and
//!    the same firehost tables.
//! 2. Scaling: ours with 1 other VM on the network vs with 499 others (the
//!    500th VM). One VM stays attached throughout so that the bridge and the
//!    tables exist in both cases and neither measures their setup.
//! 3. Parallelism: 16 VMs attached (then detached) all at once vs the same
//!    16 one after another, wall time for the batch; and the latency of a
//!    quick change to one VM (publish + unpublish a port) while 16 others
//!    are being detached vs on a quiet network. Only the firewall
//!    membership change is serialised in firehost, so a quick change should
//!    not wait for other VMs' device work.
//!
//! Everything happens in a network namespace of the benchmark's own (the
//! thread unshares it), so the host's network is untouched; the namespace
//! and all its devices vanish when the run ends.
//!
//! Run: `cargo bench -p firehost --bench network`. Needs root, `ip`, `nft`
//! and libnftables; `BENCH_ITERS` scales the iteration counts.

// Statistics over small, non-negative sample counts.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::process::Command;
use std::time::{Duration, Instant};

use firehost::VmId;
use firehost::net::host::{GuestAddress, HostNetwork, NetSpec, NetworkConfig, Uplink};
use firehost::net::tap::{TapOwner, tap_name_for_vm};
use firehost::net::{IfName, Netlink};

fn iters(default: usize) -> usize {
    let scale: f64 = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((default as f64) * scale).max(3.0) as usize
}

/// Median and 90th percentile of `samples`.
fn stats(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

/// A (setup, teardown) series.
type Cycles = [(Duration, Duration)];

/// The median of one part of a series, in seconds.
fn median(cycles: &Cycles, part: fn(&(Duration, Duration)) -> Duration) -> f64 {
    stats(cycles.iter().map(part).collect()).0.as_secs_f64()
}

/// Prints setup, teardown and their sum for one series.
fn report(label: &str, cycles: &Cycles) {
    let show = |part: fn(&(Duration, Duration)) -> Duration| {
        let (med, p90) = stats(cycles.iter().map(part).collect());
        format!("{:8.3} / {:8.3} ms", ms(med), ms(p90))
    };
    println!("  {label}");
    println!("    setup    {}", show(|c| c.0));
    println!("    teardown {}", show(|c| c.1));
    println!("    both     {}", show(|c| c.0 + c.1));
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?}: {status}");
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("network bench: skipped (needs root to make a network namespace)");
        return;
    }
    for tool in ["ip", "nft"] {
        if Command::new(tool).arg("-V").output().is_err() {
            eprintln!("network bench: skipped ({tool} is not installed: it is the baseline)");
            return;
        }
    }
    let thread = std::thread::spawn(|| {
        // SAFETY: only this thread's namespace changes; no memory is passed.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        // Two workers, as a service's runtime has several: a netlink request
        // runs in the kernel inside `sendmsg`, so a link deletion (about
        // 20 ms here) holds the worker that sends it. The workers are made
        // from this thread and so share its namespace.
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(bench());
    });
    thread.join().unwrap();
}

async fn bench() {
    let state = tempfile::tempdir().unwrap();
    let nl = Netlink::connect().unwrap();
    // An uplink (one end of a veth pair), so that the NAT and forwarding
    // rules are the real ones.
    nl.handle()
        .link()
        .add(rtnetlink::LinkVeth::new("up0", "up0peer").build())
        .execute()
        .await
        .unwrap();
    let config = NetworkConfig {
        uplink: Uplink::Interface(IfName::new("up0").unwrap()),
        dns: Some(vec![]),
        ..NetworkConfig::default()
    };
    let net = HostNetwork::new(config, state.path()).unwrap();
    let spec = NetSpec::default();
    let vm = |i: usize| VmId::new(format!("vm-{i}")).unwrap();
    // Holds the network up for the whole run.
    net.attach(&VmId::new("anchor").unwrap(), &spec)
        .await
        .unwrap();

    // (setup, teardown) of one VM.
    let cycle = |id: VmId| {
        let (net, spec) = (&net, &spec);
        async move {
            let t = Instant::now();
            net.attach(&id, spec).await.unwrap();
            let setup = t.elapsed();
            let t = Instant::now();
            net.detach(&id).await.unwrap();
            (setup, t.elapsed())
        }
    };

    // Warm up both paths.
    for i in 0..5 {
        cycle(vm(100_000 + i)).await;
    }
    let shell_vm = VmId::new("shell").unwrap();
    let shell_cycle = || {
        let tap = tap_name_for_vm(&shell_vm, 0, 0);
        let tap = tap.as_str();
        let t = Instant::now();
        run(
            "ip",
            &[
                "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr", "user", "0",
            ],
        );
        run("ip", &["link", "set", tap, "master", "fhbr0", "up"]);
        run("ip", &["link", "set", tap, "alias", "firehost:bench:shell"]);
        let add = format!(
            "add element bridge firehost taps {{ \"{tap}\" }}; add element bridge firehost bindings {{ \"{tap}\" . 06:00:00:00:ff:01 . 172.30.255.1 }}"
        );
        run("nft", &[add.as_str()]);
        let setup = t.elapsed();
        let t = Instant::now();
        let del = format!(
            "delete element bridge firehost taps {{ \"{tap}\" }}; delete element bridge firehost bindings {{ \"{tap}\" . 06:00:00:00:ff:01 . 172.30.255.1 }}"
        );
        run("nft", &[del.as_str()]);
        run("ip", &["link", "del", tap]);
        (setup, t.elapsed())
    };
    shell_cycle();

    // 1. Ours vs shell-outs, interleaved so drift hits both.
    let rounds = iters(100);
    let (mut ours, mut shell) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        ours.push(cycle(vm(i)).await);
        shell.push(shell_cycle());
    }
    println!("network setup and teardown per VM ({rounds} rounds, interleaved; median / p90)");
    report("firehost (netlink + libnftables)", &ours);
    report("ip/nft shell-outs (6 processes)", &shell);
    println!(
        "  speed-up: setup {:.1}x, teardown {:.1}x, both {:.1}x",
        median(&shell, |c| c.0) / median(&ours, |c| c.0),
        median(&shell, |c| c.1) / median(&ours, |c| c.1),
        median(&shell, |c| c.0 + c.1) / median(&ours, |c| c.0 + c.1),
    );

    // 2. A clone's network: a TAP on the bridge (the baseline), a bridged
    // namespace, and a translating namespace (what every restore gets),
    // interleaved so drift hits all three.
    let guest = GuestAddress {
        ip: "172.30.0.2".parse().unwrap(),
        mac: "06:00:ac:1e:00:02".parse().unwrap(),
    };
    let namespaced = NetSpec {
        netns: true,
        ..NetSpec::default()
    };
    let rounds = iters(50);
    let (mut plain, mut bridged, mut translated) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        plain.push(cycle(vm(200_000 + i)).await);
        let id = vm(300_000 + i);
        let t = Instant::now();
        net.attach(&id, &namespaced).await.unwrap();
        let setup = t.elapsed();
        let t = Instant::now();
        net.detach(&id).await.unwrap();
        bridged.push((setup, t.elapsed()));
        let id = vm(400_000 + i);
        let t = Instant::now();
        net.attach_translated(&id, &spec, guest, TapOwner::default())
            .await
            .unwrap();
        let setup = t.elapsed();
        let t = Instant::now();
        net.detach(&id).await.unwrap();
        translated.push((setup, t.elapsed()));
    }
    println!("a clone's network ({rounds} rounds, interleaved; median / p90)");
    report("TAP on the bridge (baseline)", &plain);
    report("namespace, bridged inside", &bridged);
    report("namespace, translating (a restore's)", &translated);
    println!(
        "  translating / TAP: setup {:.1}x, teardown {:.1}x, both {:.1}x; translating / bridged: both {:.2}x",
        median(&translated, |c| c.0) / median(&plain, |c| c.0),
        median(&translated, |c| c.1) / median(&plain, |c| c.1),
        median(&translated, |c| c.0 + c.1) / median(&plain, |c| c.0 + c.1),
        median(&translated, |c| c.0 + c.1) / median(&bridged, |c| c.0 + c.1),
    );

    // 3. Parallelism: a batch of VMs at once vs one after another,
    // interleaved round by round.
    const BATCH: usize = 16;
    let rounds = iters(10);
    let (mut one_by_one, mut at_once) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let ids: Vec<VmId> = (0..BATCH).map(|i| vm(500_000 + round * 100 + i)).collect();
        let t = Instant::now();
        for id in &ids {
            net.attach(id, &spec).await.unwrap();
        }
        let setup = t.elapsed();
        let t = Instant::now();
        for id in &ids {
            net.detach(id).await.unwrap();
        }
        one_by_one.push((setup, t.elapsed()));

        let ids: Vec<VmId> = (0..BATCH).map(|i| vm(600_000 + round * 100 + i)).collect();
        let t = Instant::now();
        let attached = futures_util::future::join_all(ids.iter().map(|id| net.attach(id, &spec)));
        for result in attached.await {
            result.unwrap();
        }
        let setup = t.elapsed();
        let t = Instant::now();
        for result in futures_util::future::join_all(ids.iter().map(|id| net.detach(id))).await {
            result.unwrap();
        }
        at_once.push((setup, t.elapsed()));
    }
    println!(
        "parallelism ({rounds} rounds of {BATCH} VMs, interleaved; wall time per batch, median / p90)"
    );
    report("one after another", &one_by_one);
    report("all at once", &at_once);
    println!(
        "  at once / one by one: setup {:.2}x, teardown {:.2}x, both {:.2}x",
        median(&at_once, |c| c.0) / median(&one_by_one, |c| c.0),
        median(&at_once, |c| c.1) / median(&one_by_one, |c| c.1),
        median(&at_once, |c| c.0 + c.1) / median(&one_by_one, |c| c.0 + c.1),
    );

    // A quick change to the anchor issued together with the detach of 16
    // other VMs, vs on a quiet network, interleaved round by round. One
    // change per round: it is the one that would queue behind the batch.
    let anchor = VmId::new("anchor").unwrap();
    let mapping: firehost::PortMapping = "18080:80".parse().unwrap();
    let change = || async {
        let t = Instant::now();
        net.publish(&anchor, mapping).await.unwrap();
        net.unpublish(&anchor, mapping).await.unwrap();
        t.elapsed()
    };
    let rounds = iters(20);
    let (mut quiet, mut busy) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        quiet.push(change().await);
        let ids: Vec<VmId> = (0..BATCH).map(|i| vm(700_000 + round * 100 + i)).collect();
        for id in &ids {
            net.attach(id, &spec).await.unwrap();
        }
        let churn = futures_util::future::join_all(ids.iter().map(|id| net.detach(id)));
        let (detached, took) = futures_util::future::join(churn, change()).await;
        for result in detached {
            result.unwrap();
        }
        busy.push(took);
    }
    let (quiet_med, quiet_p90) = stats(quiet);
    let (busy_med, busy_p90) = stats(busy);
    println!("publish + unpublish of one VM ({rounds} rounds; median / p90)");
    println!(
        "  on a quiet network             {:8.3} / {:8.3} ms",
        ms(quiet_med),
        ms(quiet_p90)
    );
    println!(
        "  issued with {BATCH} VMs' detach    {:8.3} / {:8.3} ms",
        ms(busy_med),
        ms(busy_p90)
    );
    println!(
        "  busy / quiet: {:.2}x",
        busy_med.as_secs_f64() / quiet_med.as_secs_f64()
    );

    // 2. Scaling: the same cycle with 1 and with 499 other VMs attached.
    let samples = iters(200);
    let mut first = Vec::new();
    for i in 0..samples {
        first.push(cycle(vm(200_000 + i)).await);
    }
    for i in 0..498 {
        net.attach(&vm(300_000 + i), &spec).await.unwrap();
    }
    assert_eq!(net.attached().await.len(), 499);
    let mut last = Vec::new();
    for i in 0..samples {
        last.push(cycle(vm(400_000 + i)).await);
    }
    println!("scaling ({samples} cycles each; median / p90)");
    report("with 1 VM on the network", &first);
    report("with 499 VMs (the 500th)", &last);
    println!(
        "  500th / 1st: setup {:.2}x, teardown {:.2}x, both {:.2}x",
        median(&last, |c| c.0) / median(&first, |c| c.0),
        median(&last, |c| c.1) / median(&first, |c| c.1),
        median(&last, |c| c.0 + c.1) / median(&first, |c| c.0 + c.1),
    );
}
