//! What a VM spec asks of the metadata service (see [`crate::mmds`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use firehost_api::MmdsVersion;

/// What a VM spec asks of the metadata service.
///
/// # Examples
///
/// ```
/// use firehost::mmds::MmdsSpec;
///
/// let spec = MmdsSpec {
///     data: serde_json::json!({"job": {"id": 42}}),
///     ..MmdsSpec::default()
/// };
/// assert!(spec.data.is_object());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsSpec {
    /// The protocol: V2 (session tokens, the default: safer against
    /// request forgery from the guest) or V1.
    #[serde(default = "v2")]
    pub version: MmdsVersion,
    /// The caller's metadata: a JSON object (`null` means `{}`).
    #[serde(default = "empty_object")]
    pub data: Value,
}

fn v2() -> MmdsVersion {
    MmdsVersion::V2
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

impl Default for MmdsSpec {
    fn default() -> Self {
        MmdsSpec {
            version: MmdsVersion::V2,
            data: empty_object(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_default_to_v2_and_an_empty_object() {
        let spec: MmdsSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec, MmdsSpec::default());
        assert!(serde_json::from_str::<MmdsSpec>(r#"{"nope": 1}"#).is_err());
    }
}
