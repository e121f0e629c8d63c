//! Covenant-defined message kinds: the `[kinds.<name>]` tables of a policy.
//!
//! A covenant may declare content kinds of its own, such as a risicotaxatie or a plan van
//! aanpak. Each has a description and a JSON Schema (draft 2020-12) of its payload in
//! which every top-level property carries its data category:
//!
//! ```toml
//! [kinds.risicotaxatie]
//! description = "Risk assessment shared in the casusoverleg"
//! schema = '''
//! {
//!   "type": "object",
//!   "required": ["risiconiveau"],
//!   "properties": {
//!     "risiconiveau": { "x-category": "case", "enum": ["laag", "midden", "hoog"] },
//!     "justitiele_context": { "x-category": "justice", "type": "string", "maxLength": 8000 },
//!     "zorgcontext": { "x-category": "support", "type": "string", "maxLength": 8000 }
//!   }
//! }
//! '''
//! ```
//!
//! The schema is inline, so the federation's signature over the policy covers it. A
//! declared kind is then allowed per purpose like a built-in one
//! (`[purposes.<p>.kinds.risicotaxatie]`), with views by the categories its schema uses.
//! The built-in content kinds are described the same way by their shipped schema files
//! ([`crate::payload::builtin`]); a policy cannot redefine them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::{Checker, Policy};
use crate::kind::Kind;
use crate::payload::{self, KindSchema, MAX_SCHEMA_BYTES};
use crate::Error;

/// The kinds a policy declares, by kind.
pub type DeclaredKinds = BTreeMap<Kind, Arc<KindSchema>>;

/// A `[kinds.<name>]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKindDecl {
    #[serde(default)]
    description: String,
    schema: Option<Spanned<String>>,
    /// Refused with an explanation: a schema in a separate file is not yet served to the
    /// agents with the signed policy.
    schema_file: Option<Spanned<String>>,
}

impl Policy {
    /// The schema of a content kind under this policy: a built-in kind's shipped schema,
    /// or the schema the policy declares for a covenant kind. `None` for a control kind
    /// or a kind the policy does not declare.
    pub fn kind_schema(&self, kind: Kind) -> Option<&KindSchema> {
        lookup(&self.declared_kinds, kind)
    }
}

fn lookup(declared: &DeclaredKinds, kind: Kind) -> Option<&KindSchema> {
    match kind {
        Kind::Covenant(_) => declared.get(&kind).map(|s| &**s),
        builtin => payload::builtin(builtin),
    }
}

/// Check the `[kinds.*]` tables of the policy `text`.
pub(super) fn declare(
    text: &str,
    raw: BTreeMap<String, Spanned<RawKindDecl>>,
) -> Result<DeclaredKinds, Error> {
    let checker = Checker {
        text,
        declared: &DeclaredKinds::new(),
        grounds: &super::Grounds::default(),
        more: std::cell::RefCell::default(),
    };
    let mut out = DeclaredKinds::new();
    for (name, decl) in raw {
        let at = decl.span().start;
        let kind = match name.parse::<Kind>() {
            Ok(k @ Kind::Covenant(_)) => k,
            Ok(_) => {
                return checker.err(
                    at,
                    format!(
                        "'{name}' is a built-in kind; its schema is shipped with ketenpost \
                         and cannot be redefined"
                    ),
                )
            }
            Err(_) => {
                return checker.err(
                    at,
                    format!(
                        "'{name}' is not a valid kind name: 1-{} characters a-z, 0-9 or '_', \
                         starting with a letter",
                        crate::kind::KindName::MAX
                    ),
                )
            }
        };
        let decl = decl.into_inner();
        if let Some(file) = &decl.schema_file {
            return checker.err(
                file.span().start,
                format!(
                    "kind '{name}': schema_file is not supported; put the schema inline \
                     (schema = '''{{...}}''') so that the federation's signature over the \
                     policy covers it"
                ),
            );
        }
        let Some(schema) = decl.schema else {
            return checker.err(at, format!("kind '{name}' has no schema"));
        };
        let start = schema.span().start;
        if schema.get_ref().len() > MAX_SCHEMA_BYTES {
            return checker.err(
                start,
                format!("kind '{name}': the schema is larger than {MAX_SCHEMA_BYTES} bytes"),
            );
        }
        let value: Value = match serde_json::from_str(schema.get_ref()) {
            Ok(v) => v,
            Err(e) => {
                return checker.err(
                    start,
                    format!(
                        "kind '{name}': the schema is not JSON (line {} column {} of the \
                         schema: {})",
                        e.line(),
                        e.column(),
                        json_error_class(&e)
                    ),
                )
            }
        };
        let checked = KindSchema::new(kind, &decl.description, value).or_else(|problem| {
            let at = problem
                .field
                .as_deref()
                .and_then(|f| locate(text, schema.span(), f))
                .unwrap_or(start);
            checker.err(at, format!("kind '{name}': {problem}"))
        })?;
        out.insert(kind, Arc::new(checked));
    }
    Ok(out)
}

impl Checker<'_> {
    /// The schema of a content kind: built in, or declared by this policy.
    pub(super) fn kind_schema(&self, kind: Kind) -> Option<&KindSchema> {
        lookup(self.declared, kind)
    }
}

/// The byte offset in `text` of the property `field` within the schema string at `span`.
fn locate(text: &str, span: std::ops::Range<usize>, field: &str) -> Option<usize> {
    let inner = text.get(span.clone())?;
    let quoted = format!("\"{field}\"");
    let escaped = format!("\\\"{field}\\\"");
    inner
        .find(&quoted)
        .or_else(|| inner.find(&escaped))
        .map(|i| span.start + i)
}

/// What kind of JSON error this is, without echoing any of the input.
fn json_error_class(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Eof => "unexpected end",
        serde_json::error::Category::Data | serde_json::error::Category::Io => "invalid data",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::kind::Category;
    use crate::policy::Role;

    const POLICY: &str = r#"
[covenant]
id = "zvh"
name = "Zorg- en Veiligheidshuis"

[roles.politie]
[roles.ggz]
[roles.procesregisseur]

[kinds.risicotaxatie]
description = "Risk assessment for the casusoverleg"
schema = '''
{
  "type": "object",
  "required": ["risiconiveau"],
  "properties": {
    "risiconiveau": { "x-category": "case", "enum": ["laag", "midden", "hoog"] },
    "justitiele_context": { "x-category": "justice", "type": "string", "maxLength": 8000 },
    "zorgcontext": { "x-category": "support", "type": "string", "maxLength": 8000 }
  }
}
'''

[purposes.casus]
name = "Casusoverleg"
processing_activity = "zvh-casus"
legal_basis = "public task"
case_retention = "1 year"
case_managers = ["procesregisseur"]

[purposes.casus.kinds.risicotaxatie]
senders = ["procesregisseur"]
recipients = ["politie", "ggz"]
consent = "not_required"
undelivered_ttl = "7 days"
answer_within = "5 workdays"
answer_kinds = ["risicotaxatie"]
views.politie = ["case", "justice"]
views.ggz = ["case", "support"]
"#;

    fn error_of(text: &str) -> (Option<usize>, Option<usize>, String) {
        match Policy::from_toml(text) {
            Err(Error::Policy {
                line,
                column,
                message,
            }) => (line, column, message),
            other => panic!("expected a policy error, got {other:?}"),
        }
    }

    fn line_of(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).unwrap() + 1
    }

    #[test]
    fn a_declared_kind_is_allowed_with_views_by_its_categories() {
        let p = Policy::from_toml(POLICY).unwrap();
        let kind: Kind = "risicotaxatie".parse().unwrap();
        let schema = p.kind_schema(kind).unwrap();
        assert_eq!(schema.description(), "Risk assessment for the casusoverleg");
        assert_eq!(
            schema.categories(),
            [Category::Support, Category::Justice, Category::Case].into()
        );
        let rule = p.rule("casus", kind).unwrap();
        assert_eq!(
            rule.view(&Role::new("politie")),
            [Category::Justice, Category::Case].into()
        );
        assert!(rule.answer_kinds.contains(&kind));
        // Built-in kinds come from the library under every policy.
        assert!(p.kind_schema(Kind::Signaal).is_some());
        assert!(p.kind_schema("plan_van_aanpak".parse().unwrap()).is_none());
        let text = crate::explain::explain(&p);
        assert!(text.contains("risicotaxatie: Risk assessment"), "{text}");
        assert!(text.contains("justitiele_context (justice)"), "{text}");
    }

    #[test]
    fn a_field_without_a_category_is_refused_at_its_line() {
        let bad = POLICY.replace(
            r#""zorgcontext": { "x-category": "support", "type""#,
            r#""zorgcontext": { "type""#,
        );
        let (line, column, msg) = error_of(&bad);
        assert_eq!(line, Some(line_of(&bad, "\"zorgcontext\"")), "{msg}");
        assert_eq!(column, Some(5), "{msg}");
        assert!(
            msg.contains("zorgcontext") && msg.contains("x-category"),
            "{msg}"
        );
    }

    #[test]
    fn a_view_is_checked_against_the_declared_categories() {
        let bad = POLICY.replace(
            r#"views.ggz = ["case", "support"]"#,
            r#"views.ggz = ["case", "housing"]"#,
        );
        let (line, _, msg) = error_of(&bad);
        assert_eq!(line, Some(line_of(&bad, "views.ggz")));
        assert!(
            msg.contains("category 'housing' does not occur in this kind"),
            "{msg}"
        );
    }

    #[test]
    fn bad_declarations_are_refused_by_name() {
        let cases = [
            (
                "[purposes.casus.kinds.risicotaxatie]",
                "[purposes.casus.kinds.plan_van_aanpak]",
                "unknown message kind 'plan_van_aanpak'",
            ),
            (
                "[kinds.risicotaxatie]",
                "[kinds.signaal]",
                "'signaal' is a built-in kind",
            ),
            (
                "[kinds.risicotaxatie]",
                "[kinds.Risico]",
                "not a valid kind name",
            ),
            (
                "schema = '''",
                "schema_file = \"risico.json\"\nschema = '''",
                "schema_file is not supported",
            ),
            (
                "\"required\": [",
                "\"required\" [",
                "the schema is not JSON",
            ),
            (
                "\"enum\": [\"laag\", \"midden\", \"hoog\"]",
                "\"type\": \"nonsense\"",
                "not a valid JSON Schema",
            ),
        ];
        for (from, to, needle) in cases {
            assert!(POLICY.contains(from), "{from}");
            let bad = POLICY.replacen(from, to, 1);
            let (line, _, msg) = error_of(&bad);
            assert!(msg.contains(needle), "{needle}: {msg}");
            assert!(line.is_some(), "{msg}");
        }
    }
}
