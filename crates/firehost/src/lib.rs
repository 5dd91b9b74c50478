//! firehost: run Firecracker microVMs from a tokio service.
