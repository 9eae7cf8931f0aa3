//! Asking a zone's own authoritative servers, without recursion: the second vantage point that
//! confirms a failure before a label is withdrawn, when no second resolver set is configured.
//!
//! For each name the zone is found by walking up its labels and asking the locator (the
//! ordinary resolver) for NS records; the servers' addresses come from the locator too, and
//! the answer itself from those servers, asked with RD=0 and no cache (RFC 1034 §4.3.1: an
//! authoritative server answers from its zone). A locator that invents absence therefore
//! cannot make a failure look confirmed: it can at worst make the zone unfindable, which is
//! "could not decide".
//!
//! CNAMEs (RFC 1034 §3.6.2) are followed here, one zone at a time: a name is first asked for
//! its CNAME, and a target in another zone is asked of that zone's servers. Asking the record
//! type directly would let hickory chase the target at the first zone's servers, which refuse
//! names outside their zone.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

use super::{Answer, Error, Resolver, answer, build_direct, classify, host_string, rtype_name};

/// How long a zone's servers are reused before they are looked up again.
const ZONE_TTL: Duration = Duration::from_secs(300);

/// Zones remembered at once; past it the cache starts over.
const MAX_ZONES: usize = 4096;

/// Name servers asked per zone.
const MAX_SERVERS: usize = 4;

/// CNAME hops followed across zones.
const MAX_HOPS: usize = 8;

/// The zones seen so far and a resolver for each zone's servers.
pub(super) struct Zones {
    locator: Resolver,
    timeout: Duration,
    port: u16,
    cache: Mutex<HashMap<Name, (Instant, Arc<TokioResolver>)>>,
}

impl Zones {
    pub(super) fn new(locator: Resolver, timeout: Duration, port: u16) -> Zones {
        Zones {
            locator,
            timeout,
            port,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Records of `rtype` at `name`, from the authoritative servers of each zone on its CNAME
    /// chain.
    pub(super) async fn lookup(
        &self,
        name: &Name,
        rtype: RecordType,
    ) -> Result<Answer<Record>, Error> {
        let mut current = name.clone();
        for _ in 0..MAX_HOPS {
            let servers = self.servers_for(&current).await?;
            let display = host_string(&current);
            if rtype != RecordType::CNAME {
                let cname = match servers.lookup(current.clone(), RecordType::CNAME).await {
                    Ok(lookup) => answer(&lookup, &current, RecordType::CNAME),
                    Err(e) => classify(e, display.clone(), "CNAME")?,
                };
                match cname {
                    Answer::NxDomain => return Ok(Answer::NxDomain),
                    Answer::Found(records) => {
                        let target = records.iter().find_map(|r| match &r.data {
                            RData::CNAME(c) => Some(c.0.clone()),
                            _ => None,
                        });
                        if let Some(target) = target {
                            current = target;
                            continue;
                        }
                    }
                    Answer::NoData => {}
                }
            }
            return match servers.lookup(current.clone(), rtype).await {
                Ok(lookup) => Ok(answer(&lookup, &current, rtype)),
                Err(e) => classify(e, display, rtype_name(rtype)),
            };
        }
        Err(Error::Failed {
            name: host_string(name),
            rtype: rtype_name(rtype),
            cause: format!("the CNAME chain is longer than {MAX_HOPS} links"),
        })
    }

    /// A resolver asking the authoritative servers of the zone that holds `name`.
    async fn servers_for(&self, name: &Name) -> Result<Arc<TokioResolver>, Error> {
        let mut zone = name.clone();
        loop {
            if let Some(found) = self.cached(&zone) {
                return Ok(found);
            }
            let zone_s = host_string(&zone);
            match self.locator.lookup(&zone_s, RecordType::NS, false).await? {
                Answer::Found(records) => {
                    let hosts: Vec<Name> = records
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::NS(ns) => Some(ns.0.clone()),
                            _ => None,
                        })
                        .take(MAX_SERVERS)
                        .collect();
                    let resolver = self.connect(&zone_s, &hosts).await?;
                    self.remember(zone, resolver.clone());
                    return Ok(resolver);
                }
                Answer::NoData | Answer::NxDomain => {}
            }
            if zone.num_labels() <= 1 {
                return Err(Error::Failed {
                    name: host_string(name),
                    rtype: "NS",
                    cause: "no zone above it has NS records".to_owned(),
                });
            }
            zone = zone.base_name();
        }
    }

    /// A resolver for the addresses of `hosts`, the name servers of `zone`.
    async fn connect(&self, zone: &str, hosts: &[Name]) -> Result<Arc<TokioResolver>, Error> {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut last_error = None;
        for host in hosts {
            match self.locator.ip(&host_string(host), false).await {
                Ok(answer) => addrs.extend(
                    answer
                        .records()
                        .iter()
                        .map(|ip: &IpAddr| SocketAddr::new(*ip, self.port)),
                ),
                Err(e) => last_error = Some(e),
            }
        }
        if addrs.is_empty() {
            return Err(last_error.unwrap_or_else(|| Error::Failed {
                name: zone.to_owned(),
                rtype: "NS",
                cause: "its name servers have no addresses".to_owned(),
            }));
        }
        Ok(Arc::new(build_direct(&addrs, self.timeout)?))
    }

    fn cached(&self, zone: &Name) -> Option<Arc<TokioResolver>> {
        let cache = self.cache.lock().ok()?;
        let (at, resolver) = cache.get(zone)?;
        (at.elapsed() < ZONE_TTL).then(|| resolver.clone())
    }

    fn remember(&self, zone: Name, resolver: Arc<TokioResolver>) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_ZONES {
                cache.clear();
            }
            cache.insert(zone, (Instant::now(), resolver));
        }
    }
}
