//! The crash run's seeded scenario: what each operator does, when the labeler is killed, and
//! the publisher that plays it to the fake Jetstream at a steady pace.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use atmos_labeler::label::VERIFIED_MAIL_OPERATOR;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::follower::FollowState;
use crate::Args;
use crate::common::daemon::World;
use crate::common::jetstream::NSID;
use crate::harness::{RKEY, WEAK_DMARC};

/// What one operator of the scenario does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Passes and keeps its label.
    Good,
    /// Fails from the start (DMARC `p=none`): never labelled.
    Failing,
    /// Passes, then the record is deleted: label negated.
    Deleted,
    /// Passes, then the record is updated to a domain with no DNS: label negated.
    Updated,
}

fn crash_did(i: usize) -> String {
    format!("did:plc:faults{i:018}")
}

fn crash_domain(i: usize) -> String {
    format!("op{i}.faults.test")
}

fn gone_domain(i: usize) -> String {
    format!("gone{i}.faults.test")
}

/// The seeded scenario: what each operator does, and when the labeler is killed.
pub struct Scenario {
    pub kinds: Vec<Kind>,
    /// Kill after this many events have been published (sorted).
    pub kill_points: Vec<usize>,
    pub rate: f64,
}

impl Scenario {
    pub fn new(args: &Args) -> anyhow::Result<Scenario> {
        let mut rng = StdRng::seed_from_u64(args.seed);
        let kinds: Vec<Kind> = (0..args.attestations)
            .map(|_| match rng.random::<f64>() {
                x if x < 0.10 => Kind::Failing,
                x if x < 0.20 => Kind::Deleted,
                x if x < 0.30 => Kind::Updated,
                _ => Kind::Good,
            })
            .collect();
        let total = kinds.len() + kinds.iter().filter(|k| withdrawn(**k)).count();
        // From half a second into the ingest to its last event.
        let first = ((args.rate / 2.0) as usize).max(1);
        if total <= first || total - first < args.kills {
            bail!("{total} events leave no room for {} kills", args.kills);
        }
        let mut points = BTreeSet::new();
        while points.len() < args.kills {
            points.insert(rng.random_range(first..total));
        }
        Ok(Scenario {
            kinds,
            kill_points: points.into_iter().collect(),
            rate: args.rate,
        })
    }

    pub fn events(&self) -> usize {
        self.kinds.len() + self.kinds.iter().filter(|k| withdrawn(**k)).count()
    }

    /// DNS, DID documents: everything but the records themselves.
    pub fn prepare(&self, world: &World) {
        for (i, kind) in self.kinds.iter().enumerate() {
            let (did, domain) = (crash_did(i), crash_domain(i));
            world.dns.publish_good_operator(&domain, &did, &["default"]);
            if *kind == Kind::Failing {
                world
                    .dns
                    .set_txt(&format!("_dmarc.{domain}"), &[WEAK_DMARC]);
            }
            world.account(&did);
        }
    }

    /// The labels an uninterrupted run ends with: (uri, val, neg), sorted.
    pub fn expected_labels(&self) -> Vec<(String, String, bool)> {
        let mut out: Vec<_> = self
            .kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| **k != Kind::Failing)
            .map(|(i, k)| {
                (
                    crash_did(i),
                    VERIFIED_MAIL_OPERATOR.to_owned(),
                    *k != Kind::Good,
                )
            })
            .collect();
        out.sort();
        out
    }

    /// did → (domain, verdict) once everything is processed; deleted ones have no row.
    pub fn expected_verdicts(&self) -> HashMap<String, (String, String)> {
        self.kinds
            .iter()
            .enumerate()
            .filter_map(|(i, k)| {
                let v = match k {
                    Kind::Good => (crash_domain(i), "pass"),
                    Kind::Failing => (crash_domain(i), "fail"),
                    Kind::Updated => (gone_domain(i), "fail"),
                    Kind::Deleted => return None,
                };
                Some((crash_did(i), (v.0, v.1.to_owned())))
            })
            .collect()
    }
}

fn withdrawn(k: Kind) -> bool {
    matches!(k, Kind::Deleted | Kind::Updated)
}

/// Publishes the scenario at its pace. Withdrawals are due 3 s after their create and wait
/// (out of order) until the follower has seen the label they withdraw.
pub async fn publish_scenario(
    world: Arc<World>,
    scenario: Arc<Scenario>,
    follower: Arc<Mutex<FollowState>>,
    progress: Arc<AtomicUsize>,
    times: Arc<Mutex<Vec<i64>>>,
) -> anyhow::Result<usize> {
    let delay = Duration::from_secs(3);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / scenario.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut waiting: VecDeque<(Instant, usize)> = VecDeque::new();
    let mut next = 0usize;
    let mut published = 0usize;
    let mut deferred = 0usize;
    let deadline = Instant::now()
        + Duration::from_secs_f64(scenario.events() as f64 / scenario.rate)
        + Duration::from_secs(300);
    loop {
        tick.tick().await;
        if Instant::now() > deadline {
            bail!(
                "publishing did not finish in time: {} withdrawals still wait for their label",
                waiting.len()
            );
        }
        let ready = {
            let f = follower.lock().expect("follower state");
            waiting
                .iter()
                .take_while(|(due, _)| *due <= Instant::now())
                .position(|(_, i)| f.labelled.contains(&crash_did(*i)))
        };
        // A withdrawal overtaking an older one that still waits for its label.
        if ready.is_some_and(|p| p > 0) {
            deferred += 1;
        }
        let t = if let Some((_, i)) = ready.and_then(|p| waiting.remove(p)) {
            let did = crash_did(i);
            match scenario.kinds[i] {
                Kind::Deleted => world.unpublish(&did, RKEY),
                _ => {
                    let record = World::record(&gone_domain(i), &["default"]);
                    let cid = "bafyreiupdated";
                    world.pds.put_record(&did, NSID, RKEY, cid, record.clone());
                    world.jetstream.put(&did, RKEY, &record, cid, true)
                }
            }
        } else if next < scenario.kinds.len() {
            let i = next;
            next += 1;
            if withdrawn(scenario.kinds[i]) {
                waiting.push_back((Instant::now() + delay, i));
            }
            world.publish(
                &crash_did(i),
                RKEY,
                &World::record(&crash_domain(i), &["default"]),
            )
        } else if waiting.is_empty() {
            return Ok(deferred);
        } else {
            continue;
        };
        times.lock().expect("event times").push(t);
        published += 1;
        progress.store(published, Ordering::SeqCst);
        if published.is_multiple_of((scenario.rate as usize * 10).max(1)) {
            let f = follower.lock().expect("follower state");
            println!(
                "  {published} events published; follower: {} frames, {} labelled DIDs; {} withdrawals waiting",
                f.frames.len(),
                f.labelled.len(),
                waiting.len()
            );
        }
    }
}
