//! Shared steps of the CLI tests: a fresh state directory per test, the
//! built `firehost` binary pointed at `fake-firecracker`, JSON shape
//! checks, and a guard that removes a test's VM even when the test fails.

#![allow(dead_code, unused_imports)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// The `firehost` binary under test.
pub fn firehost_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_firehost"))
}

/// `fake-firecracker`, built next to `firehost` in the target directory.
pub fn fake_firecracker() -> PathBuf {
    firehost_testkit::workspace_binary("fake-firecracker")
}

/// One test's world: a temporary directory with a state directory, a
/// "kernel" and a "rootfs" (the fake only checks that they exist).
#[derive(Debug)]
pub struct TestEnv {
    dir: tempfile::TempDir,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// A kernel file.
    pub kernel: PathBuf,
    /// A rootfs file.
    pub rootfs: PathBuf,
    fake: PathBuf,
}

impl TestEnv {
    pub fn new() -> Self {
        let fake = fake_firecracker();
        // Short paths: VM sockets live under the state directory.
        let dir = tempfile::Builder::new()
            .prefix("fhcli-")
            .tempdir_in("/tmp")
            .unwrap();
        let kernel = dir.path().join("vmlinux");
        let rootfs = dir.path().join("rootfs.ext4");
        std::fs::write(&kernel, b"not really a kernel").unwrap();
        std::fs::write(&rootfs, b"not really a rootfs").unwrap();
        TestEnv {
            state_dir: dir.path().join("state"),
            dir,
            kernel,
            rootfs,
            fake,
        }
    }

    /// A scratch path in the test's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `firehost --state-dir … --firecracker <fake> ARGS`, with no
    /// `FIREHOST_*` variables inherited.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(firehost_bin());
        cmd.arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--firecracker")
            .arg(&self.fake)
            .args(args)
            .stdin(Stdio::null());
        for var in [
            "FIREHOST_STATE_DIR",
            "FIREHOST_FIRECRACKER",
            "FIREHOST_JAILER",
            "FIREHOST_KERNEL",
            "FIREHOST_ROOTFS",
            "FIREHOST_BRIDGE",
            "FIREHOST_SUBNET",
            "FIREHOST_UPLINK",
            "FIREHOST_DNS",
            "FIREHOST_HOST_SERVICES",
            "FIREHOST_CHROOT_BASE",
            "FIREHOST_JAIL_ALL",
            "FIREHOST_JAIL_UIDS",
            "FIREHOST_CGROUP_VERSION",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Runs `firehost ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("firehost runs")
    }

    /// Runs `firehost --json ARGS`, expects success and one JSON object.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert_success(&out, args);
        parse_json(&out)
    }

    /// `run` with the test images. The many VMs of a test share the one
    /// image, so it is read-only (two live writers are refused).
    pub fn run_args(&self) -> Vec<String> {
        vec![
            "run".into(),
            "--kernel".into(),
            self.kernel.display().to_string(),
            "--rootfs".into(),
            self.rootfs.display().to_string(),
            "--rootfs-ro".into(),
        ]
    }

    /// Starts VM `name` (plus `extra` run flags) and returns its JSON, with
    /// a guard that removes it at the end of the test.
    pub fn start_vm(&self, name: &str, extra: &[&str]) -> (VmGuard<'_>, Value) {
        let guard = VmGuard {
            env: self,
            name: name.to_owned(),
        };
        let mut args = self.run_args();
        args.extend(["--name".into(), name.into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let vm = self.json(&args);
        (guard, vm)
    }

    /// The VM directories in the state directory.
    pub fn vm_dirs(&self) -> Vec<String> {
        match std::fs::read_dir(self.state_dir.join("vms")) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// Removes its VM with `firehost rm -f` when dropped, so a failing test
/// leaves no VMM behind.
#[derive(Debug)]
pub struct VmGuard<'a> {
    /// The test env that runs `rm -f`.
    pub env: &'a TestEnv,
    /// The VM's name.
    pub name: String,
}

impl Drop for VmGuard<'_> {
    fn drop(&mut self) {
        let _ = self.env.run(&["rm", "-f", &self.name]);
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn assert_success(out: &Output, args: &[&str]) {
    assert!(
        out.status.success(),
        "firehost {args:?} failed ({}): stderr: {}",
        out.status,
        stderr(out)
    );
}

pub fn parse_json(out: &Output) -> Value {
    let text = stdout(out);
    assert_eq!(
        text.lines().count(),
        1,
        "--json prints exactly one line: {text:?}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// Asserts that `out` failed with exit code `code` and exactly one stderr
/// line starting with `firehost: `; returns that line.
pub fn assert_error(out: &Output, code: i32) -> String {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code; stderr: {err}; stdout: {}",
        stdout(out)
    );
    assert_eq!(err.lines().count(), 1, "one stderr line: {err:?}");
    assert!(err.starts_with("firehost: "), "{err:?}");
    err.trim_end().to_owned()
}

/// A JSON type, for shape checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Str,
    Int,
    Num,
    Bool,
    Null,
    Arr,
    Obj,
}

fn type_of(v: &Value) -> Ty {
    match v {
        Value::String(_) => Ty::Str,
        Value::Number(n) if n.is_i64() || n.is_u64() => Ty::Int,
        Value::Number(_) => Ty::Num,
        Value::Bool(_) => Ty::Bool,
        Value::Null => Ty::Null,
        Value::Array(_) => Ty::Arr,
        Value::Object(_) => Ty::Obj,
    }
}

/// Asserts that `v` is an object with exactly these fields, each of one of
/// the allowed types (`Num` also accepts integers).
pub fn assert_shape(v: &Value, fields: &[(&str, &[Ty])]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut expected: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
    let mut found: Vec<&str> = obj.keys().map(String::as_str).collect();
    expected.sort_unstable();
    found.sort_unstable();
    assert_eq!(found, expected, "field names of {v}");
    for (key, allowed) in fields {
        let ty = type_of(&obj[*key]);
        let ok = allowed.contains(&ty) || (ty == Ty::Int && allowed.contains(&Ty::Num));
        assert!(
            ok,
            "field {key} is {ty:?}, expected one of {allowed:?}: {v}"
        );
    }
}

pub use firehost_testkit::{process_alive, wait_until};

/// The documented VM object.
pub fn assert_vm_shape(vm: &Value) {
    use Ty::*;
    assert_shape(
        vm,
        &[
            ("name", &[Str]),
            ("state", &[Str]),
            ("pid", &[Int, Null]),
            ("api_socket", &[Str]),
            ("dir", &[Str]),
            ("console_file", &[Str, Null]),
            ("log_file", &[Str, Null]),
            ("vcpus", &[Int]),
            ("mem_mib", &[Int]),
            ("smt", &[Bool]),
            ("kernel", &[Str]),
            ("initrd", &[Str, Null]),
            ("rootfs", &[Str, Null]),
            ("rootfs_read_only", &[Bool]),
            ("rootfs_shared", &[Bool]),
            ("own_drives", &[Arr]),
            ("boot_args", &[Str]),
            ("drives", &[Arr]),
            ("nics", &[Arr]),
            ("entropy", &[Obj, Null]),
            ("balloon", &[Obj, Null]),
            ("cpu_template", &[Str, Null]),
            ("pmem", &[Arr]),
            ("serial_limit", &[Obj, Null]),
            ("memory_hotplug", &[Obj, Null]),
            ("created_at_ms", &[Int]),
            ("exit", &[Obj, Null]),
            ("console_tail", &[Arr, Null]),
            ("net", &[Obj, Null]),
            ("vsock", &[Obj, Null]),
            ("jail", &[Obj, Null]),
            ("busy", &[Bool]),
            ("interrupted_snapshot", &[Str, Null]),
        ],
    );
    for drive in vm["drives"].as_array().unwrap() {
        assert_shape(
            drive,
            &[
                ("id", &[Str]),
                ("path", &[Str]),
                ("root", &[Bool]),
                ("read_only", &[Bool]),
                ("cache", &[Str]),
                ("engine", &[Str]),
                ("partuuid", &[Str, Null]),
                ("limit", &[Obj, Null]),
            ],
        );
        assert_limit_shape(&drive["limit"]);
    }
    for nic in vm["nics"].as_array().unwrap() {
        assert_shape(
            nic,
            &[
                ("id", &[Str]),
                ("tap", &[Str]),
                ("rx_limit", &[Obj, Null]),
                ("tx_limit", &[Obj, Null]),
            ],
        );
        assert_limit_shape(&nic["rx_limit"]);
        assert_limit_shape(&nic["tx_limit"]);
    }
    if vm["entropy"].is_object() {
        assert_shape(&vm["entropy"], &[("limit", &[Obj, Null])]);
        assert_limit_shape(&vm["entropy"]["limit"]);
    }
    if vm["balloon"].is_object() {
        assert_shape(
            &vm["balloon"],
            &[
                ("amount_mib", &[Int]),
                ("stats_interval_s", &[Int]),
                ("deflate_on_oom", &[Bool]),
                ("free_page_hinting", &[Bool]),
                ("free_page_reporting", &[Bool]),
            ],
        );
    }
    if vm["jail"].is_object() {
        assert_shape(
            &vm["jail"],
            &[
                ("chroot", &[Str]),
                ("uid", &[Int]),
                ("gid", &[Int]),
                ("cgroups", &[Arr]),
            ],
        );
    }
    if vm["exit"].is_object() {
        assert_shape(
            &vm["exit"],
            &[("code", &[Int, Null]), ("signal", &[Int, Null])],
        );
    }
    if vm["net"].is_object() {
        assert_shape(
            &vm["net"],
            &[
                ("ip", &[Str]),
                ("prefix_len", &[Int]),
                ("gateway", &[Str]),
                ("mac", &[Str]),
                ("tap", &[Str]),
                ("dns", &[Arr]),
                ("published", &[Arr]),
                ("peer_groups", &[Arr]),
                ("netns", &[Str, Null]),
                ("guest", &[Obj, Null]),
                ("egress", &[Obj]),
                ("traffic", &[Obj, Null]),
            ],
        );
        assert_egress_shape(&vm["net"]["egress"]);
        assert_traffic_shape(&vm["net"]["traffic"]);
    }
}

/// An egress policy object.
pub fn assert_egress_shape(policy: &Value) {
    use Ty::*;
    assert_shape(policy, &[("default", &[Str]), ("rules", &[Arr])]);
    for rule in policy["rules"].as_array().into_iter().flatten() {
        assert_shape(
            rule,
            &[
                ("action", &[Str]),
                ("net", &[Str, Null]),
                ("domain", &[Str, Null]),
            ],
        );
    }
}

/// A traffic object, or null.
pub fn assert_traffic_shape(traffic: &Value) {
    use Ty::*;
    if traffic.is_null() {
        return;
    }
    assert_shape(
        traffic,
        &[
            ("tx_bytes", &[Int]),
            ("tx_packets", &[Int]),
            ("rx_bytes", &[Int]),
            ("rx_packets", &[Int]),
            ("egress_dropped", &[Int]),
            ("names_refused", &[Int]),
        ],
    );
}

/// A documented limit, or null.
pub fn assert_limit_shape(limit: &Value) {
    use Ty::*;
    if !limit.is_object() {
        assert!(limit.is_null(), "{limit}");
        return;
    }
    assert_shape(limit, &[("bandwidth", &[Obj, Null]), ("ops", &[Obj, Null])]);
    for bucket in [&limit["bandwidth"], &limit["ops"]] {
        if bucket.is_object() {
            assert_shape(
                bucket,
                &[
                    ("size", &[Int]),
                    ("refill_time_ms", &[Int]),
                    ("one_time_burst", &[Int, Null]),
                ],
            );
        }
    }
}

/// True if this process can open `/dev/kvm` read-write.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(Path::new("/dev/kvm"))
        .is_ok()
}
