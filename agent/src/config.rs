//! The agent's configuration: one TOML file, parsed once into typed structs.
//!
//! ```toml
//! oin = "00000001000000000001"          # this organisation
//! data_dir = "/var/lib/ketenpost-agent"  # sled database: outbox, inbox, mirrors
//!
//! [broker]
//! address = "broker.example.nl:4433"    # host:port (UDP, QUIC)
//! server_name = "broker.example.nl"     # name on the broker's certificate
//! transport = "auto"                     # "quic", "tcp" or "auto" (default)
//! tcp_address = "broker.example.nl:4433" # host:port of the broker's TLS over TCP (optional)
//!
//! [tls]                                  # mTLS towards the broker
//! ca = "ca/ca.pem"
//! cert = "parties/00000001000000000001/cert.pem"
//! key = "parties/00000001000000000001/key.pem"
//!
//! [keys]
//! signing_key = "parties/00000001000000000001/signing.key"  # ed25519, headers and records
//! age_identity = "parties/00000001000000000001/age.key"     # decrypts our views
//! previous_age_identities = []          # after a key rotation: the former age.key
//! federation_public_key_file = "federation/signing.pub"    # or federation_public_key = "<base64>"
//!
//! [api]
//! listen = "127.0.0.1:8480"             # keep it on loopback
//! token_file = "api.token"              # bearer token, at least 16 characters
//!
//! [timing]                               # all optional
//! fetch_wait_ms = 10000                  # long poll at the broker
//! retry_min_ms = 200                     # backoff after a failure, doubling ...
//! retry_max_ms = 30000                   # ... up to this
//! request_timeout_ms = 15000
//! checkpoint_interval_secs = 60
//! documents_refresh_secs = 3600
//! sweep_interval_secs = 60               # local retention
//! startup_wait_secs = 60                 # how long to wait for a first set of documents
//!
//! [inbox]
//! keep_acknowledged_hours = 0            # keep a payload this long after the ack
//! ```
//!
//! Relative paths are taken relative to the configuration file's folder. Every problem is
//! an [`Error::Config`], on which the binary exits with code 64.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::keys::{self, SigningKey, VerifyingKey};
use ketenpost_transport::tls::ClientTls;
use serde::Deserialize;

use crate::Error;

/// How the agent reaches the broker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportMode {
    /// QUIC (UDP) only, to `broker.address`.
    Quic,
    /// TLS 1.3 over TCP only, to `broker.tcp_address` (which must be set): for networks
    /// that block or throttle UDP.
    Tcp,
    /// QUIC first; when a QUIC connection cannot be made, TLS over TCP to
    /// `broker.tcp_address` (logged as a warning). Without a `tcp_address`, QUIC only.
    #[default]
    Auto,
}

/// Where the broker is.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    /// `host:port` of the broker's QUIC endpoint; resolved at every (re)connect.
    pub address: String,
    /// The DNS name the broker's certificate must be valid for.
    pub server_name: String,
    /// QUIC, TLS over TCP, or QUIC with a fallback to TCP (the default).
    #[serde(default)]
    pub transport: TransportMode,
    /// `host:port` of the broker's TLS-over-TCP listener (its `[tcp] listen`); resolved at
    /// every (re)connect. Needed for `transport = "tcp"`; without it `auto` means QUIC.
    #[serde(default)]
    pub tcp_address: Option<String>,
}

/// The agent's own keys and the pinned federation key.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    /// The ed25519 signing key (`ed25519-secret:...`): signs headers, receipts, records.
    pub signing_key: PathBuf,
    /// The age identity (`AGE-SECRET-KEY-1...`): decrypts the views addressed to us.
    pub age_identity: PathBuf,
    /// Age identities from before a key rotation: bodies sealed for them before the
    /// directory listed the new key can still be opened. Remove them once the rotation's
    /// overlap has ended and the queue was drained.
    #[serde(default)]
    pub previous_age_identities: Vec<PathBuf>,
    /// The federation public key (base64), pinned inline.
    #[serde(default)]
    pub federation_public_key: Option<String>,
    /// Or a file holding it.
    #[serde(default)]
    pub federation_public_key_file: Option<PathBuf>,
}

/// The local HTTP API.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Where to listen. Loopback by default; anything else is warned about.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// File holding the bearer token partner systems must present.
    pub token_file: PathBuf,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8480))
}

/// Timers and backoff.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimingSection {
    /// How long a fetch waits at the broker for something to arrive (long poll).
    pub fetch_wait_ms: u32,
    /// First delay after a failed attempt; it doubles on every further failure.
    pub retry_min_ms: u64,
    /// Largest delay between attempts.
    pub retry_max_ms: u64,
    /// How long one request to the broker may take (a fetch gets its wait on top).
    pub request_timeout_ms: u64,
    /// How often the broker's audit checkpoint is fetched and checked.
    pub checkpoint_interval_secs: u64,
    /// How often the signed documents are fetched again (a new directory serial).
    pub documents_refresh_secs: u64,
    /// How often local retention runs.
    pub sweep_interval_secs: u64,
    /// How long startup waits for the broker when no verified documents are cached.
    pub startup_wait_secs: u64,
}

impl Default for TimingSection {
    fn default() -> Self {
        TimingSection {
            fetch_wait_ms: 10_000,
            retry_min_ms: 200,
            retry_max_ms: 30_000,
            request_timeout_ms: 15_000,
            checkpoint_interval_secs: 60,
            documents_refresh_secs: 3600,
            sweep_interval_secs: 60,
            startup_wait_secs: 60,
        }
    }
}

/// Inbox behaviour.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboxSection {
    /// Hours a payload stays after the partner system acknowledged it. 0: it goes at the
    /// next retention sweep (the agent is a mailbox, not an archive).
    pub keep_acknowledged_hours: u32,
}

/// The whole agent configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This organisation's OIN; must be an active party in the directory.
    pub oin: Oin,
    /// Folder for the sled database.
    pub data_dir: PathBuf,
    /// The broker.
    pub broker: BrokerSection,
    /// mTLS material towards the broker.
    pub tls: ClientTls,
    /// Signing key, age identity, federation key.
    pub keys: KeysSection,
    /// The HTTP API.
    pub api: ApiSection,
    /// Timers.
    #[serde(default)]
    pub timing: TimingSection,
    /// Inbox.
    #[serde(default)]
    pub inbox: InboxSection,
}

/// The key material the configuration points at, loaded and checked.
pub struct LoadedKeys {
    /// Signs headers, receipts and control records.
    pub signing: SigningKey,
    /// Decrypts our views.
    pub age: age::x25519::Identity,
    /// Decrypts views sealed for our keys before a rotation.
    pub previous_age: Vec<age::x25519::Identity>,
    /// The pinned federation key.
    pub federation: VerifyingKey,
    /// The API bearer token.
    pub api_token: String,
}

impl std::fmt::Debug for LoadedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedKeys")
            .field("federation", &keys::verifying_key_to_text(&self.federation))
            .finish_non_exhaustive()
    }
}

fn config_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_owned(),
        message: message.into(),
    }
}

impl AgentConfig {
    /// Read and check a configuration file; relative paths resolve against its folder.
    pub fn load(path: &Path) -> Result<AgentConfig, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| config_error(path, format!("cannot read: {e}")))?;
        let mut cfg = AgentConfig::from_toml(&text).map_err(|e| match e {
            Error::Config { message, .. } => config_error(path, message),
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve(base);
        cfg.check().map_err(|e| match e {
            Error::Config {
                path: p, message, ..
            } if p.as_os_str().is_empty() => config_error(path, message),
            other => other,
        })?;
        Ok(cfg)
    }

    /// Parse configuration text (paths are left as written).
    pub fn from_toml(text: &str) -> Result<AgentConfig, Error> {
        toml::from_str(text).map_err(|e| config_error(Path::new(""), e.to_string().trim_end()))
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        fix(&mut self.tls.ca);
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        fix(&mut self.keys.signing_key);
        fix(&mut self.keys.age_identity);
        for p in &mut self.keys.previous_age_identities {
            fix(p);
        }
        if let Some(p) = self.keys.federation_public_key_file.as_mut() {
            fix(p);
        }
        fix(&mut self.api.token_file);
    }

    /// Consistency and range checks that need no files.
    pub fn check(&self) -> Result<(), Error> {
        let none = Path::new("");
        match (
            &self.keys.federation_public_key,
            &self.keys.federation_public_key_file,
        ) {
            (Some(_), Some(_)) => {
                return Err(config_error(
                    none,
                    "keys: give federation_public_key or federation_public_key_file, not both",
                ))
            }
            (None, None) => {
                return Err(config_error(
                    none,
                    "keys: the federation public key must be pinned \
                     (federation_public_key or federation_public_key_file)",
                ))
            }
            _ => {}
        }
        if self.broker.server_name.trim().is_empty() {
            return Err(config_error(none, "broker.server_name is empty"));
        }
        if !self.broker.address.contains(':') {
            return Err(config_error(
                none,
                format!("broker.address '{}' must be host:port", self.broker.address),
            ));
        }
        match (&self.broker.tcp_address, self.broker.transport) {
            (None, TransportMode::Tcp) => {
                return Err(config_error(
                    none,
                    "broker.transport = \"tcp\" needs broker.tcp_address (host:port)",
                ))
            }
            (Some(a), _) if !a.contains(':') => {
                return Err(config_error(
                    none,
                    format!("broker.tcp_address '{a}' must be host:port"),
                ))
            }
            _ => {}
        }
        let t = &self.timing;
        if t.retry_min_ms == 0 || t.retry_max_ms < t.retry_min_ms {
            return Err(config_error(
                none,
                "timing: retry_min_ms must be at least 1 and retry_max_ms at least retry_min_ms",
            ));
        }
        if t.fetch_wait_ms > 30_000 {
            return Err(config_error(
                none,
                "timing.fetch_wait_ms is at most 30000 (the broker caps its long poll there)",
            ));
        }
        if t.request_timeout_ms < 100
            || t.checkpoint_interval_secs == 0
            || t.documents_refresh_secs == 0
            || t.sweep_interval_secs == 0
        {
            return Err(config_error(
                none,
                "timing: request_timeout_ms must be at least 100 and every interval at least 1",
            ));
        }
        Ok(())
    }

    /// Read the key files and the API token, checking their formats.
    pub fn load_keys(&self) -> Result<LoadedKeys, Error> {
        let read = |p: &Path, what: &str| {
            std::fs::read_to_string(p)
                .map_err(|e| config_error(p, format!("cannot read the {what}: {e}")))
        };
        let signing = keys::signing_key_from_text(&read(&self.keys.signing_key, "signing key")?)
            .map_err(|e| config_error(&self.keys.signing_key, e.to_string()))?;
        let age = keys::age_identity_from_text(&read(&self.keys.age_identity, "age identity")?)
            .map_err(|e| config_error(&self.keys.age_identity, e.to_string()))?;
        let previous_age = self
            .keys
            .previous_age_identities
            .iter()
            .map(|p| {
                keys::age_identity_from_text(&read(p, "previous age identity")?)
                    .map_err(|e| config_error(p, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let federation = match (
            &self.keys.federation_public_key,
            &self.keys.federation_public_key_file,
        ) {
            (Some(text), _) => keys::verifying_key_from_text(text).map_err(|e| {
                config_error(Path::new("keys.federation_public_key"), e.to_string())
            })?,
            (None, Some(p)) => keys::verifying_key_from_text(&read(p, "federation public key")?)
                .map_err(|e| config_error(p, e.to_string()))?,
            (None, None) => {
                return Err(config_error(
                    Path::new("keys"),
                    "the federation public key must be pinned",
                ))
            }
        };
        let api_token = read(&self.api.token_file, "API token")?.trim().to_owned();
        if api_token.len() < 16 || api_token.chars().any(|c| c.is_whitespace()) {
            return Err(config_error(
                &self.api.token_file,
                "the API token must be at least 16 characters without whitespace",
            ));
        }
        for p in [&self.tls.ca, &self.tls.cert, &self.tls.key] {
            if !p.is_file() {
                return Err(config_error(p, "TLS file does not exist"));
            }
        }
        Ok(LoadedKeys {
            signing,
            age,
            previous_age,
            federation,
            api_token,
        })
    }

    /// The fetch long-poll wait.
    pub fn fetch_wait(&self) -> Duration {
        Duration::from_millis(u64::from(self.timing.fetch_wait_ms))
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.timing.request_timeout_ms)
    }

    /// The backoff bounds.
    pub fn backoff(&self) -> crate::backoff::Backoff {
        crate::backoff::Backoff::new(
            Duration::from_millis(self.timing.retry_min_ms),
            Duration::from_millis(self.timing.retry_max_ms),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
oin = "00000001000000000001"
data_dir = "data"
[broker]
address = "127.0.0.1:4433"
server_name = "localhost"
[tls]
ca = "ca.pem"
cert = "cert.pem"
key = "key.pem"
[keys]
signing_key = "signing.key"
age_identity = "age.key"
federation_public_key_file = "signing.pub"
[api]
token_file = "api.token"
"#;

    #[test]
    fn a_good_config_parses_with_defaults() {
        let cfg = AgentConfig::from_toml(GOOD).unwrap();
        cfg.check().unwrap();
        assert_eq!(cfg.api.listen, default_listen());
        assert_eq!(cfg.timing, TimingSection::default());
    }

    #[test]
    fn unknown_fields_and_bad_oins_are_refused() {
        let bad = GOOD.replace("data_dir", "datadir");
        assert!(matches!(
            AgentConfig::from_toml(&bad),
            Err(Error::Config { .. })
        ));
        let bad = GOOD.replace("00000001000000000001", "123");
        let err = AgentConfig::from_toml(&bad).unwrap_err().to_string();
        assert!(err.contains("20 digits"), "{err}");
    }

    #[test]
    fn the_federation_key_must_be_pinned_once() {
        let none = GOOD.replace("federation_public_key_file = \"signing.pub\"", "");
        assert!(AgentConfig::from_toml(&none).unwrap().check().is_err());
        let both = GOOD.replace(
            "federation_public_key_file",
            "federation_public_key = \"x\"\nfederation_public_key_file",
        );
        assert!(AgentConfig::from_toml(&both).unwrap().check().is_err());
    }

    #[test]
    fn the_transport_defaults_to_auto_and_tcp_needs_an_address() {
        let cfg = AgentConfig::from_toml(GOOD).unwrap();
        assert_eq!(cfg.broker.transport, TransportMode::Auto);
        assert_eq!(cfg.broker.tcp_address, None);
        let with = |extra: &str| {
            AgentConfig::from_toml(&GOOD.replace(
                "server_name = \"localhost\"",
                &format!("server_name = \"localhost\"\n{extra}"),
            ))
        };
        let tcp = with("transport = \"tcp\"").unwrap();
        let err = tcp.check().unwrap_err().to_string();
        assert!(err.contains("tcp_address"), "{err}");
        let tcp = with("transport = \"tcp\"\ntcp_address = \"127.0.0.1:4434\"").unwrap();
        tcp.check().unwrap();
        assert_eq!(tcp.broker.transport, TransportMode::Tcp);
        assert!(with("tcp_address = \"nohost\"").unwrap().check().is_err());
        assert!(with("transport = \"udp\"").is_err());
    }

    #[test]
    fn a_missing_file_is_a_config_error() {
        let err = AgentConfig::load(Path::new("/nonexistent/agent.toml")).unwrap_err();
        assert!(matches!(err, Error::Config { .. }));
        assert!(err.to_string().contains("/nonexistent/agent.toml"));
    }
}
