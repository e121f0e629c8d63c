//! The `[alerts]` section of the broker's configuration ([`crate::config`]): who is told,
//! and how. Re-exported there.

use std::path::PathBuf;

use serde::Deserialize;

/// FG alerts: who is told, and how.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// How often the trail is scanned for alert events and failed deliveries retried
    /// (100-60000 ms).
    pub interval_ms: u64,
    /// The webhooks.
    pub webhook: Vec<WebhookConfig>,
    /// The e-mail receivers (they need `smtp`).
    pub email: Vec<EmailConfig>,
    /// The SMTP relay e-mail alerts go through.
    pub smtp: Option<SmtpConfig>,
    /// How often the running broker verifies its whole audit trail (hash chain and
    /// checkpoints), 60-86400 s; the first time right after the start. Damage is recorded
    /// (`audit_verification_failed`) and alerted.
    pub verify_interval_secs: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            interval_ms: 1000,
            webhook: Vec::new(),
            email: Vec::new(),
            smtp: None,
            verify_interval_secs: 3600,
        }
    }
}

impl AlertsConfig {
    /// Every receiver, numbered: the webhooks first, then the e-mail addresses. An alert's
    /// queue key holds this number, so keep the order when changing the configuration.
    pub fn receivers(&self) -> Vec<ReceiverConfig> {
        let hooks = self.webhook.iter().map(|w| ReceiverConfig {
            for_: w.for_.clone(),
            to: Destination::Webhook(w.url.clone()),
        });
        let mails = self.email.iter().map(|m| ReceiverConfig {
            for_: m.for_.clone(),
            to: Destination::Email(m.to.clone()),
        });
        hooks.chain(mails).collect()
    }

    /// Whether any receiver is configured.
    pub fn any(&self) -> bool {
        !self.webhook.is_empty() || !self.email.is_empty()
    }
}

/// One receiver of alerts: whose FG it is and where the alert goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// A party's OIN, or `federation`.
    pub for_: String,
    /// Where.
    pub to: Destination,
}

/// Where an alert is delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// POSTed to this URL.
    Webhook(String),
    /// Mailed to this address through `[alerts.smtp]`.
    Email(String),
}

/// One FG's e-mail address.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// Whose FG it is: a party's OIN, or `federation`.
    #[serde(rename = "for")]
    pub for_: String,
    /// The address.
    pub to: String,
}

/// How the broker reaches its SMTP relay.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// `host` or `host:port`; the port defaults by `security` (587, 465, 25).
    pub relay: String,
    /// Transport security.
    #[serde(default)]
    pub security: SmtpSecurity,
    /// The sender address of the alerts.
    pub from: String,
    /// An extra trust anchor (PEM) for the relay's certificate, beside the system's.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The user name, when the relay wants a login (with `password_file`).
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the password (one line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// Transport security towards the SMTP relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// Plain SMTP upgraded with STARTTLS, which must succeed (default; port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS; port 465).
    Tls,
    /// No encryption: only for a relay on the loopback interface (port 25).
    None,
}

/// One FG's webhook: an HTTP endpoint that takes a POST of a signed JSON alert.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Whose FG it is: a party's OIN (alerts about records that involve that party), or
    /// `federation` (every alert).
    #[serde(rename = "for")]
    pub for_: String,
    /// Where to POST, `http://host:port/path`.
    pub url: String,
}
