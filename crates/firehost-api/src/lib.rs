//! Serde models of Firecracker's v1.16 HTTP API.
