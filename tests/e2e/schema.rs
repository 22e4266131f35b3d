//! `fhirlift schema`: the JSON Schema an editor checks migration files
//! with. The repository's `migration.schema.json` is what the command
//! prints; every example fits it (as fhirlift reads YAML); a misspelled
//! element, top-level key or connector setting does not, and the error
//! names it; every key the schema lists is one the migration file reader
//! takes.

use std::path::{Path, PathBuf};

use fhirlift_mapping::MigrationConfig;
use serde_json::Value;

use fhirlift_tests::{fhirlift, workspace};

/// The schema as `fhirlift schema` prints it.
fn printed() -> String {
    let run = fhirlift(["schema"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&printed()).unwrap();
    jsonschema::draft7::new(&schema).expect("the schema is draft-07")
}

/// A migration file as JSON, read as fhirlift reads it.
fn as_json(path: &Path, text: &str) -> Value {
    fhirlift_mapping::yaml::parse(path, text).unwrap().to_json()
}

/// Each error as `instance path: message`.
fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect()
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path().join("migration.yaml"))
        .filter(|p| p.exists())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    files
}

/// Like rust-analyzer's generated-code checks: a stale copy is rewritten,
/// and the test fails so that the new one is committed.
#[test]
fn the_committed_schema_is_what_fhirlift_schema_prints() {
    let path = workspace().join("migration.schema.json");
    let now = printed();
    if std::fs::read_to_string(&path).ok().as_deref() != Some(now.as_str()) {
        std::fs::write(&path, &now).unwrap();
        panic!(
            "{} was out of date and is now rewritten (`fhirlift schema > migration.schema.json`): commit it",
            path.display()
        );
    }
}

#[test]
fn every_example_fits_the_schema_and_names_it_for_editors() {
    let validator = validator();
    for file in examples() {
        let text = std::fs::read_to_string(&file).unwrap();
        let found = errors(&validator, &as_json(&file, &text));
        assert!(found.is_empty(), "{}: {found:#?}", file.display());
        // the first line points the YAML language server at the schema
        let first = text.lines().next().unwrap_or_default();
        let at = first
            .strip_prefix("# yaml-language-server: $schema=")
            .unwrap_or_else(|| panic!("{}: first line {first:?}", file.display()));
        let schema = file.parent().unwrap().join(at);
        assert_eq!(
            schema.canonicalize().unwrap(),
            workspace()
                .join("migration.schema.json")
                .canonicalize()
                .unwrap()
        );
    }
}

#[test]
fn a_misspelled_name_fails_the_schema_at_its_place() {
    let validator = validator();
    let example = |name: &str| {
        let path = workspace()
            .join("examples")
            .join(name)
            .join("migration.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        (path, text)
    };
    let cases = [
        // an element of a resource (inside an extension of Patient)
        (
            "synthea",
            "valueString: \"{{ RACE }}\"",
            "valueStrng: \"{{ RACE }}\"",
            "/streams/patients/emit/0/extension/0/extension/1",
            "valueStrng",
        ),
        // a datatype's element, one level down (Condition.code.coding[].system)
        (
            "medplum-guide",
            "- system: http://hl7.org/fhir/sid/icd-10",
            "- systm: http://hl7.org/fhir/sid/icd-10",
            "/streams/conditions/emit/0/code/coding/1",
            "systm",
        ),
        // a top-level key
        ("medplum-guide", "\nvars:", "\nvarz:", "", "varz"),
        // a csv setting of a stream
        (
            "medplum-guide",
            "    key: patient_id\n",
            "    key: patient_id\n    delimeter: \";\"\n",
            "/streams/patients",
            "delimeter",
        ),
        // a postgres setting of the source
        ("postgres", "  fetch: 500", "  fech: 500", "/source", "fech"),
        // a resource type
        (
            "medplum-guide",
            "resourceType: Condition",
            "resourceType: Conditon",
            "/streams/conditions/emit/0/resourceType",
            "Conditon",
        ),
    ];
    for (name, right, wrong, at, bad) in cases {
        let (path, text) = example(name);
        assert!(text.contains(right), "{name}: {right}");
        let found = errors(&validator, &as_json(&path, &text.replacen(right, wrong, 1)));
        assert!(
            found.len() == 1 && found[0].starts_with(&format!("{at}: ")) && found[0].contains(bad),
            "{name}, {bad}: {found:#?}"
        );
    }
}

/// Every key the schema lists, in one file: the schema takes it, and so
/// does the migration file reader, so the schema names no key fhirlift
/// would refuse.
#[test]
fn the_keys_the_schema_names_are_the_ones_fhirlift_reads() {
    let text = r#"
source: { connector: csv, path: data/, delimiter: ";", quote: "'", header: true, encoding: latin1 }
target:
  profile: medplum
  strategy: resolve
  async: false
  holds: [Organization]
  validate: off
  batch_entries: 50
  body_bytes: 100000
  server: https://example.org
  auth: {}
vars: { src: "http://example.org" }
streams:
  orders:
    from: orders.csv
    key: [a, b]
    transaction: true
    after: [results]
    collisions: reject
    header: false
    columns: [a, b, c]
    lookup:
      drug: { from: drugs.csv, key: id, by: c, optional: true, delimiter: ";" }
    emit:
      resourceType: MedicationRequest
      as: order
      write: create
      when: "a"
      status: active
      intent: order
      subject: "= ref('Patient', src, a)"
      _status: { extension: [{ url: "http://example.org/x", valueString: "{{ b }}" }] }
      contained:
        - resourceType: Medication
          id: drug
          code: { text: "{{ c }}", when: "c" }
      dosageInstruction:
        - when: "b"
          timing: { repeat: { when: [MORN], frequency: 1 } }
  results:
    from: results.csv
    map: { builtin: hl7v2, zone: UTC }
    emit:
      - resourceType: Observation
        for_each: OBX
        identifier: [{ system: "http://example.org/obs", value: "{{ a }}" }]
        valueQuantity: { value: "= b", unit: mg }
"#;
    let path = Path::new("migration.yaml");
    assert_eq!(
        errors(&validator(), &as_json(path, text)),
        Vec::<String>::new()
    );
    MigrationConfig::parse(path, text).unwrap_or_else(|e| panic!("{e}"));
    // and what only an emitted resource takes is refused in a nested one,
    // an id where the server assigns it
    let nested = text
        .replace(
            "          id: drug\n",
            "          id: drug\n          as: drug\n",
        )
        .replace("      as: order\n", "      as: order\n      id: x\n");
    let found = errors(&validator(), &as_json(path, &nested));
    assert_eq!(found.len(), 2, "{found:#?}");
    for at in [
        "/streams/orders/emit/id: ",
        "/streams/orders/emit/contained/0/as: ",
    ] {
        assert!(found.iter().any(|e| e.starts_with(at)), "{at}{found:#?}");
    }
}
