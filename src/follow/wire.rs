//! Decoding the frames of an upstream's `com.atproto.label.subscribeLabels` stream.
//!
//! <https://atproto.com/specs/event-stream> "Framing": each binary message is a DAG-CBOR header
//! (`{op: 1, t: "#labels" | "#info"}`, or `{op: -1}` for an error) followed by a DAG-CBOR body,
//! and nothing else. A `#labels` body is `{seq, labels: [label]}` (lexicon
//! `com.atproto.label.subscribeLabels#labels`).
//!
//! A label is kept only if the mirror can serve it again byte for byte: the labeler writes
//! labels from their fields (`label::LabelRef::encode_cbor`), so a label whose encoding those
//! fields cannot reproduce — `ver` other than 1, an explicit `neg: false`, a signature that is
//! not 64 bytes — is malformed here; extra fields are dropped, and the signature check then
//! tells whether the label stands without them.

use std::io::Cursor;

use serde::Deserialize;

use crate::label::{LABEL_VERSION, Label, SignedLabel};

/// One decoded frame.
#[derive(Debug)]
pub(crate) enum Frame {
    /// A `#labels` message: its seq and its labels, each decoded or the reason it could not be.
    Labels {
        /// The message's seq.
        seq: i64,
        /// The labels in the message (the labeler sends exactly one).
        labels: Vec<Result<SignedLabel, String>>,
    },
    /// A `#labels` message whose body could not be read, but whose seq could.
    Unreadable {
        /// The message's seq.
        seq: i64,
        /// What is wrong.
        reason: String,
    },
    /// An `#info` message (e.g. `OutdatedCursor`).
    Info {
        /// The info name.
        name: String,
        /// Its message.
        message: Option<String>,
    },
    /// An error frame (`op: -1`); the upstream closes the connection after it.
    Error {
        /// The error name (`FutureCursor`, `ConsumerTooSlow`, …).
        error: String,
        /// Its message.
        message: Option<String>,
    },
    /// A message type this mirror does not know; the spec says to ignore it.
    Unknown {
        /// Its `t`.
        t: String,
    },
}

#[derive(Deserialize)]
struct Header {
    op: i64,
    t: Option<String>,
}

/// A label as sent (lexicon `com.atproto.label.defs#label`).
#[derive(Deserialize)]
struct WireLabel {
    ver: Option<i64>,
    src: String,
    uri: String,
    cid: Option<String>,
    val: String,
    neg: Option<bool>,
    cts: String,
    exp: Option<String>,
    sig: serde_bytes::ByteBuf,
}

#[derive(Deserialize)]
struct LabelsBody {
    seq: i64,
    labels: Vec<WireLabel>,
}

/// Just the seq of a `#labels` body, to name a message whose labels cannot be read.
#[derive(Deserialize)]
struct SeqOnly {
    seq: i64,
}

#[derive(Deserialize)]
struct InfoBody {
    name: String,
    message: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    message: Option<String>,
}

/// Decodes one binary message. `Err` when not even the header (or the seq of a `#labels`
/// message) can be read.
pub(crate) fn decode(bytes: &[u8]) -> Result<Frame, String> {
    let mut r = Cursor::new(bytes);
    let header: Header = serde_ipld_dagcbor::de::from_reader_once(&mut r)
        .map_err(|e| format!("unreadable header: {e}"))?;
    let body = &bytes[r.position() as usize..];
    match (header.op, header.t.as_deref()) {
        (1, Some("#labels")) => Ok(labels(body)),
        (1, Some("#info")) => {
            let b: InfoBody = whole(body).map_err(|e| format!("unreadable #info body: {e}"))?;
            Ok(Frame::Info {
                name: b.name,
                message: b.message,
            })
        }
        (1, Some(t)) => Ok(Frame::Unknown { t: t.to_owned() }),
        (-1, _) => {
            let b: ErrorBody = whole(body).map_err(|e| format!("unreadable error body: {e}"))?;
            Ok(Frame::Error {
                error: b.error,
                message: b.message,
            })
        }
        (op, t) => Err(format!("unexpected header op {op} t {t:?}")),
    }
}

fn labels(body: &[u8]) -> Frame {
    match whole::<LabelsBody>(body) {
        Ok(b) => Frame::Labels {
            seq: b.seq,
            labels: b.labels.into_iter().map(signed).collect(),
        },
        Err(reason) => match lenient::<SeqOnly>(body) {
            Ok(s) => Frame::Unreadable {
                seq: s.seq,
                reason: format!("unreadable #labels body: {reason}"),
            },
            Err(_) => Frame::Unknown {
                t: format!("#labels without a readable seq ({reason})"),
            },
        },
    }
}

/// Decodes `body` as one DAG-CBOR object that uses all of it.
fn whole<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let mut r = Cursor::new(body);
    let v = serde_ipld_dagcbor::de::from_reader_once(&mut r).map_err(|e| e.to_string())?;
    if r.position() as usize != body.len() {
        return Err("trailing bytes after the body".to_owned());
    }
    Ok(v)
}

/// Decodes the first DAG-CBOR object of `body`, whatever follows it.
fn lenient<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_ipld_dagcbor::de::from_reader_once(&mut Cursor::new(body)).map_err(|e| e.to_string())
}

fn signed(w: WireLabel) -> Result<SignedLabel, String> {
    if w.ver != Some(LABEL_VERSION) {
        return Err(format!("ver is {:?}, not {LABEL_VERSION}", w.ver));
    }
    if w.neg == Some(false) {
        return Err("neg: false is sent, which a signed label omits".to_owned());
    }
    let sig: [u8; 64] = w
        .sig
        .as_slice()
        .try_into()
        .map_err(|_| format!("sig is {} bytes, not 64", w.sig.len()))?;
    Ok(SignedLabel {
        label: Label {
            src: w.src,
            uri: w.uri,
            cid: w.cid,
            val: w.val,
            neg: w.neg == Some(true),
            cts: w.cts,
            exp: w.exp,
        },
        sig,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;
    use crate::keys::SigningKey;

    fn label(neg: bool) -> SignedLabel {
        Label {
            src: "did:plc:ewvi7nxzyoun6zhxrhs64oiz".to_owned(),
            uri: "did:plc:subject".to_owned(),
            cid: Some("bafyreib".to_owned()),
            val: "verified-mail-operator".to_owned(),
            neg,
            cts: "2026-11-23T10:00:00.000Z".to_owned(),
            exp: Some("2026-12-23T10:00:00.000Z".to_owned()),
        }
        .sign(&SigningKey::generate().unwrap())
    }

    #[test]
    fn the_labelers_own_frames_decode_to_the_labels_they_carry() {
        for l in [label(false), label(true)] {
            let mut bytes = Vec::new();
            frame::write_label_frame(&mut bytes, 42, &l.label.as_ref(), &l.sig);
            match decode(&bytes).unwrap() {
                Frame::Labels { seq, labels } => {
                    assert_eq!(seq, 42);
                    assert_eq!(labels.len(), 1);
                    assert_eq!(labels[0].as_ref().unwrap(), &l);
                }
                other => panic!("{other:?}"),
            }
        }
        let two = frame::labels_frame(7, &[label(false), label(true)]);
        assert!(
            matches!(decode(&two).unwrap(), Frame::Labels { seq: 7, labels } if labels.len() == 2)
        );
    }

    #[test]
    fn info_and_error_frames_are_told_apart() {
        let info = frame::info_frame(frame::OUTDATED_CURSOR, Some("old"));
        assert!(
            matches!(decode(&info).unwrap(), Frame::Info { name, .. } if name == "OutdatedCursor")
        );
        let err = frame::error_frame(frame::FUTURE_CURSOR, Some("Cursor in the future."));
        assert!(
            matches!(decode(&err).unwrap(), Frame::Error { error, message } if error == "FutureCursor" && message.is_some())
        );
        let err = frame::error_frame(frame::CONSUMER_TOO_SLOW, None);
        assert!(matches!(
            decode(&err).unwrap(),
            Frame::Error { message: None, .. }
        ));
    }

    #[test]
    fn a_label_the_mirror_could_not_serve_byte_for_byte_is_malformed() {
        #[derive(serde::Serialize)]
        struct Odd {
            ver: i64,
            src: &'static str,
            uri: &'static str,
            val: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            neg: Option<bool>,
            cts: &'static str,
            sig: serde_bytes::ByteBuf,
        }
        #[derive(serde::Serialize)]
        struct Body {
            seq: i64,
            labels: Vec<Odd>,
        }
        let odd = |ver, neg, sig_len| Odd {
            ver,
            src: "did:plc:x",
            uri: "did:plc:y",
            val: "v",
            neg,
            cts: "2026-11-23T10:00:00.000Z",
            sig: serde_bytes::ByteBuf::from(vec![1; sig_len]),
        };
        for (l, why) in [
            (odd(2, None, 64), "ver"),
            (odd(1, Some(false), 64), "neg: false"),
            (odd(1, None, 63), "63 bytes"),
        ] {
            #[derive(serde::Serialize)]
            struct Header {
                op: i64,
                t: &'static str,
            }
            let mut bytes = serde_ipld_dagcbor::to_vec(&Header {
                op: 1,
                t: "#labels",
            })
            .unwrap();
            bytes.extend(
                serde_ipld_dagcbor::to_vec(&Body {
                    seq: 9,
                    labels: vec![l],
                })
                .unwrap(),
            );
            match decode(&bytes).unwrap() {
                Frame::Labels { seq: 9, labels } => {
                    let e = labels[0].as_ref().unwrap_err();
                    assert!(e.contains(why), "{e}");
                }
                other => panic!("{other:?}"),
            }
        }
        let empty = frame::labels_frame(1, &[]);
        assert!(
            matches!(decode(&empty).unwrap(), Frame::Labels { labels, .. } if labels.is_empty())
        );
    }

    #[test]
    fn garbage_is_an_error_and_trailing_bytes_are_refused() {
        assert!(decode(b"\xff\x00").is_err());
        let l = label(false);
        let mut bytes = Vec::new();
        frame::write_label_frame(&mut bytes, 3, &l.label.as_ref(), &l.sig);
        bytes.push(0);
        assert!(matches!(
            decode(&bytes).unwrap(),
            Frame::Unreadable { seq: 3, .. }
        ));
    }
}
