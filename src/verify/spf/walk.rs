//! The audit: a walk of the whole include/redirect tree the way `check_host()` would for an
//! address that matches nothing (RFC 7208 §4.6.4 limits, §5.2 include, §6.1 redirect), judging
//! every record it reaches for policies that let arbitrary hosts pass.

use std::future::Future;
use std::pin::Pin;

use super::record::{Mechanism, Qualifier, SpfRecord, is_spf_record, parse};
use super::{
    IP4_MIN_PREFIX, IP6_MIN_PREFIX, MAX_IP4_SPACE, MAX_IP6_SPACE, MAX_LOOKUPS, MAX_MX,
    MAX_VOID_LOOKUPS,
};
use crate::dns::Answer;
use crate::verify::{Dns, Outcome};

/// How a record (after its redirect chain) ends for an address that matched nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ending {
    /// An `all` with this qualifier, as written, in the record at this name.
    All(Qualifier, String, String),
    /// No `all` and no `redirect`: neutral (RFC 7208 §4.7), at this name.
    Default(String),
    /// Not known (DNS error, skipped, or a permerror below).
    Unknown,
}

/// What a walk found about one record and everything below it.
#[derive(Clone, Debug)]
struct Summary {
    /// Why arbitrary hosts pass, if they do (the first reason found).
    opens: Option<String>,
    ending: Ending,
}

impl Summary {
    fn unknown() -> Summary {
        Summary {
            opens: None,
            ending: Ending::Unknown,
        }
    }
}

/// The result of an SPF audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Audit {
    pub(crate) outcome: Outcome,
    pub(crate) reason: String,
    /// Where the relay include was found ("the SPF record at …"), if it was.
    pub(crate) relay_at: Option<String>,
    /// DNS-querying terms counted.
    pub(crate) lookups: u32,
}

/// Audits the SPF policy of `domain`. `relay` is the relay's include name, if configured.
pub(crate) async fn audit<D: Dns>(dns: &D, domain: &str, relay: Option<&str>) -> Audit {
    let mut walk = Walk {
        dns,
        top: domain.to_owned(),
        relay,
        lookups: 0,
        voids: 0,
        problems: Vec::new(),
        errors: Vec::new(),
        relay_at: None,
        ip4_space: 0,
        ip6_space: 0,
        stopped: false,
        stack: Vec::new(),
    };
    let summary = walk
        .record(domain.to_owned(), Role::Top, Vec::new(), true)
        .await;
    if walk.ip4_space >= MAX_IP4_SPACE {
        walk.problems.push(format!(
            "SPF policy of {domain} authorises {} IPv4 addresses in total, at least a /8",
            walk.ip4_space
        ));
    }
    if walk.ip6_space >= MAX_IP6_SPACE {
        walk.problems.push(format!(
            "SPF policy of {domain} authorises at least a /{IP6_MIN_PREFIX} of IPv6 space in total"
        ));
    }
    let mut reasons: Vec<String> = summary.opens.into_iter().collect();
    reasons.extend(walk.problems.iter().cloned());
    let ending_problem = match &summary.ending {
        Ending::All(Qualifier::Neutral, text, at) => Some(format!(
            "SPF record at {at}{} ends in {text:?}, which leaves every other host neutral instead of failing it",
            redirected(domain, at)
        )),
        Ending::Default(at) => Some(format!(
            "SPF record at {at}{} has no \"all\" term and no redirect, so hosts it does not list get a neutral result",
            redirected(domain, at)
        )),
        _ => None,
    };
    reasons.extend(ending_problem);
    let relay_at = walk.relay_at.clone();
    if let Some(first) = reasons.first() {
        let more = match reasons.len() {
            1 => String::new(),
            2 => " (and 1 other problem)".to_owned(),
            n => format!(" (and {} other problems)", n - 1),
        };
        return Audit {
            outcome: Outcome::Fail,
            reason: format!("{first}{more}"),
            relay_at,
            lookups: walk.lookups,
        };
    }
    if let Some(error) = walk.errors.first() {
        return Audit {
            outcome: Outcome::CouldNotDecide,
            reason: format!("could not read the whole SPF policy of {domain}: {error}"),
            relay_at,
            lookups: walk.lookups,
        };
    }
    match summary.ending {
        Ending::All(_, text, at) => Audit {
            outcome: Outcome::Pass,
            reason: format!(
                "SPF record at {domain} is valid and ends in {text:?}{}; {} of {MAX_LOOKUPS} DNS lookups",
                if at == domain {
                    String::new()
                } else {
                    format!(" (in the record at {at}, reached by redirect)")
                },
                walk.lookups
            ),
            relay_at,
            lookups: walk.lookups,
        },
        // Unreachable without an error or a problem; never pass on an unknown ending.
        Ending::Default(_) | Ending::Unknown => Audit {
            outcome: Outcome::CouldNotDecide,
            reason: format!("could not determine how the SPF policy of {domain} ends"),
            relay_at,
            lookups: walk.lookups,
        },
    }
}

fn redirected(top: &str, at: &str) -> String {
    if at == top {
        String::new()
    } else {
        format!(" (reached from {top} by redirect)")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Top,
    Include,
    Redirect,
}

struct Walk<'a, D> {
    dns: &'a D,
    top: String,
    relay: Option<&'a str>,
    lookups: u32,
    voids: u32,
    /// Definitive problems (permerrors, loops, unauditable terms), in discovery order.
    problems: Vec<String>,
    /// DNS errors; after the first, no further queries are made.
    errors: Vec<String>,
    relay_at: Option<String>,
    ip4_space: u128,
    ip6_space: u128,
    /// The lookup limit was exceeded: nothing more is evaluated.
    stopped: bool,
    /// Names on the current include/redirect path (loop detection).
    stack: Vec<String>,
}

type Boxed<'f, T> = Pin<Box<dyn Future<Output = T> + Send + 'f>>;

impl<'a, D: Dns> Walk<'a, D> {
    /// " (reached from top via include:a → redirect=b)" for a non-top record.
    fn via(&self, path: &[String]) -> String {
        if path.is_empty() {
            String::new()
        } else {
            format!(" (reached from {} via {})", self.top, path.join(" → "))
        }
    }

    /// Counts one DNS-querying term; false (and a problem, once) past the limit.
    fn count_lookup(&mut self) -> bool {
        if self.stopped {
            return false;
        }
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            self.problems.push(format!(
                "SPF policy of {} needs more than {MAX_LOOKUPS} DNS lookups, a permanent error (RFC 7208 §4.6.4)",
                self.top
            ));
            self.stopped = true;
            return false;
        }
        true
    }

    fn void(&mut self, what: &str) {
        self.voids += 1;
        if self.voids == MAX_VOID_LOOKUPS + 1 {
            self.problems.push(format!(
                "SPF policy of {} has more than {MAX_VOID_LOOKUPS} lookups that find nothing (the last: {what}), a permanent error (RFC 7208 §4.6.4)",
                self.top
            ));
        }
    }

    fn error(&mut self, e: &crate::dns::Error) {
        self.errors.push(e.to_string());
    }

    /// Walks the record at `name`. `pass` is whether a match here gives the sender a pass
    /// (false below a non-pass-qualified include).
    fn record<'f>(
        &'f mut self,
        name: String,
        role: Role,
        path: Vec<String>,
        pass: bool,
    ) -> Boxed<'f, Summary>
    where
        'a: 'f,
    {
        Box::pin(async move {
            if self.stopped {
                return Summary::unknown();
            }
            let via = self.via(&path);
            let answer = if self.errors.is_empty() {
                self.dns.txt(&name).await
            } else {
                return Summary::unknown();
            };
            let records = match answer {
                Err(e) => {
                    self.error(&e);
                    return Summary::unknown();
                }
                Ok(answer) => answer,
            };
            let spf: Vec<&Vec<u8>> = records
                .records()
                .iter()
                .filter(|r| is_spf_record(r))
                .collect();
            let record = match spf.as_slice() {
                [one] => *one,
                [] => {
                    let why = match records {
                        Answer::NxDomain => "the name does not exist".to_owned(),
                        Answer::NoData => "the name has no TXT records".to_owned(),
                        Answer::Found(v) => {
                            format!("none of its {} TXT records starts with \"v=spf1\"", v.len())
                        }
                    };
                    if role != Role::Top {
                        self.void(&name);
                    }
                    self.problems.push(match role {
                        Role::Top => format!("no SPF record at {name}: {why}"),
                        _ => format!(
                            "no SPF record at {name}{via}: {why}; a missing include or redirect target is a permanent error"
                        ),
                    });
                    return Summary::unknown();
                }
                many => {
                    self.problems.push(format!(
                        "{name}{via} publishes {} SPF records; receivers treat that as a permanent error (RFC 7208 §4.5)",
                        many.len()
                    ));
                    return Summary::unknown();
                }
            };
            let parsed = match parse(record) {
                Ok(p) => p,
                Err(e) => {
                    self.problems
                        .push(format!("SPF record at {name}{via} is invalid: {e}"));
                    return Summary::unknown();
                }
            };
            self.stack.push(name.clone());
            let summary = self.terms(&name, &parsed, &path, pass).await;
            self.stack.pop();
            summary
        })
    }

    /// Evaluates the terms of one parsed record.
    async fn terms(
        &mut self,
        name: &str,
        record: &SpfRecord,
        path: &[String],
        pass: bool,
    ) -> Summary {
        let via = self.via(path);
        let mut opens: Option<String> = None;
        let mut ending: Option<Ending> = None;
        for d in &record.directives {
            if self.stopped {
                return Summary {
                    opens,
                    ending: Ending::Unknown,
                };
            }
            let passes = pass && d.qualifier == Qualifier::Pass;
            let mut open = |why: String| {
                if passes && opens.is_none() {
                    opens = Some(format!("SPF record at {name}{via} {why}"));
                }
            };
            match &d.mechanism {
                Mechanism::All => {
                    if d.qualifier == Qualifier::Pass {
                        open(if d.text.starts_with('+') {
                            "ends in \"+all\", which authorises every host on the internet"
                                .to_owned()
                        } else {
                            format!(
                                "ends in a bare {:?} (the same as \"+all\"), which authorises every host on the internet",
                                d.text
                            )
                        });
                    }
                    ending = Some(Ending::All(d.qualifier, d.text.clone(), name.to_owned()));
                    break; // terms after "all" are never evaluated
                }
                Mechanism::Ip4(_, len) => {
                    if *len < IP4_MIN_PREFIX {
                        open(format!(
                            "authorises {:?}, a range wider than /{IP4_MIN_PREFIX}",
                            d.text
                        ));
                    }
                    if passes {
                        self.ip4_space = self
                            .ip4_space
                            .saturating_add(1u128 << (32 - u32::from(*len)));
                    }
                }
                Mechanism::Ip6(_, len) => {
                    if *len < IP6_MIN_PREFIX {
                        open(format!(
                            "authorises {:?}, a range wider than /{IP6_MIN_PREFIX}",
                            d.text
                        ));
                    }
                    if passes {
                        let size = 128 - u32::from(*len);
                        let add = if size >= 128 {
                            u128::MAX
                        } else {
                            1u128 << size
                        };
                        self.ip6_space = self.ip6_space.saturating_add(add);
                    }
                }
                Mechanism::A(spec, v4, v6) | Mechanism::Mx(spec, v4, v6) => {
                    let is_mx = matches!(d.mechanism, Mechanism::Mx(..));
                    if v4.is_some_and(|l| l < IP4_MIN_PREFIX)
                        || v6.is_some_and(|l| l < IP6_MIN_PREFIX)
                    {
                        open(format!(
                            "authorises {:?}, which widens every address of that name to a huge range and so matches almost any host",
                            d.text
                        ));
                    }
                    if !self.count_lookup() {
                        break;
                    }
                    let target = match spec {
                        None => Some(name.to_owned()),
                        Some(s) => s.name(),
                    };
                    if let Some(target) = target
                        && self.errors.is_empty()
                    {
                        if is_mx {
                            match self.dns.mx(&target).await {
                                Err(e) => self.error(&e),
                                Ok(Answer::Found(list)) if list.len() > MAX_MX => {
                                    self.problems.push(format!(
                                        "SPF record at {name}{via} uses {:?}, but {target} has {} MX records (more than {MAX_MX} is a permanent error, RFC 7208 §4.6.4)",
                                        d.text,
                                        list.len()
                                    ));
                                }
                                Ok(Answer::Found(_)) => {}
                                Ok(_) => self.void(&format!("mx:{target}")),
                            }
                        } else {
                            match self.dns.ip(&target).await {
                                Err(e) => self.error(&e),
                                Ok(Answer::Found(_)) => {}
                                Ok(_) => self.void(&format!("a:{target}")),
                            }
                        }
                    }
                }
                Mechanism::Ptr(_) => {
                    // Depends on the client address; counts as a lookup (RFC 7208 §5.5).
                    if !self.count_lookup() {
                        break;
                    }
                }
                Mechanism::Exists(spec) => {
                    if !spec.has_macros {
                        open(format!(
                            "authorises {:?} without macros, which matches every host whenever that name resolves",
                            d.text
                        ));
                    }
                    if !self.count_lookup() {
                        break;
                    }
                    if let Some(target) = spec.name()
                        && self.errors.is_empty()
                    {
                        match self.dns.ip(&target).await {
                            Err(e) => self.error(&e),
                            Ok(Answer::Found(_)) => {}
                            Ok(_) => self.void(&format!("exists:{target}")),
                        }
                    }
                }
                Mechanism::Include(spec) => {
                    if !self.count_lookup() {
                        break;
                    }
                    let Some(target) = spec.name() else {
                        self.problems.push(format!(
                            "SPF record at {name}{via} uses {:?}, whose macros make the policy impossible to audit",
                            d.text
                        ));
                        continue;
                    };
                    if passes && self.relay == Some(target.as_str()) && self.relay_at.is_none() {
                        self.relay_at = Some(format!("the SPF record at {name}{via}"));
                    }
                    if self.stack.contains(&target) {
                        self.problems.push(format!(
                            "SPF record at {name}{via} includes {target}, which is already being evaluated: a loop"
                        ));
                        continue;
                    }
                    let mut child_path = path.to_vec();
                    child_path.push(format!("include:{target}"));
                    let child = self.record(target, Role::Include, child_path, passes).await;
                    // An include matches only when the included policy passes (§5.2).
                    if passes && opens.is_none() {
                        opens = child.opens;
                    }
                }
            }
        }
        if self.stopped {
            // The limit cut this record short: how it ends is unknown.
            return Summary {
                opens,
                ending: Ending::Unknown,
            };
        }
        if let Some(ending) = ending {
            return Summary { opens, ending };
        }
        let Some(spec) = &record.redirect else {
            return Summary {
                opens,
                ending: Ending::Default(name.to_owned()),
            };
        };
        if !self.count_lookup() {
            return Summary {
                opens,
                ending: Ending::Unknown,
            };
        }
        let Some(target) = spec.name() else {
            self.problems.push(format!(
                "SPF record at {name}{via} uses \"redirect={}\", whose macros make the policy impossible to audit",
                spec.text
            ));
            return Summary {
                opens,
                ending: Ending::Unknown,
            };
        };
        if self.stack.contains(&target) {
            self.problems.push(format!(
                "SPF record at {name}{via} redirects to {target}, which is already being evaluated: a loop"
            ));
            return Summary {
                opens,
                ending: Ending::Unknown,
            };
        }
        let mut child_path = path.to_vec();
        child_path.push(format!("redirect={target}"));
        let child = self.record(target, Role::Redirect, child_path, pass).await;
        Summary {
            opens: opens.or(child.opens),
            ending: child.ending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::tests::MapDns;
    use proptest::prelude::*;

    fn run(dns: &MapDns, relay: Option<&str>) -> Audit {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(audit(dns, "example.test", relay))
    }

    fn fails_with(dns: &MapDns, needle: &str) {
        let a = run(dns, None);
        assert_eq!(a.outcome, Outcome::Fail, "{a:?}");
        assert!(
            a.reason.contains(needle),
            "{needle:?} not in {:?}",
            a.reason
        );
    }

    #[test]
    fn judges_the_top_record() {
        let ok = MapDns::default().txt("example.test", &["v=spf1 ip4:192.0.2.0/24 -all"]);
        let a = run(&ok, None);
        assert_eq!(a.outcome, Outcome::Pass, "{a:?}");
        assert!(a.reason.contains("example.test") && a.reason.contains("-all"));
        let soft = MapDns::default()
            .txt("example.test", &["v=spf1 mx ~all"])
            .mx("example.test", 1);
        assert_eq!(run(&soft, None).outcome, Outcome::Pass);

        fails_with(
            &MapDns::default().txt("example.test", &["v=spf1 +all"]),
            "\"+all\"",
        );
        fails_with(
            &MapDns::default().txt("example.test", &["v=spf1 all"]),
            "bare \"all\"",
        );
        fails_with(
            &MapDns::default().txt("example.test", &["v=spf1 ?all"]),
            "\"?all\"",
        );
        fails_with(
            &MapDns::default().txt("example.test", &["v=spf1 ip4:192.0.2.1"]),
            "no \"all\"",
        );
        fails_with(
            &MapDns::default().txt("example.test", &["v=spf1 ip4:0.0.0.0/0 -all"]),
            "ip4:0.0.0.0/0",
        );
        fails_with(
            &MapDns::default().txt("example.test", &["v=spf1 ip4:10.0.0.0/7 -all"]),
            "wider than /8",
        );
        fails_with(
            &MapDns::default().txt("example.test", &["v=spf1 ip6:::/0 -all"]),
            "ip6:::/0",
        );
        fails_with(
            &MapDns::default()
                .txt("example.test", &["v=spf1 a/0 -all"])
                .ip("example.test"),
            "a/0",
        );
        fails_with(
            &MapDns::default()
                .txt("example.test", &["v=spf1 mx/0 -all"])
                .mx("example.test", 1),
            "mx/0",
        );
        fails_with(
            &MapDns::default()
                .txt("example.test", &["v=spf1 exists:always.example.test -all"])
                .ip("always.example.test"),
            "without macros",
        );
        fails_with(
            &MapDns::default().txt(
                "example.test",
                &["v=spf1 ip4:10.0.0.0/8 ip4:11.0.0.0/8 -all"],
            ),
            "IPv4 addresses in total",
        );
        fails_with(&MapDns::default(), "no SPF record at example.test");
        fails_with(
            &MapDns::default().txt("example.test", &["hello"]),
            "no SPF record at example.test",
        );
        fails_with(
            &MapDns::default().txt("example.test", &["v=spf1 -all", "v=spf1 ~all"]),
            "2 SPF records",
        );
        fails_with(
            &MapDns::default().txt("example.test", &["v=spf1 ip4:1.2.3.4~all"]),
            "is invalid",
        );
        // A permissive term after "all" is never evaluated.
        let after = MapDns::default().txt("example.test", &["v=spf1 -all +all"]);
        assert_eq!(run(&after, None).outcome, Outcome::Pass);
        // A non-pass qualifier on a wide range is not permissive.
        let wide_fail = MapDns::default().txt("example.test", &["v=spf1 -ip4:0.0.0.0/0 -all"]);
        assert_eq!(run(&wide_fail, None).outcome, Outcome::Pass);
    }

    #[test]
    fn follows_includes_and_redirects() {
        let open_include = MapDns::default()
            .txt("example.test", &["v=spf1 include:spf.bad.test -all"])
            .txt("spf.bad.test", &["v=spf1 +all"]);
        fails_with(
            &open_include,
            "spf.bad.test (reached from example.test via include:spf.bad.test) ends in \"+all\"",
        );

        // An included "?all" or missing "all" only means "no match".
        let neutral_include = MapDns::default()
            .txt("example.test", &["v=spf1 include:spf.ok.test -all"])
            .txt("spf.ok.test", &["v=spf1 ip4:192.0.2.0/24 ?all"]);
        assert_eq!(run(&neutral_include, None).outcome, Outcome::Pass);

        let open_redirect = MapDns::default()
            .txt("example.test", &["v=spf1 redirect=spf.bad.test"])
            .txt("spf.bad.test", &["v=spf1 ip4:192.0.2.0/24 ?all"]);
        fails_with(
            &open_redirect,
            "spf.bad.test (reached from example.test by redirect) ends in \"?all\"",
        );

        let good_redirect = MapDns::default()
            .txt("example.test", &["v=spf1 redirect=spf.ok.test"])
            .txt("spf.ok.test", &["v=spf1 ip4:192.0.2.0/24 -all"]);
        let a = run(&good_redirect, None);
        assert_eq!(a.outcome, Outcome::Pass, "{a:?}");

        // redirect is ignored when there is an "all".
        let ignored = MapDns::default().txt("example.test", &["v=spf1 -all redirect=spf.bad.test"]);
        assert_eq!(run(&ignored, None).outcome, Outcome::Pass);

        let deep = MapDns::default()
            .txt("example.test", &["v=spf1 include:a.test -all"])
            .txt("a.test", &["v=spf1 include:b.test ?all"])
            .txt("b.test", &["v=spf1 ip4:0.0.0.0/1 -all"]);
        fails_with(
            &deep,
            "b.test (reached from example.test via include:a.test → include:b.test)",
        );

        let missing = MapDns::default().txt("example.test", &["v=spf1 include:gone.test -all"]);
        fails_with(&missing, "no SPF record at gone.test");

        let looped = MapDns::default()
            .txt("example.test", &["v=spf1 include:a.test -all"])
            .txt("a.test", &["v=spf1 include:example.test -all"]);
        fails_with(&looped, "loop");

        let macro_include =
            MapDns::default().txt("example.test", &["v=spf1 include:%{i}.x.test -all"]);
        fails_with(&macro_include, "impossible to audit");
    }

    #[test]
    fn enforces_lookup_limits() {
        let mut dns = MapDns::default();
        let mut top = String::from("v=spf1");
        for i in 0..11 {
            top.push_str(&format!(" include:i{i}.test"));
            dns = dns.txt(&format!("i{i}.test"), &["v=spf1 ip4:192.0.2.1 -all"]);
        }
        top.push_str(" -all");
        let a = run(&dns.txt("example.test", &[&top]), None);
        assert_eq!(a.outcome, Outcome::Fail);
        assert!(a.reason.contains("more than 10 DNS lookups"), "{a:?}");
        assert!(!a.reason.contains("other problem"), "{a:?}");

        // Cumulative across includes: 5 + 1 + 5.
        let nested = MapDns::default()
            .txt("example.test", &["v=spf1 a a a a a include:n.test -all"])
            .txt("n.test", &["v=spf1 a a a a a -all"])
            .ip("example.test")
            .ip("n.test");
        fails_with(&nested, "more than 10 DNS lookups");

        let ten = MapDns::default()
            .txt("example.test", &["v=spf1 a a a a include:n.test -all"])
            .txt("n.test", &["v=spf1 a a a a a -all"])
            .ip("example.test")
            .ip("n.test");
        let a = run(&ten, None);
        assert_eq!(a.outcome, Outcome::Pass, "{a:?}");
        assert_eq!(a.lookups, 10);

        let voids = MapDns::default().txt(
            "example.test",
            &["v=spf1 a:x1.test a:x2.test a:x3.test -all"],
        );
        fails_with(&voids, "more than 2 lookups that find nothing");
        let two_voids = MapDns::default().txt("example.test", &["v=spf1 a:x1.test a:x2.test -all"]);
        assert_eq!(run(&two_voids, None).outcome, Outcome::Pass);
    }

    #[test]
    fn dns_errors_never_fail() {
        let broken = MapDns::default()
            .txt("example.test", &["v=spf1 include:broken.test -all"])
            .fail("broken.test");
        let a = run(&broken, None);
        assert_eq!(a.outcome, Outcome::CouldNotDecide, "{a:?}");
        assert!(a.reason.contains("broken.test"), "{a:?}");
        assert_eq!(
            run(&MapDns::default().fail("example.test"), None).outcome,
            Outcome::CouldNotDecide
        );
        // A redirect target that cannot be read leaves the ending unknown.
        let redirect = MapDns::default()
            .txt("example.test", &["v=spf1 redirect=broken.test"])
            .fail("broken.test");
        assert_eq!(run(&redirect, None).outcome, Outcome::CouldNotDecide);
        // A problem independent of the error still fails.
        let both = MapDns::default()
            .txt("example.test", &["v=spf1 include:broken.test +all"])
            .fail("broken.test");
        assert_eq!(run(&both, None).outcome, Outcome::Fail);
    }

    #[test]
    fn finds_the_relay_include() {
        let direct = MapDns::default()
            .txt("example.test", &["v=spf1 include:relay.test -all"])
            .txt("relay.test", &["v=spf1 ip4:192.0.2.0/24 -all"]);
        let a = run(&direct, Some("relay.test"));
        assert_eq!(a.outcome, Outcome::Pass);
        assert_eq!(
            a.relay_at.as_deref(),
            Some("the SPF record at example.test")
        );
        let nested = MapDns::default()
            .txt("example.test", &["v=spf1 include:_spf.example.test -all"])
            .txt("_spf.example.test", &["v=spf1 include:Relay.Test. ~all"])
            .txt("relay.test", &["v=spf1 ip4:192.0.2.0/24 -all"]);
        let a = run(&nested, Some("relay.test"));
        assert!(a.relay_at.unwrap().contains("_spf.example.test"));
        let negated = MapDns::default()
            .txt("example.test", &["v=spf1 -include:relay.test -all"])
            .txt("relay.test", &["v=spf1 ip4:192.0.2.0/24 -all"]);
        assert_eq!(run(&negated, Some("relay.test")).relay_at, None);
        let after_all = MapDns::default().txt("example.test", &["v=spf1 -all include:relay.test"]);
        assert_eq!(run(&after_all, Some("relay.test")).relay_at, None);
    }

    proptest! {
        #[test]
        fn audit_never_panics_and_names_the_record(s in "[ -~]{0,120}") {
            let dns = MapDns::default().txt("example.test", &[&format!("v=spf1 {s}")]);
            let a = run(&dns, None);
            prop_assert!(a.reason.contains("example.test"), "{:?}", a.reason);
        }
    }
}
