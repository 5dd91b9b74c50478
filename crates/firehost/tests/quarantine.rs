//! A VM whose record cannot be read is quarantined, never reaped: its VMM
//! runs on, its files stay, it is listed apart, every operation refuses it,
//! and only an explicit removal stops and removes it.

#[macro_use]
mod common;

use common::{TestHost, id, process_alive};
use firehost::manager::{Recovery, UnreadableReason};
use firehost::record::{RECORD_FILE, RECORD_FORMAT};
use firehost::{Manager, StopOptions, VmError, VmState};

/// A way a record goes bad: its name, how to apply it to the record's
/// text, and the reason it must be reported with.
type Damage = (
    &'static str,
    fn(&str) -> String,
    fn(&UnreadableReason) -> bool,
);

/// The record `json` with its format number changed to `format`.
fn with_format(json: &str, format: u32) -> String {
    let mut record: serde_json::Value = serde_json::from_str(json).unwrap();
    record["format"] = format.into();
    serde_json::to_string_pretty(&record).unwrap()
}

/// Ways a record goes bad.
fn damages() -> Vec<Damage> {
    vec![
        (
            "truncated",
            |json| json[..json.len() / 2].to_owned(),
            |r| matches!(r, UnreadableReason::Malformed { .. }),
        ),
        (
            "from a newer firehost",
            |json| with_format(json, 99),
            |r| matches!(r, UnreadableReason::NewerFormat { found: 99, .. }),
        ),
        (
            "edited into another VM's",
            |json| json.replacen("\"id\": \"victim\"", "\"id\": \"other\"", 1),
            |r| matches!(r, UnreadableReason::Malformed { detail } if detail.contains("other")),
        ),
        (
            "not JSON",
            |_| "\u{0}\u{1}garbage".to_owned(),
            |r| matches!(r, UnreadableReason::Malformed { .. }),
        ),
    ]
}

#[tokio::test]
async fn an_unreadable_record_leaves_its_running_vm_alone_in_every_recovery_mode() {
    for (damage, corrupt, expected) in damages() {
        for recovery in [Recovery::Full, Recovery::Lazy, Recovery::ReadOnly] {
            let host = TestHost::new();
            let vm = id("victim");
            let info = {
                let manager = host.manager().await;
                manager.run(&vm, host.spec()).await.unwrap()
            };
            let pid = info.pid.unwrap();
            let console = info.dir.join("console.log");
            std::fs::write(&console, b"the guest's last words\n").unwrap();
            let record = info.dir.join(RECORD_FILE);
            let text = std::fs::read_to_string(&record).unwrap();
            let damaged = corrupt(&text);
            std::fs::write(&record, &damaged).unwrap();

            let mut config = host.config();
            config.recovery = recovery;
            let manager = Manager::open(config).await.unwrap();
            let case = format!("{damage}, {recovery:?}");
            assert!(
                manager.list().await.is_empty(),
                "{case}: not listed as a VM"
            );
            let quarantined = manager.unreadable().await;
            assert_eq!(quarantined.len(), 1, "{case}");
            assert_eq!(quarantined[0].id, vm, "{case}");
            assert!(
                expected(&quarantined[0].reason),
                "{case}: {:?}",
                quarantined[0].reason
            );
            assert_eq!(quarantined[0].pid, Some(pid), "{case}: its VMM is found");

            // Nothing acts on it.
            assert!(process_alive(pid), "{case}: the VMM lives");
            assert_eq!(std::fs::read_to_string(&record).unwrap(), damaged, "{case}");
            assert!(console.exists() && info.api_socket.exists(), "{case}");
            for refused in [
                manager.get(&vm).await.map(drop),
                manager.pause(&vm).await.map(drop),
                manager.stop(&vm, StopOptions::default()).await.map(drop),
                manager.destroy(&vm).await,
            ] {
                assert!(
                    matches!(refused, Err(VmError::Unreadable { .. })),
                    "{case}: {refused:?}"
                );
            }
            let taken = manager.create(&vm, host.spec()).await.unwrap_err();
            assert!(
                matches!(taken, VmError::AlreadyExists { .. }),
                "{case}: {taken:?}"
            );
            assert!(process_alive(pid), "{case}: still alive after all that");

            // Only an explicit removal stops and removes it.
            assert!(manager.remove_unreadable(&vm).await.unwrap(), "{case}");
            assert!(!process_alive(pid), "{case}");
            assert!(host.vm_dirs().is_empty(), "{case}");
            assert!(manager.unreadable().await.is_empty(), "{case}");
            assert!(matches!(
                manager.remove_unreadable(&vm).await,
                Err(VmError::NotFound { .. })
            ));
        }
    }
}

#[tokio::test]
async fn a_quarantined_vm_without_a_verifiable_pid_is_found_by_its_api_socket() {
    let host = TestHost::new();
    let vm = id("no-pid");
    let info = {
        let manager = host.manager().await;
        manager.run(&vm, host.spec()).await.unwrap()
    };
    // Not JSON at all: nothing can be salvaged from it.
    std::fs::write(info.dir.join(RECORD_FILE), b"{{{").unwrap();
    let manager = host.manager().await;
    assert_eq!(manager.unreadable().await[0].pid, info.pid);
    assert!(manager.remove_unreadable(&vm).await.unwrap());
    assert!(!process_alive(info.pid.unwrap()));
}

#[tokio::test]
async fn a_dead_quarantined_vm_is_removed_without_stopping_anything() {
    let host = TestHost::new();
    let vm = id("dead-bad");
    let info = {
        let manager = host.manager().await;
        let info = manager.run(&vm, host.spec()).await.unwrap();
        manager.stop(&vm, StopOptions::default()).await.unwrap();
        info
    };
    let record = info.dir.join(RECORD_FILE);
    let text = std::fs::read_to_string(&record).unwrap();
    std::fs::write(&record, with_format(&text, RECORD_FORMAT + 1)).unwrap();
    let manager = host.manager().await;
    assert_eq!(manager.unreadable().await[0].pid, None);
    assert!(
        !manager.remove_unreadable(&vm).await.unwrap(),
        "nothing to stop"
    );
    assert!(host.vm_dirs().is_empty());
}

#[tokio::test]
async fn removing_a_readable_vm_as_unreadable_is_refused() {
    let host = TestHost::new();
    let vm = id("fine");
    let manager = host.manager().await;
    manager.create(&vm, host.spec()).await.unwrap();
    let refused = manager.remove_unreadable(&vm).await.unwrap_err();
    assert!(
        matches!(refused, VmError::NotUnreadable { .. }),
        "{refused:?}"
    );
    assert_eq!(manager.get(&vm).await.unwrap().state, VmState::Created);
    manager.destroy(&vm).await.unwrap();
}
