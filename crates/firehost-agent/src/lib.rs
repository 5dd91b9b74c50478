//! `firehost-agent`: the guest side of the firehost protocol.
//!
//! A Firecracker guest has no SSH and no network we can rely on; what it
//! has is a vsock device. The agent listens there (port
//! [`firehost_proto::DEFAULT_PORT`]) and, for a host that proves it knows
//! the VM's token, runs processes, moves files, keeps environment variables
//! for later processes, answers health checks and powers the guest off.
//! The wire protocol (framing, handshake, messages) lives in
//! [`firehost_proto`]; this crate is the server.
//!
//! # Command line
//!
//! ```text
//! firehost-agent [--listen ADDR]... [--token-file PATH] [--insecure-no-token]
//!                [--init PATH] [--allow-shutdown] [--verbose]
//! ```
//!
//! `ADDR` is `vsock:PORT` (the default is `vsock:10000`), `unix:PATH` or
//! `tcp:IP:PORT` with a loopback IP (see [`ListenAddr`]). The token comes
//! from `--token-file`, else from `firehost.token=` on `/proc/cmdline`;
//! without either the agent refuses to start unless `--insecure-no-token`
//! says every token is good (see [`TokenPolicy`]).
//!
//! # Two ways to run
//!
//! - **As a service** under the guest's own init: the agent serves, and
//!   `Shutdown` is refused unless `--allow-shutdown` is given.
//! - **As PID 1** (`init=/sbin/firehost-agent` on the kernel command line):
//!   [`pid1`] mounts the pseudo filesystems, writes `/etc/resolv.conf` from
//!   the kernel's IP autoconfiguration, brings up `lo`, then forks. The child
//!   serves; PID 1 only reaps orphans, forwards `SIGTERM`/`SIGINT`, and
//!   powers the VM off when the server exits. `--init PATH` starts another
//!   init (say, a service manager) beside the server.
//!
//! # The map
//!
//! A connection flows through these modules in order:
//!
//! 1. [`listen`] (and [`vsock`]): the listening sockets; each accepted
//!    connection becomes one session task.
//! 2. [`server`]: what all sessions share ([`server::Agent`]: the token
//!    policy, the `SetEnv` variables, the start time) and the accept loops.
//! 3. [`session`]: the handshake, then one request, dispatched to
//! 4. [`exec`] (with [`pty`] for terminals) or [`files`], or answered in
//!    place (`SetEnv`, `Health`, `Shutdown` via [`power`]).
//!
//! A failed request becomes an [`firehost_proto::AgentMessage::Error`] whose
//! code comes from [`RequestError::code`].
//!
//! # A static binary
//!
//! The agent is copied into root filesystems that may have no (or another)
//! C library, so build it static:
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" \
//!     cargo build --release -p firehost-agent --target x86_64-unknown-linux-gnu
//! ```
//!
//! The binary lands in
//! `target/x86_64-unknown-linux-gnu/release/firehost-agent`. Naming the
//! target keeps the flag away from build scripts and proc macros, which
//! must stay dynamic. The agent uses no NSS (user or host lookups), so the
//! usual static-glibc caveats do not apply.
//!
//! # Logging
//!
//! The agent logs one line per event to stderr, which is the serial console
//! when it runs as PID 1. The serial console is slow, so sessions are only
//! logged with `--verbose`. Tokens and environment values are never logged,
//! nor the arguments of a process (they may hold secrets): only its program.

pub mod config;
pub mod entropy;
pub mod error;
pub mod exec;
mod fd;
pub mod files;
pub mod listen;
pub mod log;
pub mod pid1;
pub mod power;
pub mod pty;
pub mod server;
pub mod session;
pub mod vsock;

pub use config::{Config, ListenAddr, TokenPolicy};
pub use error::RequestError;
pub use server::{ServeError, serve};
