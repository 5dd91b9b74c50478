//! The gateway in a helper process of its own, for managers that do not
//! outlive their VMs (the CLI runs one per command): the helper serves
//! the resolver and the proxy, and each manager tells it, over a unix
//! socket in the state directory, which VMs to serve under which
//! policies. It exits when told to serve none.
//!
//! The conversation is one JSON line each way per connection: a
//! [`Request`], then a [`Response`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::Gateway;
use super::decide::HostRules;
use crate::net::firewall::{Firewall, FirewallConfig};
use crate::net::ipam::Subnet;
use crate::net::nft::Nftables;
use crate::vocab::{Cidr, DomainPattern, EgressPolicy, IfName};

/// The helper's socket, in the state directory.
pub(crate) const SOCKET: &str = "egress-gateway.sock";
/// The helper's stderr, in the state directory.
pub(crate) const LOG: &str = "egress-gateway.log";
/// How long a manager waits for a helper to start or to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A program that, run with its arguments and a socket path, serves as
/// the gateway helper: the `firehost-egress-gateway` binary, or the CLI
/// with `egress-gateway`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayProgram {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments, before the socket path.
    pub args: Vec<OsString>,
}

impl GatewayProgram {
    /// A program and its arguments.
    pub fn new(
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> GatewayProgram {
        GatewayProgram {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
        }
    }
}

/// Everything the helper needs to start the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RemoteConfig {
    pub gateway: Ipv4Addr,
    pub resolver_port: u16,
    pub proxy_port: u16,
    pub upstream: Vec<SocketAddrV4>,
    pub min_ttl_ms: u64,
    pub max_ttl_ms: u64,
    pub deny: Vec<Cidr>,
    pub doh_names: Vec<DomainPattern>,
    pub doh_addresses: Vec<Ipv4Addr>,
    pub subnet: String,
    pub bridge: IfName,
}

/// What a manager asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Request {
    /// Serve exactly these VMs (started with `config` if not running;
    /// exit after answering when there are none).
    Serve {
        config: Box<RemoteConfig>,
        vms: Vec<(Ipv4Addr, EgressPolicy)>,
    },
    /// How many names each VM was refused.
    Refused,
}

/// What the helper answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Response {
    Served,
    Refused(BTreeMap<Ipv4Addr, u64>),
    Failed(String),
}

/// Sends `request` to the helper at `socket` and returns its answer;
/// `None` when no helper listens there.
pub(crate) async fn ask(socket: &Path, request: &Request) -> Option<std::io::Result<Response>> {
    let stream = UnixStream::connect(socket).await.ok()?;
    Some(
        tokio::time::timeout(ANSWER_TIMEOUT, converse(stream, request))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the egress gateway helper did not answer",
                ))
            }),
    )
}

async fn converse(stream: UnixStream, request: &Request) -> std::io::Result<Response> {
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}

/// Starts the helper for the state directory `state_dir` and waits until
/// it listens on its socket.
pub(crate) async fn spawn(program: &GatewayProgram, state_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    let socket = state_dir.join(SOCKET);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(state_dir.join(LOG))?;
    let mut child = std::process::Command::new(&program.program)
        .args(&program.args)
        .arg(&socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        // Out of the terminal's foreground group: a Ctrl-C aimed at the
        // manager does not take the VMs' names away.
        .process_group(0)
        .spawn()?;
    let stdout = child.stdout.take();
    // The helper outlives this manager; while the manager lives, a thread
    // reaps it when it exits, so it never lingers as a zombie.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    // It says `listening` once its socket accepts connections.
    let ready = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut line = String::new();
        if let Some(stdout) = stdout {
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        }
        line
    });
    match tokio::time::timeout(ANSWER_TIMEOUT, ready).await {
        Ok(Ok(line)) if line.trim() == "listening" => Ok(()),
        Ok(Ok(_)) | Ok(Err(_)) => Err(std::io::Error::other(format!(
            "the egress gateway helper {} exited before listening (see {})",
            program.program.display(),
            state_dir.join(LOG).display()
        ))),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the egress gateway helper did not start listening",
        )),
    }
}

/// The helper's main: binds `socket`, says `listening` on stdout, and
/// serves the gateway as managers ask until one asks it to serve no VM.
///
/// # Cancel safety
///
/// Dropping it stops serving; the socket file stays until the next
/// helper replaces it.
pub async fn serve(socket: &Path) -> std::io::Result<()> {
    // A socket file left by a helper that died is in the way; one that a
    // live helper answers on is not ours to take.
    if UnixStream::connect(socket).await.is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another egress gateway helper serves {}", socket.display()),
        ));
    }
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    }
    println!("listening");
    let mut gateway: Option<Gateway> = None;
    loop {
        let (stream, _) = listener.accept().await?;
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        if BufReader::new(read).read_line(&mut line).await.is_err() {
            continue;
        }
        let (response, done) = match serde_json::from_str::<Request>(&line) {
            // A helper serving nothing has no reason to stay, whether it
            // was told so or could not start.
            Ok(Request::Serve { config, vms }) => match apply(&mut gateway, &config, vms).await {
                Ok(()) => (Response::Served, gateway.is_none()),
                Err(e) => (Response::Failed(e.to_string()), gateway.is_none()),
            },
            Ok(Request::Refused) => (
                Response::Refused(gateway.as_ref().map(Gateway::refused_all).unwrap_or_default()),
                false,
            ),
            Err(e) => (Response::Failed(format!("unreadable request: {e}")), false),
        };
        let mut answer = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
        answer.push(b'\n');
        let _ = write.write_all(&answer).await;
        if done {
            let _ = std::fs::remove_file(socket);
            return Ok(());
        }
    }
}

/// Serves exactly `vms`, starting the gateway first if needed; with none,
/// stops it.
async fn apply(
    gateway: &mut Option<Gateway>,
    config: &RemoteConfig,
    vms: Vec<(Ipv4Addr, EgressPolicy)>,
) -> std::io::Result<()> {
    if vms.is_empty() {
        if let Some(running) = gateway.take() {
            running.stop().await;
        }
        return Ok(());
    }
    if gateway.is_none() {
        *gateway = Some(start(config).await?);
    }
    if let Some(running) = gateway.as_ref() {
        running.serve_exactly(vms);
    }
    Ok(())
}

/// Starts the gateway that `config` describes, with its own nftables
/// handle (the helper runs in the manager's network namespace).
async fn start(config: &RemoteConfig) -> std::io::Result<Gateway> {
    let subnet: Subnet = config
        .subnet
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let nft = Nftables::open().map_err(std::io::Error::other)?;
    let firewall = Firewall::new(
        std::sync::Arc::new(nft),
        FirewallConfig {
            bridge: config.bridge.clone(),
            subnet,
            gateway: config.gateway,
            uplink: None,
            host_services: Vec::new(),
            egress_deny: config.deny.clone(),
            dns: Vec::new(),
            resolver_port: config.resolver_port,
            proxy_port: config.proxy_port,
            doh_addresses: config.doh_addresses.clone(),
        },
    );
    let domains = crate::net::config::DomainConfig {
        resolver_port: config.resolver_port,
        proxy_port: config.proxy_port,
        upstream: Some(config.upstream.clone()),
        min_ttl: Duration::from_millis(config.min_ttl_ms),
        max_ttl: Duration::from_millis(config.max_ttl_ms),
        doh_addresses: config.doh_addresses.clone(),
        doh_names: config.doh_names.clone(),
        program: None,
    };
    let host = HostRules {
        deny: config.deny.clone(),
        doh_names: config.doh_names.clone(),
        doh_addresses: config.doh_addresses.clone(),
        subnet,
    };
    Gateway::start(config.gateway, &domains, config.upstream.clone(), host, firewall).await
}
