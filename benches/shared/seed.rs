//! The benches' shared data set: N labels on random `did:plc:` DIDs, really signed with a
//! fixed key, seeded once and cached under `target/tmp/read_path/` (`read_path`, `mirror`).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use atmos_labeler::keys::SigningKey;
use atmos_labeler::label::{Label, RELAY_MEMBER, SignedLabel, VERIFIED_MAIL_OPERATOR};
use atmos_labeler::store::Store;
use rand::{Rng, SeedableRng};

/// A fixed test key (the shared vectors' first key): labels are really signed.
pub const KEY_HEX: &str = "9085d2bef69286a6cbb51623c8fa258629945cd55ca705cc4e66700396894e0c";

/// Every DID is `did:plc:` + 24 base32 characters.
pub const DID_LEN: usize = 32;
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// The cached database and DID list for `n` labels, seeded first when missing.
pub fn cached(n: usize) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("read_path");
    std::fs::create_dir_all(&dir)?;
    let db = dir.join(format!("labels-{n}.db"));
    let dids = dir.join(format!("dids-{n}.bin"));
    if !db.exists() || !dids.exists() {
        seed(&db, &dids, n)?;
    }
    Ok((db, dids))
}

/// Writes `n` signed labels on random DIDs (seeded RNG: the same data every time), and the
/// DIDs back to back in `dids` for wrk.
pub fn seed(db: &Path, dids: &Path, n: usize) -> anyhow::Result<()> {
    println!("seeding {n} labels into {} (once; cached)", db.display());
    let started = Instant::now();
    let tmp = db.with_extension("tmp");
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", tmp.display()));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x1abe1);
    let mut all = Vec::with_capacity(n * DID_LEN);
    let subjects: Vec<String> = (0..n)
        .map(|_| {
            let mut did = String::with_capacity(DID_LEN);
            did.push_str("did:plc:");
            for _ in 0..24 {
                did.push(BASE32[rng.random_range(0..32)] as char);
            }
            all.extend_from_slice(did.as_bytes());
            did
        })
        .collect();
    let key = SigningKey::from_hex(KEY_HEX).context("key")?;
    let cts = "2026-11-23T00:00:00.000Z";
    let sign = |range: std::ops::Range<usize>| -> Vec<SignedLabel> {
        range
            .map(|i| {
                Label {
                    src: key.did_key().to_owned(),
                    uri: subjects[i].clone(),
                    cid: None,
                    val: if i % 4 == 3 {
                        RELAY_MEMBER
                    } else {
                        VERIFIED_MAIL_OPERATOR
                    }
                    .to_owned(),
                    neg: false,
                    cts: cts.to_owned(),
                    exp: None,
                }
                .sign(&key)
            })
            .collect()
    };
    let labels = std::thread::scope(|s| {
        let half = s.spawn(|| sign(0..n / 2));
        let mut second = sign(n / 2..n);
        let mut labels = half.join().unwrap();
        labels.append(&mut second);
        labels
    });
    println!("  signed in {:.1} s", started.elapsed().as_secs_f64());
    let store = Store::open(&tmp)?;
    for chunk in labels.chunks(10_000) {
        store.write_labels(chunk)?;
    }
    // Closing the last connection checkpoints the WAL into the file and removes it.
    drop(store);
    if Path::new(&format!("{}-wal", tmp.display())).exists() {
        bail!("the WAL of {} was not checkpointed", tmp.display());
    }
    std::fs::rename(&tmp, db)?;
    std::fs::write(dids, all)?;
    println!("  done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
