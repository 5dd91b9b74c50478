//! `firehost-log-keeper`: the log keeper for services that embed the
//! library. Point [`ManagerConfig::log_keeper_program`] at it (with no
//! arguments) and each VM whose console goes to a file gets a keeper in a
//! process of its own, which bounds the console, Firecracker's log and its
//! metrics, and outlives the service. See [`firehost::vmm::keeper`].
//!
//! [`ManagerConfig::log_keeper_program`]: firehost::ManagerConfig::log_keeper_program

use std::process::ExitCode;

fn main() -> ExitCode {
    match firehost::vmm::keeper::main_with_args(std::env::args_os().skip(1)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("firehost-log-keeper: {e}");
            ExitCode::FAILURE
        }
    }
}
