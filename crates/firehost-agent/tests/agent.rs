//! The agent binary, end to end: each test starts `firehost-agent` on a
//! unix socket in its own directory with a token file, and talks to it with
//! a small client built on `firehost-proto`.
//!
//! Nothing here sleeps to wait: the agent says `ready` on stderr, processes
//! are watched through pidfds, and every wait has a deadline.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader as StdBufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firehost_proto::{
    AgentMessage, CHUNK, ClientMessage, ErrorCode, ExecRequest, FileKind, Frame, FrameKind,
    PROTOCOL_VERSION, Secret, Token, WriteFileRequest, read_frame, receive, send, write_frame,
};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long the agent may take to say it is ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long any one test may take.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a killed process may take to be gone.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

const TOKEN: &str = "0123456789abcdef-test-token";

/// Runs a test body with the suite's deadline.
async fn within<T>(body: impl Future<Output = T>) -> T {
    firehost_testkit::within("the test", TEST_TIMEOUT, body).await
}

/// A running agent and its directory.
struct Agent {
    child: Option<Child>,
    dir: tempfile::TempDir,
    socket: PathBuf,
    log: Arc<Mutex<String>>,
    lines: std_mpsc::Receiver<String>,
    log_thread: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    fn start() -> Agent {
        Agent::start_with(&[], &[])
    }

    /// Starts the agent with extra flags and environment variables.
    fn start_with(flags: &[&str], env: &[(&str, &str)]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_firehost-agent"));
        Agent::agent_args(&mut cmd, dir.path());
        cmd.args(flags).envs(env.iter().copied());
        Agent::launch(cmd, dir)
    }

    /// Adds the flags every test agent gets: its socket and token file in
    /// `dir`, and verbose logging.
    fn agent_args(cmd: &mut Command, dir: &Path) {
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        cmd.arg("--listen")
            .arg(format!("unix:{}", dir.join("agent.sock").display()))
            .arg("--token-file")
            .arg(&token_file)
            .arg("--verbose");
    }

    /// Runs `cmd` (the agent, or a wrapper around it) and waits until the
    /// agent says it is ready.
    fn launch(mut cmd: Command, dir: tempfile::TempDir) -> Agent {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let (log, lines, log_thread) = watch_log(child.stderr.take().unwrap());
        let agent = Agent {
            child: Some(child),
            socket: dir.path().join("agent.sock"),
            dir,
            log,
            lines,
            log_thread: Some(log_thread),
        };
        agent.wait_for_line("info: ready:", STARTUP_TIMEOUT);
        agent
    }

    /// Waits until the agent has logged a line containing `needle` (earlier
    /// lines count too).
    fn wait_for_line(&self, needle: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        // Every line reaches the log before the channel: a line missed in
        // the log is still to come on the channel.
        while !self.log().contains(needle) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if self.lines.recv_timeout(left).is_err() {
                panic!("no log line with {needle:?}; the log:\n{}", self.log());
            }
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// A connection that has not said hello yet.
    async fn raw(&self) -> Client {
        let stream = UnixStream::connect(&self.socket).await.unwrap();
        let (r, w) = stream.into_split();
        Client {
            r: BufReader::new(r),
            w,
        }
    }

    /// A session past the handshake.
    async fn connect(&self) -> Client {
        let mut client = self.raw().await;
        client
            .send(&ClientMessage::Hello {
                version: PROTOCOL_VERSION,
                token: Token(TOKEN.into()),
            })
            .await;
        match client.recv().await {
            AgentMessage::Welcome { version, .. } => assert_eq!(version, PROTOCOL_VERSION),
            other => panic!("expected welcome, got {other:?}"),
        }
        client
    }

    /// Stops the agent with SIGTERM and returns its whole log.
    fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "the agent exited with {status}");
        self.log_thread.take().unwrap().join().unwrap();
        self.log()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Collects the agent's stderr, and passes each line on as it comes.
fn watch_log(
    stderr: std::process::ChildStderr,
) -> (
    Arc<Mutex<String>>,
    std_mpsc::Receiver<String>,
    std::thread::JoinHandle<()>,
) {
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std_mpsc::channel();
    let thread_log = Arc::clone(&log);
    let thread = std::thread::spawn(move || {
        for line in StdBufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            {
                let mut log = thread_log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
            let _ = tx.send(line);
        }
    });
    (log, rx, thread)
}

/// A test's side of a session.
struct Client {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl Client {
    async fn send(&mut self, message: &ClientMessage) {
        send(&mut self.w, message).await.unwrap();
    }

    async fn write(&mut self, kind: FrameKind, payload: &[u8]) {
        write_frame(&mut self.w, kind, payload).await.unwrap();
        self.w.flush().await.unwrap();
    }

    async fn recv(&mut self) -> AgentMessage {
        receive(&mut self.r)
            .await
            .unwrap()
            .expect("the agent closed the session")
    }

    async fn frame(&mut self) -> Option<Frame> {
        read_frame(&mut self.r).await.unwrap()
    }

    /// Reads an `Error` and then the end of the session.
    async fn expect_error(mut self) -> (ErrorCode, String) {
        let answer = self.recv().await;
        let AgentMessage::Error { code, message } = answer else {
            panic!("expected an error, got {answer:?}");
        };
        assert!(self.frame().await.is_none(), "the session stays open");
        (code, message)
    }
}

/// What an exec produced.
#[derive(Debug, Default)]
struct Finished {
    pid: u32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    largest_frame: usize,
}

/// Reads an exec's output until `Exited`.
async fn collect(r: &mut BufReader<OwnedReadHalf>, pid: u32) -> Finished {
    let mut done = Finished {
        pid,
        ..Finished::default()
    };
    loop {
        let frame = read_frame(r)
            .await
            .unwrap()
            .expect("the session ended before Exited");
        done.largest_frame = done.largest_frame.max(frame.payload.len());
        match frame.kind {
            FrameKind::Stdout => done.stdout.extend_from_slice(&frame.payload),
            FrameKind::Stderr => done.stderr.extend_from_slice(&frame.payload),
            FrameKind::Control => match firehost_proto::decode::<AgentMessage>(&frame).unwrap() {
                AgentMessage::Exited {
                    code,
                    signal,
                    timed_out,
                } => {
                    done.code = code;
                    done.signal = signal;
                    done.timed_out = timed_out;
                    return done;
                }
                other => panic!("unexpected {other:?} during an exec"),
            },
            other => panic!("unexpected {other:?} frame during an exec"),
        }
    }
}

/// Starts `req`; returns the session and the pid.
async fn start(agent: &Agent, req: ExecRequest) -> (Client, u32) {
    let mut client = agent.connect().await;
    client.send(&ClientMessage::Exec(req)).await;
    match client.recv().await {
        AgentMessage::Started { pid } => (client, pid),
        other => panic!("expected started, got {other:?}"),
    }
}

/// Runs `req` to its end, feeding `stdin` (when given) while reading.
async fn exec(agent: &Agent, mut req: ExecRequest, stdin: Option<Vec<u8>>) -> Finished {
    req.stdin = stdin.is_some();
    let (client, pid) = start(agent, req).await;
    let Client { mut r, mut w } = client;
    let feed = async move {
        if let Some(data) = stdin {
            for chunk in data.chunks(CHUNK) {
                write_frame(&mut w, FrameKind::Stdin, chunk).await.unwrap();
            }
            write_frame(&mut w, FrameKind::Eof, &[]).await.unwrap();
            w.flush().await.unwrap();
        }
        // Closing the connection before Exited would kill the process.
        w
    };
    let (_w, done) = tokio::join!(feed, collect(&mut r, pid));
    done
}

fn argv(args: &[&str]) -> ExecRequest {
    ExecRequest::new(args.iter().copied())
}

/// Deterministic bytes: xorshift64 from `seed`.
struct Pattern {
    state: u64,
}

impl Pattern {
    fn new(seed: u64) -> Pattern {
        Pattern { state: seed | 1 }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            word.copy_from_slice(&self.state.to_le_bytes()[..word.len()]);
        }
    }
}

/// FNV-1a, 64 bits, streaming.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Writes `len` pattern bytes to `path` through the agent; returns their
/// hash.
async fn write_pattern(agent: &Agent, path: &Path, len: usize, seed: u64) -> Fnv {
    let mut client = agent.connect().await;
    client
        .send(&ClientMessage::WriteFile(WriteFileRequest {
            path: path.to_str().unwrap().to_owned(),
            mode: 0o644,
            uid: None,
            gid: None,
            create_dirs: false,
        }))
        .await;
    let mut pattern = Pattern::new(seed);
    let mut hash = Fnv::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK);
        pattern.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        write_frame(&mut client.w, FrameKind::Data, &buf[..n])
            .await
            .unwrap();
        left -= n;
    }
    client.write(FrameKind::Eof, &[]).await;
    match client.recv().await {
        AgentMessage::Written { bytes } => assert_eq!(bytes, len as u64),
        other => panic!("expected written, got {other:?}"),
    }
    hash
}

async fn write_bytes(agent: &Agent, req: WriteFileRequest, data: &[u8]) {
    let mut client = agent.connect().await;
    client.send(&ClientMessage::WriteFile(req)).await;
    for chunk in data.chunks(CHUNK) {
        client.write(FrameKind::Data, chunk).await;
    }
    client.write(FrameKind::Eof, &[]).await;
    match client.recv().await {
        AgentMessage::Written { bytes } => assert_eq!(bytes, data.len() as u64),
        other => panic!("expected written, got {other:?}"),
    }
}

fn write_req(path: &Path) -> WriteFileRequest {
    WriteFileRequest {
        path: path.to_str().unwrap().to_owned(),
        mode: 0o644,
        uid: None,
        gid: None,
        create_dirs: false,
    }
}

/// Waits (on a pidfd, with a deadline) until process `pid` has exited.
async fn wait_gone(pid: u32) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        // Already gone and reaped.
        Err(rustix::io::Errno::SRCH) => return,
        Err(e) => panic!("pidfd_open: {e}"),
    };
    let ready = tokio::task::spawn_blocking(move || {
        let mut fds = [rustix::event::PollFd::new(
            &pidfd,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec {
            tv_sec: i64::try_from(EXIT_TIMEOUT.as_secs()).unwrap(),
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds, Some(&timeout)).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        ready, 1,
        "process {pid:?} still runs after {EXIT_TIMEOUT:?}"
    );
}

#[tokio::test]
async fn echo_prints_its_arguments_and_exits_zero() {
    within(async {
        let agent = Agent::start();
        let done = exec(&agent, argv(&["echo", "hello", "world"]), None).await;
        assert_eq!(done.stdout, b"hello world\n");
        assert!(done.stderr.is_empty());
        assert_eq!(
            (done.code, done.signal, done.timed_out),
            (Some(0), None, false)
        );
        assert!(done.pid > 0);
    })
    .await;
}

#[tokio::test]
async fn exit_codes_are_reported() {
    within(async {
        let agent = Agent::start();
        let done = exec(&agent, argv(&["sh", "-c", "exit 7"]), None).await;
        assert_eq!((done.code, done.signal), (Some(7), None));
        let done = exec(&agent, argv(&["/bin/false"]), None).await;
        assert_eq!(done.code, Some(1));
    })
    .await;
}

#[tokio::test]
async fn stderr_arrives_apart_from_stdout() {
    within(async {
        let agent = Agent::start();
        let done = exec(
            &agent,
            argv(&["sh", "-c", "echo out; echo err >&2; echo more-err >&2"]),
            None,
        )
        .await;
        assert_eq!(done.stdout, b"out\n");
        assert_eq!(done.stderr, b"err\nmore-err\n");
    })
    .await;
}

#[tokio::test]
async fn stdin_round_trips_through_cat() {
    within(async {
        let agent = Agent::start();
        let mut input = vec![0u8; 3 * CHUNK + 12_345];
        Pattern::new(7).fill(&mut input);
        let done = exec(&agent, argv(&["cat"]), Some(input.clone())).await;
        assert_eq!(done.code, Some(0));
        assert_eq!(done.stdout.len(), input.len());
        assert!(done.stdout == input, "cat gave back other bytes");
        // Without stdin, the process reads /dev/null: cat ends at once.
        let done = exec(&agent, argv(&["cat"]), None).await;
        assert_eq!((done.code, done.stdout.len()), (Some(0), 0));
    })
    .await;
}

#[tokio::test]
async fn fifty_mib_of_binary_output_arrive_intact_in_bounded_frames() {
    within(async {
        let agent = Agent::start();
        let len = 50 << 20;
        let path = agent.path("fifty.bin");
        let sent = write_pattern(&agent, &path, len, 50).await;
        let (client, pid) = start(&agent, argv(&["cat", path.to_str().unwrap()])).await;
        let Client { mut r, w } = client;
        let mut got = Fnv::new();
        let mut total = 0usize;
        let mut largest = 0usize;
        let exited = loop {
            let frame = read_frame(&mut r).await.unwrap().expect("session ended");
            match frame.kind {
                FrameKind::Stdout => {
                    got.update(&frame.payload);
                    total += frame.payload.len();
                    largest = largest.max(frame.payload.len());
                }
                FrameKind::Control => {
                    break firehost_proto::decode::<AgentMessage>(&frame).unwrap();
                }
                other => panic!("unexpected {other:?} frame"),
            }
        };
        drop(w);
        assert!(
            matches!(exited, AgentMessage::Exited { code: Some(0), .. }),
            "{exited:?} (pid {pid})"
        );
        assert_eq!(total, len);
        assert_eq!(got, sent, "the output differs from the file");
        assert!(largest <= CHUNK, "a frame of {largest} bytes");
    })
    .await;
}

#[tokio::test]
async fn sigterm_ends_a_process_and_exited_names_the_signal() {
    within(async {
        let agent = Agent::start();
        let (mut client, _pid) = start(&agent, argv(&["sleep", "100"])).await;
        client.send(&ClientMessage::Signal { signal: 15 }).await;
        let done = collect(&mut client.r, 0).await;
        assert_eq!(
            (done.code, done.signal, done.timed_out),
            (None, Some(15), false)
        );
    })
    .await;
}

#[tokio::test]
async fn a_timeout_kills_the_process_and_says_so() {
    within(async {
        let agent = Agent::start();
        let mut req = argv(&["sleep", "100"]);
        req.timeout_ms = Some(200);
        let done = exec(&agent, req, None).await;
        assert_eq!(
            (done.code, done.signal, done.timed_out),
            (None, Some(9), true)
        );
        // A process that ends in time is not marked.
        let mut req = argv(&["true"]);
        req.timeout_ms = Some(60_000);
        let done = exec(&agent, req, None).await;
        assert_eq!((done.code, done.timed_out), (Some(0), false));
    })
    .await;
}

#[tokio::test]
async fn a_dropped_connection_kills_the_whole_process_group() {
    within(async {
        let agent = Agent::start();
        // The shell starts a background sleep (same process group), tells
        // its pid, and waits.
        let (mut client, shell) =
            start(&agent, argv(&["sh", "-c", "sleep 100 & echo $!; wait"])).await;
        let mut line = Vec::new();
        while !line.ends_with(b"\n") {
            let frame = client.frame().await.expect("session ended");
            assert_eq!(frame.kind, FrameKind::Stdout);
            line.extend_from_slice(&frame.payload);
        }
        let background: u32 = String::from_utf8(line).unwrap().trim().parse().unwrap();
        drop(client);
        wait_gone(shell).await;
        wait_gone(background).await;
    })
    .await;
}

#[tokio::test]
async fn twenty_sessions_run_at_once() {
    within(async {
        let agent = Agent::start();
        // Each process says it started, then waits for its stdin: all
        // twenty must be running together before any is let go.
        let mut sessions = Vec::new();
        for i in 0..20 {
            let mut req = argv(&[
                "sh",
                "-c",
                "echo started; read x; echo \"$0 $x\"",
                &i.to_string(),
            ]);
            req.stdin = true;
            sessions.push(tokio::spawn({
                let (mut client, _pid) = start(&agent, req).await;
                async move {
                    let frame = client.frame().await.expect("session ended");
                    assert_eq!(frame.payload, b"started\n");
                    client
                }
            }));
        }
        let mut started = Vec::new();
        for session in sessions {
            started.push(session.await.unwrap());
        }
        let mut finishing = Vec::new();
        for (i, mut client) in started.into_iter().enumerate() {
            finishing.push(tokio::spawn(async move {
                // The line is all `read` waits for. No `Eof` after it: the
                // process may have exited and the agent closed the session
                // by then (writing to it would race that close, as the
                // client library knows).
                client.write(FrameKind::Stdin, b"done\n").await;
                let done = collect(&mut client.r, 0).await;
                assert_eq!(done.stdout, format!("{i} done\n").into_bytes());
                assert_eq!(done.code, Some(0));
            }));
        }
        for f in finishing {
            f.await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn a_hundred_mib_file_round_trips_by_checksum() {
    within(async {
        let agent = Agent::start();
        let len = 100 << 20;
        let path = agent.path("big.bin");
        let sent = write_pattern(&agent, &path, len, 100).await;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len as u64);
        let mut client = agent.connect().await;
        client
            .send(&ClientMessage::ReadFile {
                path: path.to_str().unwrap().to_owned(),
            })
            .await;
        match client.recv().await {
            AgentMessage::FileInfo(info) => {
                assert_eq!((info.kind, info.size), (FileKind::File, len as u64));
            }
            other => panic!("expected file info, got {other:?}"),
        }
        let mut got = Fnv::new();
        let mut total = 0usize;
        loop {
            let frame = client.frame().await.expect("session ended");
            match frame.kind {
                FrameKind::Data => {
                    assert!(frame.payload.len() <= CHUNK);
                    got.update(&frame.payload);
                    total += frame.payload.len();
                }
                FrameKind::Eof => break,
                other => panic!("unexpected {other:?} frame"),
            }
        }
        assert_eq!(total, len);
        assert_eq!(got, sent);
        assert!(client.frame().await.is_none(), "the session stays open");
    })
    .await;
}

#[tokio::test]
async fn a_write_cut_off_before_eof_leaves_the_old_file() {
    within(async {
        let agent = Agent::start();
        let dir = agent.path("data");
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("config");
        write_bytes(&agent, write_req(&path), b"old content").await;

        let mut client = agent.connect().await;
        client
            .send(&ClientMessage::WriteFile(write_req(&path)))
            .await;
        client.write(FrameKind::Data, &[b'x'; 100_000]).await;
        // End the session without Eof, and wait for the agent to close its
        // side: the session (and its cleanup) is then over.
        let Client { mut r, mut w } = client;
        w.shutdown().await.unwrap();
        assert!(read_frame(&mut r).await.unwrap().is_none());

        assert_eq!(std::fs::read(&path).unwrap(), b"old content");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["config"], "a temporary file was left behind");
    })
    .await;
}

#[tokio::test]
async fn writes_set_mode_and_create_parent_directories() {
    within(async {
        let agent = Agent::start();
        let path = agent.path("a/b/c/script.sh");
        let mut req = write_req(&path);
        req.mode = 0o750;
        // Without create_dirs the parents must exist.
        let mut client = agent.connect().await;
        client.send(&ClientMessage::WriteFile(req.clone())).await;
        let (code, _) = client.expect_error().await;
        assert_eq!(code, ErrorCode::NotFound);

        req.create_dirs = true;
        write_bytes(&agent, req, b"#!/bin/sh\necho hi\n").await;
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o750);
        let parent = std::fs::metadata(agent.path("a/b")).unwrap();
        assert!(parent.is_dir());
        let done = exec(&agent, argv(&[path.to_str().unwrap()]), None).await;
        assert_eq!(done.stdout, b"hi\n");
    })
    .await;
}

#[tokio::test]
async fn stat_and_list_describe_the_tree() {
    within(async {
        let agent = Agent::start();
        let dir = agent.path("tree");
        std::fs::create_dir(&dir).unwrap();
        for (name, mode) in [("b.txt", 0o600), ("a.txt", 0o644)] {
            let mut req = write_req(&dir.join(name));
            req.mode = mode;
            write_bytes(&agent, req, name.as_bytes()).await;
        }
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::set_permissions(dir.join("sub"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("a.txt", dir.join("link")).unwrap();

        let mut client = agent.connect().await;
        client
            .send(&ClientMessage::List {
                path: dir.to_str().unwrap().to_owned(),
            })
            .await;
        let AgentMessage::Entries { entries } = client.recv().await else {
            panic!("expected entries");
        };
        let summary: Vec<_> = entries
            .iter()
            .map(|e| (e.path.as_str(), e.kind, e.size, e.mode))
            .collect();
        assert_eq!(
            summary,
            [
                ("a.txt", FileKind::File, 5, 0o644),
                ("b.txt", FileKind::File, 5, 0o600),
                ("link", FileKind::Symlink, 5, 0o777),
                ("sub", FileKind::Dir, entries[3].size, 0o755),
            ]
        );

        let link = dir.join("link");
        let mut client = agent.connect().await;
        client
            .send(&ClientMessage::Stat {
                path: link.to_str().unwrap().to_owned(),
            })
            .await;
        match client.recv().await {
            AgentMessage::FileInfo(st) => {
                assert_eq!(st.kind, FileKind::Symlink, "stat followed the link");
                assert_eq!(st.path, link.to_str().unwrap());
            }
            other => panic!("expected file info, got {other:?}"),
        }

        for request in [
            ClientMessage::Stat {
                path: dir.join("missing").to_str().unwrap().to_owned(),
            },
            ClientMessage::ReadFile {
                path: dir.join("missing").to_str().unwrap().to_owned(),
            },
            ClientMessage::List {
                path: dir.join("missing").to_str().unwrap().to_owned(),
            },
        ] {
            let mut client = agent.connect().await;
            client.send(&request).await;
            let (code, message) = client.expect_error().await;
            assert_eq!(code, ErrorCode::NotFound, "{request:?}: {message}");
        }
    })
    .await;
}

#[tokio::test]
async fn set_env_reaches_later_execs_but_never_the_log() {
    within(async {
        let secret = "s3cr3t-value-that-must-not-be-logged";
        let agent = Agent::start_with(&[], &[("FIREHOST_TOKEN", TOKEN)]);
        let mut vars = BTreeMap::new();
        vars.insert("APP_SECRET".to_owned(), Secret(secret.to_owned()));
        vars.insert("APP_MODE".to_owned(), Secret("from-set-env".to_owned()));
        let mut client = agent.connect().await;
        client.send(&ClientMessage::SetEnv { vars }).await;
        assert_eq!(client.recv().await, AgentMessage::Done);

        let mut req = argv(&["sh", "-c", "printf '%s %s' \"$APP_SECRET\" \"$APP_MODE\""]);
        req.env
            .insert("APP_MODE".to_owned(), Secret("from-request".to_owned()));
        let done = exec(&agent, req, None).await;
        assert_eq!(
            String::from_utf8(done.stdout).unwrap(),
            format!("{secret} from-request")
        );

        // The agent's own token variable is not passed on.
        let done = exec(&agent, argv(&["env"]), None).await;
        let env = String::from_utf8(done.stdout).unwrap();
        assert!(env.contains(&format!("APP_SECRET={secret}")));
        assert!(!env.contains("FIREHOST_TOKEN"), "{env}");

        let log = agent.stop();
        assert!(log.contains("set 2 environment variables"), "{log}");
        assert!(!log.contains(secret), "the secret reached the log:\n{log}");
        assert!(!log.contains(TOKEN), "the token reached the log:\n{log}");
    })
    .await;
}

#[tokio::test]
async fn a_bad_token_is_refused() {
    within(async {
        let agent = Agent::start();
        let mut client = agent.raw().await;
        client
            .send(&ClientMessage::Hello {
                version: PROTOCOL_VERSION,
                token: Token("not-the-token".into()),
            })
            .await;
        let (code, _) = client.expect_error().await;
        assert_eq!(code, ErrorCode::BadToken);
    })
    .await;
}

#[tokio::test]
async fn another_protocol_version_is_refused() {
    within(async {
        let agent = Agent::start();
        let mut client = agent.raw().await;
        client
            .send(&ClientMessage::Hello {
                version: PROTOCOL_VERSION + 1,
                token: Token(TOKEN.into()),
            })
            .await;
        let (code, message) = client.expect_error().await;
        assert_eq!(code, ErrorCode::VersionMismatch, "{message}");
    })
    .await;
}

#[tokio::test]
async fn a_session_must_open_with_hello() {
    within(async {
        let agent = Agent::start();
        let mut client = agent.raw().await;
        client.send(&ClientMessage::Health).await;
        let (code, _) = client.expect_error().await;
        assert_eq!(code, ErrorCode::BadRequest);
    })
    .await;
}

#[tokio::test]
async fn tty_execs_run_on_a_pseudo_terminal_that_resizes() {
    within(async {
        if !Path::new("/dev/ptmx").exists() {
            eprintln!("skipped: no /dev/ptmx on this machine");
            return;
        }
        let agent = Agent::start();
        let mut req = argv(&["tty"]);
        req.tty = true;
        let done = exec(&agent, req, None).await;
        let out = String::from_utf8(done.stdout).unwrap();
        assert!(out.starts_with("/dev/pts/"), "{out:?}");
        assert!(done.stderr.is_empty(), "a tty merges stderr into stdout");
        assert_eq!(done.code, Some(0));

        // Resize, then let the process read the size: frames are handled
        // in order, so the size is set before the input arrives.
        let mut req = argv(&["sh", "-c", "read x; stty size; echo err >&2"]);
        req.tty = true;
        req.stdin = true;
        let (mut client, _pid) = start(&agent, req).await;
        client
            .send(&ClientMessage::Resize {
                rows: 40,
                cols: 100,
            })
            .await;
        client.write(FrameKind::Stdin, b"go\n").await;
        let done = collect(&mut client.r, 0).await;
        let out = String::from_utf8(done.stdout).unwrap();
        assert!(out.contains("40 100\r\n"), "{out:?}");
        assert!(out.contains("err\r\n"), "{out:?}");
        assert_eq!(done.code, Some(0));
    })
    .await;
}

#[tokio::test]
async fn an_unknown_program_fails_to_exec() {
    within(async {
        let agent = Agent::start();
        let mut client = agent.connect().await;
        client
            .send(&ClientMessage::Exec(argv(&["no-such-program-anywhere"])))
            .await;
        let (code, message) = client.expect_error().await;
        assert_eq!(code, ErrorCode::ExecFailed);
        assert!(message.contains("no-such-program-anywhere"), "{message}");

        let mut req = argv(&["true"]);
        req.cwd = Some("/no/such/directory".into());
        let mut client = agent.connect().await;
        client.send(&ClientMessage::Exec(req)).await;
        let (code, message) = client.expect_error().await;
        assert_eq!(code, ErrorCode::ExecFailed);
        assert!(message.contains("/no/such/directory"), "{message}");
    })
    .await;
}

#[tokio::test]
async fn execs_run_in_the_given_directory_as_the_given_user() {
    within(async {
        let agent = Agent::start();
        let dir = agent.path("work");
        std::fs::create_dir(&dir).unwrap();
        let mut req = argv(&["pwd"]);
        req.cwd = Some(dir.to_str().unwrap().to_owned());
        let done = exec(&agent, req, None).await;
        assert_eq!(
            String::from_utf8(done.stdout).unwrap().trim(),
            dir.to_str().unwrap()
        );

        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped the uid part: not root");
            return;
        }
        let mut req = argv(&["id", "-u"]);
        req.uid = Some(65534);
        req.gid = Some(65534);
        let done = exec(&agent, req, None).await;
        assert_eq!(String::from_utf8(done.stdout).unwrap().trim(), "65534");
    })
    .await;
}

#[tokio::test]
async fn health_reports_ready_and_the_version() {
    within(async {
        let agent = Agent::start();
        let mut client = agent.connect().await;
        client.send(&ClientMessage::Health).await;
        match client.recv().await {
            AgentMessage::Health {
                ready,
                agent_version,
                ..
            } => {
                assert!(ready);
                assert_eq!(agent_version, env!("CARGO_PKG_VERSION"));
            }
            other => panic!("expected health, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn shutdown_is_refused_without_allow_shutdown() {
    within(async {
        // Never pass --allow-shutdown here: the test machine would go down.
        let agent = Agent::start();
        let mut client = agent.connect().await;
        client
            .send(&ClientMessage::Shutdown { reboot: false })
            .await;
        let (code, message) = client.expect_error().await;
        assert_eq!(code, ErrorCode::PermissionDenied, "{message}");
        // The agent is still there.
        let done = exec(&agent, argv(&["true"]), None).await;
        assert_eq!(done.code, Some(0));
    })
    .await;
}

/// Runs the binary to completion with `args`; returns its exit code and
/// stderr.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_firehost-agent"))
        .args(args)
        .env_remove("FIREHOST_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_agent_refuses_to_start_without_a_token() {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if Token::from_cmdline(&cmdline).is_some() {
        eprintln!("skipped: this machine's kernel command line has a token");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = format!("unix:{}", dir.path().join("a.sock").display());
    let (code, stderr) = run_to_exit(&["--listen", &socket]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no token"), "{stderr}");
}

#[test]
fn the_agent_refuses_bad_addresses_and_init_outside_pid_1() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let token = token.to_str().unwrap();
    for (args, expected) in [
        (
            vec!["--listen", "tcp:0.0.0.0:7000", "--token-file", token],
            "not a loopback address",
        ),
        (
            vec!["--listen", "udp:1", "--token-file", token],
            "unknown scheme",
        ),
        (
            vec!["--init", "/sbin/init", "--token-file", token],
            "--init only applies",
        ),
    ] {
        let (code, stderr) = run_to_exit(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn insecure_mode_warns_loudly_and_takes_any_token() {
    within(async {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        if Token::from_cmdline(&cmdline).is_some() {
            eprintln!("skipped: this machine's kernel command line has a token");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("a.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_firehost-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--insecure-no-token")
            .env_remove("FIREHOST_TOKEN")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (log, lines, _thread) = watch_log(child.stderr.take().unwrap());
        let started = std::iter::from_fn(|| lines.recv_timeout(STARTUP_TIMEOUT).ok())
            .any(|line| line.contains("info: ready:"));
        let result = async {
            assert!(started, "not ready:\n{}", log.lock().unwrap());
            assert!(log.lock().unwrap().contains("INSECURE"));
            let stream = UnixStream::connect(&socket).await.unwrap();
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            send(
                &mut w,
                &ClientMessage::Hello {
                    version: PROTOCOL_VERSION,
                    token: Token("anything".into()),
                },
            )
            .await
            .unwrap();
            let answer: AgentMessage = receive(&mut r).await.unwrap().unwrap();
            assert!(matches!(answer, AgentMessage::Welcome { .. }), "{answer:?}");
        }
        .await;
        let _ = child.kill();
        let _ = child.wait();
        result
    })
    .await;
}

/// `unshare`, when this machine can make the namespaces a PID 1 test needs.
fn unshare_for_pid1() -> Option<&'static str> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let unshare = ["/usr/bin/unshare", "/bin/unshare"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let works = Command::new(unshare)
        .args([
            "--pid",
            "--fork",
            "--mount",
            "--net",
            "--mount-proc",
            "true",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    works.then_some(unshare)
}

#[tokio::test]
async fn as_pid_1_it_serves_reaps_orphans_and_ends_the_vm_on_sigterm() {
    within(async {
        let Some(unshare) = unshare_for_pid1() else {
            eprintln!("skipped: needs root and unshare(1) for a PID namespace");
            return;
        };
        // In its own PID, mount and network namespaces the agent is PID 1,
        // mounts a tmpfs on /tmp (so the socket lives elsewhere) and ends
        // "the VM" with reboot(2), which in a PID namespace only ends the
        // namespace.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let mut cmd = Command::new(unshare);
        cmd.args(["--pid", "--fork", "--mount", "--net", "--mount-proc"])
            .arg(env!("CARGO_BIN_EXE_firehost-agent"));
        Agent::agent_args(&mut cmd, dir.path());
        // A second "init" beside the server, started and reaped by PID 1.
        let init = ["/usr/bin/true", "/bin/true"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("true(1)");
        cmd.args(["--init", init]);
        let mut agent = Agent::launch(cmd, dir);
        // PID 1 says this while the server starts: it may come after "ready".
        agent.wait_for_line("PID 1: the server runs as pid", EXIT_TIMEOUT);
        agent.wait_for_line(&format!("PID 1: started {init}"), EXIT_TIMEOUT);
        agent.wait_for_line("PID 1: init", EXIT_TIMEOUT);

        let done = exec(&agent, argv(&["cat", "/proc/1/comm"]), None).await;
        assert_eq!(done.stdout, b"firehost-agent\n");

        // An orphan: the subshell exits at once, so the inner shell is
        // re-parented to PID 1, which must reap it.
        let done = exec(&agent, argv(&["sh", "-c", "(sh -c 'echo $$' &)"]), None).await;
        let orphan = String::from_utf8(done.stdout).unwrap().trim().to_owned();
        assert!(!orphan.is_empty());
        agent.wait_for_line(&format!("PID 1: reaped pid {orphan}"), EXIT_TIMEOUT);

        // SIGTERM to PID 1 reaches the server, which stops; PID 1 then ends
        // the namespace.
        let (client, _pid) = start(&agent, argv(&["kill", "-TERM", "1"])).await;
        let unshare_pid = agent.child.as_ref().unwrap().id();
        wait_gone(unshare_pid).await;
        drop(client);
        agent.child.take().unwrap().wait().unwrap();
        // The whole log: the reader thread ends at the pipe's end of file.
        agent.log_thread.take().unwrap().join().unwrap();
        let log = agent.log();
        assert!(log.contains("SIGTERM: stopping"), "{log}");
        assert!(log.contains("the server exited"), "{log}");
    })
    .await;
}
