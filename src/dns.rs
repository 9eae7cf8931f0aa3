//! DNS lookups for the verifier: TXT, MX and address records, with the three-way answer
//! (`Found` / `NxDomain` / `NoData`) kept apart from every kind of failure.
//!
//! This is the only module that sees hickory types. It owns two hickory resolvers built from
//! the same servers: one with a response cache (ordinary checks) and one without any cache
//! (`fresh = true`, used to confirm a definitive failure before a label is withdrawn).
//!
//! What it implements (see `mail-dns.md` §6–§7):
//! - RFC 2308 / RFC 8020 negative answers: NXDOMAIN and NODATA are answers, not errors. Only
//!   they may count as "absent"; SERVFAIL, REFUSED, FORMERR, timeouts, truncation without a TCP
//!   retry and I/O errors are all [`Error`] ("could not decide"). hickory 0.26 reports other
//!   response codes as `DnsError::ResponseCode`, never as "no records" (the ≤0.25 pitfall).
//! - RFC 7208 §3.3, RFC 6376 §3.6.2.2, RFC 7489 §6.1: the character-strings of one TXT record
//!   are joined with no separator; separate TXT records are never merged.
//! - RFC 1035 §3.6.2 CNAMEs are followed by the resolver; answers are filtered to the
//!   requested type along the CNAME chain that starts at the query name.
//! - Truncated UDP answers (TC bit) are retried over TCP: every server gets UDP and TCP.
//!
//! Names are always queried as absolute names (RFC 1034 §3.1, trailing dot), so no search
//! list applies, and are built with `Name::from_ascii`, which accepts underscores anywhere
//! (`sel_1._domainkey.example.com`). Only ASCII letters, digits, `-`, `_` and `.` are accepted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::{TokioResolver, lookup::Lookup};

/// Upper bound on how long a negative answer (NXDOMAIN/NODATA) is cached, whatever the SOA
/// says: an operator who fixes a missing record should be seen within minutes.
pub const NEGATIVE_MAX_TTL: Duration = Duration::from_secs(300);

/// Upper bound on how long a positive answer is cached. Re-checks run daily; an hour keeps a
/// burst of checks for one domain cheap without hiding changes for long.
pub const POSITIVE_MAX_TTL: Duration = Duration::from_secs(3600);

/// Responses kept in the cache of the caching resolver.
const CACHE_SIZE: u64 = 8192;

/// Attempts per query (hickory's default): one retry after a timeout or I/O error.
const ATTEMPTS: usize = 2;

/// The answer to one query: records, or one of the two definitive negative answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<T> {
    /// At least one record of the requested type (after following CNAMEs).
    Found(Vec<T>),
    /// The name does not exist (RCODE 3), so nothing below it exists either (RFC 8020).
    NxDomain,
    /// The name exists but has no record of this type (NOERROR with an empty answer).
    NoData,
}

impl<T> Answer<T> {
    /// The records, or an empty slice for a negative answer.
    pub fn records(&self) -> &[T] {
        match self {
            Answer::Found(v) => v,
            Answer::NxDomain | Answer::NoData => &[],
        }
    }
}

/// One MX record (RFC 1035 §3.3.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mx {
    /// Lower is preferred.
    pub preference: u16,
    /// The exchange host, lowercase, without the trailing dot. The root name (a null MX,
    /// RFC 7505) is kept as `"."` so that it can never be confused with a host name.
    pub exchange: String,
}

impl Mx {
    /// True for a null MX (exchange is the root, RFC 7505 §3), whatever its preference.
    pub fn is_null(&self) -> bool {
        self.exchange == "."
    }
}

/// Every error means "could not decide": the name's records may exist or not.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The resolver could not be configured (e.g. unreadable `/etc/resolv.conf`).
    #[error("cannot set up the DNS resolver: {0}")]
    Setup(String),
    /// The name cannot be queried (caller bug or hostile input); nothing was sent.
    #[error("cannot query {rtype} at {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Record type.
        rtype: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The server answered with an error code (SERVFAIL, REFUSED, FORMERR, NOTIMP, …).
    #[error("DNS {rtype} query for {name} failed: the server answered {rcode}")]
    ResponseCode {
        /// The queried name.
        name: String,
        /// Record type.
        rtype: &'static str,
        /// The response code, e.g. `Server Failure`.
        rcode: String,
    },
    /// No answer in time (after retries).
    #[error("DNS {rtype} query for {name} timed out")]
    Timeout {
        /// The queried name.
        name: String,
        /// Record type.
        rtype: &'static str,
    },
    /// The answer was truncated and could not be re-asked over TCP.
    #[error("DNS {rtype} query for {name} failed: the answer was truncated and TCP did not help")]
    Truncated {
        /// The queried name.
        name: String,
        /// Record type.
        rtype: &'static str,
    },
    /// Any other failure: I/O, no usable connection, a referral instead of an answer, a
    /// malformed response.
    #[error("DNS {rtype} query for {name} failed: {cause}")]
    Failed {
        /// The queried name.
        name: String,
        /// Record type.
        rtype: &'static str,
        /// What went wrong.
        cause: String,
    },
}

/// A DNS client for the verifier. Cheap to clone (shares the resolvers and their cache).
#[derive(Clone)]
pub struct Resolver {
    cached: TokioResolver,
    fresh: TokioResolver,
    /// Hard deadline for one lookup, on top of hickory's own per-attempt timeouts: no query
    /// can hang a check, whatever the transport does.
    deadline: Duration,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("dns::Resolver")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// Builds a resolver. `servers` empty means the system resolver (`/etc/resolv.conf`);
    /// otherwise each server is asked over UDP, with TCP for truncated answers. `timeout` is
    /// the per-attempt timeout.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<Resolver, Error> {
        let cached = build(servers, timeout, CACHE_SIZE)?;
        let fresh = build(servers, timeout, 0)?;
        // Two attempts over UDP, a TCP retry after truncation, and slack.
        let deadline = timeout
            .saturating_mul(5)
            .saturating_add(Duration::from_secs(1));
        Ok(Resolver {
            cached,
            fresh,
            deadline,
        })
    }

    /// TXT records at `name`: each record's character-strings joined with no separator
    /// (RFC 7208 §3.3); separate records stay separate, in answer order.
    pub async fn txt(&self, name: &str, fresh: bool) -> Result<Answer<Vec<u8>>, Error> {
        let lookup = self.lookup(name, RecordType::TXT, fresh).await?;
        Ok(lookup.map(|records| {
            records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .flat_map(|s| s.iter())
                            .copied()
                            .collect(),
                    ),
                    _ => None,
                })
                .collect()
        }))
    }

    /// MX records at `name`, in answer order.
    pub async fn mx(&self, name: &str, fresh: bool) -> Result<Answer<Mx>, Error> {
        let lookup = self.lookup(name, RecordType::MX, fresh).await?;
        Ok(lookup.map(|records| {
            records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some(Mx {
                        preference: mx.preference,
                        exchange: host_string(&mx.exchange),
                    }),
                    _ => None,
                })
                .collect()
        }))
    }

    /// A and AAAA records at `name` (both are asked, concurrently). `Found` if either type
    /// has records; an error on either query is an error, so the list is never silently
    /// incomplete. Both negative: `NxDomain` if both said so, else `NoData`.
    pub async fn ip(&self, name: &str, fresh: bool) -> Result<Answer<IpAddr>, Error> {
        let (a, aaaa) = tokio::join!(
            self.lookup(name, RecordType::A, fresh),
            self.lookup(name, RecordType::AAAA, fresh)
        );
        let (a, aaaa) = (a?, aaaa?);
        let mut ips: Vec<IpAddr> = Vec::new();
        for r in a.records().iter().chain(aaaa.records()) {
            match &r.data {
                RData::A(a) => ips.push(IpAddr::V4(a.0)),
                RData::AAAA(a) => ips.push(IpAddr::V6(a.0)),
                _ => {}
            }
        }
        if !ips.is_empty() {
            return Ok(Answer::Found(ips));
        }
        Ok(match (a, aaaa) {
            (Answer::NxDomain, Answer::NxDomain) => Answer::NxDomain,
            _ => Answer::NoData,
        })
    }

    /// Runs one query and sorts the outcome into answer / negative answer / error.
    async fn lookup(
        &self,
        name: &str,
        rtype: RecordType,
        fresh: bool,
    ) -> Result<Answer<Record>, Error> {
        let rname = rtype_name(rtype);
        let query_name = to_name(name).map_err(|reason| Error::InvalidName {
            name: name.chars().take(300).collect(),
            rtype: rname,
            reason,
        })?;
        let display = host_string(&query_name);
        let resolver = if fresh { &self.fresh } else { &self.cached };
        let result =
            tokio::time::timeout(self.deadline, resolver.lookup(query_name.clone(), rtype)).await;
        match result {
            Err(_) => Err(Error::Timeout {
                name: display,
                rtype: rname,
            }),
            Ok(Ok(lookup)) => {
                let records = select(&lookup, &query_name, rtype);
                if records.is_empty() {
                    // NOERROR with answers of other types only (or none on the chain):
                    // nothing of this type exists at the name.
                    Ok(Answer::NoData)
                } else {
                    Ok(Answer::Found(records))
                }
            }
            Ok(Err(e)) => classify(e, display, rname),
        }
    }
}

/// Builds one hickory resolver.
fn build(
    servers: &[SocketAddr],
    timeout: Duration,
    cache_size: u64,
) -> Result<TokioResolver, Error> {
    let mut builder = if servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| Error::Setup(format!("system resolver: {e}")))?
    } else {
        let name_servers = servers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let mut config = NameServerConfig::udp_and_tcp(addr.ip());
                config.connections = vec![udp, tcp];
                config
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options: &mut ResolverOpts = builder.options_mut();
    options.timeout = timeout;
    options.attempts = ATTEMPTS;
    options.cache_size = cache_size;
    options.negative_max_ttl = Some(NEGATIVE_MAX_TTL);
    options.positive_max_ttl = Some(POSITIVE_MAX_TTL);
    // /etc/hosts must never answer for a domain under verification.
    options.use_hosts_file = ResolveHosts::Never;
    options.preserve_intermediates = true;
    options.edns0 = true;
    // Many checks run at once; TCP connections are shared, so allow a deep pipeline.
    options.max_active_requests = 256;
    builder.build().map_err(|e| Error::Setup(e.to_string()))
}

/// Sorts a hickory error into a negative answer or an [`Error`].
fn classify(e: NetError, name: String, rtype: &'static str) -> Result<Answer<Record>, Error> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(no)) => match no.response_code {
            ResponseCode::NXDomain => Ok(Answer::NxDomain),
            // A NOERROR answer without records but with a referral (NS, no SOA) is not an
            // authoritative "no data": a lame or misconfigured path. Could not decide.
            ResponseCode::NoError if no.soa.is_none() && no.ns.is_some() => Err(Error::Failed {
                name,
                rtype,
                cause: "the server answered with a referral instead of an answer".to_owned(),
            }),
            ResponseCode::NoError => Ok(Answer::NoData),
            other => Err(Error::ResponseCode {
                name,
                rtype,
                rcode: other.to_string(),
            }),
        },
        NetError::Dns(DnsError::ResponseCode(code)) => Err(Error::ResponseCode {
            name,
            rtype,
            rcode: code.to_string(),
        }),
        NetError::Timeout => Err(Error::Timeout { name, rtype }),
        NetError::Truncated => Err(Error::Truncated { name, rtype }),
        other => Err(Error::Failed {
            name,
            rtype,
            cause: other.to_string(),
        }),
    }
}

/// The records of type `rtype` owned by the query name or by a name on the CNAME chain that
/// starts at it. Anything else in the answer section is ignored.
fn select(lookup: &Lookup, query: &Name, rtype: RecordType) -> Vec<Record> {
    let answers = lookup.answers();
    let mut chain: Vec<&Name> = vec![query];
    // Each pass adds at most one link; a chain cannot be longer than the answer section.
    for _ in 0..answers.len() {
        let mut grew = false;
        for r in answers {
            if let RData::CNAME(target) = &r.data
                && chain.iter().any(|n| **n == r.name)
                && !chain.iter().any(|n| **n == target.0)
            {
                chain.push(&target.0);
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    answers
        .iter()
        .filter(|r| r.record_type() == rtype && chain.iter().any(|n| **n == r.name))
        .cloned()
        .collect()
}

/// Checks the characters of `name` and makes it an absolute hickory name.
fn to_name(name: &str) -> Result<Name, &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if !name.is_ascii() {
        return Err("names must be ASCII (A-labels)");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err("names may contain only letters, digits, '-', '_' and '.'");
    }
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.split('.').any(str::is_empty) {
        return Err("empty label");
    }
    let mut n =
        Name::from_ascii(trimmed).map_err(|_| "not a valid DNS name (label or name too long)")?;
    n.set_fqdn(true);
    Ok(n)
}

/// A name as a lowercase string without the trailing dot; the root is `"."`.
fn host_string(name: &Name) -> String {
    if name.is_root() {
        return ".".to_owned();
    }
    let s = name.to_ascii().to_ascii_lowercase();
    match s.strip_suffix('.') {
        Some(t) => t.to_owned(),
        None => s,
    }
}

fn rtype_name(rtype: RecordType) -> &'static str {
    match rtype {
        RecordType::TXT => "TXT",
        RecordType::MX => "MX",
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        _ => "other",
    }
}

impl<T> Answer<T> {
    fn map<U>(self, f: impl FnOnce(Vec<T>) -> Vec<U>) -> Answer<U> {
        match self {
            Answer::Found(v) => {
                let mapped = f(v);
                if mapped.is_empty() {
                    Answer::NoData
                } else {
                    Answer::Found(mapped)
                }
            }
            Answer::NxDomain => Answer::NxDomain,
            Answer::NoData => Answer::NoData,
        }
    }
}

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
    fn names_are_checked_before_any_query() {
        assert!(to_name("sel_1._domainkey.example.test").is_ok());
        assert!(to_name("_dmarc.example.test.").is_ok());
        assert!(to_name("bücher.example").is_err());
        assert!(to_name("a..b").is_err());
        assert!(to_name("").is_err());
        assert!(to_name(".").is_err());
        assert!(to_name("a b.test").is_err());
        assert!(to_name("a\\046b.test").is_err());
        assert!(to_name(&format!("{}.test", "a".repeat(64))).is_err());
        let n = to_name("Example.TEST").unwrap();
        assert!(n.is_fqdn());
        assert_eq!(host_string(&n), "example.test");
        assert_eq!(host_string(&Name::root()), ".");
    }

    #[test]
    fn null_mx_is_recognisable() {
        let null = Mx {
            preference: 0,
            exchange: ".".to_owned(),
        };
        assert!(null.is_null());
        let real = Mx {
            preference: 0,
            exchange: "mx.example.test".to_owned(),
        };
        assert!(!real.is_null());
    }

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
