//! `verify::Checker` end to end: a real authoritative DNS server, a fake PLC directory and
//! PDS, and the real resolver and HTTP clients.

use std::net::Ipv4Addr;
use std::time::Duration;

use atmos_labeler::identity;
use atmos_labeler::verify::{CheckName, Checker, Options, Outcome, Report};

use crate::common::dns::{DKIM_ED25519, DKIM_RSA_512, FakeDns, Fault};
use crate::common::plc::{FakePds, FakePlc, did_doc};

const DID: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
const OTHER: &str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
const DOMAIN: &str = "example.test";
const RELAY: &str = "relay.atmos.test";

struct Env {
    dns: FakeDns,
    plc: FakePlc,
    pds: FakePds,
    checker: Checker,
}

impl Env {
    async fn start(relay: Option<&str>) -> Env {
        let dns = FakeDns::start().await;
        let plc = FakePlc::start().await;
        let pds = FakePds::start().await;
        let resolver = dns.resolver();
        let id = identity::Resolver::new(
            identity::Options {
                plc_url: plc.url(),
                allow_private_addresses: true,
                timeout: Duration::from_millis(1000),
            },
            resolver.clone(),
        )
        .unwrap();
        let checker = Checker::new(
            resolver,
            id,
            Options {
                relay_spf_include: relay.map(str::to_owned),
            },
        );
        Env {
            dns,
            plc,
            pds,
            checker,
        }
    }

    /// A started environment with a complete good operator at [`DOMAIN`] for [`DID`]
    /// (selector `sel1`), and DID documents for [`DID`] and [`OTHER`].
    async fn good(relay: Option<&str>) -> Env {
        let env = Env::start(relay).await;
        env.dns.publish_good_operator(DOMAIN, DID, &["sel1"]);
        env.plc
            .set_doc(DID, did_doc(DID, Some(DOMAIN), &env.pds.url()));
        env.plc.set_doc(OTHER, did_doc(OTHER, None, &env.pds.url()));
        env
    }

    async fn check(&self) -> Report {
        self.check_with(&["sel1"]).await
    }

    /// A check that bypasses every cache (DNS and DID documents).
    async fn check_fresh(&self) -> Report {
        self.checker
            .check(
                DID,
                DOMAIN,
                &["sel1".to_owned()],
                atmos_labeler::verify::Vantage::Fresh,
            )
            .await
    }

    async fn check_with(&self, selectors: &[&str]) -> Report {
        let selectors: Vec<String> = selectors.iter().map(|s| (*s).to_owned()).collect();
        self.checker
            .check(
                DID,
                DOMAIN,
                &selectors,
                atmos_labeler::verify::Vantage::Cached,
            )
            .await
    }
}

/// The single entry named `name` (and `subject`).
fn entry(report: &Report, name: CheckName, subject: Option<&str>) -> (Outcome, String) {
    let found: Vec<_> = report
        .checks
        .iter()
        .filter(|c| c.name == name && c.subject.as_deref() == subject)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{name:?} {subject:?} in\n{}",
        report.render_text()
    );
    (found[0].outcome, found[0].reason.clone())
}

/// Asserts one check's outcome and that its reason contains `needle`.
fn expect(report: &Report, name: CheckName, subject: Option<&str>, outcome: Outcome, needle: &str) {
    let (o, reason) = entry(report, name, subject);
    assert_eq!(o, outcome, "{name:?}: {reason}\n{}", report.render_text());
    assert!(
        reason.contains(needle),
        "{name:?}: {needle:?} not in {reason:?}"
    );
}

#[tokio::test]
async fn a_good_operator_passes_every_check() {
    let env = Env::good(None).await;
    let report = env.check_with(&["sel1", "sel2"]).await;
    // sel2 is not published: one DKIM entry per selector.
    expect(
        &report,
        CheckName::Dkim,
        Some("sel2"),
        Outcome::Fail,
        "sel2._domainkey.example.test",
    );
    env.dns
        .publish_good_operator(DOMAIN, DID, &["sel1", "sel2"]);
    let report = env.check_with(&["sel1", "sel2"]).await;
    assert_eq!(report.verdict, Outcome::Pass, "{}", report.render_text());
    assert_eq!(report.did, DID);
    assert_eq!(report.domain, DOMAIN);
    expect(
        &report,
        CheckName::DomainControl,
        None,
        Outcome::Pass,
        "_atproto.example.test",
    );
    expect(
        &report,
        CheckName::Mx,
        None,
        Outcome::Pass,
        "mx1.example.test",
    );
    expect(&report, CheckName::Spf, None, Outcome::Pass, "\"-all\"");
    // The 2048-bit key is published split over two character-strings.
    expect(
        &report,
        CheckName::Dkim,
        Some("sel1"),
        Outcome::Pass,
        "2048-bit RSA",
    );
    expect(
        &report,
        CheckName::Dkim,
        Some("sel2"),
        Outcome::Pass,
        "2048-bit RSA",
    );
    expect(&report, CheckName::Dmarc, None, Outcome::Pass, "p=reject");
    assert!(
        report
            .checks
            .iter()
            .all(|c| c.name != CheckName::RelayMember)
    );
    assert!(!report.relay_member());
    let text = report.render_text();
    assert!(text.starts_with("✓ domain-control: "), "{text}");
    assert!(text.contains("✓ dkim (sel2): "), "{text}");
    assert!(text.ends_with("verdict for example.test (did:plc:ewvi7nxzyoun6zhxrhs64oiz): pass\n"));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["verdict"], "pass");
    assert!(json["checkedAt"].is_string());
}

#[tokio::test]
async fn multi_string_records_cname_delegated_keys_and_truncated_answers_still_pass() {
    let env = Env::good(None).await;
    env.dns.set_txt_strings(
        DOMAIN,
        &[&[
            "v=spf1 ip4:192.0.2.0/24",
            " include:_spf.example.test",
            " -all",
        ]],
    );
    env.dns
        .set_txt("_spf.example.test", &["v=spf1 ip6:2001:db8::/32 ~all"]);
    // DKIM and DMARC delegated by CNAME.
    env.dns.remove("sel1._domainkey.example.test");
    env.dns
        .set_cname("sel1._domainkey.example.test", "sel1.keys.provider.test");
    env.dns.set_txt(
        "sel1.keys.provider.test",
        &[&format!("v=DKIM1; k=ed25519; p={DKIM_ED25519}")],
    );
    env.dns.remove("_dmarc.example.test");
    env.dns
        .set_cname("_dmarc.example.test", "_dmarc.provider.test");
    env.dns
        .set_txt("_dmarc.provider.test", &["v=DMARC1; p=quarantine"]);
    // Truncated UDP answers for the domain control and MX host names: retried over TCP.
    env.dns.fault("_atproto.example.test", Fault::Truncate);
    env.dns.fault("mx1.example.test", Fault::Truncate);
    let report = env.check().await;
    assert_eq!(report.verdict, Outcome::Pass, "{}", report.render_text());
    expect(
        &report,
        CheckName::Dkim,
        Some("sel1"),
        Outcome::Pass,
        "Ed25519",
    );
    expect(
        &report,
        CheckName::Dmarc,
        None,
        Outcome::Pass,
        "p=quarantine",
    );
}

#[tokio::test]
async fn dns_failures_on_any_checked_name_never_fail() {
    let env = Env::good(None).await;
    let cases = [
        ("_atproto.example.test", CheckName::DomainControl, None),
        ("example.test", CheckName::Mx, None),
        ("example.test", CheckName::Spf, None),
        ("mx1.example.test", CheckName::Mx, None),
        (
            "sel1._domainkey.example.test",
            CheckName::Dkim,
            Some("sel1"),
        ),
        ("_dmarc.example.test", CheckName::Dmarc, None),
    ];
    for fault in [Fault::ServFail, Fault::Refused] {
        for (name, check, subject) in &cases {
            env.dns.fault(name, fault);
            let report = env.check().await;
            env.dns.clear_fault(name);
            assert_eq!(
                report.verdict,
                Outcome::CouldNotDecide,
                "{fault:?} {name}\n{}",
                report.render_text()
            );
            expect(&report, *check, *subject, Outcome::CouldNotDecide, name);
            assert!(report.checks.iter().all(|c| c.outcome != Outcome::Fail));
        }
    }
}

#[tokio::test]
async fn timeouts_on_any_checked_name_never_fail() {
    // One operator per faulty name, checked concurrently so the timeouts overlap.
    let env = Env::start(None).await;
    let names = ["_atproto", "", "mx1", "sel1._domainkey", "_dmarc"];
    let mut checks = Vec::new();
    for (i, prefix) in names.iter().enumerate() {
        let domain = format!("op{i}.example.test");
        env.dns.publish_good_operator(&domain, DID, &["sel1"]);
        let faulty = if prefix.is_empty() {
            domain.clone()
        } else {
            format!("{prefix}.{domain}")
        };
        env.dns.fault(&faulty, Fault::Timeout);
        checks.push((domain, faulty));
    }
    let selectors = vec!["sel1".to_owned()];
    let reports = futures_util::future::join_all(checks.iter().map(|(domain, _)| {
        env.checker.check(
            DID,
            domain,
            &selectors,
            atmos_labeler::verify::Vantage::Cached,
        )
    }))
    .await;
    for ((_, faulty), report) in checks.iter().zip(reports) {
        assert_eq!(
            report.verdict,
            Outcome::CouldNotDecide,
            "{faulty}\n{}",
            report.render_text()
        );
        assert!(
            report.checks.iter().all(|c| c.outcome != Outcome::Fail),
            "{}",
            report.render_text()
        );
        assert!(
            report
                .checks
                .iter()
                .any(|c| c.reason.contains(faulty.as_str()) && c.reason.contains("timed out")),
            "{}",
            report.render_text()
        );
    }
}

#[tokio::test]
async fn domain_control_passes_only_when_dns_points_back_to_the_one_did() {
    let env = Env::good(None).await;
    // Another DID's record.
    env.dns
        .set_txt("_atproto.example.test", &[&format!("did={OTHER}")]);
    let r = env.check().await;
    assert_eq!(r.verdict, Outcome::Fail);
    expect(&r, CheckName::DomainControl, None, Outcome::Fail, OTHER);
    // Two different DIDs, one of them ours.
    env.dns.set_txt(
        "_atproto.example.test",
        &[&format!("did={DID}"), &format!("did={OTHER}")],
    );
    expect(
        &env.check().await,
        CheckName::DomainControl,
        None,
        Outcome::Fail,
        "2 different did=",
    );
    // The DID document claims the domain, but nothing in DNS points back.
    env.dns.remove("_atproto.example.test");
    let r = env.check().await;
    expect(
        &r,
        CheckName::DomainControl,
        None,
        Outcome::Fail,
        "claims the handle example.test",
    );
    assert_eq!(r.verdict, Outcome::Fail);
    // Unrelated TXT only: the same.
    env.dns.set_txt("_atproto.example.test", &["hello"]);
    expect(
        &env.check().await,
        CheckName::DomainControl,
        None,
        Outcome::Fail,
        "points back",
    );
    // PLC failures while looking for the handle: undecided, never failed.
    // (Fresh checks: the document fetched above is cached.)
    env.plc.fail(DID, 500);
    expect(
        &env.check_fresh().await,
        CheckName::DomainControl,
        None,
        Outcome::CouldNotDecide,
        "500",
    );
    env.plc.hang(DID);
    let r = env.check_fresh().await;
    expect(
        &r,
        CheckName::DomainControl,
        None,
        Outcome::CouldNotDecide,
        DID,
    );
    assert_eq!(r.verdict, Outcome::CouldNotDecide);
    // PLC says the DID does not exist: fail.
    env.plc.clear_fault(DID);
    env.plc.remove(DID);
    expect(
        &env.check_fresh().await,
        CheckName::DomainControl,
        None,
        Outcome::Fail,
        "not found",
    );
    // The record is restored: pass without consulting the directory.
    env.dns
        .set_txt("_atproto.example.test", &[&format!("did={DID}")]);
    assert_eq!(env.check().await.verdict, Outcome::Pass);
}

#[tokio::test]
async fn mx_fails_without_a_usable_public_host_and_passes_with_one() {
    let env = Env::good(None).await;
    env.dns.set_mx(DOMAIN, &[(0, ".")]);
    expect(
        &env.check().await,
        CheckName::Mx,
        None,
        Outcome::Fail,
        "null MX",
    );
    env.dns.set_mx(DOMAIN, &[]);
    expect(
        &env.check().await,
        CheckName::Mx,
        None,
        Outcome::Fail,
        "no MX records",
    );
    env.dns.set_mx(DOMAIN, &[(10, "192.0.2.25")]);
    expect(
        &env.check().await,
        CheckName::Mx,
        None,
        Outcome::Fail,
        "IP address",
    );
    env.dns.set_mx(DOMAIN, &[(10, "nowhere.example.test")]);
    expect(
        &env.check().await,
        CheckName::Mx,
        None,
        Outcome::Fail,
        "nowhere.example.test does not exist",
    );
    env.dns.set_a("mx9.example.test", &[Ipv4Addr::LOCALHOST]);
    env.dns.set_mx(DOMAIN, &[(10, "mx9.example.test")]);
    expect(
        &env.check().await,
        CheckName::Mx,
        None,
        Outcome::Fail,
        "non-public",
    );
    // One usable host is enough; the others are reported.
    env.dns.set_mx(
        DOMAIN,
        &[(10, "mx9.example.test"), (20, "mx1.example.test")],
    );
    let r = env.check().await;
    expect(
        &r,
        CheckName::Mx,
        None,
        Outcome::Pass,
        "mx9.example.test resolves only to non-public",
    );
    assert_eq!(r.verdict, Outcome::Pass);
}

#[tokio::test]
async fn spf_and_relay_membership_are_judged_through_includes_over_real_dns() {
    let env = Env::good(Some(RELAY)).await;
    let r = env.check().await;
    assert_eq!(r.verdict, Outcome::Pass);
    expect(
        &r,
        CheckName::RelayMember,
        None,
        Outcome::Fail,
        "does not include relay.atmos.test",
    );
    assert!(!r.relay_member());

    // The relay include, one level down.
    env.dns
        .set_txt(DOMAIN, &["v=spf1 include:_spf.example.test -all"]);
    env.dns.set_txt(
        "_spf.example.test",
        &[&format!("v=spf1 ip4:192.0.2.0/24 include:{RELAY} ~all")],
    );
    env.dns.set_txt(RELAY, &["v=spf1 ip4:198.51.100.0/24 -all"]);
    let r = env.check().await;
    assert_eq!(r.verdict, Outcome::Pass, "{}", r.render_text());
    expect(
        &r,
        CheckName::RelayMember,
        None,
        Outcome::Pass,
        "_spf.example.test",
    );
    assert!(r.relay_member());

    // The relay's own record turns permissive: so does ours, and membership fails too.
    env.dns.set_txt(RELAY, &["v=spf1 +all"]);
    let r = env.check().await;
    expect(
        &r,
        CheckName::Spf,
        None,
        Outcome::Fail,
        "relay.atmos.test (reached from example.test via include:_spf.example.test → include:relay.atmos.test) ends in \"+all\"",
    );
    assert!(!r.relay_member());

    for (record, needle) in [
        ("v=spf1 +all", "\"+all\", which authorises every host"),
        ("v=spf1 ?all", "\"?all\""),
        ("v=spf1 ip4:192.0.2.0/24", "no \"all\""),
        ("v=spf1 ip4:0.0.0.0/0 -all", "ip4:0.0.0.0/0"),
        ("v=spf1 ip4:1.2.3.4~all", "is invalid"),
        ("v=spf1 redirect=a.test redirect=b.test", "more than once"),
    ] {
        env.dns.set_txt(DOMAIN, &[record]);
        let r = env.check().await;
        assert_eq!(r.verdict, Outcome::Fail, "{record}");
        expect(&r, CheckName::Spf, None, Outcome::Fail, needle);
        expect(&r, CheckName::Spf, None, Outcome::Fail, "example.test");
    }
    env.dns.set_txt(DOMAIN, &["v=spf1 -all", "v=spf1 ~all"]);
    expect(
        &env.check().await,
        CheckName::Spf,
        None,
        Outcome::Fail,
        "2 SPF records",
    );

    // A DNS error deep in the include tree: undecided, and membership unknown.
    env.dns
        .set_txt(DOMAIN, &["v=spf1 include:_spf.example.test -all"]);
    env.dns.set_txt(
        "_spf.example.test",
        &[&format!("v=spf1 include:{RELAY} ~all")],
    );
    env.dns.set_txt(RELAY, &["v=spf1 ip4:198.51.100.0/24 -all"]);
    env.dns.fault(RELAY, Fault::ServFail);
    let r = env.check().await;
    expect(&r, CheckName::Spf, None, Outcome::CouldNotDecide, RELAY);
    expect(
        &r,
        CheckName::RelayMember,
        None,
        Outcome::CouldNotDecide,
        RELAY,
    );
    assert_eq!(r.verdict, Outcome::CouldNotDecide);
}

#[tokio::test]
async fn dkim_fails_revoked_weak_testing_duplicate_or_missing_keys() {
    let env = Env::good(None).await;
    let name = "sel1._domainkey.example.test";
    for (records, needle) in [
        (vec!["v=DKIM1; k=rsa; p=".to_owned()], "revoked"),
        (vec![format!("v=DKIM1; p={DKIM_RSA_512}")], "512-bit"),
        (
            vec![format!("v=DKIM1; t=y; k=ed25519; p={DKIM_ED25519}")],
            "t=y",
        ),
        (
            vec![
                format!("v=DKIM1; k=ed25519; p={DKIM_ED25519}"),
                format!("v=DKIM1; k=ed25519; t=s; p={DKIM_ED25519}"),
            ],
            "2 DKIM key records",
        ),
    ] {
        let refs: Vec<&str> = records.iter().map(String::as_str).collect();
        env.dns.set_txt(name, &refs);
        let r = env.check().await;
        expect(&r, CheckName::Dkim, Some("sel1"), Outcome::Fail, needle);
        expect(&r, CheckName::Dkim, Some("sel1"), Outcome::Fail, name);
        assert_eq!(r.verdict, Outcome::Fail);
    }
    env.dns.remove(name);
    expect(
        &env.check().await,
        CheckName::Dkim,
        Some("sel1"),
        Outcome::Fail,
        "no DKIM key record",
    );
}

#[tokio::test]
async fn dmarc_fails_weak_policies_and_falls_back_to_the_organisational_domain() {
    let env = Env::start(None).await;
    let domain = "mail.example.test";
    env.dns.publish_good_operator(domain, DID, &["s"]);
    let sel = vec!["s".to_owned()];
    let check = || {
        env.checker
            .check(DID, domain, &sel, atmos_labeler::verify::Vantage::Cached)
    };
    assert_eq!(check().await.verdict, Outcome::Pass);

    env.dns
        .set_txt("_dmarc.mail.example.test", &["v=DMARC1; p=none"]);
    expect(
        &check().await,
        CheckName::Dmarc,
        None,
        Outcome::Fail,
        "p=none",
    );
    env.dns
        .set_txt("_dmarc.mail.example.test", &["v=DMARC1; p=reject; pct=50"]);
    expect(
        &check().await,
        CheckName::Dmarc,
        None,
        Outcome::Fail,
        "pct=50",
    );
    env.dns.set_txt(
        "_dmarc.mail.example.test",
        &["v=DMARC1; p=reject", "v=DMARC1; p=reject"],
    );
    expect(
        &check().await,
        CheckName::Dmarc,
        None,
        Outcome::Fail,
        "2 DMARC records",
    );

    // No record of its own: the organisational domain's sp (else p) applies.
    env.dns.remove("_dmarc.mail.example.test");
    env.dns
        .set_txt("_dmarc.example.test", &["v=DMARC1; p=reject; sp=none"]);
    expect(
        &check().await,
        CheckName::Dmarc,
        None,
        Outcome::Fail,
        "sp=none",
    );
    env.dns
        .set_txt("_dmarc.example.test", &["v=DMARC1; p=none; sp=quarantine"]);
    expect(
        &check().await,
        CheckName::Dmarc,
        None,
        Outcome::Pass,
        "_dmarc.example.test enforces sp=quarantine",
    );
    env.dns
        .set_txt("_dmarc.example.test", &["v=DMARC1; p=reject; psd=y"]);
    expect(
        &check().await,
        CheckName::Dmarc,
        None,
        Outcome::Fail,
        "psd=y",
    );

    // An error at the first name never falls through to the parent.
    env.dns
        .set_txt("_dmarc.example.test", &["v=DMARC1; p=reject"]);
    env.dns.fault("_dmarc.mail.example.test", Fault::ServFail);
    let before = env.dns.query_count("_dmarc.example.test");
    expect(
        &check().await,
        CheckName::Dmarc,
        None,
        Outcome::CouldNotDecide,
        "_dmarc.mail.example.test",
    );
    assert_eq!(env.dns.query_count("_dmarc.example.test"), before);
}

#[tokio::test]
async fn a_broken_then_fixed_setup_is_seen_on_recheck() {
    let env = Env::good(None).await;
    assert_eq!(env.check().await.verdict, Outcome::Pass);
    env.dns
        .set_txt("_dmarc.example.test", &["v=DMARC1; p=none"]);
    assert_eq!(env.check().await.verdict, Outcome::Fail);
    env.dns
        .set_txt("_dmarc.example.test", &["v=DMARC1; p=reject"]);
    assert_eq!(env.check_fresh().await.verdict, Outcome::Pass);
}

#[tokio::test]
async fn invalid_inputs_are_reported_without_querying() {
    let env = Env::good(None).await;
    let sel = vec!["sel1".to_owned()];
    for (did, domain) in [
        ("not-a-did", DOMAIN),
        (DID, "Example.TEST"),
        (DID, "example"),
        (DID, "exa mple.test"),
        (DID, "bücher.test"),
        (DID, "example.test."),
        (DID, "192.0.2.1"),
    ] {
        let r = env
            .checker
            .check(did, domain, &sel, atmos_labeler::verify::Vantage::Cached)
            .await;
        assert_eq!(r.verdict, Outcome::Fail, "{did} {domain}");
        assert_eq!(r.checks.len(), 1);
        assert!(
            r.checks[0].reason.starts_with("nothing was checked"),
            "{}",
            r.checks[0].reason
        );
    }
    assert_eq!(env.dns.total_queries(), 0);

    // Bad selectors fail their own entries; the rest is still checked.
    let r = env.check_with(&["sel1", "bad selector", "a/b"]).await;
    assert_eq!(r.verdict, Outcome::Fail);
    expect(&r, CheckName::Dkim, Some("sel1"), Outcome::Pass, "2048-bit");
    expect(
        &r,
        CheckName::Dkim,
        Some("bad selector"),
        Outcome::Fail,
        "may contain only",
    );
    let r = env.check_with(&[]).await;
    expect(&r, CheckName::Dkim, None, Outcome::Fail, "no DKIM selector");
    let many: Vec<String> = (0..17).map(|i| format!("s{i}")).collect();
    let r = env
        .checker
        .check(DID, DOMAIN, &many, atmos_labeler::verify::Vantage::Cached)
        .await;
    expect(&r, CheckName::Dkim, None, Outcome::Fail, "at most 16");
}
