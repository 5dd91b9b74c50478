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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return exit::finish(Err(CliError::Runtime(e))),
    };
    let result = runtime.block_on(crate::commands::dispatch(cli));
    exit::finish(result)
}
