//! VM identifiers, validated once at the edge.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest VM id firehost accepts (it becomes part of paths and of
/// Firecracker's and the jailer's `--id`, which allow 64 characters).
pub const MAX_VM_ID_LEN: usize = 64;

/// The name of a VM: `[A-Za-z0-9][A-Za-z0-9_-]{0,63}`.
///
/// A `VmId` is checked when it is made, so code that holds one can put it in a
/// path or on a command line without further checks: it never contains `/`,
/// `.`, whitespace or a leading `-`.
///
/// # Examples
///
/// ```
/// use firehost::VmId;
///
/// let id: VmId = "web-1".parse().unwrap();
/// assert_eq!(id.as_str(), "web-1");
/// assert!("../etc".parse::<VmId>().is_err());
/// assert!("-flag".parse::<VmId>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct VmId(String);

/// Why a string is not a valid [`VmId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VmIdError {
    /// The id is empty.
    #[error("VM id is empty")]
    Empty,
    /// The id is longer than [`MAX_VM_ID_LEN`] bytes.
    #[error("VM id is {len} bytes long; the limit is {MAX_VM_ID_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The id does not start with an ASCII letter or digit.
    #[error("VM id must start with an ASCII letter or digit")]
    BadFirstChar,
    /// The id has a character outside `[A-Za-z0-9_-]`.
    #[error("VM id has the character {ch:?} at byte {at}; allowed are A-Z, a-z, 0-9, '_' and '-'")]
    BadChar {
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
}

impl VmId {
    /// Checks `id` and wraps it.
    pub fn new(id: impl Into<String>) -> Result<Self, VmIdError> {
        let id = id.into();
        validate(&id)?;
        Ok(VmId(id))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as Firecracker's `--id` takes it: Firecracker (and the
    /// jailer) allow only letters, digits and `-`, so `_` becomes `-`.
    /// Firecracker uses the id only to label its logs and metrics.
    ///
    /// ```
    /// use firehost::VmId;
    /// assert_eq!(VmId::new("job_7").unwrap().firecracker_id(), "job-7");
    /// ```
    pub fn firecracker_id(&self) -> String {
        self.0.replace('_', "-")
    }
}

/// Checks a name against the VM id rule; snapshot names share it.
pub(crate) fn validate(id: &str) -> Result<(), VmIdError> {
    let first = id.chars().next().ok_or(VmIdError::Empty)?;
    if id.len() > MAX_VM_ID_LEN {
        return Err(VmIdError::TooLong { len: id.len() });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(VmIdError::BadFirstChar);
    }
    match id
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        Some((at, ch)) => Err(VmIdError::BadChar { ch, at }),
        None => Ok(()),
    }
}

impl FromStr for VmId {
    type Err = VmIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VmId::new(s)
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for VmId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Records on disk are input too: a tampered record must not smuggle a path
// through an id, so deserialising validates.
impl<'de> Deserialize<'de> for VmId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        VmId::new(s).map_err(serde::de::Error::custom)
    }
}

/// Declares a name type with the rule of a [`VmId`] (so it is path-safe),
/// checked when made and when deserialised.
macro_rules! path_safe_name {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks and wraps a name.
            pub fn new(name: impl Into<String>) -> Result<Self, VmIdError> {
                let name = name.into();
                validate(&name)?;
                Ok($name(name))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = VmIdError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = VmIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

path_safe_name! {
    /// A snapshot's name: the same rule as a [`VmId`], so it is path-safe.
    /// (Here, beside `VmId`, so that records and metadata can name snapshots
    /// without depending on the snapshot subsystem.)
    ///
    /// ```
    /// use firehost::snapshot::SnapshotName;
    /// assert!("base-image".parse::<SnapshotName>().is_ok());
    /// assert!("../x".parse::<SnapshotName>().is_err());
    /// ```
    SnapshotName
}

path_safe_name! {
    /// A warm pool's name: the same rule as a [`VmId`], at most
    /// [`MAX_POOL_NAME_LEN`] bytes so that its members' names
    /// (`<pool>-<8 hex digits>`) are VM names.
    ///
    /// ```
    /// use firehost::manager::PoolName;
    /// assert!("py-sandbox".parse::<PoolName>().is_ok());
    /// assert!("../x".parse::<PoolName>().is_err());
    /// ```
    PoolName
}

/// The longest pool name a pool can be made with.
pub const MAX_POOL_NAME_LEN: usize = MAX_VM_ID_LEN - 9;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_accepted_or_rejected_by_the_documented_rule() {
        let long_ok = "a".repeat(64);
        let long_bad = "a".repeat(65);
        let cases: &[(&str, Result<(), VmIdError>)] = &[
            ("a", Ok(())),
            ("0", Ok(())),
            ("web-1_b", Ok(())),
            (&long_ok, Ok(())),
            ("", Err(VmIdError::Empty)),
            (&long_bad, Err(VmIdError::TooLong { len: 65 })),
            ("-a", Err(VmIdError::BadFirstChar)),
            ("_a", Err(VmIdError::BadFirstChar)),
            ("a/b", Err(VmIdError::BadChar { ch: '/', at: 1 })),
            ("a.b", Err(VmIdError::BadChar { ch: '.', at: 1 })),
            ("a b", Err(VmIdError::BadChar { ch: ' ', at: 1 })),
            ("aé", Err(VmIdError::BadChar { ch: 'é', at: 1 })),
        ];
        for (input, expected) in cases {
            assert_eq!(&VmId::new(*input).map(|_| ()), expected, "input {input:?}");
        }
    }

    #[test]
    fn deserialising_a_bad_id_fails() {
        assert!(serde_json::from_str::<VmId>("\"../x\"").is_err());
        assert_eq!(
            serde_json::from_str::<VmId>("\"ok\"").unwrap().as_str(),
            "ok"
        );
    }

    proptest::proptest! {
        #[test]
        fn every_accepted_id_is_path_safe(s in "\\PC{0,70}") {
            if let Ok(id) = VmId::new(s) {
                proptest::prop_assert!(!id.as_str().contains(['/', '.', '\0', ' ']));
                proptest::prop_assert!(!id.as_str().starts_with('-'));
                proptest::prop_assert!(id.as_str().len() <= MAX_VM_ID_LEN);
            }
        }
    }
}
