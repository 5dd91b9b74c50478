//! What the benches share: iteration counts, medians, the fake VMM.

#![allow(
    dead_code,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::path::PathBuf;
use std::time::Duration;

/// `default` iterations, scaled by `BENCH_ITERS` (at least 3).
pub fn iters(default: usize) -> usize {
    let scale: f64 = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((default as f64) * scale).max(3.0) as usize
}

/// The median of `samples` (which must not be empty).
pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The fake VMM built next to the bench, release build first.
pub fn fake_binary() -> PathBuf {
    // target/<profile>/deps/<bench>-… → target/<profile>/fake-firecracker.
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().unwrap().parent().unwrap().parent().unwrap();
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("fake-firecracker"))
        .find(|p| p.exists())
        .expect("build fake-firecracker first: cargo build --release -p fake-firecracker")
}

/// A manager configuration in `dir` for fake-firecracker VMs of 16 MiB
/// with stand-in kernel and read-only rootfs files, consoles to files.
pub fn fake_config(dir: &std::path::Path) -> firehost::ManagerConfig {
    std::fs::write(dir.join("vmlinux"), b"kernel").unwrap();
    std::fs::write(dir.join("rootfs"), b"rootfs").unwrap();
    let mut config = firehost::ManagerConfig::new(dir.join("state"), fake_binary());
    config.defaults.kernel = Some(dir.join("vmlinux"));
    config.defaults.rootfs = Some(dir.join("rootfs"));
    config.defaults.rootfs_read_only = true;
    config.defaults.mem_mib = 16;
    config.console = firehost::manager::ConsoleTarget::File;
    config
}
