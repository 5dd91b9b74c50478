//! The VM lifecycle state machine, shared by every [`VmProvider`](crate::VmProvider)
//! so that the Firecracker-backed manager and the in-memory adapter accept
//! and refuse exactly the same transitions.
//!
//! ```text
//!   create ──► Created ──start──► Running ◄──resume── Paused
//!                 │                  │  └───pause───►   │
//!                 │                  │                  │
//!                 └──────stop────────┴───────stop───────┴──► Stopped
//!   (the VMM exits on its own) ─────────────────────────────► Failed
//!   destroy: from Created, Stopped or Failed (a live VM is stopped first)
//! ```

use serde::{Deserialize, Serialize};

/// How a VMM process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// It ended while no manager that spawned it was watching (re-attached
    /// VMs are not our children, so their status can't be collected).
    Unknown,
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Code(c) => write!(f, "exit code {c}"),
            ExitReason::Signal(s) => write!(f, "signal {s}"),
            ExitReason::Unknown => f.write_str("unknown exit status"),
        }
    }
}

/// Where a VM is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum VmState {
    /// The VMM runs and is configured; the guest has not started.
    Created,
    /// The guest runs.
    Running,
    /// The guest's vCPUs are paused.
    Paused,
    /// Stopped on request; the VMM is gone.
    Stopped {
        /// How the VMM ended.
        exit: ExitReason,
    },
    /// The VMM ended without being asked to.
    Failed {
        /// How the VMM ended.
        exit: ExitReason,
        /// The last lines of the console and the VMM's stderr at that time.
        console_tail: Vec<String>,
    },
}

impl VmState {
    /// The state's name, as `--json` and error messages spell it.
    pub fn name(&self) -> &'static str {
        match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopped { .. } => "stopped",
            VmState::Failed { .. } => "failed",
        }
    }

    /// True while a VMM process exists for the VM.
    pub fn is_live(&self) -> bool {
        matches!(self, VmState::Created | VmState::Running | VmState::Paused)
    }

    /// Checks that `op` may run in this state.
    ///
    /// # Examples
    ///
    /// ```
    /// use firehost::{Operation, VmState};
    ///
    /// assert!(VmState::Created.check(Operation::Start).is_ok());
    /// assert!(VmState::Created.check(Operation::Snapshot).is_err());
    /// ```
    pub fn check(&self, op: Operation) -> Result<(), TransitionError> {
        use Operation::*;
        let allowed = match self {
            VmState::Created => matches!(op, Start | Stop),
            VmState::Running => matches!(op, Pause | Stop | Snapshot | Update),
            VmState::Paused => matches!(op, Resume | Stop | Snapshot | Update),
            VmState::Stopped { .. } | VmState::Failed { .. } => matches!(op, Destroy),
        };
        // A created VM can be destroyed directly: no guest has run in it.
        if allowed || (op == Destroy && *self == VmState::Created) {
            Ok(())
        } else {
            Err(TransitionError {
                op,
                state: self.name(),
            })
        }
    }
}

/// An operation that changes a VM's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Boot the guest (`InstanceStart`).
    Start,
    /// Pause the vCPUs.
    Pause,
    /// Resume the vCPUs.
    Resume,
    /// End the VMM.
    Stop,
    /// Take a snapshot.
    Snapshot,
    /// Remove the VM and everything it owns on the host.
    Destroy,
    /// Change a started VM's devices (limits, balloon, drive files).
    Update,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Operation::Start => "start",
            Operation::Pause => "pause",
            Operation::Resume => "resume",
            Operation::Stop => "stop",
            Operation::Snapshot => "snapshot",
            Operation::Destroy => "destroy",
            Operation::Update => "update",
        })
    }
}

/// `op` is not allowed in `state`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {op} a VM that is {state}")]
pub struct TransitionError {
    /// The refused operation.
    pub op: Operation,
    /// The state's name.
    pub state: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use Operation::*;

    fn all_states() -> Vec<VmState> {
        vec![
            VmState::Created,
            VmState::Running,
            VmState::Paused,
            VmState::Stopped {
                exit: ExitReason::Code(0),
            },
            VmState::Failed {
                exit: ExitReason::Signal(9),
                console_tail: vec![],
            },
        ]
    }

    #[test]
    fn transition_table_matches_the_documented_diagram() {
        let table: &[(&str, &[Operation])] = &[
            ("created", &[Start, Stop, Destroy]),
            ("running", &[Pause, Stop, Snapshot]),
            ("paused", &[Resume, Stop, Snapshot]),
            ("stopped", &[Destroy]),
            ("failed", &[Destroy]),
        ];
        for state in all_states() {
            let (_, allowed) = table.iter().find(|(n, _)| *n == state.name()).unwrap();
            for op in [Start, Pause, Resume, Stop, Snapshot, Destroy] {
                assert_eq!(
                    state.check(op).is_ok(),
                    allowed.contains(&op),
                    "{op} in {}",
                    state.name()
                );
            }
        }
    }

    #[test]
    fn refused_transition_names_operation_and_state() {
        let err = VmState::Created.check(Snapshot).unwrap_err();
        assert_eq!(err.to_string(), "cannot snapshot a VM that is created");
    }

    #[test]
    fn state_serialises_with_a_tag() {
        let json = serde_json::to_value(VmState::Stopped {
            exit: ExitReason::Code(0),
        })
        .unwrap();
        assert_eq!(json["state"], "stopped");
        assert_eq!(json["exit"]["code"], 0);
    }
}
