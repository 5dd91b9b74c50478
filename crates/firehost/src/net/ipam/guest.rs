//! What a guest needs to know about its network, and the kernel's `ip=`
//! argument that tells it.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{MacAddr, mask_bits};
use crate::VmId;

/// What one guest needs to know about its network, as kept in the VM
/// record for the agent and turned into the kernel's `ip=` argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNet {
    /// The guest's address.
    pub ip: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix_len: u8,
    /// The default gateway (the bridge's address).
    pub gateway: Ipv4Addr,
    /// The guest NIC's MAC address.
    pub mac: MacAddr,
    /// DNS servers handed to the guest, in order. The kernel's `ip=`
    /// argument carries the first two; the agent reads all of them from the
    /// record.
    pub dns: Vec<Ipv4Addr>,
}

impl GuestNet {
    /// The netmask for [`GuestNet::prefix_len`].
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix_len.min(32)))
    }

    /// The kernel's static-IP boot argument for this guest.
    ///
    /// The kernel's IP autoconfiguration (`CONFIG_IP_PNP`, documented in
    /// `Documentation/admin-guide/nfs/nfsroot.rst`) takes
    ///
    /// ```text
    /// ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>:<ntp0-ip>
    /// ```
    ///
    /// We fill the client address, the gateway, the netmask, the hostname
    /// (optional; the kernel truncates it at 64 bytes, and a [`VmId`] is at
    /// most 64), the device (`eth0` for a Firecracker guest's first NIC),
    /// `off` for autoconf (no DHCP/BOOTP/RARP: the address is static) and up
    /// to two DNS servers, the most the kernel accepts; it writes them to
    /// `/proc/net/pnp`, which a guest can link as `/etc/resolv.conf`. The
    /// NFS server and NTP fields stay empty; trailing empty fields are
    /// omitted. DNS servers past the second are left out here and reach the
    /// guest through the VM record (the agent).
    ///
    /// # Examples
    ///
    /// ```
    /// use firehost::{VmId, net::ipam::{GuestNet, MacAddr}};
    ///
    /// let net = GuestNet {
    ///     ip: "172.30.0.2".parse().unwrap(),
    ///     prefix_len: 16,
    ///     gateway: "172.30.0.1".parse().unwrap(),
    ///     mac: MacAddr::new([6, 0, 0, 0, 0, 1]),
    ///     dns: vec!["1.1.1.1".parse().unwrap()],
    /// };
    /// assert_eq!(
    ///     net.kernel_ip_arg(None, "eth0"),
    ///     "ip=172.30.0.2::172.30.0.1:255.255.0.0::eth0:off:1.1.1.1"
    /// );
    /// ```
    pub fn kernel_ip_arg(&self, hostname: Option<&VmId>, device: &str) -> String {
        let mut arg = format!(
            "ip={}::{}:{}:{}:{}:off",
            self.ip,
            self.gateway,
            self.netmask(),
            hostname.map(VmId::as_str).unwrap_or(""),
            device
        );
        for dns in self.dns.iter().take(2) {
            arg.push(':');
            arg.push_str(&dns.to_string());
        }
        arg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn vm(s: &str) -> VmId {
        VmId::new(s).unwrap()
    }

    #[test]
    fn kernel_ip_arg_follows_the_nfsroot_field_order() {
        let base = GuestNet {
            ip: ip("172.30.0.2"),
            prefix_len: 16,
            gateway: ip("172.30.0.1"),
            mac: MacAddr::new([6, 0, 0, 0, 0, 1]),
            dns: vec![],
        };
        let with_dns = |dns: &[&str]| GuestNet {
            dns: dns.iter().map(|d| ip(d)).collect(),
            ..base.clone()
        };
        let cases = [
            (
                base.clone(),
                None,
                "ip=172.30.0.2::172.30.0.1:255.255.0.0::eth0:off",
            ),
            (
                base.clone(),
                Some(vm("web-1")),
                "ip=172.30.0.2::172.30.0.1:255.255.0.0:web-1:eth0:off",
            ),
            (
                with_dns(&["1.1.1.1", "9.9.9.9"]),
                None,
                "ip=172.30.0.2::172.30.0.1:255.255.0.0::eth0:off:1.1.1.1:9.9.9.9",
            ),
            (
                with_dns(&["1.1.1.1", "9.9.9.9", "8.8.8.8"]),
                None,
                "ip=172.30.0.2::172.30.0.1:255.255.0.0::eth0:off:1.1.1.1:9.9.9.9",
            ),
        ];
        for (net, host, want) in cases {
            assert_eq!(net.kernel_ip_arg(host.as_ref(), "eth0"), want);
        }
    }
}
