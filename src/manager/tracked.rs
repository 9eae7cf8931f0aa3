//! The set of DIDs whose identity and account events the manager wants.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// DIDs whose identity and account events matter, shared with the Jetstream client so it
/// can drop everyone else's (the stream carries them for every account on the network)
/// without a database lookup.
///
/// It holds every DID with attestations (loaded at startup) and every DID the Jetstream
/// client has handed an attestation record for. The client adds a DID *before* it reads the
/// next event, so an account event right behind a DID's first attestation is never dropped
/// while that attestation is still being verified. It only grows while the daemon runs (a
/// DID whose attestations are all deleted stays until the next start, and the manager then
/// ignores its events with one indexed lookup); it is rebuilt from the database on restart.
#[derive(Clone, Debug, Default)]
pub struct Tracked(Arc<RwLock<HashSet<String>>>);

impl Tracked {
    /// A set holding `dids` (for tools and tests; the manager fills its own from the store).
    pub fn from_dids<I: IntoIterator<Item = String>>(dids: I) -> Tracked {
        Tracked(Arc::new(RwLock::new(dids.into_iter().collect())))
    }

    /// Whether `did`'s identity and account events should be passed on.
    pub fn contains(&self, did: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(did)
    }

    /// Starts passing on `did`'s identity and account events.
    pub fn insert(&self, did: &str) {
        if !self.contains(did) {
            self.0
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(did.to_owned());
        }
    }
}
