//! The labeler's secp256k1 signing key: creating and loading the key file, deriving the
//! `did:key`, and checking signatures made by any atproto k256 key.
//!
//! Only this module sees key bytes. The key file holds the 32-byte secret as hex (the Go seed's
//! format, and Ozone's `signingKeyHex`), created with mode 0600 and never overwritten. `Debug`
//! shows the public `did:key` only, so a key can never end up in a log line or an error.
//!
//! Encodings follow <https://atproto.com/specs/cryptography> "Public Key Encoding": the compressed SEC1 point
//! (33 bytes) behind the `secp256k1-pub` multicodec varint `0xe7 0x01`, base58btc multibase
//! (`z…`); the `did:key:` form prefixes that. Signatures are 64-byte compact `r‖s`, low-S,
//! over SHA-256 of the message with an RFC 6979 deterministic nonce.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use k256::ecdsa::signature::Signer as _;
use k256::ecdsa::{Signature, SigningKey as K256Key, VerifyingKey};
use k256::elliptic_curve::Generate;
use zeroize::Zeroizing;

/// Multicodec varint for `secp256k1-pub` (0xe7), the prefix of every k256 Multikey.
const SECP256K1_PUB_MULTICODEC: [u8; 2] = [0xe7, 0x01];

/// Prefix of a `did:key` DID.
pub const DID_KEY_PREFIX: &str = "did:key:";

/// Errors from loading, creating or using keys. None of them carries key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key file could not be read.
    #[error("cannot read signing key {path}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The key file exists but does not hold a 32-byte hex secp256k1 secret.
    #[error("signing key {path} is not a hex-encoded 32-byte secp256k1 private key")]
    Malformed {
        /// The key file.
        path: PathBuf,
    },
    /// The key file could not be created.
    #[error("cannot create signing key {path}")]
    Create {
        /// The key file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The system random number generator failed.
    #[error("cannot generate a signing key: the system random number generator failed")]
    Random,
    /// A public key string is not a secp256k1 Multikey / did:key.
    #[error("not a secp256k1 did:key or Multikey: {0}")]
    BadPublicKey(String),
    /// A signature did not verify (bad length, high-S, or wrong key or message).
    #[error("signature does not verify")]
    BadSignature,
    /// A key file could not be moved into place during a rotation.
    #[error("cannot move {from} to {to}")]
    Rename {
        /// The file moved.
        from: PathBuf,
        /// Where it was to go.
        to: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// A rotation is staged already (its new key file exists).
    #[error(
        "a key rotation is already under way: {0} exists (start the daemon or run the rotation \
         again to finish it, or remove the file if no rotation was committed)"
    )]
    RotationStaged(PathBuf),
    /// The key file does not hold the key the database says is active.
    #[error(
        "signing key {path} is {found}, but the database's active key is {active}; restore the \
         key file that matches, or rotate again"
    )]
    NotActive {
        /// The key file.
        path: PathBuf,
        /// Its did:key.
        found: String,
        /// The active did:key recorded in the database.
        active: String,
    },
}

/// The labeler's signing key.
///
/// Holds the secret (zeroized on drop by `k256`) and the derived `did:key`, computed once.
#[derive(Clone)]
pub struct SigningKey {
    inner: K256Key,
    did_key: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Deliberately never the secret: only the public identity.
        f.debug_struct("SigningKey")
            .field("did_key", &self.did_key)
            .finish()
    }
}

impl SigningKey {
    /// Builds a key from a 32-byte secret in hex (surrounding whitespace allowed).
    ///
    /// Returns `None` for anything else; callers add the context (which file) themselves so
    /// that no part of the input ever reaches an error message.
    pub fn from_hex(hex: &str) -> Option<SigningKey> {
        let hex = hex.trim();
        let secret = Zeroizing::new(
            data_encoding::HEXLOWER_PERMISSIVE
                .decode(hex.as_bytes())
                .ok()?,
        );
        if secret.len() != 32 {
            return None;
        }
        let inner = K256Key::from_slice(&secret).ok()?;
        Some(SigningKey::from_inner(inner))
    }

    fn from_inner(inner: K256Key) -> SigningKey {
        let did_key = format!("{DID_KEY_PREFIX}{}", multikey(inner.verifying_key()));
        SigningKey { inner, did_key }
    }

    /// Generates a fresh random key.
    pub fn generate() -> Result<SigningKey, Error> {
        let inner = K256Key::try_generate().map_err(|_| Error::Random)?;
        Ok(SigningKey::from_inner(inner))
    }

    /// Loads the key file at `path`.
    pub fn load(path: &Path) -> Result<SigningKey, Error> {
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?);
        warn_if_readable_by_others(path);
        SigningKey::from_hex(&text).ok_or_else(|| Error::Malformed {
            path: path.to_owned(),
        })
    }

    /// Loads the key at `path`, or creates it (mode 0600, parent directories 0700) when the
    /// file does not exist. Never overwrites. Returns the key and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(SigningKey, bool), Error> {
        match fs::symlink_metadata(path) {
            Ok(_) => return SigningKey::load(path).map(|k| (k, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let key = SigningKey::generate()?;
        let create_err = |source| Error::Create {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(create_err)?;
        }
        // `create_new` makes a concurrent init (or a file that appeared meanwhile) an error
        // instead of a silent overwrite; the mode applies from the first byte written.
        let mut file = open_new_private(path).map_err(create_err)?;
        let hex = Zeroizing::new(format!(
            "{}\n",
            data_encoding::HEXLOWER.encode(&key.inner.to_bytes())
        ));
        file.write_all(hex.as_bytes()).map_err(create_err)?;
        file.sync_all().map_err(create_err)?;
        Ok((key, true))
    }

    /// The labeler's `did:key` (`did:key:zQ3s…`).
    pub fn did_key(&self) -> &str {
        &self.did_key
    }

    /// The Multikey string (`zQ3s…`) for a DID document's `publicKeyMultibase`.
    pub fn multikey(&self) -> &str {
        &self.did_key[DID_KEY_PREFIX.len()..]
    }

    /// Signs `message` (SHA-256 inside, RFC 6979 nonce, low-S) and returns compact `r‖s`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let sig: Signature = self.inner.sign(message);
        let mut out = [0u8; 64];
        out.copy_from_slice(&sig.to_bytes());
        out
    }
}

/// Where a rotation stages the new key until the database has committed to it.
pub fn staged_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    path.with_file_name(name)
}

/// Where a rotation keeps the retired key `old` (a did:key): beside the key file, under a
/// name that is never loaded again and that every process finishing the rotation agrees on
/// (`signing.key.retired-<end of its did:key>`).
pub fn retired_path(path: &Path, old: &str) -> PathBuf {
    let tail: String = old
        .chars()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".retired-{tail}"));
    path.with_file_name(name)
}

/// Phase one of a rotation: a new key, written (0600, never overwriting) to
/// [`staged_path`]. Nothing loads it until [`finish_rotation`] moves it into place.
pub fn stage_rotation(path: &Path) -> Result<SigningKey, Error> {
    let staged = staged_path(path);
    if staged.exists() {
        return Err(Error::RotationStaged(staged));
    }
    let key = SigningKey::generate()?;
    let create_err = |source| Error::Create {
        path: staged.clone(),
        source,
    };
    let mut file = open_new_private(&staged).map_err(create_err)?;
    let hex = Zeroizing::new(format!(
        "{}\n",
        data_encoding::HEXLOWER.encode(&key.inner.to_bytes())
    ));
    file.write_all(hex.as_bytes()).map_err(create_err)?;
    file.sync_all().map_err(create_err)?;
    Ok(key)
}

/// Phase three (after the database committed to the staged key): moves the retired key `old`
/// to [`retired_path`] and the staged one into place. Idempotent: two processes finishing
/// the same rotation (the CLI that ran it and a daemon that saw it) end in the same state, and
/// a rotation interrupted between the two moves is finished by the next call. Never replaces
/// a key file with a different key. Returns where the retired key is.
pub fn finish_rotation(path: &Path, old: &str) -> Result<PathBuf, Error> {
    let staged = staged_path(path);
    let retired = retired_path(path, old);
    let holds = |p: &Path, did: &str| SigningKey::load(p).is_ok_and(|k| k.did_key() == did);
    let refuse = |from: &Path, to: &Path| Error::Rename {
        from: from.to_owned(),
        to: to.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
    };
    // A rename another process made first reports NotFound with its target in place.
    let rename = |from: &Path, to: &Path| match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && to.exists() => Ok(()),
        Err(source) => Err(Error::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
            source,
        }),
    };
    if holds(path, old) {
        // A retired file already there may only be this same key (an earlier attempt).
        if retired.exists() && !holds(&retired, old) {
            return Err(refuse(path, &retired));
        }
        rename(path, &retired)?;
    }
    if staged.exists() {
        if path.exists() {
            return Err(refuse(&staged, path));
        }
        rename(&staged, path)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(retired)
}

impl SigningKey {
    /// Loads the key the database says is active (`active`, a did:key), finishing a rotation
    /// that committed but did not move its files (the staged key is the active one). With no
    /// active key recorded, the file's key is it.
    pub fn load_active(path: &Path, active: Option<&str>) -> Result<SigningKey, Error> {
        let key = SigningKey::load(path)?;
        let Some(active) = active.filter(|a| *a != key.did_key()) else {
            return Ok(key);
        };
        let staged = staged_path(path);
        if staged.exists() {
            let next = SigningKey::load(&staged)?;
            if next.did_key() == active {
                let retired = finish_rotation(path, key.did_key())?;
                tracing::warn!(retired = %retired.display(),
                    "finished a key rotation that had committed without moving its files");
                return Ok(next);
            }
        }
        Err(Error::NotActive {
            path: path.to_owned(),
            found: key.did_key().to_owned(),
            active: active.to_owned(),
        })
    }
}

/// The key a process signs with and the `src` it signs as, shared by everything in the
/// process that signs or publishes the labeler's key.
///
/// The database records which key is active, and every signing transaction checks it: a
/// process that finds another key active (a `labeler key rotate` ran) reloads the key file
/// through [`Signer::reload`] and signs again, so no process signs with a retired key once the
/// rotation has committed, and a running daemon follows a rotation without a restart.
#[derive(Debug)]
pub struct Signer {
    path: PathBuf,
    labeler_did: Option<String>,
    current: std::sync::RwLock<std::sync::Arc<Identity>>,
}

/// A key and the `src` it signs as.
#[derive(Debug)]
pub struct Identity {
    /// The key.
    pub key: SigningKey,
    /// `labelerDid`, or the key's did:key when that is unset.
    pub src: String,
}

impl Signer {
    /// A signer for `key`, loaded from `path`. `labeler_did` is the configured `labelerDid`.
    pub fn new(path: &Path, labeler_did: Option<String>, key: SigningKey) -> Signer {
        let src = labeler_did
            .clone()
            .unwrap_or_else(|| key.did_key().to_owned());
        Signer {
            path: path.to_owned(),
            labeler_did,
            current: std::sync::RwLock::new(std::sync::Arc::new(Identity { key, src })),
        }
    }

    /// The current key and `src`.
    pub fn current(&self) -> std::sync::Arc<Identity> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Loads the key the database says is active (`active`) from the key file and makes it
    /// current.
    pub fn reload(&self, active: &str) -> Result<std::sync::Arc<Identity>, Error> {
        let key = SigningKey::load_active(&self.path, Some(active))?;
        let src = self
            .labeler_did
            .clone()
            .unwrap_or_else(|| key.did_key().to_owned());
        tracing::info!(key = %key.did_key(), %src, "signing key rotated; signing with the new key");
        let id = std::sync::Arc::new(Identity { key, src });
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = id.clone();
        Ok(id)
    }
}

/// The Multikey (`z…`) of a verifying key.
fn multikey(key: &VerifyingKey) -> String {
    let point = key.to_sec1_point(true);
    let mut bytes = Vec::with_capacity(35);
    bytes.extend_from_slice(&SECP256K1_PUB_MULTICODEC);
    bytes.extend_from_slice(point.as_bytes());
    multibase::encode(multibase::Base::Base58Btc, bytes)
}

/// A public key that can check label signatures.
///
/// Signatures are checked with libsecp256k1 (the `secp256k1` crate), not k256: a mirror checks
/// every label it receives, and libsecp256k1 does it in about half the CPU time (55 against
/// 120 µs per signature on the project's machine, BENCHMARKS.md "Mirrors"). Both accept exactly
/// the low-S compact signatures; `the_two_verifiers_agree` holds them to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    inner: VerifyingKey,
    fast: secp256k1::PublicKey,
}

impl PublicKey {
    /// Parses a `did:key:z…` or a bare Multikey `z…` for secp256k1.
    pub fn parse(s: &str) -> Result<PublicKey, Error> {
        let bad = || Error::BadPublicKey(s.chars().take(80).collect());
        let mb = s.strip_prefix(DID_KEY_PREFIX).unwrap_or(s);
        if !mb.starts_with('z') {
            return Err(bad());
        }
        let (_, bytes) = multibase::decode(mb).map_err(|_| bad())?;
        let point = bytes
            .strip_prefix(&SECP256K1_PUB_MULTICODEC[..])
            .filter(|p| p.len() == 33)
            .ok_or_else(bad)?;
        let inner = VerifyingKey::from_sec1_bytes(point).map_err(|_| bad())?;
        let fast = secp256k1::PublicKey::from_slice(point).map_err(|_| bad())?;
        Ok(PublicKey { inner, fast })
    }

    /// Checks a compact 64-byte signature over `message` (its SHA-256). High-S signatures are
    /// rejected, as <https://atproto.com/specs/cryptography> requires (libsecp256k1 accepts
    /// only lower-S signatures).
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> Result<(), Error> {
        use k256::sha2::Digest as _;
        let sig =
            secp256k1::ecdsa::Signature::from_compact(sig).map_err(|_| Error::BadSignature)?;
        let digest: [u8; 32] = k256::sha2::Sha256::digest(message).into();
        secp256k1::ecdsa::verify(&sig, secp256k1::Message::from_digest(digest), &self.fast)
            .map_err(|_| Error::BadSignature)
    }

    /// The same check with k256, the reference the fast path is tested against.
    #[cfg(test)]
    fn verify_k256(&self, message: &[u8], sig: &[u8]) -> Result<(), Error> {
        use k256::ecdsa::signature::Verifier as _;
        let sig = Signature::from_slice(sig).map_err(|_| Error::BadSignature)?;
        self.inner
            .verify(message, &sig)
            .map_err(|_| Error::BadSignature)
    }

    /// The `did:key` form.
    pub fn did_key(&self) -> String {
        format!("{DID_KEY_PREFIX}{}", multikey(&self.inner))
    }
}

/// Creates `dir` (and parents) with mode 0700 where it does not exist yet.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Opens a new file that only its owner can read or write; fails if it exists.
pub(crate) fn open_new_private(path: &Path) -> std::io::Result<fs::File> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

/// Logs a warning when the key file is readable by group or others (ssh-style hygiene).
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    "signing key file is readable by other users; chmod 600 it"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "9085d2bef69286a6cbb51623c8fa258629945cd55ca705cc4e66700396894e0c";

    #[test]
    fn debug_never_shows_the_secret() {
        let key = SigningKey::from_hex(HEX).unwrap();
        let dbg = format!("{key:?}");
        assert!(!dbg.contains(HEX) && !dbg.contains(&HEX[..16]), "{dbg}");
        assert!(dbg.contains("did:key:zQ3s"), "{dbg}");
    }

    #[test]
    fn rejects_wrong_lengths_and_non_hex() {
        assert!(SigningKey::from_hex(&HEX[..62]).is_none());
        assert!(SigningKey::from_hex(&format!("{HEX}00")).is_none());
        assert!(SigningKey::from_hex("zz").is_none());
        assert!(
            SigningKey::from_hex(&"0".repeat(64)).is_none(),
            "zero is not a valid secret"
        );
        assert!(SigningKey::from_hex(&format!("  {HEX}\n")).is_some());
    }

    #[test]
    fn signatures_round_trip_and_did_key_parses_back() {
        let key = SigningKey::generate().unwrap();
        let public = PublicKey::parse(key.did_key()).unwrap();
        assert_eq!(public.did_key(), key.did_key());
        let sig = key.sign(b"hello");
        public.verify(b"hello", &sig).unwrap();
        assert!(public.verify(b"hellO", &sig).is_err());
    }

    #[test]
    fn the_two_verifiers_agree() {
        // High-S twin of a signature: s' = n - s (the curve order n, big-endian).
        const N: [u8; 32] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xfe, 0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c,
            0xd0, 0x36, 0x41, 0x41,
        ];
        fn high_s(sig: &[u8; 64]) -> [u8; 64] {
            let mut out = *sig;
            let mut borrow = 0i16;
            for i in (0..32).rev() {
                let d = i16::from(N[i]) - i16::from(sig[32 + i]) - borrow;
                out[32 + i] = d.rem_euclid(256) as u8;
                borrow = i16::from(d < 0);
            }
            out
        }
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let public = PublicKey::parse(key.did_key()).unwrap();
        for i in 0..40u8 {
            let msg = [i; 37];
            let sig = key.sign(&msg);
            let mut flipped = sig;
            flipped[usize::from(i) % 64] ^= 1 << (i % 8);
            let mut cases = vec![
                (sig.to_vec(), msg.to_vec(), true),
                (high_s(&sig).to_vec(), msg.to_vec(), false),
                (flipped.to_vec(), msg.to_vec(), false),
                (sig.to_vec(), [i ^ 1; 37].to_vec(), false),
                (other.sign(&msg).to_vec(), msg.to_vec(), false),
                (sig[..63].to_vec(), msg.to_vec(), false),
                ([0u8; 64].to_vec(), msg.to_vec(), false),
            ];
            cases.push(([0xffu8; 64].to_vec(), msg.to_vec(), false));
            for (s, m, valid) in cases {
                let fast = public.verify(&m, &s).is_ok();
                let reference = public.verify_k256(&m, &s).is_ok();
                assert_eq!((fast, reference), (valid, valid), "case {i}: {s:02x?}");
            }
        }
    }

    #[test]
    fn public_key_parse_rejects_other_codecs() {
        // A p256 Multikey (zDn…) is a valid atproto key but not one we sign with.
        assert!(PublicKey::parse("zDnaembgSGUhZULN2Caob4HLJPaxBh92N7rtH21TErzqf8HQo").is_err());
        assert!(PublicKey::parse("did:key:").is_err());
        assert!(PublicKey::parse("not a key").is_err());
    }

    #[test]
    fn a_rotation_moves_its_files_once_and_can_be_finished_again_or_after_an_interruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let (old, _) = SigningKey::load_or_create(&path).unwrap();
        let new = stage_rotation(&path).unwrap();
        assert!(matches!(
            stage_rotation(&path),
            Err(Error::RotationStaged(_))
        ));
        assert_eq!(SigningKey::load(&path).unwrap().did_key(), old.did_key());

        let retired = finish_rotation(&path, old.did_key()).unwrap();
        assert_eq!(SigningKey::load(&path).unwrap().did_key(), new.did_key());
        assert_eq!(SigningKey::load(&retired).unwrap().did_key(), old.did_key());
        assert!(!staged_path(&path).exists());
        // A second finisher (the daemon that saw the rotation) changes nothing.
        assert_eq!(finish_rotation(&path, old.did_key()).unwrap(), retired);
        assert_eq!(SigningKey::load(&path).unwrap().did_key(), new.did_key());

        // Interrupted between the two moves: the next call puts the staged key in place.
        let newer = stage_rotation(&path).unwrap();
        let retired2 = retired_path(&path, new.did_key());
        std::fs::rename(&path, &retired2).unwrap();
        assert_eq!(finish_rotation(&path, new.did_key()).unwrap(), retired2);
        assert_eq!(SigningKey::load(&path).unwrap().did_key(), newer.did_key());
        // load_active finds the database ahead of the files and finishes the move.
        let newest = stage_rotation(&path).unwrap();
        let active = SigningKey::load_active(&path, Some(newest.did_key())).unwrap();
        assert_eq!(active.did_key(), newest.did_key());
        assert_eq!(SigningKey::load(&path).unwrap().did_key(), newest.did_key());
        assert!(matches!(
            SigningKey::load_active(&path, Some(old.did_key())),
            Err(Error::NotActive { .. })
        ));
    }

    #[test]
    fn a_rotation_never_replaces_a_different_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let (old, _) = SigningKey::load_or_create(&path).unwrap();
        // Something else already sits where the old key would be retired.
        let (other, _) = SigningKey::load_or_create(&retired_path(&path, old.did_key())).unwrap();
        stage_rotation(&path).unwrap();
        assert!(matches!(
            finish_rotation(&path, old.did_key()),
            Err(Error::Rename { .. })
        ));
        assert_eq!(SigningKey::load(&path).unwrap().did_key(), old.did_key());
        assert_eq!(
            SigningKey::load(&retired_path(&path, old.did_key()))
                .unwrap()
                .did_key(),
            other.did_key()
        );
    }
}
