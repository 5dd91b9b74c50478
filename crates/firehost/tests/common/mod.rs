//! Shared fixtures of the integration suite: which VMM the suite runs
//! against, a fresh host (state dir + images) per test, and waits with
//! deadlines.
//!
//! The suite runs against `fake-firecracker` by default and against a real
//! Firecracker when `FIREHOST_FIRECRACKER` names one (DESIGN.md tier 3).
//! Tests that need the fake's fault injection skip, saying so, on the real
//! binary.

#![allow(dead_code, unused_imports)] // each test file uses its own subset

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
    match firehost_testkit::real_firecracker() {
        Some(path) => Backend::Real(path),
        None => Backend::Fake(fake_firecracker_path()),
    }
}

/// `target/<profile>/fake-firecracker`, which `cargo test --workspace`
/// builds.
pub fn fake_firecracker_path() -> PathBuf {
    firehost_testkit::workspace_binary("fake-firecracker")
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
pub mod tap_guest;
pub mod udp;

/// A throwaway host: a temporary directory with a state dir and images.
pub struct TestHost {
    pub dir: tempfile::TempDir,
    pub backend: Backend,
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
}

impl TestHost {
    pub fn new() -> Self {
        Self::new_in(&std::env::temp_dir())
    }

    /// A host whose directory (state, images) is under `parent`: on the
    /// file system a test wants.
    pub fn new_in(parent: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fh-")
            .tempdir_in(parent)
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
        // Many test VMs share the one image: read-only, as two guests
        // writing one image corrupt it (and the manager refuses it). Tests
        // of writable drives ask for them.
        config.defaults.rootfs_read_only = true;
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

pub use firehost_testkit::{poll_until, process_alive, skip, within};

/// A kernel both backends accept; see [`fake_firecracker::testing::halt_kernel`].
pub fn halt_kernel() -> Vec<u8> {
    fake_firecracker::testing::halt_kernel()
}
