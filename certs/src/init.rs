//! `init`: generate a dev federation in memory, then write it out.
//!
//! Generation and writing are separate steps: everything (keys, certificates, CRL, signed
//! documents, manifest) is built first, and only then is the output directory touched, so
//! a bad policy or roster never leaves half a federation behind. `federation.toml` is
//! written last; a directory without it is not a finished federation.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;
use chrono::{DateTime, Utc};
use ketenpost_schemas::directory::{self, BrokerEntry, Directory, FgEntry, FgScope, Party};
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::keys::{self, Context};
use ketenpost_schemas::policy::{Policy, Role};
use serde::Serialize;
use time::{Duration, OffsetDateTime};

use crate::federation::{
    BrokerFiles, CaFiles, CertFiles, Federation, FederationKeyFiles, FgFiles, NegativeFiles,
    PartyFiles, SignedFile, MANIFEST_FILE, MANIFEST_FORMAT,
};
use crate::pki::{self, Ca, Issued, Serials, Validity, BROKER_SERVER_NAMES};
use crate::roster::{dev_oin, Roster};
use crate::Error;

/// Name of the broker in the directory.
pub const BROKER_NAME: &str = "ketenpost broker (dev)";

/// Subject CN of the dev CA.
pub const CA_NAME: &str = "ketenpost dev federation CA";

/// Subject CN of the foreign CA of the negative material.
pub const FOREIGN_CA_NAME: &str = "ketenpost foreign CA (untrusted)";

/// Name in the wrong-OIN certificate.
pub const WRONG_OIN_NAME: &str = "Onbekende organisatie (dev)";

/// Top-level entries `init` writes; with `force`, exactly these are removed first and
/// anything else in the output directory is left alone.
pub const WRITTEN_ENTRIES: &[&str] = &[
    MANIFEST_FILE,
    "federation",
    "ca",
    "broker",
    "parties",
    "fg",
    "negative",
    "policy.toml",
    "policy.toml.sig",
    "directory.json",
    "directory.json.sig",
];

/// How long leaf certificates (broker, parties) are valid.
const LEAF_DAYS: i64 = 2 * 365;
/// How long the CAs are valid: longer than any leaf they issue.
const CA_DAYS: i64 = 3 * 365;

/// What [`init`] should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitOptions {
    /// The covenant policy (TOML). Copied byte for byte and signed; a kind's
    /// `schema_file` is put inline first ([`crate::policy_file`]).
    pub policy: PathBuf,
    /// The output directory; created if missing.
    pub out: PathBuf,
    /// A roster file (`[[party]]` tables); without one, one party per policy role.
    pub roster: Option<PathBuf>,
    /// Replace an existing federation in a non-empty `out`. Without it `init` refuses,
    /// so a federation's keys are never overwritten by accident.
    pub force: bool,
    /// The time the federation is created at: certificate validity and the directory's
    /// `issued_at` count from here. A parameter so tests can pin it.
    pub now: DateTime<Utc>,
}

impl InitOptions {
    /// Options for `policy` and `out`, with the default roster, no force, and now.
    pub fn new(policy: impl Into<PathBuf>, out: impl Into<PathBuf>) -> InitOptions {
        InitOptions {
            policy: policy.into(),
            out: out.into(),
            roster: None,
            force: false,
            now: Utc::now(),
        }
    }
}

/// Create a complete dev federation (see the crate docs for the layout) and return it as
/// loaded back from its manifest.
pub fn init(opts: &InitOptions) -> Result<Federation, Error> {
    let (policy_bytes, policy) = crate::policy_file::signable(&opts.policy)?;
    let roster = match &opts.roster {
        Some(path) => {
            let text = fs::read_to_string(path).map_err(|e| Error::read(path, e))?;
            let roster = Roster::from_toml(&text).map_err(|e| with_roster_path(e, path))?;
            roster
                .check(&policy)
                .map_err(|e| with_roster_path(e, path))?;
            roster
        }
        None => {
            let roster = Roster::default_for(&policy)?;
            roster.check(&policy)?;
            roster
        }
    };
    let occupied = out_dir_occupied(&opts.out)?;
    if occupied && !opts.force {
        return Err(Error::OutDirNotEmpty {
            path: opts.out.clone(),
        });
    }
    let files = generate(&policy_bytes, &policy, &roster, opts.now)?;
    if occupied {
        remove_previous(&opts.out)?;
    }
    write_files(&opts.out, &files)?;
    Federation::load(&opts.out)
}

fn with_roster_path(e: Error, path: &Path) -> Error {
    match e {
        Error::Roster { reason, .. } => Error::Roster {
            path: Some(path.to_path_buf()),
            reason,
        },
        other => other,
    }
}

// ---- generation, in memory -------------------------------------------------------------

/// One file to write, relative to the output directory.
#[derive(Debug)]
struct OutFile {
    rel: PathBuf,
    contents: Vec<u8>,
    /// Private key material: created with mode 0600, in a 0700 directory.
    secret: bool,
}

#[derive(Debug, Default)]
struct Files(Vec<OutFile>);

impl Files {
    fn public(&mut self, rel: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> PathBuf {
        self.add(rel.into(), contents.into(), false)
    }

    fn secret(&mut self, rel: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> PathBuf {
        self.add(rel.into(), contents.into(), true)
    }

    fn add(&mut self, rel: PathBuf, contents: Vec<u8>, secret: bool) -> PathBuf {
        self.0.push(OutFile {
            rel: rel.clone(),
            contents,
            secret,
        });
        rel
    }

    /// A certificate and its key in `dir`, as `cert.pem` and `key.pem`.
    fn cert_pair(&mut self, dir: &Path, issued: &Issued) -> (PathBuf, PathBuf) {
        let cert = self.public(dir.join("cert.pem"), issued.cert_pem.as_bytes());
        let key = self.secret(dir.join("key.pem"), issued.key_pem.as_bytes());
        (cert, key)
    }
}

/// The exact contents of `party.toml`.
#[derive(Serialize)]
struct PartyToml<'a> {
    oin: &'a Oin,
    name: &'a str,
    roles: &'a [Role],
}

fn line(text: &str) -> String {
    format!("{text}\n")
}

fn to_time(now: DateTime<Utc>) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::from_unix_timestamp(now.timestamp())
        .map_err(|_| Error::Time("the clock is outside the range of a certificate date"))
}

fn generate(
    policy_bytes: &[u8],
    policy: &Policy,
    roster: &Roster,
    now: DateTime<Utc>,
) -> Result<Vec<OutFile>, Error> {
    let t = to_time(now)?;
    let leaf = Validity::around(t, -Duration::hours(1), Duration::days(LEAF_DAYS))?;
    let ca_validity = Validity::around(t, -Duration::hours(1), Duration::days(CA_DAYS))?;
    let mut serials = Serials::default();
    let mut files = Files::default();

    // The federation key signs the policy and the directory.
    let federation_key = keys::generate_signing_key();
    let federation = FederationKeyFiles {
        signing_key: files.secret(
            "federation/signing.key",
            line(&keys::signing_key_to_text(&federation_key)),
        ),
        public_key: files.public(
            "federation/signing.pub",
            line(&keys::verifying_key_to_text(
                &federation_key.verifying_key(),
            )),
        ),
    };

    let ca = Ca::new(
        CA_NAME,
        &format!("ketenpost dev federation ({})", policy.covenant.id),
        ca_validity,
        &mut serials,
    )?;
    let ca_cert = files.public("ca/ca.pem", ca.issued.cert_pem.as_bytes());
    let ca_key = files.secret("ca/ca.key", ca.issued.key_pem.as_bytes());

    // Broker: TLS server certificate for loopback and its checkpoint key.
    let broker_tls = ca.server_cert(BROKER_NAME, leaf, &mut serials)?;
    let broker_signing = keys::generate_signing_key();
    let (broker_cert, broker_key) = files.cert_pair(Path::new("broker"), &broker_tls);
    let broker = BrokerFiles {
        name: BROKER_NAME.into(),
        cert: broker_cert,
        key: broker_key,
        signing_key: files.secret(
            "broker/signing.key",
            line(&keys::signing_key_to_text(&broker_signing)),
        ),
        server_names: BROKER_SERVER_NAMES.iter().map(|s| s.to_string()).collect(),
    };

    // Parties.
    let mut entries = Vec::with_capacity(roster.parties.len());
    let mut parties = Vec::with_capacity(roster.parties.len());
    for p in &roster.parties {
        let dir = PathBuf::from("parties").join(p.oin.as_str());
        let tls = ca.client_cert(&p.name, &p.oin, leaf, &mut serials)?;
        let signing = keys::generate_signing_key();
        let age = keys::generate_age_identity();
        let (cert, key) = files.cert_pair(&dir, &tls);
        let party_toml = toml::to_string(&PartyToml {
            oin: &p.oin,
            name: &p.name,
            roles: &p.roles,
        })
        .map_err(|e| Error::Serialize {
            what: "party.toml",
            reason: e.to_string(),
        })?;
        parties.push(PartyFiles {
            oin: p.oin.clone(),
            name: p.name.clone(),
            roles: p.roles.clone(),
            signing_key: files.secret(
                dir.join("signing.key"),
                line(&keys::signing_key_to_text(&signing)),
            ),
            age_key: files.secret(dir.join("age.key"), line(age.to_string().expose_secret())),
            party_toml: files.public(dir.join("party.toml"), party_toml),
            cert,
            key,
            dir,
        });
        entries.push(Party {
            oin: p.oin.clone(),
            name: p.name.clone(),
            roles: p.roles.clone(),
            signing_key: keys::verifying_key_to_text(&signing.verifying_key()),
            age_recipient: age.to_public().to_string(),
            cert_fingerprint: pki::fingerprint(&tls.der),
            fg_contact: p.fg_contact(),
            revoked: false,
            previous_keys: Vec::new(),
        });
    }

    // FG credentials: one per party's FG (its organisation's records) and one for the
    // federation's FG (every record), held by the first party's organisation.
    let mut fg_entries = Vec::new();
    let mut fgs = Vec::new();
    let federation_fg = roster.parties.first().map(|p| {
        (
            p.oin.clone(),
            format!("FG federatie {}", policy.covenant.id),
            FgScope::Covenant,
            PathBuf::from("fg").join("federation"),
        )
    });
    let own_fgs = roster.parties.iter().map(|p| {
        (
            p.oin.clone(),
            format!("FG {}", p.name),
            FgScope::Organisation,
            PathBuf::from("fg").join(p.oin.as_str()),
        )
    });
    for (oin, name, scope, dir) in own_fgs.chain(federation_fg) {
        let tls = ca.client_cert(&name, &oin, leaf, &mut serials)?;
        let (cert, key) = files.cert_pair(&dir, &tls);
        fg_entries.push(FgEntry {
            oin: oin.clone(),
            name: name.clone(),
            cert_fingerprint: pki::fingerprint(&tls.der),
            scope,
        });
        fgs.push(FgFiles {
            oin,
            name,
            scope,
            cert,
            key,
        });
    }

    // The signed documents: the policy exactly as given, the directory as pretty JSON.
    let directory = Directory {
        covenant: policy.covenant.id.clone(),
        serial: 1,
        issued_at: now,
        policy_sha256: ketenpost_schemas::digest::sha256_hex(policy_bytes),
        fgs: fg_entries,
        broker: BrokerEntry {
            name: BROKER_NAME.into(),
            signing_key: keys::verifying_key_to_text(&broker_signing.verifying_key()),
            cert_fingerprint: pki::fingerprint(&broker_tls.der),
        },
        parties: entries,
    };
    directory.check(policy).map_err(|source| Error::Schemas {
        what: "generated directory",
        source,
    })?;
    let mut directory_json =
        serde_json::to_vec_pretty(&directory).map_err(|e| Error::Serialize {
            what: "directory",
            reason: e.to_string(),
        })?;
    directory_json.push(b'\n');
    let directory_sig =
        directory::sign_document(&federation_key, Context::Directory, &directory_json);
    let policy_sig = directory::sign_document(&federation_key, Context::Policy, policy_bytes);
    let policy_files = SignedFile {
        file: files.public("policy.toml", policy_bytes),
        sig: files.public("policy.toml.sig", line(&policy_sig)),
    };
    let directory_files = SignedFile {
        file: files.public("directory.json", directory_json),
        sig: files.public("directory.json.sig", line(&directory_sig)),
    };

    // Negative material. All but wrong-oin impersonate the first party, so that the only
    // thing wrong with them is the certificate itself.
    let first = roster.parties.first().ok_or_else(|| Error::Roster {
        path: None,
        reason: "the roster names no parties".into(),
    })?;
    let expired_validity = Validity::around(t, -Duration::days(30), -Duration::days(1))?;
    let expired = ca.client_cert(&first.name, &first.oin, expired_validity, &mut serials)?;
    let revoked = ca.client_cert(&first.name, &first.oin, leaf, &mut serials)?;
    let foreign_ca = Ca::new(
        FOREIGN_CA_NAME,
        "ketenpost foreign (untrusted)",
        ca_validity,
        &mut serials,
    )?;
    let foreign = foreign_ca.client_cert(&first.name, &first.oin, leaf, &mut serials)?;
    let wrong_oin = unused_oin(roster)?;
    let wrong = ca.client_cert(WRONG_OIN_NAME, &wrong_oin, leaf, &mut serials)?;

    let crl_next_update = t
        .checked_add(Duration::days(LEAF_DAYS))
        .ok_or(Error::Time("CRL next update overflows"))?;
    let crl = ca.crl(&[revoked.serial.as_slice()], t, crl_next_update)?;
    let ca_crl = files.public("ca/crl.pem", crl);

    let negative_cert = |files: &mut Files, dir: &str, oin: &Oin, issued: &Issued| {
        let (cert, key) = files.cert_pair(&Path::new("negative").join(dir), issued);
        CertFiles {
            oin: oin.clone(),
            cert,
            key,
        }
    };
    let negative = NegativeFiles {
        expired: negative_cert(&mut files, "expired", &first.oin, &expired),
        revoked: negative_cert(&mut files, "revoked", &first.oin, &revoked),
        revoked_serial: hex::encode(&revoked.serial),
        foreign: negative_cert(&mut files, "foreign", &first.oin, &foreign),
        foreign_ca: files.public(
            "negative/foreign/ca.pem",
            foreign_ca.issued.cert_pem.as_bytes(),
        ),
        wrong_oin: negative_cert(&mut files, "wrong-oin", &wrong_oin, &wrong),
    };

    // The manifest, last.
    let manifest = Federation {
        format: MANIFEST_FORMAT,
        covenant: policy.covenant.id.clone(),
        created_at: now,
        dir: PathBuf::new(),
        federation,
        ca: CaFiles {
            cert: ca_cert,
            key: ca_key,
            crl: ca_crl,
        },
        policy: policy_files,
        directory: directory_files,
        broker,
        negative,
        parties,
        fgs,
    };
    let manifest_text = toml::to_string(&manifest).map_err(|e| Error::Serialize {
        what: "federation.toml",
        reason: e.to_string(),
    })?;
    files.public(
        MANIFEST_FILE,
        format!(
            "# ketenpost dev federation for covenant '{}'. Paths are relative to this \
             directory.\n# Generated by ketenpost-certs; for development and tests only.\n\n{}",
            policy.covenant.id, manifest_text
        ),
    );
    Ok(files.0)
}

/// An OIN of the dev range that no party of the roster has.
fn unused_oin(roster: &Roster) -> Result<Oin, Error> {
    let taken: BTreeSet<&Oin> = roster.parties.iter().map(|p| &p.oin).collect();
    for b in (1..=999_999).rev() {
        let oin = dev_oin(999_999, b)?;
        if !taken.contains(&oin) {
            return Ok(oin);
        }
    }
    Err(Error::Roster {
        path: None,
        reason: "the roster uses every OIN of the wrong-OIN range".into(),
    })
}

// ---- writing ---------------------------------------------------------------------------

/// Whether `out` exists with something in it. A missing `out` is fine; a file is not.
fn out_dir_occupied(out: &Path) -> Result<bool, Error> {
    match fs::metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::read(out, e)),
        Ok(m) if !m.is_dir() => Err(Error::OutNotDirectory {
            path: out.to_path_buf(),
        }),
        Ok(_) => {
            let mut entries = fs::read_dir(out).map_err(|e| Error::read(out, e))?;
            Ok(entries.next().is_some())
        }
    }
}

/// Remove what a previous `init` wrote (and nothing else).
fn remove_previous(out: &Path) -> Result<(), Error> {
    for name in WRITTEN_ENTRIES {
        let path = out.join(name);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::write(&path, e)),
        };
        let removed = if meta.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(|e| Error::write(&path, e))?;
    }
    Ok(())
}

/// Write every file with `create_new`, so nothing is followed or overwritten, and secrets
/// with mode 0600 from the moment they exist (no chmod afterwards, so no window in which
/// another user could open them). Directories holding secrets are 0700.
fn write_files(out: &Path, files: &[OutFile]) -> Result<(), Error> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(out)
        .map_err(|e| Error::write(out, e))?;
    let secret_dirs: BTreeSet<&Path> = files
        .iter()
        .filter(|f| f.secret)
        .filter_map(|f| f.rel.parent())
        .collect();
    for f in files {
        if let Some(parent) = f.rel.parent() {
            let mut dir = PathBuf::new();
            for component in parent.components() {
                dir.push(component);
                let full = out.join(&dir);
                if full.is_dir() {
                    continue;
                }
                let mode = if secret_dirs.contains(dir.as_path()) {
                    0o700
                } else {
                    0o755
                };
                DirBuilder::new()
                    .mode(mode)
                    .create(&full)
                    .map_err(|e| Error::write(&full, e))?;
            }
        }
        let path = out.join(&f.rel);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if f.secret { 0o600 } else { 0o644 })
            .open(&path)
            .map_err(|e| Error::write(&path, e))?;
        file.write_all(&f.contents)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::write(&path, e))?;
    }
    Ok(())
}

/// What `ketenpost-certs init` made, as it prints it: the CA, the broker, the directory,
/// each party with its roles, and where the federation key is (paths relative to the
/// federation folder). Ends with a newline.
pub fn init_summary(fed: &Federation) -> String {
    use std::fmt::Write as _;
    let rel = |p: &Path| p.strip_prefix(&fed.dir).unwrap_or(p).display().to_string();
    let mut out = format!(
        "created dev federation for covenant '{}' in {}\n",
        fed.covenant,
        fed.dir.display()
    );
    let _ = writeln!(out, "  CA         {}", rel(&fed.ca.cert));
    let _ = writeln!(
        out,
        "  broker     {} ({})",
        rel(&fed.broker.cert),
        fed.broker.server_names.join(", ")
    );
    let _ = writeln!(
        out,
        "  directory  {} ({} parties, signed)",
        rel(&fed.directory.file),
        fed.parties.len()
    );
    for p in &fed.parties {
        let roles: Vec<&str> = p.roles.iter().map(|r| r.as_str()).collect();
        let _ = writeln!(
            out,
            "  party      {}  {}  [{}]",
            p.oin,
            p.name,
            roles.join(", ")
        );
    }
    out.push_str("  negative   expired, revoked, foreign, wrong-oin in negative/\n");
    let _ = writeln!(
        out,
        "federation key: {} (development only; in production it stays offline)",
        rel(&fed.federation.signing_key)
    );
    out
}
