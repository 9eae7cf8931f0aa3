//! Any queryLabels query string: the parameter parser never panics, and every valid query
//! returns exactly what a brute-force filter of the labels returns, in seq order.
#![no_main]
use std::sync::OnceLock;

use atmos_labeler::keys::SigningKey;
use atmos_labeler::label::Label;
use atmos_labeler::store::Store;
use libfuzzer_sys::fuzz_target;

/// A small database with awkward subjects: `_` and `%` (LIKE wildcards), letter case, a
/// non-ASCII DID, record URIs, two sources, and replaced (negated) labels.
fn store() -> &'static Store {
    static STORE: OnceLock<(tempfile::TempDir, Store)> = OnceLock::new();
    &STORE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("fuzz.db")).unwrap();
            let keys = [
                SigningKey::from_hex(&"1".repeat(64)).unwrap(),
                SigningKey::from_hex(&"2".repeat(64)).unwrap(),
            ];
            let uris = [
                "did:plc:abc", "did:plc:abcd", "did:plc:ABC", "did:plc:a_c", "did:plc:a%c",
                "did:plc:abc_", "did:web:abc", "did:web:xn--mller-kva.example", "did:plc:é",
                "at://did:plc:abc/email.atmos.attestation/1", "at://did:plc:abc/app.bsky.x/2",
                "did:plc:z", "did:plc:zz", "did:plc:", "did:", "d",
            ];
            let mut labels = Vec::new();
            for round in 0..3 {
                for (i, uri) in uris.iter().enumerate() {
                    let key = &keys[(i + round) % 2];
                    labels.push(
                        Label {
                            src: key.did_key().to_owned(),
                            uri: (*uri).to_owned(),
                            cid: None,
                            val: ["spam", "verified-mail-operator", "relay-member"][round].to_owned(),
                            neg: round == 2 && i % 3 == 0,
                            cts: "2026-11-23T00:00:00.000Z".to_owned(),
                            exp: None,
                        }
                        .sign(key),
                    );
                }
            }
            store.write_labels(&labels).unwrap();
            (dir, store)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = std::str::from_utf8(data) {
        atmos_labeler::server::fuzzing::query_labels(store(), raw);
    }
});
