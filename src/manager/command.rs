//! The manager's input: what Jetstream and the scheduler ask it to do.

use std::collections::VecDeque;

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
    /// Re-read every attestation record of a DID from its PDS: what a DID's queue collapses
    /// into when it holds more commands than one DID may (`coalesce`).
    Resync {
        /// The DID.
        did: String,
        /// The oldest `time_us` among the events it absorbed that is still unfinished.
        cursor: Option<i64>,
        /// Jetstream's latest copy of each record it announced (rkey, record, CID), at most
        /// `MAX_COPIES`: kept (never labelled) for records the labeler does not know if the
        /// PDS cannot be asked.
        copies: Vec<(String, Value, Option<String>)>,
    },
}

/// Jetstream copies a [`Command::Resync`] keeps.
pub(super) const MAX_COPIES: usize = 16;

impl Command {
    pub(super) fn did(&self) -> Option<&str> {
        match self {
            Command::Put { did, .. }
            | Command::Delete { did, .. }
            | Command::Identity { did, .. }
            | Command::Account { did, .. }
            | Command::Recheck { did, .. }
            | Command::Resync { did, .. } => Some(did),
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
            Command::Resync { cursor, .. } => *cursor,
        }
    }

    /// The record key a command is about, if it is about one record.
    fn rkey(&self) -> Option<&str> {
        match self {
            Command::Put { rkey, .. }
            | Command::Delete { rkey, .. }
            | Command::Recheck { rkey, .. } => Some(rkey),
            _ => None,
        }
    }
}

/// Queues `cmd` behind the commands already queued for its DID (one is running), merging it
/// with what it supersedes, so that what one DID can hold stays small whatever it sends:
///
/// - a create, update or delete of a record replaces a queued command about the same record
///   (with PDS confirmation each only triggers a look at the record's current state, and
///   without it the newest event is the truth); a re-check is dropped when one is queued;
/// - an identity event is dropped when one is queued; an account event replaces a queued one;
/// - a queued resync absorbs everything (it re-reads the repo's status and every record);
/// - past `cap` queued commands, the queue collapses into one resync when `resync` is
///   allowed (PDS confirmation on), which costs one `listRecords` however many events the
///   DID sent.
///
/// Returns the `time_us` of every event merged away: its effect is covered by a command that
/// stays queued behind a cursor no later than its own, so it may count as finished.
pub(super) fn coalesce(
    queue: &mut VecDeque<Command>,
    cmd: Command,
    cap: usize,
    resync: bool,
) -> Vec<i64> {
    let mut finished = Vec::new();
    if let Some(Command::Resync { copies, .. }) = queue
        .iter_mut()
        .find(|c| matches!(c, Command::Resync { .. }))
    {
        finished.extend(cmd.cursor());
        if let Command::Put {
            rkey, record, cid, ..
        } = cmd
        {
            keep_copy(copies, rkey, record, cid);
        }
        return finished;
    }
    let same = |c: &Command| match (&cmd, c) {
        (Command::Identity { .. }, Command::Identity { .. })
        | (Command::Account { .. }, Command::Account { .. }) => true,
        _ => cmd.rkey().is_some() && cmd.rkey() == c.rkey(),
    };
    match queue.iter().position(same) {
        Some(_) if matches!(cmd, Command::Recheck { .. } | Command::Identity { .. }) => {
            finished.extend(cmd.cursor());
        }
        Some(i) => {
            finished.extend(queue[i].cursor());
            queue[i] = cmd;
        }
        None => queue.push_back(cmd),
    }
    if resync && queue.len() > cap {
        let did = queue
            .front()
            .and_then(Command::did)
            .unwrap_or_default()
            .to_owned();
        let mut cursors: Vec<i64> = queue.iter().filter_map(Command::cursor).collect();
        cursors.sort_unstable();
        let oldest = cursors.first().copied();
        finished.extend(cursors.into_iter().skip(1));
        let mut copies = Vec::new();
        for c in queue.drain(..) {
            if let Command::Put {
                rkey, record, cid, ..
            } = c
            {
                keep_copy(&mut copies, rkey, record, cid);
            }
        }
        queue.push_back(Command::Resync {
            did,
            cursor: oldest,
            copies,
        });
    }
    finished
}

/// Keeps Jetstream's latest copy of `rkey`, at most [`MAX_COPIES`] records.
fn keep_copy(
    copies: &mut Vec<(String, Value, Option<String>)>,
    rkey: String,
    record: Value,
    cid: Option<String>,
) {
    if let Some(c) = copies.iter_mut().find(|(r, _, _)| *r == rkey) {
        *c = (rkey, record, cid);
    } else if copies.len() < MAX_COPIES {
        copies.push((rkey, record, cid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DID: &str = "did:plc:hostile";

    fn put(rkey: &str, t: i64) -> Command {
        Command::Put {
            did: DID.into(),
            rkey: rkey.into(),
            rev: format!("3m{t:011}"),
            record: serde_json::json!({"domain": format!("{rkey}.example")}),
            cid: None,
            cursor: t,
        }
    }

    #[test]
    fn a_newer_event_about_a_record_replaces_the_queued_one() {
        let mut q = VecDeque::new();
        assert!(coalesce(&mut q, put("a", 1), 8, true).is_empty());
        assert!(coalesce(&mut q, put("b", 2), 8, true).is_empty());
        assert_eq!(coalesce(&mut q, put("a", 3), 8, true), vec![1]);
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].cursor(), Some(3));
        // A re-check of a record already queued adds nothing.
        let recheck = Command::Recheck {
            did: DID.into(),
            rkey: "b".into(),
        };
        assert!(coalesce(&mut q, recheck, 8, true).is_empty());
        assert_eq!(q.len(), 2);
        // Identity events merge; account events keep the newest.
        let identity = |t| Command::Identity {
            did: DID.into(),
            cursor: t,
        };
        let account = |t| Command::Account {
            did: DID.into(),
            active: t % 2 == 0,
            status: None,
            cursor: t,
        };
        assert!(coalesce(&mut q, identity(4), 8, true).is_empty());
        assert_eq!(coalesce(&mut q, identity(5), 8, true), vec![5]);
        assert!(coalesce(&mut q, account(6), 8, true).is_empty());
        assert_eq!(coalesce(&mut q, account(7), 8, true), vec![6]);
        assert_eq!(q.len(), 4);
    }

    #[test]
    fn thousands_of_events_from_one_did_hold_one_resync_and_the_oldest_cursor() {
        let mut q = VecDeque::new();
        let mut finished = Vec::new();
        for t in 1..=5000 {
            finished.extend(coalesce(&mut q, put(&format!("r{t}"), t), 8, true));
            assert!(q.len() <= 9, "the queue grew to {}", q.len());
        }
        assert_eq!(q.len(), 1);
        let Some(Command::Resync { cursor, copies, .. }) = q.front() else {
            panic!("{q:?}");
        };
        // The resync holds the oldest event back; every other one is finished.
        assert_eq!(*cursor, Some(1));
        assert_eq!(finished.len(), 4999);
        assert!(!finished.contains(&1));
        assert_eq!(copies.len(), MAX_COPIES);
    }

    #[test]
    fn without_pds_confirmation_distinct_records_queue_up() {
        let mut q = VecDeque::new();
        for t in 1..=20 {
            assert!(coalesce(&mut q, put(&format!("r{t}"), t), 8, false).is_empty());
        }
        assert_eq!(q.len(), 20);
    }
}
