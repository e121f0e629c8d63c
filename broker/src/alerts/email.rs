//! FG alerts by e-mail, through the SMTP relay of `[alerts.smtp]`.
//!
//! The mail is plain text: the alert's facts for a person to read (organisation names,
//! the pseudonymous case reference, the trail seq to look up), then the signed alert
//! itself, the exact JSON body a webhook would receive, and the broker's ed25519 signature
//! over those bytes (context `alert`). The same values travel in the headers
//! `X-Ketenpost-Alert-Id` and `X-Ketenpost-Signature`. Like a webhook body, it holds no
//! content and no names of persons.
//!
//! Security towards the relay is STARTTLS (default) or TLS, verified against the system's
//! trust store plus an optional configured CA; plaintext only to a relay on loopback.

use std::net::IpAddr;

use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Body, Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Tokio1Executor};

use super::config::{SmtpConfig, SmtpSecurity};
use super::{Alert, PostError, POST_TIMEOUT};

/// Parse an e-mail address.
pub fn mailbox(address: &str) -> Result<Mailbox, String> {
    address
        .parse::<Mailbox>()
        .map_err(|e| format!("'{address}' is not an e-mail address: {e}"))
}

/// The relay's host and port.
fn relay(smtp: &SmtpConfig) -> Result<(String, u16), String> {
    let default_port = match smtp.security {
        SmtpSecurity::Starttls => 587,
        SmtpSecurity::Tls => 465,
        SmtpSecurity::None => 25,
    };
    let text = smtp.relay.trim();
    // `[::1]:25`, `host:25`, `host` or a bare IPv6 address.
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("relay '{text}': unclosed '['"))?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("relay '{text}' is not host[:port]")),
        }
    } else if text.parse::<IpAddr>().is_ok() {
        (text, None)
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(format!("relay '{text}' names no host"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("relay '{text}': '{p}' is not a port"))?,
        None => default_port,
    };
    Ok((host.to_owned(), port))
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Check an `[alerts.smtp]` section without connecting.
pub fn check(smtp: &SmtpConfig) -> Result<(), String> {
    let (host, _) = relay(smtp)?;
    if smtp.security == SmtpSecurity::None && !is_loopback(&host) {
        return Err(format!(
            "security = \"none\" is only allowed for a relay on loopback, not '{host}' \
             (use starttls or tls)"
        ));
    }
    mailbox(&smtp.from).map_err(|e| format!("from: {e}"))?;
    if smtp.username.is_some() != smtp.password_file.is_some() {
        return Err("username and password_file go together".to_owned());
    }
    if smtp.ca.is_some() && smtp.security == SmtpSecurity::None {
        return Err("a ca makes no sense with security = \"none\"".to_owned());
    }
    Ok(())
}

/// A connection recipe for the relay, and the sender address.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("from", &self.from).finish()
    }
}

impl Mailer {
    /// Build the mailer: read the CA and password files, set up TLS. Connects to nothing.
    pub fn new(smtp: &SmtpConfig) -> Result<Mailer, String> {
        check(smtp)?;
        let (host, port) = relay(smtp)?;
        let tls = match smtp.security {
            SmtpSecurity::None => Tls::None,
            security => {
                let mut params = TlsParameters::builder(host.clone());
                if let Some(ca) = &smtp.ca {
                    let pem = std::fs::read(ca)
                        .map_err(|e| format!("cannot read ca {}: {e}", ca.display()))?;
                    let cert = Certificate::from_pem(&pem).map_err(|e| {
                        format!("ca {} is not a PEM certificate: {e}", ca.display())
                    })?;
                    params = params.add_root_certificate(cert);
                }
                let params = params
                    .build_rustls()
                    .map_err(|e| format!("cannot set up TLS for the relay: {e}"))?;
                match security {
                    SmtpSecurity::Tls => Tls::Wrapper(params),
                    _ => Tls::Required(params),
                }
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .timeout(Some(POST_TIMEOUT));
        if let (Some(user), Some(file)) = (&smtp.username, &smtp.password_file) {
            let password = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read password_file {}: {e}", file.display()))?;
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.trim_end_matches(['\r', '\n']).to_owned(),
            ));
        }
        Ok(Mailer {
            transport: builder.build(),
            from: mailbox(&smtp.from)?,
        })
    }

    /// Mail one signed alert; `Ok` when the relay accepted it.
    pub async fn send(
        &self,
        to: &str,
        alert: &Alert,
        body: &[u8],
        signature: &str,
    ) -> Result<(), PostError> {
        let to = mailbox(to).map_err(PostError::Transport)?;
        let (subject, text) = render(alert, body, signature);
        let header = |name: &str, value: &str| {
            HeaderName::new_from_ascii(name.to_owned())
                .map(|n| HeaderValue::new(n, value.to_owned()))
                .map_err(|e| PostError::Transport(e.to_string()))
        };
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .raw_header(header("X-Ketenpost-Alert-Id", &alert.id)?)
            .raw_header(header("X-Ketenpost-Signature", signature)?)
            .header(ContentType::TEXT_PLAIN)
            .body(body_of(text)?)
            .map_err(|e| PostError::Transport(e.to_string()))?;
        match tokio::time::timeout(POST_TIMEOUT, self.transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(match e.status() {
                Some(code) => PostError::Status(u16::from(code)),
                None => PostError::Transport(e.to_string()),
            }),
            Err(_) => Err(PostError::Timeout),
        }
    }
}

/// The text as quoted-printable: every line stays short and ASCII on the wire whatever the
/// organisations' names hold, and the signed JSON decodes back byte for byte.
fn body_of(text: String) -> Result<Body, PostError> {
    Body::new_with_encoding(text, ContentTransferEncoding::QuotedPrintable)
        .map_err(|_| PostError::Transport("cannot encode the alert mail".to_owned()))
}

/// The subject and plain-text body of an alert mail.
pub fn render(alert: &Alert, body: &[u8], signature: &str) -> (String, String) {
    let subject = match &alert.case_ref {
        Some(case) => format!("[ketenpost] {}: case {case}", headline(&alert.event)),
        None => format!("[ketenpost] {}", headline(&alert.event)),
    };
    let mut text = format!(
        "ketenpost FG alert from broker {}\n\n{}\n\n",
        alert.broker,
        explanation(&alert.event)
    );
    let mut line = |label: &str, value: &str| text.push_str(&format!("{label:<14}{value}\n"));
    line("Event:", &alert.event);
    if let Some(r) = &alert.reason {
        line("Reason:", r);
    }
    line("Time:", &alert.time);
    for (label, value) in [
        ("Case:", &alert.case_ref),
        ("Kind:", &alert.kind),
        ("Purpose:", &alert.purpose),
        ("Message:", &alert.message_id),
    ] {
        if let Some(v) = value {
            line(label, v);
        }
    }
    if let Some(seq) = alert.broken_seq {
        line("First damage:", &format!("record {seq}"));
    }
    for (i, p) in alert.parties.iter().enumerate() {
        line(
            if i == 0 { "Parties:" } else { "" },
            &format!("{} ({})", p.name, p.oin),
        );
    }
    line("Trail record:", &alert.seq.to_string());
    text.push_str(&format!(
        "\nFind it in the trail with `ketenpost-broker audit trail` (record {}).\n\n\
         The signed alert follows: the JSON below, byte for byte, is what the broker signed \
         (ed25519, context \"alert\"; the broker's key is in the signed directory).\n\n",
        alert.seq
    ));
    text.push_str(&String::from_utf8_lossy(body));
    text.push_str(&format!("\n\nSignature: {signature}\n"));
    (subject, text)
}

fn headline(event: &str) -> &'static str {
    match event {
        "non_consent_use" => "data shared without consent",
        "breach_notice" => "breach notice",
        "deadline_notice" => "answer overdue",
        "deadline_late" => "deadline missed",
        "deletion_overdue" => "deletion not confirmed in time",
        "audit_verification_failed" => "audit trail damaged",
        _ => "alert",
    }
}

fn explanation(event: &str) -> &'static str {
    match event {
        "non_consent_use" => {
            "A message was sent without the client's consent, on a ground the covenant allows \
             instead. Check that the ground applied."
        }
        "breach_notice" => {
            "A breach notice (datalek-melding) was routed to the parties that received the \
             affected data. Your organisation may have to notify the AP within 72 hours."
        }
        "deadline_notice" => "An answer the covenant requires is overdue; the parties were told.",
        "deadline_late" => "A message arrived after its deadline, or an answer came late.",
        "deletion_overdue" => {
            "A party did not confirm a deletion order within its term: the data may still be held."
        }
        "audit_verification_failed" => {
            "The broker's audit trail no longer verifies: records are missing, altered or \
             unlinked. Secure the data directory and run `ketenpost-broker audit verify`."
        }
        _ => "An event the FG is told about.",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::alerts::Named;

    fn smtp(relay: &str, security: SmtpSecurity) -> SmtpConfig {
        SmtpConfig {
            relay: relay.to_owned(),
            security,
            from: "broker@regio.example".to_owned(),
            ca: None,
            username: None,
            password_file: None,
        }
    }

    #[test]
    fn relays_parse_with_default_ports_and_plaintext_stays_on_loopback() {
        let r = |t, s| relay(&smtp(t, s));
        assert_eq!(
            r("mx.example", SmtpSecurity::Starttls),
            Ok(("mx.example".into(), 587))
        );
        assert_eq!(
            r("mx.example", SmtpSecurity::Tls),
            Ok(("mx.example".into(), 465))
        );
        assert_eq!(
            r("127.0.0.1:2525", SmtpSecurity::None),
            Ok(("127.0.0.1".into(), 2525))
        );
        assert_eq!(r("[::1]:25", SmtpSecurity::None), Ok(("::1".into(), 25)));
        assert_eq!(r("::1", SmtpSecurity::None), Ok(("::1".into(), 25)));
        assert!(r("mx.example:0", SmtpSecurity::Tls).is_err());
        assert!(r(":25", SmtpSecurity::Tls).is_err());
        assert!(check(&smtp("127.0.0.1:2525", SmtpSecurity::None)).is_ok());
        let err = check(&smtp("mx.example", SmtpSecurity::None)).unwrap_err();
        assert!(
            err.contains("only allowed for a relay on loopback"),
            "{err}"
        );
        let mut bad_from = smtp("mx.example", SmtpSecurity::Starttls);
        bad_from.from = "not an address".into();
        assert!(check(&bad_from).unwrap_err().starts_with("from:"));
        let mut half_login = smtp("mx.example", SmtpSecurity::Starttls);
        half_login.username = Some("u".into());
        assert!(check(&half_login).is_err());
    }

    #[test]
    fn the_mail_names_the_organisations_and_carries_the_signed_body() {
        let alert = Alert {
            id: "1-42".into(),
            event: "non_consent_use".into(),
            reason: Some("acute_danger".into()),
            time: "2026-12-01T10:00:00+00:00".into(),
            seq: 42,
            case_ref: Some("case-7".into()),
            kind: Some("aanmelding".into()),
            message_id: None,
            purpose: Some("uitstroom".into()),
            parties: vec![Named {
                oin: "00000001234567890000".into(),
                name: "Gemeente Middelburg".into(),
            }],
            broker: "broker-walcheren".into(),
            broken_seq: None,
        };
        let body = serde_json::to_vec(&alert).unwrap();
        let (subject, text) = render(&alert, &body, "c2ln");
        assert_eq!(
            subject,
            "[ketenpost] data shared without consent: case case-7"
        );
        assert!(text.contains("Gemeente Middelburg (00000001234567890000)"));
        assert!(text.contains("acute_danger"));
        assert!(text.contains(std::str::from_utf8(&body).unwrap()));
        assert!(text.ends_with("Signature: c2ln\n"));
    }
}
