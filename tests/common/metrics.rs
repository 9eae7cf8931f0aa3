//! Reading the labeler's `/metrics` (Prometheus text format 0.0.4) in tests.
//!
//! The `metrics` facade has one process-wide recorder ([`metrics_handle`]), and the tests of
//! this binary run in parallel threads of one process: a counter read from the global
//! recorder adds up every test's activity, so "it is ≥ 1" proves nothing about the test that
//! reads it. Two honest ways, both used:
//! - a labeler in its own process (the real binary, `common::process`): its `/metrics` counts
//!   only what that test did; compare [`Metrics::delta`]s around the action;
//! - an in-process server given a [`Scoped`] recorder: every metric recorded on the test's
//!   thread goes to that recorder alone, and the server's `/metrics` renders it.
//!
//! [`metrics_handle`]: atmos_labeler::telemetry::metrics_handle

use std::collections::BTreeMap;

use metrics::LocalRecorderGuard;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// One scrape: every sample, keyed by name and its labels (sorted by label name).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    samples: BTreeMap<(String, Vec<(String, String)>), f64>,
}

impl Metrics {
    /// Parses a Prometheus text exposition. Panics on a line it cannot read: the labeler
    /// must only ever serve valid exposition text.
    pub fn parse(text: &str) -> Metrics {
        let mut samples = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value in metrics line {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in metrics line {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let body = rest
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                    (name, parse_labels(body, line))
                }
                None => (series, Vec::new()),
            };
            let old = samples.insert((name.to_owned(), labels), value);
            assert!(old.is_none(), "series repeated in one scrape: {line:?}");
        }
        Metrics { samples }
    }

    /// The value of `name` with exactly `labels`; 0 for a series never recorded (counters
    /// and gauges start at zero and the exporter only lists series once they are touched).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples.get(&key(name, labels)).copied().unwrap_or(0.0)
    }

    /// Whether any series of `name` was exposed.
    pub fn has(&self, name: &str) -> bool {
        self.samples.keys().any(|(n, _)| n == name)
    }

    /// `after − self` for one series.
    pub fn delta(&self, after: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
        after.get(name, labels) - self.get(name, labels)
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> (String, Vec<(String, String)>) {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    l.sort();
    (name.to_owned(), l)
}

/// `a="x",b="y"` → sorted pairs, undoing the format's `\\`, `\"` and `\n` escapes.
fn parse_labels(body: &str, line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad label in {line:?}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("dangling escape in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        out.push((name.trim_start_matches(',').to_owned(), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    out.sort();
    out
}

/// `GET {base}/metrics` → the parsed scrape (panics on a non-200 or an unreadable body).
pub async fn scrape(base: &str) -> Metrics {
    let resp = tokio::time::timeout(super::server::WAIT, reqwest::get(format!("{base}/metrics")))
        .await
        .expect("/metrics answered in time")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    Metrics::parse(&resp.text().await.unwrap())
}

/// A Prometheus recorder for one test, installed as the `metrics` facade's recorder for the
/// test's thread while the guard lives.
///
/// `#[tokio::test]` runs the test and every task it spawns on that one thread (the
/// current-thread runtime), so whatever an in-process server records lands here and nowhere
/// else, and nothing another test records can land here. Work moved to other threads
/// (`spawn_blocking`) would record to the global recorder instead: a test reading this
/// recorder then sees a zero and fails, it never passes by accident.
pub struct Scoped {
    pub handle: PrometheusHandle,
    _guard: LocalRecorderGuard<'static>,
}

impl Scoped {
    /// Installs a fresh recorder on the current thread. Create it before the server, which
    /// registers some of its metrics when it is built.
    pub fn install() -> Scoped {
        // The guard borrows the recorder for as long as it is installed; a test's recorder is
        // small, so it is leaked rather than tied to a lifetime the guard cannot name.
        let recorder: &'static PrometheusRecorder =
            Box::leak(Box::new(PrometheusBuilder::new().build_recorder()));
        Scoped {
            handle: recorder.handle(),
            _guard: metrics::set_default_local_recorder(recorder),
        }
    }
}

#[test]
fn the_parser_reads_names_labels_escapes_and_values() {
    let m = Metrics::parse(
        "# HELP x_total An x.\n# TYPE x_total counter\nx_total{b=\"2\",a=\"q\\\"uote, \\\\ {}\"} 3\nup 1\nlat_bucket{le=\"+Inf\"} 7\nneg -0.5\n",
    );
    assert_eq!(
        m.get("x_total", &[("a", "q\"uote, \\ {}"), ("b", "2")]),
        3.0
    );
    assert_eq!(
        m.get("x_total", &[("b", "2"), ("a", "q\"uote, \\ {}")]),
        3.0
    );
    assert_eq!(m.get("up", &[]), 1.0);
    assert_eq!(m.get("lat_bucket", &[("le", "+Inf")]), 7.0);
    assert_eq!(m.get("neg", &[]), -0.5);
    assert_eq!(m.get("missing", &[]), 0.0);
    assert!(m.has("x_total") && !m.has("x"));
    let later = Metrics::parse("x_total{a=\"q\\\"uote, \\\\ {}\",b=\"2\"} 5\n");
    assert_eq!(
        m.delta(&later, "x_total", &[("a", "q\"uote, \\ {}"), ("b", "2")]),
        2.0
    );
}
