//! A policy file on disk, with the schema files its declared kinds name.
//!
//! A covenant kind may keep its schema in a file beside the policy
//! (`schema_file = "kinds/risicotaxatie.schema.json"`, pinned by `schema_sha256`). The
//! path is read relative to the policy file's directory. Broker and agents receive only
//! the signed policy text, so the operator's tooling signs it self-contained: `init` and
//! `policy sign` put each file's schema inline (its digest still pinned) before signing
//! ([`Policy::self_contained`]), and the federation's signature then covers the schema
//! itself.

use std::io::Read;
use std::path::{Path, PathBuf};

use ketenpost_schemas::directory::MAX_DOCUMENT_BYTES;
use ketenpost_schemas::payload::MAX_SCHEMA_BYTES;
use ketenpost_schemas::policy::Policy;

use crate::Error;

/// Reads a policy's `schema_file`s relative to `dir` (the policy file's directory), at
/// most one byte over the schema limit (the policy check refuses a larger file).
pub fn schema_files(dir: &Path) -> impl Fn(&str) -> Result<Vec<u8>, String> + '_ {
    move |path: &str| {
        let file = std::fs::File::open(dir.join(path)).map_err(|e| e.to_string())?;
        let mut bytes = Vec::new();
        file.take(MAX_SCHEMA_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        Ok(bytes)
    }
}

/// The directory a policy file's `schema_file`s are read from.
fn base_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn text(bytes: &[u8]) -> Result<String, ketenpost_schemas::Error> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(ketenpost_schemas::Error::TooLarge {
            what: "policy",
            size: bytes.len(),
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| ketenpost_schemas::Error::Policy {
        line: None,
        column: None,
        message: "policy is not UTF-8".into(),
    })
}

/// Check the policy file at `path` with its schema files, reporting every problem (for
/// `policy check`).
pub fn check_all(path: &Path) -> Result<Policy, Vec<ketenpost_schemas::Error>> {
    let bytes = std::fs::read(path).map_err(|e| {
        vec![ketenpost_schemas::Error::Policy {
            line: None,
            column: None,
            message: format!("cannot be read: {e}"),
        }]
    })?;
    let text = text(&bytes).map_err(|e| vec![e])?;
    let dir = base_dir(path);
    let checked = Policy::check_all_with(&text, &schema_files(&dir));
    checked
}

/// The policy file at `path` as it is signed: its exact bytes when it names no schema
/// files, else its text with every schema file put inline; with the policy it holds.
pub fn signable(path: &Path) -> Result<(Vec<u8>, Policy), Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::read(path, e))?;
    let bad = |source| Error::Policy {
        path: path.to_path_buf(),
        source,
    };
    let text = text(&bytes).map_err(bad)?;
    let dir = base_dir(path);
    let (signed, policy) = Policy::self_contained(&text, &schema_files(&dir))
        .map_err(|mut errors| bad(errors.swap_remove(0)))?;
    if signed.len() > MAX_DOCUMENT_BYTES {
        return Err(bad(ketenpost_schemas::Error::TooLarge {
            what: "policy with its schema files inline",
            size: signed.len(),
            limit: MAX_DOCUMENT_BYTES,
        }));
    }
    Ok((signed.into_bytes(), policy))
}
