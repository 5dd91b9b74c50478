//! A network namespace of its own for a VM on the default network.
//!
//! A booted VM gets one when its spec asks ([`NetSpec::netns`](super::host::NetSpec::netns));
//! a restored VM gets one by default. Firecracker runs inside it (the
//! jailer's `--netns`, or spawned from a thread that joined it), so the
//! VMM process sees nothing of the host's interfaces. The namespace holds
//! only the VM's TAP and one end of a veth pair; the other end is a port
//! of the host's bridge, where the firewall binds the VM's MAC and address
//! to it exactly as it binds an unnamespaced VM's TAP.
//!
//! Between the TAP and the veth, the namespace either bridges (the guest
//! has its host address itself) or routes and translates (the guest keeps
//! an address of its own: see `translate`):
//!
//! ```text
//!   bridged:     fhbr0 ── fv<id> ═══ veth ═══ fp<id> ── br0 ── fh<id> (TAP) ── Firecracker
//!   translated:  fhbr0 ── fv<id> ═══ veth ═══ fp<id> ── NAT ── fh<id> (TAP) ── Firecracker
//!                                              └────── the VM's namespace ───────┘
//! ```
//!
//! The namespace is pinned by a bind mount of its `nsfs` file at a path in
//! the state directory (like `ip netns add` does under `/run/netns`), so
//! it outlives the thread that made it and a manager restart. Removing
//! that mount (and the VMM exiting) ends it, and the kernel deletes the
//! devices inside.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};

use super::host::NetError;
use super::tap::TapOwner;
use super::translate::Translation;
use super::{IfName, Netlink};

/// The name of the bridge inside each VM's namespace.
pub const INNER_BRIDGE: &str = "br0";

/// A VM's namespace as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNetns {
    /// The bind-mounted namespace file (`--netns` for the jailer).
    pub path: PathBuf,
    /// The veth end on the host's bridge: the VM's port there.
    pub host_port: IfName,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NetError {
    let path = path.to_owned();
    move |source| NetError::Io { op, path, source }
}

fn nl_err(op: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetError {
    move |source| NetError::Netlink {
        op,
        source: source.into(),
    }
}

/// Runs `work` on a thread of its own, which it may move into another
/// namespace (a namespace change is per thread), and waits for it without
/// blocking the runtime.
async fn on_own_thread<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("firehost-netns".into())
        .spawn(move || {
            let _ = done.send(work());
        })?;
    result
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
}

/// Makes a new network namespace pinned at `path` (which must not exist),
/// and returns a descriptor of it.
///
/// # Cancel safety
///
/// Not cancel safe: the thread that makes the namespace finishes even if
/// this future is dropped, leaving it pinned at `path`; [`remove`] undoes
/// that.
pub async fn create(path: &Path) -> Result<OwnedFd, NetError> {
    let owned = path.to_owned();
    // `unshare(CLONE_NEWNET)` moves only the calling thread: a thread of
    // its own does it and is gone afterwards.
    let made = on_own_thread(move || -> std::io::Result<OwnedFd> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&owned)?;
        // SAFETY: only the network namespace is unshared, never the file
        // table, so no descriptor changes meaning for any thread.
        let pinned =
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
                .map_err(std::io::Error::from)
                .and_then(|()| {
                    rustix::mount::mount_bind("/proc/thread-self/ns/net", &owned)
                        .map_err(std::io::Error::from)
                });
        if let Err(e) = pinned {
            let _ = std::fs::remove_file(&owned);
            return Err(e);
        }
        std::fs::File::open(&owned).map(OwnedFd::from)
    })
    .await;
    made.map_err(io_err("create the network namespace", path))
}

/// Opens the namespace pinned at `path` (tests read inside it).
#[cfg(any(test, feature = "test-internals"))]
pub fn open(path: &Path) -> Result<OwnedFd, NetError> {
    std::fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(io_err("open the network namespace", path))
}

/// Unpins the namespace at `path` and removes the file; one that is gone
/// already is fine. The namespace ends once no process is in it.
pub fn remove(path: &Path) -> Result<(), NetError> {
    match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(io_err("unmount the network namespace", path)(e.into())),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove the network namespace file", path)(e)),
    }
}

/// Runs `work` on a thread of its own inside the namespace `ns` (sockets,
/// sysctl files and nftables contexts it opens belong to that namespace)
/// and waits for it without blocking the runtime.
///
/// # Cancel safety
///
/// Not cancel safe: the thread finishes `work` even if this future is
/// dropped.
pub async fn run_in<T: Send + 'static>(
    ns: &OwnedFd,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let ns = ns.try_clone()?;
    on_own_thread(move || {
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )?;
        work()
    })
    .await
}

/// A netlink connection inside the namespace `ns`.
///
/// # Cancel safety
///
/// Cancel safe: a connection made after the future is dropped is closed
/// with the unsent result.
pub async fn netlink_in(ns: &OwnedFd) -> Result<Netlink, NetError> {
    let runtime = tokio::runtime::Handle::current();
    // The socket belongs to the namespace of the thread that opens it.
    run_in(ns, move || {
        let _entered = runtime.enter();
        Netlink::connect()
    })
    .await
    .map_err(io_err("open a netlink socket in", Path::new("netns")))
}

pub(super) async fn index_of(nl: &Netlink, name: &IfName) -> Result<u32, NetError> {
    nl.link(name)
        .await
        .map_err(nl_err("look up a link"))?
        .map(|l| l.header.index)
        .ok_or_else(|| NetError::Io {
            op: "find the link",
            path: PathBuf::from(name.as_str()),
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        })
}

pub(super) async fn up_on(nl: &Netlink, name: &IfName, controller: Option<u32>) -> Result<(), NetError> {
    let index = index_of(nl, name).await?;
    let mut msg = rtnetlink::LinkUnspec::new_with_index(index).up();
    if let Some(controller) = controller {
        msg = msg.controller(controller);
    }
    nl.handle()
        .link()
        .set(msg.build())
        .execute()
        .await
        .map_err(nl_err("set a link up"))
}

/// What a VM's namespace does between its TAP and its end of the veth.
#[derive(Debug, Clone, Copy)]
pub enum Inside<'a> {
    /// A bridge joins them: the guest is on the host's network with its
    /// own address.
    Bridged,
    /// The namespace routes between them and translates the guest's own
    /// address to a host address (see `translate`).
    Translated(&'a Translation),
}

/// Makes a new namespace pinned at `path` holding the persistent TAP `tap`
/// (owned by `owner`) and `inner_port`, one end of a veth pair whose other
/// end, `host_port` (labelled `alias`), joins the host's `bridge`, with
/// `inside` between the TAP and the veth. All or nothing.
///
/// The TAP and the veth end are made inside the namespace rather than
/// moved there: moving a link between namespaces waits for the kernel's
/// RCU grace periods, about 15 ms for a veth and 25 ms for a TAP here.
///
/// # Cancel safety
///
/// Not cancel safe: dropped midway, some links exist; [`unplumb`] removes
/// them.
#[allow(clippy::too_many_arguments)]
pub async fn plumb(
    nl: &Netlink,
    bridge: &IfName,
    path: &Path,
    tap: &IfName,
    owner: TapOwner,
    host_port: &IfName,
    inner_port: &IfName,
    alias: &str,
    inside: Inside<'_>,
) -> Result<VmNetns, NetError> {
    let ns = create(path).await?;
    let steps = async {
        let peer = rtnetlink::LinkMessageBuilder::<rtnetlink::LinkUnspec>::new()
            .name(inner_port.to_string())
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let pair = rtnetlink::LinkMessageBuilder::<rtnetlink::LinkVeth>::new_with_info_kind(
            InfoKind::Veth,
        )
        .name(host_port.to_string())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
        nl.handle()
            .link()
            .add(pair)
            .execute()
            .await
            .map_err(nl_err("create the veth pair"))?;
        let host_index = index_of(nl, host_port).await?;
        let label = rtnetlink::LinkUnspec::new_with_index(host_index)
            .alias(alias.to_owned())
            .build();
        nl.handle()
            .link()
            .set(label)
            .execute()
            .await
            .map_err(nl_err("label the veth"))?;
        let name = tap.clone();
        run_in(&ns, move || Ok(super::tap::create_persistent_tap(&name, owner)))
            .await
            .map_err(io_err("create the TAP in", path))??;

        let in_ns = netlink_in(&ns).await?;
        match inside {
            Inside::Bridged => bridge_inside(&in_ns, tap, inner_port).await?,
            Inside::Translated(t) => {
                super::translate::configure(&in_ns, &ns, tap, inner_port, t).await?
            }
        }
        // Last, so the host's bridge sees the VM's port only once the
        // namespace behind it is ready.
        let bridge_index = index_of(nl, bridge).await?;
        up_on(nl, host_port, Some(bridge_index)).await?;
        Ok::<_, NetError>(())
    };
    match steps.await {
        Ok(()) => Ok(VmNetns {
            path: path.to_owned(),
            host_port: host_port.clone(),
        }),
        Err(e) => {
            // Whatever was made: the host end (which takes its peer), and
            // the namespace with the TAP in it.
            let _ = delete_link(nl, host_port).await;
            let _ = remove(path);
            Err(e)
        }
    }
}

/// Joins the TAP and the veth end on a bridge inside the namespace.
async fn bridge_inside(inside: &Netlink, tap: &IfName, port: &IfName) -> Result<(), NetError> {
    inside
        .handle()
        .link()
        .add(rtnetlink::LinkBridge::new(INNER_BRIDGE).up().build())
        .execute()
        .await
        .map_err(nl_err("create the VM namespace's bridge"))?;
    let inner_bridge = index_of(inside, &IfName::new(INNER_BRIDGE).expect("valid")).await?;
    up_on(inside, tap, Some(inner_bridge)).await?;
    up_on(inside, port, Some(inner_bridge)).await?;
    up_on(inside, &IfName::new("lo").expect("valid"), None).await
}

/// Removes a VM's namespace plumbing: the veth pair, then the namespace,
/// which takes the TAP and everything else inside with it once no process
/// is in it (the VMM is gone by now). Parts already gone are fine.
///
/// The host end of the veth is deleted here and now, so the VM's port is
/// off the bridge when this returns; the inside goes when the kernel
/// cleans the namespace up, which nothing waits for.
///
/// # Cancel safety
///
/// Not cancel safe, but idempotent: calling it again finishes the job.
pub async fn unplumb(nl: &Netlink, netns: &VmNetns) -> Result<(), NetError> {
    delete_link(nl, &netns.host_port).await?;
    remove(&netns.path)
}

/// Deletes the link `name`, if there is one (a veth's peer goes with it).
///
/// # Cancel safety
///
/// Cancel safe: the request was sent or it was not; calling it again
/// finishes the job.
pub async fn delete_link(nl: &Netlink, name: &IfName) -> Result<(), NetError> {
    let Some(link) = nl.link(name).await.map_err(nl_err("look up a link"))? else {
        return Ok(());
    };
    match nl.handle().link().del(link.header.index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if super::netlink::errno(&e) == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(nl_err("delete a link")(e)),
    }
}

/// The links inside namespace `ns`, by name (tests read them back).
///
/// # Cancel safety
///
/// Cancel safe: it only reads.
#[cfg(any(test, feature = "test-internals"))]
pub async fn links_in(ns: &OwnedFd) -> Result<Vec<String>, NetError> {
    use futures_util::TryStreamExt;
    use rtnetlink::packet_route::link::LinkAttribute;
    let inside = netlink_in(ns).await?;
    let links: Vec<_> = inside
        .handle()
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("list links"))?;
    Ok(links
        .iter()
        .filter_map(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
        })
        .collect())
}
