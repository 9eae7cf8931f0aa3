//! The soak's load: the attestation publisher (with its DMARC flips), the queryLabels clients
//! and the subscribeLabels subscribers, each checking every answer it gets.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use atmos_labeler::label::{Label, SignedLabel, VERIFIED_MAIL_OPERATOR};
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::common;
use crate::common::daemon::World;
use crate::harness::{RKEY, WEAK_DMARC, http_client};
use crate::rows::{Frame, Row, read_frame};

/// Pace of the preload (`--preload`), attestations per second.
const PRELOAD_RATE: f64 = 100.0;

pub fn soak_did(i: usize) -> String {
    format!("did:plc:soak{i:020}")
}

pub fn soak_domain(i: usize) -> String {
    format!("op{i}.soak.test")
}

/// A subscriber's record: every seq, and the rows for one of them.
#[derive(Default)]
pub struct SubRecord {
    pub seqs: Vec<i64>,
    pub rows: Vec<Row>,
    pub problems: Vec<String>,
}

/// One soak subscriber: reads until the stream ends; an end before `stopping` is an error.
pub async fn soak_subscriber(
    url: String,
    keep_rows: bool,
    last: Arc<AtomicI64>,
    stopping: CancellationToken,
) -> SubRecord {
    let mut rec = SubRecord::default();
    let connected = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(&url),
    )
    .await;
    let mut ws = match connected {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            rec.problems.push(format!("connect: {e}"));
            return rec;
        }
        Err(_) => {
            rec.problems.push("connect timed out".to_owned());
            return rec;
        }
    };
    let mut prev = 0;
    loop {
        let msg = ws.next().await;
        let bytes = match msg {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Close(c))) => {
                if !stopping.is_cancelled() {
                    rec.problems.push(format!("closed by the server: {c:?}"));
                }
                return rec;
            }
            Some(Err(e)) => {
                if !stopping.is_cancelled() {
                    rec.problems.push(format!("read failed: {e}"));
                }
                return rec;
            }
            None => {
                if !stopping.is_cancelled() {
                    rec.problems.push("stream ended".to_owned());
                }
                return rec;
            }
            Some(Ok(_)) => continue,
        };
        match read_frame(&bytes, prev) {
            Frame::Labels {
                seq,
                labels,
                problems,
            } => {
                rec.problems.extend(problems);
                prev = seq;
                rec.seqs.push(seq);
                if keep_rows {
                    rec.rows
                        .extend(labels.iter().map(|l| Row::from_wire(seq, l)));
                }
                last.store(seq, Ordering::SeqCst);
            }
            Frame::Bad(problem) => rec.problems.push(problem),
            Frame::Closed => {}
        }
    }
}

/// queryLabels outcomes of one client.
#[derive(Default)]
pub struct QueryStats {
    pub ok: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub latencies_us: Vec<u32>,
    /// Requests per kind: exact DID, `did:*` page, narrow prefix.
    pub kinds: [u64; 3],
    pub labels: u64,
}

/// A label from a queryLabels JSON body, signature checked against the test key.
fn json_label(l: &Value) -> Result<SignedLabel, String> {
    let text = |k: &str| -> Result<String, String> {
        l[k].as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("label without {k}: {l}"))
    };
    if l["ver"] != 1 {
        return Err(format!("label ver is not 1: {l}"));
    }
    let sig = l["sig"]["$bytes"]
        .as_str()
        .ok_or_else(|| format!("label without sig: {l}"))?;
    let sig = data_encoding::BASE64_NOPAD
        .decode(sig.as_bytes())
        .map_err(|e| format!("sig is not base64: {e}"))?;
    let sig: [u8; 64] = sig
        .as_slice()
        .try_into()
        .map_err(|_| format!("sig is {} bytes", sig.len()))?;
    let signed = SignedLabel {
        label: Label {
            src: text("src")?,
            uri: text("uri")?,
            cid: l["cid"].as_str().map(str::to_owned),
            val: text("val")?,
            neg: l["neg"].as_bool().unwrap_or(false),
            cts: text("cts")?,
            exp: l["exp"].as_str().map(str::to_owned),
        },
        sig,
    };
    std::panic::catch_unwind(AssertUnwindSafe(|| common::server::verify(&signed)))
        .map_err(|_| format!("bad signature: {l}"))?;
    Ok(signed)
}

/// Checks one queryLabels answer: 200, JSON, every label matching `pattern`, from `src`,
/// valid and signed; at most `limit` labels, a cursor exactly when the page is full.
fn validate_query(
    status: u16,
    body: &[u8],
    pattern: &str,
    limit: usize,
    src: &str,
) -> Result<usize, String> {
    if status != 200 {
        return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(body)));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let labels = v["labels"].as_array().ok_or("no labels array")?;
    if labels.len() > limit {
        return Err(format!("{} labels for limit {limit}", labels.len()));
    }
    if (labels.len() == limit) != v["cursor"].is_string() {
        return Err(format!(
            "{} labels with limit {limit} but cursor {}",
            labels.len(),
            v["cursor"]
        ));
    }
    for l in labels {
        let s = json_label(l)?;
        let matches = match pattern.strip_suffix('*') {
            Some(prefix) => s.label.uri.starts_with(prefix),
            None => s.label.uri == pattern,
        };
        if !matches || s.label.src != src || s.label.val != VERIFIED_MAIL_OPERATOR {
            return Err(format!(
                "label does not belong in the answer to {pattern}: {l}"
            ));
        }
    }
    Ok(labels.len())
}

/// One queryLabels client on its own keep-alive connection, one request every ~`interval`.
pub async fn query_client(
    id: u64,
    seed: u64,
    addr: SocketAddr,
    src: String,
    published: Arc<AtomicUsize>,
    interval: Duration,
    stop: CancellationToken,
) -> anyhow::Result<QueryStats> {
    let http = http_client()?;
    let mut rng = StdRng::seed_from_u64(seed ^ (id.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    let mut stats = QueryStats::default();
    loop {
        let pause = interval.mul_f64(0.5 + rng.random::<f64>());
        tokio::select! {
            () = stop.cancelled() => return Ok(stats),
            () = tokio::time::sleep(pause) => {}
        }
        let n = published.load(Ordering::SeqCst);
        if n == 0 {
            continue;
        }
        let r: f64 = rng.random();
        let (kind, pattern, query, limit) = if r < 0.80 {
            let did = soak_did(rng.random_range(0..n));
            (0, did.clone(), format!("uriPatterns={did}"), 50)
        } else if r < 0.95 {
            let cursor = rng.random_range(0..=n as i64);
            (
                1,
                "did:*".to_owned(),
                format!("uriPatterns=did:*&limit=50&cursor={cursor}"),
                50,
            )
        } else {
            // 10 DIDs share every prefix that drops the last digit.
            let did = soak_did(rng.random_range(0..n));
            let prefix = format!("{}*", &did[..did.len() - 1]);
            (2, prefix.clone(), format!("uriPatterns={prefix}"), 50)
        };
        stats.kinds[kind] += 1;
        let url = format!("http://{addr}/xrpc/com.atproto.label.queryLabels?{query}");
        let t = Instant::now();
        let outcome = match http.get(&url).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.bytes().await {
                    Ok(body) => {
                        let took = t.elapsed();
                        stats
                            .latencies_us
                            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                        validate_query(status, &body, &pattern, limit, &src)
                    }
                    Err(e) => Err(format!("reading the body: {e}")),
                }
            }
            Err(e) => Err(format!("request failed: {e}")),
        };
        match outcome {
            Ok(n) => {
                stats.ok += 1;
                stats.labels += n as u64;
            }
            Err(e) => {
                stats.errors += 1;
                if stats.first_errors.len() < 3 {
                    stats.first_errors.push(format!("{query}: {e}"));
                }
            }
        }
    }
}

/// Publishes soak attestations until `stop`: the first `preload` at [`PRELOAD_RATE`], then
/// `rate` per second. Every 15 s it breaks the DMARC of one passing operator at least a minute
/// old, and restores the oldest one broken more than 90 s ago, so that re-checks negate and
/// re-grant labels.
pub async fn soak_publisher(
    world: Arc<World>,
    seed: u64,
    preload: usize,
    rate: f64,
    published: Arc<AtomicUsize>,
    flips: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut failing = HashSet::new();
    let mut broken: VecDeque<(usize, Instant)> = VecDeque::new();
    let mut born: Vec<Instant> = Vec::new();
    let every = Duration::from_secs(15);
    let mut flip = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut next = tokio::time::Instant::now();
    let mut i = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next) => {
                let (did, domain) = (soak_did(i), soak_domain(i));
                world.dns.publish_good_operator(&domain, &did, &["default"]);
                if rng.random::<f64>() < 0.10 {
                    world.dns.set_txt(&format!("_dmarc.{domain}"), &[WEAK_DMARC]);
                    failing.insert(i);
                }
                world.account(&did);
                world.publish(&did, RKEY, &World::record(&domain, &["default"]));
                born.push(Instant::now());
                i += 1;
                published.store(i, Ordering::SeqCst);
                let pace = if i < preload { PRELOAD_RATE } else { rate };
                // Steady: after a stall, carry on at the pace instead of bursting.
                next = (next + Duration::from_secs_f64(1.0 / pace))
                    .max(tokio::time::Instant::now() - Duration::from_secs(1));
            }
            _ = flip.tick() => {
                if broken
                    .front()
                    .is_some_and(|(_, at)| at.elapsed() > Duration::from_secs(90))
                    && let Some((j, _)) = broken.pop_front()
                {
                    world.dns.set_txt(
                        &format!("_dmarc.{}", soak_domain(j)),
                        &[common::dns::GOOD_DMARC],
                    );
                    flips.fetch_add(1, Ordering::SeqCst);
                }
                let old = born.partition_point(|b| b.elapsed() > Duration::from_secs(60));
                for _ in 0..20 {
                    if old == 0 {
                        break;
                    }
                    let j = rng.random_range(0..old);
                    if !failing.contains(&j) && !broken.iter().any(|(b, _)| *b == j) {
                        world
                            .dns
                            .set_txt(&format!("_dmarc.{}", soak_domain(j)), &[WEAK_DMARC]);
                        broken.push_back((j, Instant::now()));
                        flips.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
            }
        }
    }
}
