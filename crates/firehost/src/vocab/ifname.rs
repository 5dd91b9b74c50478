//! Interface names, with the kernel's length limit and a character set
//! that needs no quoting in netlink messages, nftables rules or records.

use std::fmt;

/// The kernel's `IFNAMSIZ`: interface names are at most 15 bytes plus NUL.
pub const IFNAMSIZ: usize = 16;

/// The longest interface name: `IFNAMSIZ - 1` bytes.
pub const MAX_IFNAME_LEN: usize = IFNAMSIZ - 1;

/// A network interface name firehost accepts:
/// `[A-Za-z0-9][A-Za-z0-9_-]{0,14}`.
///
/// The kernel itself allows more (anything but `/`, `:`, whitespace, `.`
/// and `..`), but names we create or are given go into netlink messages,
/// nftables rules and records, so we keep to a set that needs no quoting
/// anywhere.
///
/// # Examples
///
/// ```
/// use firehost::net::IfName;
///
/// assert!(IfName::new("fhbr0").is_ok());
/// assert!(IfName::new("a-name-too-long-x").is_err()); // 17 bytes
/// assert!(IfName::new("eth0:1").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct IfName(String);

/// Why a string is not a valid [`IfName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IfNameError {
    /// The name is empty.
    #[error("interface name is empty")]
    Empty,
    /// The name is longer than [`MAX_IFNAME_LEN`] bytes.
    #[error("interface name {name:?} is {len} bytes long; the kernel allows {MAX_IFNAME_LEN}")]
    TooLong {
        /// The name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The name has a character outside `[A-Za-z0-9_-]`, or starts with
    /// something other than a letter or digit.
    #[error(
        "interface name {name:?} has {ch:?} at byte {at}; allowed are A-Z, a-z, 0-9, '_' and '-' (not first)"
    )]
    BadChar {
        /// The name.
        name: String,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
}

impl IfName {
    /// Checks `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self, IfNameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(IfNameError::Empty);
        }
        if name.len() > MAX_IFNAME_LEN {
            return Err(IfNameError::TooLong {
                len: name.len(),
                name,
            });
        }
        for (at, ch) in name.char_indices() {
            let ok = ch.is_ascii_alphanumeric() || (at > 0 && (ch == '-' || ch == '_'));
            if !ok {
                return Err(IfNameError::BadChar { name, ch, at });
            }
        }
        Ok(IfName(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for IfName {
    type Err = IfNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IfName::new(s)
    }
}

impl<'de> serde::Deserialize<'de> for IfName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IfName::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_the_kernel_limit_and_our_charset() {
        let cases: &[(&str, bool)] = &[
            ("fhbr0", true),
            ("a", true),
            ("fh0123456789abc", true),   // 15 bytes
            ("fh0123456789abcd", false), // 16 bytes
            ("", false),
            ("-lead", false),
            ("_lead", false),
            ("tap_0-x", true),
            ("eth0:1", false),
            ("a/b", false),
            ("a b", false),
            (".", false),
            ("é", false),
        ];
        for (name, ok) in cases {
            assert_eq!(IfName::new(*name).is_ok(), *ok, "{name:?}");
        }
    }
}
