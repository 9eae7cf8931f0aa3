//! The manager's input: what Jetstream and the scheduler ask it to do.

use serde_json::Value;

/// Work for the manager. Jetstream events carry their `time_us` as `cursor`.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// An attestation record was created or updated (Jetstream's copy, not yet trusted).
    Put {
        /// Author DID.
        did: String,
        /// Record key.
        rkey: String,
        /// Repo revision of the commit.
        rev: String,
        /// The record as Jetstream delivered it.
        record: Value,
        /// Its CID, as Jetstream delivered it.
        cid: Option<String>,
        /// The event's `time_us`.
        cursor: i64,
    },
    /// An attestation record was deleted.
    Delete {
        /// Author DID.
        did: String,
        /// Record key.
        rkey: String,
        /// Repo revision of the commit.
        rev: String,
        /// The event's `time_us`.
        cursor: i64,
    },
    /// A tracked DID's identity (handle, keys, PDS) changed: re-verify it now.
    Identity {
        /// The DID.
        did: String,
        /// The event's `time_us`.
        cursor: i64,
    },
    /// A tracked DID's account status changed.
    Account {
        /// The DID.
        did: String,
        /// Whether the account is active.
        active: bool,
        /// Why not, if inactive.
        status: Option<String>,
        /// The event's `time_us`.
        cursor: i64,
    },
    /// Every Jetstream event up to `cursor` has been handed over (skipped ones included).
    Checkpoint {
        /// A `time_us`.
        cursor: i64,
    },
    /// Re-verify one attestation (from the scheduler).
    Recheck {
        /// Author DID.
        did: String,
        /// Record key.
        rkey: String,
    },
}

impl Command {
    pub(super) fn did(&self) -> Option<&str> {
        match self {
            Command::Put { did, .. }
            | Command::Delete { did, .. }
            | Command::Identity { did, .. }
            | Command::Account { did, .. }
            | Command::Recheck { did, .. } => Some(did),
            Command::Checkpoint { .. } => None,
        }
    }

    /// The Jetstream `time_us` the command carries (`None` for scheduler re-checks).
    pub fn cursor(&self) -> Option<i64> {
        match self {
            Command::Put { cursor, .. }
            | Command::Delete { cursor, .. }
            | Command::Identity { cursor, .. }
            | Command::Account { cursor, .. }
            | Command::Checkpoint { cursor } => Some(*cursor),
            Command::Recheck { .. } => None,
        }
    }
}
