//! Shared fixtures of the integration suite: which VMM the suite runs
//! against, a fresh host (state dir + images) per test, and waits with
//! deadlines.
//!
//! The suite runs against `fake-firecracker` by default and against a real
//! Firecracker when `FIREHOST_FIRECRACKER` names one (DESIGN.md tier 3).
//! Tests that need the fake's fault injection skip, saying so, on the real
//! binary.

#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::time::Duration;

use firehost::manager::{ManagerConfig, Timeouts};
use firehost::{Manager, VmId, VmSpec};

/// The VMM binary under test.
#[derive(Debug, Clone)]
pub enum Backend {
    /// `fake-firecracker` from this workspace.
    Fake(PathBuf),
    /// A real Firecracker.
    Real(PathBuf),
}

impl Backend {
    pub fn path(&self) -> &Path {
        match self {
            Backend::Fake(p) | Backend::Real(p) => p,
        }
    }
    pub fn is_fake(&self) -> bool {
        matches!(self, Backend::Fake(_))
    }
}

/// Picks the backend: `FIREHOST_FIRECRACKER` if set, else the fake built
/// next to this test binary (`cargo test --workspace` builds it).
pub fn backend() -> Backend {
    if let Some(path) = std::env::var_os("FIREHOST_FIRECRACKER") {
        return Backend::Real(PathBuf::from(path));
    }
    Backend::Fake(fake_firecracker_path())
}

/// `target/<profile>/fake-firecracker`, beside `target/<profile>/deps/`.
pub fn fake_firecracker_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let fake = profile_dir.join("fake-firecracker");
    assert!(
        fake.exists(),
        "{fake:?} is missing: run the suite with `cargo test --workspace` \
         (or `cargo build -p fake-firecracker` first)"
    );
    fake
}

/// `target/<profile>/firehost-agent`, if it was built (`cargo test
/// --workspace` builds it).
pub fn agent_path() -> Option<PathBuf> {
    let fake = fake_firecracker_path();
    let agent = fake.with_file_name("firehost-agent");
    agent.exists().then_some(agent)
}

pub mod net_conformance;
pub mod netns;

/// Says that a test skipped and why, straight to stderr: libtest captures
/// `eprintln!`, and a skip must be visible in a passing run.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {why}");
}

/// Skips the calling test (returns early, saying so) on the real binary.
#[macro_export]
macro_rules! fake_only {
    ($why:expr) => {
        if !$crate::common::backend().is_fake() {
            fn here() {}
            let name = std::any::type_name_of_val(&here)
                .trim_end_matches("::here")
                .trim_end_matches("::{{closure}}");
            $crate::common::skip(name, &format!("needs fake-firecracker ({})", $why));
            return;
        }
    };
}

/// A throwaway host: a temporary directory with a state dir and images.
pub struct TestHost {
    pub dir: tempfile::TempDir,
    pub backend: Backend,
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
}

impl TestHost {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fh-")
            .tempdir()
            .expect("temp dir");
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, halt_kernel()).unwrap();
        let rootfs = dir.path().join("rootfs.ext4");
        std::fs::File::create(&rootfs)
            .and_then(|f| f.set_len(1 << 20))
            .unwrap();
        TestHost {
            dir,
            backend: backend(),
            kernel,
            rootfs,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A manager configuration with short deadlines for tests.
    pub fn config(&self) -> ManagerConfig {
        let mut config = ManagerConfig::new(self.state_dir(), self.backend.path());
        config.defaults.kernel = Some(self.kernel.clone());
        config.defaults.rootfs = Some(self.rootfs.clone());
        config.timeouts = Timeouts {
            api_socket: Duration::from_secs(5),
            request: Duration::from_secs(5),
            stop_grace: Duration::from_secs(2),
            after_kill: Duration::from_secs(5),
            // Tests re-open managers in one process while other tests spawn
            // VMMs: a spawn in flight briefly shares the fd table (and so
            // the flock) of a manager being dropped. Wait it out.
            lock: Duration::from_secs(5),
            probe: Duration::from_millis(500),
        };
        config
    }

    /// Like [`config`](Self::config), with fake-firecracker fault knobs.
    pub fn config_with_faults(&self, env: &[(&str, &str)]) -> ManagerConfig {
        let mut config = self.config();
        config.vmm_env = env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        config
    }

    pub async fn manager(&self) -> Manager {
        Manager::open(self.config()).await.expect("open manager")
    }

    pub fn spec(&self) -> VmSpec {
        VmSpec::default()
    }

    /// Names of the VM directories on disk.
    pub fn vm_dirs(&self) -> Vec<String> {
        match std::fs::read_dir(self.state_dir().join("vms")) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Pids of VMMs serving a socket of VM `id` of this host.
    pub fn vmm_pids(&self, id: &VmId) -> Vec<i32> {
        let socket = self
            .state_dir()
            .join("vms")
            .join(id.as_str())
            .join("api.sock");
        firehost::vmm::find_by_api_socket(&socket)
    }
}

/// VMs outlive managers by design, so a test that ends without destroying
/// its VMs would leak their VMMs: kill every VMM serving a socket under this
/// host's directory.
impl Drop for TestHost {
    fn drop(&mut self) {
        for pid in firehost::vmm::find_under(self.dir.path()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

pub fn id(s: &str) -> VmId {
    VmId::new(s).unwrap()
}

/// Whether a process exists (a zombie counts as gone).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// A kernel both backends accept; see [`fake_firecracker::testing::halt_kernel`].
pub fn halt_kernel() -> Vec<u8> {
    fake_firecracker::testing::halt_kernel()
}

/// Runs `f` with a deadline, failing the test with `what` if it runs out.
pub async fn within<T>(what: &str, limit: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"))
}

/// Polls `check` (every 10 ms) until it gives a value, for at most
/// `limit`; panics naming `what` after that. For files another process or
/// thread fills (the log keeper's copies), which announce nothing.
pub async fn poll_until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
