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
//! The schema is inline, so the federation's signature over the policy covers it. The
//! policy as written may instead name a file beside it, pinned by its digest:
//!
//! ```toml
//! [kinds.risicotaxatie]
//! schema_file = "kinds/risicotaxatie.schema.json"
//! schema_sha256 = "<64 hex digits: the SHA-256 of the file>"
//! ```
//!
//! Such a policy is read with [`Policy::from_toml_with`] and a reader of its files (the
//! operator's tools read them relative to the policy file's directory), and signed
//! self-contained: [`Policy::self_contained`] puts each file's schema inline, its digest
//! kept, because broker and agents receive only the signed text. [`Policy::from_toml`]
//! refuses a `schema_file`. A declared kind is then allowed per purpose like a built-in one
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
use crate::payload::{self, KindSchema};
use crate::Error;

mod files;
pub use files::SchemaFiles;
use files::SchemaSource;
pub(super) use files::{inline_files, no_files};

/// The kinds a policy declares, by kind.
pub type DeclaredKinds = BTreeMap<Kind, Arc<KindSchema>>;

/// A message kind the covenant declares: its description and its payload's JSON Schema
/// (draft 2020-12), inline or in a file, in which every top-level property carries its
/// data category (x-category).
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("not" = { "required": ["schema", "schema_file"] }))]
#[schemars(extend("dependencies" = { "schema_file": ["schema_sha256"] }))]
#[schemars(rename = "DeclaredKind")]
pub(super) struct RawKindDecl {
    /// What the kind is, in words (shown by policy explain).
    #[serde(default)]
    description: String,
    /// The payload's JSON Schema, inline (a TOML multi-line literal string). Give this or
    /// schema_file.
    #[schemars(with = "Option<String>")]
    schema: Option<Spanned<String>>,
    /// The payload's JSON Schema in a file, relative to the policy file's directory;
    /// needs schema_sha256. Signing puts it inline.
    #[schemars(with = "Option<super::file_schema::SchemaPath>")]
    schema_file: Option<Spanned<String>>,
    /// The SHA-256 of the schema's bytes (of schema_file, or of the inline schema), so
    /// that the federation's signature over the policy covers the schema.
    #[schemars(with = "Option<super::file_schema::Sha256Hex>")]
    schema_sha256: Option<Spanned<String>>,
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

/// Check the `[kinds.*]` tables of the policy `text`, reading `schema_file`s with `files`.
pub(super) fn declare(
    text: &str,
    raw: BTreeMap<String, Spanned<RawKindDecl>>,
    files: SchemaFiles<'_>,
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
        let source = checker.schema_source(&name, at, &decl, files)?;
        let (json, start) = match &source {
            SchemaSource::Inline(schema) => (schema.get_ref().as_str(), schema.span().start),
            SchemaSource::File { json, at, .. } => (json.as_str(), *at),
        };
        let value: Value = match serde_json::from_str(json) {
            Ok(v) => v,
            Err(e) => {
                return checker.err(
                    start,
                    format!(
                        "kind '{name}': the schema{} is not JSON (line {} column {} of the \
                         schema: {})",
                        source.file_note(),
                        e.line(),
                        e.column(),
                        json_error_class(&e)
                    ),
                )
            }
        };
        let checked = KindSchema::new(kind, &decl.description, value).or_else(|problem| {
            let located = match &source {
                SchemaSource::Inline(schema) => problem
                    .field
                    .as_deref()
                    .and_then(|f| locate(text, schema.span(), f)),
                SchemaSource::File { .. } => None,
            };
            checker.err(
                located.unwrap_or(start),
                format!("kind '{name}'{}: {problem}", source.file_note()),
            )
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
                "both schema and schema_file are given",
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

    /// The schema of [`POLICY`]'s risicotaxatie, as a file.
    fn schema_text() -> String {
        let start = POLICY.find("schema = '''\n").unwrap() + "schema = '''\n".len();
        let end = start + POLICY[start..].find("'''").unwrap();
        POLICY[start..end].to_owned()
    }

    /// [`POLICY`] with the risicotaxatie schema in `kinds/risicotaxatie.schema.json`,
    /// pinned by `sha`.
    fn file_policy(sha: &str) -> String {
        let inline = format!("schema = '''\n{}'''", schema_text());
        assert!(POLICY.contains(&inline));
        POLICY.replace(
            &inline,
            &format!(
                "schema_file = \"kinds/risicotaxatie.schema.json\"\nschema_sha256 = \"{sha}\""
            ),
        )
    }

    /// Files by path, with their content.
    type Files = &'static [(&'static str, &'static str)];

    fn reader(
        files: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Result<Vec<u8>, String> {
        move |path| {
            files
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, text)| text.as_bytes().to_vec())
                .ok_or_else(|| "No such file or directory".to_owned())
        }
    }

    fn leaked(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    fn file_error_of(text: &str, files: SchemaFiles<'_>) -> (Option<usize>, String) {
        match Policy::from_toml_with(text, files) {
            Err(Error::Policy { line, message, .. }) => (line, message),
            other => panic!("expected a policy error, got {other:?}"),
        }
    }

    #[test]
    fn a_schema_in_a_file_is_read_pinned_and_put_inline_for_signing() {
        let schema = leaked(schema_text());
        let sha = crate::digest::sha256_hex(schema.as_bytes());
        let text = file_policy(&sha);
        let files: &'static [(&str, &str)] =
            Box::leak(vec![("kinds/risicotaxatie.schema.json", schema)].into_boxed_slice());
        let read = reader(files);
        let from_file = Policy::from_toml_with(&text, &read).unwrap();
        assert_eq!(from_file, Policy::from_toml(POLICY).unwrap());
        // Signed as it is, broker and agents could not read the file: refused, by name.
        let (line, _, msg) = error_of(&text);
        assert_eq!(line, Some(line_of(&text, "schema_file")), "{msg}");
        assert!(msg.contains("self-contained"), "{msg}");
        // Made self-contained, it is the same policy, the digest still pinned.
        let (inlined, policy) = Policy::self_contained(&text, &read).unwrap();
        assert_eq!(policy, from_file);
        assert_eq!(Policy::from_toml(&inlined).unwrap(), from_file);
        assert!(!inlined.contains("schema_file"), "{inlined}");
        assert!(
            inlined.contains(&format!("schema_sha256 = \"{sha}\"")),
            "{inlined}"
        );
        // A policy without files comes back byte for byte.
        assert_eq!(Policy::self_contained(POLICY, &read).unwrap().0, POLICY);
    }

    #[test]
    fn schema_file_problems_are_refused_naming_the_kind_at_the_line() {
        let schema = leaked(schema_text());
        let sha = crate::digest::sha256_hex(schema.as_bytes());
        let text = file_policy(&sha);
        let good: &'static [(&str, &str)] =
            Box::leak(vec![("kinds/risicotaxatie.schema.json", schema)].into_boxed_slice());
        let changed = leaked(schema.replace("8000", "9000"));
        let tampered: &'static [(&str, &str)] =
            Box::leak(vec![("kinds/risicotaxatie.schema.json", changed)].into_boxed_slice());
        let cases: Vec<(String, Files, &str, &str)> = vec![
            (
                text.clone(),
                tampered,
                "schema_file",
                "but schema_sha256 pins",
            ),
            (
                text.clone(),
                &[],
                "schema_file",
                "cannot be read: No such file",
            ),
            (
                text.replace("schema_file", "schema = '{}'\nschema_file"),
                good,
                "schema_file",
                "both schema and schema_file are given",
            ),
            (
                text.replace(&format!("schema_sha256 = \"{sha}\""), ""),
                good,
                "schema_file",
                "schema_file needs schema_sha256",
            ),
            (
                text.replace(&sha, &sha.to_uppercase()),
                good,
                "schema_sha256",
                "64 lowercase hex digits",
            ),
            (
                text.replace("kinds/risicotaxatie", "../risicotaxatie"),
                good,
                "schema_file",
                "not a plain relative path",
            ),
            (
                POLICY.replace(
                    "schema = '''",
                    &format!("schema_sha256 = \"{}\"\nschema = '''", "0".repeat(64)),
                ),
                good,
                "schema = '''",
                "but schema_sha256 pins",
            ),
        ];
        for (bad, files, at, needle) in cases {
            let read = reader(files);
            let (line, msg) = file_error_of(&bad, &read);
            assert!(msg.contains("kind 'risicotaxatie'"), "{needle}: {msg}");
            assert!(msg.contains(needle), "{needle}: {msg}");
            assert_eq!(line, Some(line_of(&bad, at)), "{needle}: {msg}");
            assert!(Policy::self_contained(&bad, &read).is_err(), "{needle}");
        }
        // A field problem in the file is named with the file.
        let uncategorised = leaked(schema.replace(r#""x-category": "support", "#, ""));
        let sha = crate::digest::sha256_hex(uncategorised.as_bytes());
        let files: &'static [(&str, &str)] =
            Box::leak(vec![("kinds/risicotaxatie.schema.json", uncategorised)].into_boxed_slice());
        let (_, msg) = file_error_of(&file_policy(&sha), &reader(files));
        assert!(
            msg.contains("(file 'kinds/risicotaxatie.schema.json')") && msg.contains("zorgcontext"),
            "{msg}"
        );
    }
}
