//! The single path from a command line to an exit code.

use std::process::ExitCode;

use clap::Parser;

use crate::args::Cli;
use crate::exit::{self, CliError};

/// Parses the command line, runs the command on a tokio runtime and maps
/// the outcome to an exit code. The only place that exits.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return exit::clap_exit(e),
    };
    if let crate::args::Command::PageServer = cli.command {
        // Its own runtime, its own reporting: its stdout belongs to the
        // manager that started it, its stderr to the VM's log.
        return match firehost::snapshot::uffd::run_helper() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("firehost page-server: {}", exit::chain_text(&e));
                ExitCode::FAILURE
            }
        };
    }
    if let crate::args::Command::EgressGateway { socket } = cli.command {
        // Lives while VMs with domain rules do; its stderr is the log the
        // manager opened for it.
        return match firehost::net::host::run_gateway_helper(std::iter::once(socket)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("firehost egress-gateway: {}", exit::chain_text(&e));
                ExitCode::FAILURE
            }
        };
    }
    if let crate::args::Command::LogKeeper { args } = cli.command {
        // Lives as long as its VM; nobody reads its output.
        return match firehost::vmm::keeper::main_with_args(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return exit::finish(Err(CliError::Runtime(e))),
    };
    let result = runtime.block_on(crate::commands::dispatch(cli));
    // Dropped, not leaked: its shutdown waits for writes still under way on
    // the blocking pool (a guest's last stderr bytes in `exec`).
    drop(runtime);
    exit::finish(result)
}
