//! Network namespaces for the tier-5 tests.
//!
//! [`in_netns`] runs a test body on a thread that has unshared its network
//! namespace (and its mount namespace, to mount a sysfs that shows that
//! network namespace): it stands for the host. [`GuestNs`] is a further
//! namespace standing for a guest (or for the internet beyond the uplink),
//! joined by one veth pair. Namespaces die with the last thread or fd that
//! holds them, and the kernel then deletes every link in them, so a failing
//! test leaves nothing behind.

use std::future::Future;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use firehost::net::ipam::MacAddr;
use firehost::net::{IfName, Netlink};
use futures_util::TryStreamExt;
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};

/// The deadline for one test body.
pub const TEST_DEADLINE: Duration = Duration::from_secs(60);

/// Runs `body` inside a fresh network namespace on its own thread with a
/// current-thread runtime, under [`TEST_DEADLINE`]. Skips (and says so)
/// where namespaces cannot be made.
pub fn in_netns<F, Fut>(test: &'static str, body: F)
where
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return super::skip(test, "needs root to create a network namespace");
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return super::skip(test, "/dev/net/tun is missing (no tun module)");
    }
    let thread = std::thread::Builder::new()
        .name(test.to_owned())
        .spawn(move || {
            if let Err(why) = firehost_testkit::enter_private_netns() {
                return Some(why);
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let nl = Netlink::connect().expect("netlink socket");
                tokio::time::timeout(TEST_DEADLINE, body(nl))
                    .await
                    .unwrap_or_else(|_| panic!("{test} ran past {TEST_DEADLINE:?}"));
            });
            None
        })
        .unwrap();
    match thread.join() {
        Ok(None) => {}
        Ok(Some(why)) => super::skip(test, &why),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The interface name `s`, which must be valid.
/// Every link in the calling thread's namespace: its name and its kind
/// (`tun`, `veth`, `bridge`…; `None` for a plain device).
pub async fn links(nl: &Netlink) -> Vec<(String, Option<String>)> {
    let links: Vec<_> = nl
        .handle()
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .unwrap();
    links
        .iter()
        .filter_map(|link| {
            let name = link.attributes.iter().find_map(|a| match a {
                rtnetlink::packet_route::link::LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })?;
            Some((name, firehost::net::LinkState::from_message(link).kind))
        })
        .collect()
}

/// Whether nftables can be used here; says why not (as a skip of `test`).
pub fn nft_or_skip(test: &str) -> bool {
    match firehost::net::nft::Nftables::open() {
        Ok(_) => true,
        Err(e) => {
            super::skip(test, &e.to_string());
            false
        }
    }
}

pub fn ifname(s: &str) -> IfName {
    IfName::new(s).unwrap()
}

/// A network namespace of its own, alive while this value is.
pub struct GuestNs {
    fd: OwnedFd,
}

impl GuestNs {
    /// Makes an empty namespace (only `lo`, brought up).
    pub fn new() -> GuestNs {
        let fd = std::thread::spawn(|| {
            // SAFETY: only this short-lived thread's namespace changes.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
            OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").unwrap())
        })
        .join()
        .unwrap();
        let ns = GuestNs { fd };
        ns.run_async(|nl| async move {
            let lo = nl.link(&ifname("lo")).await.unwrap().unwrap();
            let msg = LinkUnspec::new_with_index(lo.header.index).up().build();
            nl.handle().link().set(msg).execute().await.unwrap();
        });
        ns
    }

    /// Runs `f` on a thread inside this namespace: sockets it opens stay
    /// in the namespace wherever they are used afterwards.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let fd = self.fd.try_clone().unwrap();
        std::thread::spawn(move || {
            // SAFETY: fd is an open network-namespace fd; only this thread
            // moves.
            let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// Runs the async `f` inside this namespace with a netlink connection
    /// of the namespace.
    pub fn run_async<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce(Netlink) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        self.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move { f(Netlink::connect().unwrap()).await })
        })
    }

    /// Joins this namespace to the calling thread's with a veth pair:
    /// `outer` stays here (down, unconfigured), `eth0` goes inside with
    /// `mac` (when given), `ip/prefix_len`, up, with a default route via
    /// `gateway` (when given).
    pub async fn plug(
        &self,
        nl: &Netlink,
        outer: &IfName,
        mac: Option<MacAddr>,
        ip: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
    ) {
        let inner_tmp = format!("x{}", &outer.as_str()[..outer.as_str().len().min(14)]);
        nl.handle()
            .link()
            .add(LinkVeth::new(outer.as_str(), &inner_tmp).build())
            .execute()
            .await
            .unwrap();
        let peer = nl.link(&ifname(&inner_tmp)).await.unwrap().unwrap();
        let msg = LinkUnspec::new_with_index(peer.header.index)
            .setns_by_fd(self.fd.as_raw_fd())
            .build();
        nl.handle().link().set(msg).execute().await.unwrap();
        self.run_async(move |nl| async move {
            let link = nl.link(&ifname(&inner_tmp)).await.unwrap().unwrap();
            let index = link.header.index;
            disable_ipv6(&inner_tmp);
            let mut set = LinkUnspec::new_with_index(index).name("eth0");
            if let Some(mac) = mac {
                set = set.address(mac.octets().to_vec());
            }
            nl.handle().link().set(set.build()).execute().await.unwrap();
            nl.handle()
                .address()
                .add(index, ip.into(), prefix_len)
                .execute()
                .await
                .unwrap();
            let up = LinkUnspec::new_with_index(index).up().build();
            nl.handle().link().set(up).execute().await.unwrap();
            if let Some(gw) = gateway {
                let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).build();
                nl.handle().route().add(route).execute().await.unwrap();
            }
        });
    }
}

/// Sets `name` up (and, with `controller`, makes it a port of that link).
pub async fn link_up(nl: &Netlink, name: &IfName, controller: Option<&IfName>) {
    let index = nl.link(name).await.unwrap().unwrap().header.index;
    let mut msg = LinkUnspec::new_with_index(index).up();
    if let Some(c) = controller {
        msg = msg.controller(nl.link(c).await.unwrap().unwrap().header.index);
    }
    nl.handle().link().set(msg.build()).execute().await.unwrap();
}

/// Adds `ip/prefix_len` to `name`.
pub async fn add_address(nl: &Netlink, name: &IfName, ip: Ipv4Addr, prefix_len: u8) {
    let index = nl.link(name).await.unwrap().unwrap().header.index;
    nl.handle()
        .address()
        .add(index, ip.into(), prefix_len)
        .execute()
        .await
        .unwrap();
}

/// The addresses on `name`.
pub async fn addresses(nl: &Netlink, name: &IfName) -> Vec<Ipv4Addr> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let index = nl.link(name).await.unwrap().unwrap().header.index;
    let msgs: Vec<_> = nl
        .handle()
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .unwrap();
    msgs.iter()
        .flat_map(|m| m.attributes.iter())
        .filter_map(|a| match a {
            AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        })
        .collect()
}

/// Turns IPv6 off on `iface` in the calling thread's namespace, so that a
/// guest stand-in sends only what the test makes it send.
pub fn disable_ipv6(iface: &str) {
    std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6"),
        b"1\n",
    )
    .unwrap();
}

/// The packet count of the named counter `name` in the `firehost` table
/// of `family`, as `nft` sees it.
pub fn nft_counter(nft: &firehost::net::nft::Nftables, family: &str, name: &str) -> u64 {
    let json = nft
        .list(&format!("list counter {family} firehost {name}"))
        .unwrap();
    json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|item| item["counter"]["packets"].as_u64())
        .unwrap()
}
