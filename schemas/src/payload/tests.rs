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

fn lib(kind: Kind) -> &'static KindSchema {
    builtin(kind).unwrap_or_else(|| panic!("{kind} is not in the library"))
}

#[test]
fn the_library_loads() {
    for kind in Kind::CONTENT {
        let schema = lib(kind);
        assert_eq!(schema.kind(), kind);
        assert!(!schema.description().is_empty(), "{kind}");
    }
    for kind in Kind::ALL.into_iter().filter(|k| !k.is_content()) {
        assert!(builtin(kind).is_none(), "{kind} is a control record");
    }
}

#[test]
fn every_content_example_validates() {
    for kind in Kind::CONTENT {
        let v = example(kind);
        validate(lib(kind), &v).unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
}

#[test]
fn the_shipped_categories_are_the_types_field_tables() {
    for kind in Kind::CONTENT {
        let schema = schema_of(kind).unwrap();
        let props: BTreeSet<String> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let table = type_fields(kind).unwrap();
        let unique: BTreeSet<String> = table.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(unique.len(), table.len(), "{kind}: a field is listed twice");
        assert_eq!(unique, props, "{kind}: field table and schema differ");
        for (name, category) in table {
            assert_eq!(lib(kind).category(name), Some(*category), "{kind}.{name}");
        }
        assert_eq!(lib(kind).fields().len(), table.len(), "{kind}");
    }
}

#[test]
fn signals_answers_and_disclosures_carry_categorised_free_text() {
    for kind in [Kind::Signaal, Kind::Reactie, Kind::VerstrekkingDerden] {
        let s = lib(kind);
        assert_eq!(s.category("toelichting_zorg"), Some(Category::Support));
        assert_eq!(s.category("toelichting_justitie"), Some(Category::Justice));
        assert_eq!(s.category("toelichting_wonen"), Some(Category::Housing));
        assert_eq!(s.category("toelichting_financien"), Some(Category::Debt));
    }
    // A role granted only `case` gets none of that text.
    let mut full = example(Kind::Signaal);
    full["toelichting_justitie"] = json!("Reclassering: meldplicht, contactverbod.");
    full["toelichting_zorg"] = json!("Ambulante begeleiding, twee keer per week.");
    let case_only: BTreeSet<Category> = [Category::Case].into();
    let view = project(lib(Kind::Signaal), &case_only, full.as_object().unwrap());
    assert!(view.get("toelichting_justitie").is_none());
    assert!(view.get("toelichting_zorg").is_none());
    assert_eq!(view["omschrijving"], full["omschrijving"]);
    validate_view(lib(Kind::Signaal), "woningcorporatie", &case_only, &view).unwrap();
    match validate_view(lib(Kind::Signaal), "woningcorporatie", &case_only, &full) {
        Err(Error::FieldsOutsideView { fields, .. }) => {
            assert_eq!(fields, vec!["toelichting_justitie", "toelichting_zorg"]);
        }
        other => panic!("expected FieldsOutsideView, got {other:?}"),
    }
}

#[test]
fn validation_names_the_field_path_and_not_the_value() {
    let mut v = example(Kind::Signaal);
    v["categorie"] = json!("GEHEIME-WAARDE-123");
    let err = validate(lib(Kind::Signaal), &v).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("/categorie"), "{text}");
    assert!(!text.contains("GEHEIME-WAARDE-123"), "{text}");

    let mut v = example(Kind::Signaal);
    v.as_object_mut().unwrap().remove("omschrijving");
    let text = validate(lib(Kind::Signaal), &v).unwrap_err().to_string();
    assert!(text.contains("omschrijving"), "{text}");
}

#[test]
fn a_corporation_view_of_an_aanmelding_holds_no_support_or_justice_fields() {
    let granted: BTreeSet<Category> =
        [Category::Identity, Category::Contact, Category::Housing].into();
    let schema = lib(Kind::Aanmelding);
    let full = example(Kind::Aanmelding);
    let view = project(schema, &granted, full.as_object().unwrap());
    for key in view.as_object().unwrap().keys() {
        let cat = schema.category(key).unwrap();
        assert!(
            granted.contains(&cat),
            "{key} ({cat}) must not be in a corporation view"
        );
    }
    for f in schema.fields() {
        if matches!(f.category, Category::Support | Category::Justice) {
            assert!(
                view.get(&f.name).is_none(),
                "{} leaked into the view",
                f.name
            );
        }
    }
    validate_view(schema, "woningcorporatie", &granted, &view).unwrap();
    // The full payload is refused for that view, naming the extra fields.
    match validate_view(schema, "woningcorporatie", &granted, &full) {
        Err(Error::FieldsOutsideView { fields, .. }) => {
            assert!(!fields.is_empty());
            for f in &fields {
                assert!(!granted.contains(&schema.category(f).unwrap()));
            }
        }
        other => panic!("expected FieldsOutsideView, got {other:?}"),
    }
}

#[test]
fn non_objects_are_rejected() {
    assert!(validate(lib(Kind::Signaal), &json!([1, 2, 3])).is_err());
    assert!(validate(lib(Kind::Signaal), &json!(null)).is_err());
}

fn covenant_kind() -> Kind {
    "risicotaxatie".parse().unwrap()
}

fn risicotaxatie() -> Value {
    json!({
        "type": "object",
        "required": ["niveau"],
        "properties": {
            "niveau": { "x-category": "case", "enum": ["laag", "hoog"] },
            "justitie": { "x-category": "justice", "type": "string", "maxLength": 100 },
            "zorg": {
                "x-category": "support",
                "type": "object",
                "properties": { "aanbieder": { "type": "string", "x-category": "support" } }
            }
        }
    })
}

#[test]
fn a_covenant_schema_is_read_by_its_categories() {
    let s = KindSchema::new(covenant_kind(), "Risk assessment", risicotaxatie()).unwrap();
    assert_eq!(s.category("justitie"), Some(Category::Justice));
    assert_eq!(s.category("zorg"), Some(Category::Support));
    assert_eq!(
        s.categories(),
        [Category::Support, Category::Justice, Category::Case].into()
    );
    // additionalProperties is forced to false: an uncategorised field is refused.
    let err = validate(&s, &json!({"niveau": "hoog", "extra": "x"})).unwrap_err();
    assert!(err.to_string().contains("extra"), "{err}");
    validate(
        &s,
        &json!({"niveau": "hoog", "justitie": "j", "zorg": {"aanbieder": "a"}}),
    )
    .unwrap();
    let support: BTreeSet<Category> = [Category::Case, Category::Support].into();
    let view = project(
        &s,
        &support,
        json!({"niveau": "hoog", "justitie": "j", "zorg": {}})
            .as_object()
            .unwrap(),
    );
    assert_eq!(view, json!({"niveau": "hoog", "zorg": {}}));
    validate_view(&s, "zorgaanbieder", &support, &view).unwrap();
}

#[test]
fn a_covenant_schema_without_categories_is_refused_naming_the_field() {
    let cases: Vec<(Value, Option<&str>, &str)> = vec![
        (
            {
                let mut v = risicotaxatie();
                v["properties"]["justitie"]
                    .as_object_mut()
                    .unwrap()
                    .remove("x-category");
                v
            },
            Some("justitie"),
            "no x-category",
        ),
        (
            {
                let mut v = risicotaxatie();
                v["properties"]["justitie"]["x-category"] = json!("strafblad");
                v
            },
            Some("justitie"),
            "unknown x-category",
        ),
        (
            {
                let mut v = risicotaxatie();
                v["properties"]["zorg"]["properties"]["aanbieder"]["x-category"] = json!("justice");
                v
            },
            Some("zorg"),
            "nested",
        ),
        (
            {
                let mut v = risicotaxatie();
                v["additionalProperties"] = json!(true);
                v
            },
            None,
            "additionalProperties",
        ),
        (
            {
                let mut v = risicotaxatie();
                v["allOf"] = json!([{"required": ["justitie"]}]);
                v
            },
            None,
            "allOf",
        ),
        (
            {
                let mut v = risicotaxatie();
                v["properties"]["justitie"]["$ref"] = json!("https://example.org/s.json");
                v
            },
            None,
            "$ref",
        ),
        (
            {
                let mut v = risicotaxatie();
                v["$defs"] = json!({"x": {"x-category": "case"}});
                v
            },
            None,
            "shared definitions",
        ),
        (json!({"type": "array"}), None, "type"),
        (
            json!({"type": "object", "properties": {}}),
            None,
            "no properties",
        ),
    ];
    for (schema, field, needle) in cases {
        let problem = KindSchema::new(covenant_kind(), "", schema).unwrap_err();
        assert_eq!(problem.field.as_deref(), field, "{problem}");
        assert!(problem.to_string().contains(needle), "{problem}");
    }
    assert!(KindSchema::new(Kind::DeliveryReceipt, "", risicotaxatie()).is_err());
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
        .map(|k| {
            let dir = if k.is_content() { "kinds/" } else { "" };
            (
                format!("{dir}{}.schema.json", k.as_str()),
                schema_of(k).unwrap(),
            )
        })
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
    expected.push(("policy.schema.json".into(), crate::policy::json_schema()));
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
    for dir in ["", "kinds/"] {
        for entry in std::fs::read_dir(schema_dir().join(dir)).unwrap() {
            let name = format!("{dir}{}", entry.unwrap().file_name().to_string_lossy());
            if name.ends_with(".schema.json") && !names.contains(&name) {
                drift.push(format!("{name} (no type generates it)"));
            }
        }
    }
    assert!(
        drift.is_empty(),
        "schemas/json drifted from the types: {drift:?}; regenerate with \
         KETENPOST_BLESS=1 cargo test -p ketenpost-schemas json_schema_files"
    );
}

/// Need-to-know in every seed policy, free text included: for every purpose, kind and
/// recipient role, the view holds only fields of granted categories, and text of another
/// category (e.g. a signal's justice context) is nowhere in it.
#[test]
fn every_seed_view_holds_only_its_categories_free_text_included() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let policy =
            crate::policy::Policy::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for purpose in policy.purposes.values() {
            for (kind, rule) in &purpose.kinds {
                let schema = policy.kind_schema(*kind).unwrap();
                let mut full = example(*kind);
                let mut marked = Vec::new();
                for f in schema.fields() {
                    if f.name.starts_with("toelichting_") {
                        let text = format!("MARKER-{}-{}", f.category, f.name);
                        full[f.name.as_str()] = json!(text);
                        marked.push((f.category, text));
                    }
                }
                validate(schema, &full).unwrap_or_else(|e| panic!("{kind}: {e}"));
                for (role, granted) in &rule.views {
                    let view = project(schema, granted, full.as_object().unwrap());
                    for key in view.as_object().unwrap().keys() {
                        assert!(granted.contains(&schema.category(key).unwrap()));
                    }
                    let text = view.to_string();
                    for (category, marker) in &marked {
                        assert_eq!(
                            text.contains(marker.as_str()),
                            granted.contains(category),
                            "{}: {kind} for {role}: {marker}",
                            path.display()
                        );
                    }
                    validate_view(schema, role.as_str(), granted, &view).unwrap();
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} views checked");
}

/// The README's table of the built-in kinds' fields and their categories (between its
/// `kind-fields` markers), generated from the shipped schemas. Run with
/// `KETENPOST_BLESS=1 cargo test -p ketenpost-schemas readme_kind_fields` to rewrite it.
#[test]
fn readme_kind_fields_table_matches_the_schemas() {
    const START: &str = "<!-- kind-fields: generated from schemas/json/kinds by the test readme_kind_fields_table_matches_the_schemas -->\n";
    const END: &str = "<!-- kind-fields end -->\n";
    let mut table = String::from("| kind | category | fields |\n|---|---|---|\n");
    for kind in Kind::CONTENT {
        let schema = builtin(kind).unwrap();
        for category in Category::ALL {
            let fields: Vec<String> = schema
                .fields()
                .iter()
                .filter(|f| f.category == category)
                .map(|f| format!("`{}`", f.name))
                .collect();
            if !fields.is_empty() {
                table.push_str(&format!(
                    "| `{kind}` | `{category}` | {} |\n",
                    fields.join(", ")
                ));
            }
        }
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let start = readme
        .find(START)
        .expect("the README has the kind-fields marker")
        + START.len();
    let end = start
        + readme[start..]
            .find(END)
            .expect("the kind-fields end marker");
    if std::env::var_os("KETENPOST_BLESS").is_some() {
        let mut new = readme.clone();
        new.replace_range(start..end, &table);
        std::fs::write(&path, new).unwrap();
    } else {
        assert_eq!(
            readme[start..end],
            table,
            "README.md's kind-fields table drifted; regenerate with KETENPOST_BLESS=1 \
             cargo test -p ketenpost-schemas readme_kind_fields"
        );
    }
}
