//! The shared vectors are the referee: every byte of the DAG-CBOR, the signatures, the
//! did:keys, the JSON form and the stream frames must match what the official atproto
//! JavaScript libraries produce.

use atmos_labeler::frame;
use atmos_labeler::keys::{PublicKey, SigningKey};
use atmos_labeler::label::SignedLabel;
use serde_json::Value;

use crate::common::{label_vectors, unhex, vector_label};

fn keys() -> Vec<SigningKey> {
    label_vectors()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| SigningKey::from_hex(k["privateKeyHex"].as_str().unwrap()).unwrap())
        .collect()
}

#[test]
fn did_keys_match_the_vectors() {
    let v = label_vectors();
    for (key, expected) in keys().iter().zip(v["keys"].as_array().unwrap()) {
        assert_eq!(key.did_key(), expected["didKey"].as_str().unwrap());
        let public = PublicKey::parse(key.did_key()).unwrap();
        assert_eq!(public.did_key(), key.did_key());
    }
}

#[test]
fn signing_bytes_signatures_and_json_match_every_case() {
    let v = label_vectors();
    let keys = keys();
    for case in v["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let key = &keys[case["key"].as_u64().unwrap() as usize];
        let label = vector_label(&case["unsignedLabel"]);
        assert_eq!(
            label.signing_bytes(),
            unhex(case["unsignedDagCborHex"].as_str().unwrap()),
            "{name}: DAG-CBOR"
        );
        let signed = label.sign(key);
        assert_eq!(
            signed.sig.to_vec(),
            unhex(case["sigHex"].as_str().unwrap()),
            "{name}: signature"
        );
        signed
            .verify(&PublicKey::parse(key.did_key()).unwrap())
            .unwrap();
        // Same keys and values, nothing extra (no `neg: false`, no `cid: null`).
        let ours: Value = serde_json::from_str(&serde_json::to_string(&signed).unwrap()).unwrap();
        assert_eq!(ours, case["queryLabelsJson"], "{name}: JSON");
    }
}

#[test]
fn frames_match_byte_for_byte() {
    let v = label_vectors();
    let key = &keys()[0];
    let label = vector_label(&v["cases"][0]["unsignedLabel"]);
    let signed = label.sign(key);
    let expected = unhex(v["subscribeFrame"]["frameHex"].as_str().unwrap());
    assert_eq!(
        frame::labels_frame(1, std::slice::from_ref(&signed)),
        expected
    );
    let mut one = Vec::new();
    frame::write_label_frame(&mut one, 1, &signed.label.as_ref(), &signed.sig);
    assert_eq!(one, expected);

    assert_eq!(
        frame::error_frame(frame::FUTURE_CURSOR, Some("Cursor in the future.")),
        unhex(v["errorFrame"]["frameHex"].as_str().unwrap())
    );
    assert_eq!(
        frame::info_frame(
            frame::OUTDATED_CURSOR,
            Some("Requested cursor exceeded limit. Possibly missing events")
        ),
        unhex(v["infoFrame"]["frameHex"].as_str().unwrap())
    );
}

#[test]
fn high_s_and_tampered_signatures_are_rejected() {
    // secp256k1 group order n; a signature (r, s) and (r, n - s) are both mathematically
    // valid, and atproto requires verifiers to reject the high-S one.
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xfe, 0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36,
        0x41, 0x41,
    ];
    let v = label_vectors();
    let key = &keys()[0];
    let public = PublicKey::parse(key.did_key()).unwrap();
    let signed: SignedLabel = vector_label(&v["cases"][0]["unsignedLabel"]).sign(key);
    signed.verify(&public).unwrap();

    let mut high = signed.clone();
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(N[i]) - i16::from(signed.sig[32 + i]) - borrow;
        high.sig[32 + i] = d.rem_euclid(256) as u8;
        borrow = i16::from(d < 0);
    }
    assert_ne!(high.sig, signed.sig);
    assert!(high.verify(&public).is_err(), "high-S must be rejected");

    let mut tampered = signed.clone();
    tampered.label.cts = "2026-11-20T10:00:00.001Z".into();
    assert!(tampered.verify(&public).is_err());

    // Claiming the signature for the negation of the same label must fail too.
    let mut negated = signed;
    negated.label.neg = true;
    assert!(negated.verify(&public).is_err());
}
