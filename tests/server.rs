//! The XRPC server's operational surface over a real socket: health, the did:web document,
//! getVerification, metrics, and the XRPC error conventions (docs/protocol.md §3.2,
//! §7).

use atmos_labeler::server::Options;
use atmos_labeler::store::{Attestation, Changes};
use atmos_labeler::verify::Outcome;
use serde_json::{Value, json};

use atmos_labeler::telemetry::{HTTP_REQUESTS, QUERY_LATENCY};

use crate::common::metrics::{Scoped, scrape};
use crate::common::server::{TestServer, key, label, options};

#[tokio::test]
async fn health_reports_the_version() {
    let s = TestServer::start(options()).await;
    let (status, body) = s.get_json("/xrpc/_health").await;
    assert_eq!(status, 200);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["status"], "ok", "{body}");
    s.stop().await;
}

#[tokio::test]
async fn did_document_is_served_only_for_did_web_with_the_active_key_and_the_pds() {
    let s = TestServer::start_with(
        Options {
            labeler_did: Some("did:web:labeler.example.com".into()),
            labeler_pds: Some("https://pds.example.com".into()),
            ..options()
        },
        |store| store.adopt_key(key().did_key()).unwrap(),
    )
    .await;
    let (status, doc) = s.get_json("/.well-known/did.json").await;
    assert_eq!(status, 200);
    assert_eq!(
        doc,
        json!({
            "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
            "id": "did:web:labeler.example.com",
            "verificationMethod": [{
                "id": "did:web:labeler.example.com#atproto_label",
                "type": "Multikey",
                "controller": "did:web:labeler.example.com",
                "publicKeyMultibase": key().multikey(),
            }],
            "service": [{
                "id": "#atproto_labeler",
                "type": "AtprotoLabeler",
                "serviceEndpoint": "https://labeler.example.com",
            }, {
                "id": "#atproto_pds",
                "type": "AtprotoPersonalDataServer",
                "serviceEndpoint": "https://pds.example.com",
            }],
        })
    );
    assert!(key().multikey().starts_with("zQ3s"));

    // Another process rotates the key: the document serves the new one at once.
    let next = atmos_labeler::keys::SigningKey::generate().unwrap();
    atmos_labeler::store::Store::open(&s.db_path())
        .unwrap()
        .rewrite_labels(key().did_key(), next.did_key(), |_| Vec::new())
        .unwrap();
    let (_, doc) = s.get_json("/.well-known/did.json").await;
    assert_eq!(
        doc["verificationMethod"][0]["publicKeyMultibase"],
        next.multikey()
    );
    s.stop().await;

    // A did:key (or did:plc) labeler publishes its document elsewhere.
    let s = TestServer::start(options()).await;
    s.expect_error("/.well-known/did.json", 404, "NotFound")
        .await;
    s.stop().await;
}

#[tokio::test]
async fn errors_follow_the_xrpc_conventions() {
    let s = TestServer::start(options()).await;

    let (status, ctype, body) = s.get("/xrpc/com.example.nothing").await;
    assert_eq!((status, ctype.as_str()), (501, "application/json"));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": "MethodNotImplemented", "message": "Method Not Implemented"})
    );

    for path in [
        "/xrpc/com.atproto.label.queryLabels?uriPatterns=*",
        "/xrpc/com.atproto.label.subscribeLabels",
        "/xrpc/_health",
    ] {
        let (status, ctype, body) = s.request(reqwest::Method::POST, path).await;
        assert_eq!(
            (status, ctype.as_str()),
            (400, "application/json"),
            "{path}"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"error": "InvalidRequest", "message": "Incorrect HTTP method (POST) expected GET"}),
            "{path}"
        );
    }

    s.expect_error("/nowhere", 404, "NotFound").await;
    // A plain GET on the stream endpoint is told to upgrade, in XRPC form.
    s.expect_error(
        "/xrpc/com.atproto.label.subscribeLabels",
        426,
        "InvalidRequest",
    )
    .await;

    let big = reqwest::Client::new()
        .post(format!(
            "http://{}/xrpc/com.atproto.label.queryLabels",
            s.addr
        ))
        .body(vec![b'x'; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status().as_u16(), 413);
    s.stop().await;
}

#[tokio::test]
async fn metrics_count_each_request_by_route_and_status_in_prometheus_text() {
    // This test's own recorder: the servers of other tests, running in parallel in this
    // process, record elsewhere, so every delta below is this server's alone.
    let recorder = Scoped::install();
    let s = TestServer::start_metered(options(), recorder.handle.clone(), |_| {}).await;
    let before = scrape(&s.base()).await;
    for _ in 0..3 {
        let (status, _) = s
            .get_json("/xrpc/com.atproto.label.queryLabels?uriPatterns=did:plc:x")
            .await;
        assert_eq!(status, 200);
    }
    s.expect_error("/xrpc/com.atproto.label.queryLabels", 400, "InvalidRequest")
        .await;
    let after = scrape(&s.base()).await;

    let requests = |status| {
        before.delta(
            &after,
            HTTP_REQUESTS,
            &[
                ("route", "com.atproto.label.queryLabels"),
                ("status", status),
            ],
        )
    };
    assert_eq!((requests("200"), requests("400")), (3.0, 1.0));
    // Latency is recorded for answered queries only.
    assert_eq!(
        before.delta(&after, &format!("{QUERY_LATENCY}_count"), &[]),
        3.0
    );
    // The first scrape is itself a request.
    assert_eq!(
        before.delta(
            &after,
            HTTP_REQUESTS,
            &[("route", "metrics"), ("status", "200")]
        ),
        1.0
    );
    s.stop().await;
}

fn attestation(did: &str, rkey: &str, report: Option<&str>) -> Attestation {
    Attestation {
        did: did.into(),
        rkey: rkey.into(),
        domain: "mail.example.com".into(),
        selectors: vec!["s1".into(), "s2".into()],
        record_cid: Some("bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm".into()),
        rev: Some("3mvzi5tma3n2f".into()),
        created_at: None,
        first_seen_ms: 1_790_000_000_000,
        verdict: Outcome::Pass,
        standing: true,
        relay_member: true,
        report: report.map(str::to_owned),
        checked_ms: Some(1_790_000_000_123),
        last_definitive_ms: Some(1_790_000_000_123),
        consecutive_failures: 0,
        consecutive_undecided: 0,
        next_check_ms: 1_790_086_400_123,
    }
}

#[tokio::test]
async fn get_verification_reports_attestations_and_labels() {
    let did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
    let report = r#"{"did":"did:plc:ewvi7nxzyoun6zhxrhs64oiz","domain":"mail.example.com",
        "checkedAt":"2026-09-21T14:13:20.123Z","verdict":"pass",
        "checks":[{"name":"spf","subject":"mail.example.com","outcome":"pass","reason":"ok"},
                  {"name":"dmarc","outcome":"pass","reason":"p=reject"}]}"#;
    let s = TestServer::start_with(options(), |store| {
        store
            .update_did(did, key().did_key(), |_| {
                Ok::<_, ()>(Changes {
                    put: vec![
                        attestation(did, "3lbq4ssmzhk2a", Some(report)),
                        attestation(did, "3lbq4ssmzhk2b", Some("not json")),
                    ],
                    labels: vec![label(did, "verified-mail-operator", false)],
                    ..Changes::default()
                })
            })
            .unwrap()
            .unwrap();
    })
    .await;

    let (status, body) = s
        .get_json(&format!("/xrpc/email.atmos.getVerification?did={did}"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["did"], did);
    let a = &body["attestations"][0];
    assert_eq!(
        a,
        &json!({
            "uri": format!("at://{did}/email.atmos.attestation/3lbq4ssmzhk2a"),
            "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm",
            "domain": "mail.example.com",
            "dkimSelectors": ["s1", "s2"],
            "verdict": "pass",
            "verified": true,
            "relayMember": true,
            "checkedAt": "2026-09-21T14:13:20.123Z",
            "nextCheckAt": "2026-09-22T14:13:20.123Z",
            "checks": [
                {"name": "spf", "subject": "mail.example.com", "outcome": "pass", "reason": "ok"},
                {"name": "dmarc", "outcome": "pass", "reason": "p=reject"}
            ],
            "history": [{"verdict": "pass", "at": "2026-09-21T14:13:20.123Z"}],
        })
    );
    // An unreadable report degrades to no checks rather than failing the request.
    assert_eq!(body["attestations"][1]["checks"], json!([]));
    let labels = body["labels"].as_array().unwrap();
    assert_eq!(labels.len(), 1);
    assert_eq!(labels[0]["val"], "verified-mail-operator");
    assert!(labels[0]["sig"]["$bytes"].is_string());

    let (status, body) = s
        .get_json("/xrpc/email.atmos.getVerification?did=did:plc:unknown")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"did": "did:plc:unknown", "verified": false, "attestations": [], "labels": [], "refused": []})
    );
    s.expect_error("/xrpc/email.atmos.getVerification", 400, "InvalidRequest")
        .await;
    s.expect_error(
        "/xrpc/email.atmos.getVerification?did=example.com",
        400,
        "InvalidRequest",
    )
    .await;
    s.stop().await;
}
