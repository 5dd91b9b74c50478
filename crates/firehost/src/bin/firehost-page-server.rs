//! `firehost-page-server`: the page-server helper for services that embed
//! the library. Point [`ManagerConfig::page_server_program`] at it (with no
//! arguments) and each userfaultfd restore gets a page server in a process
//! of its own, so restored VMs outlive the service. See
//! [`firehost::snapshot::uffd::run_helper`] for the conversation on stdin
//! and stdout.
//!
//! [`ManagerConfig::page_server_program`]: firehost::ManagerConfig::page_server_program

use std::process::ExitCode;

fn main() -> ExitCode {
    match firehost::snapshot::uffd::run_helper() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut line = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                line.push_str(": ");
                line.push_str(&c.to_string());
                cause = c.source();
            }
            eprintln!("firehost-page-server: {line}");
            ExitCode::FAILURE
        }
    }
}
