//! `firehost quickstart`: the first command on a fresh host.
//!
//! 1. Run the doctor checks, and check that a guest kernel and rootfs were
//!    given (`--kernel`/`FIREHOST_KERNEL`, `--rootfs`/`FIREHOST_ROOTFS`).
//!    If anything needed is missing, print the list with a fix for each
//!    and exit 2 without starting anything.
//! 2. Otherwise, in a temporary state directory, create and start a VM,
//!    wait up to [`CONSOLE_WAIT`] for its first console line (then until
//!    the console has been quiet for [`CONSOLE_QUIET`]), stop it, destroy
//!    it and remove the directory: nothing is left behind, also on failure
//!    and on Ctrl-C (which is honoured between steps; the console wait is
//!    cut short).
//! 3. Print the timings and the console's last lines.
//!
//! It boots whatever kernel and rootfs it finds and does not run commands
//! in the guest (that needs an image with the agent: `image build`, `run
//! --vsock`, `exec`). Downloading Firecracker or guest images is not done
//! here either: the missing list says where to get them.
//!
//! The VM's console goes to the in-memory ring ([`ConsoleTarget::Ring`]):
//! the VM never outlives this process, so the wait for output is
//! event-driven. Firecracker's own log goes to its log file (warnings
//! only), so the console shows what the guest printed. The temporary
//! directory has a short name (`$TMPDIR/fhqs-XXXXXX`) to leave room for
//! socket paths.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use firehost::console::{ConsoleRing, ConsoleStream};
use firehost::doctor::{CheckStatus, run_checks};
use firehost::manager::{ConsoleTarget, StopOptions};
use firehost::vmm::LogLevel;
use firehost::{Manager, ManagerConfig, VmError, VmId, VmSpec, VmState};
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};

use crate::args::{GlobalArgs, QuickstartArgs};
use crate::commands::{Out, doctor_config};
use crate::exit::{CliError, Exit};
use crate::human;
use crate::json::{CheckJson, MissingJson, QuickstartJson, TimingsJson, ms, path};

/// How long to wait for the guest's first console line.
pub const CONSOLE_WAIT: Duration = Duration::from_secs(10);
/// Once output came, how long the console must stay quiet before its tail
/// is taken.
pub const CONSOLE_QUIET: Duration = Duration::from_millis(250);
/// How many console lines to print.
pub const TAIL_LINES: usize = 50;
/// The grace the guest gets after Ctrl-Alt-Del, and the VMM after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// The VM's name (unique: the state directory is fresh).
const VM_NAME: &str = "quickstart";

const KERNEL_FIX: &str = "pass --kernel PATH or set FIREHOST_KERNEL to an uncompressed guest \
    kernel (vmlinux on x86_64, Image on aarch64); Firecracker's docs/getting-started.md links \
    to prebuilt CI kernels";
const ROOTFS_FIX: &str = "pass --rootfs PATH or set FIREHOST_ROOTFS to an ext4 root filesystem \
    image; Firecracker's docs/getting-started.md links to prebuilt CI images";

/// Step durations, filled as the steps complete.
#[derive(Debug, Default)]
struct Timings {
    create: Duration,
    start: Duration,
    first_output: Option<Duration>,
    stop: Duration,
    destroy: Duration,
}

/// Runs the quickstart. See the [module docs](self).
pub async fn run(global: &GlobalArgs, args: QuickstartArgs, out: Out) -> Result<Exit, CliError> {
    let began = Instant::now();
    let interrupted = watch_ctrl_c();
    let temp = tempfile::Builder::new()
        .prefix("fhqs-")
        .tempdir()
        .map_err(|source| CliError::TempDir {
            op: "create",
            source,
        })?;
    let state_dir = temp.path().to_owned();

    let config = doctor_config(global, &state_dir);
    let checks = tokio::task::spawn_blocking(move || run_checks(&config))
        .await
        .expect("host checks do not panic");
    let mut missing: Vec<MissingJson> = checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .map(|c| MissingJson {
            what: format!("{}: {}", c.name, c.detail),
            fix: c.fix.clone().unwrap_or_default(),
        })
        .collect();
    let kernel = need_file(args.kernel, "guest kernel", KERNEL_FIX, &mut missing);
    let rootfs = need_file(
        args.rootfs,
        "guest root filesystem",
        ROOTFS_FIX,
        &mut missing,
    );
    let mut report = QuickstartJson {
        ready: false,
        missing,
        checks: checks.iter().map(CheckJson::from).collect(),
        state_dir: path(&state_dir),
        vm: None,
        timings_ms: None,
        console_tail: Vec::new(),
    };
    let (Some(kernel), Some(rootfs), true) = (kernel, rootfs, report.missing.is_empty()) else {
        drop(temp);
        out.emit(&report, human::quickstart)?;
        return Err(CliError::NotReady {
            missing: report.missing.len(),
        });
    };

    let mut config = ManagerConfig::new(&state_dir, &global.firecracker);
    config.console = ConsoleTarget::Ring;
    config.vmm_log = Some(LogLevel::Warning);
    let manager = Manager::open(config).await?;
    let id = VmId::new(VM_NAME).expect("a valid name");
    let spec = VmSpec {
        kernel: Some(kernel),
        rootfs: Some(rootfs),
        ..VmSpec::default()
    };
    let mut timings = Timings::default();
    let booted = boot(&manager, &id, spec, interrupted, &mut timings).await;
    let cleaned = clean_up(&manager, &id, &mut timings).await;
    drop(manager);
    let removed = temp.close().map_err(|source| CliError::TempDir {
        op: "remove",
        source,
    });
    // The first error wins; every cleanup step ran regardless.
    let console_tail = booted?;
    cleaned?;
    removed?;

    report.ready = true;
    report.vm = Some(id.to_string());
    report.console_tail = console_tail;
    report.timings_ms = Some(TimingsJson {
        create_ms: ms(timings.create),
        start_ms: ms(timings.start),
        first_output_ms: timings.first_output.map(ms),
        stop_ms: ms(timings.stop),
        destroy_ms: ms(timings.destroy),
        total_ms: ms(began.elapsed()),
    });
    out.emit(&report, human::quickstart)?;
    Ok(Exit::Success)
}

/// A receiver that turns true on Ctrl-C. While it exists, Ctrl-C no longer
/// kills the process, so cleanup can run.
fn watch_ctrl_c() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = tx.send(true);
        }
    });
    rx
}

fn stop_if_interrupted(interrupted: &watch::Receiver<bool>) -> Result<(), CliError> {
    if *interrupted.borrow() {
        Err(CliError::Interrupted)
    } else {
        Ok(())
    }
}

/// `given` if it names a regular file; else a line in `missing`.
fn need_file(
    given: Option<PathBuf>,
    what: &str,
    fix: &str,
    missing: &mut Vec<MissingJson>,
) -> Option<PathBuf> {
    let problem = match &given {
        None => "none given".to_owned(),
        Some(p) => match std::fs::metadata(p) {
            Ok(m) if m.is_file() => return given,
            Ok(_) => format!("{} is not a regular file", p.display()),
            Err(e) => format!("{}: {e}", p.display()),
        },
    };
    missing.push(MissingJson {
        what: format!("{what}: {problem}"),
        fix: fix.to_owned(),
    });
    None
}

/// Create, start, wait for the console; returns the console's tail.
async fn boot(
    manager: &Manager,
    id: &VmId,
    spec: VmSpec,
    mut interrupted: watch::Receiver<bool>,
    timings: &mut Timings,
) -> Result<Vec<String>, CliError> {
    let at = Instant::now();
    manager.create(id, spec).await?;
    timings.create = at.elapsed();
    stop_if_interrupted(&interrupted)?;

    let at = Instant::now();
    manager.start(id).await?;
    timings.start = at.elapsed();
    stop_if_interrupted(&interrupted)?;

    let ring = manager.console(id).await?;
    let at = Instant::now();
    let deadline = at + CONSOLE_WAIT;
    let first_line = ring.wait_for_line(|l| l.stream == ConsoleStream::Serial);
    tokio::select! {
        first = timeout_at(deadline, first_line) => {
            if first.is_ok() {
                timings.first_output = Some(at.elapsed());
                settle(&ring, deadline).await;
            }
        }
        Ok(_) = interrupted.wait_for(|fired| *fired) => return Err(CliError::Interrupted),
    }
    Ok(manager.console_tail(id, TAIL_LINES).await?)
}

/// Waits until no new console line arrived for [`CONSOLE_QUIET`], or until
/// `deadline`.
async fn settle(ring: &ConsoleRing, deadline: Instant) {
    loop {
        let seen: HashSet<String> = ring.tail(usize::MAX).into_iter().map(|l| l.text).collect();
        let quiet_until = (Instant::now() + CONSOLE_QUIET).min(deadline);
        let new_line = ring.wait_for_line(|l| !seen.contains(&l.text));
        if timeout_at(quiet_until, new_line).await.is_err() {
            return;
        }
    }
}

/// Stops (if live) and destroys the VM, if it exists.
async fn clean_up(manager: &Manager, id: &VmId, timings: &mut Timings) -> Result<(), CliError> {
    let vm = match manager.get(id).await {
        Ok(vm) => vm,
        Err(VmError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let at = Instant::now();
    if matches!(vm.state, VmState::Running | VmState::Paused) {
        let options = StopOptions {
            graceful: None,
            grace: Some(STOP_GRACE),
        };
        manager.stop(id, options).await?;
    }
    timings.stop = at.elapsed();
    let at = Instant::now();
    manager.destroy(id).await?;
    timings.destroy = at.elapsed();
    Ok(())
}
