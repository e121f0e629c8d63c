#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::json;

use super::*;

fn example(kind: Kind) -> Value {
    match kind {
        Kind::Aanmelding => serde_json::to_value(Aanmelding::example()).unwrap(),
        Kind::Aanmeldbericht => serde_json::to_value(Aanmeldbericht::example()).unwrap(),
        Kind::Signaal => serde_json::to_value(Signaal::example()).unwrap(),
        Kind::Reactie => serde_json::to_value(Reactie::example()).unwrap(),
        Kind::DatalekMelding => serde_json::to_value(DatalekMelding::example()).unwrap(),
        Kind::VerstrekkingDerden => serde_json::to_value(VerstrekkingDerden::example()).unwrap(),
        Kind::Correctie => serde_json::to_value(Correctie::example()).unwrap(),
        other => panic!("no example for {other}"),
    }
}

#[test]
fn every_content_example_validates() {
    for kind in Kind::CONTENT {
        let v = example(kind);
        validate(kind, &v).unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
}

#[test]
fn field_tables_match_the_schemas() {
    for kind in Kind::CONTENT {
        let schema = schema_of(kind);
        let props: BTreeSet<String> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let table: Vec<&str> = fields_of(kind).unwrap().iter().map(|(n, _)| *n).collect();
        let unique: BTreeSet<String> = table.iter().map(|s| s.to_string()).collect();
        assert_eq!(unique.len(), table.len(), "{kind}: a field is listed twice");
        assert_eq!(unique, props, "{kind}: field table and schema differ");
    }
}

#[test]
fn validation_names_the_field_path_and_not_the_value() {
    let mut v = example(Kind::Signaal);
    v["categorie"] = json!("GEHEIME-WAARDE-123");
    let err = validate(Kind::Signaal, &v).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("/categorie"), "{text}");
    assert!(!text.contains("GEHEIME-WAARDE-123"), "{text}");

    let mut v = example(Kind::Signaal);
    v.as_object_mut().unwrap().remove("omschrijving");
    let text = validate(Kind::Signaal, &v).unwrap_err().to_string();
    assert!(text.contains("omschrijving"), "{text}");
}

#[test]
fn a_corporation_view_of_an_aanmelding_holds_no_support_or_justice_fields() {
    let granted: BTreeSet<Category> =
        [Category::Identity, Category::Contact, Category::Housing].into();
    let full = example(Kind::Aanmelding);
    let view = project(Kind::Aanmelding, &granted, full.as_object().unwrap());
    let table = fields_of(Kind::Aanmelding).unwrap();
    for key in view.as_object().unwrap().keys() {
        let (_, cat) = table.iter().find(|(n, _)| n == key).unwrap();
        assert!(
            granted.contains(cat),
            "{key} ({cat}) must not be in a corporation view"
        );
    }
    for (name, cat) in table {
        if matches!(cat, Category::Support | Category::Justice) {
            assert!(view.get(*name).is_none(), "{name} leaked into the view");
        }
    }
    validate_view(Kind::Aanmelding, "woningcorporatie", &granted, &view).unwrap();
    // The full payload is refused for that view, naming the extra fields.
    match validate_view(Kind::Aanmelding, "woningcorporatie", &granted, &full) {
        Err(Error::FieldsOutsideView { fields, .. }) => {
            assert!(!fields.is_empty());
            for f in &fields {
                let (_, cat) = table.iter().find(|(n, _)| n == f).unwrap();
                assert!(!granted.contains(cat));
            }
        }
        other => panic!("expected FieldsOutsideView, got {other:?}"),
    }
}

#[test]
fn non_objects_are_rejected() {
    assert!(validate(Kind::Signaal, &json!([1, 2, 3])).is_err());
    assert!(validate(Kind::Signaal, &json!(null)).is_err());
}

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json")
}

/// Every file in `schemas/json/`, generated from the types. Run with
/// `KETENPOST_BLESS=1 cargo test -p ketenpost-schemas json_schema_files` to rewrite them.
#[test]
fn json_schema_files_match_the_types() {
    let bless = std::env::var_os("KETENPOST_BLESS").is_some();
    let mut expected: Vec<(String, Value)> = Kind::ALL
        .into_iter()
        .map(|k| (format!("{}.schema.json", k.as_str()), schema_of(k)))
        .collect();
    expected.push((
        "envelope_header.schema.json".into(),
        schemars::schema_for!(crate::envelope::Header).to_value(),
    ));
    expected.push((
        "signed_record.schema.json".into(),
        schemars::schema_for!(crate::control::SignedRecord).to_value(),
    ));
    expected.push((
        "directory.schema.json".into(),
        schemars::schema_for!(crate::directory::Directory).to_value(),
    ));
    let mut drift = Vec::new();
    for (name, schema) in &expected {
        let path = schema_dir().join(name);
        let text = serde_json::to_string_pretty(schema).unwrap() + "\n";
        if bless {
            std::fs::create_dir_all(schema_dir()).unwrap();
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            drift.push(name.clone());
        }
    }
    let names: BTreeSet<String> = expected.iter().map(|(n, _)| n.clone()).collect();
    for entry in std::fs::read_dir(schema_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".schema.json") && !names.contains(&name) {
            drift.push(format!("{name} (no type generates it)"));
        }
    }
    assert!(
        drift.is_empty(),
        "schemas/json drifted from the types: {drift:?}; regenerate with \
         KETENPOST_BLESS=1 cargo test -p ketenpost-schemas json_schema_files"
    );
}
