//! Differential tests of the template evaluator: every expression shape the
//! native path evaluates is also compiled for minijinja alone
//! ([`Compiler::engine_only`]), both are rendered against the same record,
//! as a text leaf (`"{{ expr }}"`) and as a typed leaf (`"= expr"`), and
//! they must agree with each other and with the expected rendering.
//!
//! A case is one line of the table in [`every_native_shape_agrees_with_minijinja`]:
//! `check(expr, expected)`, where `expected` is the JSON written for the
//! two leaves, or `error` when both paths must refuse the record; a known
//! difference is pinned with `diverges(expr, native, engine, why)`.

use std::path::Path;
use std::sync::Arc;

use fhirlift_core::record::{Provenance, Record, Schema, Value};

use crate::LookupTable;
use crate::template::{Compiler, Names, RenderBuf, Scope, ScopeShared};

const COLUMNS: &[&str] = &[
    "id", "birth", "seen", "sex", "code", "empty", "nothing", "num", "flag", "dec", "lat",
];

fn record() -> Record {
    let values = vec![
        Value::Text("p-1".into()),
        Value::Text("1980-02-29".into()),
        Value::Text("2023-06-15 09:30:00".into()),
        Value::Text("F".into()),
        Value::Text(" 2 ".into()),
        Value::Text(String::new()),
        Value::Null,
        Value::Integer(42),
        Value::Bool(true),
        Value::Decimal("3.50".into()),
        Value::Text(" 42.12345678901234567".into()),
    ];
    Record {
        stream: Arc::from("patients"),
        key: "p-1".into(),
        schema: Arc::new(Schema::new(
            COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
        )),
        values,
        provenance: Provenance::File {
            file: Arc::from("patients.csv"),
            line: 2,
        },
    }
}

/// The `cond` lookup: one row, keyed by `code`.
fn lookup() -> Arc<LookupTable> {
    let schema = Arc::new(Schema::new(vec!["code".into(), "display".into()]));
    let row = Record {
        stream: Arc::from("conditions"),
        key: "2".into(),
        schema: schema.clone(),
        values: vec![Value::Text("2".into()), Value::Text("Asthma".into())],
        provenance: Provenance::File {
            file: Arc::from("conditions.csv"),
            line: 2,
        },
    };
    Arc::new(LookupTable::build("cond", "conditions.csv", schema, "code", [row]).unwrap())
}

/// The two leaves rendered by one path: their JSON, or `error`.
fn render(expr: &str, engine_only: bool) -> String {
    let quoted = |s: String| format!("'{}'", s.replace('\'', "''"));
    let yaml = format!(
        "text: {}\ntyped: {}\n",
        quoted(format!("{{{{ {expr} }}}}")),
        quoted(format!("= {expr}"))
    );
    render_yaml(&yaml, engine_only, expr)
}

/// A YAML template rendered against the test record by one path: its
/// JSON, or `error`.
fn render_yaml(yaml: &str, engine_only: bool, expr: &str) -> String {
    render_yaml_in_zone(yaml, engine_only, expr, None)
}

/// [`render_yaml`] for a stream whose `zone:` is `zone`.
fn render_yaml_in_zone(yaml: &str, engine_only: bool, expr: &str, zone: Option<&str>) -> String {
    static ENV: std::sync::OnceLock<minijinja::Environment<'static>> = std::sync::OnceLock::new();
    let env = ENV.get_or_init(crate::functions::environment);
    let node = crate::yaml::parse(Path::new("differential.yaml"), yaml).unwrap();
    let record = Arc::new(record());
    let lookups = vec![lookup()];
    let mut vars = vec![(
        "src".to_owned(),
        serde_json::json!("http://clinic.example/mrn"),
    )];
    if let Some(zone) = zone {
        vars.push((
            crate::functions::ZONE_KEY.to_owned(),
            serde_json::json!(zone),
        ));
    }
    let locals = vec!["enc".to_owned()];
    let mut compiler = Compiler::new(Names {
        env,
        columns: &record.schema,
        vars: &vars,
        lookups: &lookups,
        locals: &locals,
    });
    compiler.engine_only = engine_only;
    let tmpl = compiler.compile(&node, "Patient");
    assert!(
        compiler.errors.is_empty(),
        "{expr}: {:?}",
        compiler
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    );
    let shared = Arc::new(ScopeShared::new(
        &vars,
        lookups.clone(),
        locals.clone(),
        Vec::new(),
    ));
    let hits = vec![Some(Arc::new(vec![
        Value::Text("2".into()),
        Value::Text("Asthma".into()),
    ]))];
    let urns = vec!["urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e".to_owned()];
    let scope = Scope::new(&record, &hits, &urns, &shared);
    let mut buf = RenderBuf::default();
    match tmpl.write(&scope, &mut buf) {
        Ok(_) => String::from_utf8(buf.json).unwrap(),
        Err(_) => "error".into(),
    }
}

#[track_caller]
fn check(expr: &str, expected: &str) {
    let native = render(expr, false);
    let engine = render(expr, true);
    assert_eq!(native, engine, "{expr}: native and minijinja differ");
    assert_eq!(native, expected, "{expr}");
}

/// A known difference between the paths, pinned so that it cannot grow
/// unseen: both renderings are asserted, and the reason is in the table.
#[track_caller]
fn diverges(expr: &str, native: &str, engine: &str, _why: &str) {
    assert_eq!(render(expr, false), native, "{expr}: native");
    assert_eq!(render(expr, true), engine, "{expr}: minijinja");
}

#[test]
fn every_native_shape_agrees_with_minijinja() {
    // columns, as the source typed them
    check("id", r#"{"text":"p-1","typed":"p-1"}"#);
    check("num", r#"{"text":"42","typed":42}"#);
    check("flag", r#"{"text":"true","typed":true}"#);
    diverges(
        "dec",
        r#"{"text":"3.50","typed":3.50}"#,
        r#"{"text":"3.50","typed":"3.50"}"#,
        "a decimal is its digits in minijinja (text must keep 3.50), a JSON number natively",
    );
    // exact decimals: the source's digits, never through f64 (issue 20:
    // a 17-digit latitude lost its last digit with `| float`)
    check(
        "lat | decimal",
        r#"{"text":"42.12345678901234567","typed":42.12345678901234567}"#,
    );
    check("dec | decimal", r#"{"text":"3.50","typed":3.50}"#);
    check("num | decimal", r#"{"text":"42","typed":42}"#);
    check("sex | decimal", "error");
    check("empty | decimal", "");
    check("empty", "");
    check("nothing", "");
    // a lookup's column
    check("cond.display", r#"{"text":"Asthma","typed":"Asthma"}"#);
    // a local resource of the record
    check(
        "local('enc')",
        r#"{"text":"urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e","typed":{"reference":"urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e"}}"#,
    );
    // dates
    check(
        "birth | fhir_date",
        r#"{"text":"1980-02-29","typed":"1980-02-29"}"#,
    );
    check(
        "birth | fhir_date('YYYY-MM-DD')",
        r#"{"text":"1980-02-29","typed":"1980-02-29"}"#,
    );
    check(
        "seen | fhir_date",
        r#"{"text":"2023-06-15","typed":"2023-06-15"}"#,
    );
    check("empty | fhir_date", "");
    check(
        "seen | fhir_datetime(offset='+01:00')",
        r#"{"text":"2023-06-15T09:30:00+01:00","typed":"2023-06-15T09:30:00+01:00"}"#,
    );
    check(
        "seen | fhir_datetime(zone='America/New_York')",
        r#"{"text":"2023-06-15T09:30:00-04:00","typed":"2023-06-15T09:30:00-04:00"}"#,
    );
    check("seen | fhir_datetime(zone='Nowhere/Else')", "error");
    check("seen | fhir_datetime", "error");
    // terminology: names, ids and OIDs to system URIs
    check(
        "system_uri('SNOMED')",
        r#"{"text":"http://snomed.info/sct","typed":"http://snomed.info/sct"}"#,
    );
    check("system_uri(empty)", "");
    check("system_uri(sex)", "error");
    check(
        "system_uri(sex, 'urn:local:' ~ sex)",
        r#"{"text":"urn:local:F","typed":"urn:local:F"}"#,
    );
    check(
        "system_uri('LOINC', 'urn:local')",
        r#"{"text":"http://loinc.org","typed":"http://loinc.org"}"#,
    );
    // codes: keyword and dict forms, trimmed keys, defaults, chains
    check(
        "sex | code(F='female', M='male')",
        r#"{"text":"female","typed":"female"}"#,
    );
    check(
        "sex | code({'F': 'female'})",
        r#"{"text":"female","typed":"female"}"#,
    );
    check(
        "code | code({'2': 'two'})",
        r#"{"text":"two","typed":"two"}"#,
    );
    check("sex | code(M='male')", "error");
    check(
        "sex | code(M='male', _default='unknown')",
        r#"{"text":"unknown","typed":"unknown"}"#,
    );
    check(
        "sex | code(F='female') | code(female='f')",
        r#"{"text":"f","typed":"f"}"#,
    );
    check("empty | code(F='female')", "");
    // conditional references
    check(
        "ref('Patient', 'http://clinic.example/mrn', id)",
        r#"{"text":"Patient?identifier=http://clinic.example/mrn|p-1","typed":{"reference":"Patient?identifier=http://clinic.example/mrn|p-1"}}"#,
    );
    check("ref('Patient', 'http://clinic.example/mrn', empty)", "");
}

/// A stream's `zone:` is the zone of `fhir_datetime` without one (issue
/// 20: CSV and PostgreSQL timestamps had only a fixed offset per call);
/// an explicit offset or zone still wins.
#[test]
fn a_streams_zone_is_the_default_of_fhir_datetime() {
    let yaml = "a: '{{ seen | fhir_datetime }}'\nb: \"{{ seen | fhir_datetime(offset='+01:00') }}\"\nc: '= seen | fhir_datetime ~ \"\"'\n";
    for engine_only in [false, true] {
        let in_zone = |zone| render_yaml_in_zone(yaml, engine_only, "zone", Some(zone));
        assert_eq!(
            in_zone("America/New_York"),
            r#"{"a":"2023-06-15T09:30:00-04:00","b":"2023-06-15T09:30:00+01:00","c":"2023-06-15T09:30:00-04:00"}"#,
            "engine only: {engine_only}"
        );
        assert_eq!(
            in_zone("-05:00"),
            r#"{"a":"2023-06-15T09:30:00-05:00","b":"2023-06-15T09:30:00+01:00","c":"2023-06-15T09:30:00-05:00"}"#
        );
    }
}

/// `when:` on an object or list item leaves just that part out when it is
/// false (issue 20: optional identifiers and codings needed a guard on
/// every leaf); a list named `when` (Timing.repeat.when) stays an element.
#[test]
fn when_leaves_out_an_object_or_list_item() {
    let yaml = r#"
identifier:
  - system: "{{ src }}"
    value: "{{ id }}"
  - when: "empty"
    system: http://hl7.org/fhir/sid/us-ssn
    value: "{{ id }}"
  - when: "sex == 'F'"
    system: urn:sex
    value: "{{ sex }}"
valueQuantity:
  when: "num > 100"
  value: "= num"
repeat:
  when: [MORN]
"#;
    for engine_only in [false, true] {
        let json: serde_json::Value =
            serde_json::from_str(&render_yaml(yaml, engine_only, "when")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "identifier": [
                    { "system": "http://clinic.example/mrn", "value": "p-1" },
                    { "system": "urn:sex", "value": "F" }
                ],
                "repeat": { "when": ["MORN"] }
            }),
            "engine_only {engine_only}"
        );
    }
}
