//! Test helpers: spawn the VMM like the library spawns Firecracker, talk raw
//! HTTP/1.1 to its socket, watch its console and its exit.
//!
//! The suite runs against `fake-firecracker` by default and against a real
//! Firecracker when `FIREHOST_FIRECRACKER` names one (run as root, with
//! `/dev/kvm`). The same assertions must pass on both: where they differ, the
//! fake is wrong. Tests of what only the fake has (the `FAKE_FC_*` knobs, its
//! console banner, its vmstate format) skip on the real binary with
//! `firehost_testkit::fake_only!`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any wait in these tests may take.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `f` until it returns `Some`, for at most [`DEADLINE`].
pub fn poll<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    firehost_testkit::wait_until(what, DEADLINE, f)
}

/// The VMM binary under test: `FIREHOST_FIRECRACKER` if set, else the fake.
pub fn bin() -> PathBuf {
    firehost_testkit::real_firecracker()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_fake-firecracker")))
}

/// Whether the suite runs against a real Firecracker.
pub fn is_real() -> bool {
    firehost_testkit::real_firecracker().is_some()
}

/// One running VMM (the fake or a real Firecracker), killed on drop.
pub struct Fake {
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub child: Child,
    stdout: mpsc::Receiver<String>,
    pub console: Vec<String>,
}

/// A response: status, raw head, body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Resp {
    pub fn fault(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.body).expect("json fault body");
        v["fault_message"]
            .as_str()
            .expect("fault_message")
            .to_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("json body")
    }
}

impl Fake {
    /// Spawns the fake with `--api-sock <dir>/api.sock --id <id>` plus `extra` flags
    /// and the given environment.
    pub fn spawn_with(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::spawn_in(dir, extra, env)
    }

    pub fn spawn_in(dir: tempfile::TempDir, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let sock = dir.path().join("api.sock");
        let mut cmd = Command::new(bin());
        cmd.arg("--api-sock")
            .arg(&sock)
            .arg("--id")
            .arg("test-vm")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // As root, Firecracker (and the fake) creates a TAP named in PUT
        // /network-interfaces when none exists: each VMM gets a network
        // namespace of its own, so that never touches the host's.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            use std::os::unix::process::CommandExt;
            // SAFETY: unshare(2) only, which is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::unshare(libc::CLONE_NEWNET) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn fake-firecracker");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            dir,
            sock,
            child,
            stdout: rx,
            console: Vec::new(),
        }
    }

    pub fn spawn() -> Self {
        let f = Self::spawn_with(&[], &[]);
        f.wait_socket();
        f
    }

    /// Waits until the API socket accepts connections.
    pub fn wait_socket(&self) {
        poll("the API socket", || UnixStream::connect(&self.sock).ok());
    }

    pub fn client(&self) -> Client {
        Client(UnixStream::connect(&self.sock).expect("connect"))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Creates a file of `len` bytes in the test directory.
    pub fn file(&self, name: &str, len: u64) -> PathBuf {
        let p = self.path(name);
        std::fs::File::create(&p).unwrap().set_len(len).unwrap();
        p
    }

    /// True if no stdout line read so far contains `needle`.
    pub fn console_has_no(&self, needle: &str) -> bool {
        !self.console.iter().any(|l| l.contains(needle))
    }

    /// Waits for a stdout line containing `needle`.
    pub fn wait_line(&mut self, needle: &str) -> String {
        if let Some(l) = self.console.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let start = Instant::now();
        loop {
            let left = DEADLINE
                .checked_sub(start.elapsed())
                .unwrap_or_else(|| panic!("no line with {needle:?} in {:?}", self.console));
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    self.console.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {needle:?} in {:?}", self.console),
            }
        }
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        poll("the process to exit", || self.child.try_wait().unwrap())
    }

    pub fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut s).unwrap();
        }
        s
    }

    /// Writes [`halt_kernel`](fake_firecracker::testing::halt_kernel) to the test
    /// directory, once, and returns its path.
    pub fn kernel(&self) -> PathBuf {
        let p = self.path("vmlinux");
        if !p.exists() {
            std::fs::write(&p, fake_firecracker::testing::halt_kernel()).unwrap();
        }
        p
    }

    /// Configures a bootable VM: the halt kernel, 2 vCPUs / 256 MiB, a root drive.
    pub fn configure(&self, c: &mut Client) {
        let kernel = self.kernel();
        let rootfs = self.file("rootfs.ext4", 1 << 20);
        let boot = format!(
            r#"{{"kernel_image_path":"{}","boot_args":"console=ttyS0 reboot=k panic=1"}}"#,
            kernel.display()
        );
        c.expect_204("PUT", "/boot-source", &boot);
        c.expect_204(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":2,"mem_size_mib":256}"#,
        );
        let drive = format!(
            r#"{{"drive_id":"rootfs","path_on_host":"{}","is_root_device":true,"is_read_only":false}}"#,
            rootfs.display()
        );
        c.expect_204("PUT", "/drives/rootfs", &drive);
    }

    pub fn start(&self, c: &mut Client) {
        self.configure(c);
        c.expect_204("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kept-alive HTTP/1.1 connection.
pub struct Client(pub UnixStream);

impl Client {
    pub fn send_raw(&mut self, raw: &[u8]) -> Resp {
        self.0.write_all(raw).unwrap();
        self.read_response()
    }

    pub fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Resp {
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ));
        } else {
            req.push_str("\r\n");
        }
        self.send_raw(req.as_bytes())
    }

    pub fn get(&mut self, path: &str) -> Resp {
        self.request("GET", path, None)
    }

    pub fn expect_204(&mut self, method: &str, path: &str, body: &str) {
        let r = self.request(method, path, Some(body));
        assert_eq!(r.status, 204, "{method} {path}: {}", r.body);
    }

    pub fn expect_fault(&mut self, method: &str, path: &str, body: &str) -> String {
        let r = self.request(method, path, Some(body));
        assert_eq!(r.status, 400, "{method} {path}: {}", r.body);
        r.fault()
    }

    /// `GET path`, or `None` when the VMM closes the connection (or it
    /// fails) instead of answering. Waits at most 10 s for either.
    pub fn try_get(&mut self, path: &str) -> Option<Resp> {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n");
        self.0
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        self.0.write_all(req.as_bytes()).ok()?;
        let mut first = [0u8; 1];
        match self.0.read(&mut first) {
            Ok(1) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("GET {path}: neither an answer nor a closed connection in 10 s")
            }
            _ => return None,
        }
        let mut rest = Vec::new();
        let _ = self.0.read_to_end(&mut rest);
        let head = String::from_utf8_lossy(&[&first[..], &rest].concat()).into_owned();
        let status = head.get(9..12)?.parse().ok()?;
        Some(Resp {
            status,
            head: head.clone(),
            body: head,
        })
    }

    fn read_response(&mut self) -> Resp {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = self.0.read(&mut byte).expect("read response");
            assert!(
                n == 1,
                "connection closed; got {:?}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let status: u16 = head[9..12].parse().unwrap();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).unwrap();
        Resp {
            status,
            head,
            body: String::from_utf8(body).unwrap(),
        }
    }
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
