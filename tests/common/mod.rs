//! Shared test harness.

#![allow(dead_code)]

use std::path::PathBuf;

/// Path of a file under `tests/data/`.
pub fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Hex → bytes, for vectors.
pub fn unhex(s: &str) -> Vec<u8> {
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(s.as_bytes())
        .expect("valid hex in test vector")
}

/// The shared label-signing vectors (`tests/data/labels.json`, a copy of
/// `shared/vectors/labels.json` produced with `@atproto/crypto` and `@ipld/dag-cbor`).
pub fn label_vectors() -> serde_json::Value {
    let text = std::fs::read_to_string(data_path("labels.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A vector case's `unsignedLabel` as a [`Label`](atmos_labeler::label::Label).
pub fn vector_label(v: &serde_json::Value) -> atmos_labeler::label::Label {
    let s = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    assert_eq!(v["ver"], 1);
    atmos_labeler::label::Label {
        src: s("src").unwrap(),
        uri: s("uri").unwrap(),
        cid: s("cid"),
        val: s("val").unwrap(),
        neg: v
            .get("neg")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
        cts: s("cts").unwrap(),
        exp: s("exp"),
    }
}

pub mod jetstream;

/// Waits for `cond` to hold, polling `poll` between checks, for at most `limit`.
/// For state that has no notification of its own (e.g. rows in another process's database).
pub async fn eventually<F, Fut>(limit: std::time::Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
pub mod browser;
pub mod console;
pub mod daemon;
pub mod dns;
pub mod metrics;
pub mod mirror;
pub mod net;
pub mod plc;
pub mod process;
pub mod server;
