//! The microVM metadata service: `/mmds` and `/mmds/config`.
//!
//! [`MmdsConfig`] says which network interfaces may reach the metadata
//! service, at which address and with which protocol version;
//! [`MmdsContentsObject`] is the metadata itself, an arbitrary JSON object.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Metadata service settings: body of `PUT /mmds/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    /// Protocol version; default [`MmdsVersion::V1`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<MmdsVersion>,
    /// Ids of the network interfaces (already configured) whose traffic to
    /// `ipv4_address` the metadata service intercepts.
    pub network_interfaces: Vec<String>,
    /// Link-local address of the service; default `169.254.169.254`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<Ipv4Addr>,
    /// Answer `text/plain` whatever the `Accept` header, like EC2's IMDS;
    /// default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds_compat: Option<bool>,
}

impl MmdsConfig {
    /// Serves the metadata to the given interfaces with every other option
    /// at Firecracker's defaults.
    pub fn new<I, S>(network_interfaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            version: None,
            network_interfaces: network_interfaces.into_iter().map(Into::into).collect(),
            ipv4_address: None,
            imds_compat: None,
        }
    }
}

/// Metadata service protocol version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MmdsVersion {
    /// Plain `GET` requests (the default).
    #[default]
    V1,
    /// Session-oriented: the guest first `PUT`s for a token.
    V2,
}

/// The metadata store's contents: body of `PUT` and `PATCH /mmds` (a JSON
/// merge patch for the latter), response of `GET /mmds`.
///
/// # Examples
///
/// ```
/// use firehost_api::MmdsContentsObject;
///
/// let contents: MmdsContentsObject =
///     serde_json::from_str(r#"{"latest":{"meta-data":{"ami-id":"ami-1"}}}"#).unwrap();
/// assert_eq!(contents.0["latest"]["meta-data"]["ami-id"], "ami-1");
/// assert!(serde_json::from_str::<MmdsContentsObject>("[1, 2]").is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MmdsContentsObject(pub serde_json::Map<String, serde_json::Value>);
