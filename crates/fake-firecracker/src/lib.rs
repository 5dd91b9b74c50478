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
//!
//! [`fault`] injects failures from environment variables, so the command line
//! stays byte-identical to Firecracker's:
//!
//! | variable | effect |
//! | --- | --- |
//! | `FAKE_FC_NO_SOCKET=1` | run, but never create the API socket |
//! | `FAKE_FC_CRASH_AFTER_REQUESTS=N` | abort (SIGABRT) when request N+1 arrives, before answering |
//! | `FAKE_FC_FAIL="PUT /drives/rootfs,PUT /actions"` | those requests answer 400 `injected failure` |
//! | `FAKE_FC_DELAY_MS="PUT /machine-config=200,*=5"` | delay matching answers (first match wins) |
//! | `FAKE_FC_EXIT_ON_START=CODE` | exit with `CODE` just after answering `InstanceStart` |
//! | `FAKE_FC_IGNORE_CTRL_ALT_DEL=1` | the guest ignores `SendCtrlAltDel` |
//!
//! # Process behaviour (as Firecracker)
//!
//! - Exit codes: 0 on guest shutdown, 1 for generic errors (socket in use, failed
//!   snapshot load, bad `--config-file`), 152 for a bad `--level`, 153 for a bad
//!   command line; SIGABRT for an invalid `--id` (Firecracker panics, built with
//!   `panic = "abort"`).
//! - The API socket is bound without removing anything first: an existing path is
//!   "Failed to open the API socket at: PATH. Check that it is not already used.";
//!   the socket file is left behind on exit.
//! - SIGTERM has its default action (Firecracker installs no handler for it).

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

pub mod action;
pub mod args;
pub mod console;
pub mod fault;
pub mod http;
pub mod telemetry;
pub mod testing;
pub mod view;
pub mod vmm;

use args::{ArgsError, Command, RunArgs};
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
pub fn run(argv: &[String]) -> ExitCode {
    let command = match args::parse(argv) {
        Ok(c) => c,
        Err(e) => return arg_error(&e),
    };
    let run = match command {
        Command::Help => {
            println!("Firecracker v{FIRECRACKER_VERSION}\n");
            println!("{}", args::help_text());
            return FcExitCode::Ok.into();
        }
        Command::Version => {
            println!("Firecracker v{FIRECRACKER_VERSION}\n");
            return FcExitCode::Ok.into();
        }
        Command::SnapshotVersion => {
            println!("v{}", vmm::SNAPSHOT_VERSION);
            return FcExitCode::Ok.into();
        }
        Command::DescribeSnapshot(path) => {
            return match vmm::describe_snapshot(&path) {
                Ok(v) => {
                    println!("{v}");
                    FcExitCode::Ok.into()
                }
                Err(e) => fail(FcExitCode::GenericError, &e),
            };
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

fn arg_error(e: &ArgsError) -> ExitCode {
    let mut t = Telemetry::new(args::DEFAULT_INSTANCE_ID);
    t.log(
        Level::Error,
        "main",
        &format!("Arguments parsing error: {e} \n\nFor more information try --help."),
    );
    eprintln!("{}", e.debug_line());
    t.log(
        Level::Error,
        "main",
        "Firecracker exiting with error. exit_code=153",
    );
    FcExitCode::ArgParsing.into()
}

fn fail(code: FcExitCode, message: &str) -> ExitCode {
    eprintln!("Error: {message}");
    code.into()
}

/// Firecracker panics (and aborts) on these; so does the fake.
fn panic_abort(message: &str) -> ! {
    eprintln!("thread 'main' panicked: {message}");
    std::process::abort();
}

fn run_vmm(run: &RunArgs, faults: Faults) -> ExitCode {
    if let Err(e) = args::validate_instance_id(&run.id) {
        let debug = match e {
            args::InstanceIdError::InvalidLen(n) => format!("InvalidLen({n}, 1, 64)"),
            args::InstanceIdError::InvalidChar(c, i) => format!("InvalidChar({c:?}, {i})"),
        };
        panic_abort(&format!("Invalid instance ID: {debug}"));
    }
    let mut telemetry = Telemetry::new(&run.id);
    let level = match run.level.as_deref().map(telemetry::parse_level) {
        None => None,
        Some(Some(l)) => Some(l),
        Some(None) => {
            let bad = run.level.clone().unwrap_or_default();
            eprintln!("Error: InvalidLogLevel(LevelFilterFromStr(\"{bad}\"))");
            return FcExitCode::BadConfiguration.into();
        }
    };
    if let Err(e) = telemetry.configure_logger(
        run.log_path.as_deref(),
        level,
        run.show_level.then_some(true),
        run.show_log_origin.then_some(true),
    ) {
        return fail(
            FcExitCode::GenericError,
            &format!("LoggerInitialization(LoggerUpdateError({e}))"),
        );
    }
    telemetry.log(
        Level::Info,
        "main",
        &format!("Running Firecracker v{FIRECRACKER_VERSION}"),
    );
    if let Some(path) = &run.metrics_path
        && let Err(e) = telemetry.configure_metrics(path)
    {
        return fail(
            FcExitCode::GenericError,
            &format!("MetricsInitialization({e})"),
        );
    }
    let Ok(max_payload_bytes) = run.http_api_max_payload_size.parse::<usize>() else {
        panic_abort("'http-api-max-payload-size' parameter expected to be of 'usize' type.");
    };
    let mmds_size_limit = match &run.mmds_size_limit {
        None => max_payload_bytes,
        Some(s) => s.parse().unwrap_or_else(|_| {
            panic_abort("'mmds-size-limit' parameter expected to be of 'usize' type.")
        }),
    };
    let config_json = run.config_file.as_ref().map(|p| {
        std::fs::read_to_string(p).unwrap_or_else(|e| {
            panic_abort(&format!(
                "Unable to open or read from the configuration file: {e}"
            ))
        })
    });
    let metadata = run.metadata.as_ref().map(|p| {
        let text = std::fs::read_to_string(p).unwrap_or_else(|e| {
            panic_abort(&format!(
                "Unable to open or read from the mmds content file: {e}"
            ))
        });
        serde_json::from_str::<serde_json::Value>(&text).unwrap_or_else(|e| {
            panic_abort(&format!(
                "MMDS error: metadata provided not valid json: {e}"
            ))
        })
    });

    let mut vmm = Vmm::new(
        VmmOptions {
            id: run.id.clone(),
            pci_enabled: run.enable_pci,
            mmds_size_limit,
            exit_on_start: faults.exit_on_start,
            ignore_ctrl_alt_del: faults.ignore_ctrl_alt_del,
        },
        telemetry,
    );
    if let Some(m) = metadata {
        vmm.set_initial_mmds(m);
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return fail(
                FcExitCode::GenericError,
                &format!("cannot start the runtime: {e}"),
            );
        }
    };
    runtime.block_on(async move { serve(run, faults, vmm, config_json, max_payload_bytes).await })
}

async fn serve(
    run: &RunArgs,
    faults: Faults,
    vmm: Vmm,
    config_json: Option<String>,
    max_payload_bytes: usize,
) -> ExitCode {
    let vmm = Arc::new(Mutex::new(vmm));
    let listener = if run.no_api || faults.no_socket {
        None
    } else {
        match tokio::net::UnixListener::bind(&run.api_sock) {
            Ok(l) => Some(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let msg = format!(
                    "RunWithApi(FailedToBindSocket(\"{}\"))",
                    run.api_sock.display()
                );
                log(
                    &vmm,
                    Level::Error,
                    &format!(
                        "RunWithApiError error: Failed to open the API socket at: {}. Check that it is not already used.",
                        run.api_sock.display()
                    ),
                );
                return fail(FcExitCode::GenericError, &msg);
            }
            Err(e) => {
                return fail(
                    FcExitCode::GenericError,
                    &format!("RunWithApi(FailedToBindAndRunHttpServer(IOError({e})))"),
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

    if let Some(json) = config_json {
        let actions = match vmm::config_file_actions(&json) {
            Ok(a) => a,
            Err(e) => {
                return fail(
                    FcExitCode::GenericError,
                    &format!("RunWithApi(BuildFromJson(ParseFromJson(InvalidJson({e}))))"),
                );
            }
        };
        for action in actions {
            let outcome = vmm.lock().unwrap_or_else(|p| p.into_inner()).handle(action);
            if let Err(e) = outcome.result {
                return fail(
                    FcExitCode::GenericError,
                    &format!("Configuration for VMM from one single json failed: {e}"),
                );
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
            let _ = v.telemetry.write_metrics();
        }
    });

    match listener {
        Some(listener) => {
            log(&vmm, Level::Info, "API server started.");
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

fn log(vmm: &Mutex<Vmm>, level: Level, message: &str) {
    vmm.lock()
        .unwrap_or_else(|p| p.into_inner())
        .telemetry
        .log(level, "main", message);
}
