//! `identity::Resolver` against fake PLC, PDS and DNS servers: documents, records, repo
//! status, failure classification, caching and SSRF refusals.

use std::net::Ipv4Addr;
use std::time::Duration;

use atmos_labeler::identity::{Error, Options, Resolver};
use serde_json::json;

use crate::common::dns::FakeDns;
use crate::common::plc::{FakePds, FakePlc, did_doc};

const DID: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
const NSID: &str = "email.atmos.attestation";

struct Env {
    dns: FakeDns,
    plc: FakePlc,
    pds: FakePds,
}

impl Env {
    async fn start() -> Env {
        Env {
            dns: FakeDns::start().await,
            plc: FakePlc::start().await,
            pds: FakePds::start().await,
        }
    }

    fn resolver(&self, allow_private_addresses: bool) -> Resolver {
        Resolver::new(
            Options {
                plc_url: self.plc.url(),
                allow_private_addresses,
                timeout: Duration::from_millis(1000),
            },
            self.dns.resolver(),
        )
        .unwrap()
    }
}

#[tokio::test]
async fn fetches_plc_documents_and_caches_them() {
    let env = Env::start().await;
    env.plc.set_doc(
        DID,
        did_doc(DID, Some("Alice.Example.Test"), &env.pds.url()),
    );
    let id = env.resolver(true);
    let doc = id.did_document(DID, false).await.unwrap();
    assert_eq!(doc.id, DID);
    assert_eq!(doc.handle().as_deref(), Some("alice.example.test"));
    assert_eq!(doc.pds.as_deref(), Some(env.pds.url().as_str()));
    assert!(doc.signing_key.is_some());

    // Cached: a second call does not reach the directory; fresh and forget do.
    id.did_document(DID, false).await.unwrap();
    assert_eq!(env.plc.requests(DID), 1);
    id.did_document(DID, true).await.unwrap();
    assert_eq!(env.plc.requests(DID), 2);
    id.forget(DID);
    id.did_document(DID, false).await.unwrap();
    assert_eq!(env.plc.requests(DID), 3);
}

#[tokio::test]
async fn only_not_found_is_definitive() {
    let env = Env::start().await;
    let id = env.resolver(true);
    let e = id.did_document(DID, false).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { status: 404, .. }), "{e:?}");
    assert!(e.is_definitive());

    env.plc.fail(DID, 500);
    let e = id.did_document(DID, false).await.unwrap_err();
    assert!(!e.is_definitive(), "{e:?}");

    // Redirects are not followed.
    env.plc.fail(DID, 302);
    let e = id.did_document(DID, false).await.unwrap_err();
    assert!(matches!(e, Error::Status { status: 302, .. }), "{e:?}");
    assert!(!e.is_definitive());

    env.plc.hang(DID);
    let e = id.did_document(DID, false).await.unwrap_err();
    assert!(matches!(e, Error::Http { .. }), "{e:?}");
    assert!(!e.is_definitive());

    // A document for another DID.
    env.plc.set_doc(
        DID,
        did_doc("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", None, &env.pds.url()),
    );
    let e = id.did_document(DID, false).await.unwrap_err();
    assert!(matches!(e, Error::IdMismatch { .. }), "{e:?}");
    assert!(!e.is_definitive());

    // An oversized document.
    let mut big = did_doc(DID, None, &env.pds.url());
    big["padding"] = json!("x".repeat(300 * 1024));
    env.plc.set_doc(DID, big);
    let e = id.did_document(DID, false).await.unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
    assert!(!e.is_definitive());

    // Unsupported methods are definitive without any request.
    let e = id.did_document("did:key:zQ3sh", false).await.unwrap_err();
    assert!(e.is_definitive(), "{e:?}");
}

#[tokio::test]
async fn reads_records_and_repo_status_from_the_pds() {
    let env = Env::start().await;
    env.plc.set_doc(DID, did_doc(DID, None, &env.pds.url()));
    let value = json!({"$type": NSID, "domain": "example.test"});
    env.pds
        .put_record(DID, NSID, "self", "bafyreicid", value.clone());
    let id = env.resolver(true);

    let copy = id.get_record(DID, NSID, "self").await.unwrap().unwrap();
    assert_eq!(copy.uri, format!("at://{DID}/{NSID}/self"));
    assert_eq!(copy.cid.as_deref(), Some("bafyreicid"));
    assert_eq!(copy.value, value);

    // RecordNotFound (HTTP 400) means the record does not exist.
    env.pds.delete_record(DID, NSID, "self");
    assert_eq!(id.get_record(DID, NSID, "self").await.unwrap(), None);

    let status = id.repo_status(DID).await.unwrap();
    assert!(status.active && status.status.is_none());
    env.pds.set_status(DID, false, Some("takendown"));
    let status = id.repo_status(DID).await.unwrap();
    assert!(!status.active);
    assert_eq!(status.status.as_deref(), Some("takendown"));

    env.pds.remove_repo(DID);
    let e = id.repo_status(DID).await.unwrap_err();
    assert_eq!(e.xrpc_error(), Some("RepoNotFound"));
    assert!(!e.is_definitive());

    env.pds.fail(DID, 503);
    let e = id.get_record(DID, NSID, "self").await.unwrap_err();
    assert!(matches!(e, Error::Status { status: 503, .. }), "{e:?}");
    assert!(!e.is_definitive());

    // A DID that does not exist: definitive.
    env.plc.remove(DID);
    id.forget(DID);
    assert!(
        id.get_record(DID, NSID, "self")
            .await
            .unwrap_err()
            .is_definitive()
    );
}

#[tokio::test]
async fn did_web_resolves_on_localhost_in_development() {
    let env = Env::start().await;
    let did = format!("did:web:localhost%3A{}", env.pds.addr().port());
    env.pds
        .set_did_json(did_doc(&did, Some("web.example.test"), &env.pds.url()));
    let doc = env.resolver(true).did_document(&did, false).await.unwrap();
    assert_eq!(doc.id, did);
    assert_eq!(doc.handle().as_deref(), Some("web.example.test"));
}

#[tokio::test]
async fn refuses_private_addresses_without_fetching() {
    let env = Env::start().await;
    let id = env.resolver(false);

    // did:web naming a loopback IP literal.
    let did = format!("did:web:127.0.0.1%3A{}", env.pds.addr().port());
    env.pds.set_did_json(did_doc(&did, None, &env.pds.url()));
    let e = id.did_document(&did, false).await.unwrap_err();
    assert!(matches!(e, Error::Forbidden { .. }), "{e:?}");
    assert!(!e.is_definitive());

    // did:web whose host name resolves to loopback / private space only.
    env.dns.set_a(
        "evil.example.test",
        &[Ipv4Addr::LOCALHOST, Ipv4Addr::new(10, 0, 0, 1)],
    );
    let e = id
        .did_document("did:web:evil.example.test", false)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Forbidden { .. }), "{e:?}");
    assert!(e.to_string().contains("evil.example.test"), "{e}");

    // A PDS endpoint at a private IP literal.
    env.plc.set_doc(DID, did_doc(DID, None, "https://10.1.2.3"));
    let e = id.get_record(DID, NSID, "self").await.unwrap_err();
    assert!(matches!(e, Error::Forbidden { .. }), "{e:?}");
    // …or at plain http, which is allowed only in development.
    env.plc.set_doc(DID, did_doc(DID, None, &env.pds.url()));
    id.forget(DID);
    let e = id.get_record(DID, NSID, "self").await.unwrap_err();
    assert!(matches!(e, Error::NoPds { .. }), "{e:?}");
    // …or behind a host name that resolves to loopback.
    env.plc
        .set_doc(DID, did_doc(DID, None, "https://evil.example.test"));
    id.forget(DID);
    let e = id.repo_status(DID).await.unwrap_err();
    assert!(matches!(e, Error::Forbidden { .. }), "{e:?}");

    assert_eq!(env.pds.requests(), 0, "nothing reached the fake PDS");
}
