//! Every `FAKE_FC_*` fault injection knob (skipped on a real Firecracker).

mod common;

use firehost_testkit::fake_only;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::Fake;

#[test]
fn injected_failures_answer_400_only_for_listed_requests() {
    fake_only!("FAKE_FC_FAIL");
    let f = Fake::spawn_with(&[], &[("FAKE_FC_FAIL", "PUT /drives/rootfs,PUT /actions")]);
    f.wait_socket();
    let mut c = f.client();
    let cases = [
        (
            "PUT",
            "/actions",
            r#"{"action_type":"InstanceStart"}"#,
            Some("injected failure"),
        ),
        ("PUT", "/drives/rootfs", r#"{}"#, Some("injected failure")),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":128}"#,
            None,
        ),
    ];
    for (method, path, body, fault) in cases {
        let r = c.request(method, path, Some(body));
        match fault {
            Some(msg) => {
                assert_eq!(r.status, 400, "{path}");
                assert_eq!(r.fault(), msg);
            }
            None => assert_eq!(r.status, 204, "{path}: {}", r.body),
        }
    }
}

#[test]
fn delays_hold_matching_answers() {
    fake_only!("FAKE_FC_DELAY_MS");
    let f = Fake::spawn_with(&[], &[("FAKE_FC_DELAY_MS", "PUT /machine-config=300,*=0")]);
    f.wait_socket();
    let mut c = f.client();
    let t = Instant::now();
    c.expect_204(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":128}"#,
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(c.get("/").status, 200);
    assert!(t.elapsed() < Duration::from_millis(300));
}

#[test]
fn crash_after_requests_aborts_before_answering() {
    fake_only!("FAKE_FC_CRASH_AFTER_REQUESTS");
    let mut f = Fake::spawn_with(&[], &[("FAKE_FC_CRASH_AFTER_REQUESTS", "2")]);
    f.wait_socket();
    let mut c = f.client();
    assert_eq!(c.get("/").status, 200);
    assert_eq!(c.get("/").status, 200);
    use std::io::{Read, Write};
    c.0.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = c.0.read_to_end(&mut buf);
    assert!(buf.is_empty(), "no answer after the crash");
    assert_eq!(f.wait_exit().signal(), Some(6));
}

#[test]
fn no_socket_runs_without_creating_the_api_socket() {
    fake_only!("FAKE_FC_NO_SOCKET");
    let mut f = Fake::spawn_with(&[], &[("FAKE_FC_NO_SOCKET", "1")]);
    f.wait_line("Running Firecracker v1.16.1");
    assert!(f.child.try_wait().unwrap().is_none(), "still running");
    assert!(!f.sock.exists());
}

#[test]
fn exit_on_start_exits_with_the_code_after_instance_start() {
    fake_only!("FAKE_FC_EXIT_ON_START");
    let mut f = Fake::spawn_with(&[], &[("FAKE_FC_EXIT_ON_START", "42")]);
    f.wait_socket();
    let mut c = f.client();
    f.start(&mut c);
    assert_eq!(f.wait_exit().code(), Some(42));
}

#[test]
fn ignored_ctrl_alt_del_keeps_the_guest_running() {
    fake_only!("FAKE_FC_IGNORE_CTRL_ALT_DEL");
    let mut f = Fake::spawn_with(&[], &[("FAKE_FC_IGNORE_CTRL_ALT_DEL", "1")]);
    f.wait_socket();
    let mut c = f.client();
    f.start(&mut c);
    c.expect_204("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#);
    // The guest says it ignored the request; the process answers afterwards.
    f.wait_line(fake_firecracker::console::IGNORED_CTRL_ALT_DEL_LINE);
    assert!(f.console_has_no(fake_firecracker::console::SHUTDOWN_LINE));
    assert_eq!(c.get("/").json()["state"], "Running");
}

#[test]
fn malformed_fault_settings_are_refused_at_start() {
    fake_only!("FAKE_FC_* parsing");
    let mut f = Fake::spawn_with(&[], &[("FAKE_FC_DELAY_MS", "soon")]);
    assert_eq!(f.wait_exit().code(), Some(1));
    assert!(f.stderr().contains("FAKE_FC_DELAY_MS"));
}

#[test]
fn a_slow_request_holds_up_every_other_one_and_arrivals_are_logged() {
    fake_only!("FAKE_FC_DELAY_MS and FAKE_FC_REQUEST_LOG");
    // Firecracker answers one request at a time: while it writes a
    // snapshot, a `GET /` on another connection waits.
    let log = tempfile::NamedTempFile::new().unwrap();
    let log_path = log.path().to_str().unwrap().to_owned();
    let f = Fake::spawn_with(
        &[],
        &[
            ("FAKE_FC_DELAY_MS", "PUT /machine-config=1000"),
            ("FAKE_FC_REQUEST_LOG", &log_path),
        ],
    );
    f.wait_socket();
    let done = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut slow = f.client();
    let slow_done = done.clone();
    let slow = std::thread::spawn(move || {
        slow.expect_204(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":128}"#,
        );
        slow_done.lock().unwrap().push("slow");
    });
    common::poll("the slow request to arrive", || {
        std::fs::read_to_string(&log_path)
            .ok()
            .filter(|log| log.contains("PUT /machine-config\n"))
    });
    assert_eq!(f.client().get("/").status, 200);
    done.lock().unwrap().push("get");
    slow.join().unwrap();
    assert_eq!(*done.lock().unwrap(), ["slow", "get"]);
    let logged = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(logged, "PUT /machine-config\nGET /\n");
}
