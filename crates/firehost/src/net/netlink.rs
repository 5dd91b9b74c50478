//! The rtnetlink connection the other network modules share, and the
//! error type that keeps rtnetlink's own types out of the public errors.

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::LinkMessage;

use super::IfName;

/// A netlink request that failed. The kernel's errno, when it answered
/// with one, is [`errno`](Self::errno).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct NetlinkError(#[from] rtnetlink::Error);

impl NetlinkError {
    /// The errno of the kernel's error reply, if the failure was one.
    pub fn errno(&self) -> Option<i32> {
        errno(&self.0)
    }
}

/// An rtnetlink connection, bound in the network namespace of the thread
/// that made it.
///
/// Cheap to clone (a handle to one background task). Requests from many
/// tasks are multiplexed over the one socket.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace
    /// and spawns its connection task on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn connect() -> std::io::Result<Self> {
        let (connection, handle, _messages) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// The rtnetlink handle, for requests this module has no helper for.
    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// The link named `name`, or `None` if there is none.
    ///
    /// # Cancel safety
    ///
    /// Safe: a read.
    pub async fn link(&self, name: &IfName) -> Result<Option<LinkMessage>, rtnetlink::Error> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.as_str().to_owned())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The errno of a netlink error reply, if the error is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Facts about one link, read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// The interface index.
    pub index: u32,
    /// Whether the link is administratively up (`IFF_UP`).
    pub up: bool,
    /// The index of the link's controller (the bridge it is a port of).
    pub controller: Option<u32>,
    /// The link kind (`"bridge"`, `"tun"`, …), if it has one.
    pub kind: Option<String>,
}

impl LinkState {
    /// Extracts the state from a link message.
    pub fn from_message(msg: &LinkMessage) -> Self {
        use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo};
        let mut state = LinkState {
            index: msg.header.index,
            up: msg.header.flags.contains(LinkFlags::Up),
            controller: None,
            kind: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::Controller(idx) => state.controller = Some(*idx),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            state.kind = Some(kind.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        state
    }
}
