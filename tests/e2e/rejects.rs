//! Bad input: every bad record is rejected with its place, the rest goes on;
//! bad mappings are refused before any row runs, naming the mapping line.

use std::path::Path;

use fhirlift_tests::{Outcome, fhirlift, scratch};

const PATIENTS_ONLY: &str = r#"source: { connector: csv, path: . }
target: { profile: medplum }
vars: { src: "http://clinic.example" }
streams:
  patients:
    from: patients.csv
    key: patient_id
    emit:
      - resourceType: Patient
        identifier: [{ system: "{{ src }}/patientId", value: "{{ patient_id }}" }]
        name: [{ family: "{{ last_name }}" }]
        birthDate: "{{ birth_date | fhir_date }}"
        gender: "{{ gender | code(M='male', F='female') }}"
"#;

const ONE_PATIENT: &str = "patient_id,last_name,birth_date,gender\nA1,Doe,1980-07-15,M\n";

/// A fresh folder holding `migration.yaml` and `patients.csv`.
fn setup(name: &str, migration: &str, patients: &[u8]) -> std::path::PathBuf {
    let dir = scratch(name);
    std::fs::write(dir.join("migration.yaml"), migration).unwrap();
    std::fs::write(dir.join("patients.csv"), patients).unwrap();
    dir
}

fn run(dir: &Path, command: &str, extra: &[&str]) -> Outcome {
    let mut args: Vec<std::ffi::OsString> = vec![
        command.into(),
        "-c".into(),
        dir.join("migration.yaml").into(),
    ];
    args.extend(extra.iter().map(Into::into));
    fhirlift(args)
}

/// The first identifier value of each resource in a dry run's first bundle
/// of `stream`.
fn planned_identifiers(out: &Path, stream: &str) -> Vec<String> {
    let path = out.join(format!("phase-1/000001-{stream}.json"));
    let bundle: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["resource"]["identifier"][0]["value"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn bad_rows_are_rejected_with_file_line_and_the_rest_is_planned() {
    let dir = setup(
        "bad-rows",
        PATIENTS_ONLY,
        "patient_id,last_name,birth_date,gender\n\
         A1,O'Brien,1980-07-15,M\n\
         A2,Short\n\
         A3,Müller,1980-13-45,F\n\
         A4,Núñez,1990-01-02,X\n\
         ,Nobody,1990-01-02,F\n\
         A6,Smith,1975-12-31,F\n"
            .as_bytes(),
    );
    let out = dir.join("out");
    let result = run(&dir, "migrate", &["--dry-run", out.to_str().unwrap()]);
    assert_eq!(
        result.code, 2,
        "rejects make the exit code non-zero\n{}",
        result.stdout
    );
    assert!(
        result.stdout.contains("4 records rejected"),
        "{}",
        result.stdout
    );

    assert_eq!(planned_identifiers(&out, "patients"), ["A1", "A6"]);

    let rejects_path = out.join("fhirlift-rejects.ndjson");
    let rejects: Vec<serde_json::Value> = std::fs::read_to_string(&rejects_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lines: Vec<u64> = rejects
        .iter()
        .map(|r| r["provenance"]["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [3, 4, 5, 6]);
    assert_eq!(rejects[0]["stage"], "source");
    assert!(
        rejects[0]["reason"]
            .as_str()
            .unwrap()
            .contains("2 fields, the header has 4")
    );
    assert_eq!(rejects[1]["stage"], "map");
    assert!(
        rejects[1]["mapping"]
            .as_str()
            .unwrap()
            .contains("Patient.birthDate at "),
        "{}",
        rejects[1]
    );
    assert!(
        rejects[1]["mapping"]
            .as_str()
            .unwrap()
            .contains("migration.yaml:12"),
        "{}",
        rejects[1]
    );
    assert!(
        rejects[1]["reason"]
            .as_str()
            .unwrap()
            .contains("impossible month")
    );
    assert!(
        rejects[2]["reason"]
            .as_str()
            .unwrap()
            .contains("\"X\" is not in the value map")
    );
    assert!(
        rejects[3]["reason"]
            .as_str()
            .unwrap()
            .contains("no identifier"),
        "{}",
        rejects[3]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&rejects_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(
            mode, 0o600,
            "the rejects file may quote patient data: owner-only"
        );
    }
}

#[test]
fn an_unknown_column_is_refused_before_any_row_naming_the_mapping_line() {
    let yaml = PATIENTS_ONLY.replace("{{ last_name }}", "{{ lastname | upper }}");
    let dir = setup("unknown-column", &yaml, ONE_PATIENT.as_bytes());
    let result = run(&dir, "check", &[]);
    assert_eq!(result.code, 1);
    assert!(
        result.stderr.contains("migration.yaml:11:"),
        "{}",
        result.stderr
    );
    assert!(
        result.stderr.contains("\"lastname\" is not a column"),
        "{}",
        result.stderr
    );
    assert!(
        result.stderr.contains("last_name"),
        "the message lists the real columns: {}",
        result.stderr
    );
}

#[test]
fn a_resource_without_identifier_is_refused_unless_create_is_explicit() {
    let yaml = PATIENTS_ONLY.replace(
        "        identifier: [{ system: \"{{ src }}/patientId\", value: \"{{ patient_id }}\" }]\n",
        "",
    );
    let dir = setup("no-identifier", &yaml, ONE_PATIENT.as_bytes());
    let result = run(&dir, "check", &[]);
    assert_eq!(result.code, 1);
    assert!(
        result.stderr.contains("migration.yaml:9:"),
        "{}",
        result.stderr
    );
    assert!(result.stderr.contains("write: create"), "{}", result.stderr);

    let explicit = yaml.replace(
        "      - resourceType: Patient\n",
        "      - resourceType: Patient\n        write: create\n",
    );
    std::fs::write(dir.join("migration.yaml"), explicit).unwrap();
    let out = dir.join("out");
    let result = run(&dir, "migrate", &["--dry-run", out.to_str().unwrap()]);
    assert_eq!(result.code, 0, "{}", result.stderr);
    let body = std::fs::read_to_string(out.join("phase-1/000001-patients.json")).unwrap();
    assert!(
        body.contains(r#""request":{"method":"POST","url":"Patient"}"#),
        "{body}"
    );
}

#[test]
fn streams_that_reference_each_other_in_a_cycle_are_named() {
    let dir = scratch("cycle");
    let yaml = r#"source: { connector: csv, path: . }
streams:
  people:
    from: a.csv
    emit:
      - resourceType: Patient
        identifier: [{ system: "http://s/p", value: "{{ id }}" }]
        generalPractitioner: ["= ref('Practitioner', 'http://s/d', id)"]
  doctors:
    from: a.csv
    emit:
      - resourceType: Practitioner
        identifier: [{ system: "http://s/d", value: "{{ id }}" }]
        extension: ["= ref('Patient', 'http://s/p', id)"]
"#;
    std::fs::write(dir.join("migration.yaml"), yaml).unwrap();
    std::fs::write(dir.join("a.csv"), "id\n1\n").unwrap();
    let result = run(&dir, "check", &[]);
    assert_eq!(result.code, 1);
    assert!(
        result
            .stderr
            .contains("people references Practitioner written by doctors"),
        "{}",
        result.stderr
    );
}

#[test]
fn a_lookup_without_a_matching_row_rejects_only_that_record() {
    let dir = scratch("lookup-miss");
    let yaml = r#"source: { connector: csv, path: . }
streams:
  conditions:
    from: pc.csv
    key: id
    lookup:
      condition: { from: c.csv, key: code, by: condition_code }
    emit:
      - resourceType: Condition
        identifier: [{ system: "http://s/pc", value: "{{ id }}" }]
        code: { text: "{{ condition.name }}" }
"#;
    std::fs::write(dir.join("migration.yaml"), yaml).unwrap();
    std::fs::write(dir.join("c.csv"), "code,name\nHT,Hypertension\n").unwrap();
    std::fs::write(dir.join("pc.csv"), "id,condition_code\n1,HT\n2,ZZ\n3,HT\n").unwrap();
    let out = dir.join("out");
    let result = run(&dir, "migrate", &["--dry-run", out.to_str().unwrap()]);
    assert_eq!(result.code, 2);
    let rejects = std::fs::read_to_string(out.join("fhirlift-rejects.ndjson")).unwrap();
    assert_eq!(rejects.lines().count(), 1);
    assert!(rejects.contains("\"line\":3"), "{rejects}");
    assert!(
        rejects.contains("lookup condition found no row in c.csv"),
        "{rejects}"
    );
    assert!(result.stdout.contains("Condition 2"), "{}", result.stdout);
}

#[test]
fn latin1_files_are_read_when_the_stream_says_so() {
    let yaml = PATIENTS_ONLY.replace(
        "    from: patients.csv\n",
        "    from: patients.csv\n    encoding: latin1\n    delimiter: ';'\n",
    );
    let csv = b"patient_id;last_name;birth_date;gender\nA1;M\xfcller;1980-07-15;M\n";
    let dir = setup("latin1", &yaml, csv);
    let result = run(&dir, "preview", &["--stream", "patients"]);
    assert_eq!(result.code, 0, "{}", result.stderr);
    assert!(
        result.stdout.contains("\"family\": \"Müller\""),
        "{}",
        result.stdout
    );
}

/// Regression: with `--sandbox DIR` and no `--rejects`, the rejects file
/// went into the store's folder, and saving the store deleted every
/// `*.ndjson` there: the run named a rejects file that did not exist.
#[test]
fn a_sandbox_run_keeps_its_rejects_file_beside_the_migration_file() {
    let dir = setup(
        "rejects-beside-sandbox",
        PATIENTS_ONLY,
        b"patient_id,last_name,birth_date,gender\nA1,Doe,1980-07-15,M\nA2,Roe,1980-13-45,F\n",
    );
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    // a file of someone else's in the store's folder is left alone too
    std::fs::write(store.join("notes.ndjson"), "{\"kept\":true}\n").unwrap();
    let state = dir.join("fhirlift.state");
    let result = run(
        &dir,
        "migrate",
        &[
            "--sandbox",
            store.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ],
    );
    assert_eq!(result.code, 2, "{}\n{}", result.stdout, result.stderr);
    let rejects = dir.join("fhirlift-rejects.ndjson");
    assert!(
        result.stdout.contains(&rejects.display().to_string()),
        "the run names {}: {}",
        rejects.display(),
        result.stdout
    );
    let text = std::fs::read_to_string(&rejects).expect("the rejects file the run named exists");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("\"line\":3"), "{text}");
    assert!(store.join("Patient.ndjson").exists());
    assert_eq!(
        std::fs::read_to_string(store.join("notes.ndjson")).unwrap(),
        "{\"kept\":true}\n"
    );
}

/// Regression: a row emitting two Observations whose identifier template
/// did not tell them apart sent both, and the second silently replaced the
/// first on the server. Now the record is rejected, naming the identifier
/// and both resources; the other rows are still planned.
#[test]
fn a_record_writing_two_resources_on_one_identifier_is_rejected_naming_both() {
    let migration = r#"source: { connector: csv, path: . }
target: { profile: medplum }
streams:
  vitals:
    from: patients.csv
    key: patient_id
    emit:
      - resourceType: Observation
        identifier: [{ system: "http://clinic.example/obs", value: "{{ patient_id }}" }]
        status: final
        code: { text: height }
      - resourceType: Observation
        identifier: [{ system: "http://clinic.example/obs", value: "{{ patient_id }}{{ suffix }}" }]
        status: final
        code: { text: weight }
"#;
    let dir = setup(
        "shared-identity",
        migration,
        b"patient_id,suffix\nA1,\nA2,-w\n",
    );
    let out = dir.join("out");
    let result = run(&dir, "migrate", &["--dry-run", out.to_str().unwrap()]);
    assert_eq!(result.code, 2, "{}", result.stdout);
    assert_eq!(
        planned_identifiers(&out, "vitals"),
        ["A2", "A2-w"],
        "only the row that tells them apart"
    );
    let rejects = std::fs::read_to_string(out.join("fhirlift-rejects.ndjson")).unwrap();
    let reject: serde_json::Value = serde_json::from_str(rejects.lines().next().unwrap()).unwrap();
    assert_eq!(reject["provenance"]["line"], 2, "{reject}");
    let reason = reject["reason"].as_str().unwrap();
    assert!(
        reason.contains("Observation?identifier=http://clinic.example/obs|A1")
            && reason.contains("resource 1 (Observation) and resource 2 (Observation)"),
        "{reason}"
    );
}
