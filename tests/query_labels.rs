//! `com.atproto.label.queryLabels` over a real socket: docs/protocol.md §2, §4 and §6.

use std::collections::BTreeSet;

use atmos_labeler::label::Label;
use serde_json::{Value, json};

use crate::common::server::{TestServer, key, label, options, seed, signed_from_json, verify};
use crate::common::{label_vectors, vector_label};

const PATH: &str = "/xrpc/com.atproto.label.queryLabels";

/// Query → (uris in order, cursor).
async fn uris(s: &TestServer, query: &str) -> (Vec<String>, Option<String>) {
    let (status, body) = s.get_json(&format!("{PATH}?{query}")).await;
    assert_eq!(status, 200, "{query}: {body}");
    check_shape(&body);
    let uris = body["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["uri"].as_str().unwrap().to_owned())
        .collect();
    (uris, body["cursor"].as_str().map(str::to_owned))
}

/// The output matches the lexicon (`{cursor?: string, labels: [label]}`), and every label
/// parses back and verifies.
fn check_shape(body: &Value) {
    let obj = body.as_object().unwrap();
    assert!(obj.keys().all(|k| k == "labels" || k == "cursor"), "{body}");
    if let Some(c) = obj.get("cursor") {
        assert!(c.is_string(), "{body}");
    }
    for l in body["labels"].as_array().unwrap() {
        assert_eq!(l["ver"], 1);
        assert_ne!(
            l.get("neg"),
            Some(&json!(false)),
            "neg:false must be omitted"
        );
        let sig_b64 = l["sig"]["$bytes"].as_str().unwrap();
        assert!(!sig_b64.ends_with('='), "unpadded base64");
        let signed = signed_from_json(l);
        verify(&signed);
    }
}

#[tokio::test]
async fn labels_are_the_vector_json() {
    let v = label_vectors();
    let case = &v["cases"][0];
    let s = TestServer::start_with(options(), |store| {
        let signed = vector_label(&case["unsignedLabel"]).sign(&key());
        store.write_labels(&[signed]).unwrap();
    })
    .await;
    let uri = case["unsignedLabel"]["uri"].as_str().unwrap();
    let (status, body) = s.get_json(&format!("{PATH}?uriPatterns={uri}")).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "labels": [case["queryLabelsJson"]] }));
    s.stop().await;
}

#[tokio::test]
async fn patterns_match_exactly_or_by_prefix() {
    let subjects = [
        "did:plc:abc",
        "did:plc:abcdef",
        "did:plc:ABC",
        "did:plc:ab_c",
        "did:plc:abxc",
        "did:web:abc",
        "at://did:plc:abc/email.atmos.attestation/1",
        "at://did:plc:abc/email.atmos.attestation/2",
    ];
    let s = TestServer::start_with(options(), |store| {
        for u in subjects {
            store.write_labels(&[label(u, "spam", false)]).unwrap();
        }
    })
    .await;
    let q = |query: &'static str| uris(&s, query);

    assert_eq!(q("uriPatterns=did:plc:abc").await.0, ["did:plc:abc"]);
    // `_` is not a wildcard and case is exact (no LIKE anywhere).
    assert_eq!(q("uriPatterns=did:plc:ab_c").await.0, ["did:plc:ab_c"]);
    assert_eq!(q("uriPatterns=did:plc:ab_*").await.0, ["did:plc:ab_c"]);
    assert_eq!(q("uriPatterns=did:plc:aBc").await.0, Vec::<String>::new());
    assert_eq!(q("uriPatterns=did:plc:ABC*").await.0, ["did:plc:ABC"]);
    // A prefix includes the string before `*` itself.
    assert_eq!(
        q("uriPatterns=did:plc:abc*").await.0,
        ["did:plc:abc", "did:plc:abcdef"]
    );
    assert_eq!(
        q("uriPatterns=at://did:plc:abc/*").await.0,
        [
            "at://did:plc:abc/email.atmos.attestation/1",
            "at://did:plc:abc/email.atmos.attestation/2"
        ]
    );
    // Percent-encoded patterns decode first.
    assert_eq!(q("uriPatterns=did%3Aweb%3Aabc").await.0, ["did:web:abc"]);
    // `*` alone is everything, in seq order.
    assert_eq!(q("uriPatterns=*").await.0, subjects);
    // Repeated patterns are OR-ed; results stay in seq order, each label once.
    assert_eq!(
        q("uriPatterns=did:web:abc&uriPatterns=did:plc:ab*&uriPatterns=did:plc:abc")
            .await
            .0,
        [
            "did:plc:abc",
            "did:plc:abcdef",
            "did:plc:ab_c",
            "did:plc:abxc",
            "did:web:abc"
        ]
    );

    for bad in ["*did:plc:abc", "did:plc:*abc", "did:*:abc*", "**"] {
        let msg = s
            .expect_error(&format!("{PATH}?uriPatterns={bad}"), 400, "InvalidRequest")
            .await;
        assert!(msg.contains(bad), "{msg}");
    }
    s.expect_error(PATH, 400, "InvalidRequest").await;
    s.stop().await;
}

#[tokio::test]
async fn sources_filter_on_the_labeler() {
    let other = atmos_labeler::keys::SigningKey::from_hex(
        label_vectors()["keys"][1]["privateKeyHex"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let s = TestServer::start_with(options(), |store| {
        store
            .write_labels(&[label("did:plc:a", "spam", false)])
            .unwrap();
        let foreign = Label {
            src: other.did_key().to_owned(),
            uri: "did:plc:a".into(),
            cid: None,
            val: "spam".into(),
            neg: false,
            cts: atmos_labeler::label::now_cts(),
            exp: None,
        }
        .sign(&other);
        store.write_labels(&[foreign]).unwrap();
    })
    .await;
    let srcs = |body: Value| -> Vec<String> {
        body["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["src"].as_str().unwrap().to_owned())
            .collect()
    };
    let ours = key().did_key().to_owned();
    let theirs = other.did_key().to_owned();
    let (_, all) = s.get_json(&format!("{PATH}?uriPatterns=did:plc:a")).await;
    assert_eq!(srcs(all), [ours.clone(), theirs.clone()]);
    let (_, mine) = s
        .get_json(&format!("{PATH}?uriPatterns=did:plc:a&sources={ours}"))
        .await;
    assert_eq!(srcs(mine), std::slice::from_ref(&ours));
    let (_, both) = s
        .get_json(&format!(
            "{PATH}?uriPatterns=*&sources={theirs}&sources={ours}"
        ))
        .await;
    assert_eq!(srcs(both).len(), 2);
    let (_, none) = s
        .get_json(&format!("{PATH}?uriPatterns=*&sources=did:plc:nobody"))
        .await;
    assert_eq!(none, json!({ "labels": [] }));
    s.expect_error(
        &format!("{PATH}?uriPatterns=*&sources=not-a-did"),
        400,
        "InvalidRequest",
    )
    .await;
    s.stop().await;
}

#[tokio::test]
async fn limit_defaults_to_50_and_is_bounded() {
    let s = TestServer::start_with(options(), |store| {
        seed(store, 300);
    })
    .await;
    assert_eq!(uris(&s, "uriPatterns=*").await.0.len(), 50);
    assert_eq!(uris(&s, "uriPatterns=*&limit=1").await.0.len(), 1);
    assert_eq!(uris(&s, "uriPatterns=*&limit=250").await.0.len(), 250);
    for bad in ["0", "251", "-5", "ten", "1.5", ""] {
        let msg = s
            .expect_error(
                &format!("{PATH}?uriPatterns=*&limit={bad}"),
                400,
                "InvalidRequest",
            )
            .await;
        assert!(msg.contains("limit"), "{msg}");
    }
    for bad in ["abc", "-1", "1.5", ""] {
        s.expect_error(
            &format!("{PATH}?uriPatterns=*&cursor={bad}"),
            400,
            "InvalidRequest",
        )
        .await;
    }
    s.stop().await;
}

#[tokio::test]
async fn paging_through_1000_labels_has_no_gap_or_duplicate() {
    let s = TestServer::start_with(options(), |store| {
        seed(store, 1000);
    })
    .await;
    for (query, limit) in [
        ("uriPatterns=*", 7),
        ("uriPatterns=did:plc:seed*", 250),
        (
            "uriPatterns=did:plc:seed*&uriPatterns=did:plc:seed000999",
            100,
        ),
    ] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut q = format!("{query}&limit={limit}");
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let (page, next) = uris(&s, &q).await;
            pages += 1;
            assert!(page.len() <= limit);
            if page.len() < limit {
                assert_eq!(next, None, "no cursor after a short page ({query})");
            } else {
                assert!(next.is_some(), "a full page has a cursor");
            }
            seen.extend(page);
            match next {
                // The cursor always moves forward: never a value that restarts the scan.
                Some(c) => {
                    if let Some(prev) = &cursor {
                        assert!(c.parse::<i64>().unwrap() > prev.parse::<i64>().unwrap());
                    }
                    cursor = Some(c);
                }
                None => break,
            }
            assert!(pages < 1000, "paging does not terminate");
        }
        let unique: BTreeSet<&String> = seen.iter().collect();
        assert_eq!(seen.len(), 1000, "{query}");
        assert_eq!(unique.len(), 1000, "{query}: duplicates");
        let expected: Vec<String> = (0..1000).map(|i| format!("did:plc:seed{i:06}")).collect();
        assert_eq!(seen, expected, "{query}: seq order, nothing missing");
    }
    // Exactly divisible: the last full page still has a cursor, the next page is empty and
    // has none.
    let (page, cursor) = uris(&s, "uriPatterns=*&limit=250&cursor=750").await;
    assert_eq!((page.len(), cursor.as_deref()), (250, Some("1000")));
    let (page, cursor) = uris(&s, "uriPatterns=*&limit=250&cursor=1000").await;
    assert_eq!((page.len(), cursor), (0, None));
    s.stop().await;
}

#[tokio::test]
async fn a_negation_replaces_the_original() {
    let s = TestServer::start_with(options(), |store| {
        store
            .write_labels(&[label("did:plc:neg", "spam", false)])
            .unwrap();
        store
            .write_labels(&[label("did:plc:other", "spam", false)])
            .unwrap();
        store
            .write_labels(&[label("did:plc:neg", "spam", true)])
            .unwrap();
    })
    .await;
    let (status, body) = s.get_json(&format!("{PATH}?uriPatterns=did:plc:neg")).await;
    assert_eq!(status, 200);
    check_shape(&body);
    let labels = body["labels"].as_array().unwrap();
    assert_eq!(labels.len(), 1, "{body}");
    assert_eq!(labels[0]["neg"], true);
    let (all, _) = uris(&s, "uriPatterns=*").await;
    assert_eq!(
        all,
        ["did:plc:other", "did:plc:neg"],
        "the negation has a new seq"
    );
    s.stop().await;
}
