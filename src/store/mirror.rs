//! A mirror's side of the store: labels written under the seqs their upstream gave them, and
//! the upstream cursor committed in the same transaction.
//!
//! Keeping the upstream's seq is what makes cursors interchangeable: a consumer holding a
//! cursor from the primary can resume from any mirror (or a mirror from another mirror) and
//! receive exactly the labels after it (`docs/protocol.md` §8). The rows are
//! the same rows the primary holds, so the backfill from any cursor, the live feed and
//! queryLabels pages are the same bytes everywhere.
//!
//! The cursor is the seq of the last upstream frame the mirror has dealt with, stored or
//! refused; it is saved in `meta` with the labels of that batch, so a mirror that is killed
//! resumes exactly where its last commit ended, missing and doubling nothing. The same
//! transaction raises `sqlite_sequence` to the cursor: [`Store::head_seq`] ("the highest seq
//! ever assigned") then counts the upstream's seqs this mirror has seen, refused ones
//! included, so a consumer's cursor taken from the primary is never `FutureCursor` on a
//! mirror that has caught up past it.

use rusqlite::{OptionalExtension, params};

use super::labels::{active_key_in, put_label_at};
use super::{Error, Store, StoredLabel};

/// `meta` key of a mirror's upstream cursor.
const CURSOR_KEY: &str = "mirror_cursor";

impl Store {
    /// The upstream seq up to which this mirror has dealt with every label (stored or
    /// refused), or `None` when this database never mirrored anything.
    pub fn mirror_cursor(&self) -> Result<Option<i64>, Error> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row([CURSOR_KEY], |r| r.get(0))
                .optional()?)
        })
    }

    /// Writes labels received from an upstream under their upstream seqs (each replaces the
    /// current row for its `(src, uri, cid, val)` and is appended to the history) and saves
    /// `cursor` as the mirror's cursor, in one transaction; the live feed then publishes them.
    ///
    /// Seqs must increase, lie above the saved cursor and not above `cursor`, which must not
    /// go back ([`Error::OutOfOrder`] otherwise, and nothing is written). A database that
    /// records a signing key is a primary's and is refused ([`Error::NotAMirror`]).
    pub fn write_mirrored(&self, labels: &[StoredLabel], cursor: i64) -> Result<(), Error> {
        let mut conn = self.writer();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if let Some(key) = active_key_in(&tx)? {
            return Err(Error::NotAMirror { key });
        }
        let saved: i64 = tx
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([CURSOR_KEY], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        if cursor < saved {
            return Err(Error::OutOfOrder {
                seq: cursor,
                after: saved,
            });
        }
        let mut after = saved;
        for l in labels {
            if l.seq <= after || l.seq > cursor {
                return Err(Error::OutOfOrder { seq: l.seq, after });
            }
            put_label_at(&tx, Some(l.seq), &l.signed)?;
            after = l.seq;
        }
        tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
            .execute(params![CURSOR_KEY, cursor])?;
        // `head_seq` reads sqlite_sequence; AUTOINCREMENT raised it to the highest seq
        // inserted, and a refused label's seq counts as seen too (see the module docs).
        let raised = tx
            .prepare_cached(
                "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'labels' AND seq < ?1",
            )?
            .execute([cursor])?;
        if raised == 0 {
            tx.prepare_cached(
                "INSERT INTO sqlite_sequence (name, seq) SELECT 'labels', ?1
                 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'labels')",
            )?
            .execute([cursor])?;
        }
        tx.commit()?;
        drop(conn);
        if !labels.is_empty() {
            self.notify_commit();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;
    use crate::label::{Label, SignedLabel};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.db")).unwrap();
        (dir, store)
    }

    fn label(key: &SigningKey, uri: &str, neg: bool) -> SignedLabel {
        Label {
            src: key.did_key().to_owned(),
            uri: uri.to_owned(),
            cid: None,
            val: "verified-mail-operator".to_owned(),
            neg,
            cts: "2026-11-23T10:00:00.000Z".to_owned(),
            exp: None,
        }
        .sign(key)
    }

    fn at(seq: i64, signed: SignedLabel) -> StoredLabel {
        StoredLabel { seq, signed }
    }

    #[test]
    fn mirrored_labels_keep_their_seqs_replace_by_key_and_move_the_cursor_together() {
        let (_dir, s) = store();
        let key = SigningKey::generate().unwrap();
        let a = label(&key, "did:plc:a", false);
        let b = label(&key, "did:plc:b", false);
        let a_neg = label(&key, "did:plc:a", true);
        assert_eq!(s.mirror_cursor().unwrap(), None);
        let mut commits = s.commits();
        s.write_mirrored(&[at(3, a), at(7, b.clone())], 9).unwrap();
        assert!(commits.has_changed().unwrap(), "the live feed is woken");
        commits.mark_unchanged();
        assert_eq!(s.mirror_cursor().unwrap(), Some(9));
        assert_eq!(s.head_seq().unwrap(), 9, "seq 9 was seen though not stored");
        s.write_mirrored(&[at(12, a_neg.clone())], 12).unwrap();
        let current = s.labels_after(0, 10).unwrap();
        assert_eq!(
            current,
            vec![at(7, b), at(12, a_neg)],
            "the negation replaced seq 3"
        );
        let history: Vec<i64> = s.label_history().unwrap().iter().map(|l| l.seq).collect();
        assert_eq!(history, vec![3, 7, 12]);

        // A batch of refusals only moves the cursor (and the head with it).
        commits.mark_unchanged();
        s.write_mirrored(&[], 15).unwrap();
        assert!(!commits.has_changed().unwrap(), "nothing to publish");
        assert_eq!(
            (s.mirror_cursor().unwrap(), s.head_seq().unwrap()),
            (Some(15), 15)
        );
    }

    #[test]
    fn out_of_order_seqs_and_a_cursor_going_back_write_nothing() {
        let (_dir, s) = store();
        let key = SigningKey::generate().unwrap();
        s.write_mirrored(&[at(5, label(&key, "did:plc:a", false))], 5)
            .unwrap();
        for (labels, cursor) in [
            (vec![at(5, label(&key, "did:plc:b", false))], 6),
            (vec![at(8, label(&key, "did:plc:b", false))], 7),
            (
                vec![
                    at(9, label(&key, "did:plc:b", false)),
                    at(8, label(&key, "did:plc:c", false)),
                ],
                9,
            ),
            (vec![], 4),
        ] {
            assert!(matches!(
                s.write_mirrored(&labels, cursor),
                Err(Error::OutOfOrder { .. })
            ));
        }
        assert_eq!(s.mirror_cursor().unwrap(), Some(5));
        assert_eq!(s.labels_after(0, 10).unwrap().len(), 1);
    }

    #[test]
    fn an_empty_database_takes_the_cursor_as_its_head() {
        let (_dir, s) = store();
        s.write_mirrored(&[], 40).unwrap();
        assert_eq!(s.head_seq().unwrap(), 40);
    }

    #[test]
    fn a_primary_database_is_not_written_as_a_mirror() {
        let (_dir, s) = store();
        let key = SigningKey::generate().unwrap();
        s.adopt_key(key.did_key()).unwrap();
        assert!(matches!(
            s.write_mirrored(&[], 1),
            Err(Error::NotAMirror { .. })
        ));
        assert_eq!(s.mirror_cursor().unwrap(), None);
    }
}
