//! `firehost`: the operator CLI of the firehost library.
//!
//! It runs Firecracker microVMs from a shell: create and start them, list
//! and inspect them, pause, resume, snapshot, restore, clone, stop and
//! remove them, manage their snapshot bundles (`snapshots`), put them on
//! the default network and publish their ports (`run --net`, `net`), read
//! their console, check the host (`doctor`), try everything at once
//! (`quickstart`) and build guest images with the agent in them (`image`,
//! in [`image`]), and run commands and copy files through the guest agent
//! (`exec`, `cp`, in [`exec`]). VMs outlive the command that started them: each command
//! opens the state directory, does its one thing and exits.
//!
//! The binary stays thin, in the order a command flows:
//!
//! 1. [`args`]: the raw command line (clap), stage one of parsing.
//! 2. [`commands`]: stage two (names become [`firehost::VmId`]s, flags a
//!    [`firehost::VmSpec`] that the library validates) and the call to the
//!    library, through the [`firehost::VmProvider`] trait.
//! 3. [`json`] and [`human`]: the output. `--json` is a stable contract,
//!    documented in [`json`].
//! 4. [`exit`]: the exit codes, and errors as one stderr line.
//!
//! [`quickstart`] is the README's first command.

mod app;
mod args;
mod commands;
mod device_args;
mod exec;
mod exit;
mod human;
mod image;
mod json;
mod quickstart;
mod stats;

fn main() -> std::process::ExitCode {
    app::main()
}
