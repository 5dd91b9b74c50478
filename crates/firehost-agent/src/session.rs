//! One session: the handshake, one request, its answer.
//!
//! The steps, as [`firehost_proto`] defines them:
//!
//! 1. The host sends `Hello`. A version other than
//!    [`PROTOCOL_VERSION`] is answered with `VersionMismatch`, a token the
//!    [policy](crate::TokenPolicy) refuses with `BadToken`; either way the
//!    session ends. Otherwise the agent answers `Welcome`.
//! 2. The host sends one request; [`handle`] dispatches it.
//! 3. A failed request is answered with an `Error` (unless the connection
//!    itself is gone), and the session ends.
//!
//! Hello and the request must both arrive within [`REQUEST_TIMEOUT`], so
//! that a client that connects and says nothing does not hold a task
//! forever. After that, a request takes as long as it takes (an exec has
//! its own `timeout_ms`).

use std::sync::Arc;
use std::time::Duration;

use firehost_proto::{
    AgentMessage, ClientMessage, FrameKind, MAX_PAYLOAD, PROTOCOL_VERSION, read_frame, receive,
    write_frame,
};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter, ReadHalf, WriteHalf};

use crate::error::RequestError;
use crate::listen::Connection;
use crate::log::{debug, error, info, warning};
use crate::server::Agent;
use crate::{exec, files, power};

/// How long a new connection has to send `Hello` and its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// After answering `Shutdown`, how long the agent waits for the host to
/// close the session (proof that the answer arrived) before it goes down
/// anyway.
pub const SHUTDOWN_ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// The reading side of a session.
pub type Reader = BufReader<ReadHalf<Box<dyn Connection>>>;

/// The writing side of a session. Buffered so that a frame's header and
/// payload leave in one write; every helper here flushes.
pub type Writer = BufWriter<WriteHalf<Box<dyn Connection>>>;

/// Sends one control message and flushes. A message too large for a frame
/// is refused here rather than by the framing code's assertion.
pub async fn send(w: &mut Writer, message: &AgentMessage) -> Result<(), RequestError> {
    let json = serde_json::to_vec(message).map_err(firehost_proto::FrameError::from)?;
    if json.len() > MAX_PAYLOAD {
        return Err(match message {
            AgentMessage::Entries { entries } => RequestError::TooManyEntries {
                path: String::new(),
                entries: entries.len(),
            },
            _ => RequestError::bad_request("the answer does not fit in one frame"),
        });
    }
    write_frame(w, FrameKind::Control, &json).await?;
    w.flush().await.map_err(firehost_proto::FrameError::from)?;
    Ok(())
}

/// Sends one data frame and flushes.
pub async fn send_frame(w: &mut Writer, kind: FrameKind, data: &[u8]) -> Result<(), RequestError> {
    write_frame(w, kind, data).await?;
    w.flush().await.map_err(firehost_proto::FrameError::from)?;
    Ok(())
}

/// Refuses a token a rekey must not set: too short to guess at, too long,
/// or with characters that do not survive a kernel command line.
fn check_token(token: &firehost_proto::Token) -> Result<(), RequestError> {
    let len = token.0.len();
    if !(16..=firehost_proto::MAX_TOKEN_LEN).contains(&len) {
        return Err(RequestError::bad_request(format!(
            "a token is 16 to {} characters, not {len}",
            firehost_proto::MAX_TOKEN_LEN
        )));
    }
    if !token.0.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RequestError::bad_request("a token is printable ASCII"));
    }
    Ok(())
}

/// Runs one session on `conn` to its end; `peer` names the other side in
/// log lines.
pub async fn run(agent: Arc<Agent>, conn: Box<dyn Connection>, peer: String) {
    let (r, w) = tokio::io::split(conn);
    let mut r: Reader = BufReader::new(r);
    let mut w: Writer = BufWriter::with_capacity(firehost_proto::CHUNK + 1024, w);
    let opened = tokio::time::timeout(REQUEST_TIMEOUT, open(&agent, &peer, &mut r, &mut w)).await;
    let result = match opened {
        Err(_elapsed) => {
            debug!("{peer}: no request within {REQUEST_TIMEOUT:?}, closing");
            Ok(())
        }
        Ok(Ok(None)) => Ok(()),
        Ok(Ok(Some(request))) => {
            debug!("{peer}: {}", describe(&request));
            handle(&agent, request, r, &mut w).await
        }
        Ok(Err(e)) => Err(e),
    };
    if let Err(e) = result {
        if e.is_disconnect() {
            debug!("{peer}: {}", e.wire_message());
        } else {
            debug!("{peer}: request failed: {}", e.wire_message());
            let answer = AgentMessage::Error {
                code: e.code(),
                message: e.wire_message(),
            };
            let _ = send(&mut w, &answer).await;
        }
    }
    let _ = w.shutdown().await;
}

/// The handshake, then the request; `None` when the host closed first.
async fn open(
    agent: &Agent,
    peer: &str,
    r: &mut Reader,
    w: &mut Writer,
) -> Result<Option<ClientMessage>, RequestError> {
    let Some(hello) = receive::<_, ClientMessage>(r).await? else {
        return Ok(None);
    };
    let ClientMessage::Hello { version, token } = hello else {
        return Err(RequestError::bad_request("a session must open with hello"));
    };
    if version != PROTOCOL_VERSION {
        warning!("{peer}: refused: protocol version {version}");
        return Err(RequestError::VersionMismatch { theirs: version });
    }
    if !agent.token().accepts(&token) {
        warning!("{peer}: refused: bad token");
        return Err(RequestError::BadToken);
    }
    send(
        w,
        &AgentMessage::Welcome {
            version: PROTOCOL_VERSION,
            agent_version: crate::server::AGENT_VERSION.to_owned(),
        },
    )
    .await?;
    Ok(receive::<_, ClientMessage>(r).await?)
}

/// What a request is, for the log (no values: they may be secrets).
fn describe(request: &ClientMessage) -> String {
    match request {
        ClientMessage::Exec(req) => format!(
            "exec `{}`{}",
            req.argv.first().map_or("", String::as_str),
            if req.tty { " on a tty" } else { "" }
        ),
        ClientMessage::WriteFile(req) => format!("write {}", req.path),
        ClientMessage::ReadFile { path } => format!("read {path}"),
        ClientMessage::Stat { path } => format!("stat {path}"),
        ClientMessage::List { path } => format!("list {path}"),
        ClientMessage::SetEnv { vars } => format!("set {} environment variables", vars.len()),
        ClientMessage::Health => "health".to_owned(),
        ClientMessage::Reseed { .. } => "reseed the CRNG".to_owned(),
        ClientMessage::Rekey { .. } => "replace the token".to_owned(),
        ClientMessage::Shutdown { reboot } => {
            format!(
                "shutdown ({})",
                if *reboot { "reboot" } else { "power off" }
            )
        }
        ClientMessage::Hello { .. } => "hello".to_owned(),
        ClientMessage::Signal { .. } => "signal".to_owned(),
        ClientMessage::Resize { .. } => "resize".to_owned(),
    }
}

/// Serves one request.
///
/// # Cancel safety
///
/// Dropping the future ends the request early with its cleanup: an exec's
/// processes are killed, a partly written file is removed.
pub async fn handle(
    agent: &Agent,
    request: ClientMessage,
    mut r: Reader,
    w: &mut Writer,
) -> Result<(), RequestError> {
    match request {
        ClientMessage::Exec(req) => exec::run(agent, req, r, w).await,
        ClientMessage::WriteFile(req) => files::write(req, &mut r, w).await,
        ClientMessage::ReadFile { path } => files::read(&path, w).await,
        ClientMessage::Stat { path } => {
            let stat = files::stat(&path).await?;
            send(w, &AgentMessage::FileInfo(stat)).await
        }
        ClientMessage::List { path } => {
            let entries = files::list(&path).await?;
            send(w, &AgentMessage::Entries { entries })
                .await
                .map_err(|e| match e {
                    RequestError::TooManyEntries { entries, .. } => {
                        RequestError::TooManyEntries { path, entries }
                    }
                    other => other,
                })
        }
        ClientMessage::Rekey { token } => {
            check_token(&token)?;
            agent.set_token(token);
            info!("the token was replaced; later sessions must present the new one");
            send(w, &AgentMessage::Done).await
        }
        ClientMessage::Reseed { entropy } => {
            crate::entropy::reseed(&entropy.0)?;
            send(w, &AgentMessage::Done).await
        }
        ClientMessage::SetEnv { vars } => {
            exec::validate_env(&vars)?;
            agent.set_env(vars);
            send(w, &AgentMessage::Done).await
        }
        ClientMessage::Health => {
            let uptime_ms = u64::try_from(agent.uptime().as_millis()).unwrap_or(u64::MAX);
            send(
                w,
                &AgentMessage::Health {
                    ready: true,
                    uptime_ms,
                    agent_version: crate::server::AGENT_VERSION.to_owned(),
                },
            )
            .await
        }
        ClientMessage::Shutdown { reboot } => shutdown(agent, reboot, r, w).await,
        ClientMessage::Hello { .. }
        | ClientMessage::Signal { .. }
        | ClientMessage::Resize { .. } => Err(RequestError::bad_request(format!(
            "{} is not a request",
            describe(&request)
        ))),
    }
}

/// Serves `Shutdown`: `Done`, then sync and power off or reboot.
async fn shutdown(
    agent: &Agent,
    reboot: bool,
    mut r: Reader,
    w: &mut Writer,
) -> Result<(), RequestError> {
    if !agent.allow_shutdown() {
        return Err(RequestError::ShutdownNotAllowed);
    }
    send(w, &AgentMessage::Done).await?;
    // The guest stops dead on reboot(2): give the answer its way out first,
    // by waiting for the host to close the session (bounded).
    let _ = tokio::time::timeout(SHUTDOWN_ACK_TIMEOUT, async {
        while let Ok(Some(_)) = read_frame(&mut r).await {}
    })
    .await;
    info!(
        "shutdown requested: syncing and {}",
        if reboot { "rebooting" } else { "powering off" }
    );
    match tokio::task::spawn_blocking(move || power::power_off(reboot)).await {
        Ok(e) => error!("cannot shut down: {e}"),
        Err(e) => error!("cannot shut down: {e}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use firehost_proto::Token;

    #[test]
    fn a_rekey_sets_only_tokens_that_are_long_and_printable() {
        assert!(check_token(&Token("0123456789abcdef".into())).is_ok());
        assert!(check_token(&Token("x".repeat(firehost_proto::MAX_TOKEN_LEN))).is_ok());
        for bad in [
            String::new(),
            "short".into(),
            "x".repeat(firehost_proto::MAX_TOKEN_LEN + 1),
            "with a space in it".into(),
            "0123456789abcdef\n".into(),
        ] {
            assert!(
                matches!(
                    check_token(&Token(bad.clone())),
                    Err(RequestError::BadRequest { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
