//! `FakeDns`: a real authoritative DNS server (hickory-server) on 127.0.0.1, UDP and TCP on
//! the same ephemeral port, whose records and failures can be changed while it runs.
//!
//! It answers like an authoritative server for every name it is asked about:
//! - records of the asked type (following CNAMEs inside the fake, and adding them to the
//!   answer as real servers do);
//! - NODATA (NOERROR, no answer, SOA in the authority section) for a name that exists, or that
//!   has names below it (an empty non-terminal, RFC 8020);
//! - NXDOMAIN (with SOA) otherwise.
//!
//! Faults per exact name: [`Fault::ServFail`], [`Fault::Refused`], [`Fault::Timeout`] (no answer
//! at all, over UDP or TCP) and [`Fault::Truncate`] (UDP answers carry the TC bit and no records,
//! so a resolver must retry over TCP, which answers normally).
//!
//! TTLs are 0 by default (also the SOA minimum, i.e. the negative TTL), so a resolver cache
//! never hides a change made between two checks; [`FakeDns::set_ttl`] changes that.
//!
//! Use `.test` names: the resolver answers `localhost` and `.invalid` itself (RFC 6761).
//! This file is self-contained so that benches can include it with `#[path]`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, MX, NS, SOA, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

/// A 2048-bit RSA public key (SubjectPublicKeyInfo, base64) published by
/// [`FakeDns::publish_good_operator`]. Its private half was discarded.
pub const DKIM_RSA_2048: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAmgLsKCud1Ieg4Pp5vfg2/0xlXL5vHaSB8vGQYMBSaoLbWNMHyK8WAllTOpW4uJY6SA/+wwIm84CwA4/XifIEWEpoxHHCWlF3ByamHU9p4kzKjGIl6SPyH9B01cAXGgtW5eJcHMyh22Ju4mg8RWi7PnmMNMKejvOdeR/RhnRSazI4kfjSaAcpYie9p4gDKAcRZ5xi3J6bzTIcgoWqWVIYvlmR3AW+9w9w3g+Oek2w/vTARfGAZMedyDavTb1f6XuzD3SyWtI6OYXe5xt/YL3/GswlywOORYyQomKthfv1RIzlutGpMkyit/OpM/RRT13JvHMTorCR7NyE8dYcyCxKWwIDAQAB";

/// A 512-bit RSA key (too small: verifiers reject it).
pub const DKIM_RSA_512: &str = "MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAKgzdcjig7MjOoGQ0Vy06mtRZ10gJbl4OgDSkTVf8QaElMYVXs6p8Wve59VUhVoltYPNasDEOnBBGVP/CxvY8jMCAwEAAQ==";

/// A raw Ed25519 public key (RFC 8463 form).
pub const DKIM_ED25519: &str = "8KK/o/JVMokSx0IZcNO0fk/BENjT6pj4noLS9mk08nA=";

/// The address of `mx1.<domain>` in [`FakeDns::publish_good_operator`]: a globally
/// reachable unicast address (the verifier rejects private and documentation ranges for MX
/// hosts). Tests never connect to it.
pub const MX_ADDRESS: Ipv4Addr = Ipv4Addr::new(11, 22, 33, 44);

/// The SPF record of [`FakeDns::publish_good_operator`].
pub const GOOD_SPF: &str = "v=spf1 ip4:192.0.2.0/24 -all";

/// The DMARC record of [`FakeDns::publish_good_operator`].
pub const GOOD_DMARC: &str = "v=DMARC1; p=reject";

/// A name every fake serves an address for: the labeler's `dnsCanaries` in tests, so that a
/// healthy fake is a resolver that works and a lying one is not.
pub const CANARY: &str = "canary.fake.test";

/// A failure the server can be told to produce for one name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer SERVFAIL.
    ServFail,
    /// Answer REFUSED.
    Refused,
    /// Never answer.
    Timeout,
    /// Answer NXDOMAIN: a resolver that lies about absence.
    NxDomain,
    /// Over UDP, answer with the TC bit and no records; over TCP, answer normally.
    Truncate,
}

#[derive(Clone, Debug, Default)]
struct NameData {
    /// One entry per TXT record; each a list of character-strings.
    txt: Vec<Vec<Vec<u8>>>,
    mx: Vec<(u16, String)>,
    a: Vec<Ipv4Addr>,
    aaaa: Vec<Ipv6Addr>,
    cname: Option<String>,
    ns: Vec<String>,
}

impl NameData {
    fn is_empty(&self) -> bool {
        self.txt.is_empty()
            && self.mx.is_empty()
            && self.a.is_empty()
            && self.aaaa.is_empty()
            && self.cname.is_none()
            && self.ns.is_empty()
    }
}

#[derive(Debug, Default)]
struct Zone {
    names: HashMap<String, NameData>,
    faults: HashMap<String, Fault>,
    /// A fault for every name (the whole server is down), over the per-name ones.
    all: Option<Fault>,
    queries: HashMap<String, usize>,
    ttl: u32,
}

/// The running server. Dropping it stops it.
pub struct FakeDns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    _server: Server<Handler>,
}

/// Lowercase, without the trailing dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn fqdn(name: &str) -> Name {
    if name == "." || name.is_empty() {
        return Name::root();
    }
    Name::from_ascii(format!("{}.", key(name))).expect("valid test DNS name")
}

impl FakeDns {
    /// Starts a server on 127.0.0.1 (UDP and TCP on one ephemeral port).
    pub async fn start() -> FakeDns {
        FakeDns::start_on(Ipv4Addr::LOCALHOST).await
    }

    /// Starts a server on `ip` (another 127.0.0.0/8 address, for a second server that must
    /// be told apart from the first by address).
    pub async fn start_on(ip: Ipv4Addr) -> FakeDns {
        let zone = Arc::new(Mutex::new(Zone::default()));
        let handler = Handler { zone: zone.clone() };
        let mut server = Server::new(handler);
        // UDP gets an ephemeral port; TCP must bind the same one. Another process may hold
        // it for TCP, so try a bounded number of ports.
        for _ in 0..50 {
            let udp = tokio::net::UdpSocket::bind((ip, 0)).await.unwrap();
            let addr = udp.local_addr().unwrap();
            let Ok(tcp) = tokio::net::TcpListener::bind(addr).await else {
                continue;
            };
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(5), 64);
            let dns = FakeDns {
                addr,
                zone,
                _server: server,
            };
            dns.set_a(CANARY, &[Ipv4Addr::new(192, 0, 2, 53)]);
            return dns;
        }
        panic!("could not bind UDP and TCP on one port");
    }

    /// The server's address (for `dns::Resolver::new(&[addr], ..)`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A resolver for this server with a 500 ms per-attempt timeout.
    pub fn resolver(&self) -> atmos_labeler::dns::Resolver {
        atmos_labeler::dns::Resolver::new(&[self.addr], Duration::from_millis(500)).unwrap()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Zone) -> R) -> R {
        f(&mut self.zone.lock().unwrap())
    }

    fn edit(&self, name: &str, f: impl FnOnce(&mut NameData)) {
        self.with(|z| {
            let data = z.names.entry(key(name)).or_default();
            f(data);
            if data.is_empty() {
                z.names.remove(&key(name));
            }
        });
    }

    /// TTL of every record and negative answer from now on (default 0: never cached).
    pub fn set_ttl(&self, secs: u32) {
        self.with(|z| z.ttl = secs);
    }

    /// Replaces the TXT records at `name`: one record per item. Items longer than 255 bytes
    /// are split into 255-byte character-strings, as DNS requires. An empty slice removes
    /// them.
    pub fn set_txt(&self, name: &str, records: &[&str]) {
        let records = records
            .iter()
            .map(|r| {
                if r.is_empty() {
                    vec![Vec::new()]
                } else {
                    r.as_bytes().chunks(255).map(<[u8]>::to_vec).collect()
                }
            })
            .collect();
        self.edit(name, |d| d.txt = records);
    }

    /// Replaces the TXT records at `name` with records made of explicit character-strings
    /// (each at most 255 bytes).
    pub fn set_txt_strings(&self, name: &str, records: &[&[&str]]) {
        let records = records
            .iter()
            .map(|strings| {
                strings
                    .iter()
                    .map(|s| {
                        assert!(s.len() <= 255, "a TXT character-string holds 255 bytes");
                        s.as_bytes().to_vec()
                    })
                    .collect()
            })
            .collect();
        self.edit(name, |d| d.txt = records);
    }

    /// Replaces the MX records at `name`; an exchange of `"."` is a null MX.
    pub fn set_mx(&self, name: &str, records: &[(u16, &str)]) {
        let records = records.iter().map(|(p, e)| (*p, (*e).to_owned())).collect();
        self.edit(name, |d| d.mx = records);
    }

    /// Replaces the A records at `name`.
    pub fn set_a(&self, name: &str, addrs: &[Ipv4Addr]) {
        let addrs = addrs.to_vec();
        self.edit(name, |d| d.a = addrs);
    }

    /// Replaces the AAAA records at `name`.
    pub fn set_aaaa(&self, name: &str, addrs: &[Ipv6Addr]) {
        let addrs = addrs.to_vec();
        self.edit(name, |d| d.aaaa = addrs);
    }

    /// Makes `name` a CNAME to `target` (other records at `name` are hidden while it is one).
    pub fn set_cname(&self, name: &str, target: &str) {
        let target = key(target);
        self.edit(name, |d| d.cname = Some(target));
    }

    /// Sets the NS records of `zone`.
    pub fn set_ns(&self, zone: &str, hosts: &[&str]) {
        self.edit(zone, |d| d.ns = hosts.iter().map(|h| key(h)).collect());
    }

    /// Removes every record at `name` (not below it).
    pub fn remove(&self, name: &str) {
        self.with(|z| z.names.remove(&key(name)));
    }

    /// Makes every query for exactly `name` fail this way.
    pub fn fault(&self, name: &str, fault: Fault) {
        self.with(|z| z.faults.insert(key(name), fault));
    }

    /// Makes every name misbehave (`Some`), e.g. the whole server silent, or recovers (`None`).
    pub fn fault_all(&self, fault: Option<Fault>) {
        self.with(|z| z.all = fault);
    }

    /// Ends a [`FakeDns::fault`].
    pub fn clear_fault(&self, name: &str) {
        self.with(|z| z.faults.remove(&key(name)));
    }

    /// How many queries (any type, UDP or TCP) have been received for exactly `name`.
    pub fn query_count(&self, name: &str) -> usize {
        self.with(|z| z.queries.get(&key(name)).copied().unwrap_or(0))
    }

    /// How many queries have been received in total.
    pub fn total_queries(&self) -> usize {
        self.with(|z| z.queries.values().sum())
    }

    /// Publishes a complete, passing setup for `domain`:
    /// - MX `10 mx1.<domain>`, and `mx1.<domain>` A [`MX_ADDRESS`];
    /// - SPF [`GOOD_SPF`] at `<domain>`;
    /// - for each selector, the 2048-bit [`DKIM_RSA_2048`] key at `<sel>._domainkey.<domain>`
    ///   as `v=DKIM1; k=rsa; p=…`, split over two character-strings;
    /// - DMARC [`GOOD_DMARC`] at `_dmarc.<domain>`;
    /// - `did=<did>` at `_atproto.<domain>`.
    pub fn publish_good_operator(&self, domain: &str, did: &str, selectors: &[&str]) {
        let mx = format!("mx1.{domain}");
        self.set_mx(domain, &[(10, &mx)]);
        self.set_a(&mx, &[MX_ADDRESS]);
        self.set_txt(domain, &[GOOD_SPF]);
        let (first, second) = DKIM_RSA_2048.split_at(200);
        let first = format!("v=DKIM1; k=rsa; p={first}");
        for sel in selectors {
            self.set_txt_strings(&format!("{sel}._domainkey.{domain}"), &[&[&first, second]]);
        }
        self.set_txt(&format!("_dmarc.{domain}"), &[GOOD_DMARC]);
        self.set_txt(&format!("_atproto.{domain}"), &[&format!("did={did}")]);
    }
}

/// What the handler decided to send.
enum Reply {
    Silent,
    Error(ResponseCode),
    Truncated,
    Answer {
        code: ResponseCode,
        answers: Vec<Record>,
        soa: Option<Box<Record>>,
    },
}

#[derive(Clone)]
struct Handler {
    zone: Arc<Mutex<Zone>>,
}

impl Handler {
    /// Decides the reply to `name`/`rtype` received over `protocol`.
    fn decide(&self, name: &str, rtype: RecordType, protocol: Protocol) -> Reply {
        let mut zone = self.zone.lock().unwrap();
        *zone.queries.entry(name.to_owned()).or_default() += 1;
        match zone.all.as_ref().or_else(|| zone.faults.get(name)) {
            Some(Fault::Timeout) => return Reply::Silent,
            Some(Fault::ServFail) => return Reply::Error(ResponseCode::ServFail),
            Some(Fault::Refused) => return Reply::Error(ResponseCode::Refused),
            Some(Fault::Truncate) if protocol == Protocol::Udp => return Reply::Truncated,
            Some(Fault::NxDomain) => {
                return Reply::Answer {
                    code: ResponseCode::NXDomain,
                    answers: Vec::new(),
                    soa: None,
                };
            }
            _ => {}
        }
        let ttl = zone.ttl;
        let mut answers = Vec::new();
        let mut current = name.to_owned();
        // Follow CNAMEs inside the fake (bounded); stop at a name with a fault, which the
        // resolver will then ask about separately.
        for _ in 0..8 {
            let Some(data) = zone.names.get(&current) else {
                break;
            };
            match (&data.cname, rtype) {
                (Some(target), t) if t != RecordType::CNAME => {
                    answers.push(Record::from_rdata(
                        fqdn(&current),
                        ttl,
                        RData::CNAME(CNAME(fqdn(target))),
                    ));
                    if zone.faults.contains_key(target) {
                        return Reply::Answer {
                            code: ResponseCode::NoError,
                            answers,
                            soa: None,
                        };
                    }
                    current = target.clone();
                }
                _ => break,
            }
        }
        let owner = fqdn(&current);
        let found: Vec<RData> = match zone.names.get(&current) {
            None => Vec::new(),
            Some(d) => match rtype {
                RecordType::TXT => d
                    .txt
                    .iter()
                    .map(|strings| {
                        RData::TXT(TXT::from_bytes(strings.iter().map(Vec::as_slice).collect()))
                    })
                    .collect(),
                RecordType::MX => {
                    d.mx.iter()
                        .map(|(p, e)| RData::MX(MX::new(*p, fqdn(e))))
                        .collect()
                }
                RecordType::A => d.a.iter().map(|ip| RData::A(A(*ip))).collect(),
                RecordType::AAAA => d.aaaa.iter().map(|ip| RData::AAAA(AAAA(*ip))).collect(),
                RecordType::NS => d.ns.iter().map(|h| RData::NS(NS(fqdn(h)))).collect(),
                RecordType::CNAME => d
                    .cname
                    .iter()
                    .map(|t| RData::CNAME(CNAME(fqdn(t))))
                    .collect(),
                _ => Vec::new(),
            },
        };
        answers.extend(
            found
                .into_iter()
                .map(|rdata| Record::from_rdata(owner.clone(), ttl, rdata)),
        );
        if !answers.is_empty() {
            return Reply::Answer {
                code: ResponseCode::NoError,
                answers,
                soa: None,
            };
        }
        let below = format!(".{current}");
        let exists =
            zone.names.contains_key(&current) || zone.names.keys().any(|k| k.ends_with(&below));
        let top = current.rsplit('.').next().unwrap_or("test").to_owned();
        let soa = Record::from_rdata(
            fqdn(&top),
            ttl,
            RData::SOA(SOA::new(
                fqdn("ns.fake.test"),
                fqdn("hostmaster.fake.test"),
                1,
                3600,
                600,
                86400,
                ttl,
            )),
        );
        Reply::Answer {
            code: if exists {
                ResponseCode::NoError
            } else {
                ResponseCode::NXDomain
            },
            answers,
            soa: Some(Box::new(soa)),
        }
    }
}

impl RequestHandler for Handler {
    // The expansion of hickory's `#[async_trait]` signature, written out so that the tests
    // need no `async-trait` dependency of their own.
    fn handle_request<'life0, 'life1, 'async_trait, R, T>(
        &'life0 self,
        request: &'life1 Request,
        mut response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'async_trait>>
    where
        R: 'async_trait + ResponseHandler,
        T: 'async_trait + Time,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.authoritative = true;
            let no_reply = ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            });
            let Ok(info) = request.request_info() else {
                return no_reply;
            };
            let name = key(&info.query.name().to_string());
            let rtype = info.query.query_type();
            let reply = self.decide(&name, rtype, request.protocol());
            let edns = request.edns.as_ref().map(|req| {
                let mut e = Edns::new();
                e.set_max_payload(req.max_payload().max(512));
                e
            });
            let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
            let (answers, soa) = match reply {
                Reply::Silent => return no_reply,
                Reply::Error(code) => {
                    metadata.response_code = code;
                    (Vec::new(), None)
                }
                Reply::Truncated => {
                    metadata.truncation = true;
                    (Vec::new(), None)
                }
                Reply::Answer { code, answers, soa } => {
                    metadata.response_code = code;
                    (answers, soa)
                }
            };
            let response = builder.build(
                metadata,
                answers.iter(),
                std::iter::empty(),
                soa.iter().map(|r| &**r),
                std::iter::empty(),
            );
            response_handle
                .send_response(response)
                .await
                .unwrap_or(no_reply)
        })
    }
}
