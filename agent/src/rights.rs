//! The data subject's access request (AVG art. 15) at the case manager's agent.
//!
//! # Finding a person's cases without keeping the identifier
//! Every payload this agent sends or receives is scanned for identifiers in its
//! identity-category fields (a BSN, a client number: [`identifiers_of`]). Each is
//! normalised and stored only as a keyed blind index entry, HMAC-SHA256 under the agent's
//! index key ([`crate::vault::Vault::blind`]), next to the case reference, in the same
//! write (and flush) as the message. The sled tree `identifiers` maps `blind ‖ case
//! reference` to nothing. Without the index key nobody can test a number against it;
//! deleting a case removes its entries.
//!
//! # The request
//! `POST /v1/access-requests {identifier, received_on}` looks the identifier up (it is
//! never stored), asks the broker for the facts of the cases found
//! ([`ketenpost_schemas::rights::AccessQuery`]; the broker records the request and its
//! one-month term for the FGs) and keeps the answer as an [`AccessRequest`]: request id,
//! dates, case references and the broker's facts, which name organisations and categories
//! but no person. `POST .../answered` records that the person has the answer, at the
//! broker too, so the FG report shows whether it was answered on time.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use ketenpost_schemas::ids::CaseRef;
use ketenpost_schemas::kind::Category;
use ketenpost_schemas::payload::KindSchema;
use ketenpost_schemas::rights::AccessFacts;

use crate::store::Store;
use crate::vault::Vault;
use crate::Error;

/// The longest identifier taken from a payload or a request.
pub(crate) const MAX_IDENTIFIER: usize = 64;

/// Whether a field name holds an identifier of a person: a BSN or a client number.
fn is_identifier_field(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "bsn" || n.contains("burgerservicenummer") || n.contains("clientnummer")
}

/// An identifier in the one form every lookup uses: letters and digits only, lower case
/// (so `1112.22.333` and `111222333` are the same BSN). `None` when nothing is left or it
/// is too long to be an identifier.
pub fn normalise(identifier: &str) -> Option<String> {
    let n: String = identifier
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    (!n.is_empty() && n.len() <= MAX_IDENTIFIER).then_some(n)
}

/// The normalised identifiers in the identity-category fields of a payload whose kind has
/// `schema` (built in or declared by the covenant; `None`: no fields known, nothing found).
pub fn identifiers_of(schema: Option<&KindSchema>, payload: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match v {
                        Value::String(s) if is_identifier_field(k) => {
                            out.extend(normalise(s));
                        }
                        other => walk(other, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let Some(obj) = payload.as_object() else {
        return out;
    };
    let fields = schema.map(KindSchema::fields).unwrap_or(&[]);
    for field in fields {
        if field.category != Category::Identity {
            continue;
        }
        let name = field.name.as_str();
        match obj.get(name) {
            Some(Value::String(s)) if is_identifier_field(name) => out.extend(normalise(s)),
            Some(v) => walk(v, &mut out),
            None => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The blind index keys of a payload's identifiers.
pub fn blinds_of(vault: &Vault, schema: Option<&KindSchema>, payload: &Value) -> Vec<[u8; 32]> {
    identifiers_of(schema, payload)
        .iter()
        .map(|i| vault.blind(i))
        .collect()
}

/// An access request as the agent keeps it: no identifier, only what the answer needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequest {
    /// Its id (also in the broker's audit records).
    pub id: uuid::Uuid,
    /// When the person's request was received.
    pub received_on: NaiveDate,
    /// When it was registered here.
    pub registered_at: DateTime<Utc>,
    /// When the answer is due (one calendar month, 004:844-846).
    pub due_at: DateTime<Utc>,
    /// The person's cases this agent found.
    pub case_refs: Vec<CaseRef>,
    /// The broker's facts of those cases; `None` when no case was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<AccessFacts>,
    /// When the person got the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<DateTime<Utc>>,
}

impl AccessRequest {
    /// `open`, `answered`, `late` (open past its term) or `answered_late`.
    pub fn state(&self, now: DateTime<Utc>) -> &'static str {
        match self.answered_at {
            Some(at) if at > self.due_at => "answered_late",
            Some(_) => "answered",
            None if now > self.due_at => "late",
            None => "open",
        }
    }
}

impl Store {
    /// Index `blinds` under `case_ref` (no flush: the caller's write flushes it).
    pub(crate) fn index_identifiers(
        &self,
        case_ref: &CaseRef,
        blinds: &[[u8; 32]],
    ) -> Result<(), Error> {
        for b in blinds {
            let mut key = b.to_vec();
            key.extend_from_slice(case_ref.as_str().as_bytes());
            self.identifiers.insert(key, &[])?;
        }
        Ok(())
    }

    /// The cases indexed under `blind`.
    pub fn cases_of(&self, blind: &[u8; 32]) -> Result<Vec<CaseRef>, Error> {
        let mut out = Vec::new();
        for k in self.identifiers.scan_prefix(blind).keys() {
            let k = k?;
            let case = std::str::from_utf8(&k[32..])
                .ok()
                .and_then(|s| s.parse::<CaseRef>().ok())
                .ok_or_else(|| Error::corrupt("identifier index entry", "no case reference"))?;
            out.push(case);
        }
        Ok(out)
    }

    /// Remove every index entry of a case.
    pub(crate) fn unindex_case(&self, case_ref: &CaseRef) -> Result<(), Error> {
        let suffix = case_ref.as_str().as_bytes();
        for k in self.identifiers.iter().keys() {
            let k = k?;
            if k.len() > 32 && &k[32..] == suffix {
                self.identifiers.remove(k)?;
            }
        }
        Ok(())
    }

    /// Store an access request.
    pub(crate) fn put_access_request(&self, r: &AccessRequest) -> Result<(), Error> {
        Store::put(&self.access_requests, r.id.as_bytes(), r)
    }

    /// An access request.
    pub fn access_request(&self, id: &uuid::Uuid) -> Result<Option<AccessRequest>, Error> {
        Store::get(&self.access_requests, "access request", id.as_bytes())
    }

    /// Every access request.
    pub fn access_requests(&self) -> Result<Vec<AccessRequest>, Error> {
        Store::all(&self.access_requests, "access request")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The answer for the person, as a self-contained HTML page (Dutch, for the person):
/// per case the purpose, legal basis and retention, and which organisation received
/// which categories of data from which organisation, when. Organisations by name.
pub fn answer_html(r: &AccessRequest, controller: &str) -> String {
    let mut h = String::new();
    h.push_str(
        "<!doctype html><html lang=\"nl\"><head><meta charset=\"utf-8\">\
         <title>Overzicht van uw gegevens</title><style>\
         body{font-family:sans-serif;max-width:60em;margin:2em auto;}\
         table{border-collapse:collapse;width:100%;}\
         td,th{border:1px solid #999;padding:.3em;text-align:left;vertical-align:top;}\
         @media print{body{margin:0;}}</style></head><body>",
    );
    h.push_str("<h1>Overzicht van uw gegevens (inzageverzoek, art. 15 AVG)</h1>");
    h.push_str(&format!(
        "<p>Verwerkingsverantwoordelijke: {}. Verzoek ontvangen op {}; beantwoord uiterlijk {}.</p>",
        escape(controller),
        r.received_on,
        r.due_at.format("%Y-%m-%d")
    ));
    let cases = r.facts.as_ref().map(|f| f.cases.as_slice()).unwrap_or(&[]);
    if cases.is_empty() {
        h.push_str("<p>Wij hebben binnen dit convenant geen gegevens over u uitgewisseld.</p>");
    }
    for (i, c) in cases.iter().enumerate() {
        h.push_str(&format!(
            "<h2>Casus {}: {}</h2><dl><dt>Doel</dt><dd>{}</dd><dt>Verwerking</dt><dd>{}</dd>\
             <dt>Grondslag</dt><dd>{}</dd><dt>Bewaartermijn</dt><dd>{}</dd>\
             <dt>Betrokken organisaties</dt><dd>{}</dd></dl>",
            i + 1,
            escape(&c.purpose_name),
            escape(&c.purpose_name),
            escape(&c.processing_activity),
            escape(&c.legal_basis),
            escape(&c.retention),
            escape(
                &c.parties
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
        h.push_str(
            "<table><tr><th>Datum</th><th>Van (bron)</th><th>Aan (ontvanger)</th>\
             <th>Soort bericht</th><th>Categorieën van gegevens</th><th>Grondslag</th></tr>",
        );
        for f in &c.flows {
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                f.at.format("%Y-%m-%d"),
                escape(&f.sender.name),
                escape(&f.recipient.name),
                escape(&f.kind),
                escape(&f.categories.join(", ")),
                escape(&f.ground),
            ));
        }
        h.push_str("</table>");
    }
    h.push_str(
        "<p>U heeft het recht ons te vragen uw gegevens te verbeteren of te wissen, de \
         verwerking te beperken, en bezwaar te maken tegen de verwerking. U kunt een klacht \
         indienen bij de Autoriteit Persoonsgegevens (004:825-853).</p></body></html>",
    );
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ketenpost_schemas::kind::Kind;
    use ketenpost_schemas::payload::{self, Aanmeldbericht, Aanmelding, Signaal};

    #[test]
    fn identifiers_come_from_identity_fields_only_and_are_normalised() {
        let a = serde_json::to_value(Aanmelding::example()).unwrap();
        assert_eq!(
            identifiers_of(payload::builtin(Kind::Aanmelding), &a),
            vec!["111222333"]
        );
        let mut b = serde_json::to_value(Aanmeldbericht::example()).unwrap();
        b["burgerservicenummer_hoofdbewoner"] = "111 2.22-333".into();
        assert_eq!(
            identifiers_of(payload::builtin(Kind::Aanmeldbericht), &b),
            vec!["111222333"]
        );
        let s = serde_json::to_value(Signaal::example()).unwrap();
        assert!(identifiers_of(payload::builtin(Kind::Signaal), &s).is_empty());
        assert_eq!(normalise(" AB-12 "), Some("ab12".into()));
        assert_eq!(normalise(" - "), None);
    }

    #[tokio::test]
    async fn the_index_finds_cases_by_identifier_and_holds_no_identifier() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (c1, c2) = (CaseRef::random(), CaseRef::random());
        let bsn = store.vault.blind("111222333");
        store.index_identifiers(&c1, &[bsn]).unwrap();
        store.index_identifiers(&c2, &[bsn]).unwrap();
        store
            .index_identifiers(&c2, &[store.vault.blind("123456782")])
            .unwrap();
        let mut found = store.cases_of(&bsn).unwrap();
        found.sort();
        let mut both = vec![c1.clone(), c2.clone()];
        both.sort();
        assert_eq!(found, both);
        for k in store.identifiers.iter().keys() {
            let k = k.unwrap();
            assert!(!k.windows(9).any(|w| w == b"111222333"));
        }
        store.unindex_case(&c1).unwrap();
        assert_eq!(store.cases_of(&bsn).unwrap(), vec![c2]);
    }
}

/// What the partner system sends to register an access request.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccessRequest {
    /// The person's BSN or other identifier, as the person gave it. Used for the lookup
    /// only; never stored, logged or sent.
    pub identifier: String,
    /// The day the request was received (default: today).
    #[serde(default)]
    pub received_on: Option<NaiveDate>,
}
