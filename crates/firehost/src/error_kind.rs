//! The class of a failure, for callers that map errors to exit codes,
//! HTTP statuses or retry decisions without matching every variant of
//! every error type (which change as features land).
//!
//! ```
//! use firehost::{ErrorKind, VmError, VmId};
//!
//! let err = VmError::NotFound { id: VmId::new("job-1").unwrap() };
//! let status = match err.kind() {
//!     ErrorKind::NotFound => 404,
//!     ErrorKind::Conflict => 409,
//!     ErrorKind::InvalidInput => 400,
//!     ErrorKind::HostNotReady => 503,
//!     _ => 500,
//! };
//! assert_eq!(status, 404);
//! ```

/// What kind of failure an error is. Every error type of the library that
/// a caller meets has a `kind()` returning one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The VM or snapshot named does not exist.
    NotFound,
    /// The request conflicts with the current state: a name or resource
    /// is taken, the VM's state refuses the operation, something is in
    /// use. The same request may succeed later.
    Conflict,
    /// The request itself is invalid (a spec, name, value or path that can
    /// never work); repeating it fails the same way.
    InvalidInput,
    /// The host lacks something the request needs (a binary, a tool, a
    /// configuration, a file, a kernel feature); an operator can fix it.
    HostNotReady,
    /// The operation was tried and failed (the VMM, the kernel or I/O).
    Failed,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::HostNotReady => "host not ready",
            ErrorKind::Failed => "failed",
        })
    }
}
