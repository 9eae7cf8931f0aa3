//! Domain control (atproto <https://atproto.com/specs/handle>, `docs/verification.md` §5): does the attested domain point
//! at the attesting DID?
//!
//! - DNS TXT method: at `_atproto.<domain>`, among TXT values that start exactly with `did=`
//!   (case-sensitive prefix, no trimming), there must be exactly one distinct value, equal to
//!   the DID (DIDs are case-sensitive). Another DID, or several different ones, fails.
//! - Without any `did=` value, the handle method is consulted only to explain the failure:
//!   `alsoKnownAs` is self-asserted, so a DID document that claims the domain as its handle
//!   proves nothing unless the handle resolves back to the DID, and for mail the only accepted
//!   resolution is the DNS one (the same `_atproto` name, which has no `did=` value). The
//!   HTTPS `/.well-known/atproto-did` method is deliberately not accepted: it proves control
//!   of a web server, not of the domain's DNS.
//! - A DNS error on `_atproto` is "could not decide". In the handle step, a PLC/did:web "not
//!   found" fails and any other fetch failure is "could not decide".

use std::collections::BTreeSet;

use super::{Dns, Outcome};
use crate::dns::Answer;
use crate::identity;

/// The TXT value prefix of the DNS method.
pub(crate) const DID_PREFIX: &[u8] = b"did=";

/// What the `_atproto` TXT records say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Txt {
    /// Exactly one distinct `did=` value, equal to the DID.
    Match,
    /// A definitive mismatch; the reason names the record.
    Mismatch(String),
    /// No `did=` value at all.
    Absent,
}

/// Judges the TXT records at `name` (`_atproto.<domain>`) against `did`.
pub(crate) fn judge_txt(did: &str, name: &str, records: &[Vec<u8>]) -> Txt {
    let values: BTreeSet<String> = records
        .iter()
        .filter_map(|r| r.strip_prefix(DID_PREFIX))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let quoted = |v: &str| format!("{:?}", super::tags::clip(v));
    match values.len() {
        0 => Txt::Absent,
        1 if values.contains(did) => Txt::Match,
        1 => Txt::Mismatch(format!(
            "the TXT record at {name} names {}, not {did}",
            values.iter().map(|v| quoted(v)).next().unwrap_or_default()
        )),
        n => Txt::Mismatch(format!(
            "{name} has {n} different did= TXT values ({}); it must name exactly one DID",
            values
                .iter()
                .take(4)
                .map(|v| quoted(v))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Fetches and judges domain control of `domain` by `did`.
pub(crate) async fn check<D: Dns>(
    dns: &D,
    identity: &identity::Resolver,
    did: &str,
    domain: &str,
    fresh: bool,
) -> (Outcome, String) {
    let name = format!("_atproto.{domain}");
    let records = match dns.txt(&name).await {
        Err(e) => {
            return (
                Outcome::CouldNotDecide,
                format!("could not read the TXT records at {name}: {e}"),
            );
        }
        Ok(answer) => answer,
    };
    match judge_txt(did, &name, records.records()) {
        Txt::Match => {
            return (
                Outcome::Pass,
                format!("the TXT record at {name} names {did}"),
            );
        }
        Txt::Mismatch(reason) => return (Outcome::Fail, reason),
        Txt::Absent => {}
    }
    let absent = match &records {
        Answer::NxDomain => format!("{name} does not exist"),
        Answer::NoData => format!("{name} has no TXT records"),
        Answer::Found(_) => format!("no TXT record at {name} starts with \"did=\""),
    };
    match identity.did_document(did, fresh).await {
        Err(e) if e.is_definitive() => (
            Outcome::Fail,
            format!("{absent}, and the DID {did} cannot be resolved: {e}"),
        ),
        Err(e) => (
            Outcome::CouldNotDecide,
            format!("{absent}; could not fetch the DID document of {did} to check its handle: {e}"),
        ),
        Ok(doc) => match doc.handle() {
            Some(handle) if handle == domain => (
                Outcome::Fail,
                format!(
                    "the DID document of {did} claims the handle {domain}, but {absent}, so nothing in DNS points back to {did}"
                ),
            ),
            Some(handle) => (
                Outcome::Fail,
                format!("{absent}, and the handle of {did} is {handle}, not {domain}"),
            ),
            None => (
                Outcome::Fail,
                format!("{absent}, and the DID document of {did} has no handle"),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DID: &str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
    const NAME: &str = "_atproto.example.test";

    fn judge(records: &[&str]) -> Txt {
        let records: Vec<Vec<u8>> = records.iter().map(|r| r.as_bytes().to_vec()).collect();
        judge_txt(DID, NAME, &records)
    }

    #[test]
    fn passes_only_on_exactly_one_matching_did_record() {
        assert_eq!(judge(&[&format!("did={DID}")]), Txt::Match);
        assert_eq!(
            judge(&[&format!("did={DID}"), "google-site-verification=x"]),
            Txt::Match
        );
        assert_eq!(
            judge(&[&format!("did={DID}"), &format!("did={DID}")]),
            Txt::Match
        );
        assert_eq!(judge(&[]), Txt::Absent);
        assert_eq!(
            judge(&["v=spf1 -all", &format!("DID={DID}"), &format!(" did={DID}")]),
            Txt::Absent
        );
    }

    #[test]
    fn other_or_several_dids_fail_naming_the_record() {
        for records in [
            vec!["did=did:plc:bbbbbbbbbbbbbbbbbbbbbbbb".to_owned()],
            vec![
                format!("did={DID}"),
                "did=did:plc:bbbbbbbbbbbbbbbbbbbbbbbb".to_owned(),
            ],
            vec![format!("did={}", DID.to_uppercase())],
            vec![format!("did={DID} ")],
        ] {
            let refs: Vec<&str> = records.iter().map(String::as_str).collect();
            match judge(&refs) {
                Txt::Mismatch(reason) => assert!(reason.contains(NAME), "{reason}"),
                other => panic!("{records:?}: {other:?}"),
            }
        }
    }
}
