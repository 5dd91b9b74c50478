//! What one command costs with 1 → 1,000 VMs on the host (issue 11; aims:
//! a command that touches one VM ≤ 1.2× its cost with one VM, `ls` of 1,000
//! VMs ≤ 50 ms, a long-lived manager not slowed either).
//!
//! The VMs are fake-firecracker VMMs, created and not started (a started
//! fake gives its guest real memory: 1,000 of them would not fit). They
//! are added in steps of 1, 10, 100 and 1,000. At each step every measure
//! is taken alternately with the same measure on a control state directory
//! that holds one VM (and one running) throughout; the ratio is the
//! measure's cost relative to the control's, against the same at the first
//! step, so the machine's drift (1,000 more processes, this 2-vCPU
//! machine's noise) cancels out. The measures:
//!
//! - `firehost inspect`, `firehost ls`, `firehost run --no-start` of one
//!   more VM, and a `pause` + `resume` of the running VM, each a whole
//!   process, wall time;
//! - `Manager::open` of the library with `Recovery::Full` (what a service
//!   pays once) and `Recovery::Lazy`;
//! - a `get` + `pause` + `resume` of the running VM in a long-lived manager
//!   opened with every VM in it.
//!
//! Run: `cargo build --release -p fake-firecracker && cargo bench -p
//! firehost-cli --bench scale`. `BENCH_SCALE_MAX` caps the VM count
//! (default 1000).

#![allow(clippy::cast_precision_loss)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use firehost::VmId;
use firehost::manager::{Manager, ManagerConfig, Recovery};

/// Where the VMs live, and how to run the CLI on them.
struct Host {
    _dir: tempfile::TempDir,
    state: PathBuf,
    kernel: PathBuf,
    rootfs: PathBuf,
    fake: PathBuf,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::Builder::new()
            .prefix("fhscale-")
            .tempdir_in("/tmp")
            .unwrap();
        let kernel = dir.path().join("vmlinux");
        let rootfs = dir.path().join("rootfs");
        std::fs::write(&kernel, b"k").unwrap();
        std::fs::write(&rootfs, b"r").unwrap();
        let fake = PathBuf::from(env!("CARGO_BIN_EXE_firehost")).with_file_name("fake-firecracker");
        assert!(
            fake.is_file(),
            "build it first: cargo build --release -p fake-firecracker"
        );
        Host {
            state: dir.path().join("state"),
            _dir: dir,
            kernel,
            rootfs,
            fake,
        }
    }

    /// Runs `firehost ARGS`; returns its wall time. Panics on failure.
    fn cli(&self, args: &[&str]) -> Duration {
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_firehost"))
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--firecracker")
            .arg(&self.fake)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "firehost {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        took
    }

    /// `firehost run --no-start` of VM `name`.
    fn create(&self, name: &str) -> Duration {
        self.launch(name, &["--no-start"])
    }

    /// `firehost run` of VM `name` with a small guest (it runs, so it can
    /// be paused and resumed).
    fn start(&self, name: &str) -> Duration {
        self.launch(name, &["--mem-mib", "16"])
    }

    fn launch(&self, name: &str, extra: &[&str]) -> Duration {
        let (kernel, rootfs) = (self.kernel.display(), self.rootfs.display());
        let (kernel, rootfs) = (kernel.to_string(), rootfs.to_string());
        let mut args = vec![
            "run", "--name", name, "--kernel", &kernel, "--rootfs", &rootfs,
        ];
        args.extend_from_slice(extra);
        self.cli(&args)
    }

    fn config(&self, recovery: Recovery) -> ManagerConfig {
        let mut config = ManagerConfig::new(&self.state, &self.fake);
        config.defaults.kernel = Some(self.kernel.clone());
        config.defaults.rootfs = Some(self.rootfs.clone());
        config.recovery = recovery;
        // The CLI's settings: it recorded them first.
        config.settings = firehost::manager::SettingsPolicy::Adopt;
        config.jail = Some(firehost::jail::JailConfig::default());
        config
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for pid in firehost::vmm::find_under(&self.state) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn repeat(n: usize, mut f: impl FnMut() -> Duration) -> Duration {
    median((0..n).map(|_| f()).collect())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One step's figures: each measure on the host, and the same on the
/// control (a state directory with one VM), taken alternately.
#[derive(Clone, Copy)]
struct Step {
    vms: usize,
    inspect: (Duration, Duration),
    ls: (Duration, Duration),
    run: (Duration, Duration),
    pause_resume: (Duration, Duration),
    open_full: Duration,
    open_lazy: Duration,
    long_lived: (Duration, Duration),
}

/// Medians of `n` rounds of `a` and of `b`, run alternately so that the
/// machine's drift hits both alike.
fn paired(
    n: usize,
    mut a: impl FnMut() -> Duration,
    mut b: impl FnMut() -> Duration,
) -> (Duration, Duration) {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for _ in 0..n {
        xs.push(a());
        ys.push(b());
    }
    (median(xs), median(ys))
}

fn measure(
    host: &Host,
    control: &Host,
    rt: &tokio::runtime::Runtime,
    vms: usize,
    extra: &mut usize,
) -> Step {
    let inspect = paired(
        21,
        || host.cli(&["inspect", "v1"]),
        || control.cli(&["inspect", "alone"]),
    );
    let ls = paired(21, || host.cli(&["ls"]), || control.cli(&["ls"]));
    let mut control_extra = *extra;
    let run = paired(
        11,
        || {
            *extra += 1;
            host.create(&format!("x{extra}"))
        },
        || {
            control_extra += 1;
            control.create(&format!("x{control_extra}"))
        },
    );
    let pause_resume = paired(
        11,
        || host.cli(&["pause", "live"]) + host.cli(&["resume", "live"]),
        || control.cli(&["pause", "runner"]) + control.cli(&["resume", "runner"]),
    );
    let open = |recovery| {
        repeat(5, || {
            rt.block_on(async {
                let start = Instant::now();
                let manager = Manager::open(host.config(recovery)).await.unwrap();
                let took = start.elapsed();
                drop(manager);
                took
            })
        })
    };
    let (open_full, open_lazy) = (open(Recovery::Full), open(Recovery::Lazy));
    // A runtime of its own, so that no task left by the opens above is
    // polled in the middle, and a warm-up (the first `get` asks the VMM).
    let fresh = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Interleaved with the same round on the control's manager (one running
    // VM, nothing else), so that the machine's drift hits both alike.
    let long_lived = fresh.block_on(async {
        let manager = Manager::open(host.config(Recovery::Full)).await.unwrap();
        let alone = Manager::open(control.config(Recovery::Full)).await.unwrap();
        let (live, runner): (VmId, VmId) = ("live".parse().unwrap(), "runner".parse().unwrap());
        let round = |manager: Manager, vm: VmId| async move {
            let start = Instant::now();
            manager.get(&vm).await.unwrap();
            manager.pause(&vm).await.unwrap();
            manager.resume(&vm).await.unwrap();
            start.elapsed()
        };
        for _ in 0..10 {
            round(manager.clone(), live.clone()).await;
            round(alone.clone(), runner.clone()).await;
        }
        let (mut samples, mut control_samples) = (Vec::new(), Vec::new());
        for _ in 0..51 {
            samples.push(round(manager.clone(), live.clone()).await);
            control_samples.push(round(alone.clone(), runner.clone()).await);
        }
        (median(samples), median(control_samples))
    });
    Step {
        vms,
        inspect,
        ls,
        run,
        pause_resume,
        open_full,
        open_lazy,
        long_lived,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let max: usize = std::env::var("BENCH_SCALE_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let host = Host::new();
    let control = Host::new();
    control.create("alone");
    control.start("runner");
    // One VM runs (it is paused and resumed); the rest are created.
    host.start("live");
    let mut made = 0;
    let mut extra = 0;
    let mut steps: Vec<Step> = Vec::new();
    for target in [1usize, 10, 100, 1000].into_iter().filter(|t| *t <= max) {
        let fill = Instant::now();
        while made + 1 < target {
            made += 1;
            host.create(&format!("v{made}"));
        }
        if made == 0 {
            made = 1;
            host.create("v1");
        }
        let filled = fill.elapsed();
        let vms = 1 + made + extra;
        eprintln!(
            "{vms} VMs (filled in {:.1} s); measuring",
            filled.as_secs_f64()
        );
        steps.push(measure(&host, &control, &rt, vms, &mut extra));
    }
    let base = steps[0];
    // A measure's cost with N VMs against one VM, each relative to the
    // control taken alongside it.
    let ratio = |(h, c): (Duration, Duration), (bh, bc): (Duration, Duration)| {
        (ms(h) / ms(c)) / (ms(bh) / ms(bc))
    };
    let pair = |(h, c): (Duration, Duration)| format!("{:.2} ms ({:.2} ms)", ms(h), ms(c));
    println!(
        "| VMs on the host | inspect (control) | ratio | ls (control) | run --no-start (control) | ratio | pause + resume (control) | ratio | open, Full | open, Lazy | long-lived get + pause + resume (control) | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in &steps {
        println!(
            "| {} | {} | {:.2}× | {} | {} | {:.2}× | {} | {:.2}× | {:.2} ms | {:.2} ms | {} | {:.2}× |",
            s.vms,
            pair(s.inspect),
            ratio(s.inspect, base.inspect),
            pair(s.ls),
            pair(s.run),
            ratio(s.run, base.run),
            pair(s.pause_resume),
            ratio(s.pause_resume, base.pause_resume),
            ms(s.open_full),
            ms(s.open_lazy),
            pair(s.long_lived),
            ratio(s.long_lived, base.long_lived),
        );
    }
}
