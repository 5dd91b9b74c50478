//! `firehost-agent`: the guest agent's binary.
//!
//! It parses the flags, prepares the guest when it is PID 1 (see
//! [`firehost_agent::pid1`]), settles the token, and runs
//! [`firehost_agent::serve`] on a tokio runtime. Exit codes: 0 after
//! `SIGTERM`/`SIGINT`, 1 when serving fails, 2 for a bad command line or
//! configuration. An error is one line on stderr with its causes.
//!
//! As PID 1 the process must never exit (the kernel would panic), so up to
//! the fork nothing here exits: a bad command line is logged and the
//! defaults apply, and a failed fork ends the VM instead.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use firehost_agent::config::{CMDLINE_PATH, load_token};
use firehost_agent::{Config, ListenAddr, pid1};

/// How long sessions still running at exit get to finish their blocking
/// work (a file being synced) before the process ends anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The firehost guest agent: runs processes and moves files for the host
/// that started this VM, over vsock.
#[derive(Debug, Parser)]
#[command(name = "firehost-agent", version)]
struct Args {
    /// Where to listen: vsock:PORT, unix:PATH or tcp:IP:PORT (loopback IPs
    /// only). Repeat for several; the default is vsock:10000.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<ListenAddr>,

    /// Read the token from this file (surrounding whitespace is trimmed)
    /// instead of firehost.token= on /proc/cmdline.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,

    /// Accept any token when none is configured. Only for experiments: any
    /// client that can connect may then run anything.
    #[arg(long)]
    insecure_no_token: bool,

    /// As PID 1, also start this program (another init) beside the server.
    #[arg(long, value_name = "PATH")]
    init: Option<PathBuf>,

    /// Allow the Shutdown request when not PID 1 (as PID 1 it always is).
    #[arg(long)]
    allow_shutdown: bool,

    /// Log every session (on the serial console, which is slow).
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> ExitCode {
    let pid1 = pid1::is_pid1();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if pid1 => {
            // The kernel hands init every boot argument it does not know;
            // exiting over one would panic the kernel.
            let _ = e.print();
            eprintln_safe("firehost-agent: warning: ignoring the command line; using the defaults");
            Args::parse_from(["firehost-agent"])
        }
        Err(e) => e.exit(),
    };
    firehost_agent::log::set_verbose(args.verbose);
    if pid1 {
        pid1::boot();
    }
    // After boot, which mounts /dev; before the fork, so that PID 1 and the
    // server both log to the console.
    pid1::ensure_stdio();
    if pid1 {
        if let Err(e) = pid1::fork_server(args.init.as_deref()) {
            eprintln_safe(&format!("firehost-agent: error: {}", error_chain(&e)));
            loop {
                pid1::end_vm();
                // SAFETY: pause only waits for a signal.
                unsafe { libc::pause() };
            }
        }
    } else if args.init.is_some() {
        eprintln_safe("firehost-agent: error: --init only applies when the agent runs as PID 1");
        return ExitCode::from(2);
    }
    // From here on: the server (PID 1's child, or a service).
    let token = match load_token(
        args.token_file.as_deref(),
        CMDLINE_PATH.as_ref(),
        args.insecure_no_token,
    ) {
        Ok(token) => token,
        Err(e) => {
            eprintln_safe(&format!("firehost-agent: error: {}", error_chain(&e)));
            return ExitCode::from(2);
        }
    };
    let listen = if args.listen.is_empty() {
        vec![ListenAddr::Vsock {
            port: firehost_proto::DEFAULT_PORT,
        }]
    } else {
        args.listen
    };
    let config = Config {
        listen,
        token,
        allow_shutdown: args.allow_shutdown || pid1,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln_safe(&format!("firehost-agent: error: cannot start tokio: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(firehost_agent::serve(config));
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln_safe(&format!("firehost-agent: error: {}", error_chain(&e)));
            ExitCode::FAILURE
        }
    }
}

/// `e` and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}

/// Writes a line to stderr, ignoring failures (`eprintln!` panics on them).
fn eprintln_safe(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
