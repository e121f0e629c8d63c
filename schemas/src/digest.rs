//! Content digests, shared by the envelope, the policy's schema files and the directory.

use sha2::{Digest, Sha256};

/// SHA-256 of bytes, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
