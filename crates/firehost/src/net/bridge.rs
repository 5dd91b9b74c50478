//! The bridge that joins the VMs' TAPs and holds the gateway address.
//!
//! The host network config names a bridge (e.g. `fhbr0`) and a gateway
//! address in the guest subnet. [`Bridge::ensure`] makes that true: it
//! creates the bridge when it is absent, adds the gateway address when it is
//! missing, and sets the bridge up, and it reports whether the bridge was
//! created by this call ([`Bridge::created`]). An operator's own bridge is
//! used as found (plus the gateway address), and [`Bridge::remove_if_created`]
//! never deletes it; the manager persists `created` so a restarted manager
//! knows whether the bridge is its own to remove.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::{LinkBridge, LinkUnspec};

use super::netlink::errno;
use super::{IfName, LinkState, Netlink};

/// Why the bridge could not be set up or removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// A link of that name exists and is not a bridge.
    #[error("{bridge} exists and is a {kind:?} link, not a bridge")]
    NotABridge {
        /// The name.
        bridge: IfName,
        /// Its kind, if it reports one.
        kind: Option<String>,
    },
    /// The bridge to remove does not exist.
    #[error("bridge {bridge} does not exist")]
    Missing {
        /// The name.
        bridge: IfName,
    },
    /// A netlink request failed.
    #[error("netlink {op} for bridge {bridge} failed")]
    Netlink {
        /// The bridge.
        bridge: IfName,
        /// What we asked for.
        op: &'static str,
        /// The netlink error (with the kernel's errno).
        #[source]
        source: super::NetlinkError,
    },
}

/// A bridge that exists, is up and holds the gateway address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    name: IfName,
    index: u32,
    created: bool,
}

impl Bridge {
    /// Makes sure the bridge `name` exists, is up and holds
    /// `gateway/prefix_len`, creating what is missing. A new bridge that
    /// cannot be given its address is deleted again.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped between creating the bridge and adding the
    /// address, it leaves a bridge that [`Bridge::created`] would not
    /// report. Calling `ensure` again completes it (but reports
    /// `created == false`).
    pub async fn ensure(
        nl: &Netlink,
        name: &IfName,
        gateway: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<Bridge, BridgeError> {
        let netlink = |op| {
            let bridge = name.clone();
            move |source: rtnetlink::Error| BridgeError::Netlink { bridge, op, source: source.into() }
        };
        let (index, created) = match nl.link(name).await.map_err(netlink("get"))? {
            Some(link) => {
                let state = LinkState::from_message(&link);
                if state.kind.as_deref() != Some("bridge") {
                    return Err(BridgeError::NotABridge {
                        bridge: name.clone(),
                        kind: state.kind,
                    });
                }
                if !state.up {
                    let up = LinkUnspec::new_with_index(state.index).up().build();
                    nl.handle()
                        .link()
                        .set(up)
                        .execute()
                        .await
                        .map_err(netlink("set up"))?;
                }
                (state.index, false)
            }
            None => {
                let msg = LinkBridge::new(name.as_str()).build();
                nl.handle()
                    .link()
                    .add(msg)
                    .execute()
                    .await
                    .map_err(netlink("add"))?;
                let link = nl
                    .link(name)
                    .await
                    .map_err(netlink("get"))?
                    .ok_or_else(|| BridgeError::Missing {
                        bridge: name.clone(),
                    })?;
                (link.header.index, true)
            }
        };
        let bridge = Bridge {
            name: name.clone(),
            index,
            created,
        };
        if let Err(e) = bridge.ensure_address(nl, gateway, prefix_len).await {
            if created && let Err(undo) = nl.handle().link().del(index).execute().await {
                tracing::warn!(bridge = %name, error = %undo, "could not delete the bridge after a failed address add");
            }
            return Err(e);
        }
        Ok(bridge)
    }

    async fn ensure_address(
        &self,
        nl: &Netlink,
        gateway: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), BridgeError> {
        let have = self.addresses(nl).await?;
        if have.contains(&(gateway, prefix_len)) {
            return Ok(());
        }
        match nl
            .handle()
            .address()
            .add(self.index, IpAddr::V4(gateway), prefix_len)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(BridgeError::Netlink {
                bridge: self.name.clone(),
                op: "add address",
                source: source.into(),
            }),
        }
    }

    /// The IPv4 addresses on the bridge, with their prefix lengths, read
    /// from the kernel.
    ///
    /// # Cancel safety
    ///
    /// Safe: a read.
    pub async fn addresses(&self, nl: &Netlink) -> Result<Vec<(Ipv4Addr, u8)>, BridgeError> {
        let mut out = Vec::new();
        let mut msgs = nl
            .handle()
            .address()
            .get()
            .set_link_index_filter(self.index)
            .execute();
        while let Some(msg) = msgs
            .try_next()
            .await
            .map_err(|source| BridgeError::Netlink {
                bridge: self.name.clone(),
                op: "get addresses",
                source: source.into(),
            })?
        {
            if msg.header.index != self.index {
                continue;
            }
            for attr in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                    out.push((*ip, msg.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// A bridge handle from persisted facts (name and whether firehost
    /// created it), checked against the kernel: used by a restarted
    /// manager.
    ///
    /// # Cancel safety
    ///
    /// Safe: a read.
    pub async fn adopt(nl: &Netlink, name: &IfName, created: bool) -> Result<Bridge, BridgeError> {
        let link = nl
            .link(name)
            .await
            .map_err(|source| BridgeError::Netlink {
                bridge: name.clone(),
                op: "get",
                source: source.into(),
            })?
            .ok_or_else(|| BridgeError::Missing {
                bridge: name.clone(),
            })?;
        let state = LinkState::from_message(&link);
        if state.kind.as_deref() != Some("bridge") {
            return Err(BridgeError::NotABridge {
                bridge: name.clone(),
                kind: state.kind,
            });
        }
        Ok(Bridge {
            name: name.clone(),
            index: state.index,
            created,
        })
    }

    /// The bridge's name.
    pub fn name(&self) -> &IfName {
        &self.name
    }

    /// The bridge's interface index.
    #[cfg(any(test, feature = "test-internals"))]
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Whether firehost created the bridge (and so may remove it).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Deletes the bridge if firehost created it; returns whether it did.
    /// The caller checks first that no VM uses it. A bridge already gone
    /// counts as removed.
    ///
    /// # Cancel safety
    ///
    /// Safe: either the delete request was sent or it was not.
    pub async fn remove_if_created(self, nl: &Netlink) -> Result<bool, BridgeError> {
        if !self.created {
            return Ok(false);
        }
        // Look the name up again: the index we hold may be stale.
        let current = match Bridge::adopt(nl, &self.name, true).await {
            Ok(current) => current,
            Err(BridgeError::Missing { .. }) => return Ok(true),
            Err(e) => return Err(e),
        };
        match nl.handle().link().del(current.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(true),
            Err(source) => Err(BridgeError::Netlink {
                bridge: self.name,
                op: "delete",
                source: source.into(),
            }),
        }
    }
}
