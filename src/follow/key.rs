//! The upstream labeler's label-signing key, and checking labels against it.
//!
//! <https://atproto.com/specs/label> "Signature Verification": a label's `src` names the
//! labeler, whose DID document's `#atproto_label` verification method holds the key; "if the
//! signature does not validate, the DID should be re-resolved (bypassing any cache) in case
//! the key was rotated" (`docs/protocol.md` §8). A did:key is its own key and is
//! never re-resolved; did:plc and did:web documents come through [`identity::Resolver`].
//!
//! Re-resolving is done at most once per batch of labels, and after a re-resolution that
//! found the same key (a bad signature, not a rotation) not again for
//! [`FRUITLESS_PAUSE`]: an upstream serving forged labels cannot make the mirror hammer the
//! PLC directory or the did:web host.

use std::time::{Duration, Instant};

use crate::identity;
use crate::keys::{DID_KEY_PREFIX, PublicKey};
use crate::label::SignedLabel;

/// After a re-resolution that found no new key, the next waits at least this long.
pub(crate) const FRUITLESS_PAUSE: Duration = Duration::from_secs(1);

/// Labels below this many are checked on one thread.
const PARALLEL_MIN: usize = 64;

/// Why a label is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The signature does not verify against the upstream's key.
    Signature,
    /// `src` is not the upstream DID.
    Src,
    /// The label cannot be decoded or served again byte for byte.
    Malformed,
    /// The frame carries several labels under one seq, which a mirror cannot store apart.
    SharedSeq,
}

impl Refusal {
    /// The `reason` label of the refusal metric.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::Signature => "signature",
            Refusal::Src => "src",
            Refusal::Malformed => "malformed",
            Refusal::SharedSeq => "shared-seq",
        }
    }
}

/// Why the key cannot be had (the labels wait; none is refused for it).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The DID document could not be fetched.
    #[error("cannot resolve the upstream DID {did}")]
    Resolve {
        /// The DID.
        did: String,
        /// Why.
        source: identity::Error,
    },
    /// The document has no usable `#atproto_label` key.
    #[error("the DID document of {did} has no usable #atproto_label key: {reason}")]
    NoLabelKey {
        /// The DID.
        did: String,
        /// What is missing or wrong.
        reason: String,
    },
}

/// The upstream DID and its current key.
#[derive(Debug)]
pub(crate) struct UpstreamKey {
    did: String,
    /// `None` for a did:key (its key never changes).
    resolver: Option<identity::Resolver>,
    key: Option<PublicKey>,
    /// When a re-resolution last found the key unchanged.
    fruitless_at: Option<Instant>,
}

impl UpstreamKey {
    /// The key of `did`: parsed now for a did:key (`Err` when it is not a valid one), fetched
    /// on first use otherwise.
    pub(crate) fn new(did: &str, resolver: identity::Resolver) -> Result<UpstreamKey, String> {
        if did.starts_with(DID_KEY_PREFIX) {
            let key = PublicKey::parse(did).map_err(|e| e.to_string())?;
            return Ok(UpstreamKey {
                did: did.to_owned(),
                resolver: None,
                key: Some(key),
                fruitless_at: None,
            });
        }
        if !(did.starts_with("did:plc:") || did.starts_with("did:web:"))
            || !crate::syntax::is_did(did)
        {
            return Err("the upstream DID must be a did:key, did:plc or did:web".to_owned());
        }
        Ok(UpstreamKey {
            did: did.to_owned(),
            resolver: Some(resolver),
            key: None,
            fruitless_at: None,
        })
    }

    /// The upstream DID.
    pub(crate) fn did(&self) -> &str {
        &self.did
    }

    /// The key, fetching the DID document if none is known yet.
    pub(crate) async fn current(&mut self) -> Result<PublicKey, KeyError> {
        if let Some(k) = &self.key {
            return Ok(k.clone());
        }
        let key = self.fetch().await?;
        self.key = Some(key.clone());
        Ok(key)
    }

    /// Re-resolves the DID after a signature did not verify. `Ok(Some(key))` when the
    /// document now names another key (a rotation), `Ok(None)` when there is nothing new to
    /// try (same key, a did:key, or a re-resolution too soon after a fruitless one).
    pub(crate) async fn refresh(&mut self) -> Result<Option<PublicKey>, KeyError> {
        if self.resolver.is_none()
            || self
                .fruitless_at
                .is_some_and(|t| t.elapsed() < FRUITLESS_PAUSE)
        {
            return Ok(None);
        }
        let fetched = self.fetch().await;
        let outcome = match &fetched {
            Ok(k) if Some(k) == self.key.as_ref() => "same",
            Ok(_) => "changed",
            Err(_) => "failed",
        };
        metrics::counter!(crate::telemetry::MIRROR_KEY_FETCHES, "outcome" => outcome).increment(1);
        let key = fetched?;
        if Some(&key) == self.key.as_ref() {
            self.fruitless_at = Some(Instant::now());
            return Ok(None);
        }
        tracing::info!(did = %self.did, key = %key.did_key(), "the upstream's label key changed; following it");
        self.fruitless_at = None;
        self.key = Some(key.clone());
        Ok(Some(key))
    }

    async fn fetch(&self) -> Result<PublicKey, KeyError> {
        let Some(resolver) = &self.resolver else {
            // Only a did:key has no resolver, and its key is set at construction.
            return self.key.clone().ok_or_else(|| KeyError::NoLabelKey {
                did: self.did.clone(),
                reason: "no key".to_owned(),
            });
        };
        let doc = resolver
            .did_document(&self.did, true)
            .await
            .map_err(|source| KeyError::Resolve {
                did: self.did.clone(),
                source,
            })?;
        let no_key = |reason: String| KeyError::NoLabelKey {
            did: self.did.clone(),
            reason,
        };
        let multikey = doc
            .label_key
            .ok_or_else(|| no_key("no #atproto_label verification method".to_owned()))?;
        PublicKey::parse(&multikey).map_err(|e| no_key(e.to_string()))
    }
}

/// Checks each label's `src` against `did` and its signature against `key`, spreading the
/// work over the machine's cores (verification is the mirror's main cost: tens of
/// microseconds per label). `None` means the label is good. Blocking.
pub(crate) fn check_all(
    labels: &[&SignedLabel],
    did: &str,
    key: &PublicKey,
) -> Vec<Option<Refusal>> {
    let check = |l: &&SignedLabel| -> Option<Refusal> {
        if l.label.src != did {
            Some(Refusal::Src)
        } else if l.verify(key).is_err() {
            Some(Refusal::Signature)
        } else {
            None
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(8);
    if labels.len() < PARALLEL_MIN || threads == 1 {
        return labels.iter().map(check).collect();
    }
    let chunk = labels.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = labels
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(check).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| {
                // A panic in a check is a bug; treat its labels as unverified.
                p.join()
                    .unwrap_or_else(|_| vec![Some(Refusal::Signature); chunk])
            })
            .take(labels.len())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;
    use crate::label::Label;

    fn signed(key: &SigningKey, src: &str, i: usize) -> SignedLabel {
        Label {
            src: src.to_owned(),
            uri: format!("did:plc:s{i}"),
            cid: None,
            val: "verified-mail-operator".to_owned(),
            neg: false,
            cts: "2026-11-23T10:00:00.000Z".to_owned(),
            exp: None,
        }
        .sign(key)
    }

    #[test]
    fn every_label_is_checked_in_order_whether_on_one_thread_or_several() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let did = key.did_key();
        let public = PublicKey::parse(did).unwrap();
        for n in [5, PARALLEL_MIN + 5] {
            let mut labels: Vec<SignedLabel> = (0..n).map(|i| signed(&key, did, i)).collect();
            labels[1].sig[10] ^= 1;
            labels[2] = signed(&other, other.did_key(), 2);
            let last = n - 1;
            labels[last] = signed(&other, did, last);
            let refs: Vec<&SignedLabel> = labels.iter().collect();
            let got = check_all(&refs, did, &public);
            assert_eq!(got.len(), n);
            for (i, r) in got.iter().enumerate() {
                let want = match i {
                    1 => Some(Refusal::Signature),
                    2 => Some(Refusal::Src),
                    i if i == last => Some(Refusal::Signature),
                    _ => None,
                };
                assert_eq!(*r, want, "label {i} of {n}");
            }
        }
    }

    #[test]
    fn a_did_key_is_its_own_key_and_other_methods_are_refused() {
        let key = SigningKey::generate().unwrap();
        let resolver = identity::Resolver::new(
            identity::Options {
                plc_url: "http://127.0.0.1:9".to_owned(),
                allow_private_addresses: true,
                timeout: Duration::from_secs(1),
            },
            crate::dns::Resolver::new(&[], Duration::from_secs(1)).unwrap(),
        )
        .unwrap();
        let k = UpstreamKey::new(key.did_key(), resolver.clone()).unwrap();
        assert_eq!(
            k.key.as_ref().map(PublicKey::did_key).as_deref(),
            Some(key.did_key())
        );
        assert!(UpstreamKey::new("did:key:zNope", resolver.clone()).is_err());
        assert!(UpstreamKey::new("did:example:123", resolver.clone()).is_err());
        assert!(UpstreamKey::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz", resolver).is_ok());
    }
}
