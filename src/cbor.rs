//! A minimal, allocation-free DAG-CBOR writer for the few shapes this labeler emits.
//!
//! atproto signs and streams labels as DRISL / DAG-CBOR (<https://atproto.com/specs/data-model>): definite
//! lengths, shortest-form integers, text-string map keys sorted length-first then bytewise, no
//! floats, no tags. Our maps have fixed, known keys, so callers write them already in canonical
//! order and this module only has to get the heads right (RFC 8949 §3, §4.2.1).
//!
//! Why not `serde_ipld_dagcbor` on the hot path: it sorts map entries through per-field
//! buffers, which made allocation 40% of the server's profile when streaming a backfill
//! (`docs/performance.md` §3). The serde encoder stays in the tests as an independent
//! referee for every shape written here.

/// CBOR major types (RFC 8949 §3.1).
const MAJOR_UNSIGNED: u8 = 0;
const MAJOR_NEGATIVE: u8 = 1;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const MAJOR_MAP: u8 = 5;

/// `false` and `true` simple values (RFC 8949 §3.3).
const FALSE: u8 = 0xf4;
const TRUE: u8 = 0xf5;

/// Writes a head with the shortest argument encoding, as DAG-CBOR requires.
fn head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    if arg < 24 {
        out.push(m | arg as u8);
    } else if arg <= u64::from(u8::MAX) {
        out.extend_from_slice(&[m | 24, arg as u8]);
    } else if arg <= u64::from(u16::MAX) {
        out.push(m | 25);
        out.extend_from_slice(&(arg as u16).to_be_bytes());
    } else if arg <= u64::from(u32::MAX) {
        out.push(m | 26);
        out.extend_from_slice(&(arg as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

/// Writes a signed integer in shortest form (major type 0 or 1).
pub(crate) fn int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        head(out, MAJOR_UNSIGNED, v as u64);
    } else {
        // -1 - v never overflows for negative v.
        head(out, MAJOR_NEGATIVE, (-1 - v) as u64);
    }
}

/// Writes a UTF-8 text string.
pub(crate) fn text(out: &mut Vec<u8>, s: &str) {
    head(out, MAJOR_TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Writes a byte string.
pub(crate) fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, MAJOR_BYTES, b.len() as u64);
    out.extend_from_slice(b);
}

/// Writes a boolean.
pub(crate) fn boolean(out: &mut Vec<u8>, b: bool) {
    out.push(if b { TRUE } else { FALSE });
}

/// Writes the head of a map with `n` entries; the caller writes the entries in canonical order.
pub(crate) fn map(out: &mut Vec<u8>, n: usize) {
    head(out, MAJOR_MAP, n as u64);
}

/// Writes the head of an array with `n` items.
pub(crate) fn array(out: &mut Vec<u8>, n: usize) {
    head(out, MAJOR_ARRAY, n as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_ref<T: serde::Serialize>(v: &T) -> Vec<u8> {
        serde_ipld_dagcbor::to_vec(v).unwrap()
    }

    #[test]
    fn integers_match_the_reference_encoder_at_every_width() {
        for v in [
            0i64,
            1,
            23,
            24,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as i64,
            u32::MAX as i64 + 1,
            i64::MAX,
            -1,
            -24,
            -25,
            -256,
            -257,
            -65_537,
            i64::MIN,
        ] {
            let mut out = Vec::new();
            int(&mut out, v);
            assert_eq!(out, serde_ref(&v), "value {v}");
        }
    }

    #[test]
    fn strings_bytes_and_bools_match_the_reference_encoder() {
        for len in [0usize, 1, 23, 24, 255, 256, 70_000] {
            let s = "x".repeat(len);
            let mut out = Vec::new();
            text(&mut out, &s);
            assert_eq!(out, serde_ref(&s));
            let b = vec![7u8; len];
            let mut out = Vec::new();
            bytes(&mut out, &b);
            assert_eq!(out, serde_ref(&serde_bytes::ByteBuf::from(b)));
        }
        let mut out = Vec::new();
        boolean(&mut out, true);
        boolean(&mut out, false);
        assert_eq!(out, [0xf5, 0xf4]);
    }
}
