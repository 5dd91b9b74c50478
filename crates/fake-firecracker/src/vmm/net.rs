//! `PUT /network-interfaces/{id}`: NICs on host TAPs (see [`crate::tap`]).

use firehost_api::NetworkInterface;

use super::{ActionError, Reply, Resources};

/// Opens the interface's TAP (when it exists), then records the interface.
pub(super) fn put_net(
    taps: &mut std::collections::HashMap<String, std::os::fd::OwnedFd>,
    res: &mut Resources,
    mut iface: NetworkInterface,
) -> Result<Reply, ActionError> {
    check_mac_free(res, &iface)?;
    iface.rx_rate_limiter = super::limits::configured(iface.rx_rate_limiter);
    iface.tx_rate_limiter = super::limits::configured(iface.tx_rate_limiter);
    // As Firecracker: an update drops the old device (and its TAP) first,
    // so a failed update leaves none, and the new one goes to the end.
    if let Some(i) = res
        .network_interfaces
        .iter()
        .position(|n| n.iface_id == iface.iface_id)
    {
        res.network_interfaces.swap_remove(i);
        taps.remove(&iface.iface_id);
        if let Some(mmds) = &res.mmds_config
            && mmds.network_interfaces.contains(&iface.iface_id)
        {
            res.mmds_config = None;
        }
    }
    if let Some(mtu) = iface.mtu
        && !(68..=65535).contains(&mtu)
    {
        return Err(ActionError::Network(format!(
            "Could not create the network device: MTU {mtu} is out of range [68, 65535]"
        )));
    }
    let tap = crate::tap::attach(&iface.host_dev_name)
        .map_err(|e| ActionError::Network(crate::tap::open_error(&iface.host_dev_name, &e)))?;
    taps.insert(iface.iface_id.clone(), tap);
    res.network_interfaces.push(iface);
    Ok(Reply::Empty)
}

/// Refuses a MAC another interface has.
pub(super) fn check_mac_free(res: &Resources, iface: &NetworkInterface) -> Result<(), ActionError> {
    if let Some(mac) = &iface.guest_mac
        && res
            .network_interfaces
            .iter()
            .any(|n| n.iface_id != iface.iface_id && n.guest_mac.as_ref() == Some(mac))
    {
        return Err(ActionError::Network(format!(
            "The MAC address is already in use: {mac}"
        )));
    }
    Ok(())
}
