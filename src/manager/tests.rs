use super::*;

fn opts() -> Options {
    Options {
        src: "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme".into(),
        verify_records_at_pds: true,
        relay_enabled: true,
        reverify_interval: Duration::from_secs(24 * 3600),
        stale_after: Duration::from_secs(72 * 3600),
        concurrency: 4,
        clock: Clock::System,
    }
}

const H: i64 = 3600 * 1000;

fn att(rkey: &str, standing: bool, relay: bool) -> Attestation {
    Attestation {
        did: "did:plc:a".into(),
        rkey: rkey.into(),
        domain: "example.com".into(),
        selectors: vec!["default".into()],
        record_cid: None,
        rev: None,
        created_at: None,
        first_seen_ms: 0,
        verdict: if standing {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        standing,
        relay_member: relay,
        report: None,
        checked_ms: Some(0),
        last_definitive_ms: Some(0),
        consecutive_failures: 0,
        consecutive_undecided: 0,
        next_check_ms: 0,
    }
}

#[test]
fn pass_grants_standing_and_schedules_within_ten_percent_of_the_interval() {
    let o = opts();
    for jitter in [0.0, 0.5, 0.999] {
        let n = advance(None, Outcome::Pass, true, 1000, jitter, &o);
        assert!(n.standing && n.relay_member);
        let d = n.next_check_ms - 1000;
        assert!((21 * H..=27 * H).contains(&d), "{d}");
    }
}

#[test]
fn undecided_keeps_standing_until_stale_and_backs_off() {
    let o = opts();
    let mut prev = att("r", true, true);
    prev.last_definitive_ms = Some(0);
    let n = advance(Some(&prev), Outcome::CouldNotDecide, false, 71 * H, 0.0, &o);
    assert!(n.standing && n.relay_member, "within 72h the label stays");
    assert_eq!(n.next_check_ms - 71 * H, 5 * 60 * 1000);
    assert_eq!(n.last_definitive_ms, Some(0));

    prev.consecutive_undecided = 10;
    let n = advance(Some(&prev), Outcome::CouldNotDecide, false, 73 * H, 0.0, &o);
    assert!(
        !n.standing && !n.relay_member,
        "after 72h without an answer it is withdrawn"
    );
    assert_eq!(n.next_check_ms - 73 * H, 4 * H, "backoff is capped");

    let n = advance(None, Outcome::CouldNotDecide, false, 0, 0.0, &o);
    assert!(!n.standing, "an undecided first check never grants");
}

#[test]
fn failure_drops_standing_and_rechecks_sooner_each_time_up_to_the_interval() {
    let o = opts();
    let mut prev = att("r", true, false);
    let n = advance(Some(&prev), Outcome::Fail, false, 0, 0.0, &o);
    assert!(!n.standing);
    assert_eq!((n.consecutive_failures, n.next_check_ms), (1, H));
    prev.consecutive_failures = 30;
    let n = advance(Some(&prev), Outcome::Fail, false, 0, 0.0, &o);
    assert_eq!(n.next_check_ms, 24 * H);
}

fn held(val: &str, neg: bool) -> crate::store::StoredLabel {
    let key = SigningKey::generate().unwrap();
    crate::store::StoredLabel {
        seq: 1,
        signed: Label {
            src: opts().src,
            uri: "did:plc:a".into(),
            cid: None,
            val: val.into(),
            neg,
            cts: label::now_cts(),
            exp: None,
        }
        .sign(&key),
    }
}

fn vals(labels: &[Label]) -> Vec<(String, bool)> {
    labels.iter().map(|l| (l.val.clone(), l.neg)).collect()
}

#[test]
fn labels_follow_standing_across_attestations() {
    let src = opts().src;
    // A new standing attestation grants both labels.
    let state = DidState::default();
    let changes = Changes {
        put: vec![att("r1", true, true)],
        ..Changes::default()
    };
    let l = decide_labels("did:plc:a", &src, &state, &changes, true);
    assert_eq!(
        vals(&l),
        [
            ("verified-mail-operator".into(), false),
            ("relay-member".into(), false)
        ]
    );
    assert!(
        l.iter()
            .all(|l| l.uri == "did:plc:a" && l.src == src && l.cid.is_none())
    );

    // Held labels and a second standing attestation: losing one changes nothing.
    let state = DidState {
        attestations: vec![att("r1", true, true), att("r2", true, false)],
        labels: vec![
            held("verified-mail-operator", false),
            held("relay-member", false),
        ],
        ..DidState::default()
    };
    let changes = Changes {
        put: vec![att("r2", false, false)],
        ..Changes::default()
    };
    assert!(decide_labels("did:plc:a", &src, &state, &changes, true).is_empty());

    // Deleting the relay member keeps the operator label but negates relay-member.
    let changes = Changes {
        delete: vec!["r1".into()],
        ..Changes::default()
    };
    assert_eq!(
        vals(&decide_labels("did:plc:a", &src, &state, &changes, true)),
        [("relay-member".into(), true)]
    );

    // A deactivated account loses everything; a negated label is not negated again.
    let changes = Changes {
        account: Some(Account {
            active: false,
            status: Some("deactivated".into()),
        }),
        ..Changes::default()
    };
    assert_eq!(
        vals(&decide_labels("did:plc:a", &src, &state, &changes, true)),
        [
            ("verified-mail-operator".into(), true),
            ("relay-member".into(), true)
        ]
    );
    let negated = DidState {
        labels: vec![held("verified-mail-operator", true)],
        ..DidState::default()
    };
    assert!(decide_labels("did:plc:a", &src, &negated, &Changes::default(), true).is_empty());
}

#[test]
fn relay_member_is_never_emitted_when_relay_checking_is_off() {
    let changes = Changes {
        put: vec![att("r1", true, true)],
        ..Changes::default()
    };
    let l = decide_labels(
        "did:plc:a",
        &opts().src,
        &DidState::default(),
        &changes,
        false,
    );
    assert_eq!(vals(&l), [("verified-mail-operator".into(), false)]);
}

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
