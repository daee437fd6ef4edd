//! The SSRF guard's one decision: which destination addresses may be contacted.
//!
//! Owns [`IpPolicy`] and the address tables behind it: the IPv4 ranges that are refused,
//! and the IPv6 ranges that are refused or whose embedded IPv4 address (mapped,
//! compatible, NAT64, 6to4) is judged instead. It decides on addresses only; applying the
//! decision to URLs is the client's job (`mod.rs`), and to resolved names the
//! connector's (`connect.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use tracing::debug;

use super::error::FetchError;

/// Which destination addresses may be contacted. Decided in one place: `permits`.
#[derive(Debug, Clone)]
pub struct IpPolicy {
    allow: Vec<IpNet>,
}

/// An IPv4 range refused by default.
struct V4Rule {
    net: Ipv4Addr,
    prefix: u8,
    name: &'static str,
}

impl V4Rule {
    const fn new(net: [u8; 4], prefix: u8, name: &'static str) -> Self {
        let [a, b, c, d] = net;
        Self {
            net: Ipv4Addr::new(a, b, c, d),
            prefix,
            name,
        }
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        same_prefix(
            u32::from(ip).into(),
            u32::from(self.net).into(),
            self.prefix,
            32,
        )
    }
}

/// What an IPv6 range means for the policy.
#[derive(Clone, Copy)]
enum V6Action {
    /// Never contacted.
    Refuse,
    /// The address carries an IPv4 address (mapped, compatible, NAT64, 6to4)
    /// that a translator or the kernel would really talk to: judge that one.
    JudgeEmbedded(fn(Ipv6Addr) -> Ipv4Addr),
}

/// An IPv6 range with special meaning for the policy.
struct V6Rule {
    net: Ipv6Addr,
    prefix: u8,
    action: V6Action,
    name: &'static str,
}

impl V6Rule {
    const fn new(net: [u16; 8], prefix: u8, action: V6Action, name: &'static str) -> Self {
        let [a, b, c, d, e, f, g, h] = net;
        let net = Ipv6Addr::new(a, b, c, d, e, f, g, h);
        Self {
            net,
            prefix,
            action,
            name,
        }
    }

    fn contains(&self, ip: Ipv6Addr) -> bool {
        same_prefix(u128::from(ip), u128::from(self.net), self.prefix, 128)
    }
}

/// True if the first `prefix` of the `width` low bits of `ip` and `net` agree: the one
/// range test of both families (`width` 32 for IPv4, 128 for IPv6; `prefix` 0 matches all).
fn same_prefix(ip: u128, net: u128, prefix: u8, width: u32) -> bool {
    let host_bits = width - u32::from(prefix);
    ip.checked_shr(host_bits).unwrap_or(0) == net.checked_shr(host_bits).unwrap_or(0)
}

/// The low 32 bits: IPv4-mapped, IPv4-compatible and NAT64 (RFC 6052 /96) addresses.
fn low_32(ip: Ipv6Addr) -> Ipv4Addr {
    let [.., a, b, c, d] = ip.octets();
    Ipv4Addr::new(a, b, c, d)
}

/// Bits 16..48: the IPv4 address of a 6to4 (2002::/16) relay.
fn six_to_four(ip: Ipv6Addr) -> Ipv4Addr {
    let [_, _, a, b, c, d, ..] = ip.octets();
    Ipv4Addr::new(a, b, c, d)
}

/// IPv4 ranges that are not publicly routable or not unicast.
#[rustfmt::skip]
const V4_BLOCKED: &[V4Rule] = &[
    V4Rule::new([0, 0, 0, 0], 8, "this network"),
    V4Rule::new([10, 0, 0, 0], 8, "private"),
    V4Rule::new([100, 64, 0, 0], 10, "shared address space (cgnat)"),
    V4Rule::new([127, 0, 0, 0], 8, "loopback"),
    V4Rule::new([169, 254, 0, 0], 16, "link-local (cloud metadata)"),
    V4Rule::new([172, 16, 0, 0], 12, "private"),
    V4Rule::new([192, 0, 0, 0], 24, "ietf protocol assignments"),
    V4Rule::new([192, 0, 2, 0], 24, "documentation (test-net-1)"),
    V4Rule::new([192, 88, 99, 0], 24, "6to4 relay anycast"),
    V4Rule::new([192, 168, 0, 0], 16, "private"),
    V4Rule::new([198, 18, 0, 0], 15, "benchmarking"),
    V4Rule::new([198, 51, 100, 0], 24, "documentation (test-net-2)"),
    V4Rule::new([203, 0, 113, 0], 24, "documentation (test-net-3)"),
    V4Rule::new([224, 0, 0, 0], 4, "multicast"),
    V4Rule::new([240, 0, 0, 0], 4, "reserved and broadcast"),
];

use V6Action::{JudgeEmbedded, Refuse};

/// IPv6 ranges with special meaning. The first match wins, so specific rows
/// (`::1`, the embedded-IPv4 forms) come before the catch-alls at the end.
#[rustfmt::skip]
const V6_RULES: &[V6Rule] = &[
    V6Rule::new([0, 0, 0, 0, 0, 0, 0, 0],           128, Refuse,                      "unspecified"),
    V6Rule::new([0, 0, 0, 0, 0, 0, 0, 1],           128, Refuse,                      "loopback"),
    V6Rule::new([0, 0, 0, 0, 0, 0xffff, 0, 0],      96,  JudgeEmbedded(low_32),       "ipv4-mapped"),
    V6Rule::new([0, 0, 0, 0, 0, 0, 0, 0],           96,  JudgeEmbedded(low_32),       "ipv4-compatible"),
    V6Rule::new([0x64, 0xff9b, 0, 0, 0, 0, 0, 0],   96,  JudgeEmbedded(low_32),       "nat64"),
    V6Rule::new([0x64, 0xff9b, 1, 0, 0, 0, 0, 0],   48,  Refuse,                      "local-use nat64"),
    V6Rule::new([0x100, 0, 0, 0, 0, 0, 0, 0],       64,  Refuse,                      "discard-only"),
    V6Rule::new([0x2001, 0, 0, 0, 0, 0, 0, 0],      23,  Refuse,                      "ietf special (teredo)"),
    V6Rule::new([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],  32,  Refuse,                      "documentation"),
    V6Rule::new([0x3fff, 0, 0, 0, 0, 0, 0, 0],      20,  Refuse,                      "documentation"),
    V6Rule::new([0x2002, 0, 0, 0, 0, 0, 0, 0],      16,  JudgeEmbedded(six_to_four),  "6to4"),
    V6Rule::new([0xfc00, 0, 0, 0, 0, 0, 0, 0],      7,   Refuse,                      "unique local"),
    V6Rule::new([0xfe80, 0, 0, 0, 0, 0, 0, 0],      10,  Refuse,                      "link-local"),
    V6Rule::new([0xfec0, 0, 0, 0, 0, 0, 0, 0],      10,  Refuse,                      "site-local"),
    V6Rule::new([0xff00, 0, 0, 0, 0, 0, 0, 0],      8,   Refuse,                      "multicast"),
    // Only 2000::/3 is allocated for global unicast; whatever else is left
    // is reserved or unassigned and has no business being an image host.
    V6Rule::new([0, 0, 0, 0, 0, 0, 0, 0],           3,   Refuse,                      "not global unicast"),
    V6Rule::new([0x4000, 0, 0, 0, 0, 0, 0, 0],      2,   Refuse,                      "not global unicast"),
    V6Rule::new([0x8000, 0, 0, 0, 0, 0, 0, 0],      1,   Refuse,                      "not global unicast"),
];

fn v4_rule(ip: Ipv4Addr) -> Option<&'static V4Rule> {
    V4_BLOCKED.iter().find(|rule| rule.contains(ip))
}

fn v6_rule(ip: Ipv6Addr) -> Option<&'static V6Rule> {
    V6_RULES.iter().find(|rule| rule.contains(ip))
}

/// The IPv4 address inside an IPv4-mapped or IPv4-compatible address.
/// `::` and `::1` are not compatible addresses, whatever their bits say.
fn mapped_or_compatible(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let is_special = ip == Ipv6Addr::UNSPECIFIED || ip == Ipv6Addr::LOCALHOST;
    // ::ffff:0:0/96 (mapped) or ::/96 (compatible): the top 96 bits say which.
    let top_96 = u128::from(ip) >> 32;
    let is_embedding = top_96 == 0xffff || top_96 == 0;
    (!is_special && is_embedding).then(|| low_32(ip))
}

impl IpPolicy {
    /// Public addresses only, plus `allow` (CIDRs exempt from the block, e.g. a test upstream's 127.0.0.1/32).
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// True if `ip` may be contacted.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.refusal(ip).is_none()
    }

    /// The single decision: why `ip` is refused (the matching range's name),
    /// or `None` if it may be contacted. The allow-list is consulted first.
    fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        if self.is_allowed(ip) {
            return None;
        }
        match ip {
            IpAddr::V4(v4) => v4_rule(v4).map(|rule| rule.name),
            IpAddr::V6(v6) => {
                let rule = v6_rule(v6)?;
                match rule.action {
                    V6Action::Refuse => Some(rule.name),
                    V6Action::JudgeEmbedded(extract) => v4_rule(extract(v6)).map(|_| rule.name),
                }
            }
        }
    }

    /// The allow-list matches the address itself, and for mapped/compatible
    /// IPv6 also the IPv4 address the kernel would really connect to.
    fn is_allowed(&self, ip: IpAddr) -> bool {
        let embedded = match ip {
            IpAddr::V6(v6) => mapped_or_compatible(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allow
            .iter()
            .any(|net| net.contains(&ip) || embedded.is_some_and(|e| net.contains(&e)))
    }

    /// `Ok` if `ip` may be contacted, else the `Forbidden` error naming it.
    ///
    /// # Errors
    /// [`FetchError::Forbidden`] with `ip` as the host when the policy refuses it.
    pub(super) fn check(&self, ip: IpAddr) -> Result<(), FetchError> {
        match self.refusal(ip) {
            None => Ok(()),
            Some(reason) => {
                debug!(%ip, reason, "address refused by policy");
                Err(FetchError::Forbidden {
                    host: ip.to_string(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ipnet::{Ipv4Net, Ipv6Net};

    use super::*;
    use crate::proxy::fetch::testutil::ip;

    /// The address `delta` away from `ip`, if there is one.
    fn neighbour(ip: IpAddr, delta: i128) -> Option<IpAddr> {
        match ip {
            IpAddr::V4(v4) => u32::try_from(i128::from(u32::from(v4)) + delta)
                .ok()
                .map(|n| IpAddr::V4(Ipv4Addr::from(n))),
            IpAddr::V6(v6) => {
                let n = u128::from(v6);
                let moved = if delta >= 0 {
                    n.checked_add(delta.unsigned_abs())
                } else {
                    n.checked_sub(delta.unsigned_abs())
                };
                moved.map(|n| IpAddr::V6(Ipv6Addr::from(n)))
            }
        }
    }

    /// The range of the first rule that matches `ip`, as the policy looks rules up.
    fn matched_range(ip: IpAddr) -> Option<IpNet> {
        match ip {
            IpAddr::V4(v4) => v4_rule(v4).map(|r| Ipv4Net::new(r.net, r.prefix).unwrap().into()),
            IpAddr::V6(v6) => v6_rule(v6).map(|r| Ipv6Net::new(r.net, r.prefix).unwrap().into()),
        }
    }

    /// The checks every table row gets: `net` is the range's network address, its first
    /// and last addresses are refused, and each neighbour just outside is not matched by
    /// this range; unless another range (224/4 touches 240/4) claims it, it is public.
    fn check_boundaries(policy: &IpPolicy, range: IpNet, net: IpAddr, name: &str) {
        let (first, last) = (range.network(), range.broadcast());
        assert_eq!(first, net, "{name} is not a network address");
        for inside in [first, last] {
            assert!(!policy.permits(inside), "{inside} ({name}) permitted");
        }
        for outside in [neighbour(first, -1), neighbour(last, 1)]
            .into_iter()
            .flatten()
        {
            let matched = matched_range(outside);
            assert_ne!(matched, Some(range), "{outside} matched {name}");
            if matched.is_none() {
                assert!(policy.permits(outside), "{outside} next to {name} refused");
            }
        }
    }

    #[test]
    fn v4_table_first_last_in_and_neighbours_out() {
        let policy = IpPolicy::new(vec![]);
        for rule in V4_BLOCKED {
            let range = Ipv4Net::new(rule.net, rule.prefix).unwrap();
            check_boundaries(&policy, range.into(), IpAddr::V4(rule.net), rule.name);
            for inside in [range.network(), range.broadcast()] {
                assert_eq!(v4_rule(inside).map(|r| r.name), Some(rule.name));
            }
        }
    }

    #[test]
    fn v6_table_first_last_in_and_neighbours_out() {
        // Embedded ranges start at 0.0.0.0 and end at 255.255.255.255: both refused.
        let policy = IpPolicy::new(vec![]);
        for rule in V6_RULES {
            let range = Ipv6Net::new(rule.net, rule.prefix).unwrap();
            check_boundaries(&policy, range.into(), IpAddr::V6(rule.net), rule.name);
        }
    }

    #[test]
    fn v6_neighbours_in_global_unicast_are_public() {
        let policy = IpPolicy::new(vec![]);
        for public in [
            "2001:200::",                              // after 2001::/23
            "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff",  // before 2001:db8::/32
            "2001:db9::",                              // after 2001:db8::/32
            "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",  // last of 2001::/23 is refused, this is it
            "2003::",                                  // after 2002::/16
            "2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", // before 2002::/16
            "3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", // before 3fff::/20
            "3fff:1000::",                             // after 3fff::/20
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
        ] {
            let expected = public != "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff";
            assert_eq!(policy.permits(ip(public)), expected, "{public}");
        }
    }

    #[test]
    fn embedded_ipv4_is_judged() {
        let policy = IpPolicy::new(vec![]);
        for (addr, permitted) in [
            ("::ffff:8.8.8.8", true),
            ("::ffff:127.0.0.1", false),
            ("::ffff:10.1.2.3", false),
            ("::8.8.8.8", true),
            ("::127.0.0.1", false),
            ("64:ff9b::8.8.8.8", true),
            ("64:ff9b::7f00:1", false),
            ("64:ff9b::a9fe:a9fe", false),
            ("2002:808:808::1", true),
            ("2002:7f00:1::", false),
            ("2002:c0a8:101::1", false),
            ("64:ff9b:1::808:808", false),
            ("::", false),
            ("::1", false),
        ] {
            assert_eq!(policy.permits(ip(addr)), permitted, "{addr}");
        }
    }

    #[test]
    fn public_addresses_permitted() {
        let policy = IpPolicy::new(vec![]);
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "9.255.255.255",
            "11.0.0.0",
            "223.255.255.255",
        ] {
            assert!(policy.permits(ip(addr)), "{addr}");
        }
    }

    #[test]
    fn allow_list_exempts_exact_and_embedded_ipv4() {
        let policy = IpPolicy::new(vec![
            "127.0.0.1/32".parse().unwrap(),
            "fd00::/64".parse().unwrap(),
        ]);
        assert!(policy.permits(ip("127.0.0.1")));
        assert!(policy.permits(ip("::ffff:127.0.0.1")));
        assert!(policy.permits(ip("::127.0.0.1")));
        assert!(policy.permits(ip("fd00::5")));
        assert!(!policy.permits(ip("127.0.0.2")));
        assert!(!policy.permits(ip("::ffff:127.0.0.2")));
        assert!(!policy.permits(ip("::1")));
        assert!(!policy.permits(ip("fd00:0:0:1::5")));
    }
}
