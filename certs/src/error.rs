//! The one error type of this crate.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while creating or loading a dev federation, or while
/// reading the OIN out of a certificate.
///
/// [`Error::is_config_error`] tells a caller (the binary) which errors are the user's to
/// fix (bad input, occupied output directory) and which are failures of the tool or the
/// system.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read: an input (policy, roster) or a file the manifest names.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The covenant policy does not parse or fails the policy checks of `ketenpost-schemas`.
    #[error("invalid policy {}: {source}", .path.display())]
    Policy {
        /// The policy file.
        path: PathBuf,
        /// The problem, with line and column where known.
        source: ketenpost_schemas::Error,
    },
    /// The roster (the list of parties) is invalid: bad TOML, a duplicate or malformed OIN,
    /// a role the policy does not define, a party without roles, an unusable name.
    #[error("invalid roster{}: {reason}", display_opt(.path))]
    Roster {
        /// The roster file, when the roster came from one.
        path: Option<PathBuf>,
        /// What is wrong.
        reason: String,
    },
    /// The output directory is not empty and `force` was not given. Refusing protects an
    /// existing federation (and its keys) from being replaced by accident.
    #[error("{} is not empty; pass --force to replace the federation in it", .path.display())]
    OutDirNotEmpty {
        /// The output directory.
        path: PathBuf,
    },
    /// The output path exists and is not a directory.
    #[error("{} exists and is not a directory", .path.display())]
    OutNotDirectory {
        /// The output path.
        path: PathBuf,
    },
    /// Creating, writing or removing a file or directory of the federation failed.
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Generating a key, certificate or CRL failed.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// The error from the certificate library.
        source: rcgen::Error,
    },
    /// The clock (the `now` the federation is created at) is outside what a certificate
    /// can express.
    #[error("time out of range for a certificate: {0}")]
    Time(&'static str),
    /// A document built with `ketenpost-schemas` (directory, keys) was rejected by it, or a
    /// signed document of a loaded federation does not verify.
    #[error("{what}: {source}")]
    Schemas {
        /// Which document or key.
        what: &'static str,
        /// The error from `ketenpost-schemas`.
        source: ketenpost_schemas::Error,
    },
    /// A generated document could not be serialised.
    #[error("cannot serialise {what}: {reason}")]
    Serialize {
        /// Which document.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// `federation.toml` is missing entries, does not parse or names a path outside the
    /// federation directory.
    #[error("federation manifest {}: {reason}", .path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The bytes are not one X.509 certificate (DER, or PEM where PEM is accepted).
    #[error("not an X.509 certificate: {0}")]
    BadCertificate(String),
    /// The certificate's subject has no serialNumber attribute (OID 2.5.4.5), so it names
    /// no organisation. A PKIoverheid certificate always carries the OIN there.
    #[error("certificate subject has no serialNumber (OIN)")]
    NoOin,
    /// The certificate's subject serialNumber is not a usable OIN: not a string, not 20
    /// digits, or present more than once (which would make the identity ambiguous).
    #[error("certificate subject serialNumber is not an OIN: {reason}")]
    BadOin {
        /// Why it is rejected (the value itself is not repeated).
        reason: &'static str,
    },
}

impl Error {
    /// Whether the error is the user's to fix: unreadable or invalid input, or an output
    /// directory that may not be used. The binary exits with code 64 (EX_USAGE) for these.
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            Error::Read { .. }
                | Error::Policy { .. }
                | Error::Roster { .. }
                | Error::OutDirNotEmpty { .. }
                | Error::OutNotDirectory { .. }
        )
    }

    pub(crate) fn write(path: &Path, source: std::io::Error) -> Error {
        Error::Write {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn read(path: &Path, source: std::io::Error) -> Error {
        Error::Read {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn generate(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
        move |source| Error::Generate { what, source }
    }
}

fn display_opt(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" {}", p.display()),
        None => String::new(),
    }
}
