//! DNS lookups for the verifier: TXT, MX and address records, with the three-way answer
//! (`Found` / `NxDomain` / `NoData`) kept apart from every kind of failure.
//!
//! This is the only module that sees hickory types. A [`Resolver`] asks one of two kinds of
//! upstream:
//! - configured servers (or the system resolver), through two hickory resolvers: one with a
//!   response cache (ordinary checks) and one without any cache (`fresh = true`, used to look
//!   again before a failure is acted on);
//! - each zone's own authoritative servers, asked directly without recursion
//!   ([`Resolver::authoritative`], in `authoritative.rs`): the independent vantage point that
//!   confirms a withdrawal when no second resolver set is configured, as Let's Encrypt
//!   validates from more than one place.
//!
//! What it implements (see `docs/verification.md` §6–§7):
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

mod address;
mod authoritative;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use address::{is_public, non_public_reason};

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
    inner: Arc<Inner>,
}

struct Inner {
    upstream: Upstream,
    /// Hard deadline for one lookup, on top of hickory's own per-attempt timeouts: no query
    /// can hang a check, whatever the transport does.
    deadline: Duration,
    /// Who answers, for reports ("the resolvers 10.0.0.1:53").
    description: String,
}

enum Upstream {
    /// Configured servers or the system resolver.
    Servers {
        cached: Box<TokioResolver>,
        fresh: Box<TokioResolver>,
    },
    /// Each zone's authoritative servers, found through another resolver.
    Authoritative(authoritative::Zones),
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("dns::Resolver")
            .field("upstream", &self.inner.description)
            .field("deadline", &self.inner.deadline)
            .finish_non_exhaustive()
    }
}

/// The whole-lookup deadline for a per-attempt `timeout`: two attempts over UDP, a TCP retry
/// after truncation, and slack.
fn deadline_for(timeout: Duration) -> Duration {
    timeout
        .saturating_mul(5)
        .saturating_add(Duration::from_secs(1))
}

impl Resolver {
    /// Builds a resolver. `servers` empty means the system resolver (`/etc/resolv.conf`);
    /// otherwise each server is asked over UDP, with TCP for truncated answers. `timeout` is
    /// the per-attempt timeout.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<Resolver, Error> {
        let cached = build(servers, timeout, CACHE_SIZE)?;
        let fresh = build(servers, timeout, 0)?;
        let description = if servers.is_empty() {
            "the system resolver".to_owned()
        } else {
            let list: Vec<String> = servers.iter().map(ToString::to_string).collect();
            format!("the resolvers {}", list.join(", "))
        };
        Ok(Resolver {
            inner: Arc::new(Inner {
                upstream: Upstream::Servers {
                    cached: Box::new(cached),
                    fresh: Box::new(fresh),
                },
                deadline: deadline_for(timeout),
                description,
            }),
        })
    }

    /// A resolver that asks each name's own authoritative servers directly (no recursion, no
    /// answer cache). `locator` finds them: the zone's NS records and their addresses. Only
    /// that discovery goes through `locator`; the answers themselves come from the zone, so a
    /// locator that invents absence cannot make this resolver confirm it. `port` is where the
    /// authoritative servers listen (53; tests use their own).
    pub fn authoritative(locator: &Resolver, timeout: Duration, port: u16) -> Resolver {
        Resolver {
            inner: Arc::new(Inner {
                upstream: Upstream::Authoritative(authoritative::Zones::new(
                    locator.clone(),
                    timeout,
                    port,
                )),
                deadline: deadline_for(timeout).saturating_mul(3),
                description: "each zone's authoritative servers".to_owned(),
            }),
        }
    }

    /// Who this resolver asks, for reports and logs.
    pub fn describe(&self) -> &str {
        &self.inner.description
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
    ///
    /// A boxed future with its `Send` bound written out: the authoritative upstream finds a
    /// zone's servers through another resolver's `lookup`, and that recursion needs a named
    /// future type.
    fn lookup<'a>(
        &'a self,
        name: &'a str,
        rtype: RecordType,
        fresh: bool,
    ) -> Pin<Box<dyn Future<Output = Result<Answer<Record>, Error>> + Send + 'a>> {
        Box::pin(async move {
            let rname = rtype_name(rtype);
            let query_name = to_name(name).map_err(|reason| Error::InvalidName {
                name: name.chars().take(300).collect(),
                rtype: rname,
                reason,
            })?;
            let display = host_string(&query_name);
            let timed_out = || Error::Timeout {
                name: display.clone(),
                rtype: rname,
            };
            match &self.inner.upstream {
                Upstream::Servers { cached, fresh: f } => {
                    let resolver = if fresh { f } else { cached };
                    let lookup = resolver.lookup(query_name.clone(), rtype);
                    match tokio::time::timeout(self.inner.deadline, lookup).await {
                        Err(_) => Err(timed_out()),
                        Ok(Ok(lookup)) => Ok(answer(&lookup, &query_name, rtype)),
                        Ok(Err(e)) => classify(e, display.clone(), rname),
                    }
                }
                Upstream::Authoritative(zones) => {
                    let lookup = zones.lookup(&query_name, rtype);
                    match tokio::time::timeout(self.inner.deadline, lookup).await {
                        Err(_) => Err(timed_out()),
                        Ok(r) => r,
                    }
                }
            }
        })
    }
}

/// The records of `rtype` at `query` (or along its CNAME chain) in a successful lookup.
fn answer(lookup: &Lookup, query: &Name, rtype: RecordType) -> Answer<Record> {
    let records = select(lookup, query, rtype);
    if records.is_empty() {
        // NOERROR with answers of other types only (or none on the chain): nothing of this
        // type exists at the name.
        Answer::NoData
    } else {
        Answer::Found(records)
    }
}

/// Builds one hickory resolver.
fn build(
    servers: &[SocketAddr],
    timeout: Duration,
    cache_size: u64,
) -> Result<TokioResolver, Error> {
    build_with(servers, timeout, cache_size, true)
}

/// A resolver that asks authoritative `servers` directly: no recursion wanted, no cache.
fn build_direct(servers: &[SocketAddr], timeout: Duration) -> Result<TokioResolver, Error> {
    build_with(servers, timeout, 0, false)
}

fn build_with(
    servers: &[SocketAddr],
    timeout: Duration,
    cache_size: u64,
    recursion_desired: bool,
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
    options.recursion_desired = recursion_desired;
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
        RecordType::NS => "NS",
        RecordType::CNAME => "CNAME",
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
}
