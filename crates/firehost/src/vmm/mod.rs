//! One Firecracker process: how it is started ([`spawn`]), how we learn that
//! its API is up ([`ready`]) and how it is watched, signalled and reaped
//! ([`process`]); [`keeper`] keeps what it writes for its guest in bounded
//! files.
//!
//! The process is identified by a pidfd from the moment it exists, so a
//! signal can never reach a recycled pid, and its exit is an event (the
//! pidfd turns readable), never a guess.

pub mod keeper;
pub mod process;
pub mod ready;
pub mod spawn;

pub use process::{ProcessError, VmmProcess, find_by_api_socket, find_under};
pub use ready::ReadyError;
pub use spawn::{ConsoleMode, LogLevel, SeccompPolicy, SpawnError, VmmCommand};
