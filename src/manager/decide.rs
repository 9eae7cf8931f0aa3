//! The decisions, as pure functions: an attestation's standing after a check, and which
//! labels a DID should hold. No I/O; the manager calls them inside its store transaction.

use std::time::Duration;

use super::{FAILED_RETRY, Options, UNDECIDED_RETRY, UNDECIDED_RETRY_MAX};
use crate::label::{self, Label};
use crate::store::{Attestation, Changes, DidState};
use crate::verify::{Check, CheckName, Outcome, Report};

/// The reasons of the checks that did not pass, for the one-line decision log.
pub(super) fn failing_reasons(report: &Report) -> String {
    report
        .checks
        .iter()
        .filter(|c| c.outcome != Outcome::Pass)
        .map(|c| c.reason.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A report with a single entry about the record itself (invalid, or unconfirmed).
pub(super) fn note_report(did: &str, domain: &str, outcome: Outcome, reason: String) -> Report {
    Report {
        did: did.to_owned(),
        domain: domain.to_owned(),
        checked_at: label::now_cts(),
        verdict: outcome,
        checks: vec![Check {
            name: CheckName::Record,
            subject: None,
            outcome,
            reason,
            fix: None,
        }],
        confirmed_by: None,
        notes: Vec::new(),
    }
}

/// An attestation's verification state after one more check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Next {
    pub(super) verdict: Outcome,
    pub(super) standing: bool,
    pub(super) relay_member: bool,
    pub(super) last_definitive_ms: Option<i64>,
    pub(super) consecutive_failures: u32,
    pub(super) consecutive_undecided: u32,
    pub(super) next_check_ms: i64,
}

/// The standing rules (module docs). `prev` is the attestation's previous state when it is
/// about the same domain and selectors; `jitter` in [0, 1) spreads re-checks over ±10% of the
/// interval so they do not all fall due at once. While `degraded` (the labeler's own resolver
/// cannot resolve names it knows exist), staleness does not advance: an undecided round never
/// takes away an earned standing.
pub(super) fn advance(
    prev: Option<&Attestation>,
    outcome: Outcome,
    relay: bool,
    now: i64,
    jitter: f64,
    opts: &Options,
    degraded: bool,
) -> Next {
    let interval = opts.reverify_interval;
    let ms = |d: Duration| d.as_millis() as i64;
    let backoff = |first: Duration, n: u32, cap: Duration| {
        let factor = 1u32 << n.saturating_sub(1).min(16);
        first.saturating_mul(factor).min(cap).min(interval)
    };
    match outcome {
        Outcome::Pass => Next {
            verdict: Outcome::Pass,
            standing: true,
            relay_member: relay,
            last_definitive_ms: Some(now),
            consecutive_failures: 0,
            consecutive_undecided: 0,
            next_check_ms: now + (ms(interval) as f64 * (0.9 + 0.2 * jitter)) as i64,
        },
        Outcome::Fail => {
            let failures = prev.map_or(0, |p| p.consecutive_failures) + 1;
            Next {
                verdict: Outcome::Fail,
                standing: false,
                relay_member: false,
                last_definitive_ms: Some(now),
                consecutive_failures: failures,
                consecutive_undecided: 0,
                next_check_ms: now + ms(backoff(FAILED_RETRY, failures, interval)),
            }
        }
        Outcome::CouldNotDecide => {
            let undecided = prev.map_or(0, |p| p.consecutive_undecided) + 1;
            let last_definitive_ms = prev.and_then(|p| p.last_definitive_ms);
            // Transient trouble keeps an earned standing until it goes stale.
            let fresh_enough =
                degraded || last_definitive_ms.is_some_and(|t| now - t <= ms(opts.stale_after));
            let standing = prev.is_some_and(|p| p.standing) && fresh_enough;
            Next {
                verdict: Outcome::CouldNotDecide,
                standing,
                relay_member: standing && prev.is_some_and(|p| p.relay_member),
                last_definitive_ms,
                consecutive_failures: prev.map_or(0, |p| p.consecutive_failures),
                consecutive_undecided: undecided,
                next_check_ms: now + ms(backoff(UNDECIDED_RETRY, undecided, UNDECIDED_RETRY_MAX)),
            }
        }
    }
}

/// `next` with the withdrawal the guard holds undone: `prev`'s standing and relay membership
/// kept, and the next check at `recheck_ms` so the withdrawal is tried again soon.
pub(super) fn held(prev: &Attestation, next: Next, recheck_ms: i64) -> Next {
    Next {
        standing: prev.standing,
        relay_member: prev.relay_member,
        next_check_ms: recheck_ms.min(next.next_check_ms),
        ..next
    }
}

/// How labels are issued: which values, and for how long.
#[derive(Clone, Copy, Debug)]
pub(super) struct Policy {
    /// Whether `relay-member` is issued at all.
    pub(super) relay_enabled: bool,
    /// How long a positive label is valid (`labelTtl`); `None`: no expiry.
    pub(super) ttl: Option<std::time::Duration>,
    /// Now (wall clock): `cts` and the expiry count from it.
    pub(super) now: std::time::SystemTime,
}

/// Which labels change for `did` once `changes` apply on top of `state`:
/// `verified-mail-operator` while the account is active and any attestation stands;
/// `relay-member` while, in addition, a standing attestation is a relay member. A label that
/// should not be held any more is negated with the same (src, uri, cid, val) — the caller's
/// store gives the negation a new seq (docs/protocol.md §6).
///
/// Positive labels carry `exp` = now + `ttl` (<https://atproto.com/specs/label>, `exp`): a
/// labeler that stops re-checking stops vouching within `ttl`. A commit with a passing verdict
/// re-signs a held label (new `cts`, `exp`, seq) once less than half of `ttl` remains — not at
/// every re-check, since subscribers and mirrors receive every renewal. An expired label is no
/// longer held, so it is issued again when it should be. Negations carry no `exp`.
pub(super) fn decide_labels(
    did: &str,
    src: &str,
    state: &DidState,
    changes: &Changes,
    policy: &Policy,
) -> Vec<Label> {
    let relay_enabled = policy.relay_enabled;
    let now_ms = policy
        .now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let passing = changes
        .put
        .iter()
        .any(|a| a.verdict == Outcome::Pass && a.standing);
    let mut attestations: Vec<&Attestation> = state
        .attestations
        .iter()
        .filter(|a| {
            !changes.delete.contains(&a.rkey) && !changes.put.iter().any(|p| p.rkey == a.rkey)
        })
        .collect();
    attestations.extend(changes.put.iter());
    let active = changes
        .account
        .as_ref()
        .or(state.account.as_ref())
        .is_none_or(|a| a.active);
    let verified = active && attestations.iter().any(|a| a.standing);
    let relay =
        verified && relay_enabled && attestations.iter().any(|a| a.standing && a.relay_member);

    let mut out = Vec::new();
    for (val, want) in [
        (label::VERIFIED_MAIL_OPERATOR, verified),
        (label::RELAY_MEMBER, relay),
    ] {
        let current = state.label(val).map(|l| &l.signed.label);
        let exp_ms = current.and_then(|l| l.exp.as_deref().and_then(label::datetime_ms));
        let held = current.is_some_and(|l| !l.neg) && exp_ms.is_none_or(|e| e > now_ms);
        let renew = want
            && held
            && passing
            && match policy.ttl {
                Some(ttl) => exp_ms.is_none_or(|e| e - now_ms < ttl.as_millis() as i64 / 2),
                None => exp_ms.is_some(),
            };
        if want != held || renew {
            out.push(Label {
                src: src.to_owned(),
                uri: did.to_owned(),
                cid: None,
                val: val.to_owned(),
                neg: !want,
                cts: label::format_datetime(policy.now),
                exp: policy
                    .ttl
                    .filter(|_| want)
                    .map(|ttl| label::format_datetime(policy.now + ttl)),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;
    use crate::manager::Clock;
    use crate::store::Account;

    const SRC: &str = "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme";

    fn opts() -> Options {
        Options {
            verify_records_at_pds: true,
            relay_enabled: true,
            reverify_interval: Duration::from_secs(24 * 3600),
            stale_after: Duration::from_secs(72 * 3600),
            concurrency: 4,
            verify_deadline: Duration::from_secs(60),
            account_retry: Duration::from_secs(60),
            label_ttl: None,
            clock: Clock::System,
        }
    }

    const H: i64 = 3600 * 1000;

    fn att(rkey: &str, standing: bool, relay: bool) -> Attestation {
        Attestation {
            did: "did:plc:a".into(),
            rkey: rkey.into(),
            domain: "example.com".into(),
            selectors: vec!["default".into()],
            record_cid: None,
            rev: None,
            created_at: None,
            first_seen_ms: 0,
            verdict: if standing {
                Outcome::Pass
            } else {
                Outcome::Fail
            },
            standing,
            relay_member: relay,
            report: None,
            checked_ms: Some(0),
            last_definitive_ms: Some(0),
            consecutive_failures: 0,
            consecutive_undecided: 0,
            next_check_ms: 0,
        }
    }

    #[test]
    fn pass_grants_standing_and_schedules_within_ten_percent_of_the_interval() {
        let o = opts();
        for jitter in [0.0, 0.5, 0.999] {
            let n = advance(None, Outcome::Pass, true, 1000, jitter, &o, false);
            assert!(n.standing && n.relay_member);
            let d = n.next_check_ms - 1000;
            assert!((21 * H..=27 * H).contains(&d), "{d}");
        }
    }

    #[test]
    fn undecided_keeps_standing_until_stale_and_backs_off() {
        let o = opts();
        let mut prev = att("r", true, true);
        prev.last_definitive_ms = Some(0);
        let n = advance(
            Some(&prev),
            Outcome::CouldNotDecide,
            false,
            71 * H,
            0.0,
            &o,
            false,
        );
        assert!(n.standing && n.relay_member, "within 72h the label stays");
        assert_eq!(n.next_check_ms - 71 * H, 5 * 60 * 1000);
        assert_eq!(n.last_definitive_ms, Some(0));

        prev.consecutive_undecided = 10;
        let n = advance(
            Some(&prev),
            Outcome::CouldNotDecide,
            false,
            73 * H,
            0.0,
            &o,
            false,
        );
        assert!(
            !n.standing && !n.relay_member,
            "after 72h without an answer it is withdrawn"
        );
        assert_eq!(n.next_check_ms - 73 * H, 4 * H, "backoff is capped");

        let n = advance(None, Outcome::CouldNotDecide, false, 0, 0.0, &o, false);
        assert!(!n.standing, "an undecided first check never grants");
    }

    #[test]
    fn failure_drops_standing_and_rechecks_sooner_each_time_up_to_the_interval() {
        let o = opts();
        let mut prev = att("r", true, false);
        let n = advance(Some(&prev), Outcome::Fail, false, 0, 0.0, &o, false);
        assert!(!n.standing);
        assert_eq!((n.consecutive_failures, n.next_check_ms), (1, H));
        prev.consecutive_failures = 30;
        let n = advance(Some(&prev), Outcome::Fail, false, 0, 0.0, &o, false);
        assert_eq!(n.next_check_ms, 24 * H);
    }

    fn held(val: &str, neg: bool) -> crate::store::StoredLabel {
        let key = SigningKey::generate().unwrap();
        crate::store::StoredLabel {
            seq: 1,
            signed: Label {
                src: SRC.to_owned(),
                uri: "did:plc:a".into(),
                cid: None,
                val: val.into(),
                neg,
                cts: label::now_cts(),
                exp: None,
            }
            .sign(&key),
        }
    }

    fn policy(relay_enabled: bool) -> Policy {
        Policy {
            relay_enabled,
            ttl: None,
            now: std::time::SystemTime::now(),
        }
    }

    fn vals(labels: &[Label]) -> Vec<(String, bool)> {
        labels.iter().map(|l| (l.val.clone(), l.neg)).collect()
    }

    #[test]
    fn labels_follow_standing_across_attestations() {
        let src = SRC.to_owned();
        // A new standing attestation grants both labels.
        let state = DidState::default();
        let changes = Changes {
            put: vec![att("r1", true, true)],
            ..Changes::default()
        };
        let l = decide_labels("did:plc:a", &src, &state, &changes, &policy(true));
        assert_eq!(
            vals(&l),
            [
                ("verified-mail-operator".into(), false),
                ("relay-member".into(), false)
            ]
        );
        assert!(
            l.iter()
                .all(|l| l.uri == "did:plc:a" && l.src == src && l.cid.is_none())
        );

        // Held labels and a second standing attestation: losing one changes nothing.
        let state = DidState {
            attestations: vec![att("r1", true, true), att("r2", true, false)],
            labels: vec![
                held("verified-mail-operator", false),
                held("relay-member", false),
            ],
            ..DidState::default()
        };
        let changes = Changes {
            put: vec![att("r2", false, false)],
            ..Changes::default()
        };
        assert!(decide_labels("did:plc:a", &src, &state, &changes, &policy(true)).is_empty());

        // Deleting the relay member keeps the operator label but negates relay-member.
        let changes = Changes {
            delete: vec!["r1".into()],
            ..Changes::default()
        };
        assert_eq!(
            vals(&decide_labels(
                "did:plc:a",
                &src,
                &state,
                &changes,
                &policy(true)
            )),
            [("relay-member".into(), true)]
        );

        // A deactivated account loses everything; a negated label is not negated again.
        let changes = Changes {
            account: Some(Account {
                active: false,
                status: Some("deactivated".into()),
            }),
            ..Changes::default()
        };
        assert_eq!(
            vals(&decide_labels(
                "did:plc:a",
                &src,
                &state,
                &changes,
                &policy(true)
            )),
            [
                ("verified-mail-operator".into(), true),
                ("relay-member".into(), true)
            ]
        );
        let negated = DidState {
            labels: vec![held("verified-mail-operator", true)],
            ..DidState::default()
        };
        assert!(
            decide_labels(
                "did:plc:a",
                &src,
                &negated,
                &Changes::default(),
                &policy(true)
            )
            .is_empty()
        );
    }

    #[test]
    fn relay_member_is_never_emitted_when_relay_checking_is_off() {
        let changes = Changes {
            put: vec![att("r1", true, true)],
            ..Changes::default()
        };
        let l = decide_labels(
            "did:plc:a",
            SRC,
            &DidState::default(),
            &changes,
            &policy(false),
        );
        assert_eq!(vals(&l), [("verified-mail-operator".into(), false)]);
    }
}
