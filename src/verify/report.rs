//! The report: one shape for every view of a verification — getVerification's JSON, the
//! console, `labeler check`'s lines, the stored row. Each check passes, fails or could not
//! decide, with a reason naming the record, and for a failure a DNS can fix, the record to
//! publish ([`Fix`]). Pure data and the rules that combine it: the verdict, and the
//! confirmation of a failure by a second vantage point.

use serde::{Deserialize, Serialize};

use super::Fix;

/// The outcome of one check, or of a whole report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Checked and good.
    Pass,
    /// Checked and definitively bad (NXDOMAIN, NODATA, or a bad record).
    Fail,
    /// Not decided: a DNS error, a timeout, an identity service failure.
    CouldNotDecide,
}

impl Outcome {
    /// The wire and database spelling: `pass`, `fail`, `could-not-decide`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::CouldNotDecide => "could-not-decide",
        }
    }

    /// Parses [`Outcome::as_str`]'s spelling.
    pub fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "pass" => Outcome::Pass,
            "fail" => Outcome::Fail,
            "could-not-decide" => Outcome::CouldNotDecide,
            _ => return None,
        })
    }

    fn symbol(self) -> &'static str {
        match self {
            Outcome::Pass => "✓",
            Outcome::Fail => "✗",
            Outcome::CouldNotDecide => "?",
        }
    }

    pub(super) fn words(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::CouldNotDecide => "could not decide",
        }
    }
}

/// Which check an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckName {
    /// The attestation record itself, as confirmed at the author's PDS. Entries with this
    /// name are made by the manager (e.g. an invalid or unconfirmable record), never by
    /// [`super::Checker::check`].
    Record,
    /// `_atproto` TXT (or handle) links the domain to the DID.
    DomainControl,
    /// The domain has usable MX hosts.
    Mx,
    /// The SPF policy is valid and not permissive.
    Spf,
    /// One declared DKIM selector has a good key.
    Dkim,
    /// The DMARC policy is enforced.
    Dmarc,
    /// The SPF policy includes the relay (informational; not part of the verdict).
    RelayMember,
}

impl CheckName {
    /// The wire spelling (`domain-control`, `dkim`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            CheckName::Record => "record",
            CheckName::DomainControl => "domain-control",
            CheckName::Mx => "mx",
            CheckName::Spf => "spf",
            CheckName::Dkim => "dkim",
            CheckName::Dmarc => "dmarc",
            CheckName::RelayMember => "relay-member",
        }
    }
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// Which check.
    pub name: CheckName,
    /// What it was about when a check runs more than once (the DKIM selector).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub subject: Option<String>,
    /// The result.
    pub outcome: Outcome,
    /// A sentence naming the record and what is right or wrong with it.
    pub reason: String,
    /// For a failure that a DNS record fixes: that record (see [`Fix`]).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fix: Option<Fix>,
}

/// The result of checking one attestation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The attesting DID.
    pub did: String,
    /// The attested domain.
    pub domain: String,
    /// When the check finished ([`crate::label::now_cts`] format).
    pub checked_at: String,
    /// Pass only if every check except relay membership passed; fail if any failed;
    /// otherwise could not decide.
    pub verdict: Outcome,
    /// One entry per check (one per DKIM selector).
    pub checks: Vec<Check>,
    /// Who confirmed a failure through a second vantage point (e.g. "the resolvers
    /// 10.0.0.2:53"), when the verdict is a confirmed failure.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub confirmed_by: Option<String>,
    /// What the labeler did with the verdict beyond the rules, in words (a withdrawal held by
    /// the breaker, labels withheld because the account is inactive).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub notes: Vec<String>,
}

impl Report {
    /// True if the relay-membership entry passed (false when no relay is configured).
    pub fn relay_member(&self) -> bool {
        self.checks
            .iter()
            .any(|c| c.name == CheckName::RelayMember && c.outcome == Outcome::Pass)
    }

    /// One line per check (`✓`/`✗`/`?`, the name, the subject, the reason), then the
    /// verdict line.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(c.outcome.symbol());
            out.push(' ');
            out.push_str(c.name.as_str());
            if let Some(s) = &c.subject {
                out.push_str(&format!(" ({s})"));
            }
            out.push_str(": ");
            out.push_str(&c.reason);
            out.push('\n');
        }
        out.push_str(&format!(
            "verdict for {} ({}): {}\n",
            self.domain,
            self.did,
            self.verdict.words()
        ));
        out
    }
}

/// Where a check's DNS answers come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vantage {
    /// The configured resolvers, with their cache: ordinary checks.
    Cached,
    /// The configured resolvers, bypassing every cache (DNS and DID documents): a second look
    /// before a failure is acted on.
    Fresh,
    /// The independent path (the `confirmDnsServers`, or each zone's authoritative servers),
    /// without caches: confirms a failure before a label is withdrawn.
    Confirm,
}

/// `first`'s checks, each failure kept only where `second` (the same checks from another
/// vantage point, `by`) fails it too; a failure the other side does not see becomes "could not
/// decide", naming both answers. Two vantage points must agree before anything is withdrawn,
/// as Let's Encrypt's multi-perspective validation requires for issuance.
pub fn confirm(first: &Report, second: &Report, by: &str) -> Report {
    let checks: Vec<Check> = first
        .checks
        .iter()
        .map(|c| {
            if c.outcome != Outcome::Fail {
                return c.clone();
            }
            let other = second
                .checks
                .iter()
                .find(|o| o.name == c.name && o.subject == c.subject);
            match other {
                Some(o) if o.outcome == Outcome::Fail => o.clone(),
                Some(o) => Check {
                    outcome: Outcome::CouldNotDecide,
                    reason: format!(
                        "{}; not confirmed through {by}, which saw: {}",
                        c.reason, o.reason
                    ),
                    fix: None,
                    ..c.clone()
                },
                None => Check {
                    outcome: Outcome::CouldNotDecide,
                    reason: format!("{}; not confirmed through {by}", c.reason),
                    fix: None,
                    ..c.clone()
                },
            }
        })
        .collect();
    let verdict = verdict(&checks);
    Report {
        did: first.did.clone(),
        domain: first.domain.clone(),
        checked_at: second.checked_at.clone(),
        verdict,
        checks,
        confirmed_by: (verdict == Outcome::Fail).then(|| by.to_owned()),
        notes: first.notes.clone(),
    }
}

/// The verdict over `checks` (see [`Report::verdict`]).
fn verdict(checks: &[Check]) -> Outcome {
    let mut relevant = checks
        .iter()
        .filter(|c| c.name != CheckName::RelayMember)
        .peekable();
    if relevant.peek().is_none() {
        return Outcome::CouldNotDecide;
    }
    let outcomes: Vec<Outcome> = relevant.map(|c| c.outcome).collect();
    if outcomes.contains(&Outcome::Fail) {
        Outcome::Fail
    } else if outcomes.iter().all(|o| *o == Outcome::Pass) {
        Outcome::Pass
    } else {
        Outcome::CouldNotDecide
    }
}

pub(super) fn finish(did: &str, domain: &str, checks: Vec<Check>) -> Report {
    Report {
        did: clip_input(did),
        domain: clip_input(domain),
        checked_at: crate::label::now_cts(),
        verdict: verdict(&checks),
        checks,
        confirmed_by: None,
        notes: Vec::new(),
    }
}

/// Inputs are echoed into reports; keep hostile ones bounded.
fn clip_input(s: &str) -> String {
    s.chars().take(2048).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: CheckName, outcome: Outcome) -> Check {
        Check {
            name,
            subject: None,
            outcome,
            reason: "r".to_owned(),
            fix: None,
        }
    }

    #[test]
    fn any_fail_fails_any_undecided_is_undecided_and_relay_alone_decides_nothing() {
        use CheckName::*;
        use Outcome::*;
        assert_eq!(verdict(&[check(Spf, Pass), check(Mx, Pass)]), Pass);
        assert_eq!(
            verdict(&[check(Spf, Pass), check(Mx, CouldNotDecide)]),
            CouldNotDecide
        );
        assert_eq!(
            verdict(&[check(Spf, Fail), check(Mx, CouldNotDecide)]),
            Fail
        );
        assert_eq!(verdict(&[check(Spf, Pass), check(RelayMember, Fail)]), Pass);
        assert_eq!(verdict(&[check(RelayMember, Pass)]), CouldNotDecide);
        assert_eq!(verdict(&[]), CouldNotDecide);
    }

    #[test]
    fn a_failure_stands_only_where_the_second_vantage_point_fails_it_too() {
        use CheckName::*;
        use Outcome::*;
        let entry = |name, subject: Option<&str>, outcome, reason: &str| Check {
            name,
            subject: subject.map(str::to_owned),
            outcome,
            reason: reason.to_owned(),
            fix: None,
        };
        let report = |checks: Vec<Check>| finish("did:plc:x", "example.test", checks);
        let first = report(vec![
            entry(Mx, None, Pass, "mx ok"),
            entry(Dkim, Some("a"), Fail, "no key at a"),
            entry(Dmarc, None, Fail, "no DMARC record"),
        ]);
        // The other side agrees about DMARC only: DKIM becomes could-not-decide.
        let second = report(vec![
            entry(Mx, None, Pass, "mx ok"),
            entry(Dkim, Some("a"), Pass, "key at a is fine"),
            entry(Dmarc, None, Fail, "no DMARC record either"),
        ]);
        let r = confirm(&first, &second, "the second resolvers");
        assert_eq!(r.verdict, Fail);
        assert_eq!(r.confirmed_by.as_deref(), Some("the second resolvers"));
        assert_eq!(r.checks[1].outcome, CouldNotDecide);
        assert!(
            r.checks[1]
                .reason
                .contains("not confirmed through the second resolvers")
                && r.checks[1].reason.contains("key at a is fine"),
            "{}",
            r.checks[1].reason
        );
        assert_eq!(r.checks[2].reason, "no DMARC record either");
        // Nothing agreed: nothing fails, nothing is confirmed.
        let healthy = report(vec![
            entry(Mx, None, Pass, "mx ok"),
            entry(Dkim, Some("a"), Pass, "fine"),
            entry(Dmarc, None, CouldNotDecide, "timed out"),
        ]);
        let r = confirm(&first, &healthy, "x");
        assert_eq!(r.verdict, CouldNotDecide);
        assert_eq!(r.confirmed_by, None);
    }

    #[test]
    fn reports_render_as_json_and_text() {
        let report = Report {
            did: "did:plc:x".to_owned(),
            domain: "example.test".to_owned(),
            checked_at: "2026-01-01T00:00:00.000Z".to_owned(),
            verdict: Outcome::CouldNotDecide,
            checks: vec![
                Check {
                    name: CheckName::DomainControl,
                    subject: None,
                    outcome: Outcome::Pass,
                    reason: "ok".to_owned(),
                    fix: None,
                },
                Check {
                    name: CheckName::Dkim,
                    subject: Some("sel1".to_owned()),
                    outcome: Outcome::CouldNotDecide,
                    reason: "timed out".to_owned(),
                    fix: None,
                },
                Check {
                    name: CheckName::RelayMember,
                    subject: None,
                    outcome: Outcome::Fail,
                    reason: "no".to_owned(),
                    fix: None,
                },
            ],
            confirmed_by: None,
            notes: Vec::new(),
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["checkedAt"], "2026-01-01T00:00:00.000Z");
        assert_eq!(json["verdict"], "could-not-decide");
        assert_eq!(json["checks"][0]["name"], "domain-control");
        assert!(json["checks"][0].get("subject").is_none());
        assert_eq!(json["checks"][1]["subject"], "sel1");
        assert_eq!(json["checks"][2]["name"], "relay-member");
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
        assert!(!report.relay_member());
        let text = report.render_text();
        assert_eq!(
            text,
            "✓ domain-control: ok\n? dkim (sel1): timed out\n✗ relay-member: no\nverdict for example.test (did:plc:x): could not decide\n"
        );
    }
}
