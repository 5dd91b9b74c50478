//! One line per event on stderr.
//!
//! The agent's stderr is the guest's serial console when it runs as PID 1,
//! which is slow (every byte is a VM exit), so the per-session lines are
//! [`Level::Debug`] and only written with `--verbose`. A failed write is
//! ignored: a log line is never worth a panic, least of all in PID 1.
//!
//! What never goes into a line: tokens, environment values, process
//! arguments (see the [crate docs](crate#logging)).

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static VERBOSE: AtomicBool = AtomicBool::new(false);

/// How much a line matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Per-session detail, written only when verbose.
    Debug,
    /// Start, stop and other rare events.
    Info,
    /// Something is off but the agent carries on.
    Warn,
    /// A failure the operator should see.
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warning",
            Level::Error => "error",
        }
    }
}

/// Turns [`Level::Debug`] lines on or off (`--verbose`).
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

/// Writes one line at `level`, ignoring write errors.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if level == Level::Debug && !VERBOSE.load(Ordering::Relaxed) {
        return;
    }
    let _ = write_line(&mut std::io::stderr(), level, args);
}

/// Formats the whole line first and hands it to `out` in one `write` call.
///
/// PID 1 and the server are two processes sharing one stderr, so a lock
/// cannot keep their lines apart; `writeln!` would issue one `write(2)` per
/// formatted piece and the pieces of two lines would interleave. One
/// `write(2)` of at most `PIPE_BUF` bytes is atomic on a pipe, and a tty
/// writes it whole too. Longer lines are cut there, so that stays true.
fn write_line(out: &mut impl Write, level: Level, args: fmt::Arguments<'_>) -> std::io::Result<()> {
    /// `PIPE_BUF` on Linux.
    const ATOMIC_WRITE: usize = 4096;
    let mut line = format!("firehost-agent: {}: {args}", level.as_str()).into_bytes();
    line.truncate(ATOMIC_WRITE - 1);
    line.push(b'\n');
    // `write`, not `write_all`: a second call would be a second write(2)
    // that another process could come between. A short write to stderr
    // loses the tail of a log line, which is acceptable.
    out.write(&line).map(drop)
}

macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($arg)*)) };
}
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($arg)*)) };
}
macro_rules! warning {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($arg)*)) };
}
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($arg)*)) };
}
pub(crate) use {debug, error, info, warning};

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each `write` call separately.
    #[derive(Default)]
    struct Calls(Vec<Vec<u8>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_is_one_write_call() {
        let mut out = Calls::default();
        let pid = 108;
        write_line(
            &mut out,
            Level::Debug,
            format_args!("exec `{}` (pid {pid})", "sh"),
        )
        .unwrap();
        assert_eq!(
            out.0,
            [b"firehost-agent: debug: exec `sh` (pid 108)\n".to_vec()]
        );
    }

    #[test]
    fn a_long_line_is_cut_to_one_atomic_write() {
        let mut out = Calls::default();
        write_line(
            &mut out,
            Level::Info,
            format_args!("{}", "x".repeat(10_000)),
        )
        .unwrap();
        assert_eq!(out.0.len(), 1);
        assert_eq!(out.0[0].len(), 4096);
        assert_eq!(out.0[0].last(), Some(&b'\n'));
    }
}
