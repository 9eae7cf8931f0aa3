//! The command line: daemon, init, one-shot checks, manual labels, health check.
//!
//! The Go seed is run as `labeler -init` and `labeler -config ./state/config.json`; Go's flag
//! package accepts one or two dashes, clap only two. [`normalize_args`] rewrites exactly the
//! known single-dash long flags (`-init`, `-config`, `-config=…`, `-help`, `-version`) to
//! their `--` form before parsing, so old scripts and Docker commands keep working.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, LogFormat};
use crate::keys::{self, Signer, SigningKey};
use crate::label::{self, Label};
use crate::store::{LabelQuery, Store, UriPattern};
use crate::{app, lifecycle};
use crate::{dns, identity, telemetry, verify};

/// Long flags the Go seed accepted with a single dash.
const GO_FLAGS: &[&str] = &["init", "config", "help", "version"];

/// atmos-labeler: verifies atproto mail operators' DNS and publishes signed labels.
#[derive(Debug, Parser)]
#[command(
    name = "labeler",
    version,
    about = "Atmosphere Mail labeler: verifies PDS operators' mail DNS and publishes signed atproto labels",
    long_about = "Atmosphere Mail labeler: follows email.atmos.attestation records on Jetstream, \
verifies each operator's domain control, MX, SPF, DKIM and DMARC, and publishes signed \
verified-mail-operator / relay-member labels through com.atproto.label.queryLabels and \
com.atproto.label.subscribeLabels.\n\n\
With no arguments it uses ./state/config.json, creating the state directory, config and \
signing key first if they are missing, then runs the daemon. The Go-style spellings \
`labeler -init` and `labeler -config PATH` work as well as --init / --config."
)]
pub struct Cli {
    /// Config file (hujson). Default ./state/config.json.
    #[arg(long, global = true, env = "LABELER_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Create the state directory, a commented config.json and the signing key if missing
    /// (never overwrites), print the labeler's did:key, and exit.
    #[arg(long)]
    pub init: bool,

    /// What to do (default: run the daemon).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Modes.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Run,
    /// Verify a domain once and print the report (exit 0 pass, 1 fail, 2 could not decide).
    /// Needs no running daemon and no state directory.
    Check {
        /// The mail domain.
        domain: String,
        /// The operator's DID.
        #[arg(long)]
        did: String,
        /// A DKIM selector (repeat for several).
        #[arg(long = "selector", required = true, value_name = "SELECTOR")]
        selectors: Vec<String>,
        /// Print the structured report as JSON.
        #[arg(long)]
        json: bool,
        /// DNS server (ip or ip:port; repeatable). Default: dnsServers from the config, else
        /// the system resolver.
        #[arg(long = "dns-server", value_name = "ADDR")]
        dns_servers: Vec<String>,
        /// PLC directory URL. Default: plcURL from the config.
        #[arg(long, value_name = "URL")]
        plc_url: Option<String>,
    },
    /// Manual labels (moderation), signed with the labeler's key.
    Label {
        /// Action.
        #[command(subcommand)]
        action: LabelAction,
    },
    /// The signing key.
    Key {
        /// Action.
        #[command(subcommand)]
        action: KeyAction,
    },
    /// The guard's breaker, which holds withdrawals when too many would happen at once.
    Breaker {
        /// Action.
        #[command(subcommand)]
        action: BreakerAction,
    },
    /// Re-check a DID's attestations now (what email.atmos.requestVerification does), through
    /// the database: a running daemon starts within seconds, with the same rules as a
    /// scheduled re-check.
    Recheck {
        /// The operator's DID.
        did: String,
    },
    /// Print the app.bsky.labeler.service record to publish in the labeler's repo.
    ServiceRecord,
    /// Mirror another labeler: follow its subscribeLabels stream, verify every label's
    /// signature, and serve the same queryLabels / subscribeLabels (same seqs, so cursors
    /// carry over). Uses listenAddr, stateDir, logging and limits from the config; never
    /// loads a signing key, follows Jetstream or checks a domain.
    Mirror {
        /// The upstream's base URL: the primary or another mirror (https://…, or http:// on
        /// a private network).
        #[arg(long, value_name = "URL")]
        upstream: String,
        /// The labeler's DID: the `src` of its labels, whose #atproto_label key must sign
        /// them (did:key, did:plc or did:web).
        #[arg(long, value_name = "DID")]
        did: String,
    },
    /// Exit 0 when the daemon answers /xrpc/_health (for Docker HEALTHCHECK).
    Healthcheck {
        /// Base URL of the daemon. Default: HTTP to 127.0.0.1 on the port of listenAddr.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
}

/// `labeler label …`
#[derive(Debug, Subcommand)]
pub enum LabelAction {
    /// Sign and publish a label.
    Create {
        /// Subject: a DID or an at:// URI.
        #[arg(long)]
        uri: String,
        /// Label value (lowercase letters and '-').
        #[arg(long)]
        val: String,
        /// Pin a record version (for at:// subjects).
        #[arg(long)]
        cid: Option<String>,
        /// Expiry: an RFC 3339 datetime, or a duration from now such as 30d.
        #[arg(long)]
        exp: Option<String>,
    },
    /// Negate (retract) a label.
    Negate {
        /// Subject: a DID or an at:// URI.
        #[arg(long)]
        uri: String,
        /// Label value.
        #[arg(long)]
        val: String,
        /// The CID the label was pinned to, if any.
        #[arg(long)]
        cid: Option<String>,
    },
    /// List current labels (negations included), oldest first.
    List {
        /// Subject pattern: exact, or a prefix ending in '*'. Default: all.
        #[arg(long, default_value = "*")]
        uri: String,
        /// Most labels to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// `labeler key …`
#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Generate a new signing key and re-sign every current label with it, in one
    /// transaction; a running daemon follows at once. Prints the new did:key (only that, on
    /// stdout) and, on stderr, where the old key went and what to change in the DID document.
    Rotate {
        /// Say what would happen; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `labeler breaker …`
#[derive(Debug, Subcommand)]
pub enum BreakerAction {
    /// Let the withdrawals an open breaker holds through (a running daemon reads it from the
    /// database at its next held withdrawal). The breaker opens again if the rate stays high
    /// after it closes.
    Release,
}

/// CLI errors (printed as one line by `main`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Startup or daemon failure.
    #[error(transparent)]
    App(#[from] app::Error),
    /// Configuration failure.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// Key failure.
    #[error(transparent)]
    Key(#[from] crate::keys::Error),
    /// Key rotation failure.
    #[error(transparent)]
    Lifecycle(#[from] crate::lifecycle::Error),
    /// Database failure.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// Bad label input.
    #[error(transparent)]
    Label(#[from] label::Error),
    /// Other usage problems.
    #[error("{0}")]
    Usage(String),
    /// The runtime could not start.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
}

/// Rewrites the Go seed's single-dash long flags to clap's double-dash form.
pub fn normalize_args<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            if i == 0 {
                return a;
            }
            let Some(s) = a.to_str() else { return a };
            let Some(rest) = s.strip_prefix('-').filter(|r| !r.starts_with('-')) else {
                return a;
            };
            let name = rest.split_once('=').map_or(rest, |(n, _)| n);
            if GO_FLAGS.contains(&name) {
                OsString::from(format!("-{s}"))
            } else {
                a
            }
        })
        .collect()
}

/// Parses the process arguments (exits with usage on error, like every clap program).
pub fn parse() -> Cli {
    Cli::parse_from(normalize_args(std::env::args_os()))
}

/// Runs the selected mode.
pub fn run(cli: Cli) -> Result<ExitCode, Error> {
    let explicit = cli.config.is_some();
    let config_path = cli
        .config
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    if cli.init {
        let done = app::init(&config_path)?;
        report_init(&config_path, &done);
        println!("{}", done.did_key);
        return Ok(ExitCode::SUCCESS);
    }
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let mut config = if explicit || config_path.exists() {
                Config::load(&config_path)?
            } else {
                // `labeler` with no arguments on a fresh machine: initialise, then run.
                let done = app::init(&config_path)?;
                report_init(&config_path, &done);
                done.config
            };
            config.apply_env()?;
            telemetry::init_logging(config.log_format);
            runtime()?.block_on(app::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            domain,
            did,
            selectors,
            json,
            dns_servers,
            plc_url,
        } => check(
            &config_path,
            &domain,
            &did,
            &selectors,
            json,
            &dns_servers,
            plc_url,
        ),
        Command::Label { action } => label_cmd(&config_path, action),
        Command::Mirror { upstream, did } => {
            let mut config = if explicit || config_path.exists() {
                Config::load(&config_path)?
            } else {
                Config::default()
            };
            config.apply_env()?;
            telemetry::init_logging(config.log_format);
            runtime()?.block_on(app::run_mirror(config, upstream, did))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Key {
            action: KeyAction::Rotate { dry_run },
        } => rotate_key(&config_path, dry_run),
        Command::Breaker {
            action: BreakerAction::Release,
        } => {
            let config = Config::load(&config_path)?;
            let store = Store::open(&config.db_path())?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            store.release_breaker(now)?;
            eprintln!(
                "breaker released: withdrawals held since it opened are signed at their next                  re-check (within minutes)"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Recheck { did } => recheck(&config_path, &did),
        Command::ServiceRecord => {
            let record = label::service_record();
            println!(
                "{}",
                serde_json::to_string_pretty(&record).unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck { url } => healthcheck(&config_path, url),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}

fn report_init(config_path: &Path, done: &app::Init) {
    if done.created_config {
        eprintln!("created {}", config_path.display());
    }
    if done.created_key {
        eprintln!(
            "created signing key {} (mode 0600; back it up)",
            done.config.signing_key_path.display()
        );
    }
}

/// `labeler recheck DID`: makes the DID's attestations due now.
fn recheck(config_path: &Path, did: &str) -> Result<ExitCode, Error> {
    if !crate::syntax::is_did(did) {
        return Err(Error::Usage(format!("{did:?} is not a DID")));
    }
    let config = Config::load(config_path)?;
    let store = Store::open(&config.db_path())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    match store.request_recheck(did, now)? {
        0 => Err(Error::Usage(format!(
            "the labeler holds no attestation for {did}: it has never seen an email.atmos.attestation record of that DID"
        ))),
        n => {
            eprintln!(
                "{did}: {n} attestation(s) due now; a running daemon re-checks them within seconds (see getVerification)"
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The config file when it exists, else the defaults (one-shot modes need no state).
fn config_or_defaults(path: &Path) -> Result<Config, Error> {
    if path.exists() {
        Ok(Config::load(path)?)
    } else {
        Ok(Config::default())
    }
}

fn check(
    config_path: &Path,
    domain: &str,
    did: &str,
    selectors: &[String],
    json: bool,
    dns_servers: &[String],
    plc_url: Option<String>,
) -> Result<ExitCode, Error> {
    let mut config = config_or_defaults(config_path)?;
    telemetry::init_logging(LogFormat::Text);
    if !dns_servers.is_empty() {
        let text = serde_json::json!({ "dnsServers": dns_servers }).to_string();
        config.dns_servers = Config::from_str(&text, "--dns-server")?.dns_servers;
    }
    if let Some(url) = plc_url {
        let text = serde_json::json!({ "plcURL": url }).to_string();
        config.plc_url = Config::from_str(&text, "--plc-url")?.plc_url;
    }
    let report = runtime()?.block_on(async {
        let dns = dns::Resolver::new(&config.dns_servers, config.dns_timeout)
            .map_err(|e| Error::Usage(format!("cannot set up DNS: {e}")))?;
        let identity = identity::Resolver::new(
            identity::Options {
                plc_url: config.plc_url.clone(),
                allow_private_addresses: config.allow_private_addresses,
                timeout: Duration::from_secs(10),
            },
            dns.clone(),
        )
        .map_err(|e| Error::Usage(format!("cannot set up the HTTP client: {e}")))?;
        let checker = verify::Checker::new(
            dns,
            identity,
            verify::Options {
                relay_spf_include: config.relay_spf_include.clone(),
            },
        );
        Ok::<_, Error>(
            checker
                .check(did, domain, selectors, verify::Vantage::Fresh)
                .await,
        )
    })?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", report.render_text());
    }
    Ok(ExitCode::from(match report.verdict {
        verify::Outcome::Pass => 0,
        verify::Outcome::Fail => 1,
        verify::Outcome::CouldNotDecide => 2,
    }))
}

fn label_cmd(config_path: &Path, action: LabelAction) -> Result<ExitCode, Error> {
    let config = Config::load(config_path)?;
    let store = Store::open(&config.db_path())?;
    // The key the database says is active (finishing a rotation whose files did not move),
    // and the src it signs as; the write below refuses if a rotation commits in between.
    let key = || -> Result<(SigningKey, String), Error> {
        let active = store.active_key()?;
        let key = SigningKey::load_active(&config.signing_key_path, active.as_deref())?;
        let id = Signer::new(&config.signing_key_path, config.labeler_did.clone(), key).current();
        Ok((id.key.clone(), id.src.clone()))
    };
    let print = |seq: i64, l: &label::SignedLabel| {
        let mut v = serde_json::to_value(l).unwrap_or_default();
        v["seq"] = seq.into();
        println!("{v}");
    };
    match action {
        LabelAction::Create { uri, val, cid, exp } => {
            label::validate_uri(&uri)?;
            label::validate_value(&val)?;
            let exp = exp.map(|e| label::parse_expiry(&e)).transpose()?;
            let (key, src) = key()?;
            let signed = Label {
                src,
                uri,
                cid,
                val,
                neg: false,
                cts: label::now_cts(),
                exp,
            }
            .sign(&key);
            for l in store.write_labels_signed_by(key.did_key(), &[signed])? {
                print(l.seq, &l.signed);
            }
        }
        LabelAction::Negate { uri, val, cid } => {
            label::validate_uri(&uri)?;
            label::validate_value(&val)?;
            let (key, src) = key()?;
            let current = store.current_labels(&src, &uri)?;
            let held = current.iter().any(|l| {
                l.signed.label.val == val && l.signed.label.cid == cid && !l.signed.label.neg
            });
            if !held {
                return Err(Error::Usage(format!(
                    "there is no current {val:?} label from {src} on {uri} to negate"
                )));
            }
            let signed = Label {
                src,
                uri,
                cid,
                val,
                neg: true,
                cts: label::now_cts(),
                exp: None,
            }
            .sign(&key);
            for l in store.write_labels_signed_by(key.did_key(), &[signed])? {
                print(l.seq, &l.signed);
            }
        }
        LabelAction::List { uri, limit } => {
            let pattern = UriPattern::parse(&uri).ok_or_else(|| {
                Error::Usage(format!("--uri {uri:?}: '*' is only allowed at the end"))
            })?;
            let mut after = 0;
            let mut left = limit;
            while left > 0 {
                let page = store.query_labels(&LabelQuery {
                    patterns: vec![pattern.clone()],
                    sources: vec![],
                    after,
                    limit: left.min(250),
                })?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                left -= page.len();
                for l in &page {
                    print(l.seq, &l.signed);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `labeler key rotate`: see [`KeyAction::Rotate`] and [`crate::lifecycle::rotate`].
fn rotate_key(config_path: &Path, dry_run: bool) -> Result<ExitCode, Error> {
    let config = Config::load(config_path)?;
    let store = Store::open(&config.db_path())?;
    let did = config.labeler_did.as_deref();
    let r = lifecycle::rotate(&store, &config.signing_key_path, did, dry_run)?;
    if dry_run {
        eprintln!(
            "dry run: would generate a new signing key to replace {} and re-sign {} current \
             labels{}; nothing was changed",
            r.old,
            r.current,
            if r.moved_src {
                " (negating each under the old did:key and issuing it again under the new one)"
            } else {
                ""
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    let new = r.new.unwrap_or_default();
    let multikey = new.strip_prefix(keys::DID_KEY_PREFIX).unwrap_or(&new);
    println!("{new}");
    eprintln!(
        "rotated the signing key: {} -> {new}; {} current labels re-signed ({} labels written, \
         each with a new seq)",
        r.old, r.current, r.written
    );
    if let Some(retired) = &r.retired {
        eprintln!(
            "the old key is kept at {} and is never loaded again: move it offline or destroy it",
            retired.display()
        );
    }
    match did {
        Some(d) if d.starts_with("did:plc:") => eprintln!(
            "update the DID document of {d}: a signed PLC operation that sets \
             verificationMethods.atproto_label to \"{new}\" (e.g. with goat: `goat plc update` \
             then `goat plc sign` and `goat plc submit`); until it is applied, verifiers that \
             resolve {d} reject the re-signed labels"
        ),
        Some(d) if d.starts_with("did:web:") => eprintln!(
            "{d}: this labeler serves /.well-known/did.json with the new key at once (nothing to \
             change); if another server hosts that document, set the #atproto_label \
             verification method's publicKeyMultibase to \"{multikey}\""
        ),
        Some(d) => eprintln!(
            "update the DID document of {d}: set the #atproto_label verification method's \
             publicKeyMultibase to \"{multikey}\""
        ),
        None => eprintln!(
            "without labelerDid the labeler's identity is its did:key, so its labels now have a \
             new src ({new}): each was negated under the old did:key and issued again under the \
             new one, and consumers must follow the new DID. A labeler meant to last needs a \
             did:plc or did:web (labelerDid) whose document names the key"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn healthcheck(config_path: &Path, url: Option<String>) -> Result<ExitCode, Error> {
    let url = match url {
        Some(u) => u,
        None => {
            let mut config = config_or_defaults(config_path)?;
            config.apply_env()?;
            format!("http://127.0.0.1:{}", config.listen_addr.port())
        }
    };
    let target = format!("{}/xrpc/_health", url.trim_end_matches('/'));
    let result = runtime()?.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| e.to_string())?;
        let resp = client
            .get(&target)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("HTTP {status}: {body}"))
        }
    });
    match result {
        Ok(body) => {
            println!("{body}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("labeler: unhealthy: {target}: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(args: &[&str]) -> Vec<String> {
        normalize_args(args.iter().map(OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn go_style_flags_are_rewritten_and_nothing_else() {
        assert_eq!(norm(&["labeler", "-init"]), ["labeler", "--init"]);
        assert_eq!(
            norm(&["labeler", "-config", "./state/config.json"]),
            ["labeler", "--config", "./state/config.json"]
        );
        assert_eq!(
            norm(&["labeler", "-config=x.json"]),
            ["labeler", "--config=x.json"]
        );
        assert_eq!(norm(&["labeler", "--init"]), ["labeler", "--init"]);
        assert_eq!(norm(&["labeler", "-h"]), ["labeler", "-h"]);
        // Other single-dash words are left alone (short flags, negative-looking values).
        assert_eq!(
            norm(&["labeler", "label", "list", "--uri", "-x", "-configure"]),
            ["labeler", "label", "list", "--uri", "-x", "-configure"]
        );
    }

    #[test]
    fn parses_every_mode() {
        let p = |a: &[&str]| Cli::try_parse_from(normalize_args(a.iter().map(OsString::from)));
        assert!(p(&["labeler", "-init"]).unwrap().init);
        assert_eq!(
            p(&["labeler", "-config", "c.json"]).unwrap().config,
            Some(PathBuf::from("c.json"))
        );
        assert!(matches!(
            p(&["labeler", "check", "example.com", "--did", "did:plc:x", "--selector", "a", "--selector", "b"])
                .unwrap()
                .command,
            Some(Command::Check { ref selectors, .. }) if selectors.len() == 2
        ));
        assert!(p(&["labeler", "check", "example.com", "--did", "did:plc:x"]).is_err());
        assert!(matches!(
            p(&["labeler", "label", "list"]).unwrap().command,
            Some(Command::Label {
                action: LabelAction::List { .. }
            })
        ));
        assert!(p(&["labeler", "service-record"]).is_ok());
        assert!(matches!(
            p(&["labeler", "-config", "m.json", "mirror", "--upstream", "https://l.example", "--did", "did:plc:x"])
                .unwrap(),
            Cli { config: Some(_), command: Some(Command::Mirror { ref upstream, ref did }), .. }
                if upstream == "https://l.example" && did == "did:plc:x"
        ));
        assert!(p(&["labeler", "mirror", "--upstream", "https://l.example"]).is_err());
        assert!(p(&["labeler", "healthcheck"]).is_ok());
    }
}
