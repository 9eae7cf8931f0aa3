//! Which addresses are globally reachable: the SSRF filter for outgoing HTTP and the usability
//! test for MX targets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why `ip` is not a globally reachable unicast address, or `None` if it is one.
///
/// Covers the IANA special-purpose registries' blocks that are not globally reachable
/// (RFC 6890 and updates): unspecified, "this network", loopback, private (RFC 1918), shared
/// CGNAT space (RFC 6598), link-local, IETF protocol assignments, documentation (RFC 5737,
/// RFC 3849, RFC 9637), benchmarking (RFC 2544), multicast, reserved and broadcast, unique local
/// and site-local IPv6, discard-only, and IPv6 forms that embed an IPv4 address (mapped,
/// NAT64, 6to4, Teredo), which are judged by that address or refused. Used for SSRF filtering
/// of outgoing HTTP and for MX target usability.
pub fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

/// True if `ip` is a globally reachable unicast address (see [`non_public_reason`]).
pub fn is_public(ip: IpAddr) -> bool {
    non_public_reason(ip).is_none()
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_unspecified() => "unspecified",
        (0, _, _) => "\"this network\" (0.0.0.0/8)",
        (10, _, _) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "shared CGNAT space (100.64.0.0/10)",
        (127, _, _) => "loopback",
        (169, 254, _) => "link-local",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation (RFC 5737)",
        (192, 88, 99) => "deprecated 6to4 relay anycast",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved (240.0.0.0/4) or broadcast",
        _ => return None,
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4);
    }
    Some(match s {
        // 64:ff9b::/96 (NAT64) and 64:ff9b:1::/48 (local-use NAT64): the v4 address decides
        // where traffic goes; refuse rather than guess the translator.
        [0x64, 0xff9b, ..] => "NAT64 (64:ff9b::/96, 64:ff9b:1::/48)",
        [0x100, 0, 0, 0, ..] => "discard-only (100::/64)",
        [0x2001, 0x0db8, ..] => "documentation (2001:db8::/32)",
        [0x2001, x, ..] if x < 0x200 => "IETF protocol assignments and Teredo (2001::/23)",
        [0x2002, ..] => "6to4 (2002::/16)",
        [0x3fff, y, ..] if y < 0x1000 => "documentation (3fff::/20)",
        [x, ..] if x & 0xfe00 == 0xfc00 => "unique local (fc00::/7)",
        [x, ..] if x & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        [x, ..] if x & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        [x, ..] if x & 0xff00 == 0xff00 => "multicast",
        // Everything outside 2000::/3 is unassigned or special (including ::/96 compatible
        // addresses and 5f00::/16 segment identifiers).
        [x, ..] if x & 0xe000 != 0x2000 => "not global unicast (outside 2000::/3)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_addresses_are_told_from_public_ones() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "192.0.2.1",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "64:ff9b::a00:1",
            "2002:7f00:1::1",
            "2001::1",
            "3fff::1",
            "::127.0.0.1",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            assert!(!is_public(ip), "{s} should not be public");
        }
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "11.22.33.44",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            assert!(is_public(ip), "{s} should be public");
        }
    }
}
