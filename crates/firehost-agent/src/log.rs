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
    // One `writeln!` on the locked handle keeps concurrent lines whole.
    let _ = writeln!(
        std::io::stderr().lock(),
        "firehost-agent: {}: {args}",
        level.as_str()
    );
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
