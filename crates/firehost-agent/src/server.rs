//! The accept loops and what every session shares.
//!
//! [`serve`] binds every address first (so a bad one fails the start, not
//! a later session), logs one `ready` line, then accepts on each listener
//! in its own task and runs every connection as its own session task: a
//! slow exec never holds up a health check. It returns on `SIGTERM` or
//! `SIGINT` (which PID 1 forwards, and which the guest's Ctrl-Alt-Del
//! becomes when the agent is PID 1).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use firehost_proto::Secret;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

use crate::config::{Config, ListenAddr, TokenPolicy};
use crate::listen::Listener;
use crate::log::{error, info, warning};
use crate::session;

/// The agent's build version, as `Welcome` and `Health` report it.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long an accept loop pauses after a failed `accept` (out of
/// descriptors, say), so that it does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What all sessions share.
#[derive(Debug)]
pub struct Agent {
    // A std lock: read for each hello, written by a rekey; never held
    // across I/O.
    token: std::sync::RwLock<TokenPolicy>,
    // A std mutex: held only to copy or extend the map, never across I/O.
    env: Mutex<BTreeMap<String, Secret>>,
    started: Instant,
    allow_shutdown: bool,
}

impl Agent {
    /// An agent that started now.
    pub fn new(token: TokenPolicy, allow_shutdown: bool) -> Agent {
        Agent {
            token: std::sync::RwLock::new(token),
            env: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
            allow_shutdown,
        }
    }

    /// Which tokens open a session.
    pub fn token(&self) -> TokenPolicy {
        self.token
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Demands `token` from the next session on.
    pub fn set_token(&self, token: firehost_proto::Token) {
        *self
            .token
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = TokenPolicy::Required(token);
    }

    /// Adds `vars` to the environment of later execs (replacing values of
    /// the same names).
    pub fn set_env(&self, vars: BTreeMap<String, Secret>) {
        // A poisoned map is still a consistent map: inserts do not panic
        // halfway.
        let mut env = self.env.lock().unwrap_or_else(PoisonError::into_inner);
        env.extend(vars);
    }

    /// The variables set so far.
    pub fn env(&self) -> BTreeMap<String, Secret> {
        self.env
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Time since the agent started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether `Shutdown` is allowed.
    pub fn allow_shutdown(&self) -> bool {
        self.allow_shutdown
    }
}

/// Why the agent could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// No address to listen on.
    #[error("no address to listen on")]
    NoAddress,
    /// An address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: ListenAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The termination signals could not be watched.
    #[error("cannot watch for SIGTERM and SIGINT")]
    Signals(#[source] io::Error),
}

/// Serves `config` until `SIGTERM` or `SIGINT`.
///
/// Must run inside a multi-threaded tokio runtime (sessions use blocking
/// threads for file work).
///
/// # Cancel safety
///
/// Dropping the future stops the accept loops; sessions already running go
/// on until the runtime shuts down.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    if config.listen.is_empty() {
        return Err(ServeError::NoAddress);
    }
    let mut terminate = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let mut listeners = Vec::with_capacity(config.listen.len());
    for addr in &config.listen {
        let listener = Listener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: addr.clone(),
                source,
            })?;
        listeners.push(Arc::new(listener));
    }
    if matches!(config.token, TokenPolicy::AnyToken) {
        warning!("*****************************************************************");
        warning!("INSECURE: no token configured and --insecure-no-token given:");
        warning!("every client that can connect may run anything in this guest");
        warning!("*****************************************************************");
    }
    let agent = Arc::new(Agent::new(config.token, config.allow_shutdown));
    let mut loops = JoinSet::new();
    for listener in &listeners {
        loops.spawn(accept_loop(Arc::clone(listener), Arc::clone(&agent)));
    }
    let addresses: Vec<String> = listeners.iter().map(|l| l.describe()).collect();
    info!(
        "ready: version {AGENT_VERSION}, pid {}, listening on {}",
        std::process::id(),
        addresses.join(", ")
    );
    let name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    info!("{name}: stopping");
    loops.abort_all();
    for listener in &listeners {
        listener.cleanup();
    }
    Ok(())
}

/// Accepts connections on `listener` forever, one session task each.
async fn accept_loop(listener: Arc<Listener>, agent: Arc<Agent>) {
    loop {
        match listener.accept().await {
            Ok((conn, peer)) => {
                tokio::spawn(session::run(Arc::clone(&agent), conn, peer));
            }
            Err(e) => {
                error!("accept on {} failed: {e}", listener.describe());
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}
