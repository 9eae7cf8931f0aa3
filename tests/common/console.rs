//! The operators the console tests look at, published in a [`World`]: Alice, verified, with a
//! handle that is not her mail domain; Bob, whose DMARC record is missing.

use std::path::Path;

use serde_json::Value;

use super::daemon::{TestLabeler, World};
use super::dns::GOOD_DMARC;
use super::plc::did_doc;

pub const ALICE: &str = "did:plc:aliceinthemailroom234567";
pub const ALICE_HANDLE: &str = "alice.example";
pub const ALICE_DOMAIN: &str = "mail.alice.example";
pub const BOB: &str = "did:plc:bobrunsamailserver234567";
pub const BOB_DOMAIN: &str = "mail.bob.example";
pub const RKEY: &str = "3mail";

/// Alice: every record right, her handle resolving by DNS, her attestation announced.
pub fn alice(world: &World) {
    world.good_operator(ALICE, ALICE_DOMAIN, RKEY);
    world
        .plc
        .set_doc(ALICE, did_doc(ALICE, Some(ALICE_HANDLE), &world.pds.url()));
    world.dns.set_txt(
        &format!("_atproto.{ALICE_HANDLE}"),
        &[&format!("did={ALICE}")],
    );
}

/// Bob: everything right but DMARC, which he has not published; attestation announced.
pub fn bob(world: &World) {
    world
        .dns
        .publish_good_operator(BOB_DOMAIN, BOB, &["default"]);
    world.dns.remove(&format!("_dmarc.{BOB_DOMAIN}"));
    world.account(BOB);
    world.publish(BOB, RKEY, &World::record(BOB_DOMAIN, &["default"]));
}

/// Bob publishes the DMARC record he lacked.
pub fn fix_bob(world: &World) {
    world
        .dns
        .set_txt(&format!("_dmarc.{BOB_DOMAIN}"), &[GOOD_DMARC]);
}

/// Alice and Bob, published and decided (Alice passes, Bob fails).
pub async fn alice_and_bob(world: &World, labeler: &TestLabeler) -> (Value, Value) {
    alice(world);
    bob(world);
    let a = labeler.await_verdict(ALICE, RKEY, &["pass"]).await;
    let b = labeler.await_verdict(BOB, RKEY, &["fail"]).await;
    (a, b)
}

/// Every row of every table of the database at `path`, as text, sorted per table: equal
/// dumps mean nothing was stored.
pub fn dump(path: &Path) -> Vec<String> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = Vec::new();
    for t in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                let cells: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect();
                Ok(format!("{t}: {}", cells.join(" | ")))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.sort();
        out.push(format!("{t}: {} rows", rows.len()));
        out.extend(rows);
    }
    out
}
