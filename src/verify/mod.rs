//! Verification policy: is this DID a verified mail operator for this domain?
//!
//! Owns the judgement, not the fetching: `domain` (atproto domain control), `mx`
//! (RFC 5321/7505), `spf` (RFC 7208), `dkim` (RFC 6376/8301/8463) and `dmarc` (RFC 7489,
//! RFC 9989) hold pure parsers and judgements over already-fetched answers, unit-tested at
//! the bottom of each module; this module adds the thin async layer that fetches through
//! [`crate::dns`] and [`crate::identity`], runs the checks concurrently and assembles a
//! [`Report`].
//!
//! The asymmetry of `docs/verification.md` §6 is built in: every check answers pass, fail or could not
//! decide. Only NXDOMAIN, NODATA and records that are present but bad fail; any DNS error or
//! transient identity failure is "could not decide" and can never fail a check on its own.
//! The verdict passes only if every check passes.
//!
//! The rules themselves are documented on each submodule, with their RFC clauses.

use std::future::Future;
use std::net::IpAddr;

use crate::dns::{self, Answer, Mx};
use crate::identity;

mod dkim;
mod dmarc;
mod domain;
mod fix;
mod mx;
mod report;
mod spf;
mod tags;

/// Most DKIM selectors checked for one attestation.
pub const MAX_SELECTORS: usize = 16;

pub use fix::Fix;
use report::finish;
pub use report::{Check, CheckName, Outcome, Report, Vantage, confirm};

/// Checker configuration.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The relay's SPF include name (lowercase, no trailing dot); when set, reports carry a
    /// [`CheckName::RelayMember`] entry.
    pub relay_spf_include: Option<String>,
}

/// The DNS questions the checks ask; [`Live`] answers them with [`dns::Resolver`], unit tests
/// with a map.
pub(crate) trait Dns: Sync {
    /// TXT records (strings joined per record).
    fn txt(&self, name: &str) -> impl Future<Output = Result<Answer<Vec<u8>>, dns::Error>> + Send;
    /// MX records.
    fn mx(&self, name: &str) -> impl Future<Output = Result<Answer<Mx>, dns::Error>> + Send;
    /// A and AAAA records.
    fn ip(&self, name: &str) -> impl Future<Output = Result<Answer<IpAddr>, dns::Error>> + Send;
}

/// The real resolver, cached or fresh.
struct Live<'a> {
    resolver: &'a dns::Resolver,
    fresh: bool,
}

impl Dns for Live<'_> {
    async fn txt(&self, name: &str) -> Result<Answer<Vec<u8>>, dns::Error> {
        self.resolver.txt(name, self.fresh).await
    }
    async fn mx(&self, name: &str) -> Result<Answer<Mx>, dns::Error> {
        self.resolver.mx(name, self.fresh).await
    }
    async fn ip(&self, name: &str) -> Result<Answer<IpAddr>, dns::Error> {
        self.resolver.ip(name, self.fresh).await
    }
}

/// Runs the checks. Cheap to clone.
#[derive(Clone)]
pub struct Checker {
    dns: dns::Resolver,
    /// The independent path for [`Vantage::Confirm`]; the configured resolvers, fresh, when
    /// there is none (one-shot checks).
    confirm: Option<dns::Resolver>,
    identity: identity::Resolver,
    relay: Option<String>,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

impl Checker {
    /// A checker over these resolvers.
    pub fn new(dns: dns::Resolver, identity: identity::Resolver, options: Options) -> Checker {
        let relay = options
            .relay_spf_include
            .map(|r| r.trim_end_matches('.').to_ascii_lowercase())
            .filter(|r| !r.is_empty());
        Checker {
            dns,
            confirm: None,
            identity,
            relay,
        }
    }

    /// This checker with `resolver` as its independent confirmation path.
    pub fn with_confirmation(mut self, resolver: dns::Resolver) -> Checker {
        self.confirm = Some(resolver);
        self
    }

    /// Who answers for `vantage`, in words for reports.
    pub fn describe(&self, vantage: Vantage) -> &str {
        match (vantage, &self.confirm) {
            (Vantage::Confirm, Some(c)) => c.describe(),
            _ => self.dns.describe(),
        }
    }

    /// The configured (primary) resolver: the one whose health decides whether the labeler
    /// can trust its own "absent" answers.
    pub fn resolver(&self) -> &dns::Resolver {
        &self.dns
    }

    /// Runs every check, concurrently, from `vantage`. Never panics and never fails:
    /// problems, including invalid inputs, are entries in the report.
    pub async fn check(
        &self,
        did: &str,
        domain: &str,
        selectors: &[String],
        vantage: Vantage,
    ) -> Report {
        let fresh = vantage != Vantage::Cached;
        let mut checks = Vec::new();
        let input_problem = if !crate::syntax::is_did(did) {
            Some(format!("{:?} is not a valid DID", tags::clip(did)))
        } else {
            domain_problem(domain).map(|p| format!("{:?} {p}", tags::clip(domain)))
        };
        if let Some(reason) = input_problem {
            checks.push(Check {
                name: CheckName::DomainControl,
                subject: None,
                outcome: Outcome::Fail,
                reason: format!("nothing was checked: {reason}"),
                fix: None,
            });
            return finish(did, domain, checks);
        }

        let resolver = match (vantage, &self.confirm) {
            (Vantage::Confirm, Some(c)) => c,
            _ => &self.dns,
        };
        let live = Live { resolver, fresh };
        let relay = self.relay.as_deref();
        // Only a DNS answer that failed gets a fix; the early entries are about the record.
        let fix = |name, subject: Option<&str>, outcome| {
            (outcome == Outcome::Fail)
                .then(|| fix::for_check(name, subject, did, domain, relay))
                .flatten()
        };
        let (dkim_plan, dkim_early) = plan_selectors(domain, selectors);
        let dkim_checks = dkim_plan.iter().map(|sel| {
            let live = &live;
            async move {
                let name = format!("{sel}._domainkey.{domain}");
                let (outcome, reason) = match live.txt(&name).await {
                    Err(e) => (
                        Outcome::CouldNotDecide,
                        format!("could not read the DKIM key at {name}: {e}"),
                    ),
                    Ok(Answer::NxDomain | Answer::NoData) => (
                        Outcome::Fail,
                        format!("no DKIM key record at {name}: the name has no TXT records"),
                    ),
                    Ok(Answer::Found(records)) => dkim::judge(&name, &records),
                };
                Check {
                    name: CheckName::Dkim,
                    subject: Some(sel.clone()),
                    outcome,
                    reason,
                    fix: fix(CheckName::Dkim, Some(sel), outcome),
                }
            }
        });
        let ((dc, dc_reason), (mx, mx_reason), spf, (dmarc, dmarc_reason), dkim) = tokio::join!(
            domain::check(&live, &self.identity, did, domain, fresh),
            mx::check(&live, domain),
            spf::audit(&live, domain, self.relay.as_deref()),
            check_dmarc(&live, domain),
            futures_util::future::join_all(dkim_checks),
        );
        let entry = |name, outcome, reason| Check {
            name,
            subject: None,
            outcome,
            reason,
            fix: fix(name, None, outcome),
        };
        checks.push(entry(CheckName::DomainControl, dc, dc_reason));
        checks.push(entry(CheckName::Mx, mx, mx_reason));
        checks.push(entry(CheckName::Spf, spf.outcome, spf.reason.clone()));
        checks.extend(dkim_early);
        checks.extend(dkim);
        checks.push(entry(CheckName::Dmarc, dmarc, dmarc_reason));
        if let Some(relay) = &self.relay {
            let (outcome, reason) = relay_entry(domain, relay, &spf);
            checks.push(entry(CheckName::RelayMember, outcome, reason));
        }
        let report = finish(did, domain, checks);
        tracing::debug!(did, domain, verdict = report.verdict.words(), "checked");
        report
    }
}

/// The relay-membership entry, from the SPF audit.
fn relay_entry(domain: &str, relay: &str, spf: &spf::Audit) -> (Outcome, String) {
    match (spf.outcome, &spf.relay_at) {
        (Outcome::Pass, Some(at)) => (Outcome::Pass, format!("{at} includes {relay}")),
        (Outcome::Pass, None) => (
            Outcome::Fail,
            format!("the SPF policy of {domain} does not include {relay}"),
        ),
        (Outcome::Fail, Some(at)) => (
            Outcome::Fail,
            format!("{at} includes {relay}, but the SPF policy of {domain} fails its check"),
        ),
        (Outcome::Fail, None) => (
            Outcome::Fail,
            format!("the SPF policy of {domain} fails its check and does not include {relay}"),
        ),
        (Outcome::CouldNotDecide, _) => (
            Outcome::CouldNotDecide,
            format!(
                "the SPF policy of {domain} could not be read completely, so membership of {relay} is unknown"
            ),
        ),
    }
}

/// DMARC discovery: `_dmarc.<domain>`, then the organisational domain (see [`dmarc`]).
async fn check_dmarc<D: Dns>(dns: &D, domain: &str) -> (Outcome, String) {
    let name = format!("_dmarc.{domain}");
    let records = match dns.txt(&name).await {
        // An error is not absence: never fall through to the parent (RFC 7489 §6.6.3).
        Err(e) => {
            return (
                Outcome::CouldNotDecide,
                format!("could not read the DMARC record at {name}: {e}"),
            );
        }
        Ok(answer) => answer,
    };
    if let dmarc::Found::Decided(o, r) = dmarc::judge(&name, records.records(), None) {
        return (o, r);
    }
    let Some(org) = dmarc::organisational_domain(domain) else {
        return (
            Outcome::Fail,
            format!(
                "no DMARC record at {name}; a mail operator must publish p=quarantine or p=reject"
            ),
        );
    };
    let org_name = format!("_dmarc.{org}");
    match dns.txt(&org_name).await {
        Err(e) => (
            Outcome::CouldNotDecide,
            format!(
                "no DMARC record at {name}, and could not read the organisational record at {org_name}: {e}"
            ),
        ),
        Ok(answer) => match dmarc::judge(&org_name, answer.records(), Some(domain)) {
            dmarc::Found::Decided(o, r) => (o, r),
            dmarc::Found::None => (
                Outcome::Fail,
                format!("no DMARC record at {name} or at the organisational domain's {org_name}"),
            ),
        },
    }
}

/// Splits declared selectors into valid, distinct ones to query and failure entries for the
/// rest (none given, too many, malformed).
fn plan_selectors(domain: &str, selectors: &[String]) -> (Vec<String>, Vec<Check>) {
    let fail = |subject: Option<String>, reason: String| Check {
        name: CheckName::Dkim,
        subject,
        outcome: Outcome::Fail,
        reason,
        fix: None,
    };
    if selectors.is_empty() {
        return (
            Vec::new(),
            vec![fail(
                None,
                "no DKIM selector was declared; at least one is required".to_owned(),
            )],
        );
    }
    if selectors.len() > MAX_SELECTORS {
        return (
            Vec::new(),
            vec![fail(
                None,
                format!(
                    "{} DKIM selectors were declared; at most {MAX_SELECTORS} are accepted",
                    selectors.len()
                ),
            )],
        );
    }
    let mut plan: Vec<String> = Vec::new();
    let mut early = Vec::new();
    for sel in selectors {
        match selector_problem(domain, sel) {
            Some(p) => early.push(fail(
                Some(tags::clip(sel)),
                format!("DKIM selector {:?} {p}", tags::clip(sel)),
            )),
            None => {
                if !plan.iter().any(|s| s.eq_ignore_ascii_case(sel)) {
                    plan.push(sel.clone());
                }
            }
        }
    }
    (plan, early)
}

/// Why `domain` cannot be checked: it must be a lowercase LDH A-label host name with at
/// least two labels and an alphabetic (or `xn--`) top label.
pub fn domain_problem(domain: &str) -> Option<&'static str> {
    if domain.is_empty() {
        return Some("is empty");
    }
    // `_atproto.<domain>` must still fit in a DNS name (253 characters).
    if domain.len() > 253 - "_atproto.".len() {
        return Some("is too long: _atproto.<domain> would exceed 253 characters");
    }
    if domain.ends_with('.') {
        return Some("must not end with a dot");
    }
    if !domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Some("must be a lowercase A-label host name (letters, digits, '-' and '.')");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Some("needs at least two labels");
    }
    if labels
        .iter()
        .any(|l| l.is_empty() || l.len() > 63 || l.starts_with('-') || l.ends_with('-'))
    {
        return Some("has an empty, over-long or hyphen-edged label");
    }
    let top = labels.last().copied().unwrap_or_default();
    if !top.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Some("has a top-level label that does not start with a letter");
    }
    None
}

/// Why `selector` cannot be queried: it must be dot-separated labels of letters, digits,
/// `-` and `_` (RFC 6376 §3.1), and fit in a DNS name under `._domainkey.<domain>`.
fn selector_problem(domain: &str, selector: &str) -> Option<&'static str> {
    if selector.is_empty() {
        return Some("is empty");
    }
    if !selector
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Some("may contain only letters, digits, '-', '_' and '.'");
    }
    if selector.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return Some("has an empty or over-long label");
    }
    if selector.len() + "._domainkey.".len() + domain.len() > 253 {
        return Some("makes the DNS name longer than 253 characters");
    }
    None
}

/// Entry points for `cargo fuzz` (`fuzz/`), compiled only into fuzz builds (cargo-fuzz sets
/// `--cfg fuzzing`), so the parsers stay private to this module everywhere else.
#[cfg(fuzzing)]
#[doc(hidden)]
#[allow(missing_docs, unreachable_pub)]
pub mod fuzzing {
    use super::*;

    /// Parses an SPF record, then audits it as the policy of a domain whose every name
    /// answers with this same record (so includes and redirects recurse into it) and has no
    /// MX or address records.
    pub fn spf(record: &[u8]) {
        let _ = spf::parse(record);
        let dns = Echo(record.to_vec());
        let audit = spf::audit(&dns, "fuzz.example", Some("relay.example"));
        let done = futures_util::FutureExt::now_or_never(audit)
            .expect("the echo resolver answers at once");
        assert!(!done.reason.is_empty());
    }

    /// Judges a DKIM key record.
    pub fn dkim(record: &[u8]) {
        let _ = dkim::judge_key(record);
        let (_, reason) = dkim::judge("s._domainkey.fuzz.example", &[record.to_vec()]);
        assert!(!reason.is_empty());
        let _ = dkim::rsa_modulus_bits(record);
    }

    /// Judges a DMARC record found at the domain, and as an organisational fallback.
    pub fn dmarc(record: &[u8]) {
        let _ = dmarc::is_dmarc_record(record);
        let _ = dmarc::judge("_dmarc.fuzz.example", &[record.to_vec()], None);
        let _ = dmarc::judge("_dmarc.example", &[record.to_vec()], Some("fuzz.example"));
    }

    /// Answers every TXT query with one record, every other query with no data.
    struct Echo(Vec<u8>);

    impl Dns for Echo {
        async fn txt(&self, _: &str) -> Result<Answer<Vec<u8>>, dns::Error> {
            Ok(Answer::Found(vec![self.0.clone()]))
        }
        async fn mx(&self, _: &str) -> Result<Answer<Mx>, dns::Error> {
            Ok(Answer::NoData)
        }
        async fn ip(&self, _: &str) -> Result<Answer<IpAddr>, dns::Error> {
            Ok(Answer::NoData)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// An in-memory [`Dns`] for unit tests: names not set are NXDOMAIN (NODATA if a set name
    /// lies below them), `fail` names time out.
    #[derive(Clone, Default)]
    pub(crate) struct MapDns {
        txt: HashMap<String, Vec<Vec<u8>>>,
        mx: HashMap<String, Vec<Mx>>,
        ip: HashMap<String, Vec<IpAddr>>,
        fail: HashSet<String>,
    }

    impl MapDns {
        pub(crate) fn txt(mut self, name: &str, records: &[&str]) -> Self {
            self.txt.insert(
                name.to_owned(),
                records.iter().map(|r| r.as_bytes().to_vec()).collect(),
            );
            self
        }
        /// `count` MX records `mx{i}.{name}`.
        pub(crate) fn mx(mut self, name: &str, count: usize) -> Self {
            let records = (0..count)
                .map(|i| Mx {
                    preference: 10,
                    exchange: format!("mx{i}.{name}"),
                })
                .collect();
            self.mx.insert(name.to_owned(), records);
            self
        }
        pub(crate) fn ip(mut self, name: &str) -> Self {
            self.ip
                .insert(name.to_owned(), vec!["11.22.33.44".parse().unwrap()]);
            self
        }
        pub(crate) fn fail(mut self, name: &str) -> Self {
            self.fail.insert(name.to_owned());
            self
        }

        fn answer<T: Clone>(
            &self,
            map: &HashMap<String, Vec<T>>,
            name: &str,
            rtype: &'static str,
        ) -> Result<Answer<T>, dns::Error> {
            if self.fail.contains(name) {
                return Err(dns::Error::Timeout {
                    name: name.to_owned(),
                    rtype,
                });
            }
            if let Some(v) = map.get(name).filter(|v| !v.is_empty()) {
                return Ok(Answer::Found(v.clone()));
            }
            let suffix = format!(".{name}");
            let exists = self
                .txt
                .keys()
                .chain(self.mx.keys())
                .chain(self.ip.keys())
                .any(|k| k == name || k.ends_with(&suffix));
            Ok(if exists {
                Answer::NoData
            } else {
                Answer::NxDomain
            })
        }
    }

    impl Dns for MapDns {
        async fn txt(&self, name: &str) -> Result<Answer<Vec<u8>>, dns::Error> {
            self.answer(&self.txt, name, "TXT")
        }
        async fn mx(&self, name: &str) -> Result<Answer<Mx>, dns::Error> {
            self.answer(&self.mx, name, "MX")
        }
        async fn ip(&self, name: &str) -> Result<Answer<IpAddr>, dns::Error> {
            self.answer(&self.ip, name, "A")
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn malformed_domains_are_refused_before_any_query() {
        assert_eq!(domain_problem("example.com"), None);
        assert_eq!(domain_problem("xn--bcher-kva.example"), None);
        assert_eq!(domain_problem("a-b.c0.example"), None);
        for bad in [
            "",
            "example",
            "Example.com",
            "example.com.",
            "a..b",
            "-a.example",
            "a-.example",
            "a_b.example",
            "1.2.3.4",
            "bücher.example",
            "a b.example",
            "example.123",
        ] {
            assert!(domain_problem(bad).is_some(), "{bad}");
        }
        assert!(domain_problem(&format!("{}.example", "a".repeat(64))).is_some());
        let long = format!("{}.example", vec!["a".repeat(60); 4].join("."));
        assert_eq!(long.len(), 251);
        assert!(domain_problem(&long).is_some());
        assert_eq!(selector_problem("example.com", "sel_1"), None);
        assert_eq!(selector_problem("example.com", "s1.rotation"), None);
        for bad in ["", "a..b", "a/b", "a b", ".a", "é", &"a".repeat(64)] {
            assert!(selector_problem("example.com", bad).is_some(), "{bad}");
        }
        let (plan, early) = plan_selectors(
            "d.test",
            &["a".to_owned(), "A".to_owned(), "b c".to_owned()],
        );
        assert_eq!(plan, vec!["a".to_owned()]);
        assert_eq!(early.len(), 1);
        assert_eq!(early[0].outcome, Outcome::Fail);
        let (plan, early) = plan_selectors("d.test", &[]);
        assert!(plan.is_empty() && early.len() == 1);
        let many: Vec<String> = (0..17).map(|i| format!("s{i}")).collect();
        let (plan, early) = plan_selectors("d.test", &many);
        assert!(plan.is_empty() && early[0].reason.contains("17"));
    }

    #[test]
    fn dmarc_checks_the_domain_then_its_organisational_domain_never_past_an_error() {
        let own = MapDns::default().txt("_dmarc.mail.example.test", &["v=DMARC1; p=reject"]);
        assert_eq!(
            block_on(check_dmarc(&own, "mail.example.test")).0,
            Outcome::Pass
        );
        let org = MapDns::default().txt(
            "_dmarc.example.test",
            &["v=DMARC1; p=reject; sp=quarantine"],
        );
        let (o, r) = block_on(check_dmarc(&org, "mail.example.test"));
        assert_eq!(o, Outcome::Pass, "{r}");
        assert!(r.contains("sp=quarantine"));
        // An error at the first name never falls through to the parent.
        let broken = org.clone().fail("_dmarc.mail.example.test");
        assert_eq!(
            block_on(check_dmarc(&broken, "mail.example.test")).0,
            Outcome::CouldNotDecide
        );
        // Unrelated TXT at the first name counts as no record.
        let unrelated = org.txt("_dmarc.mail.example.test", &["v=spf1 -all"]);
        assert_eq!(
            block_on(check_dmarc(&unrelated, "mail.example.test")).0,
            Outcome::Pass
        );
        let (o, r) = block_on(check_dmarc(&MapDns::default(), "example.test"));
        assert_eq!(o, Outcome::Fail);
        assert!(r.contains("_dmarc.example.test"), "{r}");
        let org_broken = MapDns::default().fail("_dmarc.example.test");
        assert_eq!(
            block_on(check_dmarc(&org_broken, "mail.example.test")).0,
            Outcome::CouldNotDecide
        );
        let (o, _) = block_on(check_dmarc(&MapDns::default(), "mail.example.test"));
        assert_eq!(o, Outcome::Fail);
    }

    #[test]
    fn mx_passes_with_one_usable_host_and_is_undecided_on_dns_errors() {
        let good = MapDns::default().mx("d.test", 2).ip("mx0.d.test");
        let (o, r) = block_on(mx::check(&good, "d.test"));
        assert_eq!(o, Outcome::Pass, "{r}");
        assert!(r.contains("mx1.d.test does not exist"), "{r}");
        let (o, _) = block_on(mx::check(&MapDns::default(), "d.test"));
        assert_eq!(o, Outcome::Fail);
        let (o, _) = block_on(mx::check(&MapDns::default().fail("d.test"), "d.test"));
        assert_eq!(o, Outcome::CouldNotDecide);
    }

    #[test]
    fn relay_membership_needs_the_include_in_a_passing_spf() {
        let audit = |outcome, at: Option<&str>| spf::Audit {
            outcome,
            reason: String::new(),
            relay_at: at.map(str::to_owned),
            lookups: 1,
        };
        assert_eq!(
            relay_entry("d.test", "r.test", &audit(Outcome::Pass, Some("x"))).0,
            Outcome::Pass
        );
        assert_eq!(
            relay_entry("d.test", "r.test", &audit(Outcome::Pass, None)).0,
            Outcome::Fail
        );
        assert_eq!(
            relay_entry("d.test", "r.test", &audit(Outcome::Fail, Some("x"))).0,
            Outcome::Fail
        );
        assert_eq!(
            relay_entry(
                "d.test",
                "r.test",
                &audit(Outcome::CouldNotDecide, Some("x"))
            )
            .0,
            Outcome::CouldNotDecide
        );
    }
}
