//! DMARC policy (RFC 7489 §6, with the RFC 9989 additions `t=` and `psd=`): the effective
//! policy for the operator's domain must be enforced.
//!
//! Discovery (RFC 7489 §6.6.3): TXT at `_dmarc.<domain>`; only records whose first tag is
//! `v=DMARC1` count (`dmarc-version = "v" *WSP "=" *WSP %x44 %x4d %x41 %x52 %x43 %x31`: the
//! tag name is case-insensitive, `DMARC1` is case-sensitive, no leading whitespace). More than
//! one such record: no policy applies (a failure). None (NXDOMAIN, NODATA, or only unrelated
//! TXT): the record at the organisational domain (Public Suffix List, RFC 7489 §3.2) is used,
//! with `sp=` if present, else `p=`. A DNS error at the first name stops discovery: it never
//! falls through to the parent. The organisational domain is never a public suffix, and a
//! record with `psd=y` (a public-suffix operator's policy, RFC 9989) never counts.
//!
//! Judgement: the effective policy is `quarantine` or `reject`; `pct` is absent or 100
//! (RFC 7489 §6.6.4: lower values apply the next weaker policy to the rest); `t` is absent or
//! `n` (RFC 9989 test mode applies a weaker policy). Invalid `p`, `sp`, `pct`, `t` or `psd`
//! values fail (RFC 7489 §6.6.3 step 6: an invalid policy is not enforcement).

use super::Outcome;
use super::tags::{self, Flavour};

/// True if the record's first tag is `v=DMARC1` (see the module docs).
pub(crate) fn is_dmarc_record(record: &[u8]) -> bool {
    let Some(rest) = record
        .strip_prefix(b"v")
        .or_else(|| record.strip_prefix(b"V"))
    else {
        return false;
    };
    let rest = trim_wsp(rest);
    let Some(rest) = rest.strip_prefix(b"=") else {
        return false;
    };
    let Some(rest) = trim_wsp(rest).strip_prefix(b"DMARC1") else {
        return false;
    };
    matches!(rest.first(), None | Some(b' ' | b'\t' | b';'))
}

fn trim_wsp(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(s.len());
    &s[start..]
}

/// The organisational domain of `domain` (RFC 7489 §3.2) if it differs from `domain`:
/// the registrable domain per the Public Suffix List (unknown TLDs count as one-label
/// suffixes). `None` when `domain` is itself organisational or a public suffix.
pub(crate) fn organisational_domain(domain: &str) -> Option<String> {
    let org = psl::domain_str(domain)?;
    (org != domain).then(|| org.to_owned())
}

/// What the records at one `_dmarc` name amount to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// No DMARC record there (discovery may continue).
    None,
    /// A decision: pass or fail, with the reason.
    Decided(Outcome, String),
}

/// Judges the TXT records found at `name`. `fallback` is `Some(domain)` when `name` is the
/// organisational record standing in for `domain`'s missing one (then `sp` applies).
pub(crate) fn judge(name: &str, records: &[Vec<u8>], fallback: Option<&str>) -> Found {
    let dmarc: Vec<&Vec<u8>> = records.iter().filter(|r| is_dmarc_record(r)).collect();
    let record = match dmarc.as_slice() {
        [] => return Found::None,
        [one] => *one,
        many => {
            return Found::Decided(
                Outcome::Fail,
                format!(
                    "{name} has {} DMARC records; receivers then apply no DMARC policy at all",
                    many.len()
                ),
            );
        }
    };
    let fail = |problem: String| {
        Found::Decided(Outcome::Fail, format!("DMARC record at {name} {problem}"))
    };
    let Ok(text) = std::str::from_utf8(record) else {
        return fail("is invalid: it contains non-UTF-8 bytes".to_owned());
    };
    let list = match tags::parse(text, Flavour::Dmarc) {
        Ok(list) => list,
        Err(e) => return fail(format!("is invalid: {e}")),
    };
    let get = |n: &str| tags::get(&list, n, Flavour::Dmarc);
    let policy = |tag: &str| -> Result<Option<String>, String> {
        match get(tag) {
            None => Ok(None),
            Some(v)
                if ["none", "quarantine", "reject"]
                    .iter()
                    .any(|p| v.eq_ignore_ascii_case(p)) =>
            {
                Ok(Some(v.to_ascii_lowercase()))
            }
            Some(v) => Err(format!(
                "has {tag}={}, which is not none, quarantine or reject",
                tags::clip(v)
            )),
        }
    };
    let p = match policy("p") {
        Ok(Some(p)) => p,
        Ok(None) => return fail("has no p= tag, so it requests no policy".to_owned()),
        Err(e) => return fail(e),
    };
    let sp = match policy("sp") {
        Ok(sp) => sp,
        Err(e) => return fail(e),
    };
    if let Some(psd) = get("psd") {
        match psd {
            "y" | "Y" => {
                return fail(
                    "has psd=y: it is a public-suffix operator's policy, not the domain's own"
                        .to_owned(),
                );
            }
            "n" | "N" | "u" | "U" => {}
            other => {
                return fail(format!(
                    "has psd={}, which is not y, n or u",
                    tags::clip(other)
                ));
            }
        }
    }
    if let Some(pct) = get("pct") {
        let ok = pct.len() <= 3
            && pct.bytes().all(|b| b.is_ascii_digit())
            && pct.parse::<u8>() == Ok(100);
        if !ok {
            return fail(format!(
                "has pct={}, so the policy applies to only part of the failing mail (must be absent or 100)",
                tags::clip(pct)
            ));
        }
    }
    if let Some(t) = get("t") {
        if t.eq_ignore_ascii_case("y") {
            return fail(
                "has t=y: the policy is in test mode and applied one step weaker".to_owned(),
            );
        }
        if !t.eq_ignore_ascii_case("n") {
            return fail(format!("has t={}, which is not y or n", tags::clip(t)));
        }
    }
    let (tag, effective) = match (fallback, sp) {
        (Some(_), Some(sp)) => ("sp", sp),
        _ => ("p", p),
    };
    let enforced = effective == "quarantine" || effective == "reject";
    match (enforced, fallback) {
        (true, None) => Found::Decided(
            Outcome::Pass,
            format!("DMARC record at {name} enforces {tag}={effective}"),
        ),
        (true, Some(domain)) => Found::Decided(
            Outcome::Pass,
            format!(
                "no DMARC record at _dmarc.{domain}; the organisational record at {name} enforces {tag}={effective}"
            ),
        ),
        (false, None) => fail(format!(
            "has {tag}={effective}, which does not enforce anything (quarantine or reject is required)"
        )),
        (false, Some(domain)) => fail(format!(
            "applies {tag}={effective} to {domain} (which has no record of its own); quarantine or reject is required"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NAME: &str = "_dmarc.example.test";

    fn one(record: &str) -> Found {
        judge(NAME, &[record.as_bytes().to_vec()], None)
    }

    fn outcome(found: &Found) -> Outcome {
        match found {
            Found::None => panic!("no record"),
            Found::Decided(o, _) => *o,
        }
    }

    #[test]
    fn recognises_dmarc_records() {
        assert!(is_dmarc_record(b"v=DMARC1; p=reject"));
        assert!(is_dmarc_record(b"V = DMARC1;p=reject"));
        assert!(is_dmarc_record(b"v=DMARC1"));
        assert!(is_dmarc_record(b"v\t=\tDMARC1 ; p=none"));
        assert!(!is_dmarc_record(b"v=dmarc1; p=reject"));
        assert!(!is_dmarc_record(b" v=DMARC1; p=reject"));
        assert!(!is_dmarc_record(b"p=reject; v=DMARC1"));
        assert!(!is_dmarc_record(b"v=DMARC10; p=reject"));
        assert!(!is_dmarc_record(b"v=spf1 -all"));
    }

    #[test]
    fn enforced_policies_pass() {
        for r in [
            "v=DMARC1; p=reject",
            "v=DMARC1; p=quarantine; pct=100; t=n; rua=mailto:d@example.test",
            "v = DMARC1 ; P = Reject ; sp=none",
            "v=DMARC1;p=reject;",
        ] {
            let f = one(r);
            assert_eq!(outcome(&f), Outcome::Pass, "{r}: {f:?}");
        }
    }

    #[test]
    fn weak_or_broken_policies_fail_naming_the_record() {
        for (r, needle) in [
            ("v=DMARC1; p=none", "p=none"),
            ("v=DMARC1; rua=mailto:a@b.test", "no p="),
            ("v=DMARC1; p=reject; pct=50", "pct=50"),
            ("v=DMARC1; p=reject; pct=0", "pct=0"),
            ("v=DMARC1; p=reject; pct=abc", "pct=abc"),
            ("v=DMARC1; p=quarantine; t=y", "t=y"),
            ("v=DMARC1; p=bogus", "p=bogus"),
            ("v=DMARC1; p=reject; sp=bogus", "sp=bogus"),
            ("v=DMARC1; p=reject; psd=y", "psd=y"),
            ("v=DMARC1; p=reject; p=none", "more than once"),
            ("v=DMARC1; p=reject;; rua=x", "empty"),
        ] {
            match one(r) {
                Found::Decided(Outcome::Fail, reason) => {
                    assert!(
                        reason.contains(NAME) && reason.contains(needle),
                        "{r}: {reason}"
                    );
                }
                other => panic!("{r}: {other:?}"),
            }
        }
    }

    #[test]
    fn unrelated_records_are_ignored_and_two_dmarc_records_fail() {
        let good = b"v=DMARC1; p=reject".to_vec();
        assert_eq!(judge(NAME, &[], None), Found::None);
        assert_eq!(judge(NAME, &[b"v=spf1 -all".to_vec()], None), Found::None);
        let f = judge(NAME, &[good.clone(), b"unrelated".to_vec()], None);
        assert_eq!(outcome(&f), Outcome::Pass);
        match judge(NAME, &[good.clone(), good], None) {
            Found::Decided(Outcome::Fail, r) => assert!(r.contains("2 DMARC records"), "{r}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fallback_uses_sp() {
        let r = |s: &str| judge(NAME, &[s.as_bytes().to_vec()], Some("mail.example.test"));
        assert_eq!(outcome(&r("v=DMARC1; p=reject; sp=none")), Outcome::Fail);
        assert_eq!(outcome(&r("v=DMARC1; p=none; sp=reject")), Outcome::Pass);
        assert_eq!(outcome(&r("v=DMARC1; p=quarantine")), Outcome::Pass);
        match r("v=DMARC1; p=reject; sp=none") {
            Found::Decided(_, reason) => {
                assert!(
                    reason.contains("mail.example.test") && reason.contains("sp=none"),
                    "{reason}"
                );
            }
            Found::None => panic!(),
        }
    }

    #[test]
    fn the_organisational_domain_follows_the_public_suffix_list() {
        assert_eq!(
            organisational_domain("mail.example.com").as_deref(),
            Some("example.com")
        );
        assert_eq!(organisational_domain("example.com"), None);
        assert_eq!(
            organisational_domain("a.b.example.co.uk").as_deref(),
            Some("example.co.uk")
        );
        assert_eq!(organisational_domain("co.uk"), None);
        assert_eq!(
            organisational_domain("mail.example.test").as_deref(),
            Some("example.test")
        );
    }

    proptest! {
        #[test]
        fn never_panics_and_names_the_record(s in "\\PC{0,200}") {
            if let Found::Decided(_, reason) = judge(NAME, &[s.clone().into_bytes()], None) {
                prop_assert!(reason.contains(NAME));
            }
            let with_version = format!("v=DMARC1;{s}");
            if let Found::Decided(_, reason) = judge(NAME, &[with_version.into_bytes()], None) {
                prop_assert!(reason.contains(NAME));
            }
        }
    }
}
