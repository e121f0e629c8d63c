//! The schema of a content kind, with the data category of every field.
//!
//! Every content kind, built in or declared by a covenant, is described the same way: a
//! JSON Schema (draft 2020-12) of an object whose every top-level property carries an
//! `x-category` naming its [`Category`]. Nested values belong to their top-level field's
//! category. A [`KindSchema`] is such a schema checked and read: its field table is what
//! views, projection and validation go by.
//!
//! The built-in kinds are a standard library in this form: their schemas are shipped as
//! `schemas/json/kinds/<kind>.schema.json`, generated from the Rust payload types with
//! `x-category` taken from each type's [`Payload::FIELDS`](super::Payload::FIELDS) (a test
//! keeps the files and the types in step). A policy declares its own kinds under
//! `[kinds.<name>]` (see [`crate::policy`]).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::OnceLock;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::kind::{Category, Kind};

/// The key that names a property's data category in a kind's schema.
pub const X_CATEGORY: &str = "x-category";

/// The largest schema a policy may declare for a kind, in bytes of JSON.
pub const MAX_SCHEMA_BYTES: usize = 256 * 1024;

/// The top-level schema keywords a kind's schema may use. Combinators (`allOf`, `if`, ...)
/// and pattern or dependent properties are refused at the top level: they could require
/// or admit fields in ways a view, which keeps only some properties, cannot follow.
const TOP_LEVEL_KEYWORDS: &[&str] = &[
    "$schema",
    "$comment",
    "$defs",
    "title",
    "description",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "examples",
];

/// One top-level field of a kind and its data category.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The JSON name of the field.
    pub name: String,
    /// Its data category; nested values belong to it too.
    pub category: Category,
}

/// Why a JSON Schema cannot be the schema of a kind. Names the field when one is at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaProblem {
    /// The top-level field at fault, if the problem is in one.
    pub field: Option<String>,
    /// What is wrong (never a payload value: a schema holds none).
    pub message: String,
}

impl SchemaProblem {
    fn new(message: impl Into<String>) -> Self {
        SchemaProblem {
            field: None,
            message: message.into(),
        }
    }

    fn at(field: &str, message: impl Into<String>) -> Self {
        SchemaProblem {
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }
}

impl fmt::Display for SchemaProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "field '{field}': {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The checked schema of one content kind.
#[derive(Clone)]
pub struct KindSchema {
    kind: Kind,
    description: String,
    /// The schema, with `additionalProperties: false` at the top level.
    schema: Value,
    /// The top-level fields, in the order of the schema's properties.
    fields: Vec<Field>,
    /// SHA-256 of the schema's JSON text: the key of compiled validators.
    digest: [u8; 32],
}

impl fmt::Debug for KindSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KindSchema")
            .field("kind", &self.kind)
            .field("fields", &self.fields)
            .finish_non_exhaustive()
    }
}

impl PartialEq for KindSchema {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.digest == other.digest
            && self.description == other.description
    }
}

impl Eq for KindSchema {}

impl KindSchema {
    /// Check `schema` as the schema of the content kind `kind`, described by
    /// `description` (the schema's own `description` when empty).
    ///
    /// The schema must describe an object; every top-level property must carry an
    /// `x-category` naming a data category; a nested `x-category` must repeat its
    /// top-level field's; `$ref` must be local (`#...`); and the schema must compile.
    /// `additionalProperties` may only be `false`, and is set so when absent.
    pub fn new(kind: Kind, description: &str, schema: Value) -> Result<KindSchema, SchemaProblem> {
        if !kind.is_content() {
            return Err(SchemaProblem::new(format!(
                "{kind} is a control record and has no payload schema"
            )));
        }
        let Value::Object(mut top) = schema else {
            return Err(SchemaProblem::new("the schema is not a JSON object"));
        };
        if let Some(k) = top
            .keys()
            .find(|k| !k.starts_with("x-") && !TOP_LEVEL_KEYWORDS.contains(&k.as_str()))
        {
            return Err(SchemaProblem::new(format!(
                "keyword '{k}' is not allowed at the top level of a kind's schema (allowed: {})",
                TOP_LEVEL_KEYWORDS.join(", ")
            )));
        }
        if top.get("type") != Some(&Value::String("object".into())) {
            return Err(SchemaProblem::new(
                "a kind's schema must have \"type\": \"object\"",
            ));
        }
        match top.get("additionalProperties") {
            None | Some(Value::Bool(false)) => {}
            Some(_) => {
                return Err(SchemaProblem::new(
                    "additionalProperties must be false (or left out): a field without a \
                     category could reach every role",
                ))
            }
        }
        top.insert("additionalProperties".into(), Value::Bool(false));
        let Some(Value::Object(props)) = top.get("properties") else {
            return Err(SchemaProblem::new(
                "a kind's schema must have \"properties\"",
            ));
        };
        if props.is_empty() {
            return Err(SchemaProblem::new("a kind's schema has no properties"));
        }
        let mut fields = Vec::with_capacity(props.len());
        for (name, sub) in props {
            let category = match sub.get(X_CATEGORY) {
                None => {
                    return Err(SchemaProblem::at(
                        name,
                        format!("has no {X_CATEGORY}: every field must name its data category"),
                    ))
                }
                Some(Value::String(c)) => c.parse::<Category>().map_err(|_| {
                    SchemaProblem::at(
                        name,
                        format!(
                            "unknown {X_CATEGORY} '{c}' (expected one of {})",
                            category_names()
                        ),
                    )
                })?,
                Some(_) => {
                    return Err(SchemaProblem::at(
                        name,
                        format!("{X_CATEGORY} must be a string"),
                    ))
                }
            };
            field_categories(sub, category).map_err(|m| SchemaProblem::at(name, m))?;
            fields.push(Field {
                name: name.clone(),
                category,
            });
        }
        if let Some(req) = top.get("required") {
            let Some(req) = req.as_array() else {
                return Err(SchemaProblem::new("required must be a list of field names"));
            };
            for r in req {
                match r.as_str() {
                    Some(r) if props.contains_key(r) => {}
                    Some(r) => {
                        return Err(SchemaProblem::at(r, "is required but not a property"));
                    }
                    None => return Err(SchemaProblem::new("required must list field names")),
                }
            }
        }
        for (key, v) in &top {
            if key != "properties" {
                no_categories(v).map_err(SchemaProblem::new)?;
            }
            local_refs(v).map_err(SchemaProblem::new)?;
        }
        let schema = Value::Object(top);
        let text = serde_json::to_vec(&schema)
            .map_err(|_| SchemaProblem::new("the schema cannot be written as JSON"))?;
        if text.len() > MAX_SCHEMA_BYTES {
            return Err(SchemaProblem::new(format!(
                "the schema is larger than {MAX_SCHEMA_BYTES} bytes"
            )));
        }
        if let Err(e) = jsonschema::validator_for(&schema) {
            return Err(SchemaProblem::new(format!(
                "not a valid JSON Schema: {}",
                super::describe(&e)
            )));
        }
        let description = if description.trim().is_empty() {
            schema
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        } else {
            description.to_owned()
        };
        Ok(KindSchema {
            kind,
            description,
            schema,
            fields,
            digest: Sha256::digest(&text).into(),
        })
    }

    /// The kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// What the kind is for, in words.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The JSON Schema of a whole payload.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Whether the schema requires the top-level field `name`.
    pub fn is_required(&self, name: &str) -> bool {
        self.schema
            .get("required")
            .and_then(Value::as_array)
            .is_some_and(|r| r.iter().any(|f| f.as_str() == Some(name)))
    }

    /// The top-level fields and their categories, in the order of the schema.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// The category of the top-level field `name`, if the kind has that field.
    pub fn category(&self, name: &str) -> Option<Category> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.category)
    }

    /// The categories the kind's fields use.
    pub fn categories(&self) -> BTreeSet<Category> {
        self.fields.iter().map(|f| f.category).collect()
    }

    /// The names of the fields a role granted `granted` sees.
    pub fn fields_in_view<'a>(
        &'a self,
        granted: &'a BTreeSet<Category>,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(|f| granted.contains(&f.category))
            .map(|f| f.name.as_str())
    }

    /// SHA-256 of the schema's JSON text.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The schema of one view: only the properties whose category is granted, nothing
    /// else allowed, and only the granted required fields required.
    pub fn view_schema(&self, granted: &BTreeSet<Category>) -> Value {
        let mut schema = self.schema.clone();
        let allowed: BTreeSet<&str> = self.fields_in_view(granted).collect();
        if let Some(obj) = schema.as_object_mut() {
            if let Some(Value::Object(props)) = obj.get_mut("properties") {
                props.retain(|k, _| allowed.contains(k.as_str()));
            }
            if let Some(Value::Array(req)) = obj.get_mut("required") {
                req.retain(|v| v.as_str().is_some_and(|s| allowed.contains(s)));
            }
            obj.insert("additionalProperties".into(), Value::Bool(false));
        }
        schema
    }

    /// Cut a full payload down to the view for `granted`: only granted top-level fields.
    pub fn project(&self, granted: &BTreeSet<Category>, payload: &Map<String, Value>) -> Value {
        Value::Object(
            payload
                .iter()
                .filter(|(k, _)| self.category(k).is_some_and(|c| granted.contains(&c)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// The top-level fields of `payload` that are not in the view for `granted`.
    pub fn fields_outside(&self, granted: &BTreeSet<Category>, payload: &Value) -> Vec<String> {
        match payload.as_object() {
            Some(obj) => obj
                .keys()
                .filter(|k| !self.category(k).is_some_and(|c| granted.contains(&c)))
                .cloned()
                .collect(),
            None => Vec::new(),
        }
    }
}

/// Check that every `x-category` below a top-level field's own schema repeats the
/// field's category.
fn field_categories(sub: &Value, category: Category) -> Result<(), String> {
    walk(sub, true, &mut |obj, top| match obj.get(X_CATEGORY) {
        Some(Value::String(c)) if top || c == category.as_str() => Ok(()),
        Some(_) if top => Ok(()),
        Some(_) => Err(format!(
            "a nested value carries another {X_CATEGORY} than its field ({category}); nested \
             values belong to their top-level field's category"
        )),
        None => Ok(()),
    })
}

/// Refuse an `x-category` outside the top-level properties (e.g. in `$defs`): a
/// definition can be shared by fields of several categories.
fn no_categories(v: &Value) -> Result<(), String> {
    walk(v, false, &mut |obj, _| match obj.get(X_CATEGORY) {
        Some(_) => Err(format!(
            "{X_CATEGORY} belongs on top-level properties only, not in shared definitions"
        )),
        None => Ok(()),
    })
}

/// Refuse a `$ref` that is not local to the schema: a kind's schema is whole in the
/// policy the federation signs.
fn local_refs(v: &Value) -> Result<(), String> {
    walk(v, false, &mut |obj, _| match obj.get("$ref") {
        Some(Value::String(r)) if r.starts_with('#') => Ok(()),
        Some(_) => Err("a $ref must point inside the schema ('#/$defs/...')".into()),
        None => Ok(()),
    })
}

/// A check of one object of a schema; `true` for the first object visited.
type Visit<'a> = dyn FnMut(&Map<String, Value>, bool) -> Result<(), String> + 'a;

/// Visit every object in `v`, depth first; the first object visited is flagged `top`.
fn walk(v: &Value, top: bool, f: &mut Visit<'_>) -> Result<(), String> {
    match v {
        Value::Object(obj) => {
            f(obj, top)?;
            obj.values().try_for_each(|c| walk(c, false, f))
        }
        Value::Array(a) => a.iter().try_for_each(|c| walk(c, false, f)),
        _ => Ok(()),
    }
}

fn category_names() -> String {
    Category::ALL.map(|c| c.as_str()).join(", ")
}

/// The shipped schema file of a built-in content kind.
fn shipped(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Aanmelding => include_str!("../../json/kinds/aanmelding.schema.json"),
        Kind::Aanmeldbericht => include_str!("../../json/kinds/aanmeldbericht.schema.json"),
        Kind::Signaal => include_str!("../../json/kinds/signaal.schema.json"),
        Kind::Reactie => include_str!("../../json/kinds/reactie.schema.json"),
        Kind::DatalekMelding => include_str!("../../json/kinds/datalek_melding.schema.json"),
        Kind::VerstrekkingDerden => {
            include_str!("../../json/kinds/verstrekking_derden.schema.json")
        }
        Kind::Correctie => include_str!("../../json/kinds/correctie.schema.json"),
        _ => return None,
    })
}

/// The schema of a built-in content kind, read from its shipped file; `None` for control
/// and covenant kinds.
pub fn builtin(kind: Kind) -> Option<&'static KindSchema> {
    static LIBRARY: OnceLock<Vec<KindSchema>> = OnceLock::new();
    LIBRARY
        .get_or_init(|| {
            Kind::CONTENT
                .into_iter()
                .filter_map(|k| Some((k, shipped(k)?)))
                .map(|(k, text)| {
                    // The shipped files are generated from the payload types and checked
                    // by `json_schema_files_match_the_types` and `the_library_loads`.
                    let value = serde_json::from_str(text).expect("a shipped schema is JSON");
                    KindSchema::new(k, "", value).expect("a shipped schema is a kind's schema")
                })
                .collect()
        })
        .iter()
        .find(|s| s.kind == kind)
}
