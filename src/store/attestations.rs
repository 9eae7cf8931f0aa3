//! Attestations, their verification state, record revisions, account status and the
//! Jetstream cursor — and the one transaction that changes a DID's state and labels together.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};

use super::labels::{StoredLabel, active_key_in, current_for, put_label};
use super::{Error, Store};
use crate::label::SignedLabel;
use crate::verify::Outcome;

/// `meta` key of the Jetstream cursor (`time_us` of the last event whose effect committed).
const CURSOR_KEY: &str = "jetstream_cursor";

/// `meta` key of the last `labeler breaker release` (unix ms): a breaker opened before it may
/// let its held withdrawals through.
const BREAKER_RELEASE_KEY: &str = "breaker_release_ms";

/// An attestation record and its verification state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attestation {
    /// Author DID.
    pub did: String,
    /// Record key.
    pub rkey: String,
    /// Attested mail domain (lowercase A-label form).
    pub domain: String,
    /// Declared DKIM selectors.
    pub selectors: Vec<String>,
    /// CID of the record version verified.
    pub record_cid: Option<String>,
    /// Repo revision of the commit that wrote it, when known.
    pub rev: Option<String>,
    /// The record's `createdAt`.
    pub created_at: Option<String>,
    /// When the labeler first saw it (unix ms).
    pub first_seen_ms: i64,
    /// Outcome of the latest verification.
    pub verdict: Outcome,
    /// Whether it currently counts as verified: the last definitive verdict was a pass and it
    /// has not gone stale. Labels follow this, not the latest verdict alone.
    pub standing: bool,
    /// Whether it currently counts towards `relay-member`.
    pub relay_member: bool,
    /// The latest verification report, as JSON.
    pub report: Option<String>,
    /// When it was last checked (unix ms).
    pub checked_ms: Option<i64>,
    /// When it last got a definitive (pass or fail) answer (unix ms).
    pub last_definitive_ms: Option<i64>,
    /// Consecutive confirmed failures.
    pub consecutive_failures: u32,
    /// Consecutive undecided checks.
    pub consecutive_undecided: u32,
    /// When it is due for its next check (unix ms).
    pub next_check_ms: i64,
}

/// Latest applied revision of one record, or its tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRev {
    /// Record key.
    pub rkey: String,
    /// Repo revision (a TID; sorts chronologically as a string).
    pub rev: String,
    /// Whether the record was deleted at that revision.
    pub deleted: bool,
}

/// Account status of a DID, from Jetstream `account` events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Whether the account is active.
    pub active: bool,
    /// Why not, when inactive (`deactivated`, `takendown`, `deleted`, …; an open set).
    pub status: Option<String>,
}

/// An attestation the labeler refused to track, and why (e.g. its DID already has the most
/// attestations one DID may hold).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Record key.
    pub rkey: String,
    /// Why, in words an operator can act on.
    pub reason: String,
    /// When (unix ms).
    pub at_ms: i64,
}

/// Everything the store holds about one DID, read inside the write transaction.
#[derive(Clone, Debug, Default)]
pub struct DidState {
    /// Its attestations.
    pub attestations: Vec<Attestation>,
    /// Latest applied revision per record key.
    pub revs: Vec<RecordRev>,
    /// Last known account status.
    pub account: Option<Account>,
    /// Current labels from this labeler on the DID (bare-DID subject).
    pub labels: Vec<StoredLabel>,
    /// The did:key of the active signing key, when one is recorded: a transaction that would
    /// sign with another key must not write (see [`crate::keys::Signer`]).
    pub active_key: Option<String>,
}

impl DidState {
    /// The attestation with this rkey.
    pub fn attestation(&self, rkey: &str) -> Option<&Attestation> {
        self.attestations.iter().find(|a| a.rkey == rkey)
    }

    /// The latest applied revision of this record key.
    pub fn rev(&self, rkey: &str) -> Option<&RecordRev> {
        self.revs.iter().find(|r| r.rkey == rkey)
    }

    /// The current label with this value, if any (positive or negation).
    pub fn label(&self, val: &str) -> Option<&StoredLabel> {
        self.labels
            .iter()
            .find(|l| l.signed.label.val == val && l.signed.label.cid.is_none())
    }
}

/// Changes to commit for one DID, all in one transaction.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// Attestations to insert or replace.
    pub put: Vec<Attestation>,
    /// Record keys of attestations to delete.
    pub delete: Vec<String>,
    /// Record revisions to remember.
    pub revs: Vec<RecordRev>,
    /// New account status.
    pub account: Option<Account>,
    /// Labels to write (each replaces the current row for its key, with a new seq).
    pub labels: Vec<SignedLabel>,
    /// Jetstream cursor to save (kept only if larger than the saved one).
    pub cursor: Option<i64>,
    /// Attestations refused; only the newest [`MAX_REFUSALS`] per DID are kept.
    pub refused: Vec<Refusal>,
    /// Record keys whose refusal no longer applies (the record is tracked or gone).
    pub unrefuse: Vec<String>,
    /// Bring every attestation of the DID due no later than this (unix ms): an account event
    /// that could not be confirmed, or a reactivated account, is re-checked soon.
    pub recheck_by_ms: Option<i64>,
}

/// Refusals kept per DID (the newest).
pub const MAX_REFUSALS: usize = 16;

impl Changes {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.put.is_empty()
            && self.delete.is_empty()
            && self.revs.is_empty()
            && self.account.is_none()
            && self.labels.is_empty()
            && self.cursor.is_none()
            && self.refused.is_empty()
            && self.unrefuse.is_empty()
            && self.recheck_by_ms.is_none()
    }
}

/// What a committed [`Changes`] produced.
#[derive(Clone, Debug, Default)]
pub struct Committed {
    /// The labels written, with their seqs.
    pub labels: Vec<StoredLabel>,
}

pub(super) fn attestation_from_row(r: &Row<'_>) -> rusqlite::Result<Attestation> {
    let selectors: String = r.get(3)?;
    let selectors: Vec<String> = serde_json::from_str(&selectors).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let verdict: String = r.get(8)?;
    let verdict = Outcome::parse(&verdict).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            8,
            rusqlite::types::Type::Text,
            format!("unknown verdict {verdict:?}").into(),
        )
    })?;
    Ok(Attestation {
        did: r.get(0)?,
        rkey: r.get(1)?,
        domain: r.get(2)?,
        selectors,
        record_cid: r.get(4)?,
        rev: r.get(5)?,
        created_at: r.get(6)?,
        first_seen_ms: r.get(7)?,
        verdict,
        standing: r.get(9)?,
        relay_member: r.get(10)?,
        report: r.get(11)?,
        checked_ms: r.get(12)?,
        last_definitive_ms: r.get(13)?,
        consecutive_failures: r.get(14)?,
        consecutive_undecided: r.get(15)?,
        next_check_ms: r.get(16)?,
    })
}

pub(super) const ATTESTATION_COLUMNS: &str = "did, rkey, domain, selectors, record_cid, rev, created_at, \
     first_seen_ms, verdict, standing, relay_member, report, checked_ms, last_definitive_ms, \
     consecutive_failures, consecutive_undecided, next_check_ms";

fn attestations_of(c: &Connection, did: &str) -> Result<Vec<Attestation>, Error> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {ATTESTATION_COLUMNS} FROM attestations WHERE did = ?1 ORDER BY rkey"
    ))?;
    let rows = stmt
        .query_map([did], attestation_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

fn put_attestation(tx: &Transaction<'_>, a: &Attestation) -> Result<(), Error> {
    let selectors = serde_json::to_string(&a.selectors).map_err(|e| Error::Corrupt {
        table: "attestations",
        message: e.to_string(),
    })?;
    tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO attestations ({ATTESTATION_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
    ))?
    .execute(params![
        a.did,
        a.rkey,
        a.domain,
        selectors,
        a.record_cid,
        a.rev,
        a.created_at,
        a.first_seen_ms,
        a.verdict.as_str(),
        a.standing,
        a.relay_member,
        a.report,
        a.checked_ms,
        a.last_definitive_ms,
        a.consecutive_failures,
        a.consecutive_undecided,
        a.next_check_ms,
    ])?;
    Ok(())
}

fn save_cursor_in(c: &Connection, value: i64) -> Result<(), Error> {
    c.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
    )?
    .execute(params![CURSOR_KEY, value])?;
    Ok(())
}

impl Store {
    /// Reads a DID's state, lets `decide` compute the changes, and commits them — all in one
    /// `IMMEDIATE` transaction, so no other writer can interleave between the read and the
    /// write. `src` selects which labeler's labels are loaded into [`DidState::labels`].
    ///
    /// `decide` runs while the write lock is held: it must be quick and do no I/O (signing a
    /// label is fine). Returning `Err` rolls everything back and hands the error through.
    pub fn update_did<E>(
        &self,
        did: &str,
        src: &str,
        decide: impl FnOnce(&DidState) -> Result<Changes, E>,
    ) -> Result<Result<Committed, E>, Error> {
        let mut conn = self.writer();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let state = DidState {
            attestations: attestations_of(&tx, did)?,
            revs: tx
                .prepare_cached("SELECT rkey, rev, deleted FROM record_revs WHERE did = ?1")?
                .query_map([did], |r| {
                    Ok(RecordRev {
                        rkey: r.get(0)?,
                        rev: r.get(1)?,
                        deleted: r.get(2)?,
                    })
                })?
                .collect::<Result<_, _>>()?,
            account: tx
                .prepare_cached("SELECT active, status FROM accounts WHERE did = ?1")?
                .query_row([did], |r| {
                    Ok(Account {
                        active: r.get(0)?,
                        status: r.get(1)?,
                    })
                })
                .optional()?,
            labels: current_for(&tx, src, did)?,
            active_key: active_key_in(&tx)?,
        };
        let changes = match decide(&state) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        for a in &changes.put {
            super::console::note_verdict(&tx, state.attestation(&a.rkey), a)?;
            put_attestation(&tx, a)?;
        }
        for rkey in &changes.delete {
            tx.prepare_cached("DELETE FROM attestations WHERE did = ?1 AND rkey = ?2")?
                .execute(params![did, rkey])?;
            super::console::forget_history(&tx, did, rkey)?;
        }
        for r in &changes.revs {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO record_revs (did, rkey, rev, deleted) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![did, r.rkey, r.rev, r.deleted])?;
        }
        if let Some(acct) = &changes.account {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO accounts (did, active, status, updated_ms)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![did, acct.active, acct.status, now_ms()])?;
        }
        let mut committed = Committed::default();
        for l in &changes.labels {
            let seq = put_label(&tx, l)?;
            committed.labels.push(StoredLabel {
                seq,
                signed: l.clone(),
            });
        }
        for r in &changes.refused {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO refusals (did, rkey, reason, at_ms) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![did, r.rkey, r.reason, r.at_ms])?;
        }
        if !changes.refused.is_empty() {
            tx.prepare_cached(
                "DELETE FROM refusals WHERE did = ?1 AND rkey NOT IN
                 (SELECT rkey FROM refusals WHERE did = ?1 ORDER BY at_ms DESC, rkey LIMIT ?2)",
            )?
            .execute(params![did, MAX_REFUSALS as i64])?;
        }
        for rkey in &changes.unrefuse {
            tx.prepare_cached("DELETE FROM refusals WHERE did = ?1 AND rkey = ?2")?
                .execute(params![did, rkey])?;
        }
        if let Some(by) = changes.recheck_by_ms {
            tx.prepare_cached(
                "UPDATE attestations SET next_check_ms = min(next_check_ms, ?2) WHERE did = ?1",
            )?
            .execute(params![did, by])?;
        }
        if let Some(cursor) = changes.cursor {
            save_cursor_in(&tx, cursor)?;
        }
        tx.commit()?;
        drop(conn);
        if !committed.labels.is_empty() {
            self.notify_commit();
        }
        if !changes.put.is_empty() || changes.recheck_by_ms.is_some() {
            self.notify_schedule();
        }
        Ok(Ok(committed))
    }

    /// Saves the Jetstream cursor unless a larger one is already saved.
    pub fn save_cursor(&self, time_us: i64) -> Result<(), Error> {
        save_cursor_in(&self.writer(), time_us)
    }

    /// Records an operator's `labeler breaker release` at `now_ms`.
    pub fn release_breaker(&self, now_ms: i64) -> Result<(), Error> {
        self.writer()
            .prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
            .execute(params![BREAKER_RELEASE_KEY, now_ms])?;
        Ok(())
    }

    /// When an operator last released the breaker (unix ms), if ever.
    pub fn breaker_released_ms(&self) -> Result<Option<i64>, Error> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row([BREAKER_RELEASE_KEY], |r| r.get(0))
                .optional()?)
        })
    }

    /// The saved Jetstream cursor.
    pub fn cursor(&self) -> Result<Option<i64>, Error> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row([CURSOR_KEY], |r| r.get(0))
                .optional()?)
        })
    }

    /// The DID's attestations, by rkey.
    pub fn attestations_for(&self, did: &str) -> Result<Vec<Attestation>, Error> {
        self.read(|c| attestations_of(c, did))
    }

    /// Every attestation (for status pages and tests; not for hot paths).
    pub fn all_attestations(&self) -> Result<Vec<Attestation>, Error> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {ATTESTATION_COLUMNS} FROM attestations ORDER BY did, rkey"
            ))?;
            let rows = stmt
                .query_map([], attestation_from_row)?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    /// The DID's refused attestations, newest first.
    pub fn refusals_for(&self, did: &str) -> Result<Vec<Refusal>, Error> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT rkey, reason, at_ms FROM refusals WHERE did = ?1 ORDER BY at_ms DESC, rkey",
            )?;
            let rows = stmt
                .query_map([did], |r| {
                    Ok(Refusal {
                        rkey: r.get(0)?,
                        reason: r.get(1)?,
                        at_ms: r.get(2)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    /// The latest applied revision of a record.
    pub fn record_rev(&self, did: &str, rkey: &str) -> Result<Option<RecordRev>, Error> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT rkey, rev, deleted FROM record_revs WHERE did = ?1 AND rkey = ?2",
            )?
            .query_row(params![did, rkey], |r| {
                Ok(RecordRev {
                    rkey: r.get(0)?,
                    rev: r.get(1)?,
                    deleted: r.get(2)?,
                })
            })
            .optional()?)
        })
    }

    /// DIDs with at least one attestation: the accounts whose identity and account events
    /// matter.
    pub fn tracked_dids(&self) -> Result<Vec<String>, Error> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT DISTINCT did FROM attestations")?;
            let rows = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    /// Claims up to `limit` attestations due at `now_ms` for re-verification: returns their
    /// (did, rkey) and pushes their next check to `now_ms + lease_ms`, in one transaction, so
    /// a sweep never hands out the same attestation twice and a crash mid-check only delays
    /// it by the lease.
    pub fn claim_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, String)>, Error> {
        let mut conn = self.writer();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let due: Vec<(String, String)> = tx
            .prepare_cached(
                "SELECT did, rkey FROM attestations WHERE next_check_ms <= ?1
                 ORDER BY next_check_ms LIMIT ?2",
            )?
            .query_map(params![now_ms, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        for (did, rkey) in &due {
            tx.prepare_cached(
                "UPDATE attestations SET next_check_ms = ?3 WHERE did = ?1 AND rkey = ?2",
            )?
            .execute(params![did, rkey, now_ms + lease_ms])?;
        }
        tx.commit()?;
        Ok(due)
    }

    /// When the next attestation is due (unix ms), if any.
    pub fn next_due_ms(&self) -> Result<Option<i64>, Error> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT min(next_check_ms) FROM attestations")?
                    .query_row([], |r| r.get(0))?,
            )
        })
    }

    /// Number of attestations per verdict, for metrics.
    pub fn verdict_counts(&self) -> Result<Vec<(Outcome, i64)>, Error> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT verdict, count(*) FROM attestations GROUP BY verdict ORDER BY verdict",
            )?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows
                .into_iter()
                .filter_map(|(v, n)| Outcome::parse(&v).map(|v| (v, n)))
                .collect())
        })
    }
}

/// Wall-clock unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
