//! The JSON Schema of the policy file itself (`schemas/json/policy.schema.json`), so that
//! an editor validates a policy as it is written (see the README, "The policy format").
//!
//! It is generated from the raw structs the policy is read into ([`super::RawPolicy`] and
//! the tables below it): their doc comments are the descriptions, `deny_unknown_fields`
//! makes a misspelled key an error, and closed values are enumerated (data categories,
//! consent rules, non-consent grounds) or given a pattern (durations in the strict
//! grammar of [`crate::duration`], names, dates, digests). A key added to a raw struct
//! appears by itself; a `toml::Spanned<T>` field only needs `#[schemars(with = "T")]`
//! (or one of the name types here), as every field shows. The test
//! `json_schema_files_match_the_types` keeps the file in step.
//!
//! The schema is written in JSON Schema draft-07, the dialect TOML editors' tooling
//! (Taplo, "Even Better TOML") supports best. It checks the shape of a policy; the
//! cross-references (a view for a recipient role, a category the kind's schema uses, ...)
//! are checked by `ketenpost-certs policy check`.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

/// The policy file's JSON Schema (draft-07).
pub fn json_schema() -> serde_json::Value {
    let settings = schemars::generate::SchemaSettings::draft07();
    let mut schema = settings
        .into_generator()
        .into_root_schema_for::<super::RawPolicy>();
    schema.insert(
        "$id".into(),
        "https://ketenpost.invalid/schemas/policy.schema.json".into(),
    );
    let mut value = schema.to_value();
    without_null(&mut value);
    value
}

/// Remove what `Option` adds for JSON's null: TOML has none, an optional key is left out.
/// (`"type": [T, "null"]` becomes `T`, a `{"type": "null"}` alternative and a
/// `"default": null` go.)
fn without_null(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            if map.get("default") == Some(&Value::Null) {
                map.remove("default");
            }
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(any)) = map.get_mut("anyOf") {
                any.retain(|s| s.get("type").is_none_or(|t| t != "null"));
                if any.len() == 1 {
                    if let Some(any) = map.remove("anyOf") {
                        map.insert("allOf".into(), any);
                    }
                }
            }
            map.values_mut().for_each(without_null);
        }
        Value::Array(items) => items.iter_mut().for_each(without_null),
        _ => {}
    }
}

/// Declares a string type with a fixed schema, for a raw field written as text.
macro_rules! text_schema {
    ($(#[$doc:meta])* $name:ident => $schema:tt) => {
        $(#[$doc])*
        pub(super) struct $name;

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

text_schema! {
    /// A role, purpose or phase name: it travels in headers and records, which carry
    /// identifiers only.
    Identifier => {
        "type": "string",
        "pattern": "^[A-Za-z0-9_.:-]{1,64}$",
        "description": "An identifier: 1-64 letters, digits, '_', '.', ':' or '-'."
    }
}

text_schema! {
    /// The covenant's id.
    CovenantId => {
        "type": "string",
        "pattern": "^[a-z0-9-]+$",
        "description": "Lowercase letters, digits and '-'; used in every envelope header."
    }
}

text_schema! {
    /// A calendar date.
    Date => {
        "type": "string",
        "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
        "description": "A date, YYYY-MM-DD."
    }
}

text_schema! {
    /// A payload field of the kind, by its JSON name.
    FieldName => {
        "type": "string",
        "minLength": 1,
        "description": "The JSON name of a top-level field of the kind's payload (see its schema)."
    }
}

text_schema! {
    /// A kind's schema file, relative to the policy file's directory.
    SchemaPath => {
        "type": "string",
        "pattern": "^(?!(.*/)?\\.\\.?(/|$))[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$",
        "maxLength": 255,
        "description": "A path relative to the policy file's directory: parts of letters, digits, '.', '_' and '-' separated by '/', no '..'."
    }
}

text_schema! {
    /// A SHA-256 digest.
    Sha256Hex => {
        "type": "string",
        "pattern": "^[0-9a-f]{64}$",
        "description": "A SHA-256 digest: 64 lowercase hex digits (e.g. the output of sha256sum)."
    }
}
