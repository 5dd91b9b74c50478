//! What one command costs with 1 → 1,000 VMs on the host (issue 11; aims:
//! a command that touches one VM ≤ 1.2× its cost with one VM, `ls` of 1,000
//! VMs ≤ 50 ms, a long-lived manager not slowed either).
//!
//! The VMs are fake-firecracker VMMs, created and not started (a started
//! fake gives its guest real memory: 1,000 of them would not fit). They
//! are added in steps; at each step every measure is taken, and the ratio
//! is against the same measure at the first step (one VM), in the same
//! run:
//!
//! - `firehost inspect v1`, `firehost ls`, `firehost run --no-start` of one
//!   more VM, and a `pause` + `resume` of the one running VM, each a whole
//!   process, wall time;
//! - the control: `firehost inspect` on a second state directory that holds
//!   one VM throughout, which says how much of any growth is the machine's
//!   (1,000 more processes) rather than firehost's;
//! - `Manager::open` of the library with `Recovery::Full` (what a service
//!   pays once) and `Recovery::Lazy`;
//! - a `get` + `pause` + `resume` of one VM in a long-lived manager opened
//!   with every VM in it.
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

    fn create(&self, name: &str) -> Duration {
        let (kernel, rootfs) = (self.kernel.display(), self.rootfs.display());
        let (kernel, rootfs) = (kernel.to_string(), rootfs.to_string());
        self.cli(&[
            "run",
            "--no-start",
            "--name",
            name,
            "--kernel",
            &kernel,
            "--rootfs",
            &rootfs,
        ])
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

/// One step's figures.
#[derive(Clone, Copy)]
struct Step {
    vms: usize,
    control: Duration,
    inspect: Duration,
    ls: Duration,
    run: Duration,
    pause_resume: Duration,
    open_full: Duration,
    open_lazy: Duration,
    long_lived: Duration,
    long_lived_control: Duration,
}

fn measure(
    host: &Host,
    control: &Host,
    rt: &tokio::runtime::Runtime,
    vms: usize,
    extra: &mut usize,
) -> Step {
    let control_host = control;
    let control = repeat(21, || control_host.cli(&["inspect", "alone"]));
    let inspect = repeat(21, || host.cli(&["inspect", "v1"]));
    let ls = repeat(21, || host.cli(&["ls"]));
    let run = repeat(11, || {
        *extra += 1;
        host.create(&format!("x{extra}"))
    });
    let pause_resume = repeat(11, || {
        host.cli(&["pause", "live"]) + host.cli(&["resume", "live"])
    });
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
    let (long_lived, long_lived_control) = fresh.block_on(async {
        let manager = Manager::open(host.config(Recovery::Full)).await.unwrap();
        let alone = Manager::open(control_host.config(Recovery::Full))
            .await
            .unwrap();
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
        long_lived_control,
        control,
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
    let (kernel, rootfs) = (
        control.kernel.display().to_string(),
        control.rootfs.display().to_string(),
    );
    control.cli(&[
        "run",
        "--name",
        "runner",
        "--mem-mib",
        "16",
        "--kernel",
        &kernel,
        "--rootfs",
        &rootfs,
    ]);
    // One VM runs (it is paused and resumed); the rest are created.
    let (kernel, rootfs) = (
        host.kernel.display().to_string(),
        host.rootfs.display().to_string(),
    );
    host.cli(&[
        "run",
        "--name",
        "live",
        "--mem-mib",
        "16",
        "--kernel",
        &kernel,
        "--rootfs",
        &rootfs,
    ]);
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
    println!(
        "| VMs on the host | control: inspect, 1-VM state dir | inspect | ls | run --no-start | pause + resume | open, Full | open, Lazy | long-lived get + pause + resume | the same, control manager | long-lived / control |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for s in &steps {
        let cell = |d: Duration, b: Duration| format!("{:.2} ms ({:.2}×)", ms(d), ms(d) / ms(b));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2}× |",
            s.vms,
            cell(s.control, base.control),
            cell(s.inspect, base.inspect),
            cell(s.ls, base.ls),
            cell(s.run, base.run),
            cell(s.pause_resume, base.pause_resume),
            cell(s.open_full, base.open_full),
            cell(s.open_lazy, base.open_lazy),
            cell(s.long_lived, base.long_lived),
            cell(s.long_lived_control, base.long_lived_control),
            ms(s.long_lived) / ms(s.long_lived_control),
        );
    }
}
