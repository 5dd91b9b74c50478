//! Firecracker's HTTP API: the serde models ([`models`], every body of the
//! v1.16 spec) and a typed async client ([`ApiClient`]) over the API unix
//! socket.
//!
//! The models live in their own crate, `firehost-api`, so that
//! fake-firecracker can share them without depending on the whole library;
//! they are re-exported here as [`models`].

mod client;
mod error;
mod transport;

pub use client::ApiClient;
pub use error::ApiError;
pub use transport::{DEFAULT_REQUEST_TIMEOUT, RawResponse};

/// Every request and response body of Firecracker's API (re-exported from
/// the `firehost-api` crate).
pub mod models {
    pub use firehost_api::*;
}
