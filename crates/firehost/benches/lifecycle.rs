//! End-to-end benchmarks of the lifecycle path, each reported as a ratio
//! against a baseline measured in the same run (see BENCHMARKS.md):
//!
//! 1. The configure + `InstanceStart` request sequence against an
//!    in-process fake-firecracker API server: our `ApiClient` vs the same
//!    requests written by hand on a raw unix socket.
//! 2. create → running against the fake-firecracker process: `Manager::run`
//!    (spawn, readiness, configuration, start, durable records) vs spawning
//!    the same binary and sending the same requests on a raw socket.
//! 3. With `FIREHOST_FIRECRACKER`: `Manager::run` against a real Firecracker
//!    vs `firecracker --config-file` for the same VM, until `GET /` says
//!    Running.
//! 4. Heap held by the manager per idle running VM (counting allocator),
//!    consoles going to files so no ring holds output.
//!
//! Run: `cargo bench -p firehost --bench lifecycle` (from the workspace,
//! after `cargo build --release -p fake-firecracker`). Env `BENCH_ITERS`
//! scales the iteration counts.

// Statistics over sample counts and byte counts: the casts are on small,
// non-negative numbers.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_firecracker::fault::Faults;
use fake_firecracker::http::ApiServer;
use fake_firecracker::telemetry::Telemetry;
use fake_firecracker::vmm::{Vmm, VmmOptions};
use firehost::api::ApiClient;
use firehost::api::models::{
    ActionType, BootSource, Drive, InstanceActionInfo, MachineConfiguration,
};
use firehost::manager::{ConsoleTarget, ManagerConfig};
use firehost::{Manager, VmId, VmSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Counts live heap bytes, for the per-VM memory figure.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to the system allocator unchanged and only
// adds bookkeeping on an atomic counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded with the caller's arguments.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn iters(default: usize) -> usize {
    let scale: f64 = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((default as f64 * scale) as usize).max(3)
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn p99(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// A temporary directory with a kernel and rootfs for the fake.
struct Images {
    dir: tempfile::TempDir,
}

impl Images {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fh-bench-")
            .tempdir()
            .unwrap();
        std::fs::write(
            dir.path().join("vmlinux"),
            fake_firecracker::testing::halt_kernel(),
        )
        .unwrap();
        std::fs::File::create(dir.path().join("rootfs.ext4"))
            .and_then(|f| f.set_len(1 << 20))
            .unwrap();
        Images { dir }
    }
    fn kernel(&self) -> PathBuf {
        self.dir.path().join("vmlinux")
    }
    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs.ext4")
    }
}

/// VMs outlive managers by design: whatever happens to the run, kill every
/// VMM serving a socket under this directory.
impl Drop for Images {
    fn drop(&mut self) {
        for pid in firehost::vmm::find_under(self.dir.path()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Guest memory for runs against the fake: it stamps every page of its
/// guest memory at boot on a thread of its own, which on a 2-core machine
/// competes with what is measured, so its guests are kept small (the fake
/// does not load the kernel, so the halt kernel's 16 MiB load address does
/// not matter). Real Firecracker runs use 128 MiB.
fn guest_mib(name: &str) -> u64 {
    if name.contains("real") {
        128
    } else {
        SEQUENCE_MEM_MIB
    }
}

/// Guest memory of every run against the fake (see [`guest_mib`]).
const SEQUENCE_MEM_MIB: u64 = 4;

/// The bodies of the configure + start sequence.
struct Sequence {
    machine: String,
    boot: String,
    drive: String,
    start: String,
}

impl Sequence {
    fn new(images: &Images, mem_mib: u64) -> Self {
        let drive = Drive::virtio_block("rootfs", images.rootfs(), true, false);
        Sequence {
            machine: serde_json::to_string(&MachineConfiguration::new(1, mem_mib)).unwrap(),
            boot: serde_json::to_string(&BootSource::new(images.kernel())).unwrap(),
            drive: serde_json::to_string(&drive).unwrap(),
            start: serde_json::to_string(&InstanceActionInfo {
                action_type: ActionType::InstanceStart,
            })
            .unwrap(),
        }
    }
}

/// Sends one request by hand and reads the whole response.
async fn raw_request(stream: &mut UnixStream, method: &str, path: &str, body: &str) -> u16 {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::with_capacity(512);
    loop {
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return head[9..12].parse().unwrap();
            }
        }
    }
}

async fn raw_sequence(socket: &Path, seq: &Sequence) {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    raw_sequence_on(&mut stream, seq).await;
}

/// The configure + start requests on an open connection.
async fn raw_sequence_on(stream: &mut UnixStream, seq: &Sequence) {
    for (method, path, body) in [
        ("PUT", "/machine-config", &seq.machine),
        ("PUT", "/boot-source", &seq.boot),
        ("PUT", "/drives/rootfs", &seq.drive),
        ("PUT", "/actions", &seq.start),
    ] {
        assert_eq!(
            raw_request(stream, method, path, body).await,
            204,
            "{method} {path}"
        );
    }
}

/// Our client's sequence; returns the per-request latencies.
async fn client_sequence(socket: &Path, images: &Images) -> Vec<Duration> {
    let api = ApiClient::new(socket);
    let mut lat = Vec::with_capacity(4);
    let t = Instant::now();
    api.put_machine_configuration(&MachineConfiguration::new(1, SEQUENCE_MEM_MIB))
        .await
        .unwrap();
    lat.push(t.elapsed());
    let t = Instant::now();
    api.put_guest_boot_source(&BootSource::new(images.kernel()))
        .await
        .unwrap();
    lat.push(t.elapsed());
    let t = Instant::now();
    api.put_guest_drive_by_id(&Drive::virtio_block("rootfs", images.rootfs(), true, false))
        .await
        .unwrap();
    lat.push(t.elapsed());
    let t = Instant::now();
    api.create_sync_action(&InstanceActionInfo {
        action_type: ActionType::InstanceStart,
    })
    .await
    .unwrap();
    lat.push(t.elapsed());
    lat
}

/// A fresh in-process fake VMM serving `socket`.
fn serve_fake(socket: &Path) -> tokio::task::JoinHandle<()> {
    let _ = std::fs::remove_file(socket);
    let vmm = Vmm::new(
        VmmOptions {
            id: "bench".into(),
            pci_enabled: false,
            mmds_size_limit: 51200,
            exit_on_start: None,
            ignore_ctrl_alt_del: false,
            ..VmmOptions::default()
        },
        Telemetry::new("bench"),
    );
    let server = Arc::new(ApiServer::new(
        Arc::new(Mutex::new(vmm)),
        Faults::default(),
        51200,
    ));
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    tokio::spawn(server.serve(listener))
}

async fn bench_api_sequence(images: &Images) {
    let n = iters(300);
    let socket = images.dir.path().join("inproc.sock");
    let seq = Sequence::new(images, SEQUENCE_MEM_MIB);
    let (mut ours, mut raw, mut per_request) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        // Interleaved, so drift in the machine's load hits both alike.
        let server = serve_fake(&socket);
        let t = Instant::now();
        per_request.extend(client_sequence(&socket, images).await);
        ours.push(t.elapsed());
        server.abort();

        let server = serve_fake(&socket);
        let t = Instant::now();
        raw_sequence(&socket, &seq).await;
        raw.push(t.elapsed());
        server.abort();
    }
    let (m_ours, m_raw) = (median(&mut ours), median(&mut raw));
    println!("## API sequence (in-process fake, {n} iterations each)\n");
    println!("| measure | firehost ApiClient | raw socket | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| configure + InstanceStart, median | {} | {} | {:.2}× |",
        us(m_ours),
        us(m_raw),
        m_ours.as_secs_f64() / m_raw.as_secs_f64()
    );
    println!(
        "| per request, median / p99 | {} / {} | | |\n",
        us(median(&mut per_request)),
        us(p99(&mut per_request))
    );
}

async fn wait_socket(socket: &Path) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut delay = Duration::from_micros(100);
    loop {
        if let Ok(s) = UnixStream::connect(socket).await {
            return s;
        }
        assert!(Instant::now() < deadline, "socket never appeared");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(5));
    }
}

/// Starts `binary` with Firecracker's flags (output discarded), as the
/// baselines do.
fn spawn_vmm(
    binary: &Path,
    socket: &Path,
    id: &str,
    extra: &[&std::ffi::OsStr],
) -> std::process::Child {
    std::process::Command::new(binary)
        .arg("--api-sock")
        .arg(socket)
        .args(["--id", id])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Spawns `binary` like the manager does and runs the sequence by hand.
async fn raw_create_to_running(binary: &Path, dir: &Path, seq: &Sequence) -> Duration {
    let socket = dir.join("raw.sock");
    let _ = std::fs::remove_file(&socket);
    let t = Instant::now();
    let mut child = spawn_vmm(binary, &socket, "raw", &[]);
    // The connection that proved the socket ready carries the requests,
    // as the manager's does.
    let mut stream = wait_socket(&socket).await;
    raw_sequence_on(&mut stream, seq).await;
    let elapsed = t.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();
    elapsed
}

async fn bench_create_to_running(
    name: &str,
    binary: &Path,
    images: &Images,
) -> (Duration, Duration) {
    let n = iters(if name == "fake" { 40 } else { 15 });
    let state = images.dir.path().join(format!("state-{name}"));
    let mut config = ManagerConfig::new(&state, binary);
    config.defaults.kernel = Some(images.kernel());
    config.defaults.rootfs = Some(images.rootfs());
    config.defaults.mem_mib = u32::try_from(guest_mib(name)).unwrap();
    config.console = ConsoleTarget::File;
    let manager = Manager::open(config).await.unwrap();
    let seq = Sequence::new(images, guest_mib(name));
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for i in 0..n {
        let id = VmId::new(format!("b{i}")).unwrap();
        let t = Instant::now();
        manager.run(&id, VmSpec::default()).await.unwrap();
        ours.push(t.elapsed());
        manager
            .stop(
                &id,
                firehost::StopOptions {
                    graceful: Some(false),
                    grace: None,
                },
            )
            .await
            .unwrap();
        manager.destroy(&id).await.unwrap();
        raw.push(raw_create_to_running(binary, images.dir.path(), &seq).await);
    }
    (median(&mut ours), median(&mut raw))
}

/// What the log keeper costs a create with the console in a file, as a
/// thread of the manager or a process of its own (the CLI's way), against
/// the console in the ring (no keeper). The three are interleaved, one of
/// each per iteration, so the machine's drift hits them alike.
async fn bench_keeper(fake: &Path, images: &Images) {
    use firehost::vmm::keeper::KeeperProgram;
    let n = iters(40);
    let open = |name: &str, console, keeper: Option<KeeperProgram>| {
        let mut config = ManagerConfig::new(images.dir.path().join(name), fake);
        config.defaults.kernel = Some(images.kernel());
        config.defaults.rootfs = Some(images.rootfs());
        config.defaults.mem_mib = u32::try_from(guest_mib("fake")).unwrap();
        config.console = console;
        config.log_keeper_program = keeper;
        Manager::open(config)
    };
    let program = KeeperProgram::new(
        env!("CARGO_BIN_EXE_firehost-log-keeper"),
        Vec::<String>::new(),
    );
    let managers = [
        open("keeper-ring", ConsoleTarget::Ring, None)
            .await
            .unwrap(),
        open("keeper-thread", ConsoleTarget::File, None)
            .await
            .unwrap(),
        open("keeper-process", ConsoleTarget::File, Some(program))
            .await
            .unwrap(),
    ];
    let mut samples: [Vec<Duration>; 3] = Default::default();
    for i in 0..n {
        for (manager, samples) in managers.iter().zip(samples.iter_mut()) {
            let id = VmId::new(format!("k{i}")).unwrap();
            let t = Instant::now();
            manager.run(&id, VmSpec::default()).await.unwrap();
            samples.push(t.elapsed());
            let quick = firehost::StopOptions {
                graceful: Some(false),
                grace: None,
            };
            manager.stop(&id, quick).await.unwrap();
            manager.destroy(&id).await.unwrap();
        }
    }
    let [ring, thread, process] = samples.map(|mut s| median(&mut s));
    println!("## the log keeper's cost, create → running ({n} iterations each, interleaved)\n");
    println!("| console | median | ratio |");
    println!("|---|---|---|");
    println!("| ring (no keeper) | {} | 1.00× |", ms(ring));
    for (what, d) in [
        ("file, keeper thread", thread),
        ("file, keeper process (the CLI's way)", process),
    ] {
        println!(
            "| {what} | {} | {:.2}× |",
            ms(d),
            d.as_secs_f64() / ring.as_secs_f64()
        );
    }
    println!();
}

/// `firecracker --config-file` for the same VM, until GET / says Running.
async fn config_file_to_running(binary: &Path, images: &Images, i: usize) -> Duration {
    let dir = images.dir.path();
    let socket = dir.join(format!("cf{i}.sock"));
    let config = dir.join("vm.json");
    let body = serde_json::json!({
        "boot-source": { "kernel_image_path": images.kernel(), "boot_args": firehost::spec::DEFAULT_BOOT_ARGS },
        "drives": [{ "drive_id": "rootfs", "path_on_host": images.rootfs(), "is_root_device": true, "is_read_only": false }],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128, "smt": false, "track_dirty_pages": false },
    });
    std::fs::write(&config, body.to_string()).unwrap();
    let t = Instant::now();
    let mut child = spawn_vmm(
        binary,
        &socket,
        "cf",
        &["--config-file".as_ref(), config.as_os_str()],
    );
    let mut stream = wait_socket(&socket).await;
    loop {
        let answer = {
            let req = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
            stream.write_all(req.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        if answer.contains("\"Running\"") {
            break;
        }
    }
    let elapsed = t.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_file(&socket);
    elapsed
}

/// Spawns `binary` and loads `bundle` by hand (File backend, resume), until
/// the load answers.
async fn raw_restore(binary: &Path, dir: &Path, bundle: &Path) -> Duration {
    let socket = dir.join("raw-restore.sock");
    let _ = std::fs::remove_file(&socket);
    let body = serde_json::json!({
        "snapshot_path": bundle.join("vmstate"),
        "mem_backend": { "backend_type": "File", "backend_path": bundle.join("memory") },
        "resume_vm": true,
    })
    .to_string();
    let t = Instant::now();
    let mut child = spawn_vmm(binary, &socket, "rawrestore", &[]);
    let mut stream = wait_socket(&socket).await;
    assert_eq!(
        raw_request(&mut stream, "PUT", "/snapshot/load", &body).await,
        204
    );
    let elapsed = t.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();
    elapsed
}

/// Restore → running: File and Uffd (on demand) through the manager, and a
/// raw spawn + `PUT /snapshot/load`, all from one bundle of a 128 MiB VM.
/// Real Firecracker only: the fake's guest reads its whole memory on its
/// first resume, which would measure the fake, not the restore path.
async fn bench_restore(name: &str, binary: &Path, images: &Images) {
    use firehost::manager::{RestoreMemory, RestoreOptions};
    let n = iters(30);
    let state = images.dir.path().join(format!("state-restore-{name}"));
    let mut config = ManagerConfig::new(&state, binary);
    config.defaults.kernel = Some(images.kernel());
    config.defaults.rootfs = Some(images.rootfs());
    config.defaults.mem_mib = u32::try_from(guest_mib(name)).unwrap();
    config.console = ConsoleTarget::File;
    let manager = Manager::open(config).await.unwrap();
    let source = VmId::new("source").unwrap();
    manager.run(&source, VmSpec::default()).await.unwrap();
    let snap: firehost::snapshot::SnapshotName = "bench".parse().unwrap();
    manager
        .snapshot(
            &source,
            &snap,
            firehost::manager::SnapshotOptions::default(),
        )
        .await
        .unwrap();
    let bundle = manager.snapshots_dir().join("bench");
    let (mut file, mut uffd, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        for (memory, samples) in [
            (RestoreMemory::File, &mut file),
            (RestoreMemory::OnDemand, &mut uffd),
        ] {
            let id = VmId::new(format!("r{i}-{}", samples.len())).unwrap();
            let options = RestoreOptions {
                memory,
                ..RestoreOptions::default()
            };
            let t = Instant::now();
            manager.restore(&id, &snap, options).await.unwrap();
            samples.push(t.elapsed());
            let stop = firehost::StopOptions {
                graceful: Some(false),
                grace: None,
            };
            manager.stop(&id, stop).await.unwrap();
            manager.destroy(&id).await.unwrap();
        }
        raw.push(raw_restore(binary, images.dir.path(), &bundle).await);
    }
    let (file, uffd, raw) = (median(&mut file), median(&mut uffd), median(&mut raw));
    println!(
        "## restore → running, {name} ({n} iterations each, {} MiB guest)\n",
        guest_mib(name)
    );
    println!("| path | median | ratio to raw |");
    println!("|---|---|---|");
    println!(
        "| spawn + raw PUT /snapshot/load (File) | {} | 1.00× |",
        ms(raw)
    );
    println!(
        "| firehost Manager::restore, File | {} | {:.2}× |",
        ms(file),
        file.as_secs_f64() / raw.as_secs_f64()
    );
    println!(
        "| firehost Manager::restore, Uffd on demand | {} | {:.2}× |\n",
        ms(uffd),
        uffd.as_secs_f64() / raw.as_secs_f64()
    );
    let stop = firehost::StopOptions {
        graceful: Some(false),
        grace: None,
    };
    manager.stop(&source, stop).await.unwrap();
    manager.destroy(&source).await.unwrap();
}

async fn bench_real(binary: &Path, images: &Images) {
    let (ours, raw) = bench_create_to_running("real", binary, images).await;
    let n = iters(15);
    let mut cf = Vec::new();
    for i in 0..n {
        cf.push(config_file_to_running(binary, images, i).await);
    }
    let cf = median(&mut cf);
    println!("## create → running, real Firecracker ({n} iterations each)\n");
    println!("| path | median | ratio to --config-file |");
    println!("|---|---|---|");
    println!("| firecracker --config-file | {} | 1.00× |", ms(cf));
    println!(
        "| spawn + raw API sequence | {} | {:.2}× |",
        ms(raw),
        raw.as_secs_f64() / cf.as_secs_f64()
    );
    println!(
        "| firehost Manager::run | {} | {:.2}× |\n",
        ms(ours),
        ours.as_secs_f64() / cf.as_secs_f64()
    );
}

async fn bench_memory(fake: &Path, images: &Images) {
    const VMS: usize = 50;
    let state = images.dir.path().join("state-mem");
    let mut config = ManagerConfig::new(&state, fake);
    config.defaults.kernel = Some(images.kernel());
    config.defaults.rootfs = Some(images.rootfs());
    config.console = ConsoleTarget::File;
    let manager = Manager::open(config).await.unwrap();
    // Warm up lazily allocated runtime structures with one VM.
    let warm = VmId::new("warm").unwrap();
    manager.run(&warm, VmSpec::default()).await.unwrap();
    let before = LIVE_BYTES.load(Ordering::SeqCst);
    let ids: Vec<VmId> = (0..VMS)
        .map(|i| VmId::new(format!("m{i}")).unwrap())
        .collect();
    for id in &ids {
        manager.run(id, VmSpec::default()).await.unwrap();
    }
    // Let connection and pump tasks settle into their idle state.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let after = LIVE_BYTES.load(Ordering::SeqCst);
    let per_vm = (after - before) as f64 / VMS as f64;
    println!("## Manager memory per idle running VM ({VMS} VMs, console to files)\n");
    println!("| measure | value | aim |");
    println!("|---|---|---|");
    println!("| heap per VM | {:.1} KiB | ≤ 64 KiB |\n", per_vm / 1024.0);
    for id in ids.iter().chain([&warm]) {
        let stop = firehost::StopOptions {
            graceful: Some(false),
            grace: None,
        };
        manager.stop(id, stop).await.unwrap();
        manager.destroy(id).await.unwrap();
    }
}

fn fake_binary() -> PathBuf {
    // target/<profile>/deps/lifecycle-… → target/<profile>/fake-firecracker,
    // preferring the release build.
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().unwrap().parent().unwrap().parent().unwrap();
    for profile in ["release", "debug"] {
        let p = target.join(profile).join("fake-firecracker");
        if p.exists() {
            return p;
        }
    }
    panic!("build fake-firecracker first: cargo build --release -p fake-firecracker");
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let images = Images::new();
        let fake = fake_binary();
        println!("# firehost lifecycle benchmarks\n");
        println!("fake-firecracker: {}\n", fake.display());
        bench_api_sequence(&images).await;
        let (ours, raw) = bench_create_to_running("fake", &fake, &images).await;
        println!(
            "## create → running, fake-firecracker process ({} iterations each)\n",
            iters(40)
        );
        println!("| path | median | ratio |");
        println!("|---|---|---|");
        println!("| spawn + raw API sequence | {} | 1.00× |", ms(raw));
        println!(
            "| firehost Manager::run | {} | {:.2}× |\n",
            ms(ours),
            ours.as_secs_f64() / raw.as_secs_f64()
        );
        bench_keeper(&fake, &images).await;
        match std::env::var_os("FIREHOST_FIRECRACKER") {
            Some(real) => {
                bench_real(Path::new(&real), &images).await;
                bench_restore("real Firecracker", Path::new(&real), &images).await;
            }
            None => println!("skipped: real Firecracker comparison (set FIREHOST_FIRECRACKER)\n"),
        }
        bench_memory(&fake, &images).await;
    });
}
