//! What the author's PDS says about a record and its account: the rule that a record is gone
//! only on proof.
//!
//! The reference PDS answers `getRecord` for the records of active accounts only; for a
//! deactivated or taken-down repo it passes the request on to its AppView, which knows no such
//! record (400 `RecordNotFound`, or 400 `InvalidRequest` without an AppView). So "the PDS says
//! the record is not there" proves a delete only when the repo is active
//! (`com.atproto.sync.getRepoStatus` says `active: true`). Every answer about an inactive repo
//! is account state — labels withheld, attestation kept — whatever error shape the PDS used.

use serde_json::Value;

use super::Shared;
use crate::attestation;
use crate::identity::RecordCopy;
use crate::store::Account;

/// Status recorded for an account whose PDS no longer hosts its repo (`RepoNotFound`).
pub(super) const NOT_HOSTED: &str = "not-hosted";

/// Status recorded for an account whose DID no longer resolves (PLC or did:web 404/410).
pub(super) const UNRESOLVABLE: &str = "unresolvable";

/// The account's standing at its PDS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum RepoState {
    /// Known: active, or inactive with a status (`deactivated`, `takendown`, …,
    /// [`NOT_HOSTED`], [`UNRESOLVABLE`]).
    Known(Account),
    /// Could not be learnt now (PDS, PLC or network trouble), and why.
    Unknown(String),
}

/// What the author's PDS says about one record.
#[derive(Debug)]
pub(super) enum Found {
    /// The record, and the account's status when the PDS gave it.
    Record {
        value: Value,
        cid: Option<String>,
        account: Option<Account>,
    },
    /// The repo is active and the record is not in it: a proven delete.
    Gone { account: Account },
    /// The account is not active: labels are withheld, the attestation is kept.
    Inactive(Account),
    /// Nothing could be learnt, and why.
    Unreachable(String),
}

impl Shared {
    /// The account's state at its PDS.
    pub(super) async fn repo_state(&self, did: &str) -> RepoState {
        let inactive = |status: &str| {
            RepoState::Known(Account {
                active: false,
                status: Some(status.to_owned()),
            })
        };
        match self.identity.repo_status(did).await {
            Ok(s) => RepoState::Known(Account {
                active: s.active,
                status: if s.active {
                    None
                } else {
                    Some(s.status.unwrap_or_else(|| "inactive".to_owned()))
                },
            }),
            Err(e) if e.is_definitive() => {
                tracing::info!(did, error = %e, "DID does not resolve; treating its account as inactive");
                inactive(UNRESOLVABLE)
            }
            Err(e) if e.xrpc_error() == Some("RepoNotFound") => inactive(NOT_HOSTED),
            Err(e) => RepoState::Unknown(format!(
                "could not read the account's status at its PDS: {e}"
            )),
        }
    }

    /// Asks the author's PDS about one attestation record: its repo status first, then the
    /// record if the repo is active (or its status could not be read).
    pub(super) async fn ask_pds(&self, did: &str, rkey: &str) -> Found {
        let account = match self.repo_state(did).await {
            RepoState::Known(a) if !a.active => return Found::Inactive(a),
            RepoState::Known(a) => Ok(a),
            RepoState::Unknown(why) => Err(why),
        };
        match self.identity.get_record(did, attestation::NSID, rkey).await {
            Ok(Some(RecordCopy { value, cid, .. })) => Found::Record {
                value,
                cid,
                account: account.ok(),
            },
            Ok(None) => match account {
                Ok(account) => Found::Gone { account },
                Err(why) => Found::Unreachable(format!(
                    "the PDS says the record is not there, but that proves nothing while the \
                     account's status is unknown ({why})"
                )),
            },
            Err(e) if e.is_definitive() => Found::Inactive(Account {
                active: false,
                status: Some(UNRESOLVABLE.to_owned()),
            }),
            Err(e) => Found::Unreachable(format!(
                "could not fetch the record from the author's PDS: {e}"
            )),
        }
    }
}
