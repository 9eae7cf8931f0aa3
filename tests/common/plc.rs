//! Identity fakes on 127.0.0.1, with state that tests change while they run:
//!
//! - [`FakePlc`]: a PLC directory (`GET /{did}` → DID document, 404 `DID not registered`),
//!   with per-DID failures (any status) and hangs (no response ever).
//! - [`FakePds`]: a PDS serving `com.atproto.repo.getRecord`, `com.atproto.repo.listRecords`
//!   and `com.atproto.sync.getRepoStatus` with the reference PDS's XRPC error bodies
//!   (`{"error":"RecordNotFound","message":…}` with HTTP 400, `RepoNotFound` for unknown
//!   repositories), per-DID failures and hangs, and optionally `/.well-known/did.json` for
//!   did:web tests. It counts every request, so tests can assert that nothing was fetched.
//!   For an inactive (deactivated, taken-down) repo it answers like the reference PDS, whose
//!   getRecord only reads active accounts and otherwise passes the request on to its
//!   AppView: getRecord → 400 `RecordNotFound` from the AppView (or, with no AppView, 400
//!   `InvalidRequest` "Could not locate record"), listRecords → 400 `InvalidRequest` "Could
//!   not find repo", getRepoStatus → `active: false` with the status.
//! - [`did_doc`]: a DID document in the shape the PLC directory serves.
//!
//! Hung requests never complete; the identity resolver's timeout ends them on the client
//! side. Dropping a fake stops its listener.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// A DID document as the PLC directory serves it: `@context`, `id`, `alsoKnownAs` (the
/// handle as `at://…`, if any), an `#atproto` Multikey verification method and an
/// `#atproto_pds` service at `pds_url`.
pub fn did_doc(did: &str, handle: Option<&str>, pds_url: &str) -> Value {
    json!({
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/multikey/v1",
            "https://w3id.org/security/suites/secp256k1-2019/v1"
        ],
        "id": did,
        "alsoKnownAs": handle.map(|h| vec![format!("at://{h}")]).unwrap_or_default(),
        "verificationMethod": [{
            "id": format!("{did}#atproto"),
            "type": "Multikey",
            "controller": did,
            "publicKeyMultibase": "zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF"
        }],
        "service": [{
            "id": "#atproto_pds",
            "type": "AtprotoPersonalDataServer",
            "serviceEndpoint": pds_url
        }]
    })
}

/// How a fake should misbehave for one DID.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Status(u16),
    Hang,
}

/// Serves `router` on 127.0.0.1:0.
async fn serve(router: Router) -> (SocketAddr, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, task)
}

fn xrpc_error(status: StatusCode, error: &str, message: &str) -> Response {
    (status, Json(json!({ "error": error, "message": message }))).into_response()
}

/// Answers a fault: an XRPC-style error body with the status, or never.
async fn misbehave(fault: Fault) -> Response {
    match fault {
        Fault::Hang => std::future::pending().await,
        Fault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if status.is_redirection() {
                return (status, [("location", "http://127.0.0.1:9/elsewhere")]).into_response();
            }
            xrpc_error(status, "InternalServerError", "fake failure")
        }
    }
}

#[derive(Default)]
struct PlcState {
    docs: HashMap<String, Value>,
    faults: HashMap<String, Fault>,
    /// A fault for every DID (the whole directory is down).
    all: Option<Fault>,
    requests: HashMap<String, usize>,
}

/// A fake PLC directory.
pub struct FakePlc {
    addr: SocketAddr,
    state: Arc<Mutex<PlcState>>,
    task: JoinHandle<()>,
}

impl Drop for FakePlc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn plc_get(State(state): State<Arc<Mutex<PlcState>>>, Path(did): Path<String>) -> Response {
    let (fault, doc) = {
        let mut s = state.lock().unwrap();
        *s.requests.entry(did.clone()).or_default() += 1;
        (
            s.all.or_else(|| s.faults.get(&did).copied()),
            s.docs.get(&did).cloned(),
        )
    };
    if let Some(fault) = fault {
        return misbehave(fault).await;
    }
    match doc {
        Some(doc) => Json(doc).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "message": format!("DID not registered: {did}") })),
        )
            .into_response(),
    }
}

impl FakePlc {
    /// Starts an empty directory.
    pub async fn start() -> FakePlc {
        let state = Arc::new(Mutex::new(PlcState::default()));
        let router = Router::new()
            .route("/{did}", get(plc_get))
            .with_state(state.clone());
        let (addr, task) = serve(router).await;
        FakePlc { addr, state, task }
    }

    /// The directory URL (for `identity::Options::plc_url`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves `doc` for `did` (and clears any fault for it).
    pub fn set_doc(&self, did: &str, doc: Value) {
        let mut s = self.state.lock().unwrap();
        s.faults.remove(did);
        s.docs.insert(did.to_owned(), doc);
    }

    /// Forgets `did`: the directory answers 404.
    pub fn remove(&self, did: &str) {
        self.state.lock().unwrap().docs.remove(did);
    }

    /// Answers `status` for `did` (a 3xx carries a `Location`).
    pub fn fail(&self, did: &str, status: u16) {
        let mut s = self.state.lock().unwrap();
        s.faults.insert(did.to_owned(), Fault::Status(status));
    }

    /// Never answers requests for `did`.
    pub fn hang(&self, did: &str) {
        self.state
            .lock()
            .unwrap()
            .faults
            .insert(did.to_owned(), Fault::Hang);
    }

    /// Ends a [`FakePlc::fail`] or [`FakePlc::hang`].
    pub fn clear_fault(&self, did: &str) {
        self.state.lock().unwrap().faults.remove(did);
    }

    /// Answers `status` to every request (`Some`), or recovers (`None`): a directory outage.
    pub fn fail_all(&self, status: Option<u16>) {
        self.state.lock().unwrap().all = status.map(Fault::Status);
    }

    /// Requests received for `did`.
    pub fn requests(&self, did: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .requests
            .get(did)
            .copied()
            .unwrap_or(0)
    }
}

#[derive(Default)]
struct PdsState {
    /// (did, collection, rkey) → (cid, value)
    records: HashMap<(String, String, String), (String, Value)>,
    /// Repositories this PDS hosts, with (active, status).
    repos: HashMap<String, (bool, Option<String>)>,
    faults: HashMap<String, Fault>,
    did_json: Option<Value>,
    requests: usize,
    /// No AppView configured: getRecord for an inactive repo answers `InvalidRequest`.
    no_appview: bool,
}

/// A fake PDS.
pub struct FakePds {
    addr: SocketAddr,
    state: Arc<Mutex<PdsState>>,
    task: JoinHandle<()>,
}

impl Drop for FakePds {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pds_get_record(
    State(state): State<Arc<Mutex<PdsState>>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (Some(repo), Some(collection), Some(rkey)) =
        (q.get("repo"), q.get("collection"), q.get("rkey"))
    else {
        return xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Params must have the properties \"repo\", \"collection\" and \"rkey\"",
        );
    };
    let (fault, known, record, no_appview) = {
        let mut s = state.lock().unwrap();
        s.requests += 1;
        let key = (repo.clone(), collection.clone(), rkey.clone());
        (
            s.faults.get(repo).copied(),
            s.repos.get(repo).cloned(),
            s.records.get(&key).cloned(),
            s.no_appview,
        )
    };
    if let Some(fault) = fault {
        return misbehave(fault).await;
    }
    let uri = format!("at://{repo}/{collection}/{rkey}");
    // The reference PDS reads records of active accounts only and passes anything else on
    // to its AppView, which knows no such record.
    if let Some((false, _)) = known {
        return if no_appview {
            xrpc_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "Could not locate record",
            )
        } else {
            xrpc_error(
                StatusCode::BAD_REQUEST,
                "RecordNotFound",
                &format!("Could not locate record: {uri}"),
            )
        };
    }
    match (known.is_some(), record) {
        (_, Some((cid, value))) => {
            Json(json!({ "uri": uri, "cid": cid, "value": value })).into_response()
        }
        (true, None) => xrpc_error(
            StatusCode::BAD_REQUEST,
            "RecordNotFound",
            &format!("Could not locate record: {uri}"),
        ),
        (false, None) => xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            &format!("Could not find repo: {repo}"),
        ),
    }
}

async fn pds_list_records(
    State(state): State<Arc<Mutex<PdsState>>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (Some(repo), Some(collection)) = (q.get("repo"), q.get("collection")) else {
        return xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Params must have the properties \"repo\" and \"collection\"",
        );
    };
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(50)
        .clamp(1, 100);
    let (fault, active, mut records) = {
        let mut s = state.lock().unwrap();
        s.requests += 1;
        let records: Vec<(String, String, Value)> = s
            .records
            .iter()
            .filter(|((d, c, _), _)| d == repo && c == collection)
            .map(|((_, _, rkey), (cid, value))| (rkey.clone(), cid.clone(), value.clone()))
            .collect();
        (
            s.faults.get(repo).copied(),
            s.repos.get(repo).map(|(active, _)| *active),
            records,
        )
    };
    if let Some(fault) = fault {
        return misbehave(fault).await;
    }
    if active != Some(true) {
        return xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            &format!("Could not find repo: {repo}"),
        );
    }
    // The reference PDS lists newest first (descending rkey); the cursor is the last rkey.
    records.sort_by(|a, b| b.0.cmp(&a.0));
    if let Some(cursor) = q.get("cursor") {
        records.retain(|(rkey, _, _)| rkey < cursor);
    }
    let page: Vec<Value> = records
        .iter()
        .take(limit)
        .map(|(rkey, cid, value)| {
            json!({"uri": format!("at://{repo}/{collection}/{rkey}"), "cid": cid, "value": value})
        })
        .collect();
    let mut body = json!({ "records": page });
    if records.len() > limit {
        body["cursor"] = json!(records[limit - 1].0);
    }
    Json(body).into_response()
}

async fn pds_repo_status(
    State(state): State<Arc<Mutex<PdsState>>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(did) = q.get("did") else {
        return xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Params must have the property \"did\"",
        );
    };
    let (fault, repo) = {
        let mut s = state.lock().unwrap();
        s.requests += 1;
        (s.faults.get(did).copied(), s.repos.get(did).cloned())
    };
    if let Some(fault) = fault {
        return misbehave(fault).await;
    }
    match repo {
        Some((active, status)) => {
            let mut body = json!({ "did": did, "active": active, "rev": "3l3qo2vutsw2b" });
            if let Some(status) = status {
                body["status"] = json!(status);
            }
            Json(body).into_response()
        }
        None => xrpc_error(
            StatusCode::BAD_REQUEST,
            "RepoNotFound",
            &format!("Could not find repo for DID: {did}"),
        ),
    }
}

async fn pds_did_json(State(state): State<Arc<Mutex<PdsState>>>) -> Response {
    let doc = {
        let mut s = state.lock().unwrap();
        s.requests += 1;
        s.did_json.clone()
    };
    match doc {
        Some(doc) => Json(doc).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

impl FakePds {
    /// Starts a PDS hosting no repositories.
    pub async fn start() -> FakePds {
        let state = Arc::new(Mutex::new(PdsState::default()));
        let router = Router::new()
            .route("/xrpc/com.atproto.repo.getRecord", get(pds_get_record))
            .route("/xrpc/com.atproto.repo.listRecords", get(pds_list_records))
            .route("/xrpc/com.atproto.sync.getRepoStatus", get(pds_repo_status))
            .route("/.well-known/did.json", get(pds_did_json))
            .with_state(state.clone());
        let (addr, task) = serve(router).await;
        FakePds { addr, state, task }
    }

    /// The PDS URL (the `#atproto_pds` endpoint).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stores a record (the repository becomes hosted and active if it was not hosted).
    pub fn put_record(&self, did: &str, collection: &str, rkey: &str, cid: &str, value: Value) {
        let mut s = self.state.lock().unwrap();
        s.repos.entry(did.to_owned()).or_insert((true, None));
        s.records.insert(
            (did.to_owned(), collection.to_owned(), rkey.to_owned()),
            (cid.to_owned(), value),
        );
    }

    /// Deletes a record: `getRecord` then answers 400 `RecordNotFound`.
    pub fn delete_record(&self, did: &str, collection: &str, rkey: &str) {
        let mut s = self.state.lock().unwrap();
        s.repos.entry(did.to_owned()).or_insert((true, None));
        s.records
            .remove(&(did.to_owned(), collection.to_owned(), rkey.to_owned()));
    }

    /// Sets the repository status (hosting it if it was not).
    pub fn set_status(&self, did: &str, active: bool, status: Option<&str>) {
        self.state
            .lock()
            .unwrap()
            .repos
            .insert(did.to_owned(), (active, status.map(str::to_owned)));
    }

    /// Whether the PDS has an AppView to pass getRecord for inactive repos on to (it does by
    /// default; without one the reference PDS answers `InvalidRequest`).
    pub fn set_appview(&self, present: bool) {
        self.state.lock().unwrap().no_appview = !present;
    }

    /// Stops hosting `did`: `getRepoStatus` answers 400 `RepoNotFound`.
    pub fn remove_repo(&self, did: &str) {
        let mut s = self.state.lock().unwrap();
        s.repos.remove(did);
        s.records.retain(|(d, _, _), _| d != did);
    }

    /// Answers `status` to every XRPC request about `did`.
    pub fn fail(&self, did: &str, status: u16) {
        self.state
            .lock()
            .unwrap()
            .faults
            .insert(did.to_owned(), Fault::Status(status));
    }

    /// Never answers XRPC requests about `did`.
    pub fn hang(&self, did: &str) {
        self.state
            .lock()
            .unwrap()
            .faults
            .insert(did.to_owned(), Fault::Hang);
    }

    /// Ends a [`FakePds::fail`] or [`FakePds::hang`].
    pub fn clear_fault(&self, did: &str) {
        self.state.lock().unwrap().faults.remove(did);
    }

    /// Serves `doc` at `/.well-known/did.json` (for did:web tests).
    pub fn set_did_json(&self, doc: Value) {
        self.state.lock().unwrap().did_json = Some(doc);
    }

    /// Requests received (all routes).
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }
}
