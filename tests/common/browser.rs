//! A real headless Chromium, driven over WebDriver: Debian's `chromium` and `chromium-driver`
//! (chromedriver), through `fantoccini`. `.ci/run` installs both when they are missing; a
//! machine without them fails these tests (never skips them).
//!
//! Each [`Browser`] is one chromedriver on a free 127.0.0.1 port with one session, a fresh
//! profile directory and every background network feature off, so the browser talks to
//! nothing but the labeler under test. Browser tests take [`Browser::start`]'s lock, so one
//! browser runs at a time however many tests the harness runs in parallel: two cores do not
//! run several Chromiums and the rest of the suite at once within the tests' bounds.
//!
//! A session must be closed ([`Browser::close`]), or its Chromium outlives chromedriver;
//! [`Browser::run`] closes it whatever the test does, panics included.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::sync::{Mutex, MutexGuard};

use super::process::Child;

/// Bound on every wait for the page.
pub const PAGE_WAIT: Duration = Duration::from_secs(20);

/// Bound on chromedriver and Chromium starting (a cold start on a busy machine).
const START_WAIT: Duration = Duration::from_secs(30);

/// One browser at a time (see the module docs).
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Where Debian installs them.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUMS: &[&str] = &["/usr/lib/chromium/chromium", "/usr/bin/chromium"];

/// A browser session with its chromedriver.
pub struct Browser {
    pub client: Client,
    _driver: Child,
    _profile: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

fn chromium() -> &'static str {
    CHROMIUMS
        .iter()
        .copied()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!(
                "Chromium is not installed ({CHROMIUMS:?} missing): apt-get install -y chromium chromium-driver (.ci/run does this)"
            )
        })
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a `width`×`height` window.
    pub async fn start(width: u32, height: u32) -> Browser {
        let turn = ONE_AT_A_TIME.lock().await;
        assert!(
            Path::new(CHROMEDRIVER).exists(),
            "chromedriver is not installed ({CHROMEDRIVER} missing): apt-get install -y chromium chromium-driver (.ci/run does this)"
        );
        let binary = chromium();
        let port = free_port();
        let mut cmd = std::process::Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg("--log-level=WARNING");
        let driver = Child::spawn(cmd);
        let base = format!("http://127.0.0.1:{port}");
        let up = super::eventually(START_WAIT, || async {
            reqwest::get(format!("{base}/status"))
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(up, "chromedriver answered /status within {START_WAIT:?}");

        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-extensions".to_owned(),
            "--hide-scrollbars".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": binary, "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let connect = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&base)
            .await;
        let client = tokio::time::timeout(START_WAIT, async { connect })
            .await
            .expect("a session within the start bound")
            .unwrap_or_else(|e| panic!("chromedriver started no Chromium session: {e}"));
        Browser {
            client,
            _driver: driver,
            _profile: profile,
            _turn: turn,
        }
    }

    /// Runs `test` with this browser, then closes the session, also when `test` panics (the
    /// panic is passed on once the browser is gone).
    pub async fn run<F, Fut>(self, test: F)
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = ()>,
    {
        let outcome = AssertUnwindSafe(test(self.client.clone()))
            .catch_unwind()
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.client.clone().close()).await;
        drop(self);
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}

/// A port nothing listens on now (bound and released; chromedriver binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// ChromeDriver's log endpoint (`POST /session/{id}/se/log`), which W3C WebDriver lacks:
/// the browser console, including what page scripts cannot see (failed loads, CSP refusals).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &reqwest::Url,
        session_id: Option<&str>,
    ) -> Result<reqwest::Url, url_error::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &reqwest::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(json!({ "type": "browser" }).to_string()),
        )
    }
}

mod url_error {
    pub use reqwest::Url;
    pub type ParseError = <Url as std::str::FromStr>::Err;
}

/// Console entries at level `SEVERE` (errors) since the last call, as `level: message`, plus
/// whatever the page itself caught (`window.consoleErrors`).
pub async fn console_errors(c: &Client) -> Vec<String> {
    let mut out = Vec::new();
    let log = c.issue_cmd(BrowserLog).await.expect("chromedriver's log");
    for entry in log.as_array().into_iter().flatten() {
        if entry["level"] == "SEVERE" {
            out.push(format!("{}: {}", entry["level"], entry["message"]));
        }
    }
    let caught = c
        .execute("return window.consoleErrors || [];", vec![])
        .await
        .unwrap();
    for e in caught.as_array().into_iter().flatten() {
        out.push(format!("page: {e}"));
    }
    out
}

/// Waits (bounded) until `script` (a function body returning a value) returns something
/// truthy; returns it. Panics naming `what` otherwise.
pub async fn until(c: &Client, what: &str, script: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PAGE_WAIT;
    let mut last = Value::Null;
    loop {
        last = c.execute(script, vec![]).await.unwrap_or(last);
        let truthy = match &last {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            _ => true,
        };
        if truthy {
            return last;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PAGE_WAIT:?} (last: {last})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) for an element matching `css`.
pub async fn find(c: &Client, css: &str) -> Element {
    tokio::time::timeout(PAGE_WAIT, c.wait().forever().for_element(Locator::Css(css)))
        .await
        .unwrap_or_else(|_| panic!("no element {css:?} within {PAGE_WAIT:?}"))
        .unwrap()
}

/// The text of the element matching `css`.
pub async fn text(c: &Client, css: &str) -> String {
    find(c, css).await.text().await.unwrap()
}
