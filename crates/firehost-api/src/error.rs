//! The body Firecracker returns with every failed request.

use serde::{Deserialize, Serialize};

/// The JSON body of a non-2xx response: `{"fault_message": "..."}`.
///
/// This is a response body, not a Rust error type; the client wraps it,
/// together with the HTTP status, in its own typed error.
///
/// # Examples
///
/// ```
/// use firehost_api::Error;
///
/// let body: Error =
///     serde_json::from_str(r#"{"fault_message":"Invalid request method."}"#).unwrap();
/// assert_eq!(body.fault_message.as_deref(), Some("Invalid request method."));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    /// Firecracker's description of what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_message: Option<String>,
}
