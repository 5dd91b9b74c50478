//! Crash points: where the fault-injection tests stop an operation as if
//! the process died there.
//!
//! [`point`] marks a step of an operation that a crash could cut short.
//! In a normal build it does nothing. With the `test-internals` feature, a
//! test can [`crash_at`] a step of one VM's operation: the operation then
//! panics at that point, skipping every later step and every cleanup of
//! its own, which is what a killed process leaves; the test drops the
//! manager and opens a new one on the state directory to see what
//! recovery makes of it.

use crate::VmId;

#[cfg(feature = "test-internals")]
static CRASH_AT: std::sync::Mutex<Vec<(VmId, &'static str)>> = std::sync::Mutex::new(Vec::new());

/// Makes the next time the operation on the VM whose key is `key` reaches
/// the point `step` panic there, once.
#[cfg(feature = "test-internals")]
pub fn crash_at(key: &VmId, step: &'static str) {
    CRASH_AT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push((key.clone(), step));
}

/// The point `step` of an operation on the VM whose key is `key`.
#[cfg(feature = "test-internals")]
pub(super) fn point(key: &VmId, step: &'static str) {
    let mut armed = CRASH_AT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(at) = armed.iter().position(|(k, s)| k == key && *s == step) {
        armed.remove(at);
        drop(armed);
        panic!("injected crash of VM {key}'s operation at {step}");
    }
}

/// The point `step` of an operation on the VM whose key is `key`.
#[cfg(not(feature = "test-internals"))]
#[inline(always)]
pub(super) fn point(_key: &VmId, _step: &'static str) {}
