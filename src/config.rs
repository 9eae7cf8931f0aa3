//! Configuration: the hujson `config.json` of the Go seed, with its field names and defaults,
//! plus the fields this port adds.
//!
//! Two phases (ripgrep's split): [`RawConfig`] mirrors the file exactly (`deny_unknown_fields`,
//! so a typo is an error naming the field), and [`Config`] holds validated, typed values.
//! [`Config::from_str`] is pure and unit-tested; [`Config::load`] only adds the file I/O.
//!
//! hujson is JSON with comments and trailing commas; it is parsed with `json5`, a strict
//! superset, so JSON5-only syntax (unquoted keys, single quotes) is accepted too.
//! Relative paths are taken relative to the working directory, as the Go seed does: the
//! defaults (`./state`, `./state/signing.key`) would otherwise resolve to `./state/state/…`
//! from a config file that itself lives in `./state/`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::syntax;

/// The commented default configuration written by `labeler -init` (and shipped at the repo
/// root as `config.json.example`).
pub const EXAMPLE: &str = include_str!("../config.json.example");

/// Default config location used when no `-config` is given.
pub const DEFAULT_PATH: &str = "./state/config.json";

/// File name of the SQLite database inside `stateDir`.
pub const DB_FILE: &str = "labeler.db";

/// Configuration errors. Each names the file (or origin) and, where known, the position.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file does not exist.
    #[error("config file {0} does not exist; run `labeler -init` to create it")]
    Missing(PathBuf),
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// Syntax error, unknown field or wrong type.
    #[error("{origin}:{line}:{column}: {message}")]
    Syntax {
        /// Where the text came from (file path).
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A syntax error json5 could not place.
    #[error("{origin}: {message}")]
    Unplaced {
        /// Where the text came from.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A field has a value of the right type that is not acceptable.
    #[error("{origin}: field \"{field}\": {message}")]
    Invalid {
        /// Where the text came from.
        origin: String,
        /// The field's name as written in the file.
        field: &'static str,
        /// What is wrong and what is expected.
        message: String,
    },
}

/// The file as written. Every field is optional; `None` means "use the default".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawConfig {
    /// `listenAddr`, default `:8081`.
    pub listen_addr: Option<String>,
    /// `stateDir`, default `./state`.
    pub state_dir: Option<String>,
    /// `jetstreamURL`.
    #[serde(rename = "jetstreamURL")]
    pub jetstream_url: Option<String>,
    /// `signingKeyPath`, default `./state/signing.key`.
    pub signing_key_path: Option<String>,
    /// `reverifyInterval`, default `24h`.
    pub reverify_interval: Option<String>,
    /// `labelerDid`, default the key's did:key.
    pub labeler_did: Option<String>,
    /// `plcURL`, default `https://plc.directory`.
    #[serde(rename = "plcURL")]
    pub plc_url: Option<String>,
    /// `dnsServers`, default empty (system resolver).
    pub dns_servers: Option<Vec<String>>,
    /// `dnsTimeout`, default `5s`.
    pub dns_timeout: Option<String>,
    /// `relaySpfInclude`, default unset.
    pub relay_spf_include: Option<String>,
    /// `verifyRecordsAtPds`, default `true`.
    pub verify_records_at_pds: Option<bool>,
    /// `logFormat`, default `text`.
    pub log_format: Option<String>,
    /// `staleAfter`, default `72h`.
    pub stale_after: Option<String>,
    /// `maxSubscribers`, default 1000.
    pub max_subscribers: Option<u64>,
    /// `verifyConcurrency`, default 16.
    pub verify_concurrency: Option<u64>,
    /// `allowPrivateAddresses`, default `false`.
    pub allow_private_addresses: Option<bool>,
    /// `confirmDnsServers`, default empty (each zone's authoritative servers).
    pub confirm_dns_servers: Option<Vec<String>>,
    /// `dnsCanaries`, default [`DEFAULT_CANARIES`].
    pub dns_canaries: Option<Vec<String>>,
    /// `verifyDeadline`, default `60s`.
    pub verify_deadline: Option<String>,
    /// `breakerWindow`, default `1h`.
    pub breaker_window: Option<String>,
    /// `breakerMaxHold`, default `24h`.
    pub breaker_max_hold: Option<String>,
    /// `labelTtl`, default `7d`; `"0"` means no expiry.
    pub label_ttl: Option<String>,
    /// `labelerPds`, default unset: the PDS of the labeler's own account.
    pub labeler_pds: Option<String>,
    /// `maxConnections`, default 4096.
    pub max_connections: Option<u64>,
    /// `maxConnectionsPerIp`, default 256.
    pub max_connections_per_ip: Option<u64>,
    /// `maxSubscribersPerIp`, default 32.
    pub max_subscribers_per_ip: Option<u64>,
    /// `trustedProxies`, default empty.
    pub trusted_proxies: Option<Vec<String>>,
}

/// Names that exist, resolved to tell whether the labeler's own resolver works (the guard's
/// canaries): the atproto project's, its main app's and the IANA's domains.
pub const DEFAULT_CANARIES: &[&str] = &["atproto.com", "bsky.app", "iana.org"];

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the XRPC server listens.
    pub listen_addr: SocketAddr,
    /// State directory (database, default key location).
    pub state_dir: PathBuf,
    /// Jetstream `/subscribe` URL (`ws://` or `wss://`).
    pub jetstream_url: String,
    /// Hex secp256k1 key file.
    pub signing_key_path: PathBuf,
    /// Re-verification period.
    pub reverify_interval: Duration,
    /// Labeler DID when configured; `None` means the key's did:key.
    pub labeler_did: Option<String>,
    /// PLC directory base URL, without a trailing slash.
    pub plc_url: String,
    /// DNS servers; empty means the system resolver.
    pub dns_servers: Vec<SocketAddr>,
    /// Per-query DNS timeout.
    pub dns_timeout: Duration,
    /// SPF include name that marks relay membership.
    pub relay_spf_include: Option<String>,
    /// Confirm records at the author's PDS before labelling.
    pub verify_records_at_pds: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// How long without a definitive answer before labels are withdrawn.
    pub stale_after: Duration,
    /// Cap on concurrent subscribeLabels connections.
    pub max_subscribers: usize,
    /// Cap on concurrent verifications.
    pub verify_concurrency: usize,
    /// Allow outbound fetches to private/loopback/link-local addresses.
    pub allow_private_addresses: bool,
    /// A second resolver set that must confirm a failure before a label is withdrawn; empty
    /// means each zone's authoritative servers, asked directly.
    pub confirm_dns_servers: Vec<SocketAddr>,
    /// Names that exist, resolved to tell whether the labeler's own resolver works.
    pub dns_canaries: Vec<String>,
    /// One deadline for all the network work about one record.
    pub verify_deadline: Duration,
    /// The window the breaker counts would-be withdrawals in.
    pub breaker_window: Duration,
    /// Longest the breaker holds withdrawals.
    pub breaker_max_hold: Duration,
    /// How long a positive label is valid; `None`: no expiry.
    pub label_ttl: Option<Duration>,
    /// The PDS of the labeler's own account, served as `#atproto_pds` in the did:web document.
    pub labeler_pds: Option<String>,
    /// Cap on open HTTP connections.
    pub max_connections: usize,
    /// Cap on open HTTP connections per client address (trusted proxies exempt).
    pub max_connections_per_ip: usize,
    /// Cap on subscribeLabels connections per client address.
    pub max_subscribers_per_ip: usize,
    /// Reverse proxies whose `X-Forwarded-For` is believed (addresses as one-address nets).
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for Config {
    fn default() -> Config {
        // The defaults are valid by construction; `from_raw` of an empty file yields them.
        Config::from_raw(RawConfig::default(), "<defaults>")
            .unwrap_or_else(|e| unreachable!("built-in defaults failed validation: {e}"))
    }
}

impl Config {
    /// Parses and validates config text. `origin` names the source in error messages.
    pub fn from_str(text: &str, origin: &str) -> Result<Config, Error> {
        let raw: RawConfig = json5::from_str(text).map_err(|e| syntax_error(&e, origin))?;
        Config::from_raw(raw, origin)
    }

    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Error::Missing(path.to_owned())
            } else {
                Error::Read {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        Config::from_str(&text, &path.display().to_string())
    }

    /// Validates a parsed file, filling in defaults.
    pub fn from_raw(raw: RawConfig, origin: &str) -> Result<Config, Error> {
        let invalid = |field: &'static str, message: String| Error::Invalid {
            origin: origin.to_owned(),
            field,
            message,
        };
        let duration = |field: &'static str, v: Option<String>, default: &str| {
            let s = v.unwrap_or_else(|| default.to_owned());
            match humantime::parse_duration(&s) {
                Ok(d) if !d.is_zero() => Ok(d),
                Ok(_) => Err(invalid(field, "must be longer than zero".to_owned())),
                Err(e) => Err(invalid(
                    field,
                    format!("{s:?} is not a duration ({e}); use e.g. \"24h\", \"90m\", \"5s\""),
                )),
            }
        };

        let listen = raw.listen_addr.unwrap_or_else(|| ":8081".to_owned());
        let listen_addr = parse_listen_addr(&listen).ok_or_else(|| {
            invalid(
                "listenAddr",
                format!("{listen:?} is not \":port\", \"ip:port\" or \"localhost:port\""),
            )
        })?;

        let jetstream_url = raw
            .jetstream_url
            .unwrap_or_else(|| "wss://jetstream1.us-east.bsky.network/subscribe".to_owned());
        check_url(&jetstream_url, &["ws", "wss"]).map_err(|m| invalid("jetstreamURL", m))?;

        let plc_url = raw
            .plc_url
            .unwrap_or_else(|| "https://plc.directory".to_owned());
        check_url(&plc_url, &["http", "https"]).map_err(|m| invalid("plcURL", m))?;
        let plc_url = plc_url.trim_end_matches('/').to_owned();

        let servers = |field: &'static str, list: Option<Vec<String>>| {
            list.unwrap_or_default()
                .iter()
                .map(|s| {
                    parse_dns_server(s).ok_or_else(|| {
                        invalid(
                            field,
                            format!("{s:?} is not \"ip\", \"ip:port\" or \"[ipv6]:port\""),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let dns_servers = servers("dnsServers", raw.dns_servers)?;
        let confirm_dns_servers = servers("confirmDnsServers", raw.confirm_dns_servers)?;
        let dns_canaries = match raw.dns_canaries {
            None => DEFAULT_CANARIES.iter().map(|s| (*s).to_owned()).collect(),
            Some(list) => list,
        };
        if let Some(bad) = dns_canaries.iter().find(|c| !syntax::is_dns_name(c)) {
            return Err(invalid(
                "dnsCanaries",
                format!("{bad:?} is not a domain name"),
            ));
        }

        if let Some(did) = raw.labeler_did.as_ref().filter(|d| !syntax::is_did(d)) {
            return Err(invalid(
                "labelerDid",
                format!("{did:?} is not a DID (did:plc:…, did:web:…, did:key:…)"),
            ));
        }

        if let Some(inc) = raw
            .relay_spf_include
            .as_ref()
            .filter(|i| !syntax::is_dns_name(i))
        {
            return Err(invalid(
                "relaySpfInclude",
                format!("{inc:?} is not a domain name"),
            ));
        }

        let log_format = match raw.log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "logFormat",
                    format!("{other:?} is not \"text\" or \"json\""),
                ));
            }
        };

        let positive = |field: &'static str, v: Option<u64>, default: u64| match v {
            None => Ok(default as usize),
            Some(0) => Err(invalid(field, "must be at least 1".to_owned())),
            Some(n) => usize::try_from(n).map_err(|_| invalid(field, "is too large".to_owned())),
        };

        let reverify_interval = duration("reverifyInterval", raw.reverify_interval.clone(), "24h")?;
        let stale_after = duration("staleAfter", raw.stale_after.clone(), "72h")?;
        // A label must outlive the re-checks that renew it: one is due every
        // reverifyInterval and renews once less than half the TTL remains, and an attestation
        // may go staleAfter without a definitive answer before its label is withdrawn.
        let label_ttl = match raw.label_ttl.as_deref() {
            Some("0") => None,
            other => {
                let ttl = duration("labelTtl", other.map(str::to_owned), "7d")?;
                let floor = reverify_interval
                    .saturating_mul(2)
                    .max(stale_after.saturating_add(reverify_interval));
                if ttl <= floor {
                    return Err(invalid(
                        "labelTtl",
                        format!(
                            "{} could lapse before it is renewed: it must be longer than twice \
                             reverifyInterval ({}) and than staleAfter + reverifyInterval ({}), \
                             or \"0\" for labels that never expire",
                            humantime::format_duration(ttl),
                            humantime::format_duration(reverify_interval.saturating_mul(2)),
                            humantime::format_duration(
                                stale_after.saturating_add(reverify_interval)
                            ),
                        ),
                    ));
                }
                Some(ttl)
            }
        };
        let labeler_pds = match raw.labeler_pds {
            None => None,
            Some(url) => {
                check_url(&url, &["https", "http"]).map_err(|m| invalid("labelerPds", m))?;
                Some(url.trim_end_matches('/').to_owned())
            }
        };

        let state_dir = PathBuf::from(raw.state_dir.unwrap_or_else(|| "./state".to_owned()));
        if state_dir.as_os_str().is_empty() {
            return Err(invalid("stateDir", "must not be empty".to_owned()));
        }
        let signing_key_path = PathBuf::from(
            raw.signing_key_path
                .unwrap_or_else(|| "./state/signing.key".to_owned()),
        );
        if signing_key_path.as_os_str().is_empty() {
            return Err(invalid("signingKeyPath", "must not be empty".to_owned()));
        }

        let mut trusted_proxies = Vec::new();
        for p in raw.trusted_proxies.unwrap_or_default() {
            let net = parse_proxy(&p).ok_or_else(|| {
                invalid(
                    "trustedProxies",
                    format!("{p:?} is not an IP address or a CIDR (\"10.0.0.0/8\", \"::1\")"),
                )
            })?;
            trusted_proxies.push(net);
        }

        Ok(Config {
            listen_addr,
            state_dir,
            jetstream_url,
            signing_key_path,
            reverify_interval,
            labeler_did: raw.labeler_did,
            plc_url,
            dns_servers,
            dns_timeout: duration("dnsTimeout", raw.dns_timeout, "5s")?,
            relay_spf_include: raw
                .relay_spf_include
                .map(|s| s.trim_end_matches('.').to_ascii_lowercase()),
            verify_records_at_pds: raw.verify_records_at_pds.unwrap_or(true),
            log_format,
            stale_after,
            max_subscribers: positive("maxSubscribers", raw.max_subscribers, 1000)?,
            verify_concurrency: positive("verifyConcurrency", raw.verify_concurrency, 16)?,
            allow_private_addresses: raw.allow_private_addresses.unwrap_or(false),
            confirm_dns_servers,
            dns_canaries,
            verify_deadline: duration("verifyDeadline", raw.verify_deadline, "60s")?,
            breaker_window: duration("breakerWindow", raw.breaker_window, "1h")?,
            breaker_max_hold: duration("breakerMaxHold", raw.breaker_max_hold, "24h")?,
            label_ttl,
            labeler_pds,
            max_connections: positive("maxConnections", raw.max_connections, 4096)?,
            max_connections_per_ip: positive(
                "maxConnectionsPerIp",
                raw.max_connections_per_ip,
                256,
            )?,
            max_subscribers_per_ip: positive(
                "maxSubscribersPerIp",
                raw.max_subscribers_per_ip,
                32,
            )?,
            trusted_proxies,
        })
    }

    /// Applies environment overrides (environment beats the file, the CLI beats both):
    /// `LABELER_LISTEN_ADDR` replaces `listenAddr` (containers, tests on an ephemeral port).
    pub fn apply_env(&mut self) -> Result<(), Error> {
        if let Ok(v) = std::env::var("LABELER_LISTEN_ADDR") {
            self.listen_addr = parse_listen_addr(&v).ok_or_else(|| Error::Invalid {
                origin: "environment".to_owned(),
                field: "LABELER_LISTEN_ADDR",
                message: format!("{v:?} is not \":port\", \"ip:port\" or \"localhost:port\""),
            })?;
        }
        Ok(())
    }

    /// The SQLite database file.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join(DB_FILE)
    }
}

/// Turns a json5 error into one line with the origin and a 1-based position.
fn syntax_error(e: &json5::Error, origin: &str) -> Error {
    let full = e.to_string();
    match e.position() {
        Some(p) => {
            // json5's Display appends " at line L column C"; we put the position up front.
            let message = full
                .rsplit_once(" at line ")
                .map_or(full.as_str(), |(m, _)| m)
                .to_owned();
            Error::Syntax {
                origin: origin.to_owned(),
                line: p.line + 1,
                column: p.column + 1,
                message,
            }
        }
        None => Error::Unplaced {
            origin: origin.to_owned(),
            message: full,
        },
    }
}

/// `:8081` (all interfaces, like Go's net.Listen), `ip:port`, `[v6]:port`, `localhost:port`.
fn parse_listen_addr(s: &str) -> Option<SocketAddr> {
    if let Some(port) = s.strip_prefix(':') {
        return Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port.parse().ok()?,
        ));
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        return Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            port.parse().ok()?,
        ));
    }
    s.parse().ok()
}

/// `ip` (port 53), `ip:port` or `[v6]:port`.
fn parse_dns_server(s: &str) -> Option<SocketAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    s.parse().ok()
}

/// A trusted proxy: `ip` (one address) or a CIDR `ip/len`, normalised to its network.
fn parse_proxy(s: &str) -> Option<IpNet> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    s.parse::<IpNet>().ok().map(|n| n.trunc())
}

/// Checks that `s` parses as a URL with one of `schemes` and a host.
fn check_url(s: &str, schemes: &[&str]) -> Result<(), String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("{s:?} is not a URL ({e})"))?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!(
            "{s:?} must use {}",
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?} has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_go_defaults() {
        let c = Config::from_str("{}", "t").unwrap();
        assert_eq!(c.listen_addr, "0.0.0.0:8081".parse().unwrap());
        assert_eq!(c.state_dir, PathBuf::from("./state"));
        assert_eq!(
            c.jetstream_url,
            "wss://jetstream1.us-east.bsky.network/subscribe"
        );
        assert_eq!(c.signing_key_path, PathBuf::from("./state/signing.key"));
        assert_eq!(c.reverify_interval, Duration::from_secs(24 * 3600));
        assert_eq!(c.plc_url, "https://plc.directory");
        assert!(c.dns_servers.is_empty());
        assert_eq!(c.dns_timeout, Duration::from_secs(5));
        assert!(c.verify_records_at_pds);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.stale_after, Duration::from_secs(72 * 3600));
        assert!(c.labeler_did.is_none() && c.relay_spf_include.is_none());
        assert_eq!(c.max_connections, 4096);
        assert_eq!(c.max_connections_per_ip, 256);
        assert_eq!(c.max_subscribers_per_ip, 32);
        assert!(c.trusted_proxies.is_empty());
    }

    #[test]
    fn trusted_proxies_are_addresses_or_cidrs() {
        let c = Config::from_str(
            r#"{"trustedProxies": ["10.1.2.3", "192.168.7.9/16", "fd00::/8", "::1"]}"#,
            "t",
        )
        .unwrap();
        let nets: Vec<String> = c.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(
            nets,
            ["10.1.2.3/32", "192.168.0.0/16", "fd00::/8", "::1/128"]
        );
    }

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let c = Config::from_str(EXAMPLE, "config.json.example").unwrap();
        let d = Config::default();
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
    }

    #[test]
    fn hujson_comments_and_trailing_commas_are_accepted() {
        let text = "// top\n{\n  /* block */ \"listenAddr\": \"127.0.0.1:9000\", // tail\n  \"dnsServers\": [\"127.0.0.1:5353\", \"10.0.0.1\",],\n}\n";
        let c = Config::from_str(text, "t").unwrap();
        assert_eq!(c.listen_addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(
            c.dns_servers,
            vec![
                "127.0.0.1:5353".parse().unwrap(),
                "10.0.0.1:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn unknown_field_is_named_with_its_position() {
        let err = Config::from_str("{\n  \"listenAdr\": \":1\"\n}", "c.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listenAdr"), "{err}");
        assert!(err.starts_with("c.json:2:"), "{err}");
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let err = Config::from_str("{\n  \"listenAddr\": :8081\n}", "c.json")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.json:2:17:"), "{err}");
    }

    #[test]
    fn bad_values_name_the_field() {
        for (text, field) in [
            (r#"{"reverifyInterval": "soon"}"#, "reverifyInterval"),
            (r#"{"reverifyInterval": "0s"}"#, "reverifyInterval"),
            (r#"{"listenAddr": "8081"}"#, "listenAddr"),
            (r#"{"jetstreamURL": "https://x/subscribe"}"#, "jetstreamURL"),
            (r#"{"plcURL": "plc.directory"}"#, "plcURL"),
            (r#"{"dnsServers": ["dns.google"]}"#, "dnsServers"),
            (r#"{"labelerDid": "alice.example"}"#, "labelerDid"),
            (r#"{"logFormat": "xml"}"#, "logFormat"),
            (r#"{"maxSubscribers": 0}"#, "maxSubscribers"),
            (r#"{"relaySpfInclude": "not a domain"}"#, "relaySpfInclude"),
            (r#"{"maxConnections": 0}"#, "maxConnections"),
            (r#"{"maxConnectionsPerIp": 0}"#, "maxConnectionsPerIp"),
            (r#"{"maxSubscribersPerIp": 0}"#, "maxSubscribersPerIp"),
            (r#"{"trustedProxies": ["proxy.local"]}"#, "trustedProxies"),
            (r#"{"trustedProxies": ["10.0.0.0/33"]}"#, "trustedProxies"),
        ] {
            let err = Config::from_str(text, "c").unwrap_err().to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
        let err = Config::from_str(r#"{"verifyRecordsAtPds": "yes"}"#, "c")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c:1:"), "{err}");
    }
}
