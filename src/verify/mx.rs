//! MX (RFC 5321 §5.1, RFC 7505, RFC 2181 §10.3): the domain must publish at least one MX
//! whose target is a host name with a public address.
//!
//! - NXDOMAIN or no MX records fail: a verified mail operator publishes an explicit MX (the
//!   RFC 5321 implicit MX is not accepted, `docs/verification.md` §4).
//! - A null MX (`0 .`, RFC 7505 §3) fails: the domain declares it accepts no mail; a null MX
//!   mixed with other MX records is malformed and fails too.
//! - Each target must be a host name, not an IP literal (RFC 5321 §5.1: "the MX data MUST be a
//!   domain name"), with at least one A/AAAA record that is a public address (loopback,
//!   private and other reserved addresses would point mail into the receiver's own network).
//! - One usable target passes; unusable ones are named in the reason. If none is usable and
//!   some could not be checked (DNS errors), the result is "could not decide".
//!
//! At most [`MAX_TARGETS`] targets (lowest preference first) are resolved.

use std::net::IpAddr;

use super::{Dns, Outcome};
use crate::dns::{self, Answer, Mx};

/// Most MX targets resolved per domain.
pub(crate) const MAX_TARGETS: usize = 10;

/// What resolving one MX target found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// Has at least one public address.
    Usable,
    /// Cannot receive mail; the phrase says why ("has no A/AAAA records").
    Unusable(String),
    /// Could not be resolved (DNS error).
    Unknown(String),
}

/// Fetches and judges the MX records of `domain`.
pub(crate) async fn check<D: Dns>(dns: &D, domain: &str) -> (Outcome, String) {
    let records = match dns.mx(domain).await {
        Err(e) => {
            return (
                Outcome::CouldNotDecide,
                format!("could not read the MX records of {domain}: {e}"),
            );
        }
        Ok(Answer::NxDomain) => {
            return (
                Outcome::Fail,
                format!("{domain} does not exist (NXDOMAIN), so it has no MX records"),
            );
        }
        Ok(Answer::NoData) => {
            return (
                Outcome::Fail,
                format!("{domain} has no MX records; a mail operator must publish at least one"),
            );
        }
        Ok(Answer::Found(records)) => records,
    };
    if let Some(problem) = null_mx(domain, &records) {
        return (Outcome::Fail, problem);
    }
    let targets = targets(&records);
    let lookups = targets.iter().map(|t| async move {
        let state = match static_problem(t) {
            Some(p) => Target::Unusable(p),
            None => match dns.ip(t).await {
                Err(e) => Target::Unknown(e.to_string()),
                Ok(answer) => address_state(&answer),
            },
        };
        (t.clone(), state)
    });
    let results = futures_util::future::join_all(lookups).await;
    judge(domain, &results)
}

/// A failure reason if the records contain a null MX.
pub(crate) fn null_mx(domain: &str, records: &[Mx]) -> Option<String> {
    let null = records.iter().find(|m| m.is_null())?;
    Some(if records.len() == 1 && null.preference == 0 {
        format!(
            "{domain} publishes a null MX (\"0 .\"), which declares that it accepts no mail (RFC 7505)"
        )
    } else {
        format!(
            "{domain} has a null MX (\".\") together with other MX records or a non-zero preference, which is malformed (RFC 7505 §3)"
        )
    })
}

/// Distinct targets, lowest preference first, at most [`MAX_TARGETS`].
pub(crate) fn targets(records: &[Mx]) -> Vec<String> {
    let mut sorted: Vec<&Mx> = records.iter().collect();
    sorted.sort_by_key(|m| m.preference);
    let mut out: Vec<String> = Vec::new();
    for m in sorted {
        if !out.contains(&m.exchange) {
            out.push(m.exchange.clone());
        }
    }
    out.truncate(MAX_TARGETS);
    out
}

/// Why a target can be rejected without a query: an IP literal or not a host name.
pub(crate) fn static_problem(target: &str) -> Option<String> {
    if target.parse::<IpAddr>().is_ok()
        || target
            .rsplit('.')
            .next()
            .is_some_and(|top| !top.is_empty() && top.bytes().all(|b| b.is_ascii_digit()))
    {
        return Some("is an IP address, not a host name".to_owned());
    }
    let labels_ok = target.len() <= 253
        && target.contains('.')
        && target.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    (!labels_ok).then(|| "is not a valid host name".to_owned())
}

/// Usability from an address answer.
pub(crate) fn address_state(answer: &Answer<IpAddr>) -> Target {
    match answer {
        Answer::NxDomain => Target::Unusable("does not exist (NXDOMAIN)".to_owned()),
        Answer::NoData => Target::Unusable("has no A/AAAA records".to_owned()),
        Answer::Found(ips) => {
            if ips.iter().any(|ip| dns::is_public(*ip)) {
                Target::Usable
            } else {
                let why = ips
                    .first()
                    .and_then(|ip| dns::non_public_reason(*ip).map(|r| format!("{ip} is {r}")))
                    .unwrap_or_default();
                Target::Unusable(format!("resolves only to non-public addresses ({why})"))
            }
        }
    }
}

/// The verdict over all targets.
pub(crate) fn judge(domain: &str, results: &[(String, Target)]) -> (Outcome, String) {
    let usable: Vec<&str> = results
        .iter()
        .filter(|(_, s)| *s == Target::Usable)
        .map(|(t, _)| t.as_str())
        .collect();
    let unusable: Vec<String> = results
        .iter()
        .filter_map(|(t, s)| match s {
            Target::Unusable(why) => Some(format!("{t} {why}")),
            _ => None,
        })
        .collect();
    let unknown: Vec<String> = results
        .iter()
        .filter_map(|(t, s)| match s {
            Target::Unknown(e) => Some(format!("{t}: {e}")),
            _ => None,
        })
        .collect();
    if !usable.is_empty() {
        let mut reason = format!(
            "MX for {domain}: {} usable host{} ({})",
            usable.len(),
            if usable.len() == 1 { "" } else { "s" },
            usable.join(", ")
        );
        if !unusable.is_empty() {
            reason.push_str(&format!("; unusable: {}", unusable.join("; ")));
        }
        if !unknown.is_empty() {
            reason.push_str(&format!("; not checked: {}", unknown.join("; ")));
        }
        return (Outcome::Pass, reason);
    }
    if let Some(first) = unknown.first() {
        let mut reason =
            format!("no MX host of {domain} is known to be usable; could not resolve {first}");
        if !unusable.is_empty() {
            reason.push_str(&format!("; unusable: {}", unusable.join("; ")));
        }
        return (Outcome::CouldNotDecide, reason);
    }
    (
        Outcome::Fail,
        format!(
            "no MX host of {domain} can receive mail: {}",
            unusable.join("; ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mx(p: u16, e: &str) -> Mx {
        Mx {
            preference: p,
            exchange: e.to_owned(),
        }
    }

    #[test]
    fn null_mx_fails() {
        assert!(
            null_mx("d.test", &[mx(0, ".")])
                .unwrap()
                .contains("accepts no mail")
        );
        assert!(
            null_mx("d.test", &[mx(0, "."), mx(10, "mx.d.test")])
                .unwrap()
                .contains("malformed")
        );
        assert!(
            null_mx("d.test", &[mx(10, ".")])
                .unwrap()
                .contains("malformed")
        );
        assert!(null_mx("d.test", &[mx(10, "mx.d.test")]).is_none());
    }

    #[test]
    fn targets_are_sorted_deduplicated_and_capped() {
        let records: Vec<Mx> = (0..20)
            .map(|i| mx(20 - i, &format!("mx{}.d.test", i % 12)))
            .collect();
        let t = targets(&records);
        assert_eq!(t.len(), MAX_TARGETS);
        assert_eq!(t[0], "mx7.d.test");
    }

    #[test]
    fn ip_literals_bad_names_and_localhost_are_refused_before_lookup() {
        assert!(static_problem("192.0.2.1").is_some());
        assert!(static_problem("1.2.3.4.5").is_some());
        assert!(static_problem("mx_1.d.test").is_some());
        assert!(static_problem("localhost").is_some());
        assert!(static_problem("mx.d.test").is_none());
    }

    #[test]
    fn judges_targets() {
        let public: IpAddr = "11.22.33.44".parse().unwrap();
        let private: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            address_state(&Answer::Found(vec![private, public])),
            Target::Usable
        );
        assert!(
            matches!(address_state(&Answer::Found(vec![private])), Target::Unusable(s) if s.contains("non-public"))
        );
        let (o, r) = judge(
            "d.test",
            &[
                ("mx1.d.test".to_owned(), Target::Usable),
                (
                    "mx2.d.test".to_owned(),
                    Target::Unusable("has no A/AAAA records".to_owned()),
                ),
            ],
        );
        assert_eq!(o, Outcome::Pass);
        assert!(r.contains("mx2.d.test has no A/AAAA records"), "{r}");
        let (o, _) = judge(
            "d.test",
            &[
                (
                    "mx1.d.test".to_owned(),
                    Target::Unknown("timeout".to_owned()),
                ),
                ("mx2.d.test".to_owned(), Target::Unusable("x".to_owned())),
            ],
        );
        assert_eq!(o, Outcome::CouldNotDecide);
        let (o, r) = judge(
            "d.test",
            &[(
                "1.2.3.4".to_owned(),
                Target::Unusable("is an IP address, not a host name".to_owned()),
            )],
        );
        assert_eq!(o, Outcome::Fail);
        assert!(r.contains("d.test") && r.contains("1.2.3.4"));
    }
}
