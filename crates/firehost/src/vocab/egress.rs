//! What a VM may reach beyond the host: [`EgressPolicy`], its ordered
//! [`EgressRule`]s, and the words they are written in ([`Cidr`],
//! [`PortRange`], [`DomainPattern`]).
//!
//! A policy is checked as a whole when it is built or read
//! ([`EgressPolicy::new`], and on deserialisation): a rule that an earlier
//! rule already covers (it could never match) is refused, because whoever
//! wrote it meant something the policy would not do.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Proto;

/// The most rules one policy may hold: a per-VM chain is walked for each
/// new connection, and 256 ordered rules is far past any real allowlist.
pub const MAX_EGRESS_RULES: usize = 256;

/// An IPv4 network, `A.B.C.D/N`, or one address (`A.B.C.D`, a `/32`).
/// Bits past the prefix must be zero: `10.0.0.1/8` is refused, as it is
/// almost always a typo.
///
/// # Examples
///
/// ```
/// use firehost::vocab::Cidr;
///
/// let net: Cidr = "10.0.0.0/8".parse().unwrap();
/// assert!(net.contains("10.1.2.3".parse().unwrap()));
/// assert_eq!("1.2.3.4".parse::<Cidr>().unwrap().to_string(), "1.2.3.4/32");
/// assert!("10.0.0.1/8".parse::<Cidr>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Cidr {
    /// The network `network/prefix_len`; `None` if the prefix is over 32
    /// or `network` has bits set past it.
    pub const fn new(network: Ipv4Addr, prefix_len: u8) -> Option<Cidr> {
        if prefix_len > 32 {
            return None;
        }
        let bits = network.to_bits();
        if bits & !mask(prefix_len) != 0 {
            return None;
        }
        Some(Cidr {
            network,
            prefix_len,
        })
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length, 0–32.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        ip.to_bits() & mask(self.prefix_len) == self.network.to_bits()
    }

    /// Whether every address of `other` is in this network.
    pub fn covers(&self, other: &Cidr) -> bool {
        self.prefix_len <= other.prefix_len && self.contains(other.network)
    }
}

/// The netmask of a prefix length (0–32) as bits.
const fn mask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        n => u32::MAX << (32 - n as u32),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = EgressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || EgressError::Syntax {
            text: text.to_owned(),
            expected: "an IPv4 address or network A.B.C.D[/N] with no bits set past the prefix",
        };
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => {
                (addr, len.parse::<u8>().map_err(|_| err())?)
            }
            Some(_) => return Err(err()),
            None => (text, 32),
        };
        let network = addr.parse::<Ipv4Addr>().map_err(|_| err())?;
        Cidr::new(network, len).ok_or_else(err)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Ports `first..=last`, both 1–65535: `443` or `8000-8100`.
///
/// # Examples
///
/// ```
/// use firehost::vocab::PortRange;
///
/// let r: PortRange = "8000-8100".parse().unwrap();
/// assert_eq!((r.first(), r.last()), (8000, 8100));
/// assert_eq!("443".parse::<PortRange>().unwrap().to_string(), "443");
/// assert!("100-90".parse::<PortRange>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// `first..=last`; `None` if either is 0 or they are out of order.
    pub const fn new(first: u16, last: u16) -> Option<PortRange> {
        if first == 0 || first > last {
            return None;
        }
        Some(PortRange { first, last })
    }

    /// One port.
    pub const fn single(port: u16) -> Option<PortRange> {
        PortRange::new(port, port)
    }

    /// The first port.
    pub fn first(&self) -> u16 {
        self.first
    }

    /// The last port.
    pub fn last(&self) -> u16 {
        self.last
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// Whether every port of `other` is in this range.
    pub fn covers(&self, other: &PortRange) -> bool {
        self.first <= other.first && other.last <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for PortRange {
    type Err = EgressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || EgressError::Syntax {
            text: text.to_owned(),
            expected: "a port or port range like 443 or 8000-8100, ports 1-65535",
        };
        let port = |p: &str| {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            p.parse::<u16>().map_err(|_| err())
        };
        let (first, last) = match text.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(text)?, port(text)?),
        };
        PortRange::new(first, last).ok_or_else(err)
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A DNS name a rule matches: `example.com` matches that name only,
/// `*.example.com` every name under it (`a.example.com`,
/// `a.b.example.com`) but not `example.com` itself.
///
/// Names are kept in lower case without a trailing dot. Labels are 1–63
/// of `a-z`, `0-9`, `-` and `_` (not starting or ending with `-`), the
/// whole name at most 253 characters; internationalised names are written
/// in their `xn--` form.
///
/// # Examples
///
/// ```
/// use firehost::vocab::DomainPattern;
///
/// let any: DomainPattern = "*.PyPI.org".parse().unwrap();
/// assert_eq!(any.to_string(), "*.pypi.org");
/// assert!(any.matches("files.pypi.org"));
/// assert!(!any.matches("pypi.org"));
/// assert!("exa mple.com".parse::<DomainPattern>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainPattern {
    /// The name, or for a wildcard the name under which it matches.
    name: String,
    wildcard: bool,
}

impl DomainPattern {
    /// Whether `name` (any case, with or without a trailing dot) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        if !self.wildcard {
            return name.eq_ignore_ascii_case(&self.name);
        }
        // `name` must end in ".<suffix>" with at least one label before.
        let (n, s) = (name.len(), self.name.len());
        n > s + 1
            && name.as_bytes()[n - s - 1] == b'.'
            && name[n - s..].eq_ignore_ascii_case(&self.name)
    }

    /// Whether every name this pattern matches, `other` matches too.
    fn covered_by(&self, other: &DomainPattern) -> bool {
        match (self.wildcard, other.wildcard) {
            (false, _) => other.matches(&self.name),
            (true, true) => self.name == other.name || other.matches(&self.name),
            (true, false) => false,
        }
    }

    /// Whether this is a `*.` pattern.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Whether `name` (lower case, no trailing dot) is a DNS name a
    /// pattern could match: the label rules above, no wildcard.
    ///
    /// ```
    /// use firehost::vocab::DomainPattern;
    ///
    /// assert!(DomainPattern::is_name("files.pypi.org"));
    /// assert!(!DomainPattern::is_name("-x.org"));
    /// assert!(!DomainPattern::is_name("*.pypi.org"));
    /// ```
    pub fn is_name(name: &str) -> bool {
        valid_name(name)
    }
}

/// Whether `name` is a valid DNS name (lower case, no trailing dot).
fn valid_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            (1..=63).contains(&b.len())
                && b.iter().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_'
                })
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.name)
    }
}

impl FromStr for DomainPattern {
    type Err = EgressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let lower = text.to_ascii_lowercase();
        let trimmed = lower.strip_suffix('.').unwrap_or(&lower);
        let (name, wildcard) = match trimmed.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (trimmed, false),
        };
        // A wildcard over a top-level domain (`*.com`) would allow most of
        // the internet under the name of an allowlist.
        if !valid_name(name) || (wildcard && !name.contains('.')) {
            return Err(EgressError::Syntax {
                text: text.to_owned(),
                expected: "a DNS name like example.com or *.example.com (a wildcard needs at least two labels after it)",
            });
        }
        Ok(DomainPattern {
            name: name.to_owned(),
            wildcard,
        })
    }
}

impl Serialize for DomainPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DomainPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What a rule, or a policy's default, does with what it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EgressAction {
    /// Let it through.
    #[default]
    Allow,
    /// Drop it (and count it).
    Deny,
}

impl fmt::Display for EgressAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EgressAction::Allow => "allow",
            EgressAction::Deny => "deny",
        })
    }
}

impl FromStr for EgressAction {
    type Err = EgressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "allow" => Ok(EgressAction::Allow),
            "deny" => Ok(EgressAction::Deny),
            _ => Err(EgressError::Syntax {
                text: text.to_owned(),
                expected: "allow or deny",
            }),
        }
    }
}

/// Addresses a rule matches: a network, optionally narrowed to a protocol
/// and a port range. Written `CIDR[:PORTS][/tcp|/udp]`: with ports and no
/// protocol it means TCP; with neither it means every protocol (ICMP too).
///
/// # Examples
///
/// ```
/// use firehost::vocab::{NetMatch, Proto};
///
/// let m: NetMatch = "10.0.0.0/8:8000-8100/udp".parse().unwrap();
/// assert_eq!(m.proto, Some(Proto::Udp));
/// let m: NetMatch = "203.0.113.7:443".parse().unwrap();
/// assert_eq!((m.proto, m.to_string().as_str()), (Some(Proto::Tcp), "203.0.113.7/32:443/tcp"));
/// let m: NetMatch = "0.0.0.0/0".parse().unwrap();
/// assert_eq!((m.proto, m.ports), (None, None));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetMatch {
    /// Destination addresses.
    pub cidr: Cidr,
    /// The protocol; `None`: any.
    pub proto: Option<Proto>,
    /// Destination ports; `None`: any. Needs a protocol.
    pub ports: Option<PortRange>,
}

impl NetMatch {
    /// Whether a packet to `ip` with `proto` and destination `port` (if
    /// the protocol has ports) matches.
    pub fn matches(&self, ip: Ipv4Addr, proto: Option<Proto>, port: Option<u16>) -> bool {
        self.cidr.contains(ip)
            && self.proto.is_none_or(|p| Some(p) == proto)
            && self
                .ports
                .is_none_or(|r| port.is_some_and(|port| r.contains(port)))
    }

    /// Whether everything `self` matches, `other` matches too.
    fn covered_by(&self, other: &NetMatch) -> bool {
        other.cidr.covers(&self.cidr)
            && other.proto.is_none_or(|p| self.proto == Some(p))
            && other
                .ports
                .is_none_or(|r| self.ports.is_some_and(|mine| r.covers(&mine)))
    }
}

impl fmt::Display for NetMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr)?;
        if let Some(ports) = self.ports {
            write!(f, ":{ports}")?;
        }
        if let Some(proto) = self.proto {
            write!(f, "/{proto}")?;
        }
        Ok(())
    }
}

impl FromStr for NetMatch {
    type Err = EgressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (rest, proto) = match text.rsplit_once('/') {
            Some((rest, "tcp")) => (rest, Some(Proto::Tcp)),
            Some((rest, "udp")) => (rest, Some(Proto::Udp)),
            _ => (text, None),
        };
        let (cidr, ports) = match rest.split_once(':') {
            Some((cidr, ports)) => (cidr, Some(ports.parse::<PortRange>()?)),
            None => (rest, None),
        };
        Ok(NetMatch {
            cidr: cidr.parse()?,
            proto: proto.or(ports.map(|_| Proto::Tcp)),
            ports,
        })
    }
}

impl Serialize for NetMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NetMatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What one rule matches: addresses, or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressTarget {
    /// Packets to these addresses (and protocol and ports).
    Net(NetMatch),
    /// Connections to and DNS answers for names this pattern matches.
    Domain(DomainPattern),
}

impl fmt::Display for EgressTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressTarget::Net(m) => m.fmt(f),
            EgressTarget::Domain(d) => d.fmt(f),
        }
    }
}

/// One ordered rule: what it matches and what it does.
///
/// # Examples
///
/// ```
/// use firehost::vocab::EgressRule;
///
/// let rule = EgressRule::allow("10.0.0.0/8:443".parse().unwrap());
/// assert_eq!(rule.to_string(), "allow 10.0.0.0/8:443/tcp");
/// let rule = EgressRule::allow_domain("*.pypi.org".parse().unwrap());
/// assert_eq!(rule.to_string(), "allow domain *.pypi.org");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EgressRule {
    /// Allow or deny.
    pub action: EgressAction,
    /// What it matches.
    #[serde(flatten)]
    pub target: EgressTarget,
}

impl EgressRule {
    /// Allows packets that `net` matches.
    pub fn allow(net: NetMatch) -> Self {
        EgressRule {
            action: EgressAction::Allow,
            target: EgressTarget::Net(net),
        }
    }

    /// Denies packets that `net` matches.
    pub fn deny(net: NetMatch) -> Self {
        EgressRule {
            action: EgressAction::Deny,
            target: EgressTarget::Net(net),
        }
    }

    /// Allows names that `name` matches.
    pub fn allow_domain(name: DomainPattern) -> Self {
        EgressRule {
            action: EgressAction::Allow,
            target: EgressTarget::Domain(name),
        }
    }

    /// Denies names that `name` matches.
    pub fn deny_domain(name: DomainPattern) -> Self {
        EgressRule {
            action: EgressAction::Deny,
            target: EgressTarget::Domain(name),
        }
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            EgressTarget::Net(m) => write!(f, "{} {m}", self.action),
            EgressTarget::Domain(d) => write!(f, "{} domain {d}", self.action),
        }
    }
}

/// Why an egress rule or policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EgressError {
    /// A word of a rule did not parse.
    #[error("{text:?} is not {expected}")]
    Syntax {
        /// The text.
        text: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A rule can never match: an earlier rule covers everything it does.
    #[error(
        "egress rule {index} ({rule}) can never match: rule {by} ({earlier}) comes first and covers it"
    )]
    Shadowed {
        /// The rule's position, from 0.
        index: usize,
        /// The rule.
        rule: String,
        /// The earlier rule's position.
        by: usize,
        /// The earlier rule.
        earlier: String,
    },
    /// Ports without a protocol (only reachable by building a
    /// [`NetMatch`] by hand).
    #[error("egress rule {index} ({rule}) names ports but no protocol")]
    PortsWithoutProto {
        /// The rule's position.
        index: usize,
        /// The rule.
        rule: String,
    },
    /// More than [`MAX_EGRESS_RULES`] rules.
    #[error("an egress policy holds at most {MAX_EGRESS_RULES} rules, not {count}")]
    TooManyRules {
        /// How many were given.
        count: usize,
    },
}

/// What a VM may reach beyond the host: ordered rules, the first match
/// deciding, then a default (part of [`NetSpec`](super::NetSpec)).
///
/// - **Address rules** ([`EgressTarget::Net`]) decide each new connection
///   (or UDP flow, or ICMP exchange) the guest opens through the uplink,
///   in the kernel: one nftables chain per VM. Replies are let in.
/// - **Domain rules** ([`EgressTarget::Domain`]) decide names: which names
///   the gateway's resolver answers for the VM, and which TLS and HTTP
///   names its proxy connects to. Addresses learned from answers for
///   allowed names are let through until their TTL runs out.
/// - The host adds its own rules after the VM's and before the default
///   ([`NetworkConfig::egress_deny`](crate::net::host::NetworkConfig::egress_deny)),
///   so a VM reaches private ranges only when its own rule allows them.
///
/// The default policy, `allow` with no rules, leaves the VM as free as the
/// host's rules let it be.
///
/// # Examples
///
/// ```
/// use firehost::vocab::{EgressAction, EgressPolicy, EgressRule};
///
/// // Only the package index and one internal API, over HTTPS.
/// let policy = EgressPolicy::new(
///     EgressAction::Deny,
///     vec![
///         EgressRule::allow("10.20.0.5:443".parse().unwrap()),
///         EgressRule::allow_domain("pypi.org".parse().unwrap()),
///         EgressRule::allow_domain("*.pythonhosted.org".parse().unwrap()),
///     ],
/// )
/// .unwrap();
/// assert!(policy.has_domain_rules());
///
/// // A rule that cannot match is refused.
/// let shadowed = EgressPolicy::new(
///     EgressAction::Deny,
///     vec![
///         EgressRule::deny("10.0.0.0/8".parse().unwrap()),
///         EgressRule::allow("10.20.0.5:443".parse().unwrap()),
///     ],
/// );
/// assert!(shadowed.is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct EgressPolicy {
    default: EgressAction,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rules: Vec<EgressRule>,
}

impl EgressPolicy {
    /// A checked policy: refused if a rule can never match, if there are
    /// too many, or if a rule names ports with no protocol.
    pub fn new(default: EgressAction, rules: Vec<EgressRule>) -> Result<Self, EgressError> {
        if rules.len() > MAX_EGRESS_RULES {
            return Err(EgressError::TooManyRules { count: rules.len() });
        }
        for (index, rule) in rules.iter().enumerate() {
            if let EgressTarget::Net(m) = &rule.target
                && m.ports.is_some()
                && m.proto.is_none()
            {
                return Err(EgressError::PortsWithoutProto {
                    index,
                    rule: rule.to_string(),
                });
            }
            let covered = |earlier: &EgressRule| match (&rule.target, &earlier.target) {
                (EgressTarget::Net(m), EgressTarget::Net(e)) => m.covered_by(e),
                (EgressTarget::Domain(d), EgressTarget::Domain(e)) => d.covered_by(e),
                _ => false,
            };
            if let Some(by) = rules[..index].iter().position(covered) {
                return Err(EgressError::Shadowed {
                    index,
                    rule: rule.to_string(),
                    by,
                    earlier: rules[by].to_string(),
                });
            }
        }
        Ok(EgressPolicy { default, rules })
    }

    /// Everything allowed: the default of a VM with no policy.
    pub fn open() -> Self {
        EgressPolicy::default()
    }

    /// What happens to what no rule matches.
    pub fn default_action(&self) -> EgressAction {
        self.default
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[EgressRule] {
        &self.rules
    }

    /// Whether this is the open policy: `allow` and no rules.
    pub fn is_open(&self) -> bool {
        self.default == EgressAction::Allow && self.rules.is_empty()
    }

    /// Whether any rule is by name: such a VM's DNS goes only to the
    /// gateway's resolver, and its web traffic through the proxy.
    pub fn has_domain_rules(&self) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r.target, EgressTarget::Domain(_)))
    }

    /// The address rules, in order.
    pub fn net_rules(&self) -> impl Iterator<Item = (EgressAction, &NetMatch)> {
        self.rules.iter().filter_map(|r| match &r.target {
            EgressTarget::Net(m) => Some((r.action, m)),
            EgressTarget::Domain(_) => None,
        })
    }

    /// What the policy says of `name`: the first domain rule that matches
    /// it, or `None` when none does (then the address decides).
    pub fn name_verdict(&self, name: &str) -> Option<EgressAction> {
        self.rules.iter().find_map(|r| match &r.target {
            EgressTarget::Domain(d) if d.matches(name) => Some(r.action),
            _ => None,
        })
    }

    /// What the VM's own address rules say of a packet to `ip`: the first
    /// that matches, or `None`.
    pub fn net_verdict(
        &self,
        ip: Ipv4Addr,
        proto: Option<Proto>,
        port: Option<u16>,
    ) -> Option<EgressAction> {
        self.net_rules()
            .find(|(_, m)| m.matches(ip, proto, port))
            .map(|(action, _)| action)
    }
}

/// The serialised form, checked on the way in like [`EgressPolicy::new`].
#[derive(Deserialize)]
struct UncheckedPolicy {
    #[serde(default)]
    default: EgressAction,
    #[serde(default)]
    rules: Vec<EgressRule>,
}

impl<'de> Deserialize<'de> for EgressPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = UncheckedPolicy::deserialize(d)?;
        EgressPolicy::new(raw.default, raw.rules).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for EgressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "default {}", self.default)?;
        for rule in &self.rules {
            write!(f, "; {rule}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> NetMatch {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_refuse_host_bits_and_bad_prefixes() {
        for ok in [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "1.2.3.4",
            "1.2.3.4/32",
            "192.168.0.0/16",
        ] {
            assert!(ok.parse::<Cidr>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "10.0.0.1/8",
            "1.2.3.4/33",
            "1.2.3/24",
            "1.2.3.4/",
            "1.2.3.4/+8",
            "::1",
            "1.2.3.4/08x",
            "a.b.c.d",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(255, 255, 255, 255)));
        assert!(all.covers(&"10.0.0.0/8".parse().unwrap()));
        assert!(!"10.0.0.0/8".parse::<Cidr>().unwrap().covers(&all));
    }

    #[test]
    fn ports_and_matches_parse_strictly() {
        for bad in ["0", "65536", "-1", "1-", "-", "10-9", "+5", " 5", "5 "] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
        for bad in [
            "10.0.0.0/8:",
            "10.0.0.0/8:0",
            "10.0.0.0/8/icmp",
            "10.0.0.0/8:80/sctp",
            "example.com:80",
            "10.0.0.0/8:80:90",
        ] {
            assert!(bad.parse::<NetMatch>().is_err(), "{bad}");
        }
        for text in [
            "10.0.0.0/8",
            "10.0.0.0/8/udp",
            "1.2.3.4/32:53/udp",
            "0.0.0.0/0:1-1024/tcp",
        ] {
            let m = net(text);
            assert_eq!(m.to_string().parse::<NetMatch>().unwrap(), m, "{text}");
        }
    }

    #[test]
    fn domain_patterns_match_names_case_blind_and_wildcards_need_a_label() {
        let exact: DomainPattern = "Example.COM.".parse().unwrap();
        assert_eq!(exact.to_string(), "example.com");
        assert!(exact.matches("EXAMPLE.com."));
        assert!(!exact.matches("a.example.com"));
        let any: DomainPattern = "*.example.com".parse().unwrap();
        assert!(any.matches("a.b.example.com"));
        assert!(!any.matches("example.com"));
        assert!(!any.matches("aexample.com"));
        assert!(!any.matches(".example.com"));
        for bad in [
            "",
            ".",
            "*.",
            "*.com",
            "a..b",
            "-a.com",
            "a-.com",
            "a b.com",
            "*.*.a.com",
            "a.*.com",
            "é.com",
            &format!("{}.com", "a".repeat(64)),
        ] {
            assert!(bad.parse::<DomainPattern>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_rule_covered_by_an_earlier_one_is_refused() {
        let refused = [
            (
                vec![
                    EgressRule::allow(net("10.0.0.0/8")),
                    EgressRule::deny(net("10.1.0.0/16")),
                ],
                1,
            ),
            (
                vec![
                    EgressRule::allow(net("1.2.3.4")),
                    EgressRule::allow(net("1.2.3.4/32")),
                ],
                1,
            ),
            (
                vec![
                    EgressRule::deny(net("0.0.0.0/0:1-1000")),
                    EgressRule::allow(net("8.8.8.8:53")),
                ],
                1,
            ),
            (
                vec![
                    EgressRule::allow_domain("*.a.com".parse().unwrap()),
                    EgressRule::deny_domain("x.a.com".parse().unwrap()),
                ],
                1,
            ),
        ];
        for (rules, index) in refused {
            match EgressPolicy::new(EgressAction::Deny, rules.clone()) {
                Err(EgressError::Shadowed { index: i, .. }) => assert_eq!(i, index, "{rules:?}"),
                other => panic!("{rules:?}: {other:?}"),
            }
        }
        // Narrow first, wide after: the usual exception-then-rule shape.
        let fine = [
            vec![
                EgressRule::deny(net("10.1.0.0/16")),
                EgressRule::allow(net("10.0.0.0/8")),
            ],
            vec![
                EgressRule::allow(net("8.8.8.8:53/udp")),
                EgressRule::deny(net("8.8.8.8:53")),
            ],
            vec![
                EgressRule::deny_domain("x.a.com".parse().unwrap()),
                EgressRule::allow_domain("*.a.com".parse().unwrap()),
                EgressRule::allow_domain("a.com".parse().unwrap()),
            ],
            vec![
                EgressRule::allow(net("1.2.3.4:80")),
                EgressRule::allow(net("1.2.3.4:81")),
            ],
        ];
        for rules in fine {
            assert!(
                EgressPolicy::new(EgressAction::Deny, rules.clone()).is_ok(),
                "{rules:?}"
            );
        }
        let many = vec![EgressRule::allow(net("1.2.3.4")); MAX_EGRESS_RULES + 1];
        assert!(matches!(
            EgressPolicy::new(EgressAction::Deny, many),
            Err(EgressError::TooManyRules { .. })
        ));
    }

    #[test]
    fn verdicts_take_the_first_matching_rule() {
        let policy = EgressPolicy::new(
            EgressAction::Deny,
            vec![
                EgressRule::deny(net("10.1.0.0/16")),
                EgressRule::allow(net("10.0.0.0/8:443")),
                EgressRule::deny_domain("evil.example.com".parse().unwrap()),
                EgressRule::allow_domain("*.example.com".parse().unwrap()),
            ],
        )
        .unwrap();
        let tcp = Some(Proto::Tcp);
        assert_eq!(
            policy.net_verdict(Ipv4Addr::new(10, 1, 0, 1), tcp, Some(443)),
            Some(EgressAction::Deny)
        );
        assert_eq!(
            policy.net_verdict(Ipv4Addr::new(10, 2, 0, 1), tcp, Some(443)),
            Some(EgressAction::Allow)
        );
        assert_eq!(
            policy.net_verdict(Ipv4Addr::new(10, 2, 0, 1), Some(Proto::Udp), Some(443)),
            None
        );
        assert_eq!(
            policy.name_verdict("evil.example.com"),
            Some(EgressAction::Deny)
        );
        assert_eq!(
            policy.name_verdict("good.example.com."),
            Some(EgressAction::Allow)
        );
        assert_eq!(policy.name_verdict("example.org"), None);
    }

    #[test]
    fn policies_round_trip_through_json_and_are_checked_on_the_way_in() {
        let policy = EgressPolicy::new(
            EgressAction::Deny,
            vec![
                EgressRule::allow(net("10.0.0.0/8:8000-8100/udp")),
                EgressRule::allow_domain("*.pypi.org".parse().unwrap()),
            ],
        )
        .unwrap();
        let json = serde_json::to_value(&policy).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "default": "deny",
                "rules": [
                    {"action": "allow", "net": "10.0.0.0/8:8000-8100/udp"},
                    {"action": "allow", "domain": "*.pypi.org"},
                ]
            })
        );
        assert_eq!(
            serde_json::from_value::<EgressPolicy>(json).unwrap(),
            policy
        );
        let shadowed = serde_json::json!({
            "default": "deny",
            "rules": [{"action": "allow", "net": "0.0.0.0/0"}, {"action": "deny", "net": "1.2.3.4"}]
        });
        assert!(serde_json::from_value::<EgressPolicy>(shadowed).is_err());
        assert!(
            serde_json::from_value::<EgressPolicy>(serde_json::json!({}))
                .unwrap()
                .is_open()
        );
    }
}
