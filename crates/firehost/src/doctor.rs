//! Host checks: can this machine run Firecracker VMs, and if not, what to fix.
