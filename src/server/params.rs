//! XRPC query parameters, parsed from the raw query string.
//!
//! <https://atproto.com/specs/xrpc> "Lexicon HTTP Endpoints": array parameters repeat their key
//! (`?uriPatterns=a&uriPatterns=b`). axum's `Query` goes through `serde_urlencoded`, which
//! cannot collect repeated keys (docs/protocol.md §4), so the string is
//! split and percent-decoded here. Decoding borrows when nothing is escaped, which is the
//! common case for DIDs.

use std::borrow::Cow;

use super::error::XrpcError;

/// The `key=value` pairs of a query string, in order, percent-decoded
/// (`application/x-www-form-urlencoded`: `+` is a space). A pair whose value is not valid
/// UTF-8 after decoding is an error naming its key.
pub(crate) fn pairs(
    query: &str,
) -> impl Iterator<Item = Result<(Cow<'_, str>, Cow<'_, str>), XrpcError>> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k).ok_or_else(|| bad_encoding(k))?;
        let value = decode(v).ok_or_else(|| bad_encoding(&key))?;
        Ok((key, value))
    })
}

fn bad_encoding(key: &str) -> XrpcError {
    let key: String = key.chars().take(64).collect();
    XrpcError::InvalidRequest(format!(
        "parameter {key:?} is not valid percent-encoded UTF-8"
    ))
}

/// Percent-decodes one component; `None` when the result is not UTF-8. A `%` not followed by
/// two hex digits is kept literally, as browsers and the WHATWG URL parser do.
fn decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (b.get(i + 1).and_then(hex), b.get(i + 2).and_then(hex)) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parses an integer parameter within `min..=max`.
pub(crate) fn int_in(name: &str, value: &str, min: i64, max: i64) -> Result<i64, XrpcError> {
    match value.parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(XrpcError::InvalidRequest(format!(
            "{name} must be an integer between {min} and {max}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(q: &str) -> Vec<(String, String)> {
        pairs(q)
            .map(|r| r.map(|(k, v)| (k.into_owned(), v.into_owned())))
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn query_strings_keep_repeated_keys_and_decode_escapes() {
        assert_eq!(
            all("uriPatterns=did%3Aplc%3Aa&uriPatterns=at://x/*&&limit=5&flag"),
            vec![
                ("uriPatterns".into(), "did:plc:a".into()),
                ("uriPatterns".into(), "at://x/*".into()),
                ("limit".into(), "5".into()),
                ("flag".into(), String::new()),
            ]
        );
        assert_eq!(all("a=b+c%2B%zz%4"), vec![("a".into(), "b c+%zz%4".into())]);
        assert_eq!(all("u=%C3%BC"), vec![("u".into(), "ü".into())]);
        assert!(pairs("u=%FF").any(|r| r.is_err()));
    }

    #[test]
    fn integers_out_of_range_or_malformed_are_refused() {
        assert_eq!(int_in("limit", "250", 1, 250).unwrap(), 250);
        for bad in [
            "0",
            "251",
            "-1",
            "1.5",
            "",
            " 5",
            "5a",
            "99999999999999999999",
        ] {
            assert!(int_in("limit", bad, 1, 250).is_err(), "{bad:?}");
        }
    }
}
