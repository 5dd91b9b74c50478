//! The `fake-firecracker` binary: Firecracker's command line in, an exit code out.
//! See the library crate for what it does and the `FAKE_FC_*` fault variables.

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    fake_firecracker::run(&argv)
}
