//! Network interfaces: `PUT` and `PATCH /network-interfaces/{iface_id}`.

use serde::{Deserialize, Serialize};

use crate::RateLimiter;

/// A virtio-net device backed by a host TAP device: body of
/// `PUT /network-interfaces/{iface_id}`, and an entry of
/// [`FullVmConfiguration::network_interfaces`](crate::FullVmConfiguration::network_interfaces).
///
/// # Examples
///
/// ```
/// use firehost_api::NetworkInterface;
///
/// let eth0 = NetworkInterface {
///     guest_mac: Some("06:00:ac:10:00:02".into()),
///     ..NetworkInterface::new("eth0", "fh-tap0")
/// };
/// let json = serde_json::to_value(&eth0).unwrap();
/// assert_eq!(json["host_dev_name"], "fh-tap0");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// MAC address the guest sees, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Name of the host TAP device.
    pub host_dev_name: String,
    /// Identifier of the interface; must match the `{iface_id}` in the path.
    pub iface_id: String,
    /// MTU advertised to the guest (68 to 65535). When absent the guest
    /// driver picks its own default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Limits on traffic from the host to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Limits on traffic from the guest to the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

impl NetworkInterface {
    /// Interface `iface_id` on TAP `host_dev_name`, every other option at
    /// Firecracker's defaults.
    pub fn new(iface_id: impl Into<String>, host_dev_name: impl Into<String>) -> Self {
        Self {
            guest_mac: None,
            host_dev_name: host_dev_name.into(),
            iface_id: iface_id.into(),
            mtu: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        }
    }
}

/// New rate limiters for an interface after boot: body of
/// `PATCH /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterface {
    /// Identifier of the interface to change.
    pub iface_id: String,
    /// New limits on traffic from the host to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// New limits on traffic from the guest to the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}
