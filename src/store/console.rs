//! What the operator's console asks of the store: "check this DID again now", attestations by
//! domain (for relays that know only the envelope domain), and each attestation's history of
//! verdict changes.

use rusqlite::{Connection, Transaction, params};

use super::attestations::{ATTESTATION_COLUMNS, Attestation, attestation_from_row};
use super::{Error, Store};
use crate::verify::{CheckName, Outcome, Report};

/// Verdict changes kept per attestation (the newest).
pub const HISTORY_KEPT: usize = 20;

/// One change of an attestation's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerdictChange {
    /// Record key of the attestation.
    pub rkey: String,
    /// The new verdict.
    pub verdict: Outcome,
    /// When (unix ms): the check that produced it.
    pub at_ms: i64,
    /// The checks that did not pass, e.g. `dmarc, dkim (default)`; empty for a pass.
    pub summary: String,
}

impl Store {
    /// Makes every attestation of `did` due at `now_ms` (unless it is due sooner), so the
    /// scheduler hands them to the manager at once, through the same path and rules as any
    /// scheduled re-check. Returns how many attestations the DID has: 0 means the labeler
    /// holds none for it and nothing was changed.
    ///
    /// Another process's call (`labeler recheck`) reaches a running daemon through
    /// `PRAGMA data_version`, which its scheduler polls; this process's through
    /// [`Store::schedule_changes`].
    pub fn request_recheck(&self, did: &str, now_ms: i64) -> Result<usize, Error> {
        let n = self
            .writer()
            .prepare_cached(
                "UPDATE attestations SET next_check_ms = min(next_check_ms, ?2) WHERE did = ?1",
            )?
            .execute(params![did, now_ms])?;
        if n > 0 {
            self.notify_schedule();
        }
        Ok(n)
    }

    /// Attestations of `domain` (any DID), standing ones first, at most `limit`. Uses the
    /// `attestations_domain` index.
    pub fn attestations_for_domain(
        &self,
        domain: &str,
        limit: usize,
    ) -> Result<Vec<Attestation>, Error> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ATTESTATION_COLUMNS} FROM attestations WHERE domain = ?1
                 ORDER BY standing DESC, did, rkey LIMIT ?2"
            ))?;
            let rows = stmt
                .query_map(params![domain, limit as i64], attestation_from_row)?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    /// The verdict changes of `did`'s attestations, newest first (at most [`HISTORY_KEPT`]
    /// per attestation).
    pub fn verdict_history(&self, did: &str) -> Result<Vec<VerdictChange>, Error> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT rkey, verdict, at_ms, summary FROM verdict_history WHERE did = ?1
                 ORDER BY id DESC",
            )?;
            let rows = stmt
                .query_map([did], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get(2)?,
                        r.get(3)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(rkey, verdict, at_ms, summary)| {
                    let verdict = Outcome::parse(&verdict).ok_or_else(|| Error::Corrupt {
                        table: "verdict_history",
                        message: format!("unknown verdict {verdict:?}"),
                    })?;
                    Ok(VerdictChange {
                        rkey,
                        verdict,
                        at_ms,
                        summary,
                    })
                })
                .collect()
        })
    }
}

/// Inside [`Store::update_did`]'s transaction: appends a history entry when `new` changes the
/// verdict of `old` (or is new), keeping the newest [`HISTORY_KEPT`].
pub(super) fn note_verdict(
    tx: &Transaction<'_>,
    old: Option<&Attestation>,
    new: &Attestation,
) -> Result<(), Error> {
    if old.is_some_and(|o| o.verdict == new.verdict) {
        return Ok(());
    }
    let at_ms = new.checked_ms.unwrap_or_else(super::attestations::now_ms);
    tx.prepare_cached(
        "INSERT INTO verdict_history (did, rkey, domain, verdict, at_ms, summary)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        new.did,
        new.rkey,
        new.domain,
        new.verdict.as_str(),
        at_ms,
        summary(new.report.as_deref()),
    ])?;
    tx.prepare_cached(
        "DELETE FROM verdict_history WHERE did = ?1 AND rkey = ?2 AND id NOT IN
         (SELECT id FROM verdict_history WHERE did = ?1 AND rkey = ?2 ORDER BY id DESC LIMIT ?3)",
    )?
    .execute(params![new.did, new.rkey, HISTORY_KEPT as i64])?;
    Ok(())
}

/// Inside [`Store::update_did`]'s transaction: a deleted attestation takes its history along.
pub(super) fn forget_history(c: &Connection, did: &str, rkey: &str) -> Result<(), Error> {
    c.prepare_cached("DELETE FROM verdict_history WHERE did = ?1 AND rkey = ?2")?
        .execute(params![did, rkey])?;
    Ok(())
}

/// The checks of a stored report that did not pass: `dmarc, dkim (default)`.
fn summary(report: Option<&str>) -> String {
    let Some(report) = report.and_then(|r| serde_json::from_str::<Report>(r).ok()) else {
        return String::new();
    };
    report
        .checks
        .iter()
        .filter(|c| c.outcome != Outcome::Pass && c.name != CheckName::RelayMember)
        .map(|c| match &c.subject {
            Some(s) => format!("{} ({s})", c.name.as_str()),
            None => c.name.as_str().to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Changes;
    use crate::verify::{Check, CheckName};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        (dir, store)
    }

    fn attestation(did: &str, rkey: &str, domain: &str, verdict: Outcome, at: i64) -> Attestation {
        let report = Report {
            did: did.into(),
            domain: domain.into(),
            checked_at: "2026-01-01T00:00:00.000Z".into(),
            verdict,
            checks: vec![Check {
                name: CheckName::Dmarc,
                subject: None,
                outcome: verdict,
                reason: "r".into(),
                fix: None,
            }],
            confirmed_by: None,
            notes: Vec::new(),
        };
        Attestation {
            did: did.into(),
            rkey: rkey.into(),
            domain: domain.into(),
            selectors: vec!["default".into()],
            record_cid: None,
            rev: None,
            created_at: None,
            first_seen_ms: 1,
            verdict,
            standing: verdict == Outcome::Pass,
            relay_member: false,
            report: Some(serde_json::to_string(&report).unwrap()),
            checked_ms: Some(at),
            last_definitive_ms: Some(at),
            consecutive_failures: 0,
            consecutive_undecided: 0,
            next_check_ms: at + 3_600_000,
        }
    }

    fn put(store: &Store, a: Attestation) {
        let did = a.did.clone();
        store
            .update_did(&did, "did:key:x", |_| {
                Ok::<_, ()>(Changes {
                    put: vec![a],
                    ..Changes::default()
                })
            })
            .unwrap()
            .unwrap();
    }

    #[test]
    fn a_requested_recheck_makes_every_attestation_of_the_did_due_and_wakes_the_scheduler() {
        let (_dir, store) = store();
        put(
            &store,
            attestation("did:plc:a", "1", "a.test", Outcome::Pass, 1_000),
        );
        put(
            &store,
            attestation("did:plc:a", "2", "b.test", Outcome::Fail, 1_000),
        );
        put(
            &store,
            attestation("did:plc:b", "1", "b.test", Outcome::Pass, 1_000),
        );
        let mut schedule = store.schedule_changes();
        schedule.mark_unchanged();
        assert_eq!(store.request_recheck("did:plc:a", 5_000).unwrap(), 2);
        assert!(schedule.has_changed().unwrap(), "the scheduler is woken");
        let due = store.claim_due(5_000, 60_000, 10).unwrap();
        assert_eq!(
            due,
            vec![
                ("did:plc:a".to_owned(), "1".to_owned()),
                ("did:plc:a".to_owned(), "2".to_owned())
            ]
        );
        // An attestation due sooner stays due sooner; an unknown DID changes nothing.
        assert_eq!(store.request_recheck("did:plc:nobody", 5_000).unwrap(), 0);
    }

    #[test]
    fn attestations_are_found_by_domain_standing_first() {
        let (_dir, store) = store();
        put(
            &store,
            attestation("did:plc:a", "1", "b.test", Outcome::Fail, 1),
        );
        put(
            &store,
            attestation("did:plc:z", "1", "b.test", Outcome::Pass, 1),
        );
        put(
            &store,
            attestation("did:plc:m", "1", "other.test", Outcome::Pass, 1),
        );
        let found: Vec<String> = store
            .attestations_for_domain("b.test", 10)
            .unwrap()
            .into_iter()
            .map(|a| a.did)
            .collect();
        assert_eq!(found, ["did:plc:z", "did:plc:a"]);
        assert_eq!(store.attestations_for_domain("b.test", 1).unwrap().len(), 1);
        let plan: String = store
            .read(|c| {
                Ok(c.query_row(
                    &format!(
                        "EXPLAIN QUERY PLAN SELECT {ATTESTATION_COLUMNS} FROM attestations WHERE domain = 'b.test'"
                    ),
                    [],
                    |r| r.get(3),
                )?)
            })
            .unwrap();
        assert!(plan.contains("attestations_domain"), "{plan}");
    }

    #[test]
    fn verdict_changes_are_kept_newest_first_bounded_and_leave_with_the_attestation() {
        let (_dir, store) = store();
        put(
            &store,
            attestation("did:plc:a", "1", "a.test", Outcome::Pass, 1),
        );
        // The same verdict again is not a change.
        put(
            &store,
            attestation("did:plc:a", "1", "a.test", Outcome::Pass, 2),
        );
        put(
            &store,
            attestation("did:plc:a", "1", "a.test", Outcome::Fail, 3),
        );
        let h = store.verdict_history("did:plc:a").unwrap();
        assert_eq!(
            h.iter().map(|c| (c.verdict, c.at_ms)).collect::<Vec<_>>(),
            [(Outcome::Fail, 3), (Outcome::Pass, 1)]
        );
        assert_eq!(h[0].summary, "dmarc");
        assert_eq!(h[1].summary, "");
        for i in 0..(HISTORY_KEPT as i64 * 2) {
            let v = if i % 2 == 0 {
                Outcome::Pass
            } else {
                Outcome::Fail
            };
            put(&store, attestation("did:plc:a", "1", "a.test", v, 10 + i));
        }
        let h = store.verdict_history("did:plc:a").unwrap();
        assert_eq!(h.len(), HISTORY_KEPT);
        assert_eq!(h[0].at_ms, 10 + HISTORY_KEPT as i64 * 2 - 1, "newest first");
        store
            .update_did("did:plc:a", "did:key:x", |_| {
                Ok::<_, ()>(Changes {
                    delete: vec!["1".to_owned()],
                    ..Changes::default()
                })
            })
            .unwrap()
            .unwrap();
        assert!(store.verdict_history("did:plc:a").unwrap().is_empty());
    }
}
