//! atproto identity over HTTP: DID documents (did:plc and did:web), records and repository
//! status fetched from the DID's own PDS.
//!
//! Owns the HTTP clients and a small in-memory cache of DID documents. It does not decide
//! anything about domains (that is [`crate::verify`]); it only fetches, validates shapes and
//! classifies failures as definitive or transient.
//!
//! Specs implemented (see `docs/protocol.md` §3, `docs/verification.md` §5):
//! - atproto <https://atproto.com/specs/did>: `did:plc` resolved at `{plc}/{did}`, `did:web` (hostname only, no
//!   path) at `https://{host}/.well-known/did.json`; the document's `id` must equal the DID;
//!   the PDS is the `#atproto_pds` service of type `AtprotoPersonalDataServer`; the handle is
//!   the first syntactically valid `at://` entry of `alsoKnownAs`.
//! - atproto <https://atproto.com/specs/handle> syntax for that handle (ASCII, ≤253 chars, ≥2 labels, the last label
//!   not starting with a digit), normalised to lowercase.
//! - XRPC `com.atproto.repo.getRecord` and `com.atproto.sync.getRepoStatus`, with the XRPC error
//!   body `{"error": …, "message": …}`.
//!
//! Safety rules: bodies are size-limited, every request has a timeout, redirects are never
//! followed, and did:web and PDS requests (hosts named by untrusted documents) never reach
//! private, loopback, link-local, CGNAT, unspecified or other reserved addresses unless
//! [`Options::allow_private_addresses`] is set: IP-literal hosts are checked before any
//! request, and host names are resolved through [`crate::dns`] with non-public answers
//! dropped. Only a 404 or 410 for a DID document (and an unsupported DID) is definitive.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{StatusCode, Url};
use serde_json::Value;

use crate::dns;

/// Largest DID document or record body accepted.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Largest `getRepoStatus` (or error) body accepted.
const MAX_STATUS_BYTES: usize = 64 * 1024;

/// Largest `listRecords` page accepted (100 attestation records are ~30 KB).
const MAX_LIST_BYTES: usize = 1024 * 1024;

/// How long a fetched DID document is reused when `fresh` is false.
pub const CACHE_TTL: Duration = Duration::from_secs(300);

/// Most documents kept; when full, expired entries go first, then everything.
const CACHE_MAX: usize = 10_000;

/// `User-Agent` of every request.
const USER_AGENT: &str = concat!("atmos-labeler/", env!("CARGO_PKG_VERSION"));

/// Service id of the PDS in a DID document (<https://atproto.com/specs/did>).
const PDS_SERVICE_ID: &str = "#atproto_pds";
/// Service type of the PDS.
const PDS_SERVICE_TYPE: &str = "AtprotoPersonalDataServer";
/// Verification method id of the repository signing key.
const SIGNING_KEY_ID: &str = "#atproto";
/// Verification method id of a labeler's label-signing key (<https://atproto.com/specs/label>
/// "Labeler Service Identity").
const LABEL_KEY_ID: &str = "#atproto_label";

/// How to reach identities.
#[derive(Clone, Debug)]
pub struct Options {
    /// PLC directory base URL, e.g. `https://plc.directory` (no trailing slash needed).
    pub plc_url: String,
    /// Allow did:web and PDS hosts on private, loopback and other reserved addresses, and
    /// plain `http://` for them (tests and local development only).
    pub allow_private_addresses: bool,
    /// Timeout of a whole request (connect, headers and body).
    pub timeout: Duration,
}

/// A DID document, reduced to what the labeler uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DidDocument {
    /// The document's `id`, equal to the DID it was fetched for.
    pub id: String,
    /// `alsoKnownAs` entries as written (strings only).
    pub also_known_as: Vec<String>,
    /// The `#atproto_pds` service endpoint, if any (not yet validated as a URL).
    pub pds: Option<String>,
    /// `publicKeyMultibase` of the `#atproto` verification method, if any.
    pub signing_key: Option<String>,
    /// `publicKeyMultibase` of the `#atproto_label` verification method, if any: the key a
    /// labeler's labels must verify against (never `#atproto` in its place).
    pub label_key: Option<String>,
}

impl DidDocument {
    /// The first syntactically valid `at://` handle in `alsoKnownAs`, lowercased. Later
    /// entries are ignored even if the first one does not resolve (<https://atproto.com/specs/handle>).
    pub fn handle(&self) -> Option<String> {
        self.also_known_as
            .iter()
            .filter_map(|aka| aka.strip_prefix("at://"))
            .find(|h| crate::syntax::is_handle(h))
            .map(str::to_ascii_lowercase)
    }

    /// Parses a document and checks that its `id` is `did`.
    fn parse(did: &str, body: &[u8], url: &str) -> Result<DidDocument, Error> {
        let v: Value = serde_json::from_slice(body).map_err(|e| Error::Malformed {
            url: url.to_owned(),
            reason: format!("not JSON: {e}"),
        })?;
        let id = v
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Malformed {
                url: url.to_owned(),
                reason: "the document has no string \"id\"".to_owned(),
            })?;
        if id != did {
            return Err(Error::IdMismatch {
                url: url.to_owned(),
                did: did.to_owned(),
                found: id.chars().take(200).collect(),
            });
        }
        let also_known_as = v
            .get("alsoKnownAs")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let is_ref = |value: Option<&Value>, fragment: &str| {
            value.and_then(Value::as_str).is_some_and(|s| {
                s == fragment || s.strip_prefix(did).is_some_and(|rest| rest == fragment)
            })
        };
        let pds = v
            .get("service")
            .and_then(Value::as_array)
            .and_then(|services| {
                services.iter().find(|s| {
                    is_ref(s.get("id"), PDS_SERVICE_ID)
                        && s.get("type").and_then(Value::as_str) == Some(PDS_SERVICE_TYPE)
                })
            })
            .and_then(|s| s.get("serviceEndpoint"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let method_key = |fragment: &str| {
            v.get("verificationMethod")
                .and_then(Value::as_array)
                .and_then(|methods| methods.iter().find(|m| is_ref(m.get("id"), fragment)))
                .and_then(|m| m.get("publicKeyMultibase"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Ok(DidDocument {
            id: id.to_owned(),
            also_known_as,
            pds,
            signing_key: method_key(SIGNING_KEY_ID),
            label_key: method_key(LABEL_KEY_ID),
        })
    }
}

/// A record as the author's PDS returned it.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordCopy {
    /// `at://{did}/{collection}/{rkey}`.
    pub uri: String,
    /// The record's CID, when the PDS gave one.
    pub cid: Option<String>,
    /// The record itself (a JSON object).
    pub value: Value,
}

/// `com.atproto.sync.getRepoStatus` as the PDS answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoStatus {
    /// Whether the repository is active.
    pub active: bool,
    /// Why not, when inactive (`takendown`, `suspended`, `deactivated`, …).
    pub status: Option<String>,
}

/// Identity failures. Only [`Error::is_definitive`] ones say something about the DID itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
    /// The DID is malformed or of a method this labeler does not resolve.
    #[error("{did:?} is not a resolvable DID: {reason}")]
    UnsupportedDid {
        /// The DID (truncated).
        did: String,
        /// What is wrong.
        reason: String,
    },
    /// The URL's host is (or resolves only to) a non-public address.
    #[error("refusing to fetch {url}: {reason}")]
    Forbidden {
        /// The URL that was not fetched.
        url: String,
        /// Which address rule refused it.
        reason: String,
    },
    /// The PLC directory or did:web host says the DID does not exist (404, 410).
    #[error("DID {did} not found: {url} answered HTTP {status}")]
    NotFound {
        /// The DID.
        did: String,
        /// Where it was looked up.
        url: String,
        /// 404 or 410.
        status: u16,
    },
    /// The DID document has no usable `#atproto_pds` endpoint.
    #[error("the DID document of {did} has no usable #atproto_pds endpoint: {reason}")]
    NoPds {
        /// The DID.
        did: String,
        /// What is missing or wrong.
        reason: String,
    },
    /// An unexpected HTTP status (5xx, 3xx since redirects are not followed, other 4xx).
    #[error("{url} answered HTTP {status}{detail}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// `: <XRPC error>: <message>` when the body had one, else empty.
        detail: String,
    },
    /// Connection refused, TLS failure, timeout, reset…
    #[error("request to {url} failed: {cause}")]
    Http {
        /// The URL.
        url: String,
        /// The cause chain.
        cause: String,
    },
    /// The body exceeded the size limit.
    #[error("{url} sent more than {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The body is not what the endpoint promises.
    #[error("{url} sent an invalid response: {reason}")]
    Malformed {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The document's `id` is another DID.
    #[error("{url} served a document for {found:?}, not {did}")]
    IdMismatch {
        /// The URL.
        url: String,
        /// The DID asked for.
        did: String,
        /// The `id` found.
        found: String,
    },
}

impl Error {
    /// True only for definitive answers about the DID: the directory or did:web host said
    /// "not found" (HTTP 404/410), or the DID cannot be resolved by any method we support.
    /// Timeouts, 5xx, bad TLS, refused connections, oversized or malformed bodies, refused
    /// addresses and PDS errors are all transient as far as labels are concerned.
    pub fn is_definitive(&self) -> bool {
        matches!(self, Error::NotFound { .. } | Error::UnsupportedDid { .. })
    }

    /// The XRPC error name of an unexpected XRPC answer (e.g. `RepoNotFound`), if any.
    pub fn xrpc_error(&self) -> Option<&str> {
        match self {
            Error::Status { detail, .. } => detail
                .strip_prefix(": ")
                .and_then(|d| d.split(':').next())
                .filter(|e| !e.is_empty()),
            _ => None,
        }
    }
}

/// Fetches identities. Cheap to clone.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

struct Inner {
    /// For the configured PLC directory (trusted): no address filtering.
    plc: reqwest::Client,
    /// For hosts named by documents (did:web, PDS): public addresses only.
    web: reqwest::Client,
    plc_url: String,
    allow_private: bool,
    cache: Mutex<HashMap<String, (Instant, DidDocument)>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("identity::Resolver")
            .field("plc_url", &self.inner.plc_url)
            .field("allow_private", &self.inner.allow_private)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// Builds the HTTP clients. `dns` resolves did:web and PDS host names.
    pub fn new(options: Options, dns: dns::Resolver) -> Result<Resolver, Error> {
        let Options {
            plc_url,
            allow_private_addresses,
            timeout,
        } = options;
        let base = |b: reqwest::ClientBuilder| {
            b.redirect(reqwest::redirect::Policy::none())
                .timeout(timeout)
                .connect_timeout(timeout)
                .user_agent(USER_AGENT)
        };
        let plc = base(reqwest::Client::builder())
            .build()
            .map_err(|e| Error::Setup(e.to_string()))?;
        let web = base(reqwest::Client::builder())
            // A proxy would connect on our behalf and bypass the address filter.
            .no_proxy()
            .dns_resolver(PublicOnly {
                dns,
                allow_private: allow_private_addresses,
            })
            .build()
            .map_err(|e| Error::Setup(e.to_string()))?;
        Ok(Resolver {
            inner: Arc::new(Inner {
                plc,
                web,
                plc_url: plc_url.trim_end_matches('/').to_owned(),
                allow_private: allow_private_addresses,
                cache: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The DID document: did:plc via `{plc_url}/{did}`, did:web via
    /// `https://{host}/.well-known/did.json`. `doc.id` must equal the DID. `fresh` bypasses the
    /// cache (the result still refreshes it).
    pub async fn did_document(&self, did: &str, fresh: bool) -> Result<DidDocument, Error> {
        if !fresh && let Some(doc) = self.cached(did) {
            return Ok(doc);
        }
        if !crate::syntax::is_did(did) {
            return Err(unsupported(did, "not a DID"));
        }
        let (client, url) = if did.starts_with("did:plc:") {
            (&self.inner.plc, format!("{}/{did}", self.inner.plc_url))
        } else if did.starts_with("did:web:") {
            (&self.inner.web, did_web_url(did, self.inner.allow_private)?)
        } else {
            return Err(unsupported(did, "only did:plc and did:web are supported"));
        };
        let url = parse_url(&url)?;
        let (status, body) = self.fetch(client, url.clone(), MAX_DOCUMENT_BYTES).await?;
        let url_s = url.to_string();
        match status {
            StatusCode::OK => {
                let doc = DidDocument::parse(did, &body, &url_s)?;
                self.store(did, &doc);
                Ok(doc)
            }
            StatusCode::NOT_FOUND | StatusCode::GONE => Err(Error::NotFound {
                did: did.to_owned(),
                url: url_s,
                status: status.as_u16(),
            }),
            other => Err(Error::Status {
                url: url_s,
                status: other.as_u16(),
                detail: xrpc_detail(&body),
            }),
        }
    }

    /// `com.atproto.repo.getRecord` on the DID's own PDS. `Ok(None)`: the PDS says the record
    /// does not exist (HTTP 400 with error `RecordNotFound`, or 404).
    pub async fn get_record(
        &self,
        did: &str,
        collection: &str,
        rkey: &str,
    ) -> Result<Option<RecordCopy>, Error> {
        let mut url = self.xrpc_url(did, "com.atproto.repo.getRecord").await?;
        url.query_pairs_mut()
            .append_pair("repo", did)
            .append_pair("collection", collection)
            .append_pair("rkey", rkey);
        let (status, body) = self
            .fetch(&self.inner.web, url.clone(), MAX_DOCUMENT_BYTES)
            .await?;
        let url_s = url.to_string();
        match status {
            StatusCode::OK => {
                let expected = format!("at://{did}/{collection}/{rkey}");
                parse_record(&body, &expected, &url_s).map(Some)
            }
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::BAD_REQUEST
                if xrpc_error_name(&body).as_deref() == Some("RecordNotFound") =>
            {
                Ok(None)
            }
            other => Err(Error::Status {
                url: url_s,
                status: other.as_u16(),
                detail: xrpc_detail(&body),
            }),
        }
    }

    /// One page of `com.atproto.repo.listRecords` on the DID's PDS: up to `limit` (≤ 100)
    /// records of `collection` after `cursor`, and the cursor of the next page when the PDS
    /// gave one. Every record's `uri` must be in this DID's repo and collection.
    pub async fn list_records(
        &self,
        did: &str,
        collection: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<RecordCopy>, Option<String>), Error> {
        let mut url = self.xrpc_url(did, "com.atproto.repo.listRecords").await?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("repo", did)
                .append_pair("collection", collection)
                .append_pair("limit", &limit.clamp(1, 100).to_string());
            if let Some(c) = cursor {
                q.append_pair("cursor", c);
            }
        }
        let (v, url_s) = self.xrpc_json(url, MAX_LIST_BYTES).await?;
        let malformed = |reason: &str| Error::Malformed {
            url: url_s.clone(),
            reason: reason.to_owned(),
        };
        let records = v
            .get("records")
            .and_then(Value::as_array)
            .ok_or_else(|| malformed("no array \"records\""))?;
        let prefix = format!("at://{did}/{collection}/");
        let mut out = Vec::with_capacity(records.len());
        for r in records.iter().take(limit.clamp(1, 100)) {
            let uri = r.get("uri").and_then(Value::as_str).unwrap_or_default();
            if !uri.starts_with(&prefix) {
                return Err(malformed(
                    "a record's \"uri\" is not in the repo and collection asked for",
                ));
            }
            let copy = parse_record(r.to_string().as_bytes(), uri, &url_s)?;
            out.push(copy);
        }
        let next = v
            .get("cursor")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty() && c.len() <= 512)
            .map(str::to_owned);
        Ok((out, next))
    }

    /// `com.atproto.sync.getRepoStatus` on the DID's PDS.
    pub async fn repo_status(&self, did: &str) -> Result<RepoStatus, Error> {
        let mut url = self.xrpc_url(did, "com.atproto.sync.getRepoStatus").await?;
        url.query_pairs_mut().append_pair("did", did);
        let (v, url_s) = self.xrpc_json(url, MAX_STATUS_BYTES).await?;
        let malformed = |reason: &str| Error::Malformed {
            url: url_s.clone(),
            reason: reason.to_owned(),
        };
        if let Some(d) = v.get("did")
            && d.as_str() != Some(did)
        {
            return Err(malformed("the status is for another DID"));
        }
        let active = v
            .get("active")
            .and_then(Value::as_bool)
            .ok_or_else(|| malformed("no boolean \"active\""))?;
        let status = match v.get("status") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.chars().take(100).collect()),
            Some(_) => return Err(malformed("\"status\" is not a string")),
        };
        Ok(RepoStatus { active, status })
    }

    /// GETs an XRPC query on a PDS (at most `limit` bytes) and parses its JSON body: any
    /// status but 200 is [`Error::Status`] with the XRPC error, a body that is not JSON is
    /// [`Error::Malformed`]. Returns the body and the URL (for later errors).
    async fn xrpc_json(&self, url: Url, limit: usize) -> Result<(Value, String), Error> {
        let (status, body) = self.fetch(&self.inner.web, url.clone(), limit).await?;
        let url_s = url.to_string();
        if status != StatusCode::OK {
            return Err(Error::Status {
                url: url_s,
                status: status.as_u16(),
                detail: xrpc_detail(&body),
            });
        }
        match serde_json::from_slice(&body) {
            Ok(v) => Ok((v, url_s)),
            Err(_) => Err(Error::Malformed {
                url: url_s,
                reason: "not JSON".to_owned(),
            }),
        }
    }

    /// Drops any cached document for `did` (identity events, account migrations).
    pub fn forget(&self, did: &str) {
        if let Ok(mut cache) = self.inner.cache.lock() {
            cache.remove(did);
        }
    }

    fn cached(&self, did: &str) -> Option<DidDocument> {
        let cache = self.inner.cache.lock().ok()?;
        let (at, doc) = cache.get(did)?;
        (at.elapsed() < CACHE_TTL).then(|| doc.clone())
    }

    fn store(&self, did: &str, doc: &DidDocument) {
        let Ok(mut cache) = self.inner.cache.lock() else {
            return;
        };
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(did.to_owned(), (Instant::now(), doc.clone()));
    }

    /// `{pds}/xrpc/{nsid}` for the DID's PDS, after checking the endpoint.
    async fn xrpc_url(&self, did: &str, nsid: &str) -> Result<Url, Error> {
        let doc = self.did_document(did, false).await?;
        let no_pds = |reason: &str| Error::NoPds {
            did: did.to_owned(),
            reason: reason.to_owned(),
        };
        let endpoint = doc.pds.ok_or_else(|| no_pds("no #atproto_pds service"))?;
        let base = Url::parse(&endpoint).map_err(|_| no_pds("the endpoint is not a URL"))?;
        let http_ok = self.inner.allow_private && base.scheme() == "http";
        if base.scheme() != "https" && !http_ok {
            return Err(no_pds("the endpoint is not an https:// URL"));
        }
        if !base.username().is_empty()
            || base.password().is_some()
            || base.query().is_some()
            || base.fragment().is_some()
            || !(base.path().is_empty() || base.path() == "/")
        {
            return Err(no_pds(
                "the endpoint must be a bare origin (no path, query or credentials)",
            ));
        }
        let Some(host) = base.host_str() else {
            return Err(no_pds("the endpoint has no host"));
        };
        let origin = match base.port() {
            Some(port) => format!("{}://{host}:{port}", base.scheme()),
            None => format!("{}://{host}", base.scheme()),
        };
        let url = parse_url(&format!("{origin}/xrpc/{nsid}"))?;
        check_literal_host(&url, self.inner.allow_private)?;
        Ok(url)
    }

    /// GET with the size limit. Returns the status and the (possibly empty) body.
    async fn fetch(
        &self,
        client: &reqwest::Client,
        url: Url,
        limit: usize,
    ) -> Result<(StatusCode, Vec<u8>), Error> {
        let url_s = url.to_string();
        let http_err = |e: reqwest::Error| match refusal(&e) {
            Some(reason) => Error::Forbidden {
                url: url_s.clone(),
                reason,
            },
            None => Error::Http {
                url: url_s.clone(),
                cause: error_chain(&e),
            },
        };
        let mut resp = client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(http_err)?;
        let status = resp.status();
        if resp.content_length().is_some_and(|len| len > limit as u64) {
            return Err(Error::TooLarge { url: url_s, limit });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(http_err)? {
            if body.len() + chunk.len() > limit {
                return Err(Error::TooLarge { url: url_s, limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }
}

/// Resolves host names for the untrusted-host client through [`crate::dns`] and drops
/// non-public addresses (`reqwest` never calls it for IP literals; those are checked before
/// the request by [`check_literal_host`]).
struct PublicOnly {
    dns: dns::Resolver,
    allow_private: bool,
}

/// The error a [`PublicOnly`] lookup fails with, found again in reqwest's error chain.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let dns = self.dns.clone();
        let allow_private = self.allow_private;
        Box::pin(async move {
            if allow_private && host == "localhost" {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
                return Ok(Box::new(std::iter::once(addr)) as reqwest::dns::Addrs);
            }
            let answer = dns.ip(&host, false).await?;
            let all = answer.records();
            if all.is_empty() {
                return Err(format!("{host} has no A/AAAA records").into());
            }
            let allowed: Vec<SocketAddr> = all
                .iter()
                .filter(|ip| allow_private || dns::is_public(**ip))
                .map(|ip| SocketAddr::new(*ip, 0))
                .collect();
            if allowed.is_empty() {
                let reason = all
                    .first()
                    .and_then(|ip| dns::non_public_reason(*ip))
                    .unwrap_or("not public");
                return Err(Box::new(Refused(format!(
                    "{host} resolves only to non-public addresses ({reason})"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The [`Refused`] message in an error's source chain, if the resolver refused the host.
fn refusal(e: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r.0.clone());
        }
        source = err.source();
    }
    None
}

/// `e` and its causes, joined with ": " (bounded).
fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    for _ in 0..8 {
        let Some(err) = source else { break };
        let s = err.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = err.source();
    }
    out
}

/// Refuses an IP-literal host that is not public (unless allowed).
fn check_literal_host(url: &Url, allow_private: bool) -> Result<(), Error> {
    let Some(host) = url.host_str() else {
        return Err(Error::Forbidden {
            url: url.to_string(),
            reason: "no host".to_owned(),
        });
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>()
        && !allow_private
        && let Some(reason) = dns::non_public_reason(ip)
    {
        return Err(Error::Forbidden {
            url: url.to_string(),
            reason: format!("{ip} is a {reason} address"),
        });
    }
    Ok(())
}

fn parse_url(s: &str) -> Result<Url, Error> {
    Url::parse(s).map_err(|e| Error::Malformed {
        url: s.chars().take(300).collect(),
        reason: format!("not a valid URL: {e}"),
    })
}

fn unsupported(did: &str, reason: &str) -> Error {
    Error::UnsupportedDid {
        did: did.chars().take(200).collect(),
        reason: reason.to_owned(),
    }
}

/// The `did.json` URL of a did:web (<https://atproto.com/specs/did>: hostname only, no path; a port, written
/// `%3A`, only for local development).
fn did_web_url(did: &str, allow_private: bool) -> Result<String, Error> {
    let id = did.strip_prefix("did:web:").unwrap_or_default();
    if id.contains(':') {
        return Err(unsupported(did, "did:web with a path is not supported"));
    }
    let decoded = id.replace("%3A", ":").replace("%3a", ":");
    if decoded.contains('%') {
        return Err(unsupported(did, "only %3A (a port) may be percent-encoded"));
    }
    let (host, port) = match decoded.split_once(':') {
        Some((h, p)) => {
            let port: u16 = p
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| unsupported(did, "invalid port"))?;
            (h, Some(port))
        }
        None => (decoded.as_str(), None),
    };
    let local = host == "localhost" || host == "127.0.0.1";
    if let Ok(ip) = host.parse::<IpAddr>() {
        if !allow_private && let Some(reason) = dns::non_public_reason(ip) {
            return Err(Error::Forbidden {
                url: format!("https://{decoded}/.well-known/did.json"),
                reason: format!("{ip} is a {reason} address"),
            });
        }
    } else {
        let dev_localhost = allow_private && host == "localhost";
        let valid = crate::syntax::is_host_name(host);
        if !(dev_localhost || valid) {
            return Err(unsupported(did, "the host is not a lowercase DNS name"));
        }
    }
    if port.is_some() && !(allow_private && local) {
        return Err(unsupported(
            did,
            "a port is allowed only for localhost in development",
        ));
    }
    let scheme = if allow_private && local {
        "http"
    } else {
        "https"
    };
    Ok(match port {
        Some(p) => format!("{scheme}://{host}:{p}/.well-known/did.json"),
        None => format!("{scheme}://{host}/.well-known/did.json"),
    })
}

/// Parses a `getRecord` body and checks its `uri`.
fn parse_record(body: &[u8], expected_uri: &str, url: &str) -> Result<RecordCopy, Error> {
    let malformed = |reason: &str| Error::Malformed {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let v: Value = serde_json::from_slice(body).map_err(|_| malformed("not JSON"))?;
    let uri = v
        .get("uri")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("no string \"uri\""))?;
    if uri != expected_uri {
        return Err(malformed("the record's \"uri\" is not the one asked for"));
    }
    let cid = match v.get("cid") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(malformed("\"cid\" is not a string")),
    };
    let value = v
        .get("value")
        .filter(|v| v.is_object())
        .cloned()
        .ok_or_else(|| malformed("no object \"value\""))?;
    Ok(RecordCopy {
        uri: uri.to_owned(),
        cid,
        value,
    })
}

/// The `error` of an XRPC error body.
fn xrpc_error_name(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("error")
        .and_then(Value::as_str)
        .map(|s| s.chars().take(100).collect())
}

/// `: <error>: <message>` from an XRPC error body, or empty.
fn xrpc_detail(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    let Some(error) = v.get("error").and_then(Value::as_str) else {
        return String::new();
    };
    let error: String = error.chars().take(100).collect();
    match v.get("message").and_then(Value::as_str) {
        Some(m) => format!(": {error}: {}", m.chars().take(200).collect::<String>()),
        None => format!(": {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DID: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";

    fn parse(v: &Value) -> Result<DidDocument, Error> {
        DidDocument::parse(DID, v.to_string().as_bytes(), "https://plc.test/x")
    }

    #[test]
    fn parses_pds_key_and_handle() {
        let doc = parse(&json!({
            "id": DID,
            "alsoKnownAs": ["https://not-a-handle", "at://bad_handle.test", "at://Alice.Example.COM", "at://second.test"],
            "verificationMethod": [{"id": format!("{DID}#atproto"), "type": "Multikey", "publicKeyMultibase": "zQ3sh"}],
            "service": [
                {"id": "#atproto_labeler", "type": "AtprotoLabeler", "serviceEndpoint": "https://l.test"},
                {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "https://pds.test"}
            ]
        }))
        .unwrap();
        assert_eq!(doc.pds.as_deref(), Some("https://pds.test"));
        assert_eq!(doc.signing_key.as_deref(), Some("zQ3sh"));
        assert_eq!(doc.label_key, None, "#atproto is not a label key");
        assert_eq!(doc.handle().as_deref(), Some("alice.example.com"));
    }

    #[test]
    fn parses_the_label_key_by_relative_or_absolute_id() {
        for id in ["#atproto_label".to_owned(), format!("{DID}#atproto_label")] {
            let doc = parse(&json!({
                "id": DID,
                "verificationMethod": [
                    {"id": "#atproto", "type": "Multikey", "publicKeyMultibase": "zRepo"},
                    {"id": id, "type": "Multikey", "publicKeyMultibase": "zLabel"},
                ],
            }))
            .unwrap();
            assert_eq!(doc.label_key.as_deref(), Some("zLabel"));
            assert_eq!(doc.signing_key.as_deref(), Some("zRepo"));
        }
        let foreign = parse(&json!({
            "id": DID,
            "verificationMethod": [{"id": "did:plc:other#atproto_label", "publicKeyMultibase": "zX"}],
        }))
        .unwrap();
        assert_eq!(foreign.label_key, None, "another DID's key is not ours");
    }

    #[test]
    fn id_must_match_and_pds_type_must_match() {
        assert!(matches!(
            parse(&json!({"id": "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"})),
            Err(Error::IdMismatch { .. })
        ));
        assert!(matches!(
            parse(&json!({"noid": 1})),
            Err(Error::Malformed { .. })
        ));
        let doc = parse(&json!({
            "id": DID,
            "service": [{"id": "#atproto_pds", "type": "Other", "serviceEndpoint": "https://x.test"}]
        }))
        .unwrap();
        assert_eq!(doc.pds, None);
        assert_eq!(doc.handle(), None);
    }

    #[test]
    fn did_web_maps_to_its_well_known_url_and_private_hosts_are_refused() {
        assert_eq!(
            did_web_url("did:web:example.com", false).unwrap(),
            "https://example.com/.well-known/did.json"
        );
        assert_eq!(
            did_web_url("did:web:localhost%3A8080", true).unwrap(),
            "http://localhost:8080/.well-known/did.json"
        );
        assert!(matches!(
            did_web_url("did:web:127.0.0.1%3A8080", false),
            Err(Error::Forbidden { .. })
        ));
        assert!(matches!(
            did_web_url("did:web:10.0.0.1", false),
            Err(Error::Forbidden { .. })
        ));
        assert!(did_web_url("did:web:localhost%3A8080", false).is_err());
        assert!(did_web_url("did:web:example.com:path", true).is_err());
        assert!(did_web_url("did:web:Example.com", false).is_err());
        assert!(did_web_url("did:web:example.com%2F", false).is_err());
    }

    #[test]
    fn record_uri_is_checked() {
        let body = json!({"uri": format!("at://{DID}/c.o/self"), "cid": "bafy", "value": {"a": 1}});
        let r = parse_record(
            body.to_string().as_bytes(),
            &format!("at://{DID}/c.o/self"),
            "u",
        )
        .unwrap();
        assert_eq!(r.cid.as_deref(), Some("bafy"));
        assert!(parse_record(body.to_string().as_bytes(), "at://other/c.o/self", "u").is_err());
    }

    #[test]
    fn only_not_found_and_unsupported_errors_are_definitive() {
        assert!(unsupported("did:key:x", "no").is_definitive());
        assert!(
            Error::NotFound {
                did: DID.to_owned(),
                url: "u".to_owned(),
                status: 404
            }
            .is_definitive()
        );
        let status = Error::Status {
            url: "u".to_owned(),
            status: 400,
            detail: xrpc_detail(br#"{"error":"RepoNotFound","message":"gone"}"#),
        };
        assert!(!status.is_definitive());
        assert_eq!(status.xrpc_error(), Some("RepoNotFound"));
    }
}
