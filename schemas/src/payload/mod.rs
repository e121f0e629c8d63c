//! Typed payloads of every content kind, their data categories, JSON Schemas and validation.
//!
//! A payload is a JSON object. Every top-level field belongs to one [`Category`]; a
//! recipient role's *view* of a payload holds exactly the top-level fields whose category
//! the policy grants that role. The schema of a view is the kind's schema with the other
//! properties removed and `additionalProperties: false`, so a body holding a field outside
//! the view fails validation by name.

mod aanmelding;
mod casus;
mod correctie;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

pub use aanmelding::*;
pub use casus::*;
pub use correctie::*;

use crate::error::Violation;
use crate::kind::{Category, Kind};
use crate::Error;

/// A payload type of one content kind.
pub trait Payload: Serialize + DeserializeOwned + JsonSchema {
    /// The kind this payload belongs to.
    const KIND: Kind;
    /// The category of every top-level field, by its JSON name. Every property of the
    /// type's schema appears here exactly once (a test checks this).
    const FIELDS: &'static [(&'static str, Category)];
}

/// The field table of a content kind, or `None` for a control kind.
pub fn fields_of(kind: Kind) -> Option<&'static [(&'static str, Category)]> {
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

/// The categories used by a content kind's fields.
pub fn categories_of(kind: Kind) -> BTreeSet<Category> {
    fields_of(kind)
        .unwrap_or(&[])
        .iter()
        .map(|(_, c)| *c)
        .collect()
}

/// The JSON Schema (draft 2020-12) of a kind's payload, generated from the Rust type.
pub fn schema_of(kind: Kind) -> Value {
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
    };
    schema.to_value()
}

/// The schema of one view: only the properties whose category is granted, nothing else
/// allowed, and only the granted required fields required.
pub fn view_schema_of(kind: Kind, granted: &BTreeSet<Category>) -> Value {
    let mut schema = schema_of(kind);
    let allowed: BTreeSet<&str> = fields_of(kind)
        .unwrap_or(&[])
        .iter()
        .filter(|(_, c)| granted.contains(c))
        .map(|(n, _)| *n)
        .collect();
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

/// Validate a whole payload of `kind` against its schema.
pub fn validate(kind: Kind, payload: &Value) -> Result<(), Error> {
    validate_against(kind, &*validator(kind, None)?, payload)
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

/// Validate the view of `kind` for a role granted `granted`: fields outside the view are
/// reported as [`Error::FieldsOutsideView`] before any other check.
pub fn validate_view(
    kind: Kind,
    role: &str,
    granted: &BTreeSet<Category>,
    payload: &Value,
) -> Result<(), Error> {
    let outside = fields_outside(kind, granted, payload);
    if !outside.is_empty() {
        return Err(Error::FieldsOutsideView {
            kind,
            role: role.to_owned(),
            fields: outside,
        });
    }
    validate_against(kind, &*validator(kind, Some(granted))?, payload)
}

/// The compiled validator of a kind's schema, or of one view of it. Compiling a schema
/// costs about a millisecond, two hundred times the validation itself, so each is compiled
/// once per process. The cache is bounded: one entry per kind and set of categories.
fn validator(
    kind: Kind,
    granted: Option<&BTreeSet<Category>>,
) -> Result<Arc<jsonschema::Validator>, Error> {
    type Cache = Mutex<HashMap<(Kind, Option<BTreeSet<Category>>), Arc<jsonschema::Validator>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Cache::default);
    // Entries are only ever inserted whole: a poisoned lock still holds a usable map.
    let lock = || cache.lock().unwrap_or_else(PoisonError::into_inner);
    let key = (kind, granted.cloned());
    if let Some(v) = lock().get(&key) {
        return Ok(v.clone());
    }
    let schema = match granted {
        None => schema_of(kind),
        Some(g) => view_schema_of(kind, g),
    };
    let compiled = jsonschema::validator_for(&schema).map_err(|e| Error::Schema {
        kind,
        violations: vec![Violation {
            path: String::new(),
            message: format!("schema itself is invalid: {}", e.kind_description()),
        }],
    })?;
    let compiled = Arc::new(compiled);
    lock().insert(key, compiled.clone());
    Ok(compiled)
}

/// The top-level fields of `payload` that are not in the view for `granted`.
pub fn fields_outside(kind: Kind, granted: &BTreeSet<Category>, payload: &Value) -> Vec<String> {
    let table = fields_of(kind).unwrap_or(&[]);
    match payload.as_object() {
        Some(obj) => obj
            .keys()
            .filter(|k| {
                !table
                    .iter()
                    .any(|(n, c)| n == &k.as_str() && granted.contains(c))
            })
            .cloned()
            .collect(),
        None => Vec::new(),
    }
}

/// Cut a full payload down to the view for `granted`: keep only granted top-level fields.
pub fn project(kind: Kind, granted: &BTreeSet<Category>, payload: &Map<String, Value>) -> Value {
    let table = fields_of(kind).unwrap_or(&[]);
    let view: Map<String, Value> = payload
        .iter()
        .filter(|(k, _)| {
            table
                .iter()
                .any(|(n, c)| n == &k.as_str() && granted.contains(c))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(view)
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
        Err(Error::Schema { kind, violations })
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
