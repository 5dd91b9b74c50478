//! Ports: a host port forwarded to a guest port, and a host service
//! guests may reach.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A transport protocol of a published port or a host service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Why a port or port mapping did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not {expected}")]
pub struct PortSyntaxError {
    text: String,
    expected: &'static str,
}

/// Splits an optional `/tcp` or `/udp` suffix off `text`.
fn split_proto(text: &str) -> Option<(&str, Proto)> {
    match text.rsplit_once('/') {
        None => Some((text, Proto::Tcp)),
        Some((rest, "tcp")) => Some((rest, Proto::Tcp)),
        Some((rest, "udp")) => Some((rest, Proto::Udp)),
        Some(_) => None,
    }
}

/// Parses a port number 1–65535.
fn parse_port(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|p| *p != 0)
}

/// A host port forwarded to a guest port: `HOST:GUEST[/tcp|/udp]`.
///
/// # Examples
///
/// ```
/// use firehost::net::firewall::{PortMapping, Proto};
///
/// let m: PortMapping = "8080:80".parse().unwrap();
/// assert_eq!((m.proto, m.host_port, m.guest_port), (Proto::Tcp, 8080, 80));
/// let m: PortMapping = "5353:53/udp".parse().unwrap();
/// assert_eq!(m.proto, Proto::Udp);
/// assert!("0:80".parse::<PortMapping>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortMapping {
    /// The protocol.
    pub proto: Proto,
    /// The port on the host's own addresses.
    pub host_port: u16,
    /// The port in the guest.
    pub guest_port: u16,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.host_port, self.guest_port, self.proto)
    }
}

impl FromStr for PortMapping {
    type Err = PortSyntaxError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || PortSyntaxError {
            text: text.to_owned(),
            expected: "HOST:GUEST[/tcp|/udp] with ports 1-65535",
        };
        let (ports, proto) = split_proto(text).ok_or_else(err)?;
        let (host, guest) = ports.split_once(':').ok_or_else(err)?;
        Ok(PortMapping {
            proto,
            host_port: parse_port(host).ok_or_else(err)?,
            guest_port: parse_port(guest).ok_or_else(err)?,
        })
    }
}

/// A service on the host that guests may reach at the gateway address:
/// `PORT[/tcp|/udp]` (a DNS forwarder, say `53/udp`).
///
/// # Examples
///
/// ```
/// use firehost::net::firewall::{HostService, Proto};
///
/// let s: HostService = "53/udp".parse().unwrap();
/// assert_eq!((s.proto, s.port), (Proto::Udp, 53));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostService {
    /// The protocol.
    pub proto: Proto,
    /// The port.
    pub port: u16,
}

impl FromStr for HostService {
    type Err = PortSyntaxError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || PortSyntaxError {
            text: text.to_owned(),
            expected: "PORT[/tcp|/udp] with a port 1-65535",
        };
        let (port, proto) = split_proto(text).ok_or_else(err)?;
        Ok(HostService {
            proto,
            port: parse_port(port).ok_or_else(err)?,
        })
    }
}

impl fmt::Display for HostService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.proto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_parse_and_print() {
        let m: PortMapping = "65535:1/udp".parse().unwrap();
        assert_eq!(m.to_string(), "65535:1/udp");
        for bad in [
            "", "80", ":80", "80:", "0:1", "1:0", "1:2/sctp", "70000:1", "a:b", "1:2/",
        ] {
            assert!(bad.parse::<PortMapping>().is_err(), "{bad:?}");
        }
        let s: HostService = "53".parse().unwrap();
        assert_eq!(s.proto, Proto::Tcp);
        assert!("53/icmp".parse::<HostService>().is_err());
    }
}
