//! `GET /xrpc/email.atmos.getVerification`: why the labeler does or does not vouch for an
//! account, found by exactly one of
//!
//! - `did=<DID>`;
//! - `handle=<handle>`: resolved to a DID by the labeler itself, through DNS only (the
//!   `_atproto.<handle>` TXT record's single `did=` value, <https://atproto.com/specs/handle>
//!   "DNS TXT Method"). The HTTPS `/.well-known/atproto-did` method is not used, for the same
//!   reason domain control does not accept it (`verify::domain`): the labeler trusts DNS
//!   answers only. A lookup, not a proof: it shows that DID's public state;
//! - `domain=<domain>`: every DID with an attestation for that mail domain (standing ones
//!   first, at most [`MAX_DOMAIN_DIDS`]), each with only that domain's attestations, so a
//!   relay that knows only a sender's envelope domain finds the operator (the
//!   `attestations_domain` index);
//! - `q=<what a person typed>` (the console's search box): a DID, or a name tried both as a
//!   handle and as a mail domain. Finding nothing is an answer, not an error: the operators
//!   found (each saying how: `foundBy`) and notes on what did not match.
//!
//! Each subject carries the same attestation view (every check with its reason and fix, when
//! checked and next), its verdict history (newest first), and the labels it holds. An unknown
//! DID or domain is not an error: the lists are empty.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::State;
use axum::http::Uri;
use axum::response::Response;
use serde_json::{Value, json};

use super::Shared;
use super::error::{XrpcError, json_body};
use super::params;
use super::status::{ATTESTATION_NSID, attestation_json, datetime_ms};
use crate::dns::Answer;
use crate::store::Store;

/// Most DIDs a domain lookup returns (anyone may claim any domain in a record; only one DID
/// can pass domain control, and it comes first).
pub(crate) const MAX_DOMAIN_DIDS: usize = 50;

/// Who to look up.
#[derive(Debug, PartialEq, Eq)]
enum Query {
    Did(String),
    Handle(String),
    Domain(String),
    Search(String),
}

/// The handler.
pub(crate) async fn get_verification(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
) -> Result<Response, XrpcError> {
    shared.labeler_only()?;
    let query = parse(uri.query().unwrap_or(""))?;
    let state = Arc::clone(&shared);
    let body = match query {
        Query::Did(did) => {
            shared
                .blocking(move |s| subject(&state, s, &did, None))
                .await?
        }
        Query::Handle(handle) => {
            let did = resolve_handle(&shared, &handle).await?;
            let mut body = shared
                .blocking(move |s| subject(&state, s, &did, None))
                .await?;
            body["handle"] = json!(handle);
            body
        }
        Query::Domain(domain) => {
            shared
                .blocking(move |s| by_domain(&state, s, &domain))
                .await?
        }
        Query::Search(q) => search(&shared, q).await?,
    };
    Ok(json_body(body.to_string()))
}

fn parse(query: &str) -> Result<Query, XrpcError> {
    let mut found = Vec::new();
    for pair in params::pairs(query) {
        let (key, value) = pair?;
        if matches!(key.as_ref(), "did" | "handle" | "domain" | "q") {
            found.push((key.into_owned(), value.into_owned()));
        }
    }
    let [(key, value)] = <[(String, String); 1]>::try_from(found).map_err(|_| {
        XrpcError::InvalidRequest(
            "Error: Params must have exactly one of the properties \"did\", \"handle\", \"domain\" or \"q\""
                .to_owned(),
        )
    })?;
    let shown: String = value.chars().take(100).collect();
    match key.as_str() {
        "did" if crate::syntax::is_did(&value) => Ok(Query::Did(value)),
        "did" => Err(XrpcError::InvalidRequest(format!(
            "did must be a DID; got {shown:?}"
        ))),
        "q" => {
            let q: String = value
                .trim()
                .trim_start_matches('@')
                .chars()
                .take(300)
                .collect();
            if q.is_empty() {
                return Err(XrpcError::InvalidRequest("q is empty".to_owned()));
            }
            Ok(Query::Search(q))
        }
        _ => {
            let name = value.trim().trim_end_matches('.').to_ascii_lowercase();
            if key == "handle" {
                if !crate::syntax::is_handle(&name) {
                    return Err(XrpcError::InvalidRequest(format!(
                        "handle must be a handle (a host name such as alice.example.com); got {shown:?}"
                    )));
                }
                Ok(Query::Handle(name))
            } else {
                if let Some(problem) = crate::verify::domain_problem(&name) {
                    return Err(XrpcError::InvalidRequest(format!(
                        "domain {shown:?} {problem}"
                    )));
                }
                Ok(Query::Domain(name))
            }
        }
    }
}

/// `q`: a DID, or a name looked up as a handle and as a mail domain.
async fn search(shared: &Arc<Shared>, q: String) -> Result<Value, XrpcError> {
    let mut notes: Vec<String> = Vec::new();
    let shown: String = q.chars().take(100).collect();
    if q.starts_with("did:") {
        if !crate::syntax::is_did(&q) {
            notes.push(format!("{shown:?} is not a valid DID"));
            return Ok(json!({ "query": q, "operators": [], "notes": notes }));
        }
        let state = Arc::clone(shared);
        let did = q.clone();
        let mut found = shared
            .blocking(move |s| subject(&state, s, &did, None))
            .await?;
        found["foundBy"] = json!(["did"]);
        return Ok(json!({ "query": q, "operators": [found], "notes": notes }));
    }
    let name = q.trim_end_matches('.').to_ascii_lowercase();
    let as_handle = if crate::syntax::is_handle(&name) {
        match resolve_handle(shared, &name).await {
            Ok(did) => Some(did),
            Err(e @ (XrpcError::HandleNotFound(_) | XrpcError::UpstreamFailure(_))) => {
                notes.push(format!("As a handle: {e}."));
                None
            }
            Err(XrpcError::MethodNotImplemented) => {
                notes.push("Handles cannot be looked up on this server.".to_owned());
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let as_domain = crate::verify::domain_problem(&name).is_none();
    if as_handle.is_none() && !as_domain && !crate::syntax::is_handle(&name) {
        notes.push(format!(
            "{shown:?} is not a DID, a handle or a mail domain."
        ));
    }
    let state = Arc::clone(shared);
    let handle = name.clone();
    let (operators, note) = shared
        .blocking(move |s| {
            let mut operators: Vec<Value> = Vec::new();
            if let Some(did) = as_handle {
                let mut v = subject(&state, s, &did, None)?;
                v["handle"] = json!(handle);
                v["foundBy"] = json!(["handle"]);
                operators.push(v);
            }
            let mut note = None;
            if as_domain {
                let by = by_domain(&state, s, &name)?;
                let ops = by["operators"].as_array().cloned().unwrap_or_default();
                if ops.is_empty() {
                    note = Some(format!("As a mail domain: no attestation names {name}."));
                }
                for mut op in ops {
                    match operators.iter_mut().find(|o| o["did"] == op["did"]) {
                        Some(known) => known["foundBy"] = json!(["handle", "domain"]),
                        None => {
                            op["foundBy"] = json!(["domain"]);
                            operators.push(op);
                        }
                    }
                }
            }
            Ok((operators, note))
        })
        .await?;
    notes.extend(note);
    Ok(json!({ "query": q, "operators": operators, "notes": notes }))
}

/// The DID that `_atproto.<handle>` names, through the labeler's own resolver (cached).
async fn resolve_handle(shared: &Shared, handle: &str) -> Result<String, XrpcError> {
    let checker = shared.console.checker()?;
    let name = format!("_atproto.{handle}");
    let answer = checker
        .resolver()
        .txt(&name, false)
        .await
        .map_err(|e| XrpcError::UpstreamFailure(format!("could not resolve {handle}: {e}")))?;
    let dids: BTreeSet<String> = match &answer {
        Answer::Found(records) => records
            .iter()
            .filter_map(|r| r.strip_prefix(b"did="))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect(),
        Answer::NxDomain | Answer::NoData => BTreeSet::new(),
    };
    let mut it = dids.iter();
    match (it.next(), it.next()) {
        (Some(did), None) if crate::syntax::is_did(did) => Ok(did.clone()),
        (Some(did), None) => Err(XrpcError::HandleNotFound(format!(
            "the TXT record at {name} names {:?}, which is not a DID",
            did.chars().take(100).collect::<String>()
        ))),
        (None, _) => Err(XrpcError::HandleNotFound(format!(
            "{handle} does not resolve: no TXT record at {name} starts with \"did=\" (only the DNS method is used)"
        ))),
        (Some(_), Some(_)) => Err(XrpcError::HandleNotFound(format!(
            "{name} names {} different DIDs; a handle must name exactly one",
            dids.len()
        ))),
    }
}

/// Every DID with an attestation of `domain`, each with that domain's attestations.
fn by_domain(shared: &Shared, s: &Store, domain: &str) -> Result<Value, XrpcError> {
    let rows = s.attestations_for_domain(domain, MAX_DOMAIN_DIDS * 4)?;
    let mut dids: Vec<&str> = Vec::new();
    for a in &rows {
        if !dids.contains(&a.did.as_str()) && dids.len() < MAX_DOMAIN_DIDS {
            dids.push(&a.did);
        }
    }
    let operators = dids
        .iter()
        .map(|did| subject(shared, s, did, Some(domain)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({ "domain": domain, "operators": operators }))
}

/// One DID's view: attestations (only `domain`'s when given) with their history, labels,
/// refusals (for a whole-DID view).
fn subject(
    shared: &Shared,
    s: &Store,
    did: &str,
    domain: Option<&str>,
) -> Result<Value, XrpcError> {
    let labels = match shared.src(s)? {
        Some(src) => s.current_labels(&src, did)?,
        None => Vec::new(),
    };
    let mut attestations = s.attestations_for(did)?;
    if let Some(domain) = domain {
        attestations.retain(|a| a.domain == domain);
    }
    let history = s.verdict_history(did)?;
    let views: Vec<Value> = attestations
        .iter()
        .map(|a| {
            let mut v = attestation_json(a);
            let changes: Vec<Value> = history
                .iter()
                .filter(|h| h.rkey == a.rkey)
                .map(|h| {
                    let mut c =
                        json!({ "verdict": h.verdict.as_str(), "at": datetime_ms(h.at_ms) });
                    if !h.summary.is_empty() {
                        c["summary"] = json!(h.summary);
                    }
                    c
                })
                .collect();
            v["history"] = json!(changes);
            v
        })
        .collect();
    let labels: Vec<Value> = labels
        .iter()
        .map(|l| serde_json::to_value(&l.signed))
        .collect::<Result<_, _>>()
        .map_err(|e| XrpcError::Internal(Box::new(e)))?;
    let mut body = json!({
        "did": did,
        "verified": attestations.iter().any(|a| a.standing),
        "attestations": views,
        "labels": labels,
    });
    if domain.is_none() {
        let refused: Vec<Value> = s
            .refusals_for(did)?
            .iter()
            .map(|r| {
                json!({
                    "uri": format!("at://{did}/{ATTESTATION_NSID}/{}", r.rkey),
                    "reason": r.reason,
                    "refusedAt": datetime_ms(r.at_ms),
                })
            })
            .collect();
        body["refused"] = json!(refused);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_of_did_handle_or_domain() {
        assert_eq!(
            parse("did=did:plc:abc").unwrap(),
            Query::Did("did:plc:abc".to_owned())
        );
        assert_eq!(
            parse("handle=Alice.Example.COM").unwrap(),
            Query::Handle("alice.example.com".to_owned())
        );
        assert_eq!(
            parse("domain=mail.example.com.").unwrap(),
            Query::Domain("mail.example.com".to_owned())
        );
        assert_eq!(
            parse("q=+%40Alice.Example+").unwrap(),
            Query::Search("Alice.Example".to_owned())
        );
        for bad in [
            "",
            "did=did:plc:a&domain=example.com",
            "did=did:plc:a&did=did:plc:b",
            "did=alice",
            "handle=not a handle",
            "domain=localhost",
            "domain=a_b.example",
            "q=",
            "q=x&did=did:plc:a",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
