//! MAC addresses, parsed strictly, and the ones firehost derives from VM
//! ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::VmId;

/// A MAC (Ethernet hardware) address, written `06:00:ac:1e:00:02`.
///
/// # Examples
///
/// ```
/// use firehost::{VmId, net::ipam::MacAddr};
///
/// let mac = MacAddr::for_vm(&VmId::new("web-1").unwrap(), 0);
/// assert_eq!(mac.octets()[0], 0x06);
/// assert!(mac.is_unicast() && mac.is_locally_administered());
/// assert_eq!(mac.to_string().parse::<MacAddr>().unwrap(), mac);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// The first octet of every derived MAC: locally administered (bit 1
    /// set), unicast (bit 0 clear).
    pub const DERIVED_PREFIX: u8 = 0x06;

    /// Wraps six octets.
    pub const fn new(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }

    /// The six octets.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Whether the address is unicast (the I/G bit of the first octet is
    /// clear).
    pub const fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0
    }

    /// Whether the address is locally administered (the U/L bit of the
    /// first octet is set).
    pub const fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// The deterministic MAC of `vm`, candidate number `attempt` (0 first;
    /// the allocator moves on to 1, 2, … only when a live VM already holds
    /// the candidate). `06:` and five bytes of
    /// `BLAKE3("firehost-mac\0" ‖ id ‖ attempt as u32 LE)`.
    pub fn for_vm(vm: &VmId, attempt: u32) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"firehost-mac\0");
        hasher.update(vm.as_str().as_bytes());
        hasher.update(&attempt.to_le_bytes());
        let hash = hasher.finalize();
        let h = hash.as_bytes();
        MacAddr([Self::DERIVED_PREFIX, h[0], h[1], h[2], h[3], h[4]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

/// A string that is not a MAC address: six hex octets separated by `:`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a MAC address like 06:00:ac:1e:00:02")]
pub struct MacSyntaxError {
    text: String,
}

impl FromStr for MacAddr {
    type Err = MacSyntaxError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || MacSyntaxError { text: s.to_owned() };
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(syntax)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(syntax());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
        }
        if parts.next().is_some() {
            return Err(syntax());
        }
        Ok(MacAddr(octets))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(s: &str) -> VmId {
        VmId::new(s).unwrap()
    }

    #[test]
    fn derived_macs_are_stable_locally_administered_unicast() {
        let m = MacAddr::for_vm(&vm("web-1"), 0);
        assert_eq!(m, MacAddr::for_vm(&vm("web-1"), 0), "stable");
        assert_ne!(m, MacAddr::for_vm(&vm("web-1"), 1), "attempts differ");
        assert_ne!(m, MacAddr::for_vm(&vm("web-2"), 0), "ids differ");
        assert_eq!(m.octets()[0], 0x06);
        assert!(m.is_unicast() && m.is_locally_administered());
    }

    #[test]
    fn mac_parsing_is_strict() {
        let cases = [
            ("06:00:ac:1e:00:02", true),
            ("06:00:AC:1E:00:02", true),
            ("06:00:ac:1e:00", false),
            ("06:00:ac:1e:00:02:03", false),
            ("06-00-ac-1e-00-02", false),
            ("6:00:ac:1e:00:02", false),
            ("06:00:ac:1e:00:+2", false),
            ("", false),
        ];
        for (text, ok) in cases {
            assert_eq!(text.parse::<MacAddr>().is_ok(), ok, "{text}");
        }
    }
}
