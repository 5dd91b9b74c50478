//! Firecracker's rules checked by hand against a real v1.16.1 and pinned here:
//! every test runs on both backends, so each answer below is the real one.

mod common;

use std::process::Command;

use common::Fake;

const DESERIALIZE: &str = "An error occurred when deserializing the json body of a request: ";
const NOT_BEFORE: &str = "The requested operation is not supported before starting the microVM.";
const NOT_AFTER: &str = "The requested operation is not supported after starting the microVM.";

#[test]
fn instance_info_body_is_byte_identical() {
    let f = Fake::spawn();
    let mut c = f.client();
    assert_eq!(
        c.get("/").body,
        r#"{"id":"test-vm","state":"Not started","vmm_version":"1.16.1","app_name":"Firecracker"}"#
    );
}

#[test]
fn runtime_only_requests_are_refused_before_start() {
    let f = Fake::spawn();
    let mut c = f.client();
    let snapshot = format!(
        r#"{{"snapshot_path":"{}","mem_file_path":"{}"}}"#,
        f.path("vmstate").display(),
        f.path("mem").display()
    );
    let cases = [
        ("PATCH", "/vm", r#"{"state":"Paused"}"#.to_owned()),
        ("PATCH", "/vm", r#"{"state":"Resumed"}"#.to_owned()),
        (
            "PUT",
            "/actions",
            r#"{"action_type":"SendCtrlAltDel"}"#.to_owned(),
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type":"FlushMetrics"}"#.to_owned(),
        ),
        ("PUT", "/snapshot/create", snapshot),
    ];
    for (method, path, body) in cases {
        assert_eq!(
            c.expect_fault(method, path, &body),
            NOT_BEFORE,
            "{method} {path} {body}"
        );
    }
    assert!(!f.path("vmstate").exists());
}

#[test]
fn configuration_requests_are_refused_after_start() {
    let f = Fake::spawn();
    let mut c = f.client();
    f.start(&mut c);
    let kernel = f.kernel();
    let cases = [
        ("PATCH", "/machine-config", r#"{"vcpu_count":1}"#.to_owned()),
        (
            "PUT",
            "/boot-source",
            format!(r#"{{"kernel_image_path":"{}"}}"#, kernel.display()),
        ),
        (
            "PUT",
            "/metrics",
            format!(r#"{{"metrics_path":"{}"}}"#, f.path("m").display()),
        ),
        (
            "PUT",
            "/snapshot/load",
            format!(
                r#"{{"snapshot_path":"{}","mem_backend":{{"backend_type":"File","backend_path":"{}"}}}}"#,
                f.path("s").display(),
                f.path("m").display()
            ),
        ),
    ];
    for (method, path, body) in cases {
        assert_eq!(
            c.expect_fault(method, path, &body),
            NOT_AFTER,
            "{method} {path}"
        );
    }
    assert!(!f.path("m").exists());
}

#[test]
fn pausing_twice_and_resuming_twice_are_both_accepted() {
    let f = Fake::spawn();
    let mut c = f.client();
    f.start(&mut c);
    for state in ["Paused", "Paused", "Resumed", "Resumed"] {
        c.expect_204("PATCH", "/vm", &format!(r#"{{"state":"{state}"}}"#));
    }
    assert_eq!(c.get("/").json()["state"], "Running");
}

#[test]
fn logger_can_be_reconfigured_but_metrics_only_once() {
    let f = Fake::spawn();
    let mut c = f.client();
    let (log1, log2) = (f.path("log1"), f.path("log2"));
    c.expect_204(
        "PUT",
        "/logger",
        &format!(r#"{{"log_path":"{}","level":"Info"}}"#, log1.display()),
    );
    c.expect_204(
        "PUT",
        "/logger",
        &format!(r#"{{"log_path":"{}","level":"Debug"}}"#, log2.display()),
    );
    c.expect_204("PUT", "/logger", r#"{"level":"Warning"}"#);
    assert!(log1.exists() && log2.exists());

    let metrics = f.path("metrics");
    let body = format!(r#"{{"metrics_path":"{}"}}"#, metrics.display());
    c.expect_204("PUT", "/metrics", &body);
    let again = "Metrics error: Cannot initialize the metrics system due to bad user input: Reinitialization of metrics not allowed.";
    assert_eq!(c.expect_fault("PUT", "/metrics", &body), again);
    let other = format!(r#"{{"metrics_path":"{}"}}"#, f.path("other").display());
    assert_eq!(c.expect_fault("PUT", "/metrics", &other), again);
    // Firecracker opens the file before refusing the second sink.
    assert!(f.path("other").exists());
}

#[test]
fn metrics_ignores_unknown_fields_and_names_the_missing_one() {
    let f = Fake::spawn();
    let mut c = f.client();
    assert_eq!(
        c.expect_fault("PUT", "/metrics", r#"{"zzz":1}"#),
        format!("{DESERIALIZE}missing field `metrics_path` at line 1 column 9.")
    );
    let body = format!(
        r#"{{"metrics_path":"{}","zzz":1}}"#,
        f.path("metrics").display()
    );
    c.expect_204("PUT", "/metrics", &body);
}

#[test]
fn body_errors_name_fields_in_firecrackers_order() {
    let f = Fake::spawn();
    let mut c = f.client();
    let unknown = |list: &str| {
        format!("{DESERIALIZE}unknown field `zzz`, expected one of {list} at line 1 column 6.")
    };
    let cases = [
        (
            "PUT",
            "/machine-config",
            r#"{"zzz":1}"#,
            unknown(
                "`vcpu_count`, `mem_size_mib`, `smt`, `cpu_template`, `track_dirty_pages`, `huge_pages`",
            ),
        ),
        (
            "PUT",
            "/machine-config",
            r#"{}"#,
            format!("{DESERIALIZE}missing field `vcpu_count` at line 1 column 2."),
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":128,"foo":1}"#,
            format!(
                "{DESERIALIZE}unknown field `foo`, expected one of `vcpu_count`, `mem_size_mib`, `smt`, `cpu_template`, `track_dirty_pages`, `huge_pages` at line 1 column 40."
            ),
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"zzz":1}"#,
            unknown("`kernel_image_path`, `initrd_path`, `boot_args`"),
        ),
        (
            "PUT",
            "/network-interfaces/a",
            r#"{"zzz":1}"#,
            unknown(
                "`iface_id`, `host_dev_name`, `guest_mac`, `mtu`, `rx_rate_limiter`, `tx_rate_limiter`",
            ),
        ),
        (
            "PUT",
            "/network-interfaces/a",
            r#"{}"#,
            format!("{DESERIALIZE}missing field `iface_id` at line 1 column 2."),
        ),
        (
            "PUT",
            "/logger",
            r#"{"zzz":1}"#,
            unknown("`log_path`, `level`, `show_level`, `show_log_origin`, `module`"),
        ),
        (
            "PUT",
            "/vsock",
            r#"{"zzz":1}"#,
            unknown("`vsock_id`, `guest_cid`, `uds_path`"),
        ),
        (
            "PUT",
            "/snapshot/create",
            r#"{"zzz":1}"#,
            unknown("`snapshot_type`, `snapshot_path`, `mem_file_path`"),
        ),
        (
            "PUT",
            "/snapshot/create",
            r#"{}"#,
            format!("{DESERIALIZE}missing field `snapshot_path` at line 1 column 2."),
        ),
        (
            "PUT",
            "/snapshot/load",
            r#"{"zzz":1}"#,
            unknown(
                "`snapshot_path`, `mem_file_path`, `mem_backend`, `enable_diff_snapshots`, `track_dirty_pages`, `resume_vm`, `network_overrides`, `vsock_override`, `clock_realtime`",
            ),
        ),
        (
            "PUT",
            "/hotplug/memory",
            r#"{"zzz":1}"#,
            unknown("`total_size_mib`, `block_size_mib`, `slot_size_mib`"),
        ),
        (
            "PUT",
            "/cpu-config",
            r#"{"zzz":1}"#,
            unknown("`kvm_capabilities`, `cpuid_modifiers`, `msr_modifiers`"),
        ),
    ];
    for (method, path, body, message) in cases {
        assert_eq!(
            c.expect_fault(method, path, body),
            message,
            "{method} {path} {body}"
        );
    }
}

#[test]
fn bad_json_and_missing_bodies_are_refused() {
    let f = Fake::spawn();
    let mut c = f.client();
    assert_eq!(
        c.expect_fault("PUT", "/machine-config", r#"{"vcpu_count":1,"#),
        format!("{DESERIALIZE}EOF while parsing a value at line 1 column 16.")
    );
    for (method, message) in [
        ("PUT", "Empty PUT request."),
        ("PATCH", "Empty PATCH request."),
    ] {
        let r = c.request(method, "/machine-config", None);
        assert_eq!(r.status, 400);
        assert_eq!(r.fault(), message);
    }
    assert_eq!(
        c.expect_fault("PATCH", "/machine-config", "{}"),
        "Empty PATCH request."
    );
    // Nothing was applied.
    assert_eq!(c.get("/machine-config").json()["vcpu_count"], 1);
}

#[test]
fn vm_config_has_firecrackers_shape_before_and_after_configuration() {
    let f = Fake::spawn();
    let mut c = f.client();
    let empty = r#"{"balloon":null,"drives":[],"boot-source":{"kernel_image_path":"","initrd_path":null,"boot_args":null},"cpu-config":null,"logger":null,"machine-config":{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"},"metrics":null,"mmds-config":null,"network-interfaces":[],"vsock":null,"entropy":null,"pmem":[],"memory-hotplug":null}"#;
    assert_eq!(c.get("/vm/config").body, empty);

    f.configure(&mut c);
    let data = f.file("data.img", 1 << 20);
    c.expect_204(
        "PUT",
        "/drives/data",
        &format!(
            r#"{{"drive_id":"data","path_on_host":"{}","is_root_device":false,"is_read_only":true,"cache_type":"Writeback","partuuid":"abc","rate_limiter":{{"bandwidth":{{"size":100,"refill_time":100}}}}}}"#,
            data.display()
        ),
    );
    c.expect_204(
        "PUT",
        "/balloon",
        r#"{"amount_mib":10,"deflate_on_oom":true}"#,
    );
    c.expect_204(
        "PUT",
        "/entropy",
        r#"{"rate_limiter":{"ops":{"size":1,"refill_time":10,"one_time_burst":5}}}"#,
    );
    let balloon = r#"{"amount_mib":10,"deflate_on_oom":true,"stats_polling_interval_s":0,"free_page_hinting":false,"free_page_reporting":false}"#;
    assert_eq!(c.get("/balloon").body, balloon);
    let expected = format!(
        concat!(
            r#"{{"balloon":{balloon},"drives":["#,
            r#"{{"drive_id":"rootfs","partuuid":null,"is_root_device":true,"cache_type":"Unsafe","is_read_only":false,"path_on_host":"{rootfs}","rate_limiter":null,"io_engine":"Sync","socket":null}},"#,
            r#"{{"drive_id":"data","partuuid":"abc","is_root_device":false,"cache_type":"Writeback","is_read_only":true,"path_on_host":"{data}","rate_limiter":{{"bandwidth":{{"size":100,"one_time_burst":null,"refill_time":100}},"ops":null}},"io_engine":"Sync","socket":null}}],"#,
            r#""boot-source":{{"kernel_image_path":"{kernel}","initrd_path":null,"boot_args":"console=ttyS0 reboot=k panic=1"}},"#,
            r#""cpu-config":null,"logger":null,"#,
            r#""machine-config":{{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}},"#,
            r#""metrics":null,"mmds-config":null,"network-interfaces":[],"vsock":null,"#,
            r#""entropy":{{"rate_limiter":{{"bandwidth":null,"ops":{{"size":1,"one_time_burst":5,"refill_time":10}}}}}},"#,
            r#""pmem":[],"memory-hotplug":null}}"#
        ),
        balloon = balloon,
        rootfs = f.path("rootfs.ext4").display(),
        data = data.display(),
        kernel = f.kernel().display(),
    );
    assert_eq!(c.get("/vm/config").body, expected);
    c.expect_204("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    // After the start Firecracker lists the drives from its device manager, in
    // no fixed order: the rest is unchanged.
    let by_id = |body: &str| {
        let mut v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["drives"]
            .as_array_mut()
            .unwrap()
            .sort_by_key(|d| d["drive_id"].as_str().unwrap().to_owned());
        v
    };
    assert_eq!(by_id(&c.get("/vm/config").body), by_id(&expected));
}

#[test]
fn snapshot_create_into_a_missing_directory_fails_and_the_vm_stays_paused() {
    let f = Fake::spawn();
    let mut c = f.client();
    f.start(&mut c);
    c.expect_204("PATCH", "/vm", r#"{"state":"Paused"}"#);
    let body = format!(
        r#"{{"snapshot_path":"{}","mem_file_path":"{}"}}"#,
        f.path("nodir/vmstate").display(),
        f.path("mem").display()
    );
    assert_eq!(
        c.expect_fault("PUT", "/snapshot/create", &body),
        "Create snapshot error: Cannot perform open on the snapshot backing file: No such file or directory (os error 2)"
    );
    assert_eq!(c.get("/").json()["state"], "Paused");
}

/// Runs the binary with `args` (no API socket needed) and returns
/// (exit code, stdout without timestamps, stderr).
fn run(args: &[&str]) -> (Option<i32>, Vec<String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::bin())
        .arg("--api-sock")
        .arg(dir.path().join("api.sock"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest).to_owned())
        .collect();
    (
        out.status.code(),
        stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn process_errors_are_logged_then_printed_in_debug_form() {
    let missing = "/nonexistent-firehost-dir/x";
    let cases: [(&[&str], i32, &[&str], String); 4] = [
        (
            &["--level", "bogus"],
            152,
            &[
                "[anonymous-instance:main] Invalid value for logger level: Failed to parse string to level filter: bogus.Possible values: [Error, Warning, Info, Debug]",
                "[anonymous-instance:main] Firecracker exiting with error. exit_code=152",
            ],
            "Error: InvalidLogLevel(LevelFilterFromStrError(\"bogus\"))\n".to_owned(),
        ),
        (
            &["--log-path", missing],
            1,
            &[
                "[anonymous-instance:main] Could not initialize logger: Failed to open target file: No such file or directory (os error 2)",
                "[anonymous-instance:main] Firecracker exiting with error. exit_code=1",
            ],
            "Error: LoggerInitialization(LoggerUpdateError(Os { code: 2, kind: NotFound, message: \"No such file or directory\" }))\n".to_owned(),
        ),
        (
            &["--id", "vm1", "--metrics-path", missing],
            1,
            &[
                "[vm1:main] Running Firecracker v1.16.1",
                "[vm1:main] Could not initialize metrics: Cannot initialize the metrics system due to bad user input: No such file or directory (os error 2)",
                "[vm1:main] Firecracker exiting with error. exit_code=1",
            ],
            "Error: MetricsInitialization(InitializationFailure(\"No such file or directory (os error 2)\"))\n".to_owned(),
        ),
        (
            &["--bogus"],
            153,
            &[
                "[anonymous-instance:main] Arguments parsing error: Found argument 'bogus' which wasn't expected, or isn't valid in this context. \\n\\nFor more information try --help.",
                "[anonymous-instance:main] Firecracker exiting with error. exit_code=153",
            ],
            "Error: ParseArguments(UnexpectedArgument(\"bogus\"))\n".to_owned(),
        ),
    ];
    for (args, code, stdout, stderr) in cases {
        let (c, out, err) = run(args);
        assert_eq!(c, Some(code), "{args:?}");
        assert_eq!(out, stdout, "{args:?}");
        assert_eq!(err, stderr, "{args:?}");
    }
}

#[test]
fn describe_snapshot_errors_match_firecracker() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "garbage\n").unwrap();
    let missing = dir.path().join("missing");
    let cases = [
        (
            &garbage,
            "When printing Snapshot Data format: Invalid data format version of snapshot file: An error occurred during bitcode serialization: bitcode error",
            "Error: PrintSnapshotDataFormat(SnapshotVersion(Bitcode(Error(\"bitcode error\"))))\n",
        ),
        (
            &missing,
            "When printing Snapshot Data format: Unable to open snapshot state file: No such file or directory (os error 2)",
            "Error: PrintSnapshotDataFormat(OpenSnapshot(Os { code: 2, kind: NotFound, message: \"No such file or directory\" }))\n",
        ),
    ];
    for (path, log, stderr) in cases {
        let (code, out, err) = run(&["--describe-snapshot", path.to_str().unwrap()]);
        assert_eq!(code, Some(1));
        assert_eq!(
            out,
            [
                format!("[anonymous-instance:main] {log}"),
                "[anonymous-instance:main] Firecracker exiting with error. exit_code=1".to_owned()
            ]
        );
        assert_eq!(err, stderr);
    }
}

#[test]
fn help_and_snapshot_version_log_a_successful_exit() {
    for flag in ["--help", "--snapshot-version"] {
        let (code, out, err) = run(&[flag]);
        assert_eq!(code, Some(0));
        assert_eq!(
            out.last().map(String::as_str),
            Some("[anonymous-instance:main] Firecracker exiting successfully. exit_code=0"),
            "{flag}"
        );
        assert_eq!(err, "");
    }
    let (_, out, _) = run(&["--snapshot-version"]);
    assert_eq!(out[0], "v10.0.0");
}

#[test]
fn unreadable_config_file_panics_before_binding_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let out = Command::new(common::bin())
        .arg("--api-sock")
        .arg(&sock)
        .args(["--config-file", "/nonexistent-firehost-dir/c.json"])
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(6));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("] Firecracker panicked at src/firecracker/src/main.rs:388:20:\nUnable to open or read from the configuration file: Os { code: 2, kind: NotFound, message: \"No such file or directory\" }\n"),
        "{stdout}"
    );
    assert!(!sock.exists());
}
