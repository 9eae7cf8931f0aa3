//! Jetstream v1 wire events (`docs/jetstream.md` §2) and what they mean to the manager.
//!
//! Parsing is lenient where the wire is open-ended (unknown kinds, unknown account statuses,
//! missing handles, extra fields such as a v2 host's `cursor`) and strict where we act on the
//! data (DIDs, record keys, revisions, operations). A bad event is reported with whatever
//! identifies it (DID, rkey, `time_us`) and skipped; it never ends the stream.

use serde_json::Value;

use crate::manager::Command;
use crate::syntax::{is_did, is_record_key, is_rev};

/// Largest event we accept for our collection. Attestation records are a few hundred bytes;
/// anything this large is hostile or broken.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// What one Jetstream message is.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// Something the manager may act on.
    Command(Command),
    /// An identity or account event (acted on only for tracked DIDs).
    Account {
        /// The DID it is about.
        did: String,
        /// The command to send if the DID is tracked.
        command: Command,
    },
    /// Nothing for us; the `time_us` still advances the cursor.
    Skip {
        /// The event's `time_us`.
        time_us: i64,
        /// Why (a metric label).
        reason: &'static str,
    },
}

/// A malformed event, with what could be recovered about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed Jetstream event (did={}, rkey={}, time_us={}): {reason}",
    did.as_deref().unwrap_or("?"), rkey.as_deref().unwrap_or("?"),
    time_us.map_or_else(|| "?".to_owned(), |t| t.to_string()))]
pub struct ParseError {
    /// The event's DID, if readable.
    pub did: Option<String>,
    /// The commit's rkey, if readable.
    pub rkey: Option<String>,
    /// The event's `time_us`, if readable (the cursor can still advance past it).
    pub time_us: Option<i64>,
    /// What is wrong.
    pub reason: String,
}

/// Parses one text frame. `collection` is the NSID we subscribed to.
pub fn parse(text: &str, collection: &str) -> Result<Event, ParseError> {
    let mut err = ParseError {
        did: None,
        rkey: None,
        time_us: None,
        reason: String::new(),
    };
    let fail = |mut e: ParseError, reason: String| {
        e.reason = reason;
        Err(e)
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return fail(err, format!("not JSON: {e}")),
    };
    let Some(obj) = value.as_object() else {
        return fail(err, "not a JSON object".to_owned());
    };
    err.did = obj.get("did").and_then(Value::as_str).map(clip);
    err.time_us = obj.get("time_us").and_then(Value::as_i64);
    let Some(time_us) = err.time_us.filter(|t| *t > 0) else {
        return fail(err, "missing or invalid \"time_us\"".to_owned());
    };
    let Some(did) = obj.get("did").and_then(Value::as_str).filter(|d| is_did(d)) else {
        return fail(err, "missing or invalid \"did\"".to_owned());
    };
    let did = did.to_owned();
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    match kind {
        "commit" => {
            let Some(c) = obj.get("commit").and_then(Value::as_object) else {
                return fail(err, "commit event without a \"commit\" object".to_owned());
            };
            let str_field = |k: &str| c.get(k).and_then(Value::as_str);
            err.rkey = str_field("rkey").map(clip);
            if str_field("collection") != Some(collection) {
                return Ok(Event::Skip {
                    time_us,
                    reason: "other-collection",
                });
            }
            if text.len() > MAX_EVENT_BYTES {
                return fail(
                    err,
                    format!(
                        "event is {} bytes, over the {MAX_EVENT_BYTES}-byte limit",
                        text.len()
                    ),
                );
            }
            let Some(rkey) = str_field("rkey").filter(|r| is_record_key(r)) else {
                return fail(err, "missing or invalid \"rkey\"".to_owned());
            };
            let Some(rev) = str_field("rev").filter(|r| is_rev(r)) else {
                return fail(err, "missing or invalid \"rev\"".to_owned());
            };
            let (rkey, rev) = (rkey.to_owned(), rev.to_owned());
            match str_field("operation") {
                Some("create" | "update") => {
                    let Some(record) = c.get("record").filter(|r| r.is_object()) else {
                        return fail(err, "create/update without a \"record\" object".to_owned());
                    };
                    let cid = match c.get("cid") {
                        None | Some(Value::Null) => None,
                        Some(Value::String(s)) if s.len() <= 256 => Some(s.clone()),
                        Some(_) => return fail(err, "invalid \"cid\"".to_owned()),
                    };
                    Ok(Event::Command(Command::Put {
                        did,
                        rkey,
                        rev,
                        record: record.clone(),
                        cid,
                        cursor: time_us,
                    }))
                }
                Some("delete") => Ok(Event::Command(Command::Delete {
                    did,
                    rkey,
                    rev,
                    cursor: time_us,
                })),
                other => fail(err, format!("unknown commit operation {other:?}")),
            }
        }
        "identity" => Ok(Event::Account {
            command: Command::Identity {
                did: did.clone(),
                cursor: time_us,
            },
            did,
        }),
        "account" => {
            let Some(a) = obj.get("account").and_then(Value::as_object) else {
                return fail(
                    err,
                    "account event without an \"account\" object".to_owned(),
                );
            };
            let Some(active) = a.get("active").and_then(Value::as_bool) else {
                return fail(err, "account event without a boolean \"active\"".to_owned());
            };
            // `status` is an open set (takendown, suspended, deleted, deactivated, …).
            let status = a
                .get("status")
                .and_then(Value::as_str)
                .map(|s| s.chars().take(64).collect());
            Ok(Event::Account {
                command: Command::Account {
                    did: did.clone(),
                    active,
                    status,
                    cursor: time_us,
                },
                did,
            })
        }
        _ => Ok(Event::Skip {
            time_us,
            reason: "unknown-kind",
        }),
    }
}

/// Shortens untrusted text for error messages.
fn clip(s: &str) -> String {
    s.chars().take(128).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NSID: &str = "email.atmos.attestation";

    fn samples() -> Vec<String> {
        include_str!("../../tests/data/jetstream-samples.jsonl")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_documented_samples_parse() {
        let s = samples();
        match parse(&s[0], NSID).unwrap() {
            Event::Command(Command::Put {
                did,
                rkey,
                rev,
                cid,
                cursor,
                record,
            }) => {
                assert_eq!(did, "did:plc:q4xu2bnz6hfk7ytwm3ja5oe2");
                assert_eq!(rkey, "3mvzi5tlpq22f");
                assert_eq!(rev, "3mvzi5tma3n2f");
                assert_eq!(cursor, 1789985730412775);
                assert_eq!(
                    cid.as_deref(),
                    Some("bafyreieygpp3bqtdqsox7hhoebz3crjc4p33yboklcq4srs4oqny4i3dre")
                );
                assert_eq!(record["domain"], "example.com");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&s[1], NSID).unwrap(),
            Event::Command(Command::Put { .. })
        ));
        assert!(matches!(
            parse(&s[2], NSID).unwrap(),
            Event::Command(Command::Delete { .. })
        ));
        assert!(matches!(
            parse(&s[3], NSID).unwrap(),
            Event::Account {
                command: Command::Identity { .. },
                ..
            }
        ));
        match parse(&s[4], NSID).unwrap() {
            Event::Account {
                command: Command::Account { active, status, .. },
                ..
            } => {
                assert!(!active);
                assert_eq!(status.as_deref(), Some("deactivated"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_events_are_reported_with_what_identifies_them() {
        let e = parse(
            r#"{"did":"did:plc:abc","time_us":5,"kind":"commit","commit":{"rev":"3m","operation":"create","collection":"email.atmos.attestation","rkey":"r1","record":"nope"}}"#,
            NSID,
        )
        .unwrap_err();
        assert_eq!(e.did.as_deref(), Some("did:plc:abc"));
        assert_eq!(e.rkey.as_deref(), Some("r1"));
        assert_eq!(e.time_us, Some(5));
        assert!(e.to_string().contains("did=did:plc:abc, rkey=r1"), "{e}");

        for bad in [
            "not json",
            "[]",
            r#"{"did":"did:plc:abc","kind":"commit"}"#,
            r#"{"did":"nope","time_us":5,"kind":"identity"}"#,
            r#"{"did":"did:plc:abc","time_us":"5","kind":"identity"}"#,
            r#"{"did":"did:plc:abc","time_us":5,"kind":"commit","commit":{"rev":"3m","operation":"create","collection":"email.atmos.attestation","rkey":"a/b","record":{}}}"#,
            r#"{"did":"did:plc:abc","time_us":5,"kind":"commit","commit":{"rev":"3M!","operation":"delete","collection":"email.atmos.attestation","rkey":"r"}}"#,
            r#"{"did":"did:plc:abc","time_us":5,"kind":"commit","commit":{"rev":"3m","operation":"upsert","collection":"email.atmos.attestation","rkey":"r"}}"#,
            r#"{"did":"did:plc:abc","time_us":5,"kind":"account","account":{"active":"yes"}}"#,
        ] {
            assert!(parse(bad, NSID).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_kinds_other_collections_and_extra_fields_are_skipped_not_errors() {
        assert_eq!(
            parse(r#"{"did":"did:plc:abc","time_us":7,"kind":"sync"}"#, NSID).unwrap(),
            Event::Skip {
                time_us: 7,
                reason: "unknown-kind"
            }
        );
        assert_eq!(
            parse(
                r#"{"did":"did:plc:abc","time_us":8,"kind":"commit","commit":{"rev":"3m","operation":"create","collection":"app.bsky.feed.post","rkey":"r","record":{}}}"#,
                NSID
            )
            .unwrap(),
            Event::Skip {
                time_us: 8,
                reason: "other-collection"
            }
        );
        // A v2 host adds "cursor"; an account status we have never seen is fine.
        assert!(matches!(
            parse(
                r#"{"did":"did:plc:abc","time_us":9,"cursor":123,"kind":"account","account":{"active":false,"status":"throttled-2027"}}"#,
                NSID
            )
            .unwrap(),
            Event::Account { .. }
        ));
    }

    #[test]
    fn oversized_records_are_refused() {
        let big = "x".repeat(MAX_EVENT_BYTES);
        let text = format!(
            r#"{{"did":"did:plc:abc","time_us":5,"kind":"commit","commit":{{"rev":"3m","operation":"create","collection":"email.atmos.attestation","rkey":"r","record":{{"domain":"{big}"}}}}}}"#
        );
        let e = parse(&text, NSID).unwrap_err();
        assert!(e.reason.contains("limit"), "{e}");
        assert_eq!(e.rkey.as_deref(), Some("r"));
    }
}
