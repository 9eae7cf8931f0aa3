//! atproto and DNS identifier syntax, in one place.
//!
//! Every module that accepts a DID, handle, record key, repo revision, datetime or host name
//! from the network, the config file or the command line checks it here, so a value one part
//! of the labeler accepts is never refused by another (two copies of `is_did` once disagreed
//! about a trailing `%`, so getVerification refused DIDs that Jetstream had accepted).
//!
//! These are pure syntax checks. Whether a DID resolves, or a domain has the records a check
//! wants, is decided elsewhere.

/// Longest DID accepted: "DIDs are limited to 2 KB"
/// (<https://atproto.com/specs/did#at-protocol-did-identifier-syntax>).
pub const MAX_DID_LEN: usize = 2048;

/// A DID: `did:<method>:<identifier>` (<https://atproto.com/specs/did>): the method is
/// lowercase ASCII letters; the identifier is `[A-Za-z0-9._:%-]`, not empty and not ending in
/// `:` or `%`; at most [`MAX_DID_LEN`] bytes.
pub fn is_did(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("did:") else {
        return false;
    };
    let Some((method, id)) = rest.split_once(':') else {
        return false;
    };
    s.len() <= MAX_DID_LEN
        && !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_lowercase())
        && !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'%' | b'-'))
        && !id.ends_with([':', '%'])
}

/// An atproto handle (<https://atproto.com/specs/handle>): ASCII letters, digits and hyphens,
/// at least two labels of 1–63 characters that neither start nor end with a hyphen, at most
/// 253 characters, and a last label that starts with a letter.
pub fn is_handle(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').count() >= 2
        && s.split('.').all(|l| is_ldh_label(l, false))
        && s.rsplit('.')
            .next()
            .and_then(|l| l.bytes().next())
            .is_some_and(|b| b.is_ascii_alphabetic())
}

/// A DNS name of at least two labels (a trailing dot allowed), each 1–63 letters, digits,
/// hyphens (not at either end) or underscores, at most 253 bytes. Underscores are allowed
/// because SPF include targets such as `_spf.example.com` use them (RFC 8553 §1).
pub fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    s.len() <= 253 && s.contains('.') && s.split('.').all(|l| is_ldh_label(l, true))
}

/// A host name as it may appear in a URL or a did:web: [`is_dns_name`] without underscores,
/// in lowercase (<https://atproto.com/specs/did#did-web>: the hostname is lowercase).
pub fn is_host_name(s: &str) -> bool {
    is_dns_name(s) && !s.contains('_') && !s.bytes().any(|b| b.is_ascii_uppercase())
}

/// One DNS label: 1–63 bytes of letters, digits and `-` (and `_` when allowed), not starting
/// or ending with `-` (RFC 1123 §2.1).
fn is_ldh_label(l: &str, underscore: bool) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || (underscore && b == b'_'))
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// A record key (<https://atproto.com/specs/record-key>): 1–512 characters of
/// `A-Za-z0-9.-_:~`, not `.` or `..`.
pub fn is_record_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 512
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:~".contains(&b))
}

/// A repo revision (<https://atproto.com/specs/tid>): a TID is 13 characters of the
/// base32-sortable alphabet. Accepts 1–64 lowercase letters and digits, so a change of format
/// on the wire does not stop the stream; revisions are only compared, never decoded.
pub fn is_rev(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// An RFC 3339 datetime as the Lexicon `datetime` format wants it
/// (<https://atproto.com/specs/lexicon#datetime>): whole seconds, optional fractional
/// seconds, an uppercase `T`, and `Z` or a numeric offset other than `-00:00`.
pub fn is_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || b[10] != b'T'
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    let tz = &s[i..];
    let offset_ok = tz.len() == 6
        && (tz.starts_with('+') || tz.starts_with('-'))
        && digits(i + 1..i + 3)
        && b[i + 3] == b':'
        && digits(i + 4..i + 6)
        && tz != "-00:00";
    // humantime validates the calendar (month 13, day 31 of February) for the Z form.
    (tz == "Z" && humantime::parse_rfc3339(s).is_ok()) || offset_ok
}

/// A DKIM selector: dot-separated labels of letters, digits, `-` and `_` (RFC 6376 §3.1),
/// at most 200 bytes in all.
pub fn is_selector(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dids_follow_the_did_spec_and_nothing_else() {
        for ok in [
            "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
            "did:web:example.com",
            "did:web:localhost%3A8080",
            "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",
        ] {
            assert!(is_did(ok), "{ok}");
        }
        let too_long = format!("did:plc:{}", "a".repeat(MAX_DID_LEN));
        for bad in [
            "",
            "did:",
            "did:plc",
            "did:plc:",
            "did:PLC:abc",
            "did:plc:a b",
            "did:plc:abc:",
            "did:plc:abc%",
            "at://did:plc:a",
            too_long.as_str(),
        ] {
            assert!(!is_did(bad), "{bad}");
        }
    }

    #[test]
    fn handles_need_two_labels_and_a_tld_starting_with_a_letter() {
        for ok in ["alice.example.com", "xn--bcher-kva.example", "a.b-c.test"] {
            assert!(is_handle(ok), "{ok}");
        }
        for bad in [
            "example",
            "a.123",
            "-a.example",
            "a..example",
            "a_b.example",
            "bücher.example",
            "a.example.",
        ] {
            assert!(!is_handle(bad), "{bad}");
        }
    }

    #[test]
    fn dns_names_allow_underscores_but_host_names_do_not() {
        assert!(is_dns_name("_spf.relay.atmos.email"));
        assert!(is_dns_name("example.com."));
        assert!(!is_dns_name("localhost"));
        assert!(!is_dns_name("-a.example"));
        assert!(!is_dns_name(&format!("{}.com", "a".repeat(64))));
        assert!(is_host_name("labeler.example.com"));
        assert!(!is_host_name("_spf.example.com"));
        assert!(!is_host_name("Labeler.example.com"));
    }

    #[test]
    fn record_keys_and_revisions_follow_their_alphabets() {
        assert!(is_record_key("3mvzi5tlpq22f"));
        assert!(is_record_key("self"));
        assert!(is_record_key("a:b~c_d.e-f"));
        assert!(!is_record_key(".."));
        assert!(!is_record_key("a/b"));
        assert!(!is_record_key(""));
        assert!(!is_record_key(&"a".repeat(513)));
        assert!(is_rev("3mvzi5tlpq22f"));
        assert!(!is_rev("3MVZI"));
        assert!(!is_rev(""));
        assert!(!is_rev(&"a".repeat(65)));
    }

    #[test]
    fn datetimes_follow_the_lexicon_datetime_format() {
        for ok in [
            "2026-12-01T00:00:00Z",
            "2026-12-01T00:00:00.000Z",
            "2026-12-01T00:00:00.123456+02:00",
        ] {
            assert!(is_datetime(ok), "{ok}");
        }
        for bad in [
            "2026-12-01 00:00:00Z",
            "2026-12-01T00:00Z",
            "2026-12-01T00:00:00z",
            "2026-12-01T00:00:00",
            "2026-12-01T00:00:00-00:00",
            "2026-13-01T00:00:00Z",
            "2026-02-31T00:00:00Z",
            "2026-12-01T00:00:00.Z",
        ] {
            assert!(!is_datetime(bad), "{bad}");
        }
    }

    #[test]
    fn selectors_are_dot_separated_labels_with_underscores() {
        assert!(is_selector("default"));
        assert!(is_selector("s1._domainkey-x.a_b"));
        assert!(!is_selector(""));
        assert!(!is_selector("a..b"));
        assert!(!is_selector("a b"));
        assert!(!is_selector(&"a".repeat(64)));
    }
}
