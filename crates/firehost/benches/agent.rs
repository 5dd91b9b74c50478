//! Benchmarks of the guest agent path (issue 4), reported against
//! baselines measured in the same run (see BENCHMARKS.md):
//!
//! 1. Exec round trip of `true`: connect to the VM's vsock device, the
//!    `CONNECT` handshake, the protocol handshake, exec, exit status.
//!    Median and p99. For scale, the same `true` spawned locally with
//!    `std::process::Command` (fork, exec, wait).
//! 2. File transfer into the guest, MiB/s: `AgentClient::write_file` of
//!    256 MiB. Baseline: the same bytes written into one plain unix socket
//!    whose other end copies them into a file (what `cat > file` behind a
//!    socket does). And the reverse, `read_file`, against reading the file
//!    through a plain unix socket.
//!
//! The "guest" is fake-firecracker's stand-in, which relays the vsock
//! device's socket to a real `firehost-agent` (as in `tests/agent.rs`), so
//! the path has the same hops as with Firecracker: client → device socket
//! → relay → agent.
//!
//! Run: `cargo build --release -p fake-firecracker -p firehost-agent &&
//! cargo bench -p firehost --bench agent`. `BENCH_ITERS` scales the counts.

#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firehost::agent::{ExecRequest, WriteFileRequest};
use firehost::manager::{Manager, ManagerConfig};
use firehost::vsock::VsockSpec;
use firehost::{VmId, VmSpec};

fn iters(default: usize) -> usize {
    let scale: f64 = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((default as f64) * scale).max(3.0) as usize
}

fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `target/release/<name>`, beside this bench's `deps/`.
fn sibling_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join(name);
    path.exists().then_some(path)
}

/// Sends `size` bytes of `chunk` into a plain unix socket whose server
/// thread copies them into `out`; returns the time until the file holds
/// them all.
fn unix_socket_into_file(dir: &Path, chunk: &[u8], size: usize, out: &Path) -> Duration {
    let sock = dir.join("plain.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).unwrap();
    let out = out.to_owned();
    let t = Instant::now();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut file = std::fs::File::create(&out).unwrap();
        std::io::copy(&mut conn, &mut file).unwrap()
    });
    let mut client = UnixStream::connect(&sock).unwrap();
    let mut sent = 0;
    while sent < size {
        client.write_all(chunk).unwrap();
        sent += chunk.len();
    }
    drop(client);
    assert_eq!(server.join().unwrap() as usize, size);
    t.elapsed()
}

/// Reads `path` through a plain unix socket (a server thread copies the
/// file into it); returns the time until every byte arrived.
fn file_through_unix_socket(dir: &Path, path: &Path) -> (Duration, u64) {
    let sock = dir.join("plain-read.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).unwrap();
    let path = path.to_owned();
    let t = Instant::now();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        std::io::copy(&mut file, &mut conn).unwrap();
    });
    let mut client = UnixStream::connect(&sock).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = client.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    server.join().unwrap();
    (t.elapsed(), total)
}

fn main() {
    let (Some(fake), Some(agent)) = (
        sibling_binary("fake-firecracker"),
        sibling_binary("firehost-agent"),
    ) else {
        eprintln!(
            "agent bench: skipped (build them first: cargo build --release -p fake-firecracker -p firehost-agent)"
        );
        return;
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench(fake, agent));
}

async fn bench(fake: PathBuf, agent_bin: PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, fake_firecracker::testing::halt_kernel()).unwrap();
    let mut config = ManagerConfig::new(dir.path().join("state"), &fake);
    config.defaults.kernel = Some(kernel);
    config.defaults.mem_mib = 16;
    config.vmm_env = vec![("FAKE_FC_AGENT".into(), agent_bin.into_os_string())];
    let manager = Manager::open(config).await.unwrap();
    let id = VmId::new("bench").unwrap();
    let spec = VmSpec {
        vsock: Some(VsockSpec::default()),
        ..VmSpec::default()
    };
    manager.run(&id, spec).await.unwrap();
    let agent = manager.agent(&id).await.unwrap();
    agent.wait_ready(Duration::from_secs(10)).await.unwrap();

    // 1. Exec round trip.
    let n = iters(300);
    for _ in 0..10 {
        agent
            .output(ExecRequest::new(["true"]), None)
            .await
            .unwrap();
    }
    let (mut ours, mut local) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let out = agent
            .output(ExecRequest::new(["true"]), None)
            .await
            .unwrap();
        ours.push(t.elapsed());
        assert!(out.status.success());
        let t = Instant::now();
        let status = std::process::Command::new("true").status().unwrap();
        local.push(t.elapsed());
        assert!(status.success());
    }
    println!("exec round trip of `true` ({n} runs, interleaved)");
    println!(
        "  through the agent: median {:.3} ms, p99 {:.3} ms",
        ms(quantile(&mut ours, 0.5)),
        ms(quantile(&mut ours, 0.99))
    );
    println!(
        "  local spawn+wait:  median {:.3} ms, p99 {:.3} ms",
        ms(quantile(&mut local, 0.5)),
        ms(quantile(&mut local, 0.99))
    );

    // 2. File throughput, both ways.
    let size = 256usize << 20;
    let chunk: Vec<u8> = (0..(1usize << 20))
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let rounds = iters(5);
    let target = dir.path().join("into-guest.bin");
    let plain = dir.path().join("plain.bin");
    let (mut ours_w, mut base_w, mut ours_r, mut base_r) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let reader = ChunkReader::new(&chunk, size);
        let request = WriteFileRequest {
            path: target.to_str().unwrap().to_owned(),
            mode: 0o644,
            uid: None,
            gid: None,
            create_dirs: false,
        };
        let written = agent.write_file(request, reader).await.unwrap();
        ours_w.push(t.elapsed());
        assert_eq!(written as usize, size);
        base_w.push(unix_socket_into_file(dir.path(), &chunk, size, &plain));

        let t = Instant::now();
        let (_, copied) = agent
            .read_file(target.to_str().unwrap(), tokio::io::sink())
            .await
            .unwrap();
        ours_r.push(t.elapsed());
        assert_eq!(copied as usize, size);
        let (took, total) = file_through_unix_socket(dir.path(), &plain);
        base_r.push(took);
        assert_eq!(total as usize, size);
    }
    let mib_s = |d: Duration| (size >> 20) as f64 / d.as_secs_f64();
    let (ow, bw) = (quantile(&mut ours_w, 0.5), quantile(&mut base_w, 0.5));
    let (or, br) = (quantile(&mut ours_r, 0.5), quantile(&mut base_r, 0.5));
    println!(
        "file transfer of {} MiB ({rounds} rounds, interleaved; medians)",
        size >> 20
    );
    println!(
        "  write_file: {:.0} MiB/s; plain unix socket into a file: {:.0} MiB/s; ratio {:.2}x",
        mib_s(ow),
        mib_s(bw),
        mib_s(ow) / mib_s(bw)
    );
    println!(
        "  read_file:  {:.0} MiB/s; file through a plain unix socket: {:.0} MiB/s; ratio {:.2}x",
        mib_s(or),
        mib_s(br),
        mib_s(or) / mib_s(br)
    );
    manager
        .stop(&id, firehost::manager::StopOptions::default())
        .await
        .unwrap();
    manager.destroy(&id).await.unwrap();
}

/// `size` bytes of `chunk` repeated, as an `AsyncRead`, without holding
/// them all.
struct ChunkReader<'a> {
    chunk: &'a [u8],
    left: usize,
    at: usize,
}

impl<'a> ChunkReader<'a> {
    fn new(chunk: &'a [u8], size: usize) -> Self {
        ChunkReader {
            chunk,
            left: size,
            at: 0,
        }
    }
}

impl tokio::io::AsyncRead for ChunkReader<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = buf
            .remaining()
            .min(self.left)
            .min(self.chunk.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.chunk[at..at + n]);
        self.left -= n;
        self.at = (at + n) % self.chunk.len();
        std::task::Poll::Ready(Ok(()))
    }
}
