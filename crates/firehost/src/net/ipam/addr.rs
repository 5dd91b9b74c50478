//! The value types: IPv4 subnets and MAC addresses, parsed strictly.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{IpamError, MAX_PREFIX_LEN};

/// An IPv4 subnet: a network address with no host bits set and a prefix
/// length of at most [`MAX_PREFIX_LEN`].
///
/// # Examples
///
/// ```
/// use firehost::net::ipam::Subnet;
/// use std::net::Ipv4Addr;
///
/// let s: Subnet = "172.30.0.0/16".parse().unwrap();
/// assert_eq!(s.first_host(), Ipv4Addr::new(172, 30, 0, 1));
/// assert_eq!(s.broadcast(), Ipv4Addr::new(172, 30, 255, 255));
/// assert_eq!(s.netmask(), Ipv4Addr::new(255, 255, 0, 0));
/// assert!("172.30.0.1/16".parse::<Subnet>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Subnet {
    /// Checks and builds a subnet.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Result<Self, IpamError> {
        if prefix_len > MAX_PREFIX_LEN {
            return Err(IpamError::PrefixLen { prefix_len });
        }
        let mask = mask_bits(prefix_len);
        let bits = u32::from(network);
        if bits & !mask != 0 {
            return Err(IpamError::HostBitsSet {
                addr: network,
                prefix_len,
                network: Ipv4Addr::from(bits & mask),
            });
        }
        Ok(Subnet {
            network,
            prefix_len,
        })
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The netmask, e.g. `255.255.0.0` for a /16.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix_len))
    }

    /// The broadcast address (all host bits set).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask_bits(self.prefix_len))
    }

    /// The first host address, the default gateway.
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The last host address.
    pub fn last_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.broadcast()) - 1)
    }

    /// How many host addresses the subnet has (network and broadcast
    /// excluded; the gateway included).
    pub fn host_count(&self) -> u32 {
        u32::from(self.last_host()) - u32::from(self.first_host()) + 1
    }

    /// Whether `ip` is inside the subnet (reserved addresses included).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask_bits(self.prefix_len) == u32::from(self.network)
    }

    /// Whether `ip` is a host address of the subnet (neither the network
    /// nor the broadcast address).
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network && ip != self.broadcast()
    }
}

pub(super) fn mask_bits(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Subnet {
    type Err = IpamError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || IpamError::SubnetSyntax { text: s.to_owned() };
        let (addr, len) = s.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let prefix_len: u8 = len.parse().map_err(|_| syntax())?;
        Subnet::new(addr, prefix_len)
    }
}

impl Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn subnet_parsing_accepts_cidrs_and_refuses_the_rest() {
        type Case<'a> = (&'a str, Result<(&'a str, u8), &'a str>);
        let cases: &[Case] = &[
            ("172.30.0.0/16", Ok(("172.30.0.0", 16))),
            ("10.0.0.0/8", Ok(("10.0.0.0", 8))),
            ("192.168.7.4/30", Ok(("192.168.7.4", 30))),
            ("0.0.0.0/0", Ok(("0.0.0.0", 0))),
            ("172.30.0.1/16", Err("HostBitsSet")),
            ("172.30.0.0/31", Err("PrefixLen")),
            ("172.30.0.0/32", Err("PrefixLen")),
            ("172.30.0.0/33", Err("PrefixLen")),
            ("172.30.0.0", Err("SubnetSyntax")),
            ("172.30.0.0/", Err("SubnetSyntax")),
            ("172.30.0.0/+6", Err("SubnetSyntax")),
            ("172.30.0.0/016", Err("SubnetSyntax")),
            ("172.30.0/16", Err("SubnetSyntax")),
            ("fd00::/64", Err("SubnetSyntax")),
        ];
        for (text, want) in cases {
            let got = text.parse::<Subnet>();
            match (want, got) {
                (Ok((net, len)), Ok(s)) => {
                    assert_eq!((s.network(), s.prefix_len()), (ip(net), *len), "{text}")
                }
                (Err(kind), Err(e)) => {
                    assert!(format!("{e:?}").starts_with(kind), "{text}: {e:?}")
                }
                (want, got) => panic!("{text}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn subnet_arithmetic_matches_hand_computed_values() {
        // (subnet, first host, last host, broadcast, netmask, host count)
        let cases = [
            (
                "172.30.0.0/16",
                "172.30.0.1",
                "172.30.255.254",
                "172.30.255.255",
                "255.255.0.0",
                65534,
            ),
            (
                "10.1.2.0/24",
                "10.1.2.1",
                "10.1.2.254",
                "10.1.2.255",
                "255.255.255.0",
                254,
            ),
            (
                "10.1.2.8/30",
                "10.1.2.9",
                "10.1.2.10",
                "10.1.2.11",
                "255.255.255.252",
                2,
            ),
        ];
        for (s, first, last, bcast, mask, count) in cases {
            let s: Subnet = s.parse().unwrap();
            assert_eq!(s.first_host(), ip(first), "{s}");
            assert_eq!(s.last_host(), ip(last), "{s}");
            assert_eq!(s.broadcast(), ip(bcast), "{s}");
            assert_eq!(s.netmask(), ip(mask), "{s}");
            assert_eq!(s.host_count(), count, "{s}");
        }
    }
}
