//! `GET /xrpc/email.atmos.checkDomain?domain=…&did=…&selector=…` ("before you publish"): runs
//! every check once for inputs that need not be published yet and answers the report, in the
//! same shape as getVerification's checks, with the attestation record to publish for those
//! inputs. Nothing is stored: the checker reads DNS and identity only.
//!
//! It makes the labeler query DNS for strangers, so it is bounded twice: a per-client budget
//! (429 `RateLimitExceeded` with `Retry-After`), then a cap on preflights running at once over
//! all clients (503 `TooManyPreflights`; a slot is never waited for, so a flood cannot queue
//! work). Caches are bypassed (`Vantage::Fresh`): an operator who has just published a record
//! must see it, not a cached absence.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use serde_json::json;

use super::Shared;
use super::console::{client_of, limited};
use super::error::{XrpcError, json_body};
use super::listen::Peer;
use super::params;
use crate::attestation::MAX_SELECTORS;
use crate::verify::Vantage;

/// NSID of the record the answer tells the operator to publish.
const ATTESTATION_NSID: &str = "email.atmos.attestation";

/// What a preflight checks.
#[derive(Debug, PartialEq, Eq)]
struct Inputs {
    domain: String,
    did: String,
    selectors: Vec<String>,
}

/// The handler.
pub(crate) async fn check_domain(
    State(shared): State<Arc<Shared>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, XrpcError> {
    shared.labeler_only()?;
    let checker = shared.console.checker()?.clone();
    let client = client_of(&shared, peer, &headers);
    shared
        .console
        .preflight_per_client
        .check(&client)
        .map_err(|wait| limited("Too many domain checks from this address", wait))?;
    let inputs = parse(uri.query().unwrap_or(""))?;
    let _slot = Arc::clone(&shared.console.preflight_slots)
        .try_acquire_owned()
        .map_err(|_| XrpcError::TooManyPreflights)?;
    let report = checker
        .check(
            &inputs.did,
            &inputs.domain,
            &inputs.selectors,
            Vantage::Fresh,
        )
        .await;
    let mut body = serde_json::to_value(&report).map_err(|e| XrpcError::Internal(Box::new(e)))?;
    body["dkimSelectors"] = json!(inputs.selectors);
    body["record"] = json!({
        "$type": ATTESTATION_NSID,
        "domain": inputs.domain,
        "dkimSelectors": inputs.selectors,
        "createdAt": crate::label::now_cts(),
    });
    Ok(json_body(body.to_string()))
}

/// `domain` and `did` (required, once each) and `selector` (repeatable, 1–16). The domain is
/// compared lower-cased without a trailing dot, as attestations store it; selectors are
/// passed on as given, so a malformed one is a failing DKIM entry in the report, exactly as
/// it would be in a published record.
fn parse(query: &str) -> Result<Inputs, XrpcError> {
    let (mut domain, mut did, mut selectors) = (None, None, Vec::new());
    for pair in params::pairs(query) {
        let (key, value) = pair?;
        match key.as_ref() {
            "domain" => domain = Some(value.into_owned()),
            "did" => did = Some(value.into_owned()),
            "selector" => selectors.push(value.into_owned()),
            _ => {}
        }
    }
    let missing = |name: &str| {
        XrpcError::InvalidRequest(format!("Error: Params must have the property \"{name}\""))
    };
    let domain = domain.ok_or_else(|| missing("domain"))?;
    let did = did.ok_or_else(|| missing("did"))?;
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if let Some(problem) = crate::verify::domain_problem(&domain) {
        let shown: String = domain.chars().take(100).collect();
        return Err(XrpcError::InvalidRequest(format!(
            "domain {shown:?} {problem}"
        )));
    }
    let did = did.trim().to_owned();
    if !crate::syntax::is_did(&did) {
        let shown: String = did.chars().take(100).collect();
        return Err(XrpcError::InvalidRequest(format!(
            "did must be a DID; got {shown:?}"
        )));
    }
    if selectors.is_empty() {
        return Err(missing("selector"));
    }
    if selectors.len() > MAX_SELECTORS {
        return Err(XrpcError::InvalidRequest(format!(
            "at most {MAX_SELECTORS} selectors; got {}",
            selectors.len()
        )));
    }
    Ok(Inputs {
        domain,
        did,
        selectors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_required_normalised_and_bounded() {
        let ok = parse("domain=Mail.Example.COM.&did=did:plc:abc&selector=s1&selector=s2").unwrap();
        assert_eq!(
            ok,
            Inputs {
                domain: "mail.example.com".to_owned(),
                did: "did:plc:abc".to_owned(),
                selectors: vec!["s1".to_owned(), "s2".to_owned()],
            }
        );
        for bad in [
            "did=did:plc:abc&selector=s1",
            "domain=example.com&selector=s1",
            "domain=example.com&did=did:plc:abc",
            "domain=example.com&did=alice&selector=s1",
            "domain=exa_mple.com&did=did:plc:abc&selector=s1",
            "domain=localhost&did=did:plc:abc&selector=s1",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(matches!(e, XrpcError::InvalidRequest(_)), "{bad}: {e:?}");
        }
        let many: String = (0..17).map(|i| format!("&selector=s{i}")).collect();
        assert!(parse(&format!("domain=example.com&did=did:plc:abc{many}")).is_err());
    }
}
