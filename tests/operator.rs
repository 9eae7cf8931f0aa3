//! What operators and self-hosters touch: the `check` and `label` commands against real
//! servers, the status and metrics endpoints, and the README's promises.

use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;
use atmos_labeler::label::VERIFIED_MAIL_OPERATOR;
use atmos_labeler::telemetry::{
    JETSTREAM_EVENTS, JETSTREAM_LAG, LABELS_CREATED, LABELS_NEGATED, SUBSCRIBERS, VERIFICATIONS,
};

use crate::common::daemon::{TestLabeler, World};
use crate::common::dns::Fault;
use crate::common::process::LabelerProcess;

fn labeler_cmd(dir: &std::path::Path) -> Command {
    let mut cmd = Command::cargo_bin("labeler").unwrap();
    cmd.current_dir(dir)
        .env_remove("LABELER_CONFIG")
        .env_remove("LABELER_LISTEN_ADDR");
    cmd
}

/// `labeler check` as an operator runs it, from a directory without any state.
async fn check(world: &World, domain: &str, did: &str, extra: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let dns = world.dns.addr().to_string();
    let plc = world.plc.url();
    let mut args = vec!["check", domain, "--did", did, "--selector", "default"];
    args.extend_from_slice(&["--dns-server", &dns, "--plc-url", &plc]);
    args.extend_from_slice(extra);
    let mut cmd = labeler_cmd(dir.path());
    cmd.args(&args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(!dir.path().join("state").exists(), "check creates no state");
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn check_reports_pass_fail_and_could_not_decide_with_exit_codes() {
    let world = World::start().await;
    world
        .dns
        .publish_good_operator("good.test", "did:plc:good", &["default"]);
    world.account("did:plc:good");

    let (code, out, err) = check(&world, "good.test", "did:plc:good", &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    for name in ["domain-control", "mx", "spf", "dkim", "dmarc"] {
        let line = out
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(line.starts_with('✓'), "{line}");
    }

    world.dns.set_txt("good.test", &["v=spf1 +all"]);
    let (code, out, _) = check(&world, "good.test", "did:plc:good", &[]).await;
    assert_eq!(code, 1, "{out}");
    let spf = out.lines().find(|l| l.contains("spf")).unwrap();
    assert!(spf.starts_with('✗') && spf.contains("+all"), "{spf}");

    world
        .dns
        .set_txt("good.test", &["v=spf1 ip4:192.0.2.0/24 -all"]);
    world.dns.fault("_dmarc.good.test", Fault::ServFail);
    let (code, out, _) = check(&world, "good.test", "did:plc:good", &[]).await;
    assert_eq!(code, 2, "{out}");
    let dmarc = out.lines().find(|l| l.contains("dmarc")).unwrap();
    assert!(
        dmarc.starts_with('?') && dmarc.contains("_dmarc.good.test"),
        "{dmarc}"
    );

    let (code, out, _) = check(&world, "good.test", "did:plc:good", &["--json"]).await;
    assert_eq!(code, 2);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["verdict"], "could-not-decide");
    assert_eq!(report["domain"], "good.test");
}

#[tokio::test]
async fn a_label_made_with_the_cli_reaches_a_running_daemons_subscribers() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    let mut sub = labeler.subscribe("").await;
    // The same config the daemon runs with, as a file for the CLI.
    let config_path = labeler.dir.join("config.json");
    let config = serde_json::json!({
        "stateDir": labeler.config.state_dir,
        "signingKeyPath": labeler.config.signing_key_path,
    });
    std::fs::write(&config_path, config.to_string()).unwrap();

    let mut cmd = labeler_cmd(&labeler.dir);
    cmd.args(["--config", config_path.to_str().unwrap()]).args([
        "label",
        "create",
        "--uri",
        "did:plc:spammer",
        "--val",
        "spam",
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (seq, label) = sub.next_label().await; // within the 10 s bound; polling is 20 ms
    assert_eq!(
        (label.uri.as_str(), label.val.as_str()),
        ("did:plc:spammer", "spam")
    );
    let printed: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(printed["seq"], seq);
    labeler.stop().await;
}

/// Metrics are read from the real binary in its own process: its recorder counts only what
/// this test does (the in-process labelers of other tests share one recorder with each other).
#[tokio::test]
async fn metrics_count_the_event_verification_and_label_of_one_attestation() {
    let world = World::start().await;
    let mut labeler = LabelerProcess::create(&world, "24h");
    labeler.start(&world).await;
    let before = labeler.metrics().await;
    let mut sub = labeler.subscribe("").await;
    let t = world.good_operator("did:plc:metrics", "metrics.test", "r1");
    assert_eq!(sub.next_label().await.1.val, VERIFIED_MAIL_OPERATOR);
    // The lag gauge and the saved cursor follow the event; wait for the cursor so the
    // event's handling is complete before reading.
    labeler.await_cursor(t).await;
    let after = labeler.metrics().await;

    let delta = |name, labels: &[(&str, &str)]| before.delta(&after, name, labels);
    assert_eq!(delta(JETSTREAM_EVENTS, &[("kind", "commit")]), 1.0);
    assert_eq!(delta(VERIFICATIONS, &[("outcome", "pass")]), 1.0);
    assert_eq!(
        delta(LABELS_CREATED, &[("val", VERIFIED_MAIL_OPERATOR)]),
        1.0
    );
    assert_eq!(
        delta(LABELS_NEGATED, &[("val", VERIFIED_MAIL_OPERATOR)]),
        0.0
    );
    // One subscriber connected: this test's.
    assert_eq!(after.get(SUBSCRIBERS, &[]), 1.0);
    assert!(after.has(JETSTREAM_LAG), "the lag gauge is exposed");
    assert!(after.get(JETSTREAM_LAG, &[]) >= 0.0);
    assert_eq!(labeler.terminate().await.code(), Some(0));
}

#[test]
fn the_readme_quickstart_commands_are_the_ones_ci_and_docker_use() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let commands = readme_sh_blocks("Quickstart");
    assert_eq!(commands, ["cargo run --release", "cargo test --locked"]);

    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert_eq!(
        ci_commands(&ci)
            .filter(|l| l.starts_with("cargo test"))
            .collect::<Vec<_>>(),
        [commands[1].as_str()],
        ".ci/run runs exactly the README's test command:\n{ci}"
    );

    // `cargo run` runs the labeler binary with no arguments: the Docker image's command.
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("CMD [\"labeler\"]"), "{dockerfile}");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("default-run = \"labeler\""));
}

#[test]
fn ci_runs_the_checks_the_readme_lists_and_stops_at_the_first_failure() {
    let blocks = readme_sh_blocks("Continuous integration");
    let listed: Vec<&str> = blocks.first().map_or("", String::as_str).lines().collect();
    assert_eq!(
        listed,
        [
            "cargo fmt --all -- --check",
            "cargo clippy --all-targets --locked -- -D warnings",
            "RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --locked",
            "cargo test --locked",
        ]
    );

    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let run: Vec<&str> = ci_commands(&ci).collect();
    assert!(run.contains(&"set -euo pipefail"), "{ci}");
    assert!(run.contains(&"install_deps"), "{ci}");
    let checks: Vec<&str> = run
        .iter()
        .copied()
        .filter(|l| l.contains("cargo "))
        .collect();
    assert_eq!(
        checks, listed,
        ".ci/run runs the README's list, in order:\n{ci}"
    );
}

/// The `sh` code blocks of one `## ` section of README.md, trimmed.
fn readme_sh_blocks(section: &str) -> Vec<String> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    readme
        .split(&format!("## {section}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("README.md has no \"{section}\" section"))
        .split("\n## ")
        .next()
        .unwrap()
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("\n```").next().unwrap().trim().to_owned())
        .collect()
}

/// The command lines of a shell script: no blank lines, comments, or lines of the function
/// that checks the toolchain.
fn ci_commands(script: &str) -> impl Iterator<Item = &str> {
    script
        .lines()
        .filter(|l| !l.starts_with(char::is_whitespace) && !l.starts_with('}'))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.contains("()"))
}
