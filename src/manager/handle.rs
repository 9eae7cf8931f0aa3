//! What one command does: ask the author's PDS, verify, ask the guard, commit.
//!
//! Every command ends in one store transaction that carries the DID's new state, its labels
//! and the cursor watermark. The network part (PDS, PLC, every DNS query) runs under one
//! deadline per record, `verifyDeadline`; past it the outcome is "could not decide".

use std::sync::Arc;

use serde_json::Value;

use super::decide::{self, Policy, advance, decide_labels, failing_reasons, note_report};
use super::pds::{Found, RepoState};
use super::{Command, Error, HOLD_RETRY, MAX_ATTESTATIONS, MAX_LIST_PAGES, Shared, with_retries};
use crate::attestation::{self, Record};
use crate::label;
use crate::store::{Account, Attestation, Changes, DidState, MAX_REFUSALS, RecordRev, Refusal};
use crate::telemetry;
use crate::verify::{self, Outcome, Report, Vantage};

/// Where the content to verify comes from.
#[derive(Debug)]
enum Source {
    /// Ask the author's PDS; `fallback` is Jetstream's copy, kept (never labelled) for a record
    /// the labeler does not know yet while the PDS cannot be asked.
    Pds {
        fallback: Option<(Value, Option<String>)>,
    },
    /// A copy already in hand: Jetstream's (without PDS confirmation) or a `listRecords`
    /// page's.
    Copy {
        value: Value,
        cid: Option<String>,
        account: Option<Account>,
    },
    /// Jetstream says it was deleted (without PDS confirmation).
    Deleted,
    /// Re-verify the stored domain and selectors (re-checks without PDS confirmation).
    Stored,
}

/// What the network part of a command decided, ready to commit.
#[derive(Debug)]
enum Plan {
    /// Nothing to write but the cursor.
    Nothing,
    /// The record is gone (a proven delete).
    Gone { account: Option<Account> },
    /// The account is not active: labels withheld, attestation kept.
    Inactive(Account),
    /// Nothing could be learnt about the record.
    Unreachable {
        reason: String,
        fallback: Option<(Value, Option<String>)>,
    },
    /// The record breaks the lexicon.
    Invalid {
        domain: String,
        cid: Option<String>,
        reason: String,
        account: Option<Account>,
    },
    /// The DID already holds the most attestations a DID may.
    Refused(String),
    /// The checks ran.
    Checked(Box<Verified>),
}

/// One verification, ready to commit.
#[derive(Debug)]
struct Verified {
    record: Record,
    cid: Option<String>,
    report: Report,
    /// Why a would-be withdrawal is held, if the guard holds it.
    hold: Option<String>,
    /// The labeler's own resolver is failing: staleness does not advance.
    degraded: bool,
    /// The account's status, when the PDS gave it along the way.
    account: Option<Account>,
}

/// An attestation's new state: what the store needs besides the report.
struct Round {
    outcome: Outcome,
    relay: bool,
    report: Report,
    hold: Option<String>,
    degraded: bool,
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
                    Source::Pds { fallback: None }
                } else {
                    Source::Stored
                };
                self.reconcile(&did, &rkey, None, source, None).await
            }
            Command::Resync {
                did,
                cursor,
                copies,
            } => self.resync(&did, copies, cursor).await,
            Command::Checkpoint { .. } => Ok(()),
        };
        if let Some(t) = cursor {
            // Finished (committed or skipped): later commits may carry the cursor past it.
            // On error the daemon stops and the event is replayed after restart.
            if result.is_ok() {
                self.finish(t);
            }
        }
        result
    }

    /// A create/update (`copy` is Jetstream's record and CID) or a delete (`copy` is `None`).
    /// With PDS confirmation, both only trigger a look at the record's current state at the
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
            _ if self.options.verify_records_at_pds => Source::Pds { fallback: copy },
            Some((value, cid)) => Source::Copy {
                value,
                cid,
                account: None,
            },
            None => Source::Deleted,
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
                Source::Pds { fallback: None }
            } else {
                Source::Stored
            };
            self.reconcile(did, &rkey, None, source, None).await?;
        }
        Ok(())
    }

    /// An account event. With PDS confirmation the claim only triggers a look at the repo's
    /// status; one that cannot be read now is retried (the DID's attestations come due
    /// soon, and their re-checks read the status again, with backoff), never dropped.
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
        let now = self.options.clock.now_ms();
        let account = if self.options.verify_records_at_pds {
            let state = tokio::time::timeout(self.options.verify_deadline, self.repo_state(did))
                .await
                .unwrap_or_else(|_| RepoState::Unknown(self.deadline_reason()));
            match state {
                RepoState::Known(a) => a,
                RepoState::Unknown(why) => {
                    tracing::warn!(did, claimed_active = active, reason = %why,
                        "account event could not be confirmed at the PDS; re-checking soon");
                    metrics::counter!(telemetry::MANAGER_FAILURES, "reason" => "account-unconfirmed")
                        .increment(1);
                    let by = now + self.options.account_retry.as_millis() as i64;
                    return self
                        .commit(did.to_owned(), Some(cursor), move |_, changes| {
                            changes.recheck_by_ms = Some(by);
                        })
                        .await;
                }
            }
        } else {
            Account { active, status }
        };
        tracing::info!(
            did,
            active = account.active,
            status = account.status.as_deref().unwrap_or(""),
            "account status"
        );
        self.commit(did.to_owned(), Some(cursor), move |state, changes| {
            let was_active = state.account.as_ref().is_none_or(|a| a.active);
            if account.active && !was_active {
                // Reactivated: re-check now, so standing that went stale comes back too.
                changes.recheck_by_ms = Some(now);
            }
            changes.account = Some(account.clone());
        })
        .await
    }

    /// Re-reads every attestation record of a DID from its PDS (`listRecords`): what a DID's
    /// queue collapses into when it holds more commands than a DID may (the module docs).
    /// `copies` are Jetstream's latest copies of records it announced, kept (never labelled)
    /// for records the labeler does not know yet if the PDS cannot be asked.
    async fn resync(
        &self,
        did: &str,
        copies: Vec<(String, Value, Option<String>)>,
        cursor: Option<i64>,
    ) -> Result<(), Error> {
        // Only the last commit carries the cursor: the oldest event this resync absorbed is
        // finished once every record's outcome is committed, not at the first of them.
        self.identity.forget(did);
        let listing = tokio::time::timeout(self.options.verify_deadline, self.list_all(did))
            .await
            .unwrap_or_else(|_| Err(self.deadline_reason()));
        let stored = self.attestations(did).await?;
        let (account, listed) = match listing {
            Ok(Listing::Inactive(account)) => {
                for a in &stored {
                    self.apply(did, &a.rkey, None, Plan::Inactive(account.clone()), None)
                        .await?;
                }
                return self.commit(did.to_owned(), cursor, |_, _| {}).await;
            }
            Ok(Listing::Records(account, listed)) => (account, listed),
            Err(reason) => {
                tracing::warn!(did, %reason, "could not re-read the DID's records; will retry");
                for a in &stored {
                    let plan = Plan::Unreachable {
                        reason: reason.clone(),
                        fallback: None,
                    };
                    self.apply(did, &a.rkey, None, plan, None).await?;
                }
                for (rkey, value, cid) in copies {
                    if !stored.iter().any(|a| a.rkey == rkey) {
                        let plan = Plan::Unreachable {
                            reason: reason.clone(),
                            fallback: Some((value, cid)),
                        };
                        self.apply(did, &rkey, None, plan, None).await?;
                    }
                }
                return self.commit(did.to_owned(), cursor, |_, _| {}).await;
            }
        };
        // Stored records the active repo no longer has are proven gone.
        for a in &stored {
            if !listed.iter().any(|(rkey, _, _)| *rkey == a.rkey) {
                let plan = Plan::Gone {
                    account: Some(account.clone()),
                };
                self.apply(did, &a.rkey, None, plan, None).await?;
            }
        }
        // Tracked records first, then the others oldest first (rkeys are TIDs), up to the
        // most one DID may hold; the newest beyond it are refused.
        let mut order: Vec<&(String, Value, Option<String>)> = listed.iter().collect();
        order.sort_by_key(|(rkey, _, _)| (!stored.iter().any(|a| a.rkey == *rkey), rkey.clone()));
        let (admitted, refused) = order.split_at(order.len().min(MAX_ATTESTATIONS));
        for (rkey, value, cid) in admitted {
            let source = Source::Copy {
                value: value.clone(),
                cid: cid.clone(),
                account: Some(account.clone()),
            };
            self.reconcile(did, rkey, None, source, None).await?;
        }
        if !refused.is_empty() {
            let reason = refusal_reason(did, refused.len());
            let now = self.options.clock.now_ms();
            let refusals: Vec<Refusal> = refused
                .iter()
                .rev()
                .take(MAX_REFUSALS)
                .map(|(rkey, _, _)| Refusal {
                    rkey: rkey.clone(),
                    reason: reason.clone(),
                    at_ms: now,
                })
                .collect();
            tracing::warn!(
                did,
                refused = refused.len(),
                "attestations refused: too many for one DID"
            );
            self.commit(did.to_owned(), None, move |_, changes| {
                changes.refused = refusals.clone();
            })
            .await?;
        }
        self.commit(did.to_owned(), cursor, |_, _| {}).await
    }

    /// Every attestation record in the DID's repo (bounded), or the account's inactive state.
    async fn list_all(&self, did: &str) -> Result<Listing, String> {
        let account = match self.repo_state(did).await {
            RepoState::Known(a) if !a.active => return Ok(Listing::Inactive(a)),
            RepoState::Known(a) => a,
            RepoState::Unknown(why) => return Err(why),
        };
        let mut listed = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let (page, next) = self
                .identity
                .list_records(did, attestation::NSID, 100, cursor.as_deref())
                .await
                .map_err(|e| format!("could not list the records at the author's PDS: {e}"))?;
            for copy in page {
                if let Some(rkey) = copy.uri.rsplit('/').next() {
                    listed.push((rkey.to_owned(), copy.value, copy.cid));
                }
            }
            match next {
                Some(n) if Some(&n) != cursor.as_ref() => cursor = Some(n),
                _ => break,
            }
        }
        Ok(Listing::Records(account, listed))
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
        let fallback = match &source {
            Source::Pds { fallback } => fallback.clone(),
            _ => None,
        };
        let plan = match tokio::time::timeout(
            self.options.verify_deadline,
            self.gather(did, rkey, source),
        )
        .await
        {
            Ok(plan) => plan?,
            Err(_) => Plan::Unreachable {
                reason: self.deadline_reason(),
                fallback,
            },
        };
        self.apply(did, rkey, rev, plan, cursor).await
    }

    fn deadline_reason(&self) -> String {
        format!(
            "the verification did not finish within {} (the PDS, the PLC directory or DNS was \
             too slow)",
            humantime::format_duration(self.options.verify_deadline)
        )
    }

    /// The network part: what the PDS says, the checks from each vantage point, the guard.
    async fn gather(&self, did: &str, rkey: &str, source: Source) -> Result<Plan, Error> {
        let (value, cid, account) = match source {
            Source::Pds { fallback } => match self.ask_pds(did, rkey).await {
                Found::Record {
                    value,
                    cid,
                    account,
                } => (value, cid, account),
                Found::Gone { account } => {
                    return Ok(Plan::Gone {
                        account: Some(account),
                    });
                }
                Found::Inactive(account) => return Ok(Plan::Inactive(account)),
                Found::Unreachable(reason) => return Ok(Plan::Unreachable { reason, fallback }),
            },
            Source::Copy {
                value,
                cid,
                account,
            } => (value, cid, account),
            Source::Deleted => return Ok(Plan::Gone { account: None }),
            Source::Stored => {
                let stored = self.attestations(did).await?;
                let Some(a) = stored.into_iter().find(|a| a.rkey == rkey) else {
                    return Ok(Plan::Nothing);
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
                let domain = value
                    .get("domain")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .chars()
                    .take(253)
                    .collect::<String>();
                return Ok(Plan::Invalid {
                    domain,
                    cid,
                    reason: e.to_string(),
                    account,
                });
            }
        };
        let stored = self.attestations(did).await?;
        let prev = stored.iter().find(|a| a.rkey == rkey);
        if prev.is_none() && stored.len() >= MAX_ATTESTATIONS {
            return Ok(Plan::Refused(refusal_reason(did, 1)));
        }
        let report = self.check(did, &record).await;

        // The guard: would this withdraw a standing attestation?
        let prev =
            prev.filter(|p| p.domain == record.domain && p.selectors == record.dkim_selectors);
        let standing = prev.is_some_and(|p| p.standing);
        let degraded = standing
            && report.verdict != Outcome::Pass
            && self.guard.resolver_degraded().await.is_some();
        let mut hold = None;
        if let Some(p) = prev.filter(|p| p.standing) {
            self.guard.observe_recheck(did, rkey);
            let (outcome, relay) = (report.verdict, report.relay_member());
            hold = self.hold(p, outcome, relay, degraded).await;
        }
        Ok(Plan::Checked(Box::new(Verified {
            record,
            cid,
            report,
            hold,
            degraded,
            account,
        })))
    }

    /// Whether the guard holds the withdrawal that `outcome` would make of the standing
    /// attestation `prev`: `Some(why)` to hold it, `None` when it stays standing anyway or the
    /// withdrawal may be signed.
    async fn hold(
        &self,
        prev: &Attestation,
        outcome: Outcome,
        relay: bool,
        degraded: bool,
    ) -> Option<String> {
        let now = self.options.clock.now_ms();
        let next = advance(
            Some(prev),
            outcome,
            relay,
            now,
            0.5,
            &self.options,
            degraded,
        );
        if next.standing {
            return None;
        }
        self.guard
            .allow_withdrawal(&prev.did, &prev.rkey, &prev.domain)
            .await
            .err()
    }

    /// Runs the checks; a failure is looked at again without caches, then confirmed through
    /// the independent path before it counts (`verify::confirm`).
    async fn check(&self, did: &str, record: &Record) -> Report {
        let (domain, selectors) = (&record.domain, &record.dkim_selectors);
        let report = self
            .checker
            .check(did, domain, selectors, Vantage::Cached)
            .await;
        if report.verdict != Outcome::Fail {
            return report;
        }
        let fresh = self
            .checker
            .check(did, domain, selectors, Vantage::Fresh)
            .await;
        if fresh.verdict != Outcome::Fail {
            tracing::info!(did, %domain, verdict = fresh.verdict.as_str(),
                "failure not seen again without caches");
            return fresh;
        }
        let second = self
            .checker
            .check(did, domain, selectors, Vantage::Confirm)
            .await;
        let by = self.checker.describe(Vantage::Confirm).to_owned();
        let confirmed = verify::confirm(&fresh, &second, &by);
        if confirmed.verdict != Outcome::Fail {
            tracing::warn!(did, %domain, path = %by,
                "failure not confirmed through the independent path; nothing is withdrawn");
        }
        confirmed
    }

    /// Commits what [`Shared::gather`] decided.
    async fn apply(
        &self,
        did: &str,
        rkey: &str,
        rev: Option<String>,
        plan: Plan,
        cursor: Option<i64>,
    ) -> Result<(), Error> {
        let rev_entry = |deleted: bool| {
            rev.clone().map(|rev| RecordRev {
                rkey: rkey.to_owned(),
                rev,
                deleted,
            })
        };
        let rkey_s = rkey.to_owned();
        match plan {
            Plan::Nothing => self.commit(did.to_owned(), cursor, |_, _| {}).await,
            Plan::Gone { account } => {
                let tomb = rev_entry(true);
                tracing::info!(did, rkey, "attestation deleted");
                self.commit(did.to_owned(), cursor, move |state, changes| {
                    if state.attestation(&rkey_s).is_some() {
                        changes.delete.push(rkey_s.clone());
                    }
                    changes.unrefuse.push(rkey_s.clone());
                    changes.revs.extend(tomb.clone());
                    changes.account = account.clone().filter(|_| !state.attestations.is_empty());
                })
                .await
            }
            Plan::Inactive(account) => {
                let status = account.status.clone().unwrap_or_default();
                tracing::info!(did, rkey, %status, "account not active; labels withheld");
                let reason = format!(
                    "the account is {status} at its PDS: its labels are withheld until it is \
                     active again (the attestation is kept)"
                );
                self.stored_round(did, rkey, reason, Some(account), cursor)
                    .await
            }
            Plan::Unreachable { reason, fallback } => {
                let known = self.attestations(did).await?.iter().any(|a| a.rkey == rkey);
                match fallback {
                    // Jetstream's copy of a record the labeler does not know: kept as
                    // "could not decide" (never labelled) so the re-check finds it.
                    Some((value, cid)) if !known => {
                        tracing::warn!(did, rkey, %reason, "record not confirmed; will retry");
                        match Record::from_json(&value) {
                            Ok(record) => {
                                let report = note_report(
                                    did,
                                    &record.domain,
                                    Outcome::CouldNotDecide,
                                    reason,
                                );
                                // Not confirmed: no revision recorded, so a replay retries it.
                                self.store_round(
                                    did,
                                    rkey,
                                    None,
                                    &record,
                                    cid,
                                    None,
                                    plain(report),
                                    cursor,
                                )
                                .await
                            }
                            Err(_) => self.commit(did.to_owned(), cursor, |_, _| {}).await,
                        }
                    }
                    // A known record keeps its confirmed content and standing: only its
                    // round counts as undecided.
                    _ => self.stored_round(did, rkey, reason, None, cursor).await,
                }
            }
            Plan::Invalid {
                domain,
                cid,
                reason,
                account,
            } => {
                tracing::info!(did, rkey, %reason, "attestation record is invalid; not verifying it");
                let report = note_report(did, &domain, Outcome::Fail, reason);
                let record = Record {
                    domain,
                    dkim_selectors: Vec::new(),
                    created_at: String::new(),
                };
                self.store_round(
                    did,
                    rkey,
                    rev_entry(false),
                    &record,
                    cid,
                    account,
                    plain(report),
                    cursor,
                )
                .await
            }
            Plan::Refused(reason) => {
                tracing::warn!(did, rkey, %reason, "attestation refused");
                let at_ms = self.options.clock.now_ms();
                self.commit(did.to_owned(), cursor, move |_, changes| {
                    changes.refused.push(Refusal {
                        rkey: rkey_s.clone(),
                        reason: reason.clone(),
                        at_ms,
                    });
                })
                .await
            }
            Plan::Checked(v) => {
                let Verified {
                    record,
                    cid,
                    mut report,
                    hold,
                    degraded,
                    account,
                } = *v;
                if let Some(h) = &hold {
                    tracing::warn!(did, domain = %record.domain, reason = %h, "withdrawal held");
                    report.notes.push(h.clone());
                }
                let round = Round {
                    outcome: report.verdict,
                    relay: report.relay_member(),
                    report,
                    hold,
                    degraded,
                };
                self.store_round(
                    did,
                    rkey,
                    rev_entry(false),
                    &record,
                    cid,
                    account,
                    round,
                    cursor,
                )
                .await
            }
        }
    }

    /// An undecided round for a stored attestation, keeping its confirmed content (nothing to
    /// do if there is none). `account`, when known, is recorded too.
    async fn stored_round(
        &self,
        did: &str,
        rkey: &str,
        reason: String,
        account: Option<Account>,
        cursor: Option<i64>,
    ) -> Result<(), Error> {
        let stored = self.attestations(did).await?;
        let Some(a) = stored.iter().find(|a| a.rkey == rkey) else {
            tracing::debug!(did, rkey, %reason, "nothing stored for this record; skipping");
            return self.commit(did.to_owned(), cursor, |_, _| {}).await;
        };
        let mut report = note_report(did, &a.domain, Outcome::CouldNotDecide, reason);
        // A long PDS outage is one more way the labeler could withdraw by its own fault: a
        // standing attestation about to go stale asks the guard first. (An inactive account's
        // labels are withheld already; nothing to guard.)
        let mut hold = None;
        let inactive = account.as_ref().is_some_and(|a| !a.active);
        // An unreachable PDS may be the labeler's own network failing: then its resolver
        // fails its canaries too, and staleness does not advance.
        let mut degraded = false;
        if a.standing && !inactive {
            degraded = self.guard.resolver_degraded().await.is_some();
            hold = self.hold(a, Outcome::CouldNotDecide, false, degraded).await;
            report.notes.extend(hold.clone());
        }
        let record = Record {
            domain: a.domain.clone(),
            dkim_selectors: a.selectors.clone(),
            created_at: a.created_at.clone().unwrap_or_default(),
        };
        let round = Round {
            outcome: Outcome::CouldNotDecide,
            relay: false,
            report,
            hold,
            degraded,
        };
        self.store_round(
            did,
            rkey,
            None,
            &record,
            a.record_cid.clone(),
            account,
            round,
            cursor,
        )
        .await
    }

    /// Commits one round of an attestation and the DID's resulting labels.
    #[allow(clippy::too_many_arguments)]
    async fn store_round(
        &self,
        did: &str,
        rkey: &str,
        rev: Option<RecordRev>,
        record: &Record,
        cid: Option<String>,
        account: Option<Account>,
        round: Round,
        cursor: Option<i64>,
    ) -> Result<(), Error> {
        let now = self.options.clock.now_ms();
        let Round {
            outcome,
            relay,
            report,
            hold,
            degraded,
        } = round;
        let report_json = serde_json::to_string(&report).unwrap_or_else(|_| "{}".to_owned());
        let opts = self.options.clone();
        let (did_s, rkey_s) = (did.to_owned(), rkey.to_owned());
        let domain = record.domain.clone();
        let selectors = record.dkim_selectors.clone();
        let created_at = (!record.created_at.is_empty()).then(|| record.created_at.clone());
        let jitter: f64 = rand::random();
        tracing::info!(
            did,
            rkey,
            domain = %domain,
            verdict = outcome.as_str(),
            reasons = %failing_reasons(&report),
            confirmed_by = report.confirmed_by.as_deref().unwrap_or(""),
            "verification"
        );
        metrics::counter!(telemetry::VERIFICATIONS, "outcome" => outcome.as_str()).increment(1);
        let refusal = refusal_reason(did, 1);
        self.commit(did.to_owned(), cursor, move |state, changes| {
            changes.account = account.clone();
            if state.attestation(&rkey_s).is_none() && state.attestations.len() >= MAX_ATTESTATIONS
            {
                changes.refused.push(Refusal {
                    rkey: rkey_s.clone(),
                    reason: refusal.clone(),
                    at_ms: now,
                });
                return;
            }
            let prev = state.attestation(&rkey_s).filter(|p| {
                // A record that now names another domain or other selectors starts afresh.
                p.domain == domain && p.selectors == selectors
            });
            let first_seen_ms = state.attestation(&rkey_s).map_or(now, |p| p.first_seen_ms);
            let mut next = advance(prev, outcome, relay, now, jitter, &opts, degraded);
            if let Some(p) = prev
                && hold.is_some()
                && p.standing
                && !next.standing
            {
                let retry = HOLD_RETRY.min(opts.reverify_interval);
                next = decide::held(p, next, now + retry.as_millis() as i64);
            }
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
            changes.unrefuse.push(rkey_s.clone());
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
        let (relay_enabled, ttl) = (self.options.relay_enabled, self.options.label_ttl);
        // A rotation by another process is found inside the transaction: nothing is signed
        // with the retired key; the new one is loaded and the change computed again.
        let mut reloads = 0;
        let committed = loop {
            let id = self.signer.current();
            let result = with_retries(|| {
                let store = self.store.clone();
                let (did, id) = (did.clone(), id.clone());
                let mutate = mutate.clone();
                let cursor = cursor.and_then(|t| self.watermark_value(t));
                async move {
                    store
                        .call(move |s| {
                            s.update_did(&did, &id.src, |state| {
                                if let Some(active) = &state.active_key
                                    && active != id.key.did_key()
                                {
                                    return Err(active.clone());
                                }
                                let mut changes = Changes::default();
                                mutate(state, &mut changes);
                                let policy = Policy {
                                    relay_enabled,
                                    ttl,
                                    now: std::time::SystemTime::now(),
                                };
                                changes.labels =
                                    decide_labels(&did, &id.src, state, &changes, &policy)
                                        .into_iter()
                                        .map(|l| l.sign(&id.key))
                                        .collect();
                                changes.cursor = cursor;
                                Ok(changes)
                            })
                        })
                        .await
                }
            })
            .await?;
            match result {
                Ok(committed) => break committed,
                Err(active) if reloads < 3 => {
                    reloads += 1;
                    self.signer.reload(&active)?;
                }
                Err(active) => {
                    return Err(Error::Store(crate::store::Error::KeyRotated { active }));
                }
            }
        };
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

/// A DID's records as its PDS lists them, or its account's inactive state.
enum Listing {
    Inactive(Account),
    Records(Account, Vec<(String, Value, Option<String>)>),
}

/// A round whose outcome is its report's verdict, with nothing held.
fn plain(report: Report) -> Round {
    Round {
        outcome: report.verdict,
        relay: false,
        report,
        hold: None,
        degraded: false,
    }
}

/// Why attestations beyond the most a DID may hold are refused.
fn refusal_reason(did: &str, more: usize) -> String {
    let extra = if more > 1 {
        format!(" ({more} records were refused)")
    } else {
        String::new()
    };
    format!(
        "{did} already has {MAX_ATTESTATIONS} attestations, the most one DID may hold: delete \
         one to attest another domain{extra}"
    )
}
