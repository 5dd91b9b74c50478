//! A clone's own agent token.
//!
//! The guest's agent demands the token it booted with, which lives on in
//! the snapshot's memory: every clone of one template has the same. A
//! rekey gives a VM's agent a fresh one, so that a guest that learns its
//! own token (it is on its kernel command line) cannot use it on a
//! sibling's agent, which matters for agents that also listen on the
//! network. The record is the manager's memory of the token, so a rekey
//! is bracketed:
//!
//! 1. the new token is recorded as `next_token`, beside the current one;
//! 2. the agent is asked to demand it (`Rekey`, in a session the current
//!    token opens);
//! 3. the record's token becomes the new one.
//!
//! A crash between 1 and 3 leaves both in the record; the next use of the
//! agent ([`settle`]) asks it which it takes and keeps that one.

use std::time::Duration;

use super::{Vm, VmError, fault};
use crate::agent::{AgentClient, AgentError};
use crate::record::Durability;

/// How long the agent gets to answer a rekey, or to say which token it
/// takes after a crash.
pub const REKEY_WAIT: Duration = Duration::from_secs(2);

fn client(vm: &Vm, token: &firehost_proto::Token) -> Option<AgentClient> {
    let vsock = vm.record.vsock.as_ref()?;
    Some(AgentClient::new(
        &vsock.uds_path,
        firehost_proto::DEFAULT_PORT,
        token.clone(),
    ))
}

/// Gives the agent of `vm` a fresh token (see the [module docs](self)).
/// A VM without a vsock device has nothing to rekey.
pub(super) async fn rekey(vm: &mut Vm) -> Result<(), VmError> {
    let Some(current) = vm.record.vsock.as_ref().map(|v| v.token.clone()) else {
        return Ok(());
    };
    let id = vm.record.name.clone();
    let agent_err = |source: AgentError| VmError::Agent {
        id: id.clone(),
        source: Box::new(source),
    };
    let fresh = crate::agent::new_token().map_err(|e| agent_err(AgentError::Io(e)))?;
    set_next(vm, Some(fresh.clone())).await?;
    fault::point(&vm.record.id, "rekey:recorded");
    let Some(agent) = client(vm, &current) else {
        return Ok(());
    };
    match tokio::time::timeout(REKEY_WAIT, agent.rekey(&fresh)).await {
        Ok(Ok(())) => {}
        // Refused, or never reached: the agent kept the token it has.
        Ok(Err(e @ (AgentError::Refused { .. } | AgentError::Connect(_)))) => {
            set_next(vm, None).await?;
            return Err(agent_err(e));
        }
        // Cut off after the request went out: either token may be the
        // one; the next use settles it.
        Ok(Err(e)) => return Err(agent_err(e)),
        Err(_) => return Err(agent_err(AgentError::NotReady(REKEY_WAIT))),
    }
    fault::point(&vm.record.id, "rekey:agent");
    promote(vm).await
}

/// Records `next` as the token being asked for (or none).
async fn set_next(vm: &mut Vm, next: Option<firehost_proto::Token>) -> Result<(), VmError> {
    if let Some(vsock) = vm.record.vsock.as_mut() {
        vsock.next_token = next;
    }
    vm.persist(Durability::Synced).await
}

/// Makes the token being asked for the current one.
async fn promote(vm: &mut Vm) -> Result<(), VmError> {
    if let Some(vsock) = vm.record.vsock.as_mut()
        && let Some(next) = vsock.next_token.take()
    {
        vsock.token = next;
    }
    vm.persist(Durability::Synced).await
}

/// Settles a rekey a crash cut short: asks the agent whether it takes the
/// new token, and keeps the one it takes. An agent that does not answer
/// leaves both recorded, for the next use.
pub(super) async fn settle(vm: &mut Vm) {
    let Some(next) = vm.record.vsock.as_ref().and_then(|v| v.next_token.clone()) else {
        return;
    };
    let Some(agent) = client(vm, &next) else {
        return;
    };
    let outcome = match tokio::time::timeout(REKEY_WAIT, agent.health()).await {
        Ok(Ok(_)) => promote(vm).await,
        Ok(Err(AgentError::Refused {
            code: firehost_proto::ErrorCode::BadToken,
            ..
        })) => set_next(vm, None).await,
        _ => return,
    };
    if let Err(e) = outcome {
        tracing::warn!(vm = %vm.record.name, error = %e, "cannot record which token the agent takes");
    }
}
