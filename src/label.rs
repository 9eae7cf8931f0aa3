//! atproto labels: the label object, its signing bytes, signing and verification, and its
//! JSON form.
//!
//! Implements <https://atproto.com/specs/label> ("Schema and Data Model", "Signatures"):
//! - the signed object is exactly `ver, src, uri, cid?, val, neg?, cts, exp?` — `ver` always
//!   present, absent optional fields omitted (never `null`), `neg` only when `true`, no `$type`;
//! - it is encoded as DAG-CBOR (keys in canonical order `cid, cts, exp, neg, sig, src, uri, val,
//!   ver`), hashed with SHA-256 and signed with the labeler's `#atproto_label` key;
//! - JSON carries `sig` as `{"$bytes": "<standard base64, no padding>"}`
//!   (<https://atproto.com/specs/data-model> "bytes"; indigo decodes only the unpadded form).
//!
//! `cts` and `exp` are kept as the exact strings that were signed: re-formatting a parsed
//! timestamp would change the signed bytes.

use std::time::{Duration, SystemTime};

use serde::ser::{SerializeMap, Serializer};

use crate::cbor;
use crate::keys::{self, PublicKey, SigningKey};

/// The label format version, `ver` (<https://atproto.com/specs/label>: "currently always 1").
pub const LABEL_VERSION: i64 = 1;

/// Granted on an operator's DID while at least one of its attestations verifies.
pub const VERIFIED_MAIL_OPERATOR: &str = "verified-mail-operator";

/// Granted on an operator's DID while a verified attestation's SPF authorises the
/// cooperative relay (`relaySpfInclude`).
pub const RELAY_MEMBER: &str = "relay-member";

/// Longest label value in bytes (<https://atproto.com/specs/label>, lexicon `maxLength: 128`).
pub const MAX_VALUE_BYTES: usize = 128;

/// Errors about label content.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A label value outside the recommended syntax.
    #[error(
        "label value {0:?} is not allowed: use lowercase ASCII letters and '-', not starting or \
         ending with '-', at most 128 bytes"
    )]
    BadValue(String),
    /// A timestamp that is not an atproto datetime.
    #[error("{0:?} is not an RFC 3339 datetime with a timezone (e.g. 2026-12-01T00:00:00.000Z)")]
    BadDatetime(String),
    /// A subject that is neither a DID nor an `at://` URI.
    #[error("label subject {0:?} must be a DID (did:…) or an at:// URI")]
    BadUri(String),
    /// The signature does not match.
    #[error(transparent)]
    Signature(#[from] keys::Error),
}

/// An unsigned label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    /// DID of the labeler that signs it.
    pub src: String,
    /// Subject: a bare DID (account label) or an `at://` URI (record label).
    pub uri: String,
    /// Optional CID pinning one version of a record.
    pub cid: Option<String>,
    /// The label value.
    pub val: String,
    /// `true` for a negation (retraction) of an earlier label with the same src/uri/cid/val.
    pub neg: bool,
    /// Creation time, exactly as signed.
    pub cts: String,
    /// Optional expiry, exactly as signed.
    pub exp: Option<String>,
}

/// A label and its 64-byte signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedLabel {
    /// The signed fields.
    pub label: Label,
    /// Compact `r‖s` secp256k1 signature over [`Label::signing_bytes`].
    pub sig: [u8; 64],
}

/// A borrowed view of a label's fields, so rows read from SQLite can be encoded without
/// copying them into owned strings first (the backfill hot path).
#[derive(Clone, Copy, Debug)]
pub struct LabelRef<'a> {
    /// See [`Label::src`].
    pub src: &'a str,
    /// See [`Label::uri`].
    pub uri: &'a str,
    /// See [`Label::cid`].
    pub cid: Option<&'a str>,
    /// See [`Label::val`].
    pub val: &'a str,
    /// See [`Label::neg`].
    pub neg: bool,
    /// See [`Label::cts`].
    pub cts: &'a str,
    /// See [`Label::exp`].
    pub exp: Option<&'a str>,
}

impl LabelRef<'_> {
    /// An owned copy.
    pub fn to_label(&self) -> Label {
        Label {
            src: self.src.to_owned(),
            uri: self.uri.to_owned(),
            cid: self.cid.map(str::to_owned),
            val: self.val.to_owned(),
            neg: self.neg,
            cts: self.cts.to_owned(),
            exp: self.exp.map(str::to_owned),
        }
    }

    /// Appends the DAG-CBOR map of this label to `out`, with `sig` when given.
    ///
    /// Keys are all three bytes long, so canonical (length-first) order is plain
    /// lexicographic order: `cid, cts, exp, neg, sig, src, uri, val, ver`.
    pub fn encode_cbor(&self, sig: Option<&[u8]>, out: &mut Vec<u8>) {
        let n = 5
            + usize::from(self.cid.is_some())
            + usize::from(self.exp.is_some())
            + usize::from(self.neg)
            + usize::from(sig.is_some());
        cbor::map(out, n);
        if let Some(cid) = self.cid {
            cbor::text(out, "cid");
            cbor::text(out, cid);
        }
        cbor::text(out, "cts");
        cbor::text(out, self.cts);
        if let Some(exp) = self.exp {
            cbor::text(out, "exp");
            cbor::text(out, exp);
        }
        if self.neg {
            cbor::text(out, "neg");
            cbor::boolean(out, true);
        }
        if let Some(sig) = sig {
            cbor::text(out, "sig");
            cbor::bytes(out, sig);
        }
        cbor::text(out, "src");
        cbor::text(out, self.src);
        cbor::text(out, "uri");
        cbor::text(out, self.uri);
        cbor::text(out, "val");
        cbor::text(out, self.val);
        cbor::text(out, "ver");
        cbor::int(out, LABEL_VERSION);
    }
}

impl Label {
    /// A borrowed view of this label.
    pub fn as_ref(&self) -> LabelRef<'_> {
        LabelRef {
            src: &self.src,
            uri: &self.uri,
            cid: self.cid.as_deref(),
            val: &self.val,
            neg: self.neg,
            cts: &self.cts,
            exp: self.exp.as_deref(),
        }
    }

    /// The DAG-CBOR bytes that are hashed and signed (the label without `sig`).
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        self.as_ref().encode_cbor(None, &mut out);
        out
    }

    /// Signs the label with the labeler's key.
    pub fn sign(self, key: &SigningKey) -> SignedLabel {
        let sig = key.sign(&self.signing_bytes());
        SignedLabel { label: self, sig }
    }
}

impl SignedLabel {
    /// Checks the signature against `key` (the `src` DID's `#atproto_label` key).
    pub fn verify(&self, key: &PublicKey) -> Result<(), Error> {
        Ok(key.verify(&self.label.signing_bytes(), &self.sig)?)
    }

    /// The DAG-CBOR encoding of the label with its `sig`, as it appears in stream frames.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(240);
        self.label.as_ref().encode_cbor(Some(&self.sig), &mut out);
        out
    }
}

/// The JSON form served by `com.atproto.label.queryLabels` (lexicon `#label`): fields in the
/// reference order `ver, src, uri, cid?, val, neg?, cts, exp?, sig`.
impl serde::Serialize for SignedLabel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_json(&self.label.as_ref(), &self.sig, serializer)
    }
}

/// Writes one label as JSON through `serializer` (shared by owned and borrowed labels).
pub fn serialize_json<S: Serializer>(
    l: &LabelRef<'_>,
    sig: &[u8],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut m = serializer.serialize_map(None)?;
    m.serialize_entry("ver", &LABEL_VERSION)?;
    m.serialize_entry("src", l.src)?;
    m.serialize_entry("uri", l.uri)?;
    if let Some(cid) = l.cid {
        m.serialize_entry("cid", cid)?;
    }
    m.serialize_entry("val", l.val)?;
    if l.neg {
        m.serialize_entry("neg", &true)?;
    }
    m.serialize_entry("cts", l.cts)?;
    if let Some(exp) = l.exp {
        m.serialize_entry("exp", exp)?;
    }
    m.serialize_entry("sig", &JsonBytes(sig))?;
    m.end()
}

/// `{"$bytes": "<base64>"}`: the atproto JSON encoding of bytes.
struct JsonBytes<'a>(&'a [u8]);

impl serde::Serialize for JsonBytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut m = serializer.serialize_map(Some(1))?;
        m.serialize_entry("$bytes", &data_encoding::BASE64_NOPAD.encode(self.0))?;
        m.end()
    }
}

/// Checks a label value against the recommended syntax (<https://atproto.com/specs/label> "Recommended
/// String Syntax"): lowercase ASCII letters and `-`, `-` neither first nor last, ≤ 128 bytes.
pub fn validate_value(val: &str) -> Result<(), Error> {
    let ok = !val.is_empty()
        && val.len() <= MAX_VALUE_BYTES
        && val.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        && !val.starts_with('-')
        && !val.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::BadValue(val.chars().take(140).collect()))
    }
}

/// Checks a label subject: a DID or an `at://` URI, printable ASCII with no whitespace.
pub fn validate_uri(uri: &str) -> Result<(), Error> {
    let ok = (uri.starts_with("did:") || uri.starts_with("at://did:"))
        && uri.len() <= 8192
        && uri.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Error::BadUri(uri.chars().take(200).collect()))
    }
}

/// Formats a time the way Ozone and `@atproto` do (`Date.toISOString()`):
/// `YYYY-MM-DDTHH:MM:SS.sssZ`, the form <https://atproto.com/specs/lexicon> "datetime" recommends.
pub fn format_datetime(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The current time as a label `cts`.
pub fn now_cts() -> String {
    format_datetime(SystemTime::now())
}

/// Parses an expiry given by an operator: an RFC 3339 datetime (kept verbatim, since it is
/// what gets signed) or a duration from now such as `30d` (formatted like `cts`).
pub fn parse_expiry(s: &str) -> Result<String, Error> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(format_datetime(SystemTime::now() + d));
    }
    if crate::syntax::is_datetime(s) {
        Ok(s.to_owned())
    } else {
        Err(Error::BadDatetime(s.chars().take(64).collect()))
    }
}

/// An atproto datetime as unix milliseconds: `Z` or a numeric offset, with or without
/// fractional seconds. `None` when it is not one ([`crate::syntax::is_datetime`]).
pub fn datetime_ms(s: &str) -> Option<i64> {
    if !crate::syntax::is_datetime(s) {
        return None;
    }
    let (base, offset_s) = if let Some(b) = s.strip_suffix('Z') {
        (b, 0i64)
    } else {
        let (b, tz) = s.split_at(s.len() - 6);
        let sign = if tz.starts_with('-') { -1 } else { 1 };
        let h: i64 = tz[1..3].parse().ok()?;
        let m: i64 = tz[4..6].parse().ok()?;
        (b, sign * (h * 3600 + m * 60))
    };
    let t = humantime::parse_rfc3339_weak(base).ok()?;
    let ms = t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_millis() as i64;
    Some(ms - offset_s * 1000)
}

/// `now + d` formatted as a datetime; used for label expiries computed from a duration.
pub fn datetime_after(d: Duration) -> String {
    format_datetime(SystemTime::now() + d)
}

/// The `app.bsky.labeler.service` record (rkey `self`) declaring the labels this labeler
/// emits, each with English `locales` (name, description), `severity: "none"` and
/// `blurs: "none"`: they are signals for mail relays and AppViews, not warnings for people
/// reading posts. `subjectTypes: ["account"]`: labels go on operators' DIDs; no report reason
/// is accepted (`reasonTypes: []`). `tests/lexicons.rs` validates it against the lexicon.
pub fn service_record() -> serde_json::Value {
    let definition = |identifier: &str, name: &str, description: &str| {
        serde_json::json!({
            "identifier": identifier,
            "severity": "none",
            "blurs": "none",
            "locales": [{ "lang": "en", "name": name, "description": description }]
        })
    };
    serde_json::json!({
        "$type": "app.bsky.labeler.service",
        "policies": {
            "labelValues": [VERIFIED_MAIL_OPERATOR, RELAY_MEMBER],
            "labelValueDefinitions": [
                definition(
                    VERIFIED_MAIL_OPERATOR,
                    "Verified mail operator",
                    "This account runs a mail domain whose DNS passed every Atmosphere Mail \
                     check: the domain is controlled by this account (handle or _atproto TXT), it \
                     has a working MX, an SPF policy that does not authorise the whole internet, \
                     valid DKIM keys for every declared selector, and a DMARC policy of \
                     quarantine or reject. Re-verified daily; the label lapses unless renewed \
                     (see its exp) and is withdrawn when the DNS stops passing.",
                ),
                definition(
                    RELAY_MEMBER,
                    "Atmosphere Mail relay member",
                    "A verified mail operator whose SPF record authorises the Atmosphere Mail \
                     cooperative relay, so its transactional mail can be sent through the shared \
                     infrastructure.",
                ),
            ]
        },
        "reasonTypes": [],
        "subjectTypes": ["account"],
        "createdAt": now_cts(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Label {
        Label {
            src: "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme".into(),
            uri: "at://did:plc:abc/email.atmos.attestation/3kx".into(),
            cid: Some("bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm".into()),
            val: "verified-mail-operator".into(),
            neg: true,
            cts: "2026-11-20T10:00:00.000Z".into(),
            exp: Some("2026-12-20T10:00:00.000Z".into()),
        }
    }

    /// serde_ipld_dagcbor sorts keys itself, so it is an independent check of our order.
    #[derive(serde::Serialize)]
    struct Reference<'a> {
        ver: i64,
        src: &'a str,
        uri: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        cid: Option<&'a str>,
        val: &'a str,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        neg: bool,
        cts: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        exp: Option<&'a str>,
        #[serde(with = "serde_bytes", skip_serializing_if = "Option::is_none")]
        sig: Option<&'a [u8]>,
    }

    fn reference(l: &Label, sig: Option<&[u8]>) -> Vec<u8> {
        serde_ipld_dagcbor::to_vec(&Reference {
            ver: 1,
            src: &l.src,
            uri: &l.uri,
            cid: l.cid.as_deref(),
            val: &l.val,
            neg: l.neg,
            cts: &l.cts,
            exp: l.exp.as_deref(),
            sig,
        })
        .unwrap()
    }

    #[test]
    fn every_optional_field_combination_matches_the_reference_encoder() {
        for mask in 0..16u8 {
            let mut l = sample();
            if mask & 1 == 0 {
                l.cid = None;
            }
            if mask & 2 == 0 {
                l.exp = None;
            }
            l.neg = mask & 4 != 0;
            let sig = [9u8; 64];
            let with_sig = mask & 8 != 0;
            let mut ours = Vec::new();
            l.as_ref()
                .encode_cbor(with_sig.then_some(&sig[..]), &mut ours);
            assert_eq!(
                ours,
                reference(&l, with_sig.then_some(&sig[..])),
                "mask {mask}"
            );
        }
    }

    #[test]
    fn label_values_are_lowercase_words_of_at_most_128_bytes() {
        for ok in ["spam", "verified-mail-operator", "a", &"a".repeat(128)] {
            validate_value(ok).unwrap();
        }
        for bad in [
            "",
            "Spam",
            "-spam",
            "spam-",
            "sp am",
            "spam!",
            "!hide",
            "ß",
            &"a".repeat(129),
        ] {
            assert!(validate_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn datetimes_convert_to_the_instant_they_name() {
        assert_eq!(datetime_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(datetime_ms("1970-01-01T00:00:01.250Z"), Some(1250));
        assert_eq!(datetime_ms("1970-01-01T02:00:00+02:00"), Some(0));
        assert_eq!(datetime_ms("1970-01-01T00:00:00-01:00"), Some(3_600_000));
        assert_eq!(datetime_ms("yesterday"), None);
    }

    #[test]
    fn creation_times_and_expiries_are_lexicon_datetimes() {
        use crate::syntax::is_datetime;
        let cts = now_cts();
        assert!(
            is_datetime(&cts) && cts.ends_with('Z') && cts.len() == 24,
            "{cts}"
        );
        assert!(is_datetime(&parse_expiry("30d").unwrap()));
        assert_eq!(
            parse_expiry("2026-12-01T00:00:00Z").unwrap(),
            "2026-12-01T00:00:00Z"
        );
        assert!(parse_expiry("tomorrow").is_err());
    }

    #[test]
    fn a_tampered_label_or_signature_fails_verification() {
        let key = SigningKey::generate().unwrap();
        let public = PublicKey::parse(key.did_key()).unwrap();
        let signed = sample().sign(&key);
        signed.verify(&public).unwrap();

        let mut tampered = signed.clone();
        tampered.label.val = "verified-mail-operatox".into();
        assert!(tampered.verify(&public).is_err());

        let mut flipped = signed.clone();
        flipped.sig[10] ^= 1;
        assert!(flipped.verify(&public).is_err());

        let other = SigningKey::generate().unwrap();
        assert!(
            signed
                .verify(&PublicKey::parse(other.did_key()).unwrap())
                .is_err()
        );
    }
}
