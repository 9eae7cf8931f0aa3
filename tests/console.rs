//! The operator's console over HTTP: the page and its assets, `requestVerification` and
//! `labeler recheck` (through the manager, rate-limited, unknown DIDs refused),
//! `checkDomain` (every check, nothing stored, budgets), `getVerification` by handle and by
//! domain, and the fixes carried by failing checks. The page itself is driven in a real
//! browser in `browser.rs`.

use std::time::Duration;

use assert_cmd::cargo::CommandCargoExt;
use serde_json::{Value, json};

use crate::common::console::{
    ALICE, ALICE_DOMAIN, ALICE_HANDLE, BOB, BOB_DOMAIN, RKEY, alice, alice_and_bob, bob, dump,
    fix_bob,
};
use crate::common::daemon::{TestLabeler, World};
use crate::common::dns::Fault;
use crate::common::net::http_from;
use crate::common::server::WAIT;

/// The error names a lexicon declares for its method.
fn lexicon_errors(nsid: &str) -> Vec<String> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("lexicons")
        .join(format!("{}.json", nsid.replace('.', "/")));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["defs"]["main"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts an XRPC error: status, name (declared by the method's lexicon), a message.
async fn assert_error(resp: reqwest::Response, status: u16, name: &str, nsid: &str) -> Value {
    assert_eq!(resp.status(), status, "{name}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], name, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        lexicon_errors(nsid).iter().any(|e| e == name),
        "{nsid}'s lexicon declares {name}"
    );
    body
}

fn url(labeler: &TestLabeler, path: &str) -> String {
    format!("http://{}{path}", labeler.addr)
}

async fn request_verification(
    client: &reqwest::Client,
    labeler: &TestLabeler,
    did: &str,
) -> reqwest::Response {
    client
        .post(url(labeler, "/xrpc/email.atmos.requestVerification"))
        .json(&json!({ "did": did }))
        .send()
        .await
        .unwrap()
}

fn retry_after(resp: &reqwest::Response) -> u64 {
    resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_from_the_binary_under_a_strict_policy() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/console.css", "text/css"),
        ("/console.js", "text/javascript"),
    ] {
        let resp = reqwest::get(url(&labeler, path)).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
            "{csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
    }
    let page = reqwest::get(url(&labeler, "/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(r#"<label for="q">"#),
        "the search box is labelled"
    );

    let me = labeler.get("/xrpc/email.atmos.describeLabeler").await;
    assert_eq!(me["did"], labeler.did.as_str());
    assert!(me["signingKey"].as_str().unwrap().starts_with("did:key:z"));
    let values: Vec<&str> = me["labelValues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["identifier"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["verified-mail-operator", "relay-member"]);
    assert!(
        me["labelValues"][0]["description"]
            .as_str()
            .unwrap()
            .contains("DMARC")
    );
    labeler.stop().await;
}

#[tokio::test]
async fn a_failing_check_carries_the_exact_record_that_fixes_it() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    let (alice_view, bob_view) = alice_and_bob(&world, &labeler).await;
    let dmarc = bob_view["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "dmarc")
        .unwrap();
    assert_eq!(dmarc["outcome"], "fail");
    assert_eq!(
        dmarc["fix"],
        json!({
            "name": format!("_dmarc.{BOB_DOMAIN}"),
            "type": "TXT",
            "value": "v=DMARC1; p=quarantine",
            "note": dmarc["fix"]["note"],
        })
    );
    assert!(dmarc["fix"]["note"].as_str().unwrap().contains("p=reject"));
    for c in bob_view["checks"].as_array().unwrap() {
        assert_eq!(
            c.get("fix").is_some(),
            c["outcome"] == "fail",
            "only failures carry a fix: {c}"
        );
    }
    assert!(
        alice_view["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c.get("fix").is_none())
    );
    assert_eq!(bob_view["history"][0]["verdict"], "fail");
    assert_eq!(bob_view["history"][0]["summary"], "dmarc");
    labeler.stop().await;
}

/// A labeler whose scheduler sleeps an hour between sweeps unless something wakes it.
async fn sleepy(world: &World, dir: &std::path::Path) -> TestLabeler {
    TestLabeler::start_tuned(
        world,
        dir,
        "24h",
        |_| {},
        |t| {
            t.scheduler.max_sleep = Duration::from_secs(3600);
        },
    )
    .await
}

#[tokio::test]
async fn request_verification_rechecks_now_through_the_manager_once_per_did_per_minute() {
    let world = World::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let labeler = sleepy(&world, tmp.path()).await;
    alice_and_bob(&world, &labeler).await;
    // Bob fixes his DMARC record; without a request the next check is an hour away.
    fix_bob(&world);
    let client = reqwest::Client::new();
    let resp = request_verification(&client, &labeler, BOB).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({ "queued": true, "did": BOB, "attestations": 1 })
    );
    let view = labeler.await_verdict(BOB, RKEY, &["pass"]).await;
    assert_eq!(
        view["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["verdict"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["pass", "fail"],
        "newest first"
    );
    let labels = labeler.labels_on(BOB).await;
    assert!(
        labels.contains(&("verified-mail-operator".to_owned(), false)),
        "{labels:?}"
    );

    // Asked again within the minute: refused, and told when to come back.
    let again = request_verification(&client, &labeler, BOB).await;
    let wait = retry_after(&again);
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    let body = assert_error(
        again,
        429,
        "RateLimitExceeded",
        "email.atmos.requestVerification",
    )
    .await;
    assert!(body["message"].as_str().unwrap().contains(BOB), "{body}");
    // Another DID has its own minute.
    assert_eq!(
        request_verification(&client, &labeler, ALICE)
            .await
            .status(),
        200
    );
    labeler.stop().await;
}

#[tokio::test]
async fn request_verification_refuses_unknown_dids_and_malformed_requests_with_reasons() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    let client = reqwest::Client::new();
    let nsid = "email.atmos.requestVerification";
    let resp = request_verification(&client, &labeler, "did:plc:neverseenneverseen23456").await;
    let body = assert_error(resp, 400, "UnknownDid", nsid).await;
    assert!(
        body["message"].as_str().unwrap().contains("no attestation"),
        "{body}"
    );
    let endpoint = url(&labeler, "/xrpc/email.atmos.requestVerification");
    let not_a_did = client
        .post(&endpoint)
        .json(&json!({ "did": "alice" }))
        .send()
        .await
        .unwrap();
    assert_error(not_a_did, 400, "InvalidRequest", nsid).await;
    let not_json = client
        .post(&endpoint)
        .header("content-type", "application/json")
        .body("{did")
        .send()
        .await
        .unwrap();
    assert_error(not_json, 400, "InvalidRequest", nsid).await;
    let get = client.get(&endpoint).send().await.unwrap();
    let body = assert_error(get, 400, "InvalidRequest", nsid).await;
    assert!(body["message"].as_str().unwrap().contains("expected POST"));
    labeler.stop().await;
}

#[tokio::test]
async fn each_client_address_has_a_budget_for_requests_and_for_preflights() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    let budget = atmos_labeler::server::ConsoleLimits::default();
    let greedy = http_from("127.0.0.2");
    let other = http_from("127.0.0.3");
    let unknown = "did:plc:neverseenneverseen23456";
    // Every request counts, answered or not.
    for _ in 0..budget.recheck_per_client.burst {
        let resp = request_verification(&greedy, &labeler, unknown).await;
        assert_eq!(resp.status(), 400);
    }
    let refused = request_verification(&greedy, &labeler, unknown).await;
    assert!(retry_after(&refused) >= 1);
    assert_error(
        refused,
        429,
        "RateLimitExceeded",
        "email.atmos.requestVerification",
    )
    .await;
    assert_eq!(
        request_verification(&other, &labeler, unknown)
            .await
            .status(),
        400,
        "another address is not limited"
    );

    let bad_preflight = url(&labeler, "/xrpc/email.atmos.checkDomain?domain=x");
    for _ in 0..budget.preflight_per_client.burst {
        assert_eq!(
            greedy.get(&bad_preflight).send().await.unwrap().status(),
            400
        );
    }
    let refused = greedy.get(&bad_preflight).send().await.unwrap();
    assert!(retry_after(&refused) >= 1);
    assert_error(refused, 429, "RateLimitExceeded", "email.atmos.checkDomain").await;
    assert_eq!(
        other.get(&bad_preflight).send().await.unwrap().status(),
        400
    );
    labeler.stop().await;
}

#[tokio::test]
async fn a_preflight_runs_every_check_with_fixes_and_stores_nothing() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    alice_and_bob(&world, &labeler).await;
    // Carol has published DNS for selector s1 only, and no attestation at all.
    let carol = "did:plc:carolisnewheretoo2345672";
    let domain = "mail.carol.example";
    world.dns.publish_good_operator(domain, carol, &["s1"]);
    world.account(carol);

    let db = labeler.config.db_path();
    let before = dump(&db);
    let query = format!(
        "/xrpc/email.atmos.checkDomain?domain={}&did={carol}&selector=s1&selector=s2",
        domain.to_uppercase()
    );
    let report = labeler.get(&query).await;
    assert_eq!(report["did"], carol);
    assert_eq!(report["domain"], domain, "normalised");
    assert_eq!(report["verdict"], "fail");
    let checks = report["checks"].as_array().unwrap();
    let names: Vec<String> = checks
        .iter()
        .map(|c| {
            format!(
                "{}{}={}",
                c["name"].as_str().unwrap(),
                c["subject"]
                    .as_str()
                    .map(|s| format!("({s})"))
                    .unwrap_or_default(),
                c["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "domain-control=pass",
            "mx=pass",
            "spf=pass",
            "dkim(s1)=pass",
            "dkim(s2)=fail",
            "dmarc=pass"
        ]
    );
    assert_eq!(checks[4]["fix"]["name"], format!("s2._domainkey.{domain}"));
    assert_eq!(checks[4]["fix"]["type"], "TXT");
    assert!(
        checks[4]["fix"]["value"]
            .as_str()
            .unwrap()
            .starts_with("v=DKIM1;")
    );
    assert_eq!(
        report["record"]["$type"], "email.atmos.attestation",
        "the record to publish"
    );
    assert_eq!(report["record"]["domain"], domain);
    assert_eq!(report["record"]["dkimSelectors"], json!(["s1", "s2"]));
    assert!(
        world.dns.query_count(&format!("s2._domainkey.{domain}")) > 0,
        "the labeler asked DNS"
    );
    // Nothing stored: every table, row for row.
    assert_eq!(dump(&db), before);
    let view = labeler.verification(carol).await;
    assert_eq!(view["attestations"], json!([]));
    labeler.stop().await;
}

#[tokio::test]
async fn preflights_beyond_the_cap_on_concurrent_ones_are_refused_at_once() {
    let world = World::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let labeler = TestLabeler::start_tuned(
        &world,
        tmp.path(),
        "24h",
        |_| {},
        |t| {
            t.server.console.max_preflights = 1;
        },
    )
    .await;
    let slow = "mail.slow.example";
    world.dns.publish_good_operator(slow, ALICE, &["default"]);
    world.dns.fault(&format!("_dmarc.{slow}"), Fault::Timeout);
    let first_url = url(
        &labeler,
        &format!("/xrpc/email.atmos.checkDomain?domain={slow}&did={ALICE}&selector=default"),
    );
    let first =
        tokio::spawn(async move { http_from("127.0.0.2").get(first_url).send().await.unwrap() });
    // The first preflight is running once the DNS server sees its (unanswered) question.
    assert!(
        crate::common::eventually(WAIT, || async {
            world.dns.query_count(&format!("_dmarc.{slow}")) > 0
        })
        .await
    );
    let second = http_from("127.0.0.3")
        .get(url(
            &labeler,
            &format!(
                "/xrpc/email.atmos.checkDomain?domain={ALICE_DOMAIN}&did={ALICE}&selector=default"
            ),
        ))
        .send()
        .await
        .unwrap();
    assert!(retry_after(&second) >= 1);
    assert_error(second, 503, "TooManyPreflights", "email.atmos.checkDomain").await;
    let first = tokio::time::timeout(WAIT, first).await.unwrap().unwrap();
    assert_eq!(first.status(), 200);
    let report: Value = first.json().await.unwrap();
    assert_eq!(report["verdict"], "could-not-decide", "{report}");
    labeler.stop().await;
}

#[tokio::test]
async fn get_verification_finds_operators_by_handle_and_by_mail_domain() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    alice_and_bob(&world, &labeler).await;
    // Mallory claims Alice's domain; domain control fails, so she is listed after Alice.
    let mallory = "did:plc:mallorywantsthatdomain2";
    world.account(mallory);
    world.publish(mallory, RKEY, &World::record(ALICE_DOMAIN, &["default"]));
    labeler.await_verdict(mallory, RKEY, &["fail"]).await;

    let by_handle = labeler
        .get(&format!(
            "/xrpc/email.atmos.getVerification?handle={}",
            ALICE_HANDLE.to_uppercase()
        ))
        .await;
    assert_eq!(by_handle["did"], ALICE);
    assert_eq!(by_handle["handle"], ALICE_HANDLE);
    assert_eq!(by_handle["verified"], true);
    assert_eq!(by_handle["labels"][0]["val"], "verified-mail-operator");

    let by_domain = labeler
        .get(&format!(
            "/xrpc/email.atmos.getVerification?domain={ALICE_DOMAIN}"
        ))
        .await;
    assert_eq!(by_domain["domain"], ALICE_DOMAIN);
    let ops = by_domain["operators"].as_array().unwrap();
    assert_eq!(
        ops.iter()
            .map(|o| o["did"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [ALICE, mallory],
        "standing first"
    );
    assert_eq!(ops[0]["verified"], true);
    assert_eq!(ops[0]["labels"][0]["val"], "verified-mail-operator");
    assert_eq!(ops[0]["attestations"][0]["domain"], ALICE_DOMAIN);
    assert_eq!(ops[0]["attestations"][0]["history"][0]["verdict"], "pass");
    assert_eq!(ops[1]["verified"], false);
    assert_eq!(ops[1]["labels"], json!([]));

    let nobody = labeler
        .get("/xrpc/email.atmos.getVerification?domain=nobody.example")
        .await;
    assert_eq!(nobody["operators"], json!([]));

    let nsid = "email.atmos.getVerification";
    let get = |q: &str| reqwest::get(url(&labeler, &format!("/xrpc/{nsid}?{q}")));
    let unknown = get("handle=nobody.example").await.unwrap();
    let body = assert_error(unknown, 400, "HandleNotFound", nsid).await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("_atproto.nobody.example")
    );
    world
        .dns
        .fault(&format!("_atproto.{ALICE_HANDLE}"), Fault::ServFail);
    let broken = get(&format!("handle={ALICE_HANDLE}")).await.unwrap();
    assert_error(broken, 502, "UpstreamFailure", nsid).await;
    for bad in [
        format!("did={ALICE}&domain={ALICE_DOMAIN}"),
        String::new(),
        "domain=not_a_domain".to_owned(),
    ] {
        assert_error(get(&bad).await.unwrap(), 400, "InvalidRequest", nsid).await;
    }
    let _ = BOB;
    labeler.stop().await;
}

#[tokio::test]
async fn labeler_recheck_on_the_command_line_reaches_the_running_daemon() {
    let world = World::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let labeler = sleepy(&world, tmp.path()).await;
    alice(&world);
    bob(&world);
    labeler.await_verdict(BOB, RKEY, &["fail"]).await;
    fix_bob(&world);
    let config = labeler.dir.join("cli.json");
    std::fs::write(
        &config,
        json!({
            "stateDir": labeler.config.state_dir,
            "signingKeyPath": labeler.config.signing_key_path,
        })
        .to_string(),
    )
    .unwrap();
    let run = |did: &str| {
        let mut cmd = std::process::Command::cargo_bin("labeler").unwrap();
        cmd.arg("--config").arg(&config).args(["recheck", did]);
        cmd.env_remove("LABELER_CONFIG");
        async move {
            tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap()
        }
    };
    let out = tokio::time::timeout(Duration::from_secs(60), run(BOB))
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("1 attestation"), "{err}");
    // Another process wrote it: the daemon notices the commit and re-checks Bob now.
    labeler.await_verdict(BOB, RKEY, &["pass"]).await;

    let out = run("did:plc:neverseenneverseen23456").await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no attestation"));
    labeler.stop().await;
}

#[tokio::test]
async fn a_search_finds_by_did_handle_or_domain_and_says_why_when_nothing_matches() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    alice_and_bob(&world, &labeler).await;
    let q = |q: &str| {
        let path = format!("/xrpc/email.atmos.getVerification?q={q}");
        let labeler = &labeler;
        async move { labeler.get(&path).await }
    };
    let found = |v: &Value| -> Vec<(String, Value)> {
        v["operators"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| (o["did"].as_str().unwrap().to_owned(), o["foundBy"].clone()))
            .collect()
    };

    let v = q(&format!("%40{ALICE_HANDLE}")).await;
    assert_eq!(found(&v), [(ALICE.to_owned(), json!(["handle"]))]);
    assert_eq!(v["operators"][0]["handle"], ALICE_HANDLE);
    // Alice's mail domain also has an _atproto record naming her: found both ways, once.
    let v = q(ALICE_DOMAIN).await;
    assert_eq!(found(&v), [(ALICE.to_owned(), json!(["handle", "domain"]))]);
    let v = q(BOB).await;
    assert_eq!(found(&v), [(BOB.to_owned(), json!(["did"]))]);
    assert_eq!(v["operators"][0]["attestations"][0]["verdict"], "fail");

    let v = q("nobody.example").await;
    assert_eq!(v["operators"], json!([]));
    let notes = v["notes"].to_string();
    assert!(
        notes.contains("_atproto.nobody.example") && notes.contains("no attestation names"),
        "{notes}"
    );
    let v = q("not%20a%20name").await;
    assert!(
        v["notes"][0]
            .as_str()
            .unwrap()
            .contains("is not a DID, a handle or a mail domain")
    );
    labeler.stop().await;
}
