//! fake-firecracker: a test VMM.
