//! Wiring: builds every component from the configuration, runs them under one cancellation
//! token, and shuts them down together.
//!
//! Data flows one way: Jetstream → manager → store → server, with the scheduler feeding the
//! manager re-checks. The first component to stop (cleanly or not) stops the others (a
//! labeler without its consumer, or without its server, should not keep half-running); then
//! every component gets a bounded time to finish before it is abandoned.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::health::Health;
use crate::keys::{self, Signer, SigningKey};
use crate::manager::{self, Manager};
use crate::store::Store;
use crate::{dns, follow, identity, jetstream, lifecycle, scheduler, server, telemetry, verify};

/// How long components get to finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Timeout for PLC directory, did:web and PDS requests.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Startup and runtime errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// Signing key problem.
    #[error(transparent)]
    Key(#[from] keys::Error),
    /// Database problem.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// Moving the labels to a new labeler DID failed.
    #[error(transparent)]
    Lifecycle(#[from] crate::lifecycle::Error),
    /// The state directory is missing.
    #[error("state directory {0} does not exist; run `labeler -init` first")]
    NoState(PathBuf),
    /// A file or directory could not be created.
    #[error("cannot create {path}")]
    Create {
        /// What could not be created.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// DNS resolver setup failed.
    #[error(transparent)]
    Dns(#[from] dns::Error),
    /// HTTP client setup failed.
    #[error(transparent)]
    Identity(#[from] identity::Error),
    /// The Jetstream consumer cannot run.
    #[error(transparent)]
    Jetstream(#[from] jetstream::Error),
    /// The manager stopped with an error.
    #[error(transparent)]
    Manager(#[from] manager::Error),
    /// The server stopped with an error.
    #[error(transparent)]
    Server(#[from] server::Error),
    /// A mirror's follower cannot be set up.
    #[error(transparent)]
    Follow(#[from] follow::Error),
    /// The labeler was pointed at a mirror's database.
    #[error(
        "{0} is a mirror's database (it holds an upstream's labels); run `labeler mirror` on \
         it, or give this labeler its own stateDir"
    )]
    MirrorDatabase(PathBuf),
    /// A component panicked.
    #[error("a component failed: {0}")]
    Panic(String),
}

/// What `init` did.
#[derive(Debug)]
pub struct Init {
    /// The labeler's did:key.
    pub did_key: String,
    /// Whether the config file was written.
    pub created_config: bool,
    /// Whether the signing key was generated.
    pub created_key: bool,
    /// The loaded configuration.
    pub config: Config,
}

/// `labeler -init`: creates the config file (commented defaults) if missing, the state
/// directory (0700) and the signing key (0600) if missing, and the database. Never
/// overwrites anything.
pub fn init(config_path: &Path) -> Result<Init, Error> {
    let create_err = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Create { path, source }
    };
    let mut created_config = false;
    if !config_path.exists() {
        if let Some(dir) = config_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            keys::create_private_dir(dir).map_err(create_err(dir))?;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(config_path)
        {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(config::EXAMPLE.as_bytes())
                    .map_err(create_err(config_path))?;
                created_config = true;
            }
            // Created by someone else in the meantime: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(create_err(config_path)(e)),
        }
    }
    let config = Config::load(config_path)?;
    keys::create_private_dir(&config.state_dir).map_err(create_err(&config.state_dir))?;
    let (key, created_key) = SigningKey::load_or_create(&config.signing_key_path)?;
    Store::open(&config.db_path())?;
    Ok(Init {
        did_key: key.did_key().to_owned(),
        created_config,
        created_key,
        config,
    })
}

/// Internal settings that are not part of the config file (tests shorten them).
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Jetstream reconnect and rewind behaviour (the URL comes from the config).
    pub jetstream: jetstream::Options,
    /// Re-check sweep settings.
    pub scheduler: scheduler::Options,
    /// Server limits (DID and key come from the config).
    pub server: server::Options,
    /// Time source for scheduling.
    pub clock: manager::Clock,
    /// Port of the authoritative servers asked to confirm failures (53; tests run their own).
    pub authoritative_dns_port: u16,
    /// How soon an account event that could not be confirmed is retried.
    pub account_retry: Duration,
}

impl Tuning {
    /// Production settings for `config`.
    pub fn new(config: &Config) -> Tuning {
        Tuning {
            jetstream: jetstream::Options::new(config.jetstream_url.clone()),
            scheduler: scheduler::Options::default(),
            server: server::Options {
                max_subscribers: config.max_subscribers,
                max_connections: config.max_connections,
                max_connections_per_ip: config.max_connections_per_ip,
                max_subscribers_per_ip: config.max_subscribers_per_ip,
                trusted_proxies: config.trusted_proxies.clone(),
                ..server::Options::default()
            },
            clock: manager::Clock::System,
            authoritative_dns_port: 53,
            account_retry: manager::ACCOUNT_RETRY,
        }
    }
}

/// A started daemon.
#[derive(Debug)]
pub struct Running {
    /// Where the server listens.
    pub addr: SocketAddr,
    /// The labeler DID (`src` of its labels).
    pub did: String,
    /// Cancels everything.
    pub shutdown: CancellationToken,
    /// What the components report about themselves (served at `/xrpc/_health`); hand it to
    /// any component that has state to report.
    pub health: Health,
    tasks: JoinSet<Result<(), Error>>,
}

impl Running {
    /// Waits until the daemon stops (after `shutdown` is cancelled or a component stops),
    /// giving components `SHUTDOWN_GRACE` to finish. Returns the first error, if any.
    pub async fn wait(mut self) -> Result<(), Error> {
        let mut first = Ok(());
        // The first component to end stops the rest.
        if let Some(joined) = self.tasks.join_next().await {
            first = flatten(joined);
            if !self.shutdown.is_cancelled() {
                tracing::warn!("a component stopped; shutting down");
                self.shutdown.cancel();
            }
        }
        let drain = async {
            while let Some(joined) = self.tasks.join_next().await {
                let r = flatten(joined);
                if first.is_ok() {
                    first = r;
                } else if let Err(e) = r {
                    tracing::error!(error = %crate::telemetry::Chain(&e), "component failed during shutdown");
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!("components did not stop in time; abandoning them");
            self.tasks.abort_all();
        }
        first
    }
}

fn flatten(joined: Result<Result<(), Error>, tokio::task::JoinError>) -> Result<(), Error> {
    match joined {
        Ok(r) => r,
        Err(e) => Err(Error::Panic(e.to_string())),
    }
}

/// Starts every component on `listener`. Returns once they are running.
pub async fn start(
    config: &Config,
    tuning: Tuning,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<Running, Error> {
    if !config.state_dir.is_dir() {
        return Err(Error::NoState(config.state_dir.clone()));
    }
    let store = Store::open(&config.db_path())?;
    if store.mirror_cursor()?.is_some() {
        return Err(Error::MirrorDatabase(config.db_path()));
    }
    let active = store.active_key()?;
    let key = SigningKey::load_active(&config.signing_key_path, active.as_deref())?;
    store.adopt_key(key.did_key())?;
    let signer = Arc::new(Signer::new(
        &config.signing_key_path,
        config.labeler_did.clone(),
        key,
    ));
    let did = signer.current().src.clone();
    // A new labeler DID (labelerDid set or changed): move the labels to it before serving.
    let moved = lifecycle::move_src(&store, &signer.current())?;
    if moved.written > 0 {
        tracing::warn!(
            src = %did,
            reissued = moved.written / 2,
            "labeler DID changed: re-issued every current label under it and negated the old ones"
        );
    }
    let cursor = store.cursor()?;
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: config.listen_addr,
        source,
    })?;

    let (dns, identity) = resolvers(config)?;
    // The independent path that must confirm a failure before a label is withdrawn.
    let confirm = if config.confirm_dns_servers.is_empty() {
        dns::Resolver::authoritative(&dns, config.dns_timeout, tuning.authoritative_dns_port)
    } else {
        dns::Resolver::new(&config.confirm_dns_servers, config.dns_timeout)?
    };
    let checker = verify::Checker::new(
        dns.clone(),
        identity.clone(),
        verify::Options {
            relay_spf_include: config.relay_spf_include.clone(),
        },
    )
    .with_confirmation(confirm);
    // The console's preflights and handle lookups: the configured resolvers, without the
    // confirmation path (a preflight confirms nothing).
    let console_checker = verify::Checker::new(
        dns,
        identity.clone(),
        verify::Options {
            relay_spf_include: config.relay_spf_include.clone(),
        },
    );
    let health = Health::new();
    let manager = Manager::new(
        store.clone(),
        checker,
        identity,
        signer,
        manager::Options {
            verify_records_at_pds: config.verify_records_at_pds,
            relay_enabled: config.relay_spf_include.is_some(),
            reverify_interval: config.reverify_interval,
            stale_after: config.stale_after,
            concurrency: config.verify_concurrency,
            verify_deadline: config.verify_deadline,
            label_ttl: config.label_ttl,
            account_retry: tuning.account_retry,
            clock: tuning.clock,
        },
        manager::GuardOptions {
            canaries: config.dns_canaries.clone(),
            window: config.breaker_window,
            max_hold: config.breaker_max_hold,
        },
        health.clone(),
    )?;
    let (tx, rx) = tokio::sync::mpsc::channel(manager::COMMAND_CAPACITY);
    let consumer = jetstream::Client::new(
        jetstream::Options {
            url: config.jetstream_url.clone(),
            ..tuning.jetstream
        },
        tx.clone(),
        manager.tracked(),
        cursor,
        health.clone(),
    );
    consumer.url(None)?;
    let scheduler = scheduler::Scheduler::new(
        store.clone(),
        tx,
        scheduler::Options {
            clock: tuning.clock,
            ..tuning.scheduler
        },
    );
    let server = server::Server::new(
        store,
        server::Options {
            labeler_did: config.labeler_did.clone(),
            labeler_pds: config.labeler_pds.clone(),
            ..tuning.server
        },
        Some(telemetry::metrics_handle()),
        health.clone(),
    )
    .with_checker(console_checker);

    let mut tasks = JoinSet::new();
    let token = shutdown.clone();
    tasks.spawn(async move { server.run(listener, token).await.map_err(Error::from) });
    let token = shutdown.clone();
    tasks.spawn(async move { manager.run(rx, token).await.map_err(Error::from) });
    let token = shutdown.clone();
    tasks.spawn(async move { consumer.run(token).await.map_err(Error::from) });
    let token = shutdown.clone();
    tasks.spawn(async move {
        scheduler.run(token).await;
        Ok(())
    });
    tracing::info!(
        %addr,
        did = %did,
        jetstream = %config.jetstream_url,
        cursor,
        "labeler started"
    );
    Ok(Running {
        addr,
        did,
        shutdown,
        health,
        tasks,
    })
}

/// Internal settings of a mirror (tests shorten them).
#[derive(Clone, Debug)]
pub struct MirrorTuning {
    /// What to follow and how (the upstream URL and DID come from the command line).
    pub follow: follow::Options,
    /// Server limits.
    pub server: server::Options,
}

impl MirrorTuning {
    /// Production settings for a mirror of `did` following `upstream`, with the config's
    /// limits.
    pub fn new(config: &Config, upstream: String, did: String) -> MirrorTuning {
        MirrorTuning {
            follow: follow::Options::new(upstream, did),
            server: Tuning::new(config).server,
        }
    }
}

/// A mirror's write cache and checkpoint interval (see [`Store::tune_for_bulk_writes`]): its
/// catch-up is all writes.
const MIRROR_WRITE_CACHE_MIB: u32 = 64;
const MIRROR_CHECKPOINT_MIB: u32 = 64;

/// The configured DNS resolver and the DID / PDS resolver that uses it.
fn resolvers(config: &Config) -> Result<(dns::Resolver, identity::Resolver), Error> {
    let dns = dns::Resolver::new(&config.dns_servers, config.dns_timeout)?;
    let identity = identity::Resolver::new(
        identity::Options {
            plc_url: config.plc_url.clone(),
            allow_private_addresses: config.allow_private_addresses,
            timeout: HTTP_TIMEOUT,
        },
        dns.clone(),
    )?;
    Ok((dns, identity))
}

/// Starts a mirror on `listener`: the XRPC server over its own database and the follower
/// that fills it from the upstream (`labeler mirror`). It never loads a signing key, never
/// follows Jetstream and never checks a domain; of the config it uses `listenAddr` (through
/// `listener`), `stateDir` (created if missing), logging, the server limits, and `plcURL`,
/// `dnsServers`, `dnsTimeout` and `allowPrivateAddresses` to resolve the upstream DID.
pub async fn start_mirror(
    config: &Config,
    tuning: MirrorTuning,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<Running, Error> {
    let state = &config.state_dir;
    keys::create_private_dir(state).map_err(|source| Error::Create {
        path: state.clone(),
        source,
    })?;
    let store = Store::open(&config.db_path())?;
    // A primary's database signs its own labels under its own seqs: mixing would corrupt both.
    if let Some(key) = store.active_key()? {
        return Err(crate::store::Error::NotAMirror { key }.into());
    }
    store.tune_for_bulk_writes(MIRROR_WRITE_CACHE_MIB, MIRROR_CHECKPOINT_MIB)?;
    let cursor = store.mirror_cursor()?;
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: config.listen_addr,
        source,
    })?;
    let (_, identity) = resolvers(config)?;
    let health = Health::new();
    let did = tuning.follow.did.clone();
    let upstream = tuning.follow.upstream.clone();
    let follower = follow::Follower::new(
        tuning.follow,
        store.clone(),
        identity,
        cursor,
        health.clone(),
    )?;
    let server = server::Server::new(
        store,
        server::Options {
            labeler_did: Some(did.clone()),
            labeler_pds: None,
            mirror: true,
            ..tuning.server
        },
        Some(telemetry::metrics_handle()),
        health.clone(),
    );
    let mut tasks = JoinSet::new();
    let token = shutdown.clone();
    tasks.spawn(async move { server.run(listener, token).await.map_err(Error::from) });
    let token = shutdown.clone();
    tasks.spawn(async move { follower.run(token).await.map_err(Error::from) });
    tracing::info!(%addr, %upstream, did = %did, cursor, "mirror started");
    Ok(Running {
        addr,
        did,
        shutdown,
        health,
        tasks,
    })
}

/// Binds the configured address and runs a mirror until SIGINT/SIGTERM.
pub async fn run_mirror(config: Config, upstream: String, did: String) -> Result<(), Error> {
    let listener = bind(&config).await?;
    let shutdown = CancellationToken::new();
    let tuning = MirrorTuning::new(&config, upstream, did);
    let running = start_mirror(&config, tuning, listener, shutdown.clone()).await?;
    until_signal(running, shutdown, "mirror").await
}

/// Binds the configured address and runs the daemon until SIGINT/SIGTERM.
pub async fn run(config: Config) -> Result<(), Error> {
    let listener = bind(&config).await?;
    let shutdown = CancellationToken::new();
    let running = start(&config, Tuning::new(&config), listener, shutdown.clone()).await?;
    until_signal(running, shutdown, "labeler").await
}

/// Binds `listenAddr`.
async fn bind(config: &Config) -> Result<TcpListener, Error> {
    TcpListener::bind(config.listen_addr)
        .await
        .map_err(|source| Error::Listen {
            addr: config.listen_addr,
            source,
        })
}

/// Cancels `shutdown` on SIGINT/SIGTERM and waits until `running` (the labeler or a mirror,
/// named `what` in the log) has finished its in-flight work.
async fn until_signal(
    running: Running,
    shutdown: CancellationToken,
    what: &'static str,
) -> Result<(), Error> {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(what, "shutdown requested; finishing in-flight work");
        shutdown.cancel();
    });
    let result = running.wait().await;
    tracing::info!("{what} stopped");
    result
}

/// Resolves on SIGINT or SIGTERM.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
