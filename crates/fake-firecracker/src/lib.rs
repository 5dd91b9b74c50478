//! fake-firecracker: a stand-in VMM for hermetic tests.
//!
//! CI machines have neither a Firecracker binary nor a KVM that can boot a guest,
//! yet the library's process management, API client and lifecycle logic must be
//! exercised end to end. This crate is a real process that the library spawns
//! exactly as it spawns Firecracker (same command line), that serves Firecracker
//! v1.16.1's HTTP API on the unix socket with Firecracker's rules (what is allowed
//! before and after `InstanceStart`, which state a snapshot needs, the exact error
//! bodies and status codes), writes snapshot, log and metrics files, and prints a
//! guest console. Any behaviour where it differs from the real Firecracker is a bug
//! in the fake.
//!
//! # Layers
//!
//! In the order a request flows through them:
//!
//! 1. [`args`]: Firecracker's own command-line parser rules.
//! 2. [`http`]: hyper on a unix socket, shaped like Firecracker's micro-http.
//! 3. [`action`]: (method, path, body) to a typed [`action::Action`].
//! 4. [`vmm`]: the state machine that accepts or refuses each action.
//! 5. [`console`], [`telemetry`]: the guest console, the logger and metrics.
//! 6. [`memory`], [`guest`]: real guest memory and the thread that stands in
//!    for the vCPUs.
//!
//! [`fault`] injects failures from environment variables, so the command line
//! stays byte-identical to Firecracker's:
//!
//! | variable | effect |
//! | --- | --- |
//! | `FAKE_FC_NO_SOCKET=1` | run, but never create the API socket |
//! | `FAKE_FC_CRASH_AFTER_REQUESTS=N` | abort (SIGABRT) when request N+1 arrives, before answering |
//! | `FAKE_FC_FAIL="PUT /drives/rootfs,PUT /actions"` | those requests answer 400 `injected failure` (a failed `PUT /snapshot/load` then ends the process, as every failed load) |
//! | `FAKE_FC_DELAY_MS="PUT /machine-config=200,*=5"` | delay matching answers (first match wins) |
//! | `FAKE_FC_EXIT_ON_START=CODE` | exit with `CODE` just after answering `InstanceStart` |
//! | `FAKE_FC_IGNORE_CTRL_ALT_DEL=1` | the guest ignores `SendCtrlAltDel` |
//! | `FAKE_FC_BALLOON_DRIVER=1` | the guest has a virtio-balloon driver (inflates at once, reports statistics, takes runtime changes); without it, as a guest with none: `actual_pages` 0 and runtime changes refused "Device not activated yet." |
//! | `FAKE_FC_CONSOLE_FLOOD=BYTES` | the booted guest prints BYTES of console lines as fast as it can, then `firehost-fake-guest: flood done` |
//! | `FAKE_FC_GUEST_TOUCH=all\|none\|first:N` | pages a restored guest reads on its first resume (default `all`) |
//! | `FAKE_FC_AGENT=PATH` | the guest runs this `firehost-agent` behind its vsock device (see below) |
//! | `FAKE_FC_REQUEST_LOG=PATH` | append `METHOD PATH` to this file as each request arrives |
//!
//! # Vsock and the guest agent
//!
//! `PUT /vsock` binds the device's unix socket and serves Firecracker's
//! hybrid-vsock handshake on it (`CONNECT <port>\n` → `OK <n>\n`, then a
//! relay; a close when nothing listens). Guest port `P` is whatever listens
//! on `<uds_path>.guest/P`. With `FAKE_FC_AGENT`, the guest starts that
//! agent when it boots or resumes from a snapshot, listening on port 10000
//! with the token from the kernel command line (`firehost.token=`), so the
//! whole exec path runs without a VM. See [`vsock`].
//!
//! # Guest memory and snapshots
//!
//! The guest has real memory of `mem_size_mib` ([`memory::GuestMemory`], laid
//! out as Firecracker's `x86_64` regions: one, or two around the 3.25–4 GiB MMIO
//! hole). At `InstanceStart` the guest writes into every 4 KiB page its index
//! (word 0) and the FNV-1a hash of `--id` (word 1); on every resume it writes the
//! resume count into word 2 of four pages ([`guest::resume_pages`]).
//!
//! - `PUT /snapshot/create` writes that memory to `mem_file_path`: every page for
//!   `Full`; for `Diff`, only the pages written since the last snapshot when dirty
//!   pages are tracked, else every resident page (Firecracker's `mincore` path),
//!   into a file of the full size with holes elsewhere (an existing file of the
//!   right size is merged into, as Firecracker does). The vmstate records
//!   `"snapshot_type"`.
//! - `PUT /snapshot/load` with the `File` backend maps the memory file
//!   `MAP_PRIVATE`. With the `Uffd` backend it maps anonymous memory, creates a
//!   userfaultfd (`O_CLOEXEC | O_NONBLOCK`, `UFFD_API` with
//!   `UFFD_FEATURE_EVENT_REMOVE`), registers the regions (missing mode), connects
//!   to `backend_path` and sends one message, the JSON array of
//!   `GuestRegionUffdMapping` with the fd as `SCM_RIGHTS`, exactly as Firecracker
//!   v1.16.1 does, e.g. for 128 MiB:
//!   `[{"base_host_virt_addr":140000834355200,"size":134217728,"offset":0,"page_size":4096,"page_size_kib":4096}]`
//!   (`page_size_kib` holds bytes, as in Firecracker). The connection stays open.
//!   A refused connection answers `Failed to connect to UDS Unix stream: ...` and
//!   the process exits 1, as every failed load. Like Firecracker, the load itself
//!   reads two pages (guest offsets `0xde000`, `0xdf000`) before it answers, so a
//!   page server must be serving by then.
//! - On the first resume after a load, the guest reads its memory in page order
//!   (`FAKE_FC_GUEST_TOUCH`: every page, the first N, or none) and prints
//!   `firehost-fake-guest: memory checksum <16 hex digits>` on the console: a
//!   [`memory::Checksum`] of the pages read, equal to the checksum of the same
//!   bytes of the memory file. With `none` it reads and writes nothing.
//!
//! # Process behaviour (as Firecracker)
//!
//! - A failed `PUT /snapshot/load` is answered, and then nothing more: no later
//!   request (on that connection or another) gets an answer while the process
//!   exits 1.
//! - Exit codes: 0 on guest shutdown, 1 for generic errors (socket in use, failed
//!   snapshot load, bad `--config-file`), 152 for a bad `--level`, 153 for a bad
//!   command line; SIGABRT for an invalid `--id` (Firecracker panics, built with
//!   `panic = "abort"`).
//! - The API socket is bound without removing anything first: an existing path is
//!   "Failed to open the API socket at: PATH. Check that it is not already used.";
//!   the socket file is left behind on exit.
//! - SIGTERM has its default action (Firecracker installs no handler for it).
//! - `PUT /snapshot/load` tracks dirty pages only when the request asks for it
//!   (`track_dirty_pages` or `enable_diff_snapshots`), whatever the snapshot had.
//! - Devices are replaced as Firecracker replaces them: a `PUT` of an existing
//!   network interface drops the old one (its TAP, and an MMDS configuration
//!   naming it) before making the new one, which goes last in the list, so a
//!   failed update leaves none; a `PUT /vsock` removes the old device and its
//!   socket file first (a failed one leaves no device). As root, a missing TAP
//!   is created (transient).
//!
//! # Known differences from Firecracker v1.16.1
//!
//! Found by sending the same request sequences to both binaries, before and
//! after `InstanceStart` and after failed requests (December 2026); none of
//! them matters to firehost's own use, each is a fidelity bug to fix when it
//! does. The fake accepts, where Firecracker refuses:
//!
//! - MAC syntax beyond the serde check; `cpu_template` `V1N1` on x86; a drive
//!   with both `socket` and `path_on_host`; the contents of `PUT /cpu-config`;
//!   memory-hotplug sizes; `boot_args` of 2048 bytes or more.
//! - At `InstanceStart`: a kernel that is not ELF or empty, more than 17
//!   virtio devices, a pmem file that is missing, empty or a directory
//!   (Firecracker refuses these at start and stays "Not started"; the fake
//!   refuses a missing pmem file at `PUT` already).
//! - Query strings and fragments (`/?x=1`): Firecracker treats them as part of
//!   the path (400).
//!
//! And it answers differently:
//!
//! - `PATCH` of a rate limiter replaces the whole limiter; Firecracker updates
//!   only the buckets sent, and a bucket of size 0 disables it.
//! - Deserialisation errors name the fake's types (`BootSource`, `u64`) where
//!   Firecracker names its own (`BootSourceConfig`, `usize`), list enum
//!   variants in another order, and take the logger level case-sensitively.
//! - No `Deprecation: true` header (Firecracker sends it for `cpu_template`,
//!   MMDS V1, `vsock_id`, `mem_file_path`, `enable_diff_snapshots`).
//! - Malformed HTTP gets an empty 400 and a closed connection, where
//!   micro-http answers a JSON fault and keeps the connection.
//! - The metrics file has 5 top-level keys (one `fake_firecracker`), where
//!   Firecracker writes 23.
//! - Memory hotplug: the default block and slot sizes are not filled in, and a
//!   runtime `PATCH` is accepted where a guest without a driver refuses it.
//! - An empty `host_dev_name` is kept as `""`; Firecracker's kernel call
//!   creates `tapN` and reports that name.
//! - Timing: a failed load ends the fake within ~10 ms, Firecracker within
//!   ~1 ms, and a request arriving in that window makes Firecracker abort;
//!   the device order in `GET /vm/config` after boot is random in
//!   Firecracker and stable in the fake.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

pub mod action;
pub mod args;
pub mod console;
pub mod fault;
pub mod guest;
pub mod http;
pub mod memory;
pub mod tap;
pub mod telemetry;
pub mod testing;
pub mod view;
pub mod vmm;
pub mod vsock;

use args::{Command, RunArgs};
use fault::Faults;
use telemetry::{Level, Telemetry};
use vmm::{Effect, FIRECRACKER_VERSION, Vmm, VmmOptions};

/// Firecracker's exit codes (`vmm::FcExitCode`) that the fake uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FcExitCode {
    /// Success.
    Ok = 0,
    /// Generic error.
    GenericError = 1,
    /// Bad configuration (`--level`).
    BadConfiguration = 152,
    /// Command line parsing error.
    ArgParsing = 153,
}

impl From<FcExitCode> for ExitCode {
    fn from(code: FcExitCode) -> Self {
        ExitCode::from(code as u8)
    }
}

/// Runs the fake with this command line and environment-provided faults.
/// Returns only when the process must exit with a code; guest shutdowns and
/// crashes exit the process directly.
///
/// As Firecracker's `main`, the outcome is logged last: `Firecracker exiting
/// successfully. exit_code=0`, or the error (its `Display` in the log, its
/// `Debug` on stderr) then `Firecracker exiting with error. exit_code=N`.
pub fn run(argv: &[String]) -> ExitCode {
    let mut t = Telemetry::new(args::DEFAULT_INSTANCE_ID);
    let command = match args::parse(argv) {
        Ok(c) => c,
        Err(e) => {
            return exit(
                &mut t,
                Err(MainError {
                    log: format!(
                        "Arguments parsing error: {e} \\n\\nFor more information try --help."
                    ),
                    debug: e.debug_line().trim_start_matches("Error: ").to_owned(),
                    code: FcExitCode::ArgParsing,
                }),
            );
        }
    };
    let run = match command {
        Command::Help => {
            println!("Firecracker v{FIRECRACKER_VERSION}\n");
            println!("{}", args::help_text());
            return exit(&mut t, Ok(()));
        }
        Command::Version => {
            println!("Firecracker v{FIRECRACKER_VERSION}\n");
            return exit(&mut t, Ok(()));
        }
        Command::SnapshotVersion => {
            println!("v{}", vmm::SNAPSHOT_VERSION);
            return exit(&mut t, Ok(()));
        }
        Command::DescribeSnapshot(path) => {
            let result = vmm::describe_snapshot(&path)
                .map(|v| println!("{v}"))
                .map_err(|(log, debug)| MainError {
                    log,
                    debug: format!("PrintSnapshotDataFormat({debug})"),
                    code: FcExitCode::GenericError,
                });
            return exit(&mut t, result);
        }
        Command::Run(run) => run,
    };
    let faults = match Faults::from_env() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("fake-firecracker: invalid fault injection settings: {e}");
            return FcExitCode::GenericError.into();
        }
    };
    run_vmm(&run, faults)
}

/// An error `main` reports before exiting (Firecracker's `MainError`).
#[derive(Debug)]
struct MainError {
    /// Its `Display`, logged.
    log: String,
    /// Its `Debug`, printed on stderr after "Error: ".
    debug: String,
    /// The exit code.
    code: FcExitCode,
}

impl MainError {
    fn generic(log: String, debug: String) -> Self {
        Self {
            log,
            debug,
            code: FcExitCode::GenericError,
        }
    }
}

/// Logs the end of the process like Firecracker's `main` and returns its code.
fn exit(t: &mut Telemetry, result: Result<(), MainError>) -> ExitCode {
    match result {
        Ok(()) => {
            t.log(
                Level::Info,
                "main",
                "Firecracker exiting successfully. exit_code=0",
            );
            FcExitCode::Ok.into()
        }
        Err(e) => {
            t.log(Level::Error, "main", &e.log);
            eprintln!("Error: {}", e.debug);
            t.log(
                Level::Error,
                "main",
                &format!("Firecracker exiting with error. exit_code={}", e.code as u8),
            );
            e.code.into()
        }
    }
}

/// Where Firecracker v1.16.1 panics, for the panic message.
mod panic_site {
    pub const INSTANCE_ID: &str = "src/firecracker/src/main.rs:309:48";
    pub const CONFIG_FILE: &str = "src/firecracker/src/main.rs:388:20";
    pub const METADATA_FILE: &str = "src/firecracker/src/main.rs:393:20";
    pub const MAX_PAYLOAD: &str = "src/firecracker/src/main.rs:403:18";
    pub const MMDS_SIZE_LIMIT: &str = "src/firecracker/src/main.rs:415:18";
    pub const METADATA_JSON: &str = "src/vmm/src/rpc_interface.rs:387:44";
}

/// Firecracker panics (and aborts, built with `panic = "abort"`) on these; so
/// does the fake. Its panic hook logs the panic; nothing goes to stderr.
fn panic_abort(t: &mut Telemetry, site: &str, message: &str) -> ! {
    t.log(
        Level::Error,
        "main",
        &format!("Firecracker panicked at {site}:\n{message}"),
    );
    std::process::abort();
}

fn run_vmm(run: &RunArgs, faults: Faults) -> ExitCode {
    let mut t = Telemetry::new(args::DEFAULT_INSTANCE_ID);
    if let Err(e) = args::validate_instance_id(&run.id) {
        let debug = match e {
            args::InstanceIdError::InvalidLen(n) => format!("InvalidLen({n}, 1, 64)"),
            args::InstanceIdError::InvalidChar(c, i) => format!("InvalidChar({c:?}, {i})"),
        };
        panic_abort(
            &mut t,
            panic_site::INSTANCE_ID,
            &format!("Invalid instance ID: {debug}"),
        );
    }
    let level = match run.level.as_deref().map(telemetry::parse_level) {
        None => None,
        Some(Some(l)) => Some(l),
        Some(None) => {
            let bad = run.level.clone().unwrap_or_default();
            return exit(
                &mut t,
                Err(MainError {
                    log: format!(
                        "Invalid value for logger level: Failed to parse string to level filter: {bad}.Possible values: [Error, Warning, Info, Debug]"
                    ),
                    debug: format!("InvalidLogLevel(LevelFilterFromStrError({bad:?}))"),
                    code: FcExitCode::BadConfiguration,
                }),
            );
        }
    };
    if let Err(e) = t.configure_logger(
        run.log_path.as_deref(),
        level,
        run.show_level.then_some(true),
        run.show_log_origin.then_some(true),
    ) {
        return exit(
            &mut t,
            Err(MainError::generic(
                format!("Could not initialize logger: Failed to open target file: {e}"),
                format!("LoggerInitialization(LoggerUpdateError({e:?}))"),
            )),
        );
    }
    let mut telemetry = t;
    telemetry.set_instance_id(&run.id);
    let t = &mut telemetry;
    t.log(
        Level::Info,
        "main",
        &format!("Running Firecracker v{FIRECRACKER_VERSION}"),
    );
    if let Some(path) = &run.metrics_path
        && let Err(e) = t.configure_metrics(path)
    {
        return exit(
            t,
            Err(MainError::generic(
                format!("Could not initialize metrics: {e}"),
                format!("MetricsInitialization(InitializationFailure({:?}))", e.0),
            )),
        );
    }
    let config_json = match run.config_file.as_ref().map(std::fs::read_to_string) {
        None => None,
        Some(Ok(text)) => Some(text),
        Some(Err(e)) => panic_abort(
            t,
            panic_site::CONFIG_FILE,
            &format!("Unable to open or read from the configuration file: {e:?}"),
        ),
    };
    let metadata = match run.metadata.as_ref().map(std::fs::read_to_string) {
        None => None,
        Some(Ok(text)) => Some(text),
        Some(Err(e)) => panic_abort(
            t,
            panic_site::METADATA_FILE,
            &format!("Unable to open or read from the mmds content file: {e:?}"),
        ),
    };
    let max_payload_bytes = match run.http_api_max_payload_size.parse::<usize>() {
        Ok(n) => n,
        Err(e) => panic_abort(
            t,
            panic_site::MAX_PAYLOAD,
            &format!(
                "'http-api-max-payload-size' parameter expected to be of 'usize' type.: {e:?}"
            ),
        ),
    };
    let mmds_size_limit = match run.mmds_size_limit.as_deref().map(str::parse::<usize>) {
        None => max_payload_bytes,
        Some(Ok(n)) => n,
        Some(Err(e)) => panic_abort(
            t,
            panic_site::MMDS_SIZE_LIMIT,
            &format!("'mmds-size-limit' parameter expected to be of 'usize' type.: {e:?}"),
        ),
    };

    let mut vmm = Vmm::new(
        VmmOptions {
            id: run.id.clone(),
            pci_enabled: run.enable_pci,
            mmds_size_limit,
            exit_on_start: faults.exit_on_start,
            console_flood: faults.console_flood,
            balloon_driver: faults.balloon_driver,
            ignore_ctrl_alt_del: faults.ignore_ctrl_alt_del,
            guest_touch: faults.guest_touch,
        },
        telemetry,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return exit(
                &mut vmm.telemetry,
                Err(MainError::generic(
                    format!("cannot start the runtime: {e}"),
                    format!("{e:?}"),
                )),
            );
        }
    };
    let startup = Startup {
        config_json,
        metadata,
        max_payload_bytes,
    };
    runtime.block_on(async move { serve(run, faults, vmm, startup).await })
}

/// What `serve` applies once the socket is bound.
struct Startup {
    config_json: Option<String>,
    metadata: Option<String>,
    max_payload_bytes: usize,
}

async fn serve(run: &RunArgs, faults: Faults, vmm: Vmm, startup: Startup) -> ExitCode {
    let Startup {
        config_json,
        metadata,
        max_payload_bytes,
    } = startup;
    let vmm = Arc::new(Mutex::new(vmm));
    let listener = if run.no_api || faults.no_socket {
        None
    } else {
        match tokio::net::UnixListener::bind(&run.api_sock) {
            Ok(l) => Some(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return exit_vmm(
                    &vmm,
                    Err(MainError::generic(
                        format!(
                            "RunWithApiError error: Failed to open the API socket at: {}. Check that it is not already used.",
                            run.api_sock.display()
                        ),
                        format!("RunWithApi(FailedToBindSocket({:?}))", run.api_sock),
                    )),
                );
            }
            Err(e) => {
                return exit_vmm(
                    &vmm,
                    Err(MainError::generic(
                        format!("RunWithApiError error: {e}"),
                        format!("RunWithApi(FailedToBindAndRunHttpServer(IOError({e:?})))"),
                    )),
                );
            }
        }
    };
    if listener.is_some() {
        log(
            &vmm,
            Level::Info,
            &format!("Listening on API socket ({:?}).", run.api_sock),
        );
    }
    if let Some(text) = metadata {
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(m) => lock(&vmm).set_initial_mmds(m),
            Err(e) => panic_abort(
                &mut lock(&vmm).telemetry,
                panic_site::METADATA_JSON,
                &format!("MMDS error: metadata provided not valid json: {e:?}"),
            ),
        }
    }
    if listener.is_some() {
        // Firecracker's API thread says so as it starts, before the VM is built.
        lock(&vmm)
            .telemetry
            .log(Level::Info, "fc_api", "API server started.");
    }

    if let Some(json) = config_json {
        let (prefix, debug_prefix) = if listener.is_some() {
            ("RunWithApiError", "RunWithApi(BuildFromJson(ParseFromJson(")
        } else {
            (
                "RunWithoutApiError",
                "RunWithoutApiError(BuildMicroVMFromJson(ParseFromJson(",
            )
        };
        let build_error = |message: String, debug: String| {
            MainError::generic(
                format!(
                    "{prefix} error: Failed to build MicroVM from Json: Configuration for VMM from one single json failed: {message}"
                ),
                format!("{debug_prefix}{debug})))"),
            )
        };
        let actions = match vmm::config_file_actions(&json) {
            Ok(a) => a,
            Err(e) => {
                return exit_vmm(
                    &vmm,
                    Err(build_error(
                        format!("Invalid JSON: {e}"),
                        format!("InvalidJson({e:?})"),
                    )),
                );
            }
        };
        for action in actions {
            let outcome = lock(&vmm).handle(action);
            if let Err(e) = outcome.result {
                // The fake has no typed `Debug` for action errors: its message stands in.
                return exit_vmm(&vmm, Err(build_error(e.to_string(), format!("{e:?}"))));
            }
            for effect in outcome.effects {
                apply_startup_effect(effect).await;
            }
        }
    }

    // Periodic metrics, as Firecracker's PeriodicMetrics.
    let metrics_vmm = Arc::clone(&vmm);
    tokio::spawn(async move {
        let period = std::time::Duration::from_millis(telemetry::WRITE_METRICS_PERIOD_MS);
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            tick.tick().await;
            let mut v = metrics_vmm.lock().unwrap_or_else(|p| p.into_inner());
            let _ = v.flush_metrics();
        }
    });

    match listener {
        Some(listener) => {
            let server = Arc::new(http::ApiServer::new(vmm, faults, max_payload_bytes));
            server.serve(listener).await;
            FcExitCode::Ok.into()
        }
        None => {
            // No socket: run until killed or until the guest exits.
            std::future::pending::<()>().await;
            FcExitCode::Ok.into()
        }
    }
}

async fn apply_startup_effect(effect: Effect) {
    match effect {
        Effect::Booted { console, lines } => {
            let _ = console.write_lines(&lines);
        }
        Effect::Exit {
            code,
            after,
            lines,
            console,
        } => {
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = console.write_lines(&lines);
                std::process::exit(i32::from(code));
            });
        }
    }
}

fn lock(vmm: &Mutex<Vmm>) -> std::sync::MutexGuard<'_, Vmm> {
    vmm.lock().unwrap_or_else(|p| p.into_inner())
}

fn log(vmm: &Mutex<Vmm>, level: Level, message: &str) {
    lock(vmm).telemetry.log(level, "main", message);
}

fn exit_vmm(vmm: &Mutex<Vmm>, result: Result<(), MainError>) -> ExitCode {
    exit(&mut lock(vmm).telemetry, result)
}
