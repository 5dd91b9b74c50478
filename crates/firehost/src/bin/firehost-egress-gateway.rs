//! `firehost-egress-gateway`: the egress gateway helper for services that
//! embed the library. Point
//! [`DomainConfig::program`](firehost::net::host::DomainConfig::program)
//! at it (with no arguments) and the resolver and proxy that serve VMs
//! with domain rules run in a process of their own, which outlives the
//! service. See [`firehost::net::host::run_gateway_helper`].

use std::process::ExitCode;

fn main() -> ExitCode {
    match firehost::net::host::run_gateway_helper(std::env::args_os().skip(1)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("firehost-egress-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
