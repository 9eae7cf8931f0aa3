//! The cursor watermark: which Jetstream events are still being processed, so the cursor
//! saved with a commit never passes an event whose effect is not committed yet.
//!
//! Events finish out of order (different DIDs run concurrently), so the value saved is the
//! newest `time_us` such that every event up to it has finished. An event finishes only after
//! its commit, so a value computed just before a transaction is always conservative.

use std::collections::BTreeMap;

/// Which Jetstream events are still being processed, so the cursor saved with each commit
/// never passes an event whose effect is not committed yet.
#[derive(Debug, Default)]
pub(super) struct Watermark {
    /// `time_us` of dispatched, unfinished events (with multiplicity).
    inflight: BTreeMap<i64, usize>,
    /// Newest `time_us` handed to the manager.
    newest: Option<i64>,
    /// Last value written to the store.
    pub(super) saved: Option<i64>,
}

impl Watermark {
    pub(super) fn begin(&mut self, t: i64) {
        *self.inflight.entry(t).or_default() += 1;
        self.observe(t);
    }

    pub(super) fn observe(&mut self, t: i64) {
        self.newest = Some(self.newest.map_or(t, |n| n.max(t)));
    }

    pub(super) fn finish(&mut self, t: i64) {
        if let Some(n) = self.inflight.get_mut(&t) {
            *n -= 1;
            if *n == 0 {
                self.inflight.remove(&t);
            }
        }
    }

    /// The watermark if the event at `done` (if any) had finished: every event up to the
    /// returned `time_us` is committed (or being committed by the caller).
    pub(super) fn value(&self, done: Option<i64>) -> Option<i64> {
        let mut lowest = None;
        for (&t, &n) in &self.inflight {
            if Some(t) == done && n == 1 {
                continue;
            }
            lowest = Some(t);
            break;
        }
        match lowest {
            Some(t) => Some(t - 1),
            None => self.newest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_never_passes_an_unfinished_event() {
        let mut w = Watermark::default();
        assert_eq!(w.value(None), None);
        w.begin(10);
        w.begin(20);
        w.begin(30);
        assert_eq!(w.value(Some(20)), Some(9), "10 is still running");
        assert_eq!(w.value(Some(10)), Some(19));
        w.finish(10);
        w.observe(40); // skipped events after 30
        assert_eq!(w.value(None), Some(19));
        w.finish(20);
        assert_eq!(w.value(Some(30)), Some(40));
        // The same time_us twice: finishing one copy does not release the other.
        w.begin(50);
        w.begin(50);
        assert_eq!(w.value(Some(50)), Some(29));
        w.finish(30);
        assert_eq!(w.value(Some(50)), Some(49));
        w.finish(50);
        assert_eq!(w.value(Some(50)), Some(50));
    }
}
