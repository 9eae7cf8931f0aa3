//! DKIM key records (RFC 6376 §3.6.1, RFC 8301, RFC 8463): one judgement per declared
//! selector, over the TXT records found at `<selector>._domainkey.<domain>`.
//!
//! Rules (`docs/verification.md` §2):
//! - Records that begin with a `v=` other than `DKIM1` are not key records and are discarded
//!   (RFC 6376 §3.6.1). Every other TXT record at the name is a key record; more than one is a
//!   failure, since "results are undefined" (RFC 6376 §3.6.2.2) and verifiers may pick any.
//! - Tag-list syntax per RFC 6376 §3.2 ([`super::tags`]); duplicates invalidate the record.
//! - `v=`, if present, must be exactly `DKIM1` and the first tag (RFC 6376 §3.6.1).
//! - `p=` is required; an empty value means the key was revoked (RFC 6376 §3.6.1).
//! - `k=rsa` (the default): `p=` is a DER SubjectPublicKeyInfo, or a PKCS#1 RSAPublicKey
//!   (RFC 6376 erratum 3017); the modulus must have at least 1024 bits (RFC 8301 §3.2:
//!   verifiers MUST NOT accept smaller keys). Below 2048 bits passes with a note.
//! - `k=ed25519`: `p=` is the raw 32-byte key (RFC 8463 §4.2). Unknown key types fail
//!   (verifiers ignore them).
//! - `t=y` (testing) fails: verifiers must not treat such signatures differently from none.
//! - `s=`, if present, must include `email` or `*`; otherwise the key is not for mail.
//! - `h=`, if present, must include `sha256`: rsa-sha1 is historic (RFC 8301 §3.1).
//!
//! The DER reader is hand-written, minimal and bounds-checked: hostile input gives an error,
//! never a panic.

use data_encoding::{BASE64, BASE64_NOPAD};

use super::Outcome;
use super::tags::{self, Flavour};

/// Smallest RSA modulus accepted (RFC 8301 §3.2).
pub(crate) const MIN_RSA_BITS: usize = 1024;
/// RSA modulus size below which a pass carries a note (RFC 8301 §3.2 SHOULD).
pub(crate) const GOOD_RSA_BITS: usize = 2048;

/// Judges the TXT records found at `name` (`<selector>._domainkey.<domain>`).
pub(crate) fn judge(name: &str, records: &[Vec<u8>]) -> (Outcome, String) {
    let candidates: Vec<&Vec<u8>> = records.iter().filter(|r| !is_other_version(r)).collect();
    match candidates.as_slice() {
        [] => (
            Outcome::Fail,
            format!(
                "no DKIM key record at {name}: its {} TXT record(s) carry a v= other than DKIM1",
                records.len()
            ),
        ),
        [one] => match judge_key(one) {
            Ok(desc) => (Outcome::Pass, format!("DKIM key at {name} is {desc}")),
            Err(problem) => (
                Outcome::Fail,
                format!("DKIM key record at {name} {problem}"),
            ),
        },
        many => (
            Outcome::Fail,
            format!(
                "{name} has {} DKIM key records; verifiers may use any one of them, so there must be exactly one",
                many.len()
            ),
        ),
    }
}

/// True if the record starts with a `v=` tag whose value is not `DKIM1`: "records that
/// begin with v= and any other value MUST be discarded".
fn is_other_version(record: &[u8]) -> bool {
    let text = String::from_utf8_lossy(record);
    let trimmed = text.trim_start_matches([' ', '\t', '\r', '\n']);
    let Some(rest) = trimmed.strip_prefix('v') else {
        return false;
    };
    let Some(value) = rest.trim_start_matches([' ', '\t']).strip_prefix('=') else {
        return false;
    };
    let value = value.split(';').next().unwrap_or_default();
    value.trim_matches([' ', '\t', '\r', '\n']) != "DKIM1"
}

/// Checks one key record; `Ok` describes the key ("a 2048-bit RSA key"), `Err` is the
/// problem as a phrase that follows "DKIM key record at <name> ".
pub(crate) fn judge_key(record: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(record)
        .map_err(|_| "is invalid: it contains non-UTF-8 bytes".to_owned())?;
    let list = tags::parse(text, Flavour::Dkim).map_err(|e| format!("is invalid: {e}"))?;
    let get = |n: &str| tags::get(&list, n, Flavour::Dkim);
    if list
        .iter()
        .position(|t| t.name == "v")
        .is_some_and(|pos| pos != 0)
    {
        return Err("is invalid: v=DKIM1 must be the first tag (RFC 6376 §3.6.1)".to_owned());
    }
    let Some(p) = get("p") else {
        return Err("has no p= tag, so it holds no key".to_owned());
    };
    let p: String = p.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if p.is_empty() {
        return Err("has an empty p=, which means the key has been revoked".to_owned());
    }
    if let Some(t) = get("t")
        && flags(t).any(|f| f == "y")
    {
        return Err(
            "has t=y: the domain is only testing DKIM, so verifiers treat its signatures as absent"
                .to_owned(),
        );
    }
    if let Some(s) = get("s")
        && !flags(s).any(|f| f == "*" || f.eq_ignore_ascii_case("email"))
    {
        return Err(format!(
            "has s={}, which does not include \"email\" or \"*\", so the key is not for mail",
            tags::clip(s)
        ));
    }
    if let Some(h) = get("h")
        && !flags(h).any(|f| f.eq_ignore_ascii_case("sha256"))
    {
        return Err(format!(
            "has h={}, which does not allow sha256 (rsa-sha1 is no longer accepted, RFC 8301)",
            tags::clip(h)
        ));
    }
    let der = BASE64
        .decode(p.as_bytes())
        .or_else(|_| BASE64_NOPAD.decode(p.as_bytes()))
        .map_err(|_| "has a p= that is not valid base64".to_owned())?;
    let k = get("k").unwrap_or("rsa");
    if k.eq_ignore_ascii_case("rsa") {
        let bits = rsa_modulus_bits(&der)
            .map_err(|e| format!("has a p= that is not an RSA public key ({e})"))?;
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "holds a {bits}-bit RSA key; verifiers reject keys under {MIN_RSA_BITS} bits (RFC 8301)"
            ));
        }
        if bits < GOOD_RSA_BITS {
            Ok(format!(
                "a {bits}-bit RSA key (accepted; {GOOD_RSA_BITS} bits are recommended)"
            ))
        } else {
            Ok(format!("a {bits}-bit RSA key"))
        }
    } else if k.eq_ignore_ascii_case("ed25519") {
        if der.len() == 32 {
            Ok("an Ed25519 key".to_owned())
        } else {
            Err(format!(
                "has k=ed25519 but p= is {} bytes, not the 32 of a raw Ed25519 key (RFC 8463)",
                der.len()
            ))
        }
    } else {
        Err(format!(
            "has k={}, a key type verifiers do not know and will ignore",
            tags::clip(k)
        ))
    }
}

/// Colon-separated list items, trimmed (`t=`, `s=`, `h=`).
fn flags(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(':')
        .map(|f| f.trim_matches([' ', '\t', '\r', '\n']))
}

/// rsaEncryption, 1.2.840.113549.1.1.1, as DER OID content bytes.
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_NULL: u8 = 0x05;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

/// The bit length of the RSA modulus in a DER SubjectPublicKeyInfo (RFC 5280 §4.1.2.7,
/// RFC 8017 Appendix A.1) or a bare PKCS#1 RSAPublicKey.
pub(crate) fn rsa_modulus_bits(der: &[u8]) -> Result<usize, &'static str> {
    let (outer, rest) = read(der, TAG_SEQUENCE)?;
    if !rest.is_empty() {
        return Err("trailing bytes after the key");
    }
    match outer.first() {
        Some(&TAG_SEQUENCE) => {
            // SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier,
            //                                     subjectPublicKey BIT STRING }
            let (alg, rest) = read(outer, TAG_SEQUENCE)?;
            let (bits, rest) = read(rest, TAG_BIT_STRING)?;
            if !rest.is_empty() {
                return Err("unexpected fields in SubjectPublicKeyInfo");
            }
            let (oid, params) = read(alg, TAG_OID)?;
            if oid != RSA_ENCRYPTION {
                return Err("the algorithm is not rsaEncryption");
            }
            if !params.is_empty() {
                let (null, rest) = read(params, TAG_NULL)?;
                if !null.is_empty() || !rest.is_empty() {
                    return Err("bad rsaEncryption parameters");
                }
            }
            match bits.split_first() {
                Some((0, key)) => pkcs1_modulus_bits(key),
                Some(_) => Err("the BIT STRING has unused bits"),
                None => Err("empty BIT STRING"),
            }
        }
        Some(&TAG_INTEGER) => pkcs1_modulus_bits(der),
        _ => Err("neither SubjectPublicKeyInfo nor RSAPublicKey"),
    }
}

/// RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
fn pkcs1_modulus_bits(der: &[u8]) -> Result<usize, &'static str> {
    let (seq, rest) = read(der, TAG_SEQUENCE)?;
    if !rest.is_empty() {
        return Err("trailing bytes after RSAPublicKey");
    }
    let (n, rest) = read(seq, TAG_INTEGER)?;
    let (e, rest) = read(rest, TAG_INTEGER)?;
    if !rest.is_empty() {
        return Err("unexpected fields in RSAPublicKey");
    }
    let n = positive(n)?;
    let e = positive(e)?;
    if (e.len() == 1 && e[0] < 3) || e.last().is_some_and(|b| b & 1 == 0) {
        return Err("the public exponent is not an odd number ≥ 3");
    }
    let first = n.first().copied().unwrap_or(0);
    let top = 8 - usize::try_from(first.leading_zeros()).unwrap_or(8);
    Ok((n.len() - 1) * 8 + top)
}

/// The magnitude bytes of a positive DER INTEGER (no leading zero bytes).
fn positive(int: &[u8]) -> Result<&[u8], &'static str> {
    match int.first() {
        None => Err("empty INTEGER"),
        Some(b) if b & 0x80 != 0 => Err("negative INTEGER"),
        Some(_) => {
            let start = int.iter().position(|b| *b != 0).ok_or("zero INTEGER")?;
            Ok(&int[start..])
        }
    }
}

/// Reads one DER TLV with the expected single-byte tag; returns (content, rest).
/// Definite lengths only, at most 4 length bytes, everything bounds-checked.
fn read(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), &'static str> {
    let (&t, rest) = input.split_first().ok_or("truncated DER")?;
    if t != tag {
        return Err("unexpected DER tag");
    }
    let (&first, rest) = rest.split_first().ok_or("truncated DER length")?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return Err("unsupported DER length");
        }
        if rest.len() < count {
            return Err("truncated DER length");
        }
        let (len_bytes, rest) = rest.split_at(count);
        if len_bytes[0] == 0 {
            return Err("non-minimal DER length");
        }
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        if len < 0x80 {
            return Err("non-minimal DER length");
        }
        (len, rest)
    };
    if rest.len() < len {
        return Err("DER length beyond the end of the data");
    }
    Ok(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2048-bit RSA SubjectPublicKeyInfo (the same key the fake DNS publishes).
    pub(crate) const RSA_2048: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAmgLsKCud1Ieg4Pp5vfg2/0xlXL5vHaSB8vGQYMBSaoLbWNMHyK8WAllTOpW4uJY6SA/+wwIm84CwA4/XifIEWEpoxHHCWlF3ByamHU9p4kzKjGIl6SPyH9B01cAXGgtW5eJcHMyh22Ju4mg8RWi7PnmMNMKejvOdeR/RhnRSazI4kfjSaAcpYie9p4gDKAcRZ5xi3J6bzTIcgoWqWVIYvlmR3AW+9w9w3g+Oek2w/vTARfGAZMedyDavTb1f6XuzD3SyWtI6OYXe5xt/YL3/GswlywOORYyQomKthfv1RIzlutGpMkyit/OpM/RRT13JvHMTorCR7NyE8dYcyCxKWwIDAQAB";
    const RSA_1024: &str = "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDJ0a/SF4XKmVkSe+hdunFbvMdIKS2wyWUIw9F1futcL1Q2Zt3gwesPb3WDlQhymb8D3/8KA8OEQZejKx/C4+ohY+YWczOZKu9x5DsNhG3yUlfFj72uCQNn4c6CaAV66wUVPQf2wKm9YMPBeFe1xoZ83FRtY0LRgWaZEtjUV4ukIQIDAQAB";
    const RSA_1024_PKCS1: &str = "MIGJAoGBAMnRr9IXhcqZWRJ76F26cVu8x0gpLbDJZQjD0XV+61wvVDZm3eDB6w9vdYOVCHKZvwPf/woDw4RBl6MrH8Lj6iFj5hZzM5kq73HkOw2EbfJSV8WPva4JA2fhzoJoBXrrBRU9B/bAqb1gw8F4V7XGhnzcVG1jQtGBZpkS2NRXi6QhAgMBAAE=";
    const RSA_512: &str = "MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAKgzdcjig7MjOoGQ0Vy06mtRZ10gJbl4OgDSkTVf8QaElMYVXs6p8Wve59VUhVoltYPNasDEOnBBGVP/CxvY8jMCAwEAAQ==";
    const ED25519: &str = "8KK/o/JVMokSx0IZcNO0fk/BENjT6pj4noLS9mk08nA=";

    fn key(record: &str) -> Result<String, String> {
        judge_key(record.as_bytes())
    }

    #[test]
    fn measures_rsa_keys_in_both_encodings() {
        let bits = |b64: &str| rsa_modulus_bits(&BASE64.decode(b64.as_bytes()).unwrap());
        assert_eq!(bits(RSA_2048), Ok(2048));
        assert_eq!(bits(RSA_1024), Ok(1024));
        assert_eq!(bits(RSA_1024_PKCS1), Ok(1024));
        assert_eq!(bits(RSA_512), Ok(512));
    }

    #[test]
    fn accepts_good_keys() {
        assert_eq!(
            key(&format!("v=DKIM1; k=rsa; p={RSA_2048}")).unwrap(),
            "a 2048-bit RSA key"
        );
        assert!(key(&format!("p={RSA_1024}")).unwrap().contains("1024-bit"));
        assert!(key(&format!("v=DKIM1; p={RSA_1024_PKCS1}")).is_ok());
        assert_eq!(
            key(&format!("v=DKIM1; k=ed25519; p={ED25519}")).unwrap(),
            "an Ed25519 key"
        );
        // Folded base64 and FWS around tokens.
        let (a, b) = RSA_2048.split_at(100);
        assert!(key(&format!("v = DKIM1 ;\r\n p = {a} {b} ;")).is_ok());
        assert!(
            key(&format!(
                "v=DKIM1; h=sha1:sha256; s=email; t=s; p={RSA_2048}"
            ))
            .is_ok()
        );
        assert!(key(&format!("v=DKIM1; s=*; p={RSA_2048}")).is_ok());
    }

    #[test]
    fn rejects_bad_keys() {
        let cases = [
            (format!("v=DKIM1; p={RSA_512}"), "512-bit"),
            ("v=DKIM1; p=".to_owned(), "revoked"),
            ("v=DKIM1; p= ".to_owned(), "revoked"),
            ("v=DKIM1; k=rsa".to_owned(), "no p="),
            (format!("k=rsa; v=DKIM1; p={RSA_2048}"), "first tag"),
            (format!("v=DKIM1; t=y; p={RSA_2048}"), "t=y"),
            (format!("v=DKIM1; t=s:y; p={RSA_2048}"), "t=y"),
            (format!("v=DKIM1; s=other; p={RSA_2048}"), "not for mail"),
            (format!("v=DKIM1; h=sha1; p={RSA_2048}"), "sha256"),
            (format!("v=DKIM1; k=dsa; p={RSA_2048}"), "k=dsa"),
            (format!("v=DKIM1; k=ed25519; p={RSA_2048}"), "not the 32"),
            ("v=DKIM1; p=!!!notbase64".to_owned(), "base64"),
            ("v=DKIM1; p=AAAA".to_owned(), "not an RSA public key"),
            (
                format!("v=DKIM1; p={RSA_2048}; p={RSA_2048}"),
                "more than once",
            ),
            (format!("v=DKIM1;; p={RSA_2048}"), "empty"),
        ];
        for (record, needle) in cases {
            let err = key(&record).unwrap_err();
            assert!(err.contains(needle), "{record:?}: {err}");
        }
    }

    #[test]
    fn counts_key_records_and_names_the_record() {
        let name = "sel._domainkey.example.test";
        let good = format!("v=DKIM1; p={RSA_2048}").into_bytes();
        let (o, r) = judge(name, std::slice::from_ref(&good));
        assert_eq!(o, Outcome::Pass, "{r}");
        assert!(r.contains(name));
        let (o, r) = judge(name, &[good.clone(), good.clone()]);
        assert_eq!(o, Outcome::Fail);
        assert!(r.contains(name) && r.contains("2 DKIM key records"), "{r}");
        // A v=DKIM2 (or SPF) record is discarded, not counted.
        let (o, _) = judge(name, &[good, b"v=DKIM2; p=abc".to_vec()]);
        assert_eq!(o, Outcome::Pass);
        let (o, r) = judge(name, &[b"v=spf1 -all".to_vec()]);
        assert_eq!(o, Outcome::Fail);
        assert!(r.contains(name), "{r}");
        let (o, r) = judge(name, &[b"v=DKIM1; p=".to_vec()]);
        assert_eq!(o, Outcome::Fail);
        assert!(r.contains(name) && r.contains("revoked"), "{r}");
    }

    #[test]
    fn der_reader_rejects_malformed_lengths() {
        assert!(read(&[], TAG_SEQUENCE).is_err());
        assert!(read(&[0x30], TAG_SEQUENCE).is_err());
        assert!(read(&[0x30, 0x80], TAG_SEQUENCE).is_err());
        assert!(read(&[0x30, 0x85, 1, 1, 1, 1, 1], TAG_SEQUENCE).is_err());
        assert!(read(&[0x30, 0x81, 0x05], TAG_SEQUENCE).is_err());
        assert!(read(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff], TAG_SEQUENCE).is_err());
        assert!(read(&[0x30, 0x02, 0x00], TAG_SEQUENCE).is_err());
        assert_eq!(
            read(&[0x30, 0x01, 0x07, 0x09], TAG_SEQUENCE),
            Ok((&[0x07][..], &[0x09][..]))
        );
        assert!(rsa_modulus_bits(&[0x30, 0x06, 0x02, 0x01, 0x80, 0x02, 0x01, 0x03]).is_err());
    }

    proptest! {
        #[test]
        fn der_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = rsa_modulus_bits(&bytes);
        }

        #[test]
        fn der_reader_never_panics_on_mutated_keys(
            index in 0usize..294, value in any::<u8>(), cut in 0usize..300
        ) {
            let mut der = BASE64.decode(RSA_2048.as_bytes()).unwrap();
            der[index] = value;
            der.truncate(cut.max(1));
            let _ = rsa_modulus_bits(&der);
        }

        #[test]
        fn key_judgement_never_panics(s in "\\PC{0,300}") {
            let _ = judge_key(s.as_bytes());
            let (_, reason) = judge("s._domainkey.x.test", &[s.into_bytes()]);
            prop_assert!(reason.contains("s._domainkey.x.test"));
        }
    }
}
