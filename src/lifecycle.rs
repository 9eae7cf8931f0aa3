//! The labeler's trust lifecycle: rotating its signing key, and moving its labels to a new
//! labeler DID.
//!
//! Both rewrite the current labels in one store transaction, so a subscriber following from
//! its cursor receives every rewritten label (each gets a new seq), and a backfill from
//! cursor 0 or a `queryLabels` afterwards holds only what the labeler now stands behind.
//!
//! - **Key rotation** ([`rotate`]): a new key is staged beside the old one, the database
//!   commits to it while re-signing every current label (same `src`, `uri`, `cid`, `val`,
//!   `neg`, `cts`, `exp`; a new `sig` and seq), and only then do the files move. Every process
//!   that signs checks the active key inside its own transactions ([`crate::keys::Signer`]),
//!   so from the commit on nothing is signed with the old key, and a running daemon follows
//!   through the database without a restart.
//! - **A new `src`** ([`move_src`]): when the configured labeler DID differs from the `src` of
//!   current labels (a `labelerDid` set or changed; or, without one, a new key, since the
//!   labeler's identity then *is* its did:key), each old-`src` label is negated under its old
//!   `src` and issued again under the new one. Verifiers look up a label's key through its
//!   `src` (<https://atproto.com/specs/label>, "Signature Verification"), so an old-`src`
//!   label signed after its DID moved on would not verify.

use std::path::{Path, PathBuf};

use crate::keys::{self, Identity, SigningKey};
use crate::label::{self, Label, SignedLabel};
use crate::store::{self, Rewritten, Store, StoredLabel};

/// Errors of a rotation or a move.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key files.
    #[error(transparent)]
    Key(#[from] keys::Error),
    /// The database.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// What [`rotate`] did (or, dry, would do).
#[derive(Debug)]
pub struct Rotation {
    /// The did:key signing so far.
    pub old: String,
    /// The new did:key (`None` on a dry run).
    pub new: Option<String>,
    /// Where the old key file now is (`None` on a dry run).
    pub retired: Option<PathBuf>,
    /// Current labels before the rotation.
    pub current: usize,
    /// Labels written (re-signed, negated, re-issued).
    pub written: usize,
    /// Whether the labels' `src` changed (no `labelerDid`: the did:key is the identity).
    pub moved_src: bool,
}

/// Rotates the signing key at `path`. `labeler_did` is the configured `labelerDid`; without
/// one the labeler's `src` changes with its key. `dry_run` reports what would happen and
/// changes nothing.
pub fn rotate(
    store: &Store,
    path: &Path,
    labeler_did: Option<&str>,
    dry_run: bool,
) -> Result<Rotation, Error> {
    let active = store.active_key()?;
    let old = SigningKey::load_active(path, active.as_deref())?;
    store.adopt_key(old.did_key())?;
    let current = store.labels_after(0, usize::MAX >> 1)?.len();
    if dry_run {
        return Ok(Rotation {
            old: old.did_key().to_owned(),
            new: None,
            retired: None,
            current,
            written: 0,
            moved_src: labeler_did.is_none(),
        });
    }
    let new = keys::stage_rotation(path)?;
    let now = label::now_cts();
    let done = store.rewrite_labels(old.did_key(), new.did_key(), |l| {
        resign(l, &old, &new, labeler_did, &now)
    })?;
    let retired = keys::finish_rotation(path, old.did_key())?;
    tracing::info!(
        old = %old.did_key(),
        new = %new.did_key(),
        labels = done.written,
        "signing key rotated"
    );
    Ok(Rotation {
        old: old.did_key().to_owned(),
        new: Some(new.did_key().to_owned()),
        retired: Some(retired),
        current: done.read,
        written: done.written,
        moved_src: labeler_did.is_none(),
    })
}

/// The labels that replace `l` when `old` gives way to `new`.
fn resign(
    l: &StoredLabel,
    old: &SigningKey,
    new: &SigningKey,
    labeler_did: Option<&str>,
    now: &str,
) -> Vec<SignedLabel> {
    let x = &l.signed.label;
    if labeler_did.is_none() && x.src == old.did_key() {
        // The old did:key was the labeler's identity: move to the new one.
        return if x.neg {
            Vec::new()
        } else {
            vec![
                negation(x, now).sign(old),
                moved(x, new.did_key(), now).sign(new),
            ]
        };
    }
    vec![x.clone().sign(new)]
}

/// Moves every current label whose `src` is not `id.src` to it: each positive one is negated
/// under its old `src` and issued again under the new one, both signed with `id.key`, in one
/// transaction. Negations and expired labels under an old `src` are left as they are. Manual
/// labels move too.
pub fn move_src(store: &Store, id: &Identity) -> Result<Rewritten, Error> {
    let now = label::now_cts();
    let now_ms = label::datetime_ms(&now).unwrap_or(0);
    let key = id.key.did_key();
    Ok(store.rewrite_labels(key, key, |l| {
        let x = &l.signed.label;
        let expired = x
            .exp
            .as_deref()
            .and_then(label::datetime_ms)
            .is_some_and(|e| e <= now_ms);
        if x.src == id.src || x.neg || expired {
            return Vec::new();
        }
        vec![
            negation(x, &now).sign(&id.key),
            moved(x, &id.src, &now).sign(&id.key),
        ]
    })?)
}

/// The negation of `x` under its own `src` (no `exp`: negations do not lapse).
fn negation(x: &Label, now: &str) -> Label {
    Label {
        neg: true,
        cts: now.to_owned(),
        exp: None,
        ..x.clone()
    }
}

/// `x` issued again under `src`, keeping its expiry.
fn moved(x: &Label, src: &str, now: &str) -> Label {
    Label {
        src: src.to_owned(),
        cts: now.to_owned(),
        ..x.clone()
    }
}
