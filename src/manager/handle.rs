//! What one command does: confirm the record at its PDS, verify, decide, commit.

use std::sync::Arc;

use serde_json::Value;

use super::decide::{advance, decide_labels, failing_reasons, note_report};
use super::{Command, Error, Shared, with_retries};
use crate::attestation::{self, Record};
use crate::label;
use crate::store::{Account, Attestation, Changes, DidState, RecordRev};
use crate::telemetry;
use crate::verify::{Outcome, Report};

/// Where the content to verify comes from.
#[derive(Debug)]
enum Source {
    /// A record copy to validate and verify (the PDS's, or Jetstream's when not confirming).
    Record { value: Value, cid: Option<String> },
    /// Re-verify the stored domain and selectors (re-checks without PDS confirmation).
    Stored,
    /// The record does not exist (confirmed delete, or the PDS denies it).
    Gone,
    /// The PDS could not be asked; `fallback` is Jetstream's unconfirmed copy, if any.
    Unreachable {
        reason: String,
        fallback: Option<(Value, Option<String>)>,
    },
}

impl Shared {
    /// The DID's stored attestations (retrying transient database errors).
    async fn attestations(&self, did: &str) -> Result<Vec<Attestation>, Error> {
        let did = did.to_owned();
        with_retries(|| {
            let (store, did) = (self.store.clone(), did.clone());
            async move { store.call(move |s| s.attestations_for(&did)).await }
        })
        .await
    }

    /// One stored attestation.
    async fn attestation(&self, did: &str, rkey: &str) -> Result<Option<Attestation>, Error> {
        Ok(self
            .attestations(did)
            .await?
            .into_iter()
            .find(|a| a.rkey == rkey))
    }

    pub(super) async fn handle(&self, cmd: Command) -> Result<(), Error> {
        let cursor = cmd.cursor();
        let result = match cmd {
            Command::Put {
                did,
                rkey,
                rev,
                record,
                cid,
                cursor,
            } => {
                self.on_record(&did, &rkey, rev, Some((record, cid)), cursor)
                    .await
            }
            Command::Delete {
                did,
                rkey,
                rev,
                cursor,
            } => self.on_record(&did, &rkey, rev, None, cursor).await,
            Command::Identity { did, .. } => self.on_identity(&did).await,
            Command::Account {
                did,
                active,
                status,
                cursor,
            } => self.on_account(&did, active, status, cursor).await,
            Command::Recheck { did, rkey } => {
                let source = if self.options.verify_records_at_pds {
                    self.fetch(&did, &rkey, None).await
                } else {
                    Source::Stored
                };
                self.reconcile(&did, &rkey, None, source, None).await
            }
            Command::Checkpoint { .. } => Ok(()),
        };
        if let Some(t) = cursor {
            // Finished (committed or skipped): later commits may carry the cursor past it.
            // On error the daemon stops and the event is replayed after restart.
            if result.is_ok() {
                self.watermark
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .finish(t);
            }
        }
        result
    }

    /// A create/update (`copy` is Jetstream's record and CID) or a delete (`copy` is `None`).
    /// With PDS confirmation, both only trigger a fetch of the record's current state at the
    /// author's PDS, which decides; without it, Jetstream's word is taken.
    async fn on_record(
        &self,
        did: &str,
        rkey: &str,
        rev: String,
        copy: Option<(Value, Option<String>)>,
        cursor: i64,
    ) -> Result<(), Error> {
        if self.duplicate(did, rkey, &rev).await? {
            return Ok(());
        }
        let source = match copy {
            _ if self.options.verify_records_at_pds => self.fetch(did, rkey, copy).await,
            Some((value, cid)) => Source::Record { value, cid },
            None => Source::Gone,
        };
        self.reconcile(did, rkey, Some(rev), source, Some(cursor))
            .await
    }

    /// True when this exact commit was already applied. With PDS confirmation only an equal
    /// revision counts: the PDS copy is the truth, so older or forged revisions just converge
    /// on it. Without confirmation Jetstream is trusted, and an older revision is stale.
    async fn duplicate(&self, did: &str, rkey: &str, rev: &str) -> Result<bool, Error> {
        let (d, r) = (did.to_owned(), rkey.to_owned());
        let stored = with_retries(|| {
            let (store, d, r) = (self.store.clone(), d.clone(), r.clone());
            async move { store.call(move |s| s.record_rev(&d, &r)).await }
        })
        .await?;
        let dup = stored.is_some_and(|s| {
            if self.options.verify_records_at_pds {
                s.rev == rev
            } else {
                s.rev.as_str() >= rev
            }
        });
        if dup {
            metrics::counter!(telemetry::JETSTREAM_SKIPPED, "reason" => "already-applied")
                .increment(1);
            tracing::debug!(did, rkey, rev, "event already applied; skipping");
        }
        Ok(dup)
    }

    /// Asks the author's PDS for the current record.
    async fn fetch(
        &self,
        did: &str,
        rkey: &str,
        fallback: Option<(Value, Option<String>)>,
    ) -> Source {
        match self.identity.get_record(did, attestation::NSID, rkey).await {
            Ok(Some(copy)) => Source::Record {
                value: copy.value,
                cid: copy.cid,
            },
            Ok(None) => Source::Gone,
            Err(e) if e.is_definitive() => {
                tracing::info!(did, rkey, error = %e, "DID does not resolve; treating the record as gone");
                Source::Gone
            }
            Err(e) => Source::Unreachable {
                reason: format!("could not fetch the record from the author's PDS: {e}"),
                fallback,
            },
        }
    }

    async fn on_identity(&self, did: &str) -> Result<(), Error> {
        self.identity.forget(did);
        let rkeys: Vec<String> = self
            .attestations(did)
            .await?
            .into_iter()
            .map(|a| a.rkey)
            .collect();
        if rkeys.is_empty() {
            return Ok(());
        }
        tracing::info!(
            did,
            attestations = rkeys.len(),
            "identity changed; re-verifying"
        );
        for rkey in rkeys {
            let source = if self.options.verify_records_at_pds {
                self.fetch(did, &rkey, None).await
            } else {
                Source::Stored
            };
            self.reconcile(did, &rkey, None, source, None).await?;
        }
        Ok(())
    }

    async fn on_account(
        &self,
        did: &str,
        active: bool,
        status: Option<String>,
        cursor: i64,
    ) -> Result<(), Error> {
        if self.attestations(did).await?.is_empty() {
            // A DID whose attestations were all deleted (or never confirmed): nothing to do.
            return Ok(());
        }
        let (active, status) = if self.options.verify_records_at_pds {
            // Account events are unauthenticated claims too: ask the PDS.
            match self.identity.repo_status(did).await {
                Ok(s) => (s.active, s.status),
                Err(e) if e.is_definitive() => (false, Some("deleted".to_owned())),
                Err(e) => {
                    tracing::warn!(did, claimed_active = active, error = %e,
                        "account event could not be confirmed at the PDS; ignoring it for now");
                    metrics::counter!(telemetry::MANAGER_FAILURES, "reason" => "account-unconfirmed")
                        .increment(1);
                    return Ok(());
                }
            }
        } else {
            (active, status)
        };
        tracing::info!(
            did,
            active,
            status = status.as_deref().unwrap_or(""),
            "account status"
        );
        let account = Account { active, status };
        self.commit(did.to_owned(), Some(cursor), move |_, changes| {
            changes.account = Some(account.clone());
        })
        .await
    }

    /// Brings one attestation in line with `source` and commits the outcome.
    async fn reconcile(
        &self,
        did: &str,
        rkey: &str,
        rev: Option<String>,
        source: Source,
        cursor: Option<i64>,
    ) -> Result<(), Error> {
        let rev_entry = |deleted: bool| {
            rev.clone().map(|rev| RecordRev {
                rkey: rkey.to_owned(),
                rev,
                deleted,
            })
        };
        let now = self.options.clock.now_ms();
        let (value, cid, confirmed) = match source {
            Source::Gone => {
                let rkey_owned = rkey.to_owned();
                let tomb = rev_entry(true);
                tracing::info!(did, rkey, "attestation deleted");
                return self
                    .commit(did.to_owned(), cursor, move |state, changes| {
                        if state.attestation(&rkey_owned).is_some() {
                            changes.delete.push(rkey_owned.clone());
                        }
                        changes.revs.extend(tomb.clone());
                    })
                    .await;
            }
            Source::Unreachable { reason, fallback } => {
                let Some((value, cid)) = fallback else {
                    return self
                        .undecided_without_record(did, rkey, reason, cursor)
                        .await;
                };
                // Only Jetstream's copy: never labelled; verified once the PDS answers.
                tracing::warn!(did, rkey, %reason, "record not confirmed; will retry");
                (value, cid, Some(reason))
            }
            Source::Record { value, cid } => (value, cid, None),
            Source::Stored => {
                let Some(a) = self.attestation(did, rkey).await? else {
                    return Ok(());
                };
                let value = serde_json::json!({
                    "$type": attestation::NSID,
                    "domain": a.domain,
                    "dkimSelectors": a.selectors,
                    "createdAt": a.created_at.clone().unwrap_or_else(label::now_cts),
                });
                (value, a.record_cid, None)
            }
        };

        let record = match Record::from_json(&value) {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(did, rkey, reason = %e, "attestation record is invalid; not verifying it");
                let domain = value
                    .get("domain")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .chars()
                    .take(253)
                    .collect::<String>();
                let report = note_report(did, &domain, Outcome::Fail, e.to_string());
                let selectors = Vec::new();
                return self
                    .store_verdict(
                        did,
                        rkey,
                        rev_entry(false),
                        domain,
                        selectors,
                        None,
                        cid,
                        report,
                        cursor,
                        now,
                    )
                    .await;
            }
        };

        if let Some(reason) = confirmed {
            let report = note_report(did, &record.domain, Outcome::CouldNotDecide, reason);
            // Not confirmed: no revision recorded, so a replay retries it.
            return self
                .store_verdict(
                    did,
                    rkey,
                    None,
                    record.domain,
                    record.dkim_selectors,
                    Some(record.created_at),
                    cid,
                    report,
                    cursor,
                    now,
                )
                .await;
        }

        let mut report = self
            .checker
            .check(did, &record.domain, &record.dkim_selectors, false)
            .await;
        if report.verdict == Outcome::Fail {
            // Confirm a definitive failure with fresh queries before acting on it
            // (mail-dns.md §6: a resolver can fake absence).
            let fresh = self
                .checker
                .check(did, &record.domain, &record.dkim_selectors, true)
                .await;
            if fresh.verdict != Outcome::Fail {
                tracing::info!(did, domain = %record.domain, verdict = ?fresh.verdict,
                    "failure not confirmed by a fresh re-check");
            }
            report = fresh;
        }
        self.store_verdict(
            did,
            rkey,
            rev_entry(false),
            record.domain,
            record.dkim_selectors,
            Some(record.created_at),
            cid,
            report,
            cursor,
            now,
        )
        .await
    }

    /// A re-check whose record could not be fetched: counts as an undecided round for the
    /// stored attestation (nothing to do if there is none).
    async fn undecided_without_record(
        &self,
        did: &str,
        rkey: &str,
        reason: String,
        cursor: Option<i64>,
    ) -> Result<(), Error> {
        let Some(a) = self.attestation(did, rkey).await? else {
            tracing::warn!(did, rkey, %reason, "record could not be fetched and is unknown; skipping");
            return self.commit(did.to_owned(), cursor, |_, _| {}).await;
        };
        let report = note_report(did, &a.domain, Outcome::CouldNotDecide, reason);
        let now = self.options.clock.now_ms();
        self.store_verdict(
            did,
            rkey,
            None,
            a.domain,
            a.selectors,
            a.created_at,
            a.record_cid,
            report,
            cursor,
            now,
        )
        .await
    }

    /// Commits a verification outcome for one attestation and the DID's resulting labels.
    #[allow(clippy::too_many_arguments)]
    async fn store_verdict(
        &self,
        did: &str,
        rkey: &str,
        rev: Option<RecordRev>,
        domain: String,
        selectors: Vec<String>,
        created_at: Option<String>,
        cid: Option<String>,
        report: Report,
        cursor: Option<i64>,
        now: i64,
    ) -> Result<(), Error> {
        let outcome = report.verdict;
        let relay = report.relay_member();
        let report_json = serde_json::to_string(&report).unwrap_or_else(|_| "{}".to_owned());
        let opts = self.options.clone();
        let (did_s, rkey_s) = (did.to_owned(), rkey.to_owned());
        let jitter: f64 = rand::random();
        tracing::info!(
            did,
            rkey,
            domain = %domain,
            verdict = outcome.as_str(),
            reasons = %failing_reasons(&report),
            "verification"
        );
        metrics::counter!(telemetry::VERIFICATIONS, "outcome" => outcome.as_str()).increment(1);
        self.commit(did.to_owned(), cursor, move |state, changes| {
            let prev = state.attestation(&rkey_s).filter(|p| {
                // A record that now names another domain or other selectors starts afresh.
                p.domain == domain && p.selectors == selectors
            });
            let first_seen_ms = state.attestation(&rkey_s).map_or(now, |p| p.first_seen_ms);
            let next = advance(prev, outcome, relay, now, jitter, &opts);
            changes.put.push(Attestation {
                did: did_s.clone(),
                rkey: rkey_s.clone(),
                domain: domain.clone(),
                selectors: selectors.clone(),
                record_cid: cid.clone(),
                rev: rev
                    .as_ref()
                    .map(|r| r.rev.clone())
                    .or_else(|| prev.and_then(|p| p.rev.clone())),
                created_at: created_at.clone(),
                first_seen_ms,
                verdict: next.verdict,
                standing: next.standing,
                relay_member: next.relay_member,
                report: Some(report_json.clone()),
                checked_ms: Some(now),
                last_definitive_ms: next.last_definitive_ms,
                consecutive_failures: next.consecutive_failures,
                consecutive_undecided: next.consecutive_undecided,
                next_check_ms: next.next_check_ms,
            });
            changes.revs.extend(rev.clone());
        })
        .await
    }

    /// Runs `mutate` and the label decision in one store transaction, with the cursor
    /// watermark.
    ///
    /// The watermark is computed just before the transaction: events still unfinished stay in
    /// `inflight`, and an event is only finished after its commit, so the value can only be
    /// conservative.
    ///
    /// `mutate` is `Fn`, not `FnOnce`: a transaction that fails (even at COMMIT, after the
    /// changes were computed) is rolled back and retried, and the retry must compute the same
    /// changes again from the state it reads.
    async fn commit(
        &self,
        did: String,
        cursor: Option<i64>,
        mutate: impl Fn(&DidState, &mut Changes) + Send + Sync + 'static,
    ) -> Result<(), Error> {
        let mutate = Arc::new(mutate);
        let relay_enabled = self.options.relay_enabled;
        let committed = with_retries(|| {
            let store = self.store.clone();
            let (did, src, key) = (did.clone(), self.options.src.clone(), self.key.clone());
            let mutate = mutate.clone();
            let cursor = cursor.and_then(|t| {
                self.watermark
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .value(Some(t))
            });
            async move {
                store
                    .call(move |s| {
                        s.update_did(&did, &src, |state| {
                            let mut changes = Changes::default();
                            mutate(state, &mut changes);
                            changes.labels =
                                decide_labels(&did, &src, state, &changes, relay_enabled)
                                    .into_iter()
                                    .map(|l| l.sign(&key))
                                    .collect();
                            changes.cursor = cursor;
                            Ok::<_, std::convert::Infallible>(changes)
                        })
                    })
                    .await
            }
        })
        .await?;
        let Ok(committed) = committed;
        for l in &committed.labels {
            let x = &l.signed.label;
            if x.neg {
                metrics::counter!(telemetry::LABELS_NEGATED, "val" => x.val.clone()).increment(1);
                tracing::info!(did = %did, val = %x.val, seq = l.seq, "label negated");
            } else {
                metrics::counter!(telemetry::LABELS_CREATED, "val" => x.val.clone()).increment(1);
                tracing::info!(did = %did, val = %x.val, seq = l.seq, "label created");
            }
        }
        Ok(())
    }
}
