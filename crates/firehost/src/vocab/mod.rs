//! The words a VM spec is written in, with nothing behind them: interface
//! names, MAC addresses, port mappings, what a VM asks of the default
//! network and of the metadata service. Values parse strictly and refuse
//! what the kernel, nftables or Firecracker would.
//!
//! [`spec`](crate::spec) is built from these alone; the subsystems that act
//! on them re-export them where their users look ([`net`](crate::net),
//! [`net::ipam`](crate::net::ipam), [`net::firewall`](crate::net::firewall),
//! [`net::host`](crate::net::host), [`mmds`](crate::mmds)), and the crate
//! root has the common ones.

mod egress;
mod ifname;
mod mac;
mod mmds_spec;
mod net_spec;
mod port;
mod rate;

pub use egress::{
    Cidr, DomainPattern, EgressAction, EgressError, EgressPolicy, EgressRule, EgressTarget,
    MAX_EGRESS_RULES, NetMatch, PortRange,
};
pub use ifname::{IFNAMSIZ, IfName, IfNameError, MAX_IFNAME_LEN};
pub use mac::{MacAddr, MacSyntaxError};
pub use mmds_spec::{MmdsSpec, MmdsVersion};
pub use net_spec::{DEFAULT_IFACE_ID, NetSpec, PeerGroup, PeerGroupError};
pub use port::{HostService, PortMapping, PortSyntaxError, Proto};
pub use rate::{
    Bandwidth, BandwidthSyntaxError, Bucket, BucketChange, LimitChange, MAX_REFILL_TIME_MS,
    RateLimit, RateLimitError,
};
