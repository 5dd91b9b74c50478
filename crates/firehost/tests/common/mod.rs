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
            lock: Duration::ZERO,
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

/// A minimal `x86_64` ELF "kernel": one `PT_LOAD` segment at 16 MiB whose code
/// is `cli; hlt; jmp hlt`. Firecracker loads and starts it like a vmlinux;
/// the vCPU halts at once and stays halted, so a real Firecracker can run,
/// pause, resume and snapshot it on any KVM host without a real guest.
pub fn halt_kernel() -> Vec<u8> {
    const LOAD_ADDR: u64 = 0x100_0000;
    const EHDR: u16 = 64;
    const PHDR: u16 = 56;
    let code: [u8; 4] = [0xfa, 0xf4, 0xeb, 0xfd];
    let headers = u64::from(EHDR + PHDR);
    let total = headers + code.len() as u64;
    let mut elf = Vec::new();
    // e_ident: magic, 64-bit, little endian, version 1, System V ABI.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: executable
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&(LOAD_ADDR + headers).to_le_bytes()); // e_entry
    elf.extend_from_slice(&u64::from(EHDR).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&EHDR.to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&PHDR.to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    // Program header: PT_LOAD, R+X, the whole file at LOAD_ADDR.
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&total.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&total.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.extend_from_slice(&code);
    assert_eq!(elf.len() as u64, total);
    elf
}

/// Runs `f` with a deadline, failing the test with `what` if it runs out.
pub async fn within<T>(what: &str, limit: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"))
}
