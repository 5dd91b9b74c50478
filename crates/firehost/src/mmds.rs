//! The metadata service (MMDS): what a VM's guest reads at
//! `169.254.169.254`, and how it is refreshed for clones.
//!
//! A VM whose spec has [`MmdsSpec`] (it needs the default network: the
//! service answers on the guest's `eth0`) gets `PUT /mmds/config` and
//! `PUT /mmds` at create. firehost adds one key to the caller's data,
//! `"firehost"`, with the VM's identity ([`identity`]): its id, the
//! guest's own address and MAC, the gateway, the DNS servers, the address
//! the host and its peers reach it at (`host_ip`: a restored guest keeps
//! its snapshot's address, which its namespace translates to this one) and
//! the snapshot it was restored from. A guest (or the image's boot scripts)
//! reads it to learn who it is, which matters after a clone: Firecracker
//! keeps the MMDS configuration in a snapshot but not the data store, so a
//! restore writes the data again, with the clone's own identity, before the
//! guest resumes.
//!
//! Every process in the guest can read the MMDS: put no secrets in it (the
//! agent's token is never there).

use serde_json::{Map, Value, json};

use crate::VmId;
use crate::id::SnapshotName;
use crate::net::host::VmNet;

pub use crate::vocab::{MmdsSpec, MmdsVersion};

/// The `"firehost"` object firehost adds to a VM's metadata: `vm`, `ip`,
/// `prefix_len`, `gateway`, `mac` (the guest's own), `host_ip`, `dns` and
/// `restored_from`.
pub fn identity(vm: &VmId, net: Option<&VmNet>, restored_from: Option<&SnapshotName>) -> Value {
    let guest = net.map(VmNet::guest_net);
    json!({
        "vm": vm.as_str(),
        "ip": guest.as_ref().map(|g| g.ip.to_string()),
        "prefix_len": net.map(|n| n.prefix_len),
        "gateway": net.map(|n| n.gateway.to_string()),
        "mac": guest.as_ref().map(|g| g.mac.to_string()),
        "host_ip": net.map(|n| n.ip.to_string()),
        "dns": net.map(|n| n.dns.iter().map(ToString::to_string).collect::<Vec<_>>()),
        "restored_from": restored_from.map(SnapshotName::as_str),
    })
}

/// The caller's `data` with the `"firehost"` key set to `identity`
/// (replacing one the caller put there).
pub fn contents(data: &Value, identity: Value) -> firehost_api::MmdsContentsObject {
    let mut map = match data {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    map.insert("firehost".to_owned(), identity);
    firehost_api::MmdsContentsObject(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_key_is_added_and_wins() {
        let vm = VmId::new("clone-1").unwrap();
        let snap: SnapshotName = "base".parse().unwrap();
        let data = json!({"job": 7, "firehost": "caller's"});
        let c = contents(&data, identity(&vm, None, Some(&snap)));
        assert_eq!(c.0["job"], 7);
        assert_eq!(c.0["firehost"]["vm"], "clone-1");
        assert_eq!(c.0["firehost"]["restored_from"], "base");
        assert!(c.0["firehost"]["ip"].is_null());
        let c = contents(&Value::Null, identity(&vm, None, None));
        assert_eq!(c.0.len(), 1);
    }
}
