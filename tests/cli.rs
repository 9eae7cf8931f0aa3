//! The real `labeler` binary, run the way operators and the Docker image run it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use assert_cmd::cargo::CommandCargoExt;

use atmos_labeler::keys::SigningKey;

use crate::common::process::{Child, START_WAIT};

fn labeler(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("labeler").unwrap();
    cmd.current_dir(dir)
        .env_remove("LABELER_CONFIG")
        .env_remove("LABELER_LISTEN_ADDR")
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "1");
    cmd
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_creates_private_state_and_prints_only_the_did_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = labeler(dir.path()).arg("-init").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    let did = stdout.trim();
    assert!(did.starts_with("did:key:zQ3s"), "{did}");

    let state = dir.path().join("state");
    let key_path = state.join("signing.key");
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&key_path), 0o600);
    assert!(state.join("config.json").is_file());
    assert!(state.join("labeler.db").is_file());
    // The printed DID is the key's.
    assert_eq!(SigningKey::load(&key_path).unwrap().did_key(), did);
    // The key never appears on stdout or stderr.
    let hex = std::fs::read_to_string(&key_path).unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains(hex.trim()));

    // A second init changes nothing and prints the same DID.
    let config_before = std::fs::read(state.join("config.json")).unwrap();
    let again = labeler(dir.path()).arg("--init").output().unwrap();
    assert!(again.status.success());
    assert_eq!(String::from_utf8(again.stdout).unwrap().trim(), did);
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), hex);
    assert_eq!(
        std::fs::read(state.join("config.json")).unwrap(),
        config_before
    );
}

#[test]
fn init_never_overwrites_an_existing_key() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let hex = "9085d2bef69286a6cbb51623c8fa258629945cd55ca705cc4e66700396894e0c\n";
    std::fs::write(state.join("signing.key"), hex).unwrap();
    std::fs::set_permissions(
        state.join("signing.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let out = labeler(dir.path()).arg("-init").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("signing.key")).unwrap(),
        hex
    );

    // A corrupt key is an error naming the file, never replaced.
    std::fs::write(state.join("signing.key"), "not a key").unwrap();
    let out = labeler(dir.path()).arg("-init").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("signing.key") && err.contains("not a hex-encoded"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("signing.key")).unwrap(),
        "not a key"
    );
}

#[test]
fn hujson_config_with_comments_and_trailing_commas_loads() {
    let dir = tempfile::tempdir().unwrap();
    let init = labeler(dir.path()).arg("-init").output().unwrap();
    assert!(init.status.success());
    let config = dir.path().join("custom.json");
    std::fs::write(
        &config,
        "// operator config\n{\n  \"stateDir\": \"./state\", /* same state */\n  \"reverifyInterval\": \"12h\",\n  \"dnsServers\": [\"127.0.0.1:5353\",],\n}\n",
    )
    .unwrap();
    let out = labeler(dir.path())
        .args(["-config", "custom.json", "label", "list"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "", "no labels yet");
}

#[test]
fn config_errors_are_one_line_naming_file_position_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.json");
    std::fs::write(
        &config,
        "{\n  \"listenAddr\": \":8081\",\n  \"jetstreamUrl\": \"wss://x\"\n}\n",
    )
    .unwrap();
    let out = labeler(dir.path())
        .args(["-config", "bad.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("bad.json:3:"), "{err}");
    assert!(err.contains("jetstreamUrl"), "{err}");
    assert!(
        !err.contains("backtrace") && !err.contains("panicked"),
        "{err}"
    );

    std::fs::write(&config, "{ \"listenAddr\": :8081 }").unwrap();
    let out = labeler(dir.path())
        .args(["--config", "bad.json"])
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        !out.status.success() && err.contains("bad.json:1:"),
        "{err}"
    );

    let out = labeler(dir.path())
        .args(["-config", "missing.json"])
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        !out.status.success() && err.contains("labeler -init"),
        "{err}"
    );
}

/// Display strings never repeat their source: `main` prints the chain once, so an I/O error
/// appears exactly once on the one stderr line (it used to read "…: Is a directory (os error
/// 21): Is a directory (os error 21)").
#[test]
fn an_error_and_its_cause_are_printed_once_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the signing key should be: reading it fails with EISDIR, which is
    // the same for root (permission bits would not stop root).
    std::fs::create_dir_all(dir.path().join("state/signing.key")).unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, r#"{"listenAddr": "127.0.0.1:0"}"#).unwrap();
    let out = labeler(dir.path())
        .args(["-config", "config.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    let line = err
        .lines()
        .find(|l| l.starts_with("labeler: error:"))
        .unwrap_or_else(|| panic!("no error line in {err}"));
    assert_eq!(
        line,
        "labeler: error: cannot read signing key ./state/signing.key: Is a directory (os error 21)"
    );
}

#[test]
fn help_documents_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let out = labeler(dir.path()).arg("-help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for word in [
        "--init",
        "--config",
        "run",
        "check",
        "label",
        "service-record",
        "healthcheck",
        "-init",
    ] {
        assert!(help.contains(word), "{word} missing from:\n{help}");
    }
}

#[test]
fn manual_labels_are_signed_listed_and_negated() {
    let dir = tempfile::tempdir().unwrap();
    let init = labeler(dir.path()).arg("-init").output().unwrap();
    let did = String::from_utf8(init.stdout).unwrap().trim().to_owned();
    let run = |args: &[&str]| {
        let out = labeler(dir.path()).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (ok, out, err) = run(&[
        "label",
        "create",
        "--uri",
        "did:plc:abuser",
        "--val",
        "spam",
    ]);
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(created["src"], did.as_str());
    assert_eq!(created["val"], "spam");
    assert_eq!(created["seq"], 1);

    let (ok, _, err) = run(&[
        "label",
        "create",
        "--uri",
        "did:plc:abuser",
        "--val",
        "Spam!",
    ]);
    assert!(!ok && err.contains("not allowed"), "{err}");
    let (ok, _, err) = run(&["label", "create", "--uri", "alice.example", "--val", "spam"]);
    assert!(!ok && err.contains("DID"), "{err}");
    let (ok, _, err) = run(&[
        "label",
        "negate",
        "--uri",
        "did:plc:someone",
        "--val",
        "spam",
    ]);
    assert!(!ok && err.contains("no current"), "{err}");

    let (ok, out, _) = run(&[
        "label",
        "negate",
        "--uri",
        "did:plc:abuser",
        "--val",
        "spam",
    ]);
    assert!(ok);
    let negated: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (negated["neg"].as_bool(), negated["seq"].as_i64()),
        (Some(true), Some(2))
    );

    let (ok, out, _) = run(&["label", "list", "--uri", "did:plc:*"]);
    assert!(ok);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "the negation replaced the label: {out}");
    assert_eq!(lines[0]["neg"], true);
}

/// The Docker image runs `labeler` with no arguments in /app on an empty state volume: it
/// must initialise and serve. (Docker itself cannot run here; this runs the same command.)
#[tokio::test]
async fn the_docker_command_initialises_an_empty_state_dir_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = labeler(dir.path());
    cmd.env("LABELER_LISTEN_ADDR", "127.0.0.1:0");
    // Killed and reaped on drop, so a failing assertion leaves no daemon behind.
    let mut child = Child::spawn(cmd);
    let line = child.line_containing("labeler started", START_WAIT).await;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {line:?}"))
        .to_owned();
    assert!(dir.path().join("state/config.json").is_file());
    assert_eq!(mode(&dir.path().join("state/signing.key")), 0o600);

    // The image's HEALTHCHECK command.
    let mut health = labeler(dir.path());
    health.args(["healthcheck", "--url", &format!("http://{addr}")]);
    let health = tokio::task::spawn_blocking(move || health.output().unwrap())
        .await
        .unwrap();
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );

    // SIGTERM → graceful exit 0 (the bound is generous: a debug build on a busy machine).
    child.sigterm();
    let status = child.exit_status(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}\n{}", child.log_tail());
}
