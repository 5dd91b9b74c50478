//! The API client's error type.

use std::path::PathBuf;
use std::time::Duration;

/// A failed Firecracker API request.
///
/// Every variant names the request (`method`, `path`) so a log line or a
/// CLI message says which call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The API socket refused the connection.
    #[error("cannot connect to the API socket {socket:?}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange broke (connection reset, malformed response…).
    #[error("{method} {path}: HTTP exchange failed")]
    Transport {
        /// The request method.
        method: http::Method,
        /// The request path.
        path: String,
        /// The cause.
        #[source]
        source: hyper::Error,
    },
    /// The VMM closed the connection before answering (it exited, or
    /// crashed while handling the request).
    #[error("{method} {path}: the VMM closed the connection before answering")]
    Closed {
        /// The request method.
        method: http::Method,
        /// The request path.
        path: String,
    },
    /// Firecracker answered with an error status.
    #[error("{method} {path}: Firecracker answered {status}: {fault_message}")]
    Fault {
        /// The request method.
        method: http::Method,
        /// The request path.
        path: String,
        /// The HTTP status.
        status: http::StatusCode,
        /// Firecracker's `fault_message`, or the raw body if it sent none.
        fault_message: String,
    },
    /// A success response whose body could not be decoded.
    #[error("{method} {path}: cannot decode the response body")]
    Decode {
        /// The request method.
        method: http::Method,
        /// The request path.
        path: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A request body could not be encoded (a map with non-string keys…).
    #[error("{method} {path}: cannot encode the request body")]
    Encode {
        /// The request method.
        method: http::Method,
        /// The request path.
        path: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// No answer within the client's request timeout.
    #[error("{method} {path}: no answer within {after:?}")]
    Timeout {
        /// The request method.
        method: http::Method,
        /// The request path.
        path: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// A path parameter (drive id, interface id…) that would change the URL.
    #[error("{what} {value:?} is not a valid path segment")]
    BadPathSegment {
        /// What the segment names.
        what: &'static str,
        /// The refused value.
        value: String,
    },
}

impl ApiError {
    /// Firecracker's status and fault message, when it answered with one.
    pub fn fault(&self) -> Option<(http::StatusCode, &str)> {
        match self {
            ApiError::Fault {
                status,
                fault_message,
                ..
            } => Some((*status, fault_message)),
            _ => None,
        }
    }
}
