//! Tier 5: TAP devices and the bridge, against the real kernel.
//!
//! Every test runs its body on a thread of its own that has unshared its
//! network namespace (and its mount namespace, to mount a sysfs that shows
//! that network namespace), so nothing here touches the host's interfaces.
//! The namespace dies with the thread: the kernel then deletes every TAP and
//! bridge in it, persistent or not, so a failing test leaves nothing behind
//! either. Results are read back from the kernel: links and addresses over
//! netlink, the TAP owner both from netlink (`IFLA_TUN_OWNER`) and from
//! `/sys/class/net/<tap>/owner`.
//!
//! Needs root (`CAP_SYS_ADMIN` for `unshare`, `CAP_NET_ADMIN` inside);
//! elsewhere each test prints why it skipped.

use std::net::Ipv4Addr;

mod common;

use common::netns::in_netns;
use firehost::VmId;
use firehost::net::bridge::{Bridge, BridgeError};
use firehost::net::tap::{
    Tap, TapError, TapOwner, TunInfo, create_persistent_tap, tap_name_for_vm,
};
use firehost::net::{IfName, IfNameError, LinkState, Netlink};

fn name(s: &str) -> IfName {
    IfName::new(s).unwrap()
}

/// The link `n` as the kernel reports it, which must exist.
async fn link(nl: &Netlink, n: &IfName) -> (LinkState, Option<TunInfo>) {
    let msg = nl
        .link(n)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{n} should exist"));
    (LinkState::from_message(&msg), TunInfo::from_message(&msg))
}

const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);

#[test]
fn tap_is_persistent_owned_up_and_attached_to_the_bridge() {
    in_netns(
        "tap_is_persistent_owned_up_and_attached_to_the_bridge",
        |nl| async move {
            let br = Bridge::ensure(&nl, &name("fhbr0"), GATEWAY, 16)
                .await
                .unwrap();
            assert!(br.created());
            let tap_name = tap_name_for_vm(&VmId::new("web-1").unwrap(), 0, 0);
            let owner = TapOwner {
                uid: Some(1234),
                gid: Some(5678),
            };
            let tap = Tap::create(&nl, &tap_name, owner, br.name()).await.unwrap();

            let (state, tun) = link(&nl, &tap_name).await;
            assert_eq!(state.index, tap.index);
            assert!(state.up, "TAP is up");
            assert_eq!(
                state.controller,
                Some(br.index()),
                "bridge is the TAP's master"
            );
            assert_eq!(state.kind.as_deref(), Some("tun"));
            let tun = tun.expect("tun info");
            assert_eq!(
                tun,
                TunInfo {
                    owner: Some(1234),
                    group: Some(5678),
                    tap: true,
                    vnet_hdr: true,
                    persist: true,
                }
            );
            // The same facts through sysfs, mounted for this namespace.
            let sys = |attr: &str| {
                std::fs::read_to_string(format!("/sys/class/net/{tap_name}/{attr}"))
                    .unwrap()
                    .trim()
                    .to_owned()
            };
            assert_eq!(sys("owner"), "1234");
            assert_eq!(sys("group"), "5678");
            let flags = u32::from_str_radix(sys("tun_flags").trim_start_matches("0x"), 16).unwrap();
            let want = u32::try_from(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR).unwrap();
            assert_eq!(flags & want, want, "tun_flags {flags:#x}");
            assert_eq!(sys("master/ifindex"), br.index().to_string());
        },
    );
}

#[test]
fn bridge_created_by_ensure_holds_the_gateway_and_is_removed_by_us() {
    in_netns(
        "bridge_created_by_ensure_holds_the_gateway_and_is_removed_by_us",
        |nl| async move {
            let br_name = name("fhbr0");
            let br = Bridge::ensure(&nl, &br_name, GATEWAY, 16).await.unwrap();
            assert!(br.created());
            let (state, _) = link(&nl, &br_name).await;
            assert_eq!(state.kind.as_deref(), Some("bridge"));
            assert!(state.up);
            assert_eq!(br.addresses(&nl).await.unwrap(), vec![(GATEWAY, 16)]);

            // A second ensure finds it, adds nothing and does not claim it.
            let again = Bridge::ensure(&nl, &br_name, GATEWAY, 16).await.unwrap();
            assert!(!again.created());
            assert_eq!(again.addresses(&nl).await.unwrap(), vec![(GATEWAY, 16)]);
            assert!(!again.remove_if_created(&nl).await.unwrap());
            assert!(nl.link(&br_name).await.unwrap().is_some());

            assert!(br.remove_if_created(&nl).await.unwrap());
            assert!(nl.link(&br_name).await.unwrap().is_none(), "bridge is gone");
        },
    );
}

#[test]
fn an_operators_bridge_gets_the_gateway_but_is_never_removed() {
    in_netns(
        "an_operators_bridge_gets_the_gateway_but_is_never_removed",
        |nl| async move {
            let br_name = name("opbr0");
            // The operator's bridge: down, no address.
            let msg = rtnetlink::LinkBridge::new(br_name.as_str()).down().build();
            nl.handle().link().add(msg).execute().await.unwrap();

            let br = Bridge::ensure(&nl, &br_name, GATEWAY, 16).await.unwrap();
            assert!(!br.created());
            let (state, _) = link(&nl, &br_name).await;
            assert!(state.up, "ensure sets it up");
            assert_eq!(br.addresses(&nl).await.unwrap(), vec![(GATEWAY, 16)]);
            assert!(!br.remove_if_created(&nl).await.unwrap());
            assert!(
                nl.link(&br_name).await.unwrap().is_some(),
                "operator's bridge stays"
            );
        },
    );
}

#[test]
fn ensure_refuses_a_link_that_is_not_a_bridge() {
    in_netns(
        "ensure_refuses_a_link_that_is_not_a_bridge",
        |nl| async move {
            let n = name("fhbr0");
            create_persistent_tap(&n, TapOwner::default()).unwrap();
            let err = Bridge::ensure(&nl, &n, GATEWAY, 16).await.unwrap_err();
            assert!(
                matches!(&err, BridgeError::NotABridge { kind: Some(k), .. } if k == "tun"),
                "{err:?}"
            );
        },
    );
}

#[test]
fn second_tap_with_the_same_name_is_a_clash_and_leaves_the_first_alone() {
    in_netns(
        "second_tap_with_the_same_name_is_a_clash_and_leaves_the_first_alone",
        |nl| async move {
            let br = Bridge::ensure(&nl, &name("fhbr0"), GATEWAY, 16)
                .await
                .unwrap();
            let n = name("fhclash0");
            let owner = TapOwner {
                uid: Some(1000),
                gid: None,
            };
            let first = Tap::create(&nl, &n, owner, br.name()).await.unwrap();

            let other = TapOwner {
                uid: Some(2000),
                gid: Some(2000),
            };
            let err = Tap::create(&nl, &n, other, br.name()).await.unwrap_err();
            assert!(
                matches!(&err, TapError::NameTaken { tap } if *tap == n),
                "{err:?}"
            );

            let (state, tun) = link(&nl, &n).await;
            assert_eq!(state.index, first.index, "same device");
            assert!(state.up);
            assert_eq!(state.controller, Some(br.index()));
            let tun = tun.unwrap();
            assert_eq!(
                (tun.owner, tun.group),
                (Some(1000), None),
                "owner untouched"
            );
            assert!(tun.persist);
        },
    );
}

#[test]
fn tap_for_a_missing_bridge_fails_and_leaves_no_tap() {
    in_netns(
        "tap_for_a_missing_bridge_fails_and_leaves_no_tap",
        |nl| async move {
            let n = name("fhorphan0");
            let err = Tap::create(&nl, &n, TapOwner::default(), &name("nobr0"))
                .await
                .unwrap_err();
            assert!(
                matches!(&err, TapError::BridgeMissing { bridge, .. } if bridge.as_str() == "nobr0"),
                "{err:?}"
            );
            assert!(nl.link(&n).await.unwrap().is_none(), "no TAP left behind");
        },
    );
}

#[test]
fn tap_for_a_non_bridge_master_fails_and_leaves_no_tap() {
    in_netns(
        "tap_for_a_non_bridge_master_fails_and_leaves_no_tap",
        |nl| async move {
            let not_bridge = name("fhnotbr0");
            create_persistent_tap(&not_bridge, TapOwner::default()).unwrap();
            let n = name("fhorphan1");
            let err = Tap::create(&nl, &n, TapOwner::default(), &not_bridge)
                .await
                .unwrap_err();
            assert!(matches!(&err, TapError::NotABridge { .. }), "{err:?}");
            assert!(nl.link(&n).await.unwrap().is_none(), "no TAP left behind");
        },
    );
}

#[test]
fn delete_removes_the_tap_and_then_reports_it_absent() {
    in_netns(
        "delete_removes_the_tap_and_then_reports_it_absent",
        |nl| async move {
            let br = Bridge::ensure(&nl, &name("fhbr0"), GATEWAY, 16)
                .await
                .unwrap();
            let n = name("fhdel0");
            Tap::create(&nl, &n, TapOwner::default(), br.name())
                .await
                .unwrap();
            assert!(Tap::delete(&nl, &n).await.unwrap());
            assert!(nl.link(&n).await.unwrap().is_none());
            assert!(
                !Tap::delete(&nl, &n).await.unwrap(),
                "a second delete finds nothing"
            );
            // The bridge is not a TAP: delete refuses it.
            let err = Tap::delete(&nl, br.name()).await.unwrap_err();
            assert!(matches!(&err, TapError::NotATap { .. }), "{err:?}");
            assert!(nl.link(br.name()).await.unwrap().is_some());
        },
    );
}

#[test]
fn names_longer_than_ifnamsiz_are_refused_before_any_syscall() {
    let err = IfName::new("fh0123456789abcd").unwrap_err();
    assert!(
        matches!(err, IfNameError::TooLong { len: 16, .. }),
        "{err:?}"
    );
    assert!(IfName::new("fh0123456789abc").is_ok());
}

#[test]
fn namespaced_taps_never_appear_on_the_host() {
    let n = "fhhostcheck0";
    in_netns(
        "namespaced_taps_never_appear_on_the_host",
        move |nl| async move {
            create_persistent_tap(&name(n), TapOwner::default()).unwrap();
            assert!(nl.link(&name(n)).await.unwrap().is_some());
        },
    );
    // Back on a thread in the host namespace: no such device, during or after.
    assert!(!std::path::Path::new(&format!("/sys/class/net/{n}")).exists());
}
