//! Payloads of every content kind: the typed payloads of the built-in kinds, the schema of
//! every kind with its data categories ([`KindSchema`]), views and validation.
//!
//! A payload is a JSON object. Every top-level field belongs to one [`Category`], named by
//! `x-category` in its kind's schema; a recipient role's *view* of a payload holds exactly
//! the top-level fields whose category the policy grants that role. The schema of a view
//! is the kind's schema with the other properties removed and `additionalProperties:
//! false`, so a body holding a field outside the view fails validation by name. Built-in
//! and covenant-declared kinds go through the same functions; find a kind's schema with
//! [`Policy::kind_schema`](crate::policy::Policy::kind_schema).

mod aanmelding;
mod casus;
mod correctie;
mod schema;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

pub use aanmelding::*;
pub use casus::*;
pub use correctie::*;
pub use schema::{builtin, Field, KindSchema, SchemaProblem, MAX_SCHEMA_BYTES, X_CATEGORY};

use crate::error::Violation;
use crate::kind::{Category, Kind};
use crate::Error;

/// A payload type of one built-in content kind.
pub trait Payload: Serialize + DeserializeOwned + JsonSchema {
    /// The kind this payload belongs to.
    const KIND: Kind;
    /// The category of every top-level field, by its JSON name: the `x-category` the
    /// shipped schema file gives each property. Every property of the type's schema
    /// appears here exactly once (a test checks this).
    const FIELDS: &'static [(&'static str, Category)];
}

/// The field table of a built-in content kind's Rust type, in declaration order, or `None`
/// for other kinds. This is where the shipped schema files take `x-category` from; at run
/// time views go by a kind's [`KindSchema`].
pub fn type_fields(kind: Kind) -> Option<&'static [(&'static str, Category)]> {
    Some(match kind {
        Kind::Aanmelding => Aanmelding::FIELDS,
        Kind::Aanmeldbericht => Aanmeldbericht::FIELDS,
        Kind::Signaal => Signaal::FIELDS,
        Kind::Reactie => Reactie::FIELDS,
        Kind::DatalekMelding => DatalekMelding::FIELDS,
        Kind::VerstrekkingDerden => VerstrekkingDerden::FIELDS,
        Kind::Correctie => Correctie::FIELDS,
        _ => return None,
    })
}

/// The JSON Schema (draft 2020-12) of a built-in kind's payload, generated from the Rust
/// type; for a content kind with `x-category` on every property (from
/// [`Payload::FIELDS`]). This is what the shipped schema files hold; `None` for a
/// covenant kind, whose schema is in its policy.
pub fn schema_of(kind: Kind) -> Option<Value> {
    let schema = match kind {
        Kind::Aanmelding => schemars::schema_for!(Aanmelding),
        Kind::Aanmeldbericht => schemars::schema_for!(Aanmeldbericht),
        Kind::Signaal => schemars::schema_for!(Signaal),
        Kind::Reactie => schemars::schema_for!(Reactie),
        Kind::DatalekMelding => schemars::schema_for!(DatalekMelding),
        Kind::VerstrekkingDerden => schemars::schema_for!(VerstrekkingDerden),
        Kind::Correctie => schemars::schema_for!(Correctie),
        Kind::Toestemming => schemars::schema_for!(crate::control::Toestemming),
        Kind::ToestemmingIntrekking => {
            schemars::schema_for!(crate::control::ToestemmingIntrekking)
        }
        Kind::CaseChange => schemars::schema_for!(crate::control::CaseChange),
        Kind::DeletionOrder => schemars::schema_for!(crate::control::DeletionOrder),
        Kind::DeletionConfirmation => {
            schemars::schema_for!(crate::control::DeletionConfirmation)
        }
        Kind::DeliveryReceipt => schemars::schema_for!(crate::control::DeliveryReceipt),
        Kind::DeadlineNotice => schemars::schema_for!(crate::control::DeadlineNotice),
        Kind::ExpiryNotice => schemars::schema_for!(crate::control::ExpiryNotice),
        Kind::Covenant(_) => return None,
    };
    let mut schema = schema.to_value();
    if let (Some(table), Some(Value::Object(props))) =
        (type_fields(kind), schema.get_mut("properties"))
    {
        for (name, category) in table {
            if let Some(Value::Object(prop)) = props.get_mut(*name) {
                prop.insert(X_CATEGORY.into(), Value::String(category.as_str().into()));
            }
        }
    }
    Some(schema)
}

/// Validate a whole payload against its kind's schema.
pub fn validate(schema: &KindSchema, payload: &Value) -> Result<(), Error> {
    validate_against(schema.kind(), &*validator(schema, None)?, payload)
}

/// The fields of `required` that `payload` leaves out: absent, null, an empty string or
/// an empty list.
pub fn missing_fields(required: &BTreeSet<String>, payload: &Value) -> Vec<String> {
    required
        .iter()
        .filter(|f| match payload.get(f.as_str()) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.trim().is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(_) => false,
        })
        .cloned()
        .collect()
}

/// Validate the view of a kind for a role granted `granted`: fields outside the view are
/// reported as [`Error::FieldsOutsideView`] before any other check.
pub fn validate_view(
    schema: &KindSchema,
    role: &str,
    granted: &BTreeSet<Category>,
    payload: &Value,
) -> Result<(), Error> {
    let outside = schema.fields_outside(granted, payload);
    if !outside.is_empty() {
        return Err(Error::FieldsOutsideView {
            kind: schema.kind().to_string(),
            role: role.to_owned(),
            fields: outside,
        });
    }
    validate_against(schema.kind(), &*validator(schema, Some(granted))?, payload)
}

/// Cut a full payload down to the view for `granted`: keep only granted top-level fields.
pub fn project(
    schema: &KindSchema,
    granted: &BTreeSet<Category>,
    payload: &Map<String, Value>,
) -> Value {
    schema.project(granted, payload)
}

/// The most compiled validators kept; past it the cache starts over.
const VALIDATOR_CACHE: usize = 512;

/// The compiled validator of a kind's schema, or of one view of it. Compiling a schema
/// costs about a millisecond, two hundred times the validation itself, so each is compiled
/// once per process, keyed by the schema's digest (a policy update that changes a
/// covenant kind's schema gets new entries). The cache is bounded by
/// [`VALIDATOR_CACHE`]: when it is full it is emptied and refilled as needed.
fn validator(
    schema: &KindSchema,
    granted: Option<&BTreeSet<Category>>,
) -> Result<Arc<jsonschema::Validator>, Error> {
    type Key = ([u8; 32], Option<BTreeSet<Category>>);
    type Cache = Mutex<HashMap<Key, Arc<jsonschema::Validator>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Cache::default);
    // Entries are only ever inserted whole: a poisoned lock still holds a usable map.
    let lock = || cache.lock().unwrap_or_else(PoisonError::into_inner);
    let key = (*schema.digest(), granted.cloned());
    if let Some(v) = lock().get(&key) {
        return Ok(v.clone());
    }
    let json = match granted {
        None => schema.schema().clone(),
        Some(g) => schema.view_schema(g),
    };
    let compiled = jsonschema::validator_for(&json).map_err(|e| Error::Schema {
        kind: schema.kind().to_string(),
        violations: vec![Violation {
            path: String::new(),
            message: format!("schema itself is invalid: {}", e.kind_description()),
        }],
    })?;
    let compiled = Arc::new(compiled);
    let mut map = lock();
    if map.len() >= VALIDATOR_CACHE {
        map.clear();
    }
    map.insert(key, compiled.clone());
    Ok(compiled)
}

fn validate_against(
    kind: Kind,
    validator: &jsonschema::Validator,
    payload: &Value,
) -> Result<(), Error> {
    let violations: Vec<Violation> = validator
        .iter_errors(payload)
        .map(|e| Violation {
            path: e.instance_path().to_string(),
            message: describe(&e),
        })
        .collect();
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::Schema {
            kind: kind.to_string(),
            violations,
        })
    }
}

/// A description of a validation error that never repeats the offending value.
fn describe(e: &jsonschema::ValidationError<'_>) -> String {
    e.kind_description()
}

trait KindDescription {
    fn kind_description(&self) -> String;
}

impl KindDescription for jsonschema::ValidationError<'_> {
    fn kind_description(&self) -> String {
        use jsonschema::error::ValidationErrorKind as K;
        match self.kind() {
            K::Required { property } => format!("required field {property} is missing"),
            K::AdditionalProperties { unexpected } => {
                format!("field(s) not allowed here: {}", unexpected.join(", "))
            }
            K::Type { kind } => format!("wrong type, expected {kind:?}"),
            K::Enum { .. } => "not one of the allowed values".to_owned(),
            K::Format { format } => format!("not a valid {format}"),
            K::Pattern { .. } => "does not match the required pattern".to_owned(),
            K::MinLength { limit } => format!("shorter than {limit} characters"),
            K::MaxLength { limit } => format!("longer than {limit} characters"),
            K::Minimum { .. } | K::ExclusiveMinimum { .. } => "below the minimum".to_owned(),
            K::Maximum { .. } | K::ExclusiveMaximum { .. } => "above the maximum".to_owned(),
            K::MinItems { limit } => format!("fewer than {limit} items"),
            K::MaxItems { limit } => format!("more than {limit} items"),
            K::OneOfNotValid { .. } | K::AnyOf { .. } => {
                "matches none of the allowed shapes".to_owned()
            }
            K::Constant { .. } => "not the required constant".to_owned(),
            other => format!("violates the schema ({})", short_kind(other)),
        }
    }
}

fn short_kind(k: &jsonschema::error::ValidationErrorKind) -> String {
    let dbg = format!("{k:?}");
    dbg.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("rule")
        .to_owned()
}

#[cfg(test)]
mod tests;
