//! Settings `ketenpost-broker serve` takes from its command line over the configuration:
//! [`DevSettings`] for a dev federation's broker (`--federation`), [`Overrides`] for any.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{BrokerConfig, ConfigError, EmailConfig, SmtpConfig, SmtpSecurity, WebhookConfig};

/// The timers and extra trust of a dev federation's broker (`serve --federation`).
#[derive(Clone, Debug, Default)]
pub struct DevSettings {
    /// How often expiry, deadlines and retention are swept (seconds).
    pub sweep_interval_secs: Option<u64>,
    /// How often the audit trail is checkpointed (seconds).
    pub checkpoint_interval_secs: Option<u64>,
    /// How often the policy, directory and CRL are re-read (seconds).
    pub documents_reload_secs: Option<u64>,
    /// How often older audit records move into the archive file (milliseconds).
    pub audit_archive_ms: Option<u64>,
    /// Extra partner CAs (PEM roots).
    pub partner_cas: Vec<PathBuf>,
    /// Extra CRLs (PEM or DER).
    pub crls: Vec<PathBuf>,
}

/// Command-line settings that override or extend the configuration.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `[metrics] listen`.
    pub metrics: Option<SocketAddr>,
    /// `[backup] dir`.
    pub backup_dir: Option<PathBuf>,
    /// `[tcp] listen`.
    pub tcp: Option<SocketAddr>,
    /// `--alert-webhook FOR=URL`, each added to `[[alerts.webhook]]`.
    pub alert_webhooks: Vec<String>,
    /// `--alert-email FOR=ADDRESS`, each added to `[[alerts.email]]`.
    pub alert_emails: Vec<String>,
    /// `[alerts.smtp] relay`; set together with `smtp_from`.
    pub smtp_relay: Option<String>,
    /// The relay's transport security: `starttls`, `tls` or `none`.
    pub smtp_security: String,
    /// The sender address of alert mails.
    pub smtp_from: Option<String>,
}

/// A command-line setting that is not valid; the binary exits with code 64 on it.
#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    /// An alert receiver is not `FOR=TO`.
    #[error("{flag} wants {shape}, got '{arg}'")]
    Receiver {
        /// The flag.
        flag: &'static str,
        /// What it wants.
        shape: &'static str,
        /// What it got.
        arg: String,
    },
    /// An unknown SMTP transport security.
    #[error("--smtp-security is starttls, tls or none, not '{0}'")]
    SmtpSecurity(String),
    /// The configuration with the settings applied is not valid.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

impl BrokerConfig {
    /// Apply a dev federation's command-line timers and extra trust.
    pub fn apply_dev_settings(&mut self, s: DevSettings) {
        if let Some(v) = s.sweep_interval_secs {
            self.timers.sweep_interval_secs = v;
        }
        if let Some(v) = s.checkpoint_interval_secs {
            self.timers.checkpoint_interval_secs = v;
        }
        if let Some(v) = s.documents_reload_secs {
            self.timers.documents_reload_secs = v;
        }
        if let Some(v) = s.audit_archive_ms {
            self.timers.audit_archive_ms = v;
        }
        self.tls.partner_cas.extend(s.partner_cas);
        self.tls.crls.extend(s.crls);
    }

    /// Apply the command-line overrides, then [`check`](BrokerConfig::check) the result.
    pub fn apply_overrides(&mut self, o: Overrides) -> Result<(), OverrideError> {
        if o.metrics.is_some() {
            self.metrics.listen = o.metrics;
        }
        if o.backup_dir.is_some() {
            self.backup.dir = o.backup_dir;
        }
        if o.tcp.is_some() {
            self.tcp.listen = o.tcp;
        }
        let receivers = o
            .alert_webhooks
            .iter()
            .map(|a| ("--alert-webhook", "FOR=URL", a))
            .chain(
                o.alert_emails
                    .iter()
                    .map(|a| ("--alert-email", "FOR=ADDRESS", a)),
            );
        for (flag, shape, arg) in receivers {
            let Some((for_, to)) = arg.split_once('=') else {
                return Err(OverrideError::Receiver {
                    flag,
                    shape,
                    arg: arg.clone(),
                });
            };
            let (for_, to) = (for_.to_owned(), to.to_owned());
            if flag == "--alert-webhook" {
                self.alerts.webhook.push(WebhookConfig { for_, url: to });
            } else {
                self.alerts.email.push(EmailConfig { for_, to });
            }
        }
        if let (Some(relay), Some(from)) = (o.smtp_relay, o.smtp_from) {
            let security = match o.smtp_security.as_str() {
                "starttls" => SmtpSecurity::Starttls,
                "tls" => SmtpSecurity::Tls,
                "none" => SmtpSecurity::None,
                other => return Err(OverrideError::SmtpSecurity(other.to_owned())),
            };
            self.alerts.smtp = Some(SmtpConfig {
                relay,
                security,
                from,
                ca: None,
                username: None,
                password_file: None,
            });
        }
        self.check()?;
        Ok(())
    }
}
