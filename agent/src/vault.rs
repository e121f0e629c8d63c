//! Payloads at rest: encrypted under per-message data keys, kept apart from the database,
//! so that deleting a message or a case destroys its keys (crypto-shredding).
//!
//! sled never overwrites: a removed value stays in its log files until the log is
//! compacted, which nothing guarantees. So the database holds no personal data in the
//! clear. Every field of a record that can hold payload (an inbox entry's `payload`, a
//! breach notice's `reseal`) is sealed with XChaCha20-Poly1305 under a data key of its own
//! message, with the record's message id and case as associated data.
//!
//! ```text
//! <data_dir>/vault/agent.key                      the agent's key-wrapping key (0600)
//! <data_dir>/vault/index.key                      the key of the identifier index (0600)
//! <data_dir>/vault/cases/<case>/<message>.key     a data key, wrapped by the agent's key
//! ```
//!
//! (`<case>` is a SHA-256 of the case reference, `<message>` the message id.) A data key
//! is written and synced before the record it protects, and destroyed before the record
//! is removed: overwritten, synced, unlinked and its folder synced. A record whose key is
//! gone cannot be read any more; it counts as deleted. Deleting a case removes its whole
//! folder first; the deletion confirmation is signed only after that.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use ketenpost_schemas::ids::{CaseRef, MessageId};

use crate::Error;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// Associated data of a wrapped key: what it is and whose.
const WRAP_CONTEXT: &[u8] = b"ketenpost-agent data key v1\0";
/// Associated data of a sealed field.
const SEAL_CONTEXT: &[u8] = b"ketenpost-agent sealed field v1\0";

/// The agent's key store. See the module docs.
pub struct Vault {
    dir: PathBuf,
    wrapping: XChaCha20Poly1305,
    /// The key of the blind index of identifiers (`crate::rights`): without it, an index
    /// entry cannot be linked to a BSN by trying every number.
    index: [u8; KEY_LEN],
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("dir", &self.dir).finish()
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::io(what, e)
}

/// Write `bytes` to `path` durably: a temporary file, synced, renamed, folder synced.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Vault(format!("{} has no folder", path.display())))?;
    let tmp = path.with_extension("tmp");
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts
            .open(&tmp)
            .map_err(io(format!("cannot create {}", tmp.display())))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(io(format!("cannot write {}", tmp.display())))?;
    }
    fs::rename(&tmp, path).map_err(io(format!("cannot rename to {}", path.display())))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("cannot sync {}", dir.display())))
}

/// Overwrite a key file with zeros and sync, then unlink it; whether there was one.
fn shred_file(path: &Path) -> Result<bool, Error> {
    match fs::OpenOptions::new().write(true).open(path) {
        Ok(mut f) => {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let zeros = vec![0u8; usize::try_from(len).unwrap_or(0)];
            f.write_all(&zeros)
                .and_then(|()| f.sync_all())
                .map_err(io(format!("cannot overwrite {}", path.display())))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("cannot open {}", path.display()), e)),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(Error::io(format!("cannot remove {}", path.display()), e)),
    }
}

/// Read the 32-byte key `<dir>/<name>`, or make and store one on first use.
fn read_or_create_key(dir: &Path, name: &str) -> Result<Key, Error> {
    let key_path = dir.join(name);
    match fs::read(&key_path) {
        Ok(bytes) if bytes.len() == KEY_LEN => Ok(Key::clone_from_slice(&bytes)),
        Ok(_) => Err(Error::Vault(format!(
            "{} is not a {KEY_LEN}-byte key; restore it from the backup",
            key_path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = XChaCha20Poly1305::generate_key(&mut OsRng);
            write_durably(&key_path, key.as_slice())?;
            sync_dir(dir)?;
            Ok(key)
        }
        Err(e) => Err(Error::io(format!("cannot read {}", key_path.display()), e)),
    }
}

impl Vault {
    /// Open the vault in `<data_dir>/vault`, creating it and the agent's wrapping key on
    /// first use.
    pub fn open(data_dir: &Path) -> Result<Vault, Error> {
        let dir = data_dir.join("vault");
        fs::create_dir_all(dir.join("cases"))
            .map_err(io(format!("cannot create {}", dir.display())))?;
        let key = read_or_create_key(&dir, "agent.key")?;
        let index = read_or_create_key(&dir, "index.key")?;
        Ok(Vault {
            dir,
            wrapping: XChaCha20Poly1305::new(&key),
            index: index.into(),
        })
    }

    /// The blind index key of `identifier` (already normalised): HMAC-SHA256 under the
    /// agent's index key.
    pub fn blind(&self, identifier: &str) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        // HMAC takes a key of any length; a 32-byte key cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.index)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        mac.update(b"ketenpost-agent identifier v1\0");
        mac.update(identifier.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn case_dir(&self, case: &CaseRef) -> PathBuf {
        let h = Sha256::digest(case.as_str().as_bytes());
        self.dir.join("cases").join(hex::encode(&h[..16]))
    }

    fn key_path(&self, case: &CaseRef, id: &MessageId) -> PathBuf {
        self.case_dir(case)
            .join(format!("{}.key", id.0.as_simple()))
    }

    fn aad(context: &[u8], case: &CaseRef, id: &MessageId) -> Vec<u8> {
        let mut aad = Vec::with_capacity(context.len() + 64);
        aad.extend_from_slice(context);
        aad.extend_from_slice(case.as_str().as_bytes());
        aad.push(0);
        aad.extend_from_slice(id.0.as_bytes());
        aad
    }

    /// The data key of a message: read and unwrapped, or `None` when it was destroyed.
    fn data_key(&self, case: &CaseRef, id: &MessageId) -> Result<Option<Key>, Error> {
        let path = self.key_path(case, id);
        let wrapped = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        if wrapped.len() < NONCE_LEN {
            return Err(Error::Vault(format!("{} is cut short", path.display())));
        }
        let (nonce, ct) = wrapped.split_at(NONCE_LEN);
        let key = self
            .wrapping
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: &Self::aad(WRAP_CONTEXT, case, id),
                },
            )
            .map_err(|_| {
                Error::Vault(format!(
                    "{} does not unwrap with the agent's key",
                    path.display()
                ))
            })?;
        if key.len() != KEY_LEN {
            return Err(Error::Vault(format!(
                "{} is not a data key",
                path.display()
            )));
        }
        Ok(Some(Key::clone_from_slice(&key)))
    }

    /// The data key of a message, made (and written durably) when it has none yet.
    fn data_key_or_new(&self, case: &CaseRef, id: &MessageId) -> Result<Key, Error> {
        if let Some(k) = self.data_key(case, id)? {
            return Ok(k);
        }
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let wrapped = self
            .wrapping
            .encrypt(
                &nonce,
                Payload {
                    msg: key.as_slice(),
                    aad: &Self::aad(WRAP_CONTEXT, case, id),
                },
            )
            .map_err(|_| Error::Vault("cannot wrap a data key".into()))?;
        let dir = self.case_dir(case);
        let fresh = !dir.exists();
        fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
        if fresh {
            sync_dir(&self.dir.join("cases"))?;
        }
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&wrapped);
        write_durably(&self.key_path(case, id), &bytes)?;
        Ok(key)
    }

    /// Seal `plaintext` under the data key of message `id` of `case` (made when needed):
    /// base64 of nonce and ciphertext.
    pub fn seal(&self, case: &CaseRef, id: &MessageId, plaintext: &[u8]) -> Result<String, Error> {
        let key = self.data_key_or_new(case, id)?;
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = XChaCha20Poly1305::new(&key)
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &Self::aad(SEAL_CONTEXT, case, id),
                },
            )
            .map_err(|_| Error::Vault("cannot seal a record".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// Open what [`Vault::seal`] sealed; `None` when the message's key was destroyed
    /// (the record is deleted, only its unreadable bytes remain).
    pub fn open_sealed(
        &self,
        case: &CaseRef,
        id: &MessageId,
        sealed: &str,
    ) -> Result<Option<Vec<u8>>, Error> {
        let Some(key) = self.data_key(case, id)? else {
            return Ok(None);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|e| Error::corrupt("sealed record", e))?;
        if bytes.len() < NONCE_LEN {
            return Err(Error::Vault("a sealed record is cut short".into()));
        }
        let (nonce, ct) = bytes.split_at(NONCE_LEN);
        XChaCha20Poly1305::new(&key)
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: &Self::aad(SEAL_CONTEXT, case, id),
                },
            )
            .map(Some)
            .map_err(|_| {
                Error::Vault(
                    "a sealed record does not open with its data key (tampered or corrupt)".into(),
                )
            })
    }

    /// Destroy the data key of one message (local retention). Durable when it returns.
    pub fn destroy_message(&self, case: &CaseRef, id: &MessageId) -> Result<(), Error> {
        if shred_file(&self.key_path(case, id))? {
            sync_dir(&self.case_dir(case))?;
        }
        Ok(())
    }

    /// Destroy every data key of a case (deleting the case). Durable when it returns;
    /// returns how many keys were destroyed.
    pub fn destroy_case(&self, case: &CaseRef) -> Result<usize, Error> {
        let dir = self.case_dir(case);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(format!("cannot list {}", dir.display()), e)),
        };
        let mut n = 0;
        for entry in entries {
            let path = entry
                .map_err(io(format!("cannot list {}", dir.display())))?
                .path();
            shred_file(&path)?;
            n += 1;
        }
        sync_dir(&dir)?;
        fs::remove_dir(&dir).map_err(io(format!("cannot remove {}", dir.display())))?;
        sync_dir(&self.dir.join("cases"))?;
        Ok(n)
    }

    /// Whether message `id` of `case` has a data key.
    pub fn holds_message(&self, case: &CaseRef, id: &MessageId) -> bool {
        self.key_path(case, id).exists()
    }

    /// Whether any data key of `case` is left.
    pub fn holds_case(&self, case: &CaseRef) -> bool {
        fs::read_dir(self.case_dir(case)).is_ok_and(|mut d| d.next().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(n: u8) -> CaseRef {
        let c = char::from(b'a' + n);
        format!("case-{}", c.to_string().repeat(26))
            .parse()
            .expect("case ref")
    }

    #[test]
    fn a_sealed_field_opens_until_its_key_is_destroyed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = Vault::open(dir.path()).expect("vault");
        let (c, id) = (case(1), MessageId::new());
        let sealed = v.seal(&c, &id, b"marker-7f3a").expect("seal");
        assert!(!sealed.contains("marker"));
        assert_eq!(
            v.open_sealed(&c, &id, &sealed).expect("open").as_deref(),
            Some(&b"marker-7f3a"[..])
        );
        // Another message's or case's associated data does not open it.
        let other = MessageId::new();
        v.seal(&c, &other, b"x").expect("seal other");
        assert!(v.open_sealed(&c, &other, &sealed).is_err());
        v.destroy_message(&c, &id).expect("destroy");
        assert_eq!(v.open_sealed(&c, &id, &sealed).expect("open"), None);
        assert!(v.holds_case(&c), "the other message's key stays");
        assert_eq!(v.destroy_case(&c).expect("destroy case"), 1);
        assert!(!v.holds_case(&c));
    }

    #[test]
    fn the_wrapping_key_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, id) = (case(2), MessageId::new());
        let sealed = Vault::open(dir.path())
            .expect("vault")
            .seal(&c, &id, b"kept")
            .expect("seal");
        let again = Vault::open(dir.path()).expect("reopen");
        assert_eq!(
            again
                .open_sealed(&c, &id, &sealed)
                .expect("open")
                .as_deref(),
            Some(&b"kept"[..])
        );
    }
}
