//! The `email.atmos.attestation` record (lexicon `lexicons/email/atmos/attestation.json`) and
//! its validation.
//!
//! A record names one mail domain (A-label form) and the DKIM selectors it signs with; an
//! operator publishes one record per domain. Records arrive from Jetstream or from the author's
//! PDS as atproto JSON; anything that does not match the lexicon is rejected with a reason the
//! operator can act on, and is never verified.

use serde_json::Value;

/// NSID of the attestation record collection.
pub const NSID: &str = "email.atmos.attestation";

/// Most DKIM selectors a record may declare (lexicon `maxLength`).
pub const MAX_SELECTORS: usize = 16;

/// A valid attestation record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The mail domain, lowercase A-label form, no trailing dot.
    pub domain: String,
    /// Declared DKIM selectors, in order, without duplicates.
    pub dkim_selectors: Vec<String>,
    /// The record's `createdAt`, as written.
    pub created_at: String,
}

/// Why a record is not a valid attestation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(pub String);

impl Record {
    /// Validates an atproto JSON record against the lexicon.
    pub fn from_json(value: &Value) -> Result<Record, RecordError> {
        let err = |m: String| Err(RecordError(m));
        let Some(obj) = value.as_object() else {
            return err("the record is not a JSON object".to_owned());
        };
        match obj.get("$type") {
            None => {}
            Some(Value::String(t)) if t == NSID => {}
            Some(t) => return err(format!("$type is {t}, expected \"{NSID}\"")),
        }
        let domain = match obj.get("domain") {
            Some(Value::String(d)) => d,
            Some(_) => return err("\"domain\" must be a string".to_owned()),
            None => return err("the required field \"domain\" is missing".to_owned()),
        };
        let domain = normalize_domain(domain)?;
        let selectors = match obj.get("dkimSelectors") {
            Some(Value::Array(a)) => a,
            Some(_) => return err("\"dkimSelectors\" must be an array of strings".to_owned()),
            None => return err("the required field \"dkimSelectors\" is missing".to_owned()),
        };
        if selectors.is_empty() || selectors.len() > MAX_SELECTORS {
            return err(format!(
                "\"dkimSelectors\" must list 1 to {MAX_SELECTORS} selectors, not {}",
                selectors.len()
            ));
        }
        let mut dkim_selectors: Vec<String> = Vec::with_capacity(selectors.len());
        for s in selectors {
            let Value::String(s) = s else {
                return err("\"dkimSelectors\" must contain only strings".to_owned());
            };
            if !crate::syntax::is_selector(s) {
                return err(format!(
                    "DKIM selector {:?} is not a valid selector (dot-separated labels of \
                     letters, digits, '-' and '_', at most 63 bytes each)",
                    truncate(s, 80)
                ));
            }
            let s = s.to_ascii_lowercase();
            if !dkim_selectors.contains(&s) {
                dkim_selectors.push(s);
            }
        }
        let created_at = match obj.get("createdAt") {
            Some(Value::String(c)) if crate::syntax::is_datetime(c) => c.clone(),
            Some(Value::String(c)) => {
                return err(format!(
                    "\"createdAt\" {:?} is not an RFC 3339 datetime",
                    truncate(c, 64)
                ));
            }
            Some(_) => return err("\"createdAt\" must be a string".to_owned()),
            None => return err("the required field \"createdAt\" is missing".to_owned()),
        };
        Ok(Record {
            domain,
            dkim_selectors,
            created_at,
        })
    }
}

/// Lowercases and checks a domain: ASCII (A-label) hostname of at least two LDH labels, no
/// trailing dot, at most 253 bytes, a top-level label that is not all digits (not an IP).
pub fn normalize_domain(d: &str) -> Result<String, RecordError> {
    let bad = |why: &str| Err(RecordError(format!("domain {:?} {why}", truncate(d, 80))));
    if !d.is_ascii() {
        return bad("is not in A-label (punycode) form; write it as xn--…");
    }
    let lower = d.to_ascii_lowercase();
    if lower.ends_with('.') {
        return bad("must not end with a dot");
    }
    if lower.len() > 253 {
        return bad("is longer than 253 bytes");
    }
    let labels: Vec<&str> = lower.split('.').collect();
    if labels.len() < 2 {
        return bad("must have at least two labels (e.g. example.com)");
    }
    for l in &labels {
        if l.is_empty()
            || l.len() > 63
            || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || l.starts_with('-')
            || l.ends_with('-')
        {
            return bad("is not a hostname (labels of letters, digits and inner '-')");
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad("is an IP address, not a domain");
    }
    Ok(lower)
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_sample_record_parses() {
        let r = Record::from_json(&json!({
            "$type": "email.atmos.attestation",
            "domain": "Example.COM",
            "dkimSelectors": ["default", "s2026", "default"],
            "createdAt": "2026-09-21T10:15:30.123Z"
        }))
        .unwrap();
        assert_eq!(r.domain, "example.com");
        assert_eq!(r.dkim_selectors, ["default", "s2026"]);
    }

    #[test]
    fn invalid_records_are_rejected_with_a_reason() {
        let ok = json!({"domain": "example.com", "dkimSelectors": ["a"], "createdAt": "2026-09-21T10:15:30Z"});
        let cases: Vec<(Value, &str)> = vec![
            (json!("x"), "not a JSON object"),
            (
                json!({"dkimSelectors": ["a"], "createdAt": "2026-09-21T10:15:30Z"}),
                "\"domain\" is missing",
            ),
            (
                json!({"domain": 5, "dkimSelectors": ["a"], "createdAt": "2026-09-21T10:15:30Z"}),
                "must be a string",
            ),
            (
                json!({"domain": "bücher.example", "dkimSelectors": ["a"], "createdAt": "2026-09-21T10:15:30Z"}),
                "A-label",
            ),
            (
                json!({"domain": "localhost", "dkimSelectors": ["a"], "createdAt": "2026-09-21T10:15:30Z"}),
                "two labels",
            ),
            (
                json!({"domain": "10.0.0.1", "dkimSelectors": ["a"], "createdAt": "2026-09-21T10:15:30Z"}),
                "IP address",
            ),
            (
                json!({"domain": "a_b.example", "dkimSelectors": ["a"], "createdAt": "2026-09-21T10:15:30Z"}),
                "not a hostname",
            ),
            (
                json!({"domain": "example.com.", "dkimSelectors": ["a"], "createdAt": "2026-09-21T10:15:30Z"}),
                "dot",
            ),
            (
                json!({"domain": "example.com", "dkimSelectors": [], "createdAt": "2026-09-21T10:15:30Z"}),
                "1 to 16",
            ),
            (
                json!({"domain": "example.com", "dkimSelectors": vec!["a"; 17], "createdAt": "2026-09-21T10:15:30Z"}),
                "1 to 16",
            ),
            (
                json!({"domain": "example.com", "dkimSelectors": ["a b"], "createdAt": "2026-09-21T10:15:30Z"}),
                "not a valid selector",
            ),
            (
                json!({"domain": "example.com", "dkimSelectors": ["a..b"], "createdAt": "2026-09-21T10:15:30Z"}),
                "not a valid selector",
            ),
            (
                json!({"domain": "example.com", "dkimSelectors": [1], "createdAt": "2026-09-21T10:15:30Z"}),
                "only strings",
            ),
            (
                json!({"domain": "example.com", "dkimSelectors": ["a"], "createdAt": "yesterday"}),
                "createdAt",
            ),
            (
                json!({"domain": "example.com", "dkimSelectors": ["a"]}),
                "createdAt",
            ),
            (
                json!({"$type": "app.bsky.feed.post", "domain": "example.com", "dkimSelectors": ["a"], "createdAt": "2026-09-21T10:15:30Z"}),
                "$type",
            ),
        ];
        Record::from_json(&ok).unwrap();
        for (v, want) in cases {
            let e = Record::from_json(&v).unwrap_err().to_string();
            assert!(e.contains(want), "{v}: {e}");
        }
    }
}
