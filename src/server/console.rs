//! The operator's console: a page at `/` (hand-written HTML, CSS and JavaScript under `web/`,
//! embedded in the binary, no build step and nothing fetched from elsewhere) that calls the
//! labeler's own XRPC methods, and `email.atmos.describeLabeler`, which tells the page (and
//! anyone) who this labeler is.
//!
//! The page asks `getVerification` (by DID, handle or domain), `requestVerification` ("Check
//! again now") and `checkDomain` ("Before you publish"), and renders their reports as they
//! come: the reasons and the fixes are data in the reports (see [`crate::verify::Fix`]), not
//! text made up by the page.
//!
//! The console's state lives here too: the request budgets of the methods that make the
//! labeler work for strangers, the preflight slots, and the checker that preflights and handle
//! lookups use (absent when the server runs without one, e.g. in unit tests; those methods
//! then answer 501).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::Shared;
use super::error::{XrpcError, json_body};
use super::limits;
use super::listen::Peer;
use super::rate::{Limiter, Rate};
use crate::verify::Checker;

/// The page and its assets, embedded at build time.
const INDEX_HTML: &str = include_str!("../../web/index.html");
const CONSOLE_CSS: &str = include_str!("../../web/console.css");
const CONSOLE_JS: &str = include_str!("../../web/console.js");

/// The page loads nothing from anywhere else, and no other site may frame it. `data:` images
/// only for the empty favicon, which spares browsers a request for `/favicon.ico`.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// Budgets of the console's methods (see README.md, "The operator's console").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleLimits {
    /// `requestVerification` per DID: once a minute.
    pub recheck_per_did: Rate,
    /// `requestVerification` per client (an IPv4 address or an IPv6 /64).
    pub recheck_per_client: Rate,
    /// `checkDomain` per client.
    pub preflight_per_client: Rate,
    /// `checkDomain` requests running at once, over all clients.
    pub max_preflights: usize,
}

impl Default for ConsoleLimits {
    /// One re-check per DID per minute (the issue's rule); ten requests at once per client,
    /// then one every 30 s, for both methods (a person fixing DNS presses a button a few
    /// times, a script hammering it gets nowhere); four preflights at once, each a few dozen
    /// DNS queries at most.
    fn default() -> ConsoleLimits {
        ConsoleLimits {
            recheck_per_did: Rate {
                burst: 1,
                every: Duration::from_secs(60),
            },
            recheck_per_client: Rate {
                burst: 10,
                every: Duration::from_secs(30),
            },
            preflight_per_client: Rate {
                burst: 10,
                every: Duration::from_secs(30),
            },
            max_preflights: 4,
        }
    }
}

/// The console's state, shared by its handlers.
#[derive(Debug)]
pub(crate) struct Console {
    /// Runs preflights and resolves handles; set once by [`super::Server::with_checker`].
    pub(crate) checker: OnceLock<Checker>,
    pub(crate) recheck_per_did: Limiter<String>,
    pub(crate) recheck_per_client: Limiter<IpAddr>,
    pub(crate) preflight_per_client: Limiter<IpAddr>,
    /// One permit per preflight allowed to run.
    pub(crate) preflight_slots: Arc<Semaphore>,
}

impl Console {
    pub(crate) fn new(limits: &ConsoleLimits) -> Console {
        Console {
            checker: OnceLock::new(),
            recheck_per_did: Limiter::new(limits.recheck_per_did),
            recheck_per_client: Limiter::new(limits.recheck_per_client),
            preflight_per_client: Limiter::new(limits.preflight_per_client),
            preflight_slots: Arc::new(Semaphore::new(
                limits.max_preflights.clamp(1, Semaphore::MAX_PERMITS),
            )),
        }
    }

    /// The checker, or 501 when this server has none.
    pub(crate) fn checker(&self) -> Result<&Checker, XrpcError> {
        self.checker.get().ok_or(XrpcError::MethodNotImplemented)
    }
}

/// `email.atmos.requestVerification`.
pub(crate) const REQUEST_VERIFICATION_PATH: &str = "/xrpc/email.atmos.requestVerification";
/// `email.atmos.checkDomain`.
pub(crate) const CHECK_DOMAIN_PATH: &str = "/xrpc/email.atmos.checkDomain";

/// The client a request counts against: the TCP peer, or what trusted proxies say (the same
/// notion of a client as the connection caps: an IPv4 address or an IPv6 /64). A router
/// served without the accept loop has no peer; all its requests count as one client.
pub(crate) fn client_of(
    shared: &Shared,
    peer: Option<Extension<Peer>>,
    headers: &HeaderMap,
) -> IpAddr {
    match peer {
        Some(Extension(Peer(addr))) => limits::client_key(limits::client_ip(
            addr.ip(),
            headers,
            &shared.options.trusted_proxies,
        )),
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}

/// A 429 for a spent budget.
pub(crate) fn limited(what: &str, wait: Duration) -> XrpcError {
    XrpcError::RateLimitExceeded {
        message: format!("{what}; retry in {} s", super::error::retry_secs(wait)),
        retry_after: wait,
    }
}

/// `GET /`: the console page.
pub(crate) async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

/// `GET /console.css`.
pub(crate) async fn css() -> Response {
    asset(CONSOLE_CSS, "text/css; charset=utf-8")
}

/// `GET /console.js`.
pub(crate) async fn js() -> Response {
    asset(CONSOLE_JS, "text/javascript; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidate every time: the assets change with the binary, and they are small.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `GET /xrpc/email.atmos.describeLabeler`: who this labeler is. Its DID (the `src` of its
/// labels), its active signing key, and the label values it issues with their definitions
/// (the same as the `app.bsky.labeler.service` record, `labeler service-record`).
pub(crate) async fn describe_labeler(
    State(shared): State<Arc<Shared>>,
) -> Result<Response, XrpcError> {
    let state = Arc::clone(&shared);
    let (src, key) = shared
        .blocking(move |s| Ok((state.src(s)?, s.active_key()?)))
        .await?;
    let record = crate::label::service_record();
    let values: Vec<Value> = record["policies"]["labelValueDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let en = d["locales"]
                .as_array()
                .and_then(|l| l.iter().find(|x| x["lang"] == "en"))
                .cloned()
                .unwrap_or(Value::Null);
            json!({
                "identifier": d["identifier"],
                "name": en["name"],
                "description": en["description"],
            })
        })
        .collect();
    let mut body = json!({ "labelValues": values });
    if let Some(src) = src {
        body["did"] = json!(src);
    }
    if let Some(key) = key {
        body["signingKey"] = json!(key);
    }
    Ok(json_body(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("console.css", CONSOLE_CSS),
            ("console.js", CONSOLE_JS),
        ] {
            for remote in ["http://", "https://", "//fonts.", "@import", "url("] {
                assert!(!text.contains(remote), "{name} mentions {remote}");
            }
        }
        assert!(INDEX_HTML.contains(r#"<script src="/console.js""#));
        assert!(INDEX_HTML.contains(r#"href="/console.css""#));
    }
}
