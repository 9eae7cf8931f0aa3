use super::*;
use crate::keys::SigningKey;
use crate::label::{Label, SignedLabel};
use crate::verify::Outcome;

fn key() -> SigningKey {
    SigningKey::from_hex("9085d2bef69286a6cbb51623c8fa258629945cd55ca705cc4e66700396894e0c")
        .unwrap()
}

fn label(uri: &str, val: &str, neg: bool) -> SignedLabel {
    Label {
        src: key().did_key().to_owned(),
        uri: uri.to_owned(),
        cid: None,
        val: val.to_owned(),
        neg,
        cts: crate::label::now_cts(),
        exp: None,
    }
    .sign(&key())
}

fn attestation(did: &str, rkey: &str) -> Attestation {
    Attestation {
        did: did.into(),
        rkey: rkey.into(),
        domain: "example.com".into(),
        selectors: vec!["default".into()],
        record_cid: Some("bafy".into()),
        rev: Some("3mvzi5tma3n2f".into()),
        created_at: None,
        first_seen_ms: 1,
        verdict: Outcome::Pass,
        standing: true,
        relay_member: false,
        report: Some("{}".into()),
        checked_ms: Some(1),
        last_definitive_ms: Some(1),
        consecutive_failures: 0,
        consecutive_undecided: 0,
        next_check_ms: 100,
    }
}

fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    (dir, store)
}

#[test]
fn replacement_gets_a_new_seq_and_leaves_one_current_row() {
    let (_d, store) = temp_store();
    let a = store
        .write_labels(&[label("did:plc:a", "spam", false)])
        .unwrap();
    let b = store
        .write_labels(&[label("did:plc:b", "spam", false)])
        .unwrap();
    let neg = store
        .write_labels(&[label("did:plc:a", "spam", true)])
        .unwrap();
    assert!(a[0].seq < b[0].seq && b[0].seq < neg[0].seq);
    let current = store.labels_after(0, 100).unwrap();
    let seqs: Vec<i64> = current.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, vec![b[0].seq, neg[0].seq], "the replaced row is gone");
    assert!(current[1].signed.label.neg);
    assert_eq!(store.label_history().unwrap().len(), 3);
    assert_eq!(store.head_seq().unwrap(), neg[0].seq);
}

#[test]
fn seq_never_goes_back_across_reopen_even_when_the_top_row_was_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let mut last = 0;
    for round in 0..3 {
        let store = Store::open(&path).unwrap();
        for _ in 0..3 {
            // Same key every time: the highest row is always the one being replaced.
            let s = store
                .write_labels(&[label("did:plc:a", "spam", round % 2 == 1)])
                .unwrap();
            assert!(s[0].seq > last, "seq {} after {last}", s[0].seq);
            last = s[0].seq;
        }
        assert_eq!(store.head_seq().unwrap(), last);
    }
    assert_eq!(last, 9);
}

#[test]
fn a_failure_between_statements_leaves_no_half_written_change() {
    let (_d, store) = temp_store();
    // Inject a fault in the middle of the transaction: the second label's history insert fails.
    store
        .writer()
        .execute_batch(
            "CREATE TRIGGER boom BEFORE INSERT ON label_history WHEN NEW.val = 'boom'
             BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
        )
        .unwrap();
    let did = "did:plc:a";
    let src = key().did_key().to_owned();
    let result = store.update_did(did, &src, |_| {
        Ok::<_, ()>(Changes {
            put: vec![attestation(did, "r1")],
            revs: vec![RecordRev {
                rkey: "r1".into(),
                rev: "3mvzi5tma3n2f".into(),
                deleted: false,
            }],
            labels: vec![
                label(did, "verified-mail-operator", false),
                label(did, "boom", false),
            ],
            cursor: Some(42),
            ..Changes::default()
        })
    });
    assert!(result.is_err(), "the injected fault surfaces as an error");
    assert!(store.attestations_for(did).unwrap().is_empty());
    assert!(store.record_rev(did, "r1").unwrap().is_none());
    assert!(store.labels_after(0, 10).unwrap().is_empty());
    assert!(store.label_history().unwrap().is_empty());
    assert_eq!(store.cursor().unwrap(), None);
    assert_eq!(
        store.head_seq().unwrap(),
        0,
        "the seq counter rolled back too"
    );

    // The same change without the fault commits as a whole.
    let committed = store
        .update_did(did, &src, |state| {
            assert!(state.attestations.is_empty());
            Ok::<_, ()>(Changes {
                put: vec![attestation(did, "r1")],
                labels: vec![label(did, "verified-mail-operator", false)],
                cursor: Some(42),
                ..Changes::default()
            })
        })
        .unwrap()
        .unwrap();
    assert_eq!(committed.labels[0].seq, 1);
    assert_eq!(
        store.attestations_for(did).unwrap(),
        vec![attestation(did, "r1")]
    );
    assert_eq!(store.cursor().unwrap(), Some(42));
}

#[test]
fn decide_sees_the_did_state_and_an_error_writes_nothing() {
    let (_d, store) = temp_store();
    let did = "did:plc:a";
    let src = key().did_key().to_owned();
    store
        .update_did(did, &src, |_| {
            Ok::<_, ()>(Changes {
                put: vec![attestation(did, "r1"), attestation(did, "r2")],
                labels: vec![label(did, "verified-mail-operator", false)],
                account: Some(Account {
                    active: false,
                    status: Some("deactivated".into()),
                }),
                ..Changes::default()
            })
        })
        .unwrap()
        .unwrap();
    let seen = store
        .update_did(did, &src, |state| {
            assert_eq!(state.attestations.len(), 2);
            assert!(state.label("verified-mail-operator").is_some());
            assert_eq!(
                state.account.as_ref().unwrap().status.as_deref(),
                Some("deactivated")
            );
            Err::<Changes, _>("nothing to do")
        })
        .unwrap();
    assert_eq!(seen.unwrap_err(), "nothing to do");
    assert_eq!(store.tracked_dids().unwrap(), vec![did.to_owned()]);
}

#[test]
fn cursor_only_moves_forward() {
    let (_d, store) = temp_store();
    store.save_cursor(100).unwrap();
    store.save_cursor(50).unwrap();
    assert_eq!(store.cursor().unwrap(), Some(100));
    store.save_cursor(150).unwrap();
    assert_eq!(store.cursor().unwrap(), Some(150));
}

#[test]
fn claim_due_leases_each_attestation_once() {
    let (_d, store) = temp_store();
    let src = key().did_key().to_owned();
    for (did, next) in [("did:plc:a", 100), ("did:plc:b", 200), ("did:plc:c", 900)] {
        store
            .update_did(did, &src, |_| {
                let mut a = attestation(did, "r");
                a.next_check_ms = next;
                Ok::<_, ()>(Changes {
                    put: vec![a],
                    ..Changes::default()
                })
            })
            .unwrap()
            .unwrap();
    }
    assert_eq!(store.next_due_ms().unwrap(), Some(100));
    let due = store.claim_due(500, 1000, 10).unwrap();
    assert_eq!(
        due,
        vec![
            ("did:plc:a".to_owned(), "r".to_owned()),
            ("did:plc:b".to_owned(), "r".to_owned())
        ]
    );
    assert!(store.claim_due(500, 1000, 10).unwrap().is_empty());
    assert_eq!(store.next_due_ms().unwrap(), Some(900));
}

#[test]
fn queries_match_exact_and_prefix_patterns_byte_for_byte() {
    let (_d, store) = temp_store();
    let uris = [
        "did:plc:abc",
        "did:plc:abcdef",
        "did:plc:ABC",
        "did:plc:ab_c",
        "did:plc:abxc",
        "did:web:abc",
        "at://did:plc:abc/email.atmos.attestation/1",
    ];
    for u in uris {
        store.write_labels(&[label(u, "spam", false)]).unwrap();
    }
    let q = |patterns: Vec<UriPattern>| -> Vec<String> {
        store
            .query_labels(&LabelQuery {
                patterns,
                sources: vec![],
                after: 0,
                limit: 50,
            })
            .unwrap()
            .into_iter()
            .map(|l| l.signed.label.uri)
            .collect()
    };
    assert_eq!(
        q(vec![UriPattern::Exact("did:plc:abc".into())]),
        ["did:plc:abc"]
    );
    assert_eq!(
        q(vec![UriPattern::Exact("did:plc:ab_c".into())]),
        ["did:plc:ab_c"]
    );
    assert_eq!(
        q(vec![UriPattern::Prefix("did:plc:abc".into())]),
        ["did:plc:abc", "did:plc:abcdef"]
    );
    assert_eq!(
        q(vec![UriPattern::Prefix("did:plc:ab_".into())]),
        ["did:plc:ab_c"]
    );
    assert_eq!(q(vec![UriPattern::Prefix(String::new())]).len(), uris.len());
    assert_eq!(
        q(vec![
            UriPattern::Exact("did:plc:ABC".into()),
            UriPattern::Prefix("at://".into())
        ]),
        ["did:plc:ABC", "at://did:plc:abc/email.atmos.attestation/1"]
    );
}

#[test]
fn a_prefix_upper_bound_is_the_next_string_skipping_surrogates() {
    use super::labels::prefix_upper_bound;
    assert_eq!(
        prefix_upper_bound("did:plc:a").as_deref(),
        Some("did:plc:b")
    );
    assert_eq!(prefix_upper_bound("a\u{7f}").as_deref(), Some("a\u{80}"));
    assert_eq!(
        prefix_upper_bound("a\u{d7ff}").as_deref(),
        Some("a\u{e000}")
    );
    assert_eq!(prefix_upper_bound("a\u{10ffff}").as_deref(), Some("b"));
    assert_eq!(prefix_upper_bound(""), None);
}

/// docs/performance.md §2: rusqlite's statement cache clears bindings when a statement goes back, and
/// SQLite then re-prepares any statement whose plan looked at a bound value (`LIMIT ?`) on its
/// next use — halving exact-DID lookup throughput. The read connections enable QPSG to prevent
/// it; this guards that the hot queryLabels path never re-prepares.
#[test]
fn exact_lookups_are_never_re_prepared() {
    use rusqlite::StatementStatus;

    use super::labels::EXACT_SQL;

    let (_d, store) = temp_store();
    for i in 0..20 {
        store
            .write_labels(&[label(&format!("did:plc:{i}"), "spam", false)])
            .unwrap();
    }
    // One test thread, so the pool hands back the same connection every time.
    for i in 0..200 {
        let n = store
            .visit_labels(&exact(&format!("did:plc:{}", i % 20)), |_, _, _| {})
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(store.query_labels(&exact("did:plc:3")).unwrap().len(), 1);
    }
    let (re_prepared, runs) = store
        .read(|c| {
            let stmt = c.prepare_cached(EXACT_SQL)?;
            Ok((
                stmt.get_status(StatementStatus::RePrepare),
                stmt.get_status(StatementStatus::Run),
            ))
        })
        .unwrap();
    assert!(
        runs >= 400,
        "the cached statement served the lookups ({runs} runs)"
    );
    assert_eq!(
        re_prepared, 0,
        "exact lookups re-prepared {re_prepared} times"
    );

    // The guard is not vacuous: the same statement on a connection without QPSG re-prepares.
    let plain = rusqlite::Connection::open(store.path()).unwrap();
    for _ in 0..10 {
        let mut stmt = plain.prepare_cached(EXACT_SQL).unwrap();
        let mut rows = stmt
            .query(rusqlite::params!["did:plc:3", 0, 50, 0])
            .unwrap();
        while rows.next().unwrap().is_some() {}
    }
    let stmt = plain.prepare_cached(EXACT_SQL).unwrap();
    assert!(stmt.get_status(StatementStatus::RePrepare) > 0);
}

#[test]
fn visiting_borrows_the_same_rows_that_query_labels_returns() {
    let (_d, store) = temp_store();
    for u in ["did:plc:a", "did:plc:b", "at://did:plc:a/x/1"] {
        store.write_labels(&[label(u, "spam", false)]).unwrap();
    }
    store
        .write_labels(&[label("did:plc:a", "spam", true)])
        .unwrap();
    let q = LabelQuery {
        patterns: vec![UriPattern::Prefix("did:plc:".into())],
        sources: vec![key().did_key().to_owned()],
        after: 0,
        limit: 10,
    };
    let owned = store.query_labels(&q).unwrap();
    let mut seen = Vec::new();
    store
        .visit_labels(&q, |seq, l, sig| {
            seen.push(StoredLabel {
                seq,
                signed: SignedLabel {
                    label: Label {
                        src: l.src.to_owned(),
                        uri: l.uri.to_owned(),
                        cid: l.cid.map(str::to_owned),
                        val: l.val.to_owned(),
                        neg: l.neg,
                        cts: l.cts.to_owned(),
                        exp: l.exp.map(str::to_owned),
                    },
                    sig: sig.try_into().unwrap(),
                },
            });
        })
        .unwrap();
    assert_eq!(seen, owned);
    assert_eq!(seen.len(), 2);
    assert!(
        seen[1].signed.label.neg,
        "the negation replaced the original"
    );
}

/// Every query plan (exact, index by subject or source, seq-order scan) returns exactly what a
/// brute-force filter of the table returns, page after page, on both sides of the plan
/// threshold.
#[test]
fn every_query_plan_agrees_with_a_brute_force_filter() {
    let (_d, store) = temp_store();
    let ours = key().did_key().to_owned();
    let theirs = "did:web:other.example".to_owned();
    // 10,000 rows: enough for broad patterns to cross INDEX_PLAN_CAP. Raw inserts keep the
    // test fast; queries never look at signatures.
    let mut rows: Vec<(i64, String, String)> = Vec::new();
    {
        let mut conn = store.writer();
        let tx = conn.transaction().unwrap();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let uri = match i % 10 {
                0 => format!("at://did:plc:r{}/email.atmos.attestation/{i}", x % 50),
                1 => format!("did:web:h{}.example", x % 100),
                _ => format!("did:plc:{x:016x}"),
            };
            let src = if i % 97 == 0 { &theirs } else { &ours };
            tx.execute(
                "INSERT INTO labels (src, uri, val, cts, sig) VALUES (?1, ?2, ?3, 'x', ?4)",
                rusqlite::params![src, uri, format!("v{i}"), vec![0u8; 64]],
            )
            .unwrap();
            rows.push((tx.last_insert_rowid(), src.clone(), uri));
        }
        tx.commit().unwrap();
    }
    let matches = |p: &UriPattern, uri: &str| match p {
        UriPattern::Exact(u) => uri == u,
        UriPattern::Prefix(pre) => uri.starts_with(pre.as_str()),
    };
    let cases: Vec<(Vec<UriPattern>, Vec<String>)> = vec![
        (vec![UriPattern::Prefix("did:plc:a".into())], vec![]),
        (vec![UriPattern::Prefix("did:plc:".into())], vec![]),
        (
            vec![UriPattern::Prefix("did:".into())],
            vec![theirs.clone()],
        ),
        (vec![UriPattern::Prefix("at://did:plc:r7/".into())], vec![]),
        (vec![UriPattern::Prefix(String::new())], vec![]),
        (
            vec![UriPattern::Prefix(String::new())],
            vec![theirs.clone()],
        ),
        (vec![UriPattern::Prefix(String::new())], vec![ours.clone()]),
        (
            vec![
                UriPattern::Exact("did:web:h3.example".into()),
                UriPattern::Exact("did:web:h4.example".into()),
            ],
            vec![],
        ),
        (
            vec![UriPattern::Exact("did:web:h5.example".into())],
            vec![ours.clone(), theirs],
        ),
        (
            vec![
                UriPattern::Exact("did:web:h6.example".into()),
                UriPattern::Prefix("at://did:plc:r1".into()),
                UriPattern::Prefix("did:plc:f".into()),
            ],
            vec![],
        ),
        // Overlapping patterns: a label matching several is still returned once.
        (
            vec![
                UriPattern::Prefix("did:web:h1".into()),
                UriPattern::Exact("did:web:h1.example".into()),
                UriPattern::Prefix("did:web:".into()),
            ],
            vec![],
        ),
        (
            vec![
                UriPattern::Prefix("at://".into()),
                UriPattern::Prefix("did:web:".into()),
            ],
            vec![ours],
        ),
    ];
    let mut answered_quickly = 0;
    for (patterns, sources) in cases {
        let expected: Vec<i64> = rows
            .iter()
            .filter(|(_, src, uri)| {
                patterns.iter().any(|p| matches(p, uri))
                    && (sources.is_empty() || sources.contains(src))
            })
            .map(|r| r.0)
            .collect();
        for limit in [7, 250] {
            let mut got: Vec<i64> = Vec::new();
            let mut after = 0;
            loop {
                let q = LabelQuery {
                    patterns: patterns.clone(),
                    sources: sources.clone(),
                    after,
                    limit,
                };
                let page: Vec<i64> = store
                    .query_labels(&q)
                    .unwrap()
                    .iter()
                    .map(|l| l.seq)
                    .collect();
                // The inline (quick) form answers the same, or declines.
                let mut quick = Vec::new();
                if let Some(n) = store
                    .visit_labels_quick(&q, |seq, _, _| quick.push(seq))
                    .unwrap()
                {
                    assert_eq!((n, &quick), (page.len(), &page), "{q:?}");
                    answered_quickly += 1;
                }
                got.extend(&page);
                match page.last() {
                    Some(&last) if page.len() == limit => after = last,
                    _ => break,
                }
                if expected.len() > 2000 && got.len() >= 2000 {
                    break; // enough pages of a broad pattern
                }
            }
            let want = &expected[..got.len().min(expected.len())];
            assert_eq!(got, want, "{patterns:?} {sources:?} limit {limit}");
            if expected.len() <= 2000 {
                assert_eq!(got.len(), expected.len(), "{patterns:?} {sources:?}");
            }
        }
    }
    assert!(answered_quickly > 0);
}

#[test]
fn expired_labels_are_left_out_of_every_read() {
    let (_d, store) = temp_store();
    let with_exp = |uri: &str, exp: &str| {
        Label {
            src: key().did_key().to_owned(),
            uri: uri.to_owned(),
            cid: None,
            val: "spam".to_owned(),
            neg: false,
            cts: crate::label::now_cts(),
            exp: Some(exp.to_owned()),
        }
        .sign(&key())
    };
    store
        .write_labels(&[
            with_exp("did:plc:gone", "2020-01-01T00:00:00.000Z"),
            // An offset form expires by the instant it names, not by its text.
            with_exp("did:plc:gone2", "2020-01-01T05:00:00+02:00"),
            with_exp("did:plc:live", "2999-01-01T00:00:00Z"),
            label("did:plc:forever", "spam", false),
        ])
        .unwrap();
    let uris = |labels: Vec<StoredLabel>| -> Vec<String> {
        labels.into_iter().map(|l| l.signed.label.uri).collect()
    };
    let query = |patterns: Vec<UriPattern>| {
        uris(
            store
                .query_labels(&LabelQuery {
                    patterns,
                    sources: vec![],
                    after: 0,
                    limit: 50,
                })
                .unwrap(),
        )
    };
    let live = vec!["did:plc:live".to_owned(), "did:plc:forever".to_owned()];
    assert_eq!(query(vec![UriPattern::Prefix(String::new())]), live);
    assert_eq!(query(vec![UriPattern::Prefix("did:plc:".into())]), live);
    assert!(query(vec![UriPattern::Exact("did:plc:gone".into())]).is_empty());
    assert!(
        query(vec![
            UriPattern::Exact("did:plc:gone".into()),
            UriPattern::Exact("did:plc:gone2".into())
        ])
        .is_empty()
    );
    assert_eq!(uris(store.labels_after(0, 50).unwrap()), live);
    let mut visited = Vec::new();
    store
        .visit_after(0, 50, |_, l, _| visited.push(l.uri.to_owned()))
        .unwrap();
    assert_eq!(visited, live);
}

#[test]
fn processes_opening_one_new_database_at_once_each_migrate_it_once() {
    // Each round: four connections race to create and migrate the same fresh file, as the
    // daemon and a CLI command can after an upgrade. Every open must succeed.
    let dir = tempfile::tempdir().unwrap();
    for round in 0..5 {
        let path = dir.path().join(format!("race-{round}.db"));
        let start = std::sync::Barrier::new(4);
        let opened: Vec<Result<Store, Error>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        Store::open(&path)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for o in opened {
            let store =
                o.unwrap_or_else(|e| panic!("round {round}: {}", crate::telemetry::Chain(&e)));
            let version: i64 = store
                .read(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
                .unwrap();
            assert_eq!(version, schema::VERSION);
        }
    }
}

/// v6 replaces `labels_uri` with the covering `labels_by_uri`. A database written
/// before it keeps every label, byte for byte, and exact lookups then read the index alone.
#[test]
fn covering_index_migration_keeps_every_label_and_exact_lookups_read_only_the_index() {
    use rusqlite::types::Value;

    use super::labels::{EXACT_SQL, put_label};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let mut labels = vec![
        label("did:plc:a", "spam", false),
        label("did:plc:b", "spam", false),
        label("did:plc:a", "spam", true),
        label("at://did:plc:a/app.bsky.feed.post/1", "porn", false),
    ];
    let mut with_exp = label("did:plc:c", "spam", false).label;
    with_exp.cid = Some("bafyreia".into());
    with_exp.exp = Some("2999-01-01T00:00:00Z".into());
    labels.push(with_exp.sign(&key()));
    let rows = |c: &rusqlite::Connection| -> Vec<Vec<Value>> {
        let mut stmt = c
            .prepare("SELECT seq, src, uri, cid, val, neg, cts, exp, sig, exp_ms FROM labels ORDER BY seq")
            .unwrap();
        stmt.query_map([], |r| (0..10).map(|i| r.get::<_, Value>(i)).collect())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let before = {
        let mut c = rusqlite::Connection::open(&path).unwrap();
        schema::migrate_to(&mut c, 5).unwrap();
        let tx = c.transaction().unwrap();
        for l in &labels {
            put_label(&tx, l).unwrap();
        }
        tx.commit().unwrap();
        let old = rows(&c);
        assert_eq!(old.len(), 4, "the negation replaced its original");
        old
    };

    let store = Store::open(&path).unwrap();
    let (after, version, plan) = store
        .read(|c| {
            let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            let plan: Vec<String> = c
                .prepare(&format!("EXPLAIN QUERY PLAN {EXACT_SQL}"))?
                .query_map(params_for_plan(), |r| r.get(3))?
                .collect::<Result<_, _>>()?;
            Ok((rows(c), version, plan.join("; ")))
        })
        .unwrap();
    assert_eq!(version, schema::VERSION);
    assert_eq!(after, before);
    assert!(
        plan.contains("COVERING INDEX labels_by_uri"),
        "exact lookups read the covering index alone: {plan}"
    );
    let got = store
        .query_labels(&LabelQuery {
            patterns: vec![UriPattern::Exact("did:plc:a".into())],
            sources: vec![],
            after: 0,
            limit: 50,
        })
        .unwrap();
    assert_eq!(got.len(), 1);
    assert!(got[0].signed.label.neg, "the negation is the current label");
}

fn params_for_plan() -> [rusqlite::types::Value; 4] {
    use rusqlite::types::Value;
    [
        Value::Text("did:plc:a".into()),
        Value::Integer(0),
        Value::Integer(50),
        Value::Integer(0),
    ]
}

#[test]
fn inline_queries_run_on_lookup_connections_that_map_the_file_and_keep_room_for_the_index() {
    let (_dir, store) = temp_store();
    store
        .write_labels(&[label("did:plc:a", "verified-mail-operator", false)])
        .unwrap();
    let mut seen = 0;
    assert_eq!(
        store
            .visit_labels_quick(&exact("did:plc:a"), |_, _, _| seen += 1)
            .unwrap(),
        Some(1)
    );
    assert_eq!(seen, 1);
    // The inline query took (and gave back) a lookup connection, not a plain reader.
    assert_eq!(store.inner.lookups.idle_counts().0, 1);
    assert_eq!(store.inner.readers.lock().unwrap().len(), 0);
    let pragma = |name: &'static str| {
        move |c: &Connection| -> Result<i64, Error> {
            Ok(c.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))?)
        }
    };
    assert_eq!(
        store.lookup(pragma("cache_size")).unwrap(),
        -lookup::LOOKUP_CACHE_KIB
    );
    assert_eq!(
        store.lookup(pragma("mmap_size")).unwrap(),
        lookup::MMAP_BYTES
    );
    // Every other read keeps SQLite's default page cache and reads through `pread`.
    assert_eq!(store.read(pragma("cache_size")).unwrap(), -2000);
    assert_eq!(store.read(pragma("mmap_size")).unwrap(), 0);
}

fn exact(uri: &str) -> LabelQuery {
    LabelQuery {
        patterns: vec![UriPattern::Exact(uri.to_owned())],
        sources: vec![],
        after: 0,
        limit: 50,
    }
}

/// The negations an inline lookup returns for `uri` (one flag per current label).
fn looked_up(store: &Store, uri: &str) -> Vec<bool> {
    let mut negs = Vec::new();
    let n = store
        .visit_labels_quick(&exact(uri), |_, l, _| negs.push(l.neg))
        .unwrap();
    assert_eq!(n, Some(negs.len()));
    negs
}

/// A lookup connection keeps its read transaction between lookups, yet a commit by another
/// process (here another `Store` on the same file, as the `label` CLI opens one) is served
/// by the very next lookup: the transaction is renewed as soon as the wal-index header moves.
#[test]
fn a_held_lookup_snapshot_never_hides_another_process_commit() {
    let (dir, store) = temp_store();
    let other = Store::open(&dir.path().join("t.db")).unwrap();
    other
        .write_labels(&[label("did:plc:a", "verified-mail-operator", false)])
        .unwrap();
    assert_eq!(looked_up(&store, "did:plc:a"), [false]);
    assert_eq!(looked_up(&store, "did:plc:a"), [false]);
    // The connection went back to the pool still in its read transaction...
    assert_eq!(store.inner.lookups.idle_counts(), (1, 1));
    // ...so the negation below is seen only because the header check renews it.
    other
        .write_labels(&[label("did:plc:a", "verified-mail-operator", true)])
        .unwrap();
    assert_eq!(
        looked_up(&store, "did:plc:a"),
        [true],
        "the negation is served"
    );
    // A label for a new subject, and the removal of every label, show just as soon.
    other
        .write_labels(&[label("did:plc:b", "verified-mail-operator", false)])
        .unwrap();
    assert_eq!(looked_up(&store, "did:plc:b"), [false]);
    let raw = Connection::open(dir.path().join("t.db")).unwrap();
    raw.execute("DELETE FROM labels WHERE uri = 'did:plc:b'", [])
        .unwrap();
    assert_eq!(looked_up(&store, "did:plc:b"), Vec::<bool>::new());
    assert_eq!(store.inner.lookups.idle_counts(), (1, 1));
}

/// An idle lookup connection's open read transaction would keep the WAL from being reset;
/// every write of this process ends it first, so the write's checkpoint copies the whole WAL.
#[test]
fn writes_end_idle_lookup_transactions_so_the_wal_is_checkpointed_whole() {
    let (_dir, store) = temp_store();
    store
        .write_labels(&[label("did:plc:a", "verified-mail-operator", false)])
        .unwrap();
    assert_eq!(looked_up(&store, "did:plc:a"), [false]);
    assert_eq!(store.inner.lookups.idle_counts(), (1, 1));
    store
        .write_labels(&[label("did:plc:a", "verified-mail-operator", true)])
        .unwrap();
    assert_eq!(store.inner.lookups.idle_counts(), (1, 0));
    let (busy, log, done): (i64, i64, i64) = store
        .writer()
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((busy, done), (0, log), "every WAL frame was checkpointed");

    // The check is not vacuous: a lookup transaction kept across a write pins the snapshot
    // before it, and the checkpoint stops short of the write's frames.
    assert_eq!(looked_up(&store, "did:plc:a"), [true]);
    let pinned = store.inner.lookups.idle_counts();
    assert_eq!(pinned, (1, 1));
    let raw = Connection::open(store.path()).unwrap();
    raw.execute("UPDATE labels SET cts = cts", []).unwrap();
    let (log, done): (i64, i64) = raw
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert!(
        done < log,
        "a held snapshot pins the WAL ({done} of {log} frames copied)"
    );
}

/// A lookup that fails does not keep its transaction.
#[test]
fn a_failed_lookup_ends_its_transaction() {
    let (_dir, store) = temp_store();
    let err = store
        .lookup(|c| Ok(c.query_row("SELECT nope FROM labels", [], |r| r.get::<_, i64>(0))?))
        .unwrap_err();
    assert!(matches!(err, Error::Sqlite(_)), "{err:?}");
    assert_eq!(store.inner.lookups.idle_counts(), (1, 0));
}
