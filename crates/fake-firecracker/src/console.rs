//! The guest's serial console: Firecracker copies the guest's ttyS0 to its own
//! stdout (or to `serial_out_path` when `PUT /serial` set one), so the fake prints
//! a short Linux-like boot to the same place. Each line is flushed at once, so a
//! reader of the pipe sees it without waiting for the process to exit.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The line the fake "guest" prints once its init is running.
pub const INIT_LINE: &str = "firehost-fake-guest: init started";
/// The line printed when the guest shuts down after Ctrl-Alt-Del.
pub const SHUTDOWN_LINE: &str = "reboot: Restarting system";
/// Printed when `FAKE_FC_IGNORE_CTRL_ALT_DEL` makes the guest ignore
/// Ctrl-Alt-Del, so tests can wait for the decision.
pub const IGNORED_CTRL_ALT_DEL_LINE: &str = "firehost-fake-guest: ignoring Ctrl-Alt-Del";

/// Where the guest console goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Console {
    /// The VMM's stdout (Firecracker's default).
    #[default]
    Stdout,
    /// A file or fifo given by `PUT /serial`.
    File(PathBuf),
}

impl Console {
    /// Writes `lines`, flushing after each one.
    pub fn write_lines(&self, lines: &[String]) -> io::Result<()> {
        match self {
            Self::Stdout => {
                let mut out = io::stdout().lock();
                for line in lines {
                    writeln!(out, "{line}")?;
                    out.flush()?;
                }
                Ok(())
            }
            Self::File(path) => {
                let mut f = open_append(path)?;
                for line in lines {
                    writeln!(f, "{line}")?;
                    f.flush()?;
                }
                Ok(())
            }
        }
    }
}

fn open_append(path: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The boot banner: a kernel version line, the command line, the memory line, init.
pub fn boot_lines(boot_args: &str, vcpu_count: u8, mem_size_mib: u64) -> Vec<String> {
    vec![
        "[    0.000000] Linux version 6.1.0-fake (firehost@fake-firecracker) (rustc) #1 SMP"
            .to_owned(),
        format!("[    0.000000] Command line: {boot_args}"),
        format!("[    0.000000] Memory: {}K available", mem_size_mib * 1024),
        format!("[    0.010000] smpboot: Allowing {vcpu_count} CPUs"),
        "[    0.050000] Run /sbin/init as init process".to_owned(),
        INIT_LINE.to_owned(),
    ]
}

/// The lines printed when the guest restores from a snapshot.
pub fn resume_lines() -> Vec<String> {
    vec!["firehost-fake-guest: resumed from snapshot".to_owned()]
}

/// The last line of a `FAKE_FC_CONSOLE_FLOOD` guest.
pub const FLOOD_DONE_LINE: &str = "firehost-fake-guest: flood done";

/// A guest printing `bytes` of console lines in a loop, on a thread of its
/// own, then [`FLOOD_DONE_LINE`]. Stops early if the console cannot be
/// written (the reader is gone).
pub fn flood(console: Console, bytes: u64) {
    std::thread::spawn(move || {
        // 64 lines of 64 bytes per write, like a guest's printk loop.
        let line = format!("{:<63}", "firehost-fake-guest: flooding the console");
        let chunk: Vec<String> = std::iter::repeat_n(line, 64).collect();
        let per_chunk = 64 * 64;
        let mut written = 0u64;
        while written < bytes {
            if console.write_lines(&chunk).is_err() {
                return;
            }
            written += per_chunk;
        }
        let _ = console.write_lines(&[FLOOD_DONE_LINE.to_owned()]);
    });
}
