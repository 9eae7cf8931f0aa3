//! The console page in a real headless Chromium over WebDriver (`common::browser`), against
//! the whole labeler in-process with its fakes: find a verified operator by handle, by DID and
//! by domain; see a failing check with its fix; fix the DNS, press "Check again now" and watch
//! the label appear; the preflight form; keyboard-only use; no horizontal scroll at 360 px;
//! text contrast of at least 4.5:1; and no console errors anywhere.
//!
//! Page state is read through the DOM (`data-*` attributes the page sets for each status, and
//! visible text); every wait is bounded (`common::browser::PAGE_WAIT`).

use fantoccini::Client;
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use serde_json::Value;

use crate::common::browser::{Browser, console_errors, find, text, until};
use crate::common::console::{
    ALICE, ALICE_DOMAIN, ALICE_HANDLE, BOB, BOB_DOMAIN, alice_and_bob, fix_bob,
};
use crate::common::daemon::{TestLabeler, World};

/// The checks every attestation of Alice's and Bob's gets (one DKIM selector, no relay).
const CHECKS: [&str; 5] = ["domain-control", "mx", "spf", "dkim", "dmarc"];

/// Presses `keys` one after the other on whatever has the focus, as a keyboard does.
async fn press(c: &Client, keys: &str) {
    let mut actions = KeyActions::new("keyboard".to_owned());
    for k in keys.chars() {
        actions = actions
            .then(KeyAction::Down { value: k })
            .then(KeyAction::Up { value: k });
    }
    c.perform_actions(actions).await.unwrap();
}

fn tab() -> String {
    char::from(Key::Tab).to_string()
}

fn enter() -> String {
    char::from(Key::Enter).to_string()
}

/// Waits for the subject `did` and returns, for it: the outcome of each check by name, the
/// label values it shows as held.
async fn subject(c: &Client, did: &str) -> (Vec<(String, String)>, Vec<String>) {
    let script = format!(
        r#"const s = document.querySelector('article.subject[data-did="{did}"]');
        if (!s) return null;
        return {{
          checks: [...s.querySelectorAll('li.check')].map(li => [li.dataset.check, li.dataset.outcome, li.textContent]),
          labels: [...s.querySelectorAll('.labels li.held')].map(li => li.dataset.val),
        }};"#
    );
    let v = until(c, &format!("the page shows {did}"), &script).await;
    let checks = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let text = x[2].as_str().unwrap();
            let outcome = x[1].as_str().unwrap().to_owned();
            // Each status is a word and a symbol on the page, never colour alone.
            let (symbol, word) = match outcome.as_str() {
                "pass" => ("✓", "pass"),
                "fail" => ("✗", "fail"),
                _ => ("?", "could not decide"),
            };
            assert!(text.contains(symbol) && text.contains(word), "{text}");
            (x[0].as_str().unwrap().to_owned(), outcome)
        })
        .collect();
    let labels = v["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect();
    (checks, labels)
}

fn all_pass() -> Vec<(String, String)> {
    CHECKS
        .iter()
        .map(|n| ((*n).to_owned(), "pass".to_owned()))
        .collect()
}

/// Submits a lookup through the search box, by keyboard.
async fn search(c: &Client, q: &str) {
    let input = find(c, "#q").await;
    input.clear().await.unwrap();
    input.click().await.unwrap();
    press(c, &format!("{q}{}", enter())).await;
}

/// No console errors but the `expected` ones (substrings of the entries).
async fn assert_no_console_errors(c: &Client, expected: &[&str]) {
    let errors: Vec<String> = console_errors(c)
        .await
        .into_iter()
        .filter(|e| !expected.iter().any(|x| e.contains(x)))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
}

/// No horizontal scroll: the document is no wider than the viewport, which is 360 px or less.
async fn assert_fits(c: &Client, what: &str) {
    let v: Value = c
        .execute(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth];",
            vec![],
        )
        .await
        .unwrap();
    let (scroll, client) = (v[0].as_u64().unwrap(), v[1].as_u64().unwrap());
    assert!(client <= 360, "the viewport is {client} px wide");
    assert!(
        scroll <= client,
        "{what}: {scroll} px of content in {client} px"
    );
}

/// Text with a contrast ratio below 4.5:1 against its background (WCAG 2.1 §1.4.3, the
/// relative-luminance formula of its definitions), as `element: ratio text`.
async fn low_contrast(c: &Client) -> Value {
    c.execute(
        r#"const rgb = s => (s.match(/[\d.]+/g) || []).map(Number);
        const lum = ([r, g, b]) => {
          const f = x => { x /= 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); };
          return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
        };
        const background = e => {
          for (; e; e = e.parentElement) {
            const v = rgb(getComputedStyle(e).backgroundColor);
            if (v.length === 3 || v[3] > 0) return v;
          }
          return [255, 255, 255];
        };
        const low = [];
        for (const e of document.querySelectorAll('body *')) {
          const text = [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
          if (!text || e.getClientRects().length === 0) continue;
          const a = lum(rgb(getComputedStyle(e).color)), b = lum(background(e));
          const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
          if (ratio < 4.5) low.push(e.tagName + '.' + e.className + ': ' + ratio.toFixed(2) + ' ' + e.textContent.trim().slice(0, 40));
        }
        return low;"#,
        vec![],
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn finds_a_verified_operator_by_handle_did_and_domain_with_its_label_and_every_check() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    alice_and_bob(&world, &labeler).await;
    let base = format!("http://{}", labeler.addr);
    let labeler_did = labeler.did.clone();
    Browser::start(1200, 900)
        .await
        .run(|c| async move {
            // A deep link by handle.
            c.goto(&format!("{base}/?q={ALICE_HANDLE}")).await.unwrap();
            let (checks, labels) = subject(&c, ALICE).await;
            assert_eq!(checks, all_pass());
            assert_eq!(labels, ["verified-mail-operator"]);
            assert!(
                text(&c, "article.subject .found-by")
                    .await
                    .contains("handle")
            );
            // The labeler itself.
            until(
                &c,
                "the labeler's DID",
                &format!(
                    "return document.getElementById('labeler-did').textContent === '{labeler_did}';"
                ),
            )
            .await;
            assert!(text(&c, "#labeler-key").await.starts_with("did:key:z"));
            let values = text(&c, "#labeler-values").await;
            assert!(
                values.contains("verified-mail-operator") && values.contains("relay-member"),
                "{values}"
            );

            // By DID, typed into the search box.
            search(&c, ALICE).await;
            until(
                &c,
                "the lookup by DID",
                "return document.querySelector('.found-by')?.textContent.includes('DID');",
            )
            .await;
            let (checks, labels) = subject(&c, ALICE).await;
            assert_eq!(
                (checks, labels),
                (all_pass(), vec!["verified-mail-operator".to_owned()])
            );
            assert!(
                c.current_url()
                    .await
                    .unwrap()
                    .as_str()
                    .ends_with(&format!("/?q={}", ALICE.replace(':', "%3A")))
            );

            // By mail domain.
            search(&c, ALICE_DOMAIN).await;
            until(
                &c,
                "the lookup by domain",
                "return document.querySelector('.found-by')?.textContent.includes('mail domain');",
            )
            .await;
            let (checks, labels) = subject(&c, ALICE).await;
            assert_eq!(
                (checks, labels),
                (all_pass(), vec!["verified-mail-operator".to_owned()])
            );
            let meta = text(&c, "article.subject .attestation .meta").await;
            assert!(
                meta.contains("Checked 20") && meta.contains("next check 20"),
                "{meta}"
            );

            // Nothing to find says so.
            search(&c, "nobody.example").await;
            let nothing = until(
                &c,
                "the empty result",
                "return document.querySelector('#results .notice[role=alert]')?.textContent;",
            )
            .await;
            assert!(
                nothing
                    .as_str()
                    .unwrap()
                    .contains("Nothing found for nobody.example"),
                "{nothing}"
            );
            assert_no_console_errors(&c, &[]).await;
        })
        .await;
    labeler.stop().await;
}

#[tokio::test]
async fn a_failing_operator_sees_the_fix_then_check_again_now_brings_the_label() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    alice_and_bob(&world, &labeler).await;
    let base = format!("http://{}", labeler.addr);
    Browser::start(1200, 900)
        .await
        .run(|c| async move {
            c.goto(&format!("{base}/?q={BOB}")).await.unwrap();
            let (checks, labels) = subject(&c, BOB).await;
            let mut want = all_pass();
            want[4].1 = "fail".to_owned();
            assert_eq!(checks, want);
            assert!(labels.is_empty());
            assert!(text(&c, "article.subject .standing").await.contains("not verified"));
            let fix = text(&c, "li.check[data-check=dmarc] .fix code.record").await;
            assert_eq!(fix, format!(r#"_dmarc.{BOB_DOMAIN} TXT "v=DMARC1; p=quarantine""#));
            let reason = text(&c, "li.check[data-check=dmarc] .reason").await;
            assert!(reason.contains(&format!("_dmarc.{BOB_DOMAIN}")), "{reason}");

            // Bob publishes the record and asks for a new check: the page updates by itself.
            fix_bob(&world);
            find(&c, "button.recheck").await.click().await.unwrap();
            until(&c, "the label after the re-check", "return document.querySelector('.labels li.held[data-val=verified-mail-operator]') !== null;").await;
            let (checks, labels) = subject(&c, BOB).await;
            assert_eq!((checks, labels), (all_pass(), vec!["verified-mail-operator".to_owned()]));
            assert_eq!(text(&c, ".recheck-status").await, "Checked again just now.");
            let history = text(&c, "ol.history").await;
            let (pass, fail) = (history.find("pass").unwrap(), history.find("fail").unwrap());
            assert!(pass < fail, "newest first: {history}");

            // A second request within the minute is refused, and the page says why.
            find(&c, "button.recheck").await.click().await.unwrap();
            let said = until(&c, "the refusal", "const t = document.querySelector('.recheck-status').textContent; return t.startsWith('Not now') ? t : null;").await;
            assert!(said.as_str().unwrap().contains("less than a minute ago"), "{said}");
            // The browser logs the refusal itself (a 429 is a failed load); nothing else.
            assert_no_console_errors(
                &c,
                &["email.atmos.requestVerification - Failed to load resource: the server responded with a status of 429"],
            )
            .await;
        })
        .await;
    labeler.stop().await;
}

#[tokio::test]
async fn the_preflight_form_runs_the_checks_and_shows_the_record_to_publish() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    let carol = "did:plc:carolisnewheretoo2345672";
    let domain = "mail.carol.example";
    world.dns.publish_good_operator(domain, carol, &["s1"]);
    world.account(carol);
    let base = format!("http://{}", labeler.addr);
    Browser::start(1200, 900)
        .await
        .run(|c| async move {
            c.goto(&base).await.unwrap();
            find(&c, "#pf-domain").await.send_keys(domain).await.unwrap();
            find(&c, "#pf-did").await.send_keys(carol).await.unwrap();
            find(&c, "#pf-selectors").await.send_keys("s1, s2").await.unwrap();
            find(&c, "#pf-run").await.click().await.unwrap();
            let v = until(&c, "the preflight report", r#"const r = document.querySelector('#preflight-result .report');
                if (!r) return null;
                return { checks: [...r.querySelectorAll('li.check')].map(li => [li.dataset.check, li.dataset.outcome]),
                         fix: r.querySelector('li.check[data-outcome=fail] code.record')?.textContent,
                         record: r.querySelector('pre.attestation-record').textContent };"#).await;
            let outcomes: Vec<String> = v["checks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| format!("{}={}", x[0].as_str().unwrap(), x[1].as_str().unwrap()))
                .collect();
            assert_eq!(
                outcomes,
                ["domain-control=pass", "mx=pass", "spf=pass", "dkim=pass", "dkim=fail", "dmarc=pass"]
            );
            assert_eq!(
                v["fix"],
                format!(r#"s2._domainkey.{domain} TXT "v=DKIM1; k=rsa; p=<public key, base64>""#)
            );
            let record: Value = serde_json::from_str(v["record"].as_str().unwrap()).unwrap();
            assert_eq!(record["$type"], "email.atmos.attestation");
            assert_eq!(record["domain"], domain);
            assert_eq!(record["dkimSelectors"], serde_json::json!(["s1", "s2"]));
            assert_no_console_errors(&c, &[]).await;
        })
        .await;
    let view = labeler.verification(carol).await;
    assert_eq!(
        view["attestations"],
        serde_json::json!([]),
        "nothing stored"
    );
    labeler.stop().await;
}

#[tokio::test]
async fn keyboard_alone_reaches_every_control_and_nothing_scrolls_sideways_at_360_px() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    alice_and_bob(&world, &labeler).await;
    let base = format!("http://{}", labeler.addr);
    Browser::start(360, 800)
        .await
        .run(|c| async move {
            c.set_window_size(360, 800).await.unwrap();
            c.goto(&base).await.unwrap();
            find(&c, "#q").await;
            // Every control has a label or a visible name.
            let unlabelled = c
                .execute(
                    r#"return [...document.querySelectorAll('input, button, select, textarea')]
                        .filter(e => !(e.labels && e.labels.length) && !e.textContent.trim() && !e.getAttribute('aria-label'))
                        .map(e => e.outerHTML);"#,
                    vec![],
                )
                .await
                .unwrap();
            assert_eq!(unlabelled, serde_json::json!([]), "unlabelled controls");

            // From the top of the page, with the keyboard only: Tab to the search box, type,
            // Enter; the result has a "Check again now" button.
            press(&c, &tab()).await;
            let focused = c.execute("return document.activeElement.id;", vec![]).await.unwrap();
            assert_eq!(focused, "q", "the first Tab reaches the search box");
            press(&c, &format!("{BOB}{}", enter())).await;
            subject(&c, BOB).await;
            assert_fits(&c, "a failing operator with its fixes").await;

            // Tab through the page from its top: every control gets the focus, in order.
            c.goto(&format!("{base}/?q={BOB}")).await.unwrap();
            subject(&c, BOB).await;
            let controls = c
                .execute(
                    "return [...document.querySelectorAll('input, button')].map(e => e.id || e.className);",
                    vec![],
                )
                .await
                .unwrap();
            let controls: Vec<String> = serde_json::from_value(controls).unwrap();
            assert!(controls.len() >= 7, "{controls:?}");
            let mut reached = Vec::new();
            for _ in 0..controls.len() + 5 {
                press(&c, &tab()).await;
                let id = c
                    .execute("const e = document.activeElement; return e === document.body ? '' : (e.id || e.className);", vec![])
                    .await
                    .unwrap();
                let id = id.as_str().unwrap().to_owned();
                if !id.is_empty() && !reached.contains(&id) {
                    reached.push(id);
                }
            }
            assert_eq!(reached, controls, "Tab visits every control in document order");

            // The preflight, by keyboard: the focus is in the form's fields in turn.
            find(&c, "#pf-domain").await.click().await.unwrap();
            press(&c, &format!("{BOB_DOMAIN}{t}{BOB}{t}default{}", enter(), t = tab())).await;
            until(&c, "the preflight report", "return document.querySelector('#preflight-result .report') !== null;").await;
            assert_fits(&c, "the preflight report").await;
            // Passes, failures, fixes, forms and buttons on one page: all readable.
            assert_eq!(low_contrast(&c).await, serde_json::json!([]), "text below 4.5:1");

            // The verified operator too, found by domain.
            c.goto(&format!("{base}/?q={ALICE_DOMAIN}")).await.unwrap();
            subject(&c, ALICE).await;
            assert_fits(&c, "a verified operator").await;
            assert_no_console_errors(&c, &[]).await;
        })
        .await;
    labeler.stop().await;
}

/// Writes the README's screenshots (`docs/console-*.png`): a verified operator, a failing one
/// with its fix, and a preflight. Not a check; run it by hand after changing the page:
/// `cargo test --test integration -- --ignored screenshots_for_the_readme`.
#[tokio::test]
#[ignore = "writes docs/console-*.png; run by hand"]
async fn screenshots_for_the_readme() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    alice_and_bob(&world, &labeler).await;
    let base = format!("http://{}", labeler.addr);
    let docs = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs");
    Browser::start(900, 3600)
        .await
        .run(|c| async move {
            let shoot = |name: &'static str, css: &'static str| {
                let c = c.clone();
                let path = docs.join(name);
                async move {
                    let png = find(&c, css).await.screenshot().await.unwrap();
                    std::fs::write(&path, png).unwrap();
                }
            };
            c.goto(&format!("{base}/?q={ALICE_HANDLE}")).await.unwrap();
            subject(&c, ALICE).await;
            // The top of the page: who the labeler is, and the operator found.
            c.execute(
                "document.getElementById('preflight').hidden = true; document.querySelector('footer').hidden = true;",
                vec![],
            )
            .await
            .unwrap();
            shoot("console-pass.png", "body").await;

            c.goto(&format!("{base}/?q={BOB}")).await.unwrap();
            subject(&c, BOB).await;
            shoot("console-fail.png", "#lookup").await;

            c.goto(&base).await.unwrap();
            find(&c, "#pf-domain").await.send_keys(BOB_DOMAIN).await.unwrap();
            find(&c, "#pf-did").await.send_keys(BOB).await.unwrap();
            find(&c, "#pf-selectors").await.send_keys("default s2026").await.unwrap();
            find(&c, "#pf-run").await.click().await.unwrap();
            until(&c, "the preflight report", "return document.querySelector('#preflight-result .report') !== null;").await;
            shoot("console-preflight.png", "#preflight").await;
        })
        .await;
    labeler.stop().await;
}
