//! `com.atproto.label.subscribeLabels` frames.
//!
//! Event-stream framing (<https://atproto.com/specs/event-stream> "Framing"): every binary WebSocket message
//! is two concatenated DAG-CBOR objects, a header and a payload.
//! - Message frames: header `{op: 1, t: "#labels" | "#info"}`, then the message body.
//! - Error frames: header `{op: -1}` (no `t`), then `{error, message?}`; the server closes the
//!   connection after sending one.
//!
//! Bodies follow the lexicon `com.atproto.label.subscribeLabels`: `#labels` is
//! `{seq, labels: [label]}` and `#info` is `{name, message?}`. Keys are written in DAG-CBOR
//! canonical order (length first): `t` before `op`, `seq` before `labels`, `name`/`error`
//! before `message`.

use crate::cbor;
use crate::label::{LabelRef, SignedLabel};

/// `#info` name sent when a cursor is older than the retained history.
pub const OUTDATED_CURSOR: &str = "OutdatedCursor";
/// Error sent when the requested cursor is newer than the newest seq.
pub const FUTURE_CURSOR: &str = "FutureCursor";
/// Error sent before closing a subscriber that cannot keep up.
pub const CONSUMER_TOO_SLOW: &str = "ConsumerTooSlow";
/// Error sent for malformed subscription parameters.
pub const INVALID_REQUEST: &str = "InvalidRequest";

/// Header `{t: "#labels", op: 1}`, precomputed.
const LABELS_HEADER: &[u8] = &[
    0xa2, 0x61, b't', 0x67, b'#', b'l', b'a', b'b', b'e', b'l', b's', 0x62, b'o', b'p', 0x01,
];

/// Appends a `#labels` frame carrying one label to `out`.
///
/// One label per frame is what Ozone, skyware and the reference PDS emit, and what the vectors
/// pin; the lexicon allows several (see [`labels_frame`]).
pub fn write_label_frame(out: &mut Vec<u8>, seq: i64, label: &LabelRef<'_>, sig: &[u8]) {
    out.extend_from_slice(LABELS_HEADER);
    cbor::map(out, 2);
    cbor::text(out, "seq");
    cbor::int(out, seq);
    cbor::text(out, "labels");
    cbor::array(out, 1);
    label.encode_cbor(Some(sig), out);
}

/// A `#labels` frame with any number of labels under one `seq`.
pub fn labels_frame(seq: i64, labels: &[SignedLabel]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + 240 * labels.len());
    out.extend_from_slice(LABELS_HEADER);
    cbor::map(&mut out, 2);
    cbor::text(&mut out, "seq");
    cbor::int(&mut out, seq);
    cbor::text(&mut out, "labels");
    cbor::array(&mut out, labels.len());
    for l in labels {
        l.label.as_ref().encode_cbor(Some(&l.sig), &mut out);
    }
    out
}

/// An `#info` frame, e.g. [`OUTDATED_CURSOR`].
pub fn info_frame(name: &str, message: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    cbor::map(&mut out, 2);
    cbor::text(&mut out, "t");
    cbor::text(&mut out, "#info");
    cbor::text(&mut out, "op");
    cbor::int(&mut out, 1);
    cbor::map(&mut out, 1 + usize::from(message.is_some()));
    cbor::text(&mut out, "name");
    cbor::text(&mut out, name);
    if let Some(m) = message {
        cbor::text(&mut out, "message");
        cbor::text(&mut out, m);
    }
    out
}

/// An error frame (`op: -1`), e.g. [`FUTURE_CURSOR`]. The connection is closed after it.
pub fn error_frame(error: &str, message: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    cbor::map(&mut out, 1);
    cbor::text(&mut out, "op");
    cbor::int(&mut out, -1);
    cbor::map(&mut out, 1 + usize::from(message.is_some()));
    cbor::text(&mut out, "error");
    cbor::text(&mut out, error);
    if let Some(m) = message {
        cbor::text(&mut out, "message");
        cbor::text(&mut out, m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_header_is_the_canonical_encoding() {
        #[derive(serde::Serialize)]
        struct Header {
            op: i64,
            t: &'static str,
        }
        let reference = serde_ipld_dagcbor::to_vec(&Header {
            op: 1,
            t: "#labels",
        })
        .unwrap();
        assert_eq!(LABELS_HEADER, &reference[..]);
    }
}
