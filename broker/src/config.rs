//! The broker's configuration: one TOML file, parsed once into typed structs.
//!
//! ```toml
//! listen = "127.0.0.1:4433"
//! data_dir = "/var/lib/ketenpost-broker"
//!
//! [tls]
//! cert = "broker/cert.pem"
//! key = "broker/key.pem"
//! ca = "ca/ca.pem"
//! crls = ["ca/crl.pem"]                # and the CRLs of every partner_cas entry
//! partner_cas = []                      # external CAs of partner certificates (PKIoverheid)
//!
//! [federation]
//! public_key = "federation/signing.pub"
//! policy = "policy.toml"
//! policy_sig = "policy.toml.sig"
//! directory = "directory.json"
//! directory_sig = "directory.json.sig"
//! signing_key = "broker/signing.key"   # the broker's own checkpoint key
//!
//! [limits]                             # all optional; per party = per OIN
//! max_connections = 1024               # authenticated connections, all parties
//! max_connections_per_party = 8
//! max_streams_per_connection = 128
//! max_streams_per_party = 256          # requests in flight, across its connections
//! max_buffered_bytes_per_connection = 33554432
//! max_buffered_bytes = 536870912       # request bytes buffered, all connections
//! max_handshakes = 128                 # TLS handshakes in progress (unauthenticated)
//! handshake_timeout_secs = 10
//! handshakes_per_sec_per_address = 20  # new connections per second per remote address
//! request_timeout_secs = 30
//! max_clock_skew_secs = 300            # how far ahead of the broker an event_time may be
//! max_fetch = 256
//! max_envelope_bytes = 16777216
//! cache_mb = 16                        # sled page cache
//! blocking_threads = 32                # threads for fetches, receipts' writes, control records
//! check_threads = 8                    # threads checking submissions and receipts (the check stage)
//! check_batch = 16                     # most jobs one check thread takes at once
//!
//! [tcp]                                # optional: the same protocol over TLS 1.3 on TCP,
//! listen = "0.0.0.0:4433"              # for partners whose network blocks UDP
//!
//! [metrics]                            # optional: Prometheus /metrics, /healthz, /readyz
//! listen = "127.0.0.1:9464"
//!
//! [timers]                             # all optional
//! checkpoint_interval_secs = 60
//! sweep_interval_secs = 10
//! documents_reload_secs = 30           # re-read policy, directory and CRLs; SIGHUP too
//! audit_archive_ms = 250               # move older audit records to audit/trail.jsonl
//!
//! [alerts]                             # optional: FG alerts by webhook and/or e-mail
//! interval_ms = 1000
//! verify_interval_secs = 3600          # re-verify the audit trail; damage is alerted
//! [[alerts.webhook]]
//! for = "federation"                   # or a party's OIN: alerts about that party
//! url = "http://127.0.0.1:8088/ketenpost-alerts"
//! [[alerts.email]]
//! for = "00000001234567890000"         # or "federation"
//! to = "fg@gemeente.example"
//! [alerts.smtp]                        # needed when there is an [[alerts.email]]
//! relay = "smtp.regio.example"         # host, or host:port
//! security = "starttls"                # starttls (port 587) | tls (465) | none (loopback only, 25)
//! from = "ketenpost-broker@regio.example"
//! # ca = "smtp-ca.pem"                 # an extra trust anchor beside the system's
//! # username = "ketenpost"
//! # password_file = "smtp.password"
//!
//! [backup]                             # optional
//! dir = "/var/backups/ketenpost"       # SIGUSR1 writes an online backup in a new folder here
//! ```
//!
//! A production broker refuses to start without a CRL (`tls.crls`); `dev_mode = true` at
//! the top level allows it, for a local test federation only.
//!
//! Relative paths are taken relative to the configuration file's folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use ketenpost_transport::tls::ServerTls;

pub use crate::alerts::config::{
    AlertsConfig, Destination, EmailConfig, ReceiverConfig, SmtpConfig, SmtpSecurity, WebhookConfig,
};

/// A configuration problem; the binary exits with code 64 on it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("config: {0}")]
    Invalid(String),
}

/// Where the federation's signed documents and the broker's own key are.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationFiles {
    /// The pinned federation public key (base64).
    pub public_key: PathBuf,
    /// The covenant policy (TOML).
    pub policy: PathBuf,
    /// Its federation signature.
    pub policy_sig: PathBuf,
    /// The partner directory (JSON).
    pub directory: PathBuf,
    /// Its federation signature.
    pub directory_sig: PathBuf,
    /// The broker's ed25519 key for audit checkpoints and notices.
    pub signing_key: PathBuf,
}

/// Resource limits.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most authenticated partner connections, all parties together.
    pub max_connections: usize,
    /// Most authenticated connections of one party (OIN). An agent needs one, plus one
    /// lingering across a restart; the rest is room for its CLI and its FG.
    pub max_connections_per_party: usize,
    /// Most concurrent requests (streams) per connection (the QUIC stream limit).
    pub max_streams_per_connection: u32,
    /// Most requests in flight of one party, across all its connections; one more is
    /// refused at once with `over_limit`.
    pub max_streams_per_party: usize,
    /// Request bytes the broker buffers for one connection; beyond it, reading waits
    /// (QUIC flow control then slows that peer alone). At least one largest request.
    pub max_buffered_bytes_per_connection: usize,
    /// Request bytes the broker buffers for all connections together; a request that
    /// cannot get its share within the request timeout is refused with `over_limit`.
    pub max_buffered_bytes: usize,
    /// Most TLS handshakes in progress (before the peer's identity is known); more
    /// connection attempts are refused before any TLS work.
    pub max_handshakes: usize,
    /// How long a handshake may take.
    pub handshake_timeout_secs: u64,
    /// New connections per second one remote address may start (bursts of twice this);
    /// more are refused before any TLS work.
    pub handshakes_per_sec_per_address: u32,
    /// How long one request may take to arrive.
    pub request_timeout_secs: u64,
    /// How far a message's `event_time` may lie ahead of the broker's clock.
    pub max_clock_skew_secs: u64,
    /// Most deliveries per fetch.
    pub max_fetch: u16,
    /// Largest envelope accepted.
    pub max_envelope_bytes: usize,
    /// sled's page cache, in MiB. sled 0.34 holds several times this much for it; the
    /// working set of the broker (recent ids, the cases, the tails of the queues) is
    /// small, so 16 costs no throughput and keeps a broker with a million queued
    /// messages under 200 MB (BENCHMARKS.md).
    pub cache_mb: u64,
    /// Most threads running the blocking work of requests at once (fetches, receipts,
    /// control records, access requests; submissions have the check stage's own
    /// threads); more requests wait their turn. Each thread costs memory (its stack, its allocator
    /// cache), and two cores gain nothing from hundreds of them.
    pub blocking_threads: usize,
    /// Threads of the check stage, which checks submissions and delivery receipts and
    /// verifies their signatures together. A check waits at times (the replay check's read while the
    /// writer's transaction holds sled's lock; the body's append to the spool), and the
    /// others go on meanwhile: on two cores 8 did better than 2, 4 or 16 (BENCHMARKS.md,
    /// "The check stage"). More cores want more.
    pub check_threads: usize,
    /// Most submissions and receipts one check thread takes at once, and so the largest
    /// batch of signatures verified together. 16 verify about 1.2-1.3 times cheaper together than
    /// one at a time, 64 hardly more, and larger batches leave fewer waiting
    /// submissions to the other threads; 16 did better than 32 or 64 in the load
    /// benchmark. Below 8 no batch is made (`verify::MIN_BATCH`).
    pub check_batch: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 1024,
            max_connections_per_party: 8,
            max_streams_per_connection: 128,
            max_streams_per_party: 256,
            max_buffered_bytes_per_connection: 32 * 1024 * 1024,
            max_buffered_bytes: 512 * 1024 * 1024,
            max_handshakes: 128,
            handshake_timeout_secs: 10,
            handshakes_per_sec_per_address: 20,
            request_timeout_secs: 30,
            max_clock_skew_secs: 300,
            max_fetch: 256,
            max_envelope_bytes: 16 * 1024 * 1024,
            cache_mb: 16,
            blocking_threads: 32,
            check_threads: 8,
            check_batch: 16,
        }
    }
}

/// Where the Prometheus metrics and the health endpoints are served (plain HTTP; put it on
/// an operator's network only). Off unless `listen` is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `GET /metrics`, `/healthz` and `/readyz` on this TCP address.
    pub listen: Option<SocketAddr>,
}

/// Where the broker also serves the protocol over TLS 1.3 on TCP, for partners whose
/// network blocks or throttles UDP. Off unless `listen` is set. The same certificates, CRLs
/// and limits apply as over QUIC.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    /// The TCP address (it may share the port number of the UDP `listen` address).
    pub listen: Option<SocketAddr>,
}

/// Background timers.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimersConfig {
    /// How often the audit trail is checkpointed (at most 60 s: the covenant's FGs rely on it).
    pub checkpoint_interval_secs: u64,
    /// How often expiry and retention are swept.
    pub sweep_interval_secs: u64,
    /// How often the policy, directory and CRL files are read again; a newer valid
    /// version is put in force without a restart.
    pub documents_reload_secs: u64,
    /// How often the oldest audit records move from the database into the archive file
    /// (`<data dir>/audit/trail.jsonl`). Often, so that each pass is short: a pass's
    /// syncs of the file hold up the store's (every submission's) while they write.
    pub audit_archive_ms: u64,
}

impl Default for TimersConfig {
    fn default() -> Self {
        TimersConfig {
            checkpoint_interval_secs: 60,
            sweep_interval_secs: 10,
            documents_reload_secs: 30,
            audit_archive_ms: 250,
        }
    }
}

/// Online backups.
#[derive(Clone, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Where SIGUSR1 writes a backup: a new folder per backup, named by the UTC time.
    pub dir: Option<PathBuf>,
}

/// The whole broker configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// UDP address to listen on (QUIC).
    pub listen: SocketAddr,
    /// Where sled keeps queues, registries and the audit trail.
    pub data_dir: PathBuf,
    /// TLS material.
    pub tls: ServerTls,
    /// The federation's documents.
    pub federation: FederationFiles,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Allow starting without a CRL (a local test federation). Never in production.
    #[serde(default)]
    pub dev_mode: bool,
    /// TLS over TCP beside QUIC.
    #[serde(default)]
    pub tcp: TcpConfig,
    /// The metrics and health endpoints.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Timers.
    #[serde(default)]
    pub timers: TimersConfig,
    /// Online backups (optional).
    #[serde(default)]
    pub backup: BackupConfig,
    /// FG alerts (optional).
    #[serde(default)]
    pub alerts: AlertsConfig,
}

impl BrokerConfig {
    /// Read and check a config file; relative paths resolve against its folder.
    pub fn load(path: &Path) -> Result<BrokerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg: BrokerConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve(base);
        cfg.check()?;
        Ok(cfg)
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        fix(&mut self.tls.ca);
        self.tls.crls.iter_mut().for_each(fix);
        self.tls.partner_cas.iter_mut().for_each(fix);
        if let Some(d) = self.backup.dir.as_mut() {
            fix(d);
        }
        if let Some(smtp) = self.alerts.smtp.as_mut() {
            smtp.ca
                .iter_mut()
                .chain(smtp.password_file.iter_mut())
                .for_each(fix);
        }
        let f = &mut self.federation;
        for p in [
            &mut f.public_key,
            &mut f.policy,
            &mut f.policy_sig,
            &mut f.directory,
            &mut f.directory_sig,
            &mut f.signing_key,
        ] {
            fix(p);
        }
    }

    /// Range checks.
    pub fn check(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.max_connections == 0
            || l.max_connections_per_party == 0
            || l.max_streams_per_connection == 0
            || l.max_streams_per_party == 0
            || l.max_handshakes == 0
            || l.handshake_timeout_secs == 0
            || l.handshakes_per_sec_per_address == 0
            || l.max_fetch == 0
            || l.blocking_threads == 0
            || l.check_threads == 0
            || l.check_batch == 0
        {
            return Err(ConfigError::Invalid("limits must be at least 1".to_owned()));
        }
        if l.check_threads > 1024 || l.check_batch > 1024 {
            return Err(ConfigError::Invalid(
                "limits.check_threads and limits.check_batch must be at most 1024".to_owned(),
            ));
        }
        if l.max_envelope_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "limits.max_envelope_bytes must be at least 1024".to_owned(),
            ));
        }
        let largest = self.largest_request();
        if l.max_buffered_bytes_per_connection < largest || l.max_buffered_bytes < largest {
            return Err(ConfigError::Invalid(format!(
                "limits.max_buffered_bytes_per_connection and limits.max_buffered_bytes must \
                 hold at least one largest request ({largest} bytes: max_envelope_bytes plus \
                 the frame head)"
            )));
        }
        if u32::try_from(l.max_buffered_bytes_per_connection).is_err() {
            return Err(ConfigError::Invalid(
                "limits.max_buffered_bytes_per_connection must be below 4 GiB".to_owned(),
            ));
        }
        if l.max_clock_skew_secs > 86_400 {
            return Err(ConfigError::Invalid(
                "limits.max_clock_skew_secs must be at most 86400 (a day)".to_owned(),
            ));
        }
        if self.tls.crls.is_empty() && !self.dev_mode {
            return Err(ConfigError::Invalid(
                "tls.crls is empty: a broker checks partner certificates against the CA's \
                 revocation list; name the CRL file(s), or set dev_mode = true for a local \
                 test federation"
                    .to_owned(),
            ));
        }
        let t = &self.timers;
        if t.checkpoint_interval_secs == 0 || t.checkpoint_interval_secs > 60 {
            return Err(ConfigError::Invalid(
                "timers.checkpoint_interval_secs must be between 1 and 60".to_owned(),
            ));
        }
        if t.sweep_interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "timers.sweep_interval_secs must be at least 1".to_owned(),
            ));
        }
        if !(10..=60_000).contains(&t.audit_archive_ms) {
            return Err(ConfigError::Invalid(
                "timers.audit_archive_ms must be between 10 and 60000".to_owned(),
            ));
        }
        let a = &self.alerts;
        if !(100..=60_000).contains(&a.interval_ms) {
            return Err(ConfigError::Invalid(
                "alerts.interval_ms must be between 100 and 60000".to_owned(),
            ));
        }
        for r in a.receivers() {
            let section = match r.to {
                Destination::Webhook(_) => "alerts.webhook",
                Destination::Email(_) => "alerts.email",
            };
            if r.for_ != "federation" && r.for_.parse::<ketenpost_schemas::ids::Oin>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "{section}: for = '{}' is neither 'federation' nor an OIN",
                    r.for_
                )));
            }
            match &r.to {
                Destination::Webhook(url) => crate::alerts::Endpoint::parse(url).map(drop),
                Destination::Email(to) => crate::alerts::email::mailbox(to).map(drop),
            }
            .map_err(|e| ConfigError::Invalid(format!("{section}: {e}")))?;
        }
        match &a.smtp {
            None if !a.email.is_empty() => {
                return Err(ConfigError::Invalid(
                    "alerts.email needs [alerts.smtp] (relay, security, from)".to_owned(),
                ))
            }
            None => {}
            Some(smtp) => crate::alerts::email::check(smtp)
                .map_err(|e| ConfigError::Invalid(format!("alerts.smtp: {e}")))?,
        }
        if !(60..=86_400).contains(&a.verify_interval_secs) {
            return Err(ConfigError::Invalid(
                "alerts.verify_interval_secs must be between 60 and 86400".to_owned(),
            ));
        }
        if t.documents_reload_secs == 0 || t.documents_reload_secs > 3600 {
            return Err(ConfigError::Invalid(
                "timers.documents_reload_secs must be between 1 and 3600".to_owned(),
            ));
        }
        Ok(())
    }

    /// A configuration for a dev federation made by `ketenpost-certs init`.
    pub fn for_federation(
        fed: &ketenpost_certs::Federation,
        data_dir: PathBuf,
        listen: SocketAddr,
    ) -> BrokerConfig {
        BrokerConfig {
            listen,
            data_dir,
            tls: ServerTls {
                cert: fed.broker.cert.clone(),
                key: fed.broker.key.clone(),
                ca: fed.ca.cert.clone(),
                crls: vec![fed.ca.crl.clone()],
                partner_cas: Vec::new(),
            },
            federation: FederationFiles {
                public_key: fed.federation.public_key.clone(),
                policy: fed.policy.file.clone(),
                policy_sig: fed.policy.sig.clone(),
                directory: fed.directory.file.clone(),
                directory_sig: fed.directory.sig.clone(),
                signing_key: fed.broker.signing_key.clone(),
            },
            limits: LimitsConfig::default(),
            dev_mode: false,
            tcp: TcpConfig::default(),
            metrics: MetricsConfig::default(),
            timers: TimersConfig::default(),
            backup: BackupConfig::default(),
            alerts: AlertsConfig::default(),
        }
    }

    /// The request timeout.
    /// The largest request frame: an envelope of `max_envelope_bytes` plus the frame head.
    pub fn largest_request(&self) -> usize {
        self.limits.max_envelope_bytes.saturating_add(1024)
    }

    /// How long a handshake may take.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.handshake_timeout_secs)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.request_timeout_secs)
    }
}

mod overrides;
pub use overrides::{DevSettings, OverrideError, Overrides};

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
listen = "127.0.0.1:4433"
data_dir = "data"
[tls]
cert = "cert.pem"
key = "key.pem"
ca = "ca.pem"
crls = ["crl.pem"]
[federation]
public_key = "signing.pub"
policy = "policy.toml"
policy_sig = "policy.toml.sig"
directory = "directory.json"
directory_sig = "directory.json.sig"
signing_key = "signing.key"
"#;

    fn with_limits(limits: &str) -> BrokerConfig {
        let text = format!("{MINIMAL}[limits]\n{limits}\n");
        match toml::from_str(&text) {
            Ok(cfg) => cfg,
            Err(e) => panic!("the test's config does not parse: {e}"),
        }
    }

    #[test]
    fn the_check_stage_is_sized_by_the_config() {
        let cfg = with_limits("");
        assert_eq!(
            (cfg.limits.check_threads, cfg.limits.check_batch),
            (8, 16),
            "the defaults"
        );
        assert!(cfg.check().is_ok());
        let cfg = with_limits("check_threads = 3\ncheck_batch = 64");
        assert_eq!((cfg.limits.check_threads, cfg.limits.check_batch), (3, 64));
        assert!(cfg.check().is_ok());
        for bad in [
            "check_threads = 0",
            "check_batch = 0",
            "check_threads = 5000",
            "check_batch = 2000",
        ] {
            match with_limits(bad).check() {
                Err(ConfigError::Invalid(message)) => {
                    assert!(message.contains("limits"), "{bad}: {message}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
