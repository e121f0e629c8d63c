//! The one error type of this crate.
//!
//! Messages never include payload content or personal data: they name fields, kinds,
//! roles and parties (by OIN), never values.

/// A schema violation at one place in a payload, without the offending value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// JSON Pointer to the field, e.g. `/schulden/bedrag`; empty for the payload itself.
    pub path: String,
    /// What is wrong, naming the rule but not the value.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)
    }
}

/// Everything that can go wrong in this crate.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// An identifier (OIN, case reference, message id, trace id) is malformed.
    #[error("invalid {what}: {reason}")]
    InvalidId {
        /// Which kind of identifier.
        what: &'static str,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A name (kind, category, role, ...) is not one this crate knows.
    #[error("unknown {what} '{name}'")]
    UnknownName {
        /// What kind of name.
        what: &'static str,
        /// The name as given (names are policy vocabulary, never personal data).
        name: String,
    },
    /// A duration in a policy does not parse.
    #[error("invalid duration '{text}': {reason}")]
    InvalidDuration {
        /// The text as written in the policy.
        text: String,
        /// Why it does not parse.
        reason: &'static str,
    },
    /// A payload does not match the JSON Schema of its kind.
    #[error("{kind} payload does not match its schema: {}", list(.violations))]
    Schema {
        /// The kind whose schema was used (its name).
        kind: String,
        /// Every violation found.
        violations: Vec<Violation>,
    },
    /// A payload holds fields outside the view of the role that received it.
    #[error("{kind} body holds fields outside the '{role}' view: {}", .fields.join(", "))]
    FieldsOutsideView {
        /// The kind of the message (its name).
        kind: String,
        /// The recipient role whose view was exceeded.
        role: String,
        /// The names of the fields that should not be there.
        fields: Vec<String>,
    },
    /// The policy file is not valid.
    #[error("policy {}: {message}", location(.line, .column))]
    Policy {
        /// 1-based line of the problem, when known.
        line: Option<usize>,
        /// 1-based column of the problem, when known.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A frame could not be decoded.
    #[error("malformed envelope: {0}")]
    Decode(String),
    /// A frame or field is larger than the limit.
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// Which part is too large.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A signature does not verify.
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    /// A body's SHA-256 does not match the digest in the header.
    #[error("body {index} does not match the digest in the header")]
    DigestMismatch {
        /// Index of the body in the envelope.
        index: usize,
    },
    /// The sender is not in the directory, or is revoked.
    #[error("unknown or revoked sender {0}")]
    UnknownSender(String),
    /// A delivery carries a body that is not the recipient's own view.
    #[error("the delivery carries body {index}, which is another recipient's view")]
    NotOwnView {
        /// Index of the body in the envelope.
        index: usize,
    },
    /// A body's view is not a role of the recipient.
    #[error("the body addressed to us is the '{view}' view, which is not a role of ours")]
    ViewNotOurs {
        /// The view label.
        view: String,
    },
    /// No body of this envelope is addressed to us.
    #[error("no body in this message is addressed to {0}")]
    NotARecipient(String),
    /// Decryption failed (wrong key or corrupted ciphertext).
    #[error("cannot decrypt body: {0}")]
    Decrypt(String),
    /// Encryption failed.
    #[error("cannot encrypt body: {0}")]
    Encrypt(String),
    /// A key or signature is malformed.
    #[error("invalid {what}: {reason}")]
    InvalidKey {
        /// Which key.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Sealing is impossible under the policy or directory.
    #[error("cannot seal: {0}")]
    Seal(String),
    /// A directory document is invalid.
    #[error("directory: {0}")]
    Directory(String),
}

fn list(v: &[Violation]) -> String {
    v.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn location(line: &Option<usize>, column: &Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("line {l}, column {c}"),
        (Some(l), None) => format!("line {l}"),
        _ => "(whole file)".to_owned(),
    }
}
