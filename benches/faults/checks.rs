//! Named pass/fail results, and the invariants both runs check on what the labeler committed
//! (`label_history`) and what a subscriber received.

use std::collections::{HashMap, HashSet};
use std::process::{ExitCode, ExitStatus};

use crate::harness::LogStats;
use crate::rows::{Key, Row};

/// Named pass/fail results, printed as they are made.
#[derive(Default)]
pub struct Checks {
    items: Vec<(String, bool)>,
}

impl Checks {
    pub fn check(&mut self, name: &str, ok: bool, detail: impl std::fmt::Display) {
        println!("  [{}] {name}: {detail}", if ok { "PASS" } else { "FAIL" });
        self.items.push((name.to_owned(), ok));
    }

    /// A check that passes when there are no `violations`; a failure shows how many
    /// (`what`) and the first five.
    pub fn none<T: std::fmt::Debug>(
        &mut self,
        name: &str,
        violations: &[T],
        what: &str,
        ok_detail: impl FnOnce() -> String,
    ) {
        let detail = if violations.is_empty() {
            ok_detail()
        } else {
            format!(
                "{} {what}, first: {:?}",
                violations.len(),
                &violations[..violations.len().min(5)]
            )
        };
        self.check(name, violations.is_empty(), detail);
    }

    /// How every run ends: SIGTERM exits 0 and leaves a database that passes
    /// `integrity_check`, and the log holds nothing but JSON lines (a panic would not be).
    /// `prefix` names the run in the checks' names (`""` for the only one).
    pub fn clean_end(&mut self, prefix: &str, exit: ExitStatus, integrity: &str, log: &LogStats) {
        self.check(
            &format!("{prefix}SIGTERM at the end exits 0, then integrity_check"),
            exit.success() && integrity == "ok",
            format!("exit {exit}, integrity_check {integrity}"),
        );
        self.check(
            &format!("{prefix}no panic or other non-JSON output in the log"),
            log.not_json.is_empty(),
            if log.not_json.is_empty() {
                format!("{} log lines", log.lines)
            } else {
                format!("{:?}", log.not_json)
            },
        );
    }

    pub fn summary(&self) -> ExitCode {
        let failed: Vec<&str> = self
            .items
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(n, _)| n.as_str())
            .collect();
        if failed.is_empty() {
            println!("faults: all {} checks passed", self.items.len());
            ExitCode::SUCCESS
        } else {
            eprintln!(
                "faults: FAILED: {} of {} checks: {}",
                failed.len(),
                self.items.len(),
                failed.join("; ")
            );
            ExitCode::FAILURE
        }
    }
}

/// The invariants of `label_history`: strictly increasing seqs, no (uri, val) with the same
/// polarity twice in a row.
pub fn check_history(checks: &mut Checks, run: &str, history: &[Row]) {
    let mut prev = 0;
    let mut bad_seq = Vec::new();
    for h in history {
        if h.seq <= prev {
            bad_seq.push(format!("{} after {prev}", h.seq));
        }
        prev = h.seq;
    }
    checks.none(
        &format!("{run}: label_history seqs strictly increase"),
        &bad_seq,
        "violations",
        || format!("{} rows, seq 1..={prev}", history.len()),
    );
    let mut last: HashMap<(&str, &str), bool> = HashMap::new();
    let mut dups = Vec::new();
    for h in history {
        if last.insert((&h.uri, &h.val), h.neg) == Some(h.neg) {
            dups.push(format!("{} {} neg={} seq {}", h.uri, h.val, h.neg, h.seq));
        }
    }
    checks.none(
        &format!("{run}: no duplicate label (same polarity twice in a row)"),
        &dups,
        "duplicates",
        || {
            format!(
                "{} grants, {} negations",
                history.iter().filter(|h| !h.neg).count(),
                history.iter().filter(|h| h.neg).count()
            )
        },
    );
}

/// Delivery of `history` (rows with seq ≤ `cut`) to a subscriber that received `frames`:
/// every frame is the history row of its seq; every row was received or is superseded by a
/// later row of its key (the key's last row always received). Returns the number of
/// superseded rows that were never delivered.
pub fn check_delivery(
    checks: &mut Checks,
    run: &str,
    history: &[Row],
    frames: &[Row],
    cut: i64,
) -> usize {
    let by_seq: HashMap<i64, &Row> = history.iter().map(|h| (h.seq, h)).collect();
    let mut phantom = Vec::new();
    let mut received = HashSet::new();
    let mut prev = 0;
    let mut order = Vec::new();
    for f in frames.iter().filter(|f| f.seq <= cut) {
        if f.seq <= prev {
            order.push(format!("{} after {prev}", f.seq));
        }
        prev = f.seq;
        if by_seq.get(&f.seq).is_none_or(|h| *h != f) {
            phantom.push(f.seq);
        }
        received.insert(f.seq);
    }
    checks.none(
        &format!("{run}: frames strictly increase in seq (nothing delivered twice)"),
        &order,
        "violations",
        || format!("{} frames", received.len()),
    );
    checks.none(
        &format!("{run}: every frame is a label_history row, field for field"),
        &phantom,
        "frames differ from their row (seqs)",
        || "yes".to_owned(),
    );
    let rows: Vec<&Row> = history.iter().filter(|h| h.seq <= cut).collect();
    let last_of_key: HashMap<Key, i64> = rows.iter().map(|h| (h.key(), h.seq)).collect();
    let mut missing = Vec::new();
    let mut superseded = 0;
    for h in &rows {
        if received.contains(&h.seq) {
            continue;
        }
        if last_of_key.get(&h.key()) == Some(&h.seq) {
            missing.push(format!("seq {} {} {} neg={}", h.seq, h.uri, h.val, h.neg));
        } else {
            superseded += 1;
        }
    }
    checks.none(
        &format!(
            "{run}: every committed label delivered, or superseded by a later delivered row of its key"
        ),
        &missing,
        "rows never delivered and never superseded",
        || {
            format!(
                "{} history rows: {} delivered, {superseded} superseded before delivery",
                rows.len(),
                rows.len() - superseded
            )
        },
    );
    superseded
}
