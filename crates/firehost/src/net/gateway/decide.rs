//! What a VM's policy says of a name, an address, and an address a name
//! resolved to: one place for the resolver and the proxy, agreeing with
//! the order the VM's nftables chain checks things in (the VM's own
//! rules, then the host's denied ranges, then the default).

use std::net::Ipv4Addr;

use crate::net::ipam::Subnet;
use crate::vocab::{Cidr, DomainPattern, EgressAction, EgressPolicy, Proto};

/// The host's side of every decision.
#[derive(Debug, Clone)]
pub struct HostRules {
    /// Ranges no VM reaches unless its own rule allows them.
    pub deny: Vec<Cidr>,
    /// DNS-over-HTTPS endpoints by name: refused to VMs with domain rules
    /// unless a rule allows them by name.
    pub doh_names: Vec<DomainPattern>,
    /// DNS-over-HTTPS endpoints by address: refused to VMs with domain
    /// rules unless a rule of theirs allows them.
    pub doh_addresses: Vec<Ipv4Addr>,
    /// The guest subnet: never a destination through the gateway.
    pub subnet: Subnet,
}

impl HostRules {
    /// Whether `policy` lets a VM resolve and connect to `name`: the first
    /// domain rule that matches decides; a name no rule matches is a `DoH`
    /// endpoint's (refused) or falls to the default.
    pub(crate) fn name_allowed(&self, policy: &EgressPolicy, name: &str) -> bool {
        match policy.name_verdict(name) {
            Some(action) => action == EgressAction::Allow,
            None if self.doh_names.iter().any(|d| d.matches(name)) => false,
            None => policy.default_action() == EgressAction::Allow,
        }
    }

    /// Whether `policy` lets a VM open a TCP connection to `ip:port`, as
    /// its chain would: the VM's rules, then the host's denied ranges,
    /// then the default. Link-local and the guest subnet never.
    pub(crate) fn address_allowed(&self, policy: &EgressPolicy, ip: Ipv4Addr, port: u16) -> bool {
        if ip.is_link_local() || self.subnet.contains(ip) {
            return false;
        }
        match policy.net_verdict(ip, Some(Proto::Tcp), Some(port)) {
            Some(action) => action == EgressAction::Allow,
            None if self.deny.iter().any(|c| c.contains(ip)) => false,
            None if self.doh_addresses.contains(&ip) => false,
            None => policy.default_action() == EgressAction::Allow,
        }
    }

    /// Whether the gateway may connect a VM to `ip:port`, which an allowed
    /// name resolved to (the name, not the address, was allowed): only if
    /// it is not in a denied range (a name pointing into the LAN is the
    /// oldest trick), unless the VM's own rule allows it, and never an
    /// address its rules deny.
    pub(crate) fn resolved_usable(&self, policy: &EgressPolicy, ip: Ipv4Addr, port: u16) -> bool {
        if self.never(ip) {
            return false;
        }
        match policy.net_verdict(ip, Some(Proto::Tcp), Some(port)) {
            Some(action) => action == EgressAction::Allow,
            None => !self.deny.iter().any(|c| c.contains(ip)),
        }
    }

    /// Whether `ip` is an address no answer may lead a VM to, whatever its
    /// rules: link-local, loopback, unspecified, or the guest subnet.
    fn never(&self, ip: Ipv4Addr) -> bool {
        ip.is_link_local() || ip.is_loopback() || ip.is_unspecified() || self.subnet.contains(ip)
    }

    /// Whether an address in an answer for an allowed name may be opened
    /// to the VM in the firewall (for any port): not a special address,
    /// and not in a denied range unless one of the VM's own rules allows
    /// part of it. The VM's chain checks its own rules first, so its deny
    /// rules still win.
    pub(crate) fn learnable(&self, policy: &EgressPolicy, ip: Ipv4Addr) -> bool {
        if self.never(ip) {
            return false;
        }
        !self.deny.iter().any(|c| c.contains(ip))
            || policy
                .net_rules()
                .any(|(action, m)| action == EgressAction::Allow && m.cidr.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::EgressRule;

    fn host() -> HostRules {
        HostRules {
            deny: crate::net::host::PRIVATE_RANGES.to_vec(),
            doh_names: vec!["dns.google".parse().unwrap()],
            doh_addresses: vec![Ipv4Addr::new(8, 8, 8, 8)],
            subnet: "172.30.0.0/16".parse().unwrap(),
        }
    }

    #[test]
    fn names_follow_the_first_matching_rule_then_the_doh_list_then_the_default() {
        let policy = EgressPolicy::new(
            EgressAction::Deny,
            vec![
                EgressRule::deny_domain("evil.example.com".parse().unwrap()),
                EgressRule::allow_domain("*.example.com".parse().unwrap()),
            ],
        )
        .unwrap();
        let host = host();
        assert!(host.name_allowed(&policy, "www.example.com"));
        assert!(!host.name_allowed(&policy, "evil.example.com"));
        assert!(!host.name_allowed(&policy, "example.org"));
        let open = EgressPolicy::new(
            EgressAction::Allow,
            vec![EgressRule::deny_domain("evil.example.com".parse().unwrap())],
        )
        .unwrap();
        assert!(host.name_allowed(&open, "example.org"));
        assert!(!host.name_allowed(&open, "dns.google"), "a DoH endpoint");
    }

    #[test]
    fn resolved_addresses_in_denied_ranges_are_unusable_unless_a_rule_allows_them() {
        let host = host();
        let open = EgressPolicy::open();
        let public = Ipv4Addr::new(203, 0, 113, 5);
        let lan = Ipv4Addr::new(10, 1, 2, 3);
        assert!(host.resolved_usable(&open, public, 443));
        assert!(!host.resolved_usable(&open, lan, 443));
        assert!(!host.resolved_usable(&open, Ipv4Addr::new(169, 254, 169, 254), 80));
        assert!(!host.resolved_usable(&open, Ipv4Addr::new(172, 30, 0, 9), 80));
        let lan_ok = EgressPolicy::new(
            EgressAction::Deny,
            vec![EgressRule::allow("10.0.0.0/8:443".parse().unwrap())],
        )
        .unwrap();
        assert!(host.resolved_usable(&lan_ok, lan, 443));
        assert!(!host.resolved_usable(&lan_ok, lan, 80));
        assert!(host.address_allowed(&lan_ok, lan, 443));
        assert!(!host.address_allowed(&lan_ok, public, 443), "default deny");
        assert!(host.address_allowed(&open, public, 443));
        assert!(!host.address_allowed(&open, Ipv4Addr::new(8, 8, 8, 8), 443), "DoH");
    }
}
