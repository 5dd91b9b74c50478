//! Powering the guest off or rebooting it.
//!
//! `reboot(2)` does not sync, and in a Firecracker guest it ends the VM at
//! once, so everything written must reach the disks first: [`power_off`]
//! syncs, then asks the kernel. Firecracker exits on a guest reboot; a
//! power-off halts the guest where no ACPI power button exists, so a host
//! that wants the VMM gone should ask for `reboot`.

use std::io;

use rustix::system::RebootCommand;

/// Syncs every filesystem, then powers off (`RB_POWER_OFF`) or reboots
/// (`RB_AUTOBOOT`). Returns only on failure (no `CAP_SYS_BOOT`, say).
///
/// Blocking: call it from a blocking thread or outside the runtime.
pub fn power_off(reboot: bool) -> io::Error {
    rustix::fs::sync();
    let command = if reboot {
        RebootCommand::Restart
    } else {
        RebootCommand::PowerOff
    };
    match rustix::system::reboot(command) {
        // The kernel does not come back from a successful reboot; should it
        // anyway, say so rather than pretend.
        Ok(()) => io::Error::other("reboot(2) returned"),
        Err(e) => e.into(),
    }
}
