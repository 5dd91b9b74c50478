//! The fake, driven over its socket like a client would drive Firecracker.

mod common;

use firehost_testkit::fake_only;
use std::os::unix::process::ExitStatusExt;

use common::{Fake, poll};

#[test]
fn fresh_vmm_reports_not_started_with_firecrackers_identity() {
    let f = Fake::spawn();
    let mut c = f.client();
    let info = c.get("/").json();
    assert_eq!(
        info,
        serde_json::json!({"id":"test-vm","state":"Not started","vmm_version":"1.16.1","app_name":"Firecracker"})
    );
    assert_eq!(c.get("/version").json()["firecracker_version"], "1.16.1");
    assert_eq!(
        c.get("/machine-config").json(),
        serde_json::json!({"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"})
    );
}

#[test]
fn responses_have_micro_http_shape() {
    let f = Fake::spawn();
    let mut c = f.client();
    let r = c.request(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":128}"#),
    );
    assert_eq!(
        r.head,
        "HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n"
    );
    let r = c.get("/nope");
    let body = r#"{"fault_message":"Invalid request method and/or path: GET nope."}"#;
    assert_eq!(
        r.head,
        format!(
            "HTTP/1.1 400 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
    );
    assert_eq!(r.body, body);
}

#[test]
fn one_connection_carries_many_requests_and_connections_run_concurrently() {
    let f = Fake::spawn();
    let mut clients: Vec<_> = (0..4).map(|_| f.client()).collect();
    for _ in 0..25 {
        for c in &mut clients {
            assert_eq!(c.get("/").status, 200);
        }
    }
}

#[test]
fn full_configuration_then_instance_start_boots_the_guest() {
    let mut f = Fake::spawn();
    let mut c = f.client();
    f.configure(&mut c);
    c.expect_204(
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:AC:10:00:02"}"#,
    );
    c.expect_204("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    assert_eq!(c.get("/").json()["state"], "Running");
    let config = c.get("/vm/config").json();
    assert_eq!(config["machine-config"]["vcpu_count"], 2);
    assert_eq!(config["drives"][0]["drive_id"], "rootfs");
    assert_eq!(config["network-interfaces"][0]["host_dev_name"], "tap0");
    fake_only!("the fake guest's console banner");
    f.wait_line("Linux version 6.1.0-fake");
    f.wait_line("Command line: console=ttyS0 reboot=k panic=1");
    f.wait_line("firehost-fake-guest: init started");
}

#[test]
fn configuration_errors_carry_firecrackers_messages() {
    let f = Fake::spawn();
    let mut c = f.client();
    let missing = f.path("missing");
    let cases = [
        (
            "/boot-source",
            format!(r#"{{"kernel_image_path":"{}"}}"#, missing.display()),
            "Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)".to_owned(),
        ),
        (
            "/drives/rootfs",
            format!(
                r#"{{"drive_id":"rootfs","path_on_host":"{}","is_root_device":true,"is_read_only":true}}"#,
                missing.display()
            ),
            format!(
                "Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: No such file or directory (os error 2) {}",
                missing.display()
            ),
        ),
        (
            "/machine-config",
            r#"{"vcpu_count":3,"mem_size_mib":128,"smt":true}"#.to_owned(),
            "Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled.".to_owned(),
        ),
        (
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":0}"#.to_owned(),
            "Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size.".to_owned(),
        ),
        (
            "/actions",
            r#"{"action_type":"InstanceStart"}"#.to_owned(),
            "Start microvm error: Cannot start microvm without kernel configuration.".to_owned(),
        ),
        (
            "/actions",
            r#"{"action_type":"FlushMetrics"}"#.to_owned(),
            "The requested operation is not supported before starting the microVM.".to_owned(),
        ),
    ];
    for (path, body, message) in cases {
        assert_eq!(c.expect_fault("PUT", path, &body), message, "PUT {path}");
    }
}

#[test]
fn unknown_field_is_a_400_deserialization_error() {
    let f = Fake::spawn();
    let mut c = f.client();
    let msg = c.expect_fault(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":128,"smt_enabled":true}"#,
    );
    assert!(
        msg.starts_with(
            "An error occurred when deserializing the json body of a request: unknown field `smt_enabled`"
        ),
        "{msg}"
    );
}

#[test]
fn pre_boot_only_requests_are_refused_after_boot() {
    let f = Fake::spawn();
    let mut c = f.client();
    f.start(&mut c);
    let refused = [
        ("/machine-config", r#"{"vcpu_count":1,"mem_size_mib":128}"#),
        ("/actions", r#"{"action_type":"InstanceStart"}"#),
        ("/logger", r#"{"level":"Info"}"#),
    ];
    for (path, body) in refused {
        assert_eq!(
            c.expect_fault("PUT", path, body),
            "The requested operation is not supported after starting the microVM.",
            "PUT {path}"
        );
    }
}

#[test]
fn snapshot_create_is_refused_while_running() {
    let f = Fake::spawn();
    let mut c = f.client();
    f.start(&mut c);
    let body = format!(
        r#"{{"snapshot_path":"{}","mem_file_path":"{}"}}"#,
        f.path("vmstate").display(),
        f.path("mem").display()
    );
    assert_eq!(
        c.expect_fault("PUT", "/snapshot/create", &body),
        "Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running"
    );
    assert!(!f.path("vmstate").exists());
}

/// Boots, pauses, snapshots and resumes; returns the fake and the snapshot paths.
fn snapshot_of_a_running_vm() -> (Fake, std::path::PathBuf, std::path::PathBuf) {
    let f = Fake::spawn();
    let mut c = f.client();
    f.start(&mut c);
    c.expect_204("PATCH", "/vm", r#"{"state":"Paused"}"#);
    assert_eq!(c.get("/").json()["state"], "Paused");
    let (state, mem) = (f.path("vmstate"), f.path("mem"));
    let body = format!(
        r#"{{"snapshot_type":"Full","snapshot_path":"{}","mem_file_path":"{}"}}"#,
        state.display(),
        mem.display()
    );
    c.expect_204("PUT", "/snapshot/create", &body);
    c.expect_204("PATCH", "/vm", r#"{"state":"Resumed"}"#);
    assert_eq!(c.get("/").json()["state"], "Running");
    (f, state, mem)
}

#[test]
fn pause_snapshot_resume_writes_vmstate_and_memory_files() {
    let (_f, state, mem) = snapshot_of_a_running_vm();
    assert!(std::fs::metadata(&state).unwrap().len() > 0);
    assert_eq!(std::fs::metadata(&mem).unwrap().len(), 256 << 20);
}

#[test]
fn snapshot_loads_into_a_new_process() {
    let (_src, state, mem) = snapshot_of_a_running_vm();
    let f = Fake::spawn();
    let mut c = f.client();
    let body = format!(
        r#"{{"snapshot_path":"{}","mem_backend":{{"backend_type":"File","backend_path":"{}"}},"resume_vm":true}}"#,
        state.display(),
        mem.display()
    );
    c.expect_204("PUT", "/snapshot/load", &body);
    assert_eq!(c.get("/").json()["state"], "Running");
    assert_eq!(c.get("/machine-config").json()["mem_size_mib"], 256);
}

#[test]
fn snapshot_load_is_refused_after_boot_specific_configuration() {
    let f = Fake::spawn();
    let mut c = f.client();
    c.expect_204(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":128}"#,
    );
    let msg = c.expect_fault(
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path":"/x","mem_backend":{"backend_type":"File","backend_path":"/y"}}"#,
    );
    assert_eq!(
        msg,
        "Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources."
    );
}

#[test]
fn failed_snapshot_load_answers_then_exits_with_generic_error() {
    let mut f = Fake::spawn();
    let mut c = f.client();
    let msg = c.expect_fault(
        "PUT",
        "/snapshot/load",
        &format!(
            r#"{{"snapshot_path":"{}","mem_backend":{{"backend_type":"File","backend_path":"/y"}}}}"#,
            f.path("none").display()
        ),
    );
    assert!(msg.starts_with("Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state from file: Failed to open snapshot file: No such file or directory"), "{msg}");
    assert_eq!(f.wait_exit().code(), Some(1));
}

#[test]
fn uffd_load_fails_when_no_page_server_listens() {
    let (_src, state, _mem) = snapshot_of_a_running_vm();
    let f = Fake::spawn();
    let mut c = f.client();
    let body = format!(
        r#"{{"snapshot_path":"{}","mem_backend":{{"backend_type":"Uffd","backend_path":"{}"}}}}"#,
        state.display(),
        f.path("uffd.sock").display()
    );
    let msg = c.expect_fault("PUT", "/snapshot/load", &body);
    assert!(msg.ends_with("Error creating guest memory from uffd: Failed to connect to UDS Unix stream: No such file or directory (os error 2)"), "{msg}");
}

#[test]
fn send_ctrl_alt_del_shuts_the_guest_down_with_status_zero() {
    let mut f = Fake::spawn();
    let mut c = f.client();
    f.start(&mut c);
    c.expect_204("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#);
    // Only a guest that handles the key press reboots; the halt kernel does not.
    fake_only!("the fake guest reboots on Ctrl-Alt-Del");
    assert_eq!(f.wait_exit().code(), Some(0));
    f.wait_line("reboot: Restarting system");
    assert!(f.sock.exists(), "Firecracker leaves its socket file behind");
}

#[test]
fn sigterm_terminates_the_process() {
    let mut f = Fake::spawn();
    let pid = rustix::process::Pid::from_raw(i32::try_from(f.child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert_eq!(f.wait_exit().signal(), Some(15));
}

#[test]
fn logger_and_metrics_write_their_files() {
    let f = Fake::spawn();
    let mut c = f.client();
    let (log, metrics) = (f.path("fc.log"), f.path("fc.metrics"));
    c.expect_204(
        "PUT",
        "/logger",
        &format!(
            r#"{{"log_path":"{}","level":"Info","show_level":true}}"#,
            log.display()
        ),
    );
    c.expect_204(
        "PUT",
        "/metrics",
        &format!(r#"{{"metrics_path":"{}"}}"#, metrics.display()),
    );
    f.start(&mut c);
    c.expect_204("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(
        text.lines().count(),
        2,
        "one line at start, one on flush: {text}"
    );
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["utc_timestamp_ms"].is_u64());
    }
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains(
            "[test-vm:fc_api:INFO] The API server received a Put request on \"/actions\""
        ),
        "{log_text}"
    );
}

#[test]
fn existing_socket_path_is_refused_like_firecracker() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api.sock"), b"").unwrap();
    let mut f = Fake::spawn_in(dir, &[], &[]);
    assert_eq!(f.wait_exit().code(), Some(1));
    assert!(f.stderr().contains("FailedToBindSocket"));
}

#[test]
fn bad_command_lines_exit_153() {
    let cases: &[&[&str]] = &[&["--bogus"], &["--no-api"], &["--level"]];
    for extra in cases {
        let mut f = Fake::spawn_with(extra, &[]);
        assert_eq!(f.wait_exit().code(), Some(153), "{extra:?}");
        assert!(
            f.stderr().starts_with("Error: ParseArguments("),
            "{extra:?}"
        );
    }
}

#[test]
fn invalid_instance_id_aborts_logging_the_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::bin())
        .arg("--api-sock")
        .arg(dir.path().join("s"))
        .args(["--id", "bad_id"])
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(6));
    // Firecracker's panic hook logs the panic (to stdout: no log file yet).
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            " [anonymous-instance:main] Firecracker panicked at src/firecracker/src/main.rs:309:48:\nInvalid instance ID: InvalidChar('_', 3)\n"
        ),
        "{stdout}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert!(!dir.path().join("s").exists());
}

#[test]
fn version_flag_prints_firecrackers_banner_then_logs_the_exit() {
    let out = std::process::Command::new(common::bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (banner, log) = stdout.split_at("Firecracker v1.16.1\n\n".len());
    assert_eq!(banner, "Firecracker v1.16.1\n\n");
    assert!(
        log.ends_with(" [anonymous-instance:main] Firecracker exiting successfully. exit_code=0\n"),
        "{log}"
    );
    assert_eq!(log.lines().count(), 1, "{log}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn poll_helper_is_bounded() {
    assert_eq!(poll("a value", || Some(1)), 1);
}
