//! The vsock device: Firecracker's host side of hybrid vsock, and a
//! stand-in guest.
//!
//! **Host side, as Firecracker does it** (`docs/vsock.md`): the device
//! listens on its unix socket (`uds_path`); a host process connects and
//! writes `CONNECT <port>\n`; if a guest process listens on that vsock port,
//! the device answers `OK <host port>\n` and from then on relays bytes both
//! ways; if none does, the connection is closed without an answer.
//!
//! **The guest, as the fake plays it**: guest port `P` is whatever listens
//! on the unix socket `<uds_path>.guest/P`. With `FAKE_FC_AGENT=<path>`, the
//! fake starts that program (a `firehost-agent`) when the guest "boots"
//! (`InstanceStart`, or a snapshot load that resumes), the way a guest's
//! init would: listening on `<uds_path>.guest/10000`, with the token it
//! finds on the kernel command line (`firehost.token=`, written to a 0600
//! file for `--token-file`). The agent dies with the fake
//! (`PR_SET_PDEATHSIG`), as a guest process dies with its VM.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The vsock port the agent listens on (`firehost_proto::DEFAULT_PORT`).
pub const AGENT_PORT: u32 = 10_000;

/// The longest `CONNECT` line accepted.
const MAX_CONNECT_LINE: u64 = 64;

/// Host-side ports handed out in `OK` answers, counting up like
/// Firecracker's local port allocator.
static NEXT_HOST_PORT: AtomicU32 = AtomicU32::new(1 << 30);

/// Where guest port `port` listens for a device on `uds_path`.
pub fn guest_socket(uds_path: &Path, port: u32) -> PathBuf {
    guest_dir(uds_path).join(port.to_string())
}

fn guest_dir(uds_path: &Path) -> PathBuf {
    let mut dir = uds_path.as_os_str().to_owned();
    dir.push(".guest");
    PathBuf::from(dir)
}

/// Serves the device's unix socket on a thread of its own: each connection
/// gets the handshake and, if accepted, a relay.
pub fn serve(listener: UnixListener, uds_path: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("vsock".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let uds_path = uds_path.clone();
                let _ = std::thread::Builder::new()
                    .name("vsock-conn".into())
                    .spawn(move || {
                        let _ = relay(conn, &uds_path);
                    });
            }
        });
    if let Err(e) = spawned {
        eprintln!("fake-firecracker: cannot start the vsock thread: {e}");
    }
}

/// One host connection: `CONNECT <port>\n`, then `OK <n>\n` and a relay,
/// or a close when nothing listens on the port.
fn relay(host: UnixStream, uds_path: &Path) -> io::Result<()> {
    let mut reader = BufReader::new(host.try_clone()?);
    let mut line = String::new();
    (&mut reader).take(MAX_CONNECT_LINE).read_line(&mut line)?;
    let Some(port) = line
        .strip_prefix("CONNECT ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .and_then(|p| p.trim().parse::<u32>().ok())
    else {
        return Ok(());
    };
    let Ok(guest) = UnixStream::connect(guest_socket(uds_path, port)) else {
        // Nothing listens: Firecracker resets the connection.
        return Ok(());
    };
    let host_port = NEXT_HOST_PORT.fetch_add(1, Ordering::Relaxed);
    let mut host_writer = host.try_clone()?;
    host_writer.write_all(format!("OK {host_port}\n").as_bytes())?;
    // Bytes the host sent right after its CONNECT line are already in the
    // reader's buffer: they go to the guest first.
    let mut guest_writer = guest.try_clone()?;
    let buffered = reader.buffer().to_vec();
    guest_writer.write_all(&buffered)?;
    let mut host_reader = host;
    let to_guest = std::thread::spawn(move || {
        let _ = pump(&mut host_reader, &mut guest_writer);
        let _ = guest_writer.shutdown(std::net::Shutdown::Write);
    });
    let mut guest_reader = guest;
    let _ = pump(&mut guest_reader, &mut host_writer);
    let _ = host_writer.shutdown(std::net::Shutdown::Both);
    let _ = to_guest.join();
    Ok(())
}

/// Copies until end of stream with a buffer the size of Firecracker's
/// vsock rx/tx queues (`io::copy`'s 8 KiB would make the relay, not the
/// code under test, the bottleneck of a transfer).
fn pump(from: &mut UnixStream, to: &mut UnixStream) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// The stand-in guest's agent process.
#[derive(Debug)]
pub struct Agent {
    /// Its pid.
    pub pid: u32,
}

/// Starts the stand-in guest's agent for the device on `uds_path`, with the
/// token from `boot_args`. `None` without `FAKE_FC_AGENT`.
///
/// The agent is spawned by a thread that then waits for it: the kernel
/// sends `PR_SET_PDEATHSIG` when the *thread* that forked a child ends, so
/// that thread must outlive the agent (the fake's request threads do not).
pub fn start_agent(uds_path: &Path, boot_args: &str) -> io::Result<Option<Agent>> {
    let Some(agent) = std::env::var_os("FAKE_FC_AGENT") else {
        return Ok(None);
    };
    let dir = guest_dir(uds_path);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let socket = guest_socket(uds_path, AGENT_PORT);
    let _ = std::fs::remove_file(&socket);
    let mut command = Command::new(agent);
    command
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .stdin(Stdio::null());
    let token = boot_args.split_ascii_whitespace().find_map(|arg| {
        arg.strip_prefix("firehost.token=")
            .filter(|t| !t.is_empty())
    });
    match token {
        Some(token) => {
            let path = dir.join("token");
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?
                .write_all(token.as_bytes())?;
            command.arg("--token-file").arg(path);
        }
        None => {
            command.arg("--insecure-no-token");
        }
    }
    // SAFETY: prctl is async-signal-safe and touches no memory of the
    // parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("guest-agent".into())
        .spawn(move || match command.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(child.id()));
                let _ = child.wait();
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        })?;
    let pid = rx
        .recv()
        .map_err(|_| io::Error::other("the agent launcher thread ended"))??;
    Ok(Some(Agent { pid }))
}
