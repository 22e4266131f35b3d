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
        // regression: dry-run bundles, which hold names and birth dates,
        // were created 0644
        let bundle = out.join("phase-1/000001-patients.json");
        let mode = std::fs::metadata(&bundle).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "dry-run bundles hold patient data: owner-only");
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
        subject: { reference: "Patient/1" }
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

/// A lookup is held in memory whole: one past its `max_rows` (500,000 by
/// default; a full OMOP `concept` table has millions) is refused by
/// `check`, naming the lookup's line and saying to join in the query.
#[test]
fn a_lookup_over_its_row_limit_is_refused_before_it_fills_memory() {
    let dir = scratch("lookup-too-big");
    let yaml = r#"source: { connector: csv, path: . }
streams:
  conditions:
    from: pc.csv
    key: id
    lookup:
      condition: { from: c.csv, key: code, by: condition_code, max_rows: 2 }
    emit:
      - resourceType: Condition
        identifier: [{ system: "http://s/pc", value: "{{ id }}" }]
        code: { text: "{{ condition.name }}" }
        subject: { reference: "Patient/1" }
"#;
    std::fs::write(dir.join("migration.yaml"), yaml).unwrap();
    std::fs::write(dir.join("pc.csv"), "id,condition_code\n1,HT\n").unwrap();
    std::fs::write(
        dir.join("c.csv"),
        "code,name\nHT,Hypertension\nDM,Diabetes\n",
    )
    .unwrap();
    assert_eq!(
        run(&dir, "check", &[]).code,
        0,
        "two rows: within the limit"
    );
    std::fs::write(
        dir.join("c.csv"),
        "code,name\nHT,Hypertension\nDM,Diabetes\nAS,Asthma\n",
    )
    .unwrap();
    let result = run(&dir, "check", &[]);
    assert_eq!(result.code, 1, "{}", result.stderr);
    assert!(
        result.stderr.contains("migration.yaml:7:")
            && result.stderr.contains("c.csv has more than 2 rows")
            && result.stderr.contains("join it in the stream's query"),
        "{}",
        result.stderr
    );
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

/// Regression: a record rejected for an unmapped code, then fixed, maps to
/// content the server already holds; it counted "unchanged" and `status`
/// showed it rejected forever. A record that is unchanged now is done.
#[test]
fn a_fixed_reject_that_maps_to_what_the_server_holds_is_cleared() {
    let dir = setup("fixed-reject", PATIENTS_ONLY, ONE_PATIENT.as_bytes());
    let store = dir.join("store");
    let store = store.to_str().unwrap();
    let status = |dir: &Path| {
        let out = fhirlift([
            "status".into(),
            "-c".into(),
            dir.join("migration.yaml").into_os_string(),
        ]);
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with("patients"))
            .unwrap_or_else(|| panic!("{}", out.stdout))
            .to_owned();
        line.split_whitespace()
            .take(3)
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(&dir, "migrate", &["--sandbox", store]).code, 0);
    assert_eq!(status(&dir), ["patients", "1", "0"]);
    // the export now says X, which the value map does not know
    std::fs::write(
        dir.join("patients.csv"),
        ONE_PATIENT.replace(",M\n", ",X\n"),
    )
    .unwrap();
    assert_eq!(run(&dir, "migrate", &["--sandbox", store]).code, 2);
    assert_eq!(status(&dir), ["patients", "1", "1"]);
    // fixed at the source: the record maps to what the server holds
    std::fs::write(dir.join("patients.csv"), ONE_PATIENT).unwrap();
    let fixed = run(&dir, "retry-rejects", &["--sandbox", store]);
    assert_eq!(fixed.code, 0, "{}{}", fixed.stdout, fixed.stderr);
    assert_eq!(status(&dir), ["patients", "1", "0"], "{}", fixed.stdout);
}

/// Two Patients on the server already hold the identifier a record writes
/// on: the conditional write is refused with 412. The reject says what that
/// means, names the search that finds both, and what to do.
#[test]
fn a_conditional_write_matching_two_resources_is_rejected_naming_the_search() {
    let server = fhirlift_tests::TestServer::start(fhirlift_sandbox::SandboxConfig::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let patient = serde_json::json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "http://clinic.example/patientId", "value": "A1" }],
    });
    for _ in 0..2 {
        let status = runtime.block_on(async {
            reqwest::Client::new()
                .post(format!("{}/Patient", server.url()))
                .header("content-type", "application/fhir+json")
                .body(patient.to_string())
                .send()
                .await
                .unwrap()
                .status()
        });
        assert_eq!(status.as_u16(), 201);
    }
    let dir = setup("412-two-matches", PATIENTS_ONLY, ONE_PATIENT.as_bytes());
    let result = crate::support::migrate(
        &dir.join("migration.yaml"),
        &server.url(),
        &dir,
        &["--profile", "generic", "--strategy", "conditional"],
    );
    assert_eq!(result.code, 2, "{}{}", result.stdout, result.stderr);
    let rejects = std::fs::read_to_string(dir.join("rejects.ndjson")).unwrap();
    let reject: serde_json::Value = serde_json::from_str(rejects.lines().next().unwrap()).unwrap();
    let reason = reject["reason"].as_str().unwrap();
    assert!(reason.contains("412"), "{reason}");
    assert!(
        reason.contains("more than one resource")
            && reason.contains("Patient?identifier=http://clinic.example/patientId|A1")
            && reason.contains("merge or retire the duplicates"),
        "{reason}"
    );
}

/// Regression: a Synthea providers.csv repeats ids (580 rows, 353 ids); the
/// last row won on one run and another on the next. A repeated key now
/// rejects the later record, naming the first; `check` says so first.
#[test]
fn a_repeated_key_rejects_the_later_record_naming_the_first() {
    let dir = setup(
        "repeated-key",
        PATIENTS_ONLY,
        "patient_id,last_name,birth_date,gender\n\
         A1,Doe,1980-07-15,M\n\
         A2,Roe,1981-01-01,F\n\
         A1,Smith,1980-07-15,M\n\
         A2,Roe,1981-01-01,F\n"
            .as_bytes(),
    );
    let check = run(&dir, "check", &[]);
    assert_eq!(check.code, 2, "{}", check.stdout);
    assert!(
        check
            .stdout
            .contains("1 records would be rejected; the first:")
            && check
                .stdout
                .contains("key \"A1\" repeats: patients.csv:2 has the same key"),
        "{}",
        check.stdout
    );
    let out = dir.join("out");
    let result = run(&dir, "migrate", &["--dry-run", out.to_str().unwrap()]);
    assert_eq!(result.code, 2, "{}", result.stdout);
    assert_eq!(planned_identifiers(&out, "patients"), ["A1", "A2"]);
    // the identical repeat of A2 is skipped, not rejected
    assert!(
        result
            .stdout
            .contains("skipped 1: repeats an earlier record (same key, same content)"),
        "{}",
        result.stdout
    );
    let rejects = std::fs::read_to_string(out.join("fhirlift-rejects.ndjson")).unwrap();
    let rejects: Vec<serde_json::Value> = rejects
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    assert_eq!(rejects[0]["provenance"]["line"], 4);
    assert_eq!(rejects[0]["stage"], "collision");
}

const OBSERVATIONS: &str = r#"source: { connector: csv, path: . }
streams:
  observations:
    from: patients.csv
    key: patient_id
    COLLISIONS
    emit:
      - resourceType: Observation
        identifier: [{ system: "http://clinic.example/obs", value: "{{ last_name }}" }]
        status: final
        code: { text: "{{ gender }}" }
"#;

const COLLIDING_ROWS: &str = "patient_id,last_name,birth_date,gender\n\
    A1,Doe,1980-07-15,M\n\
    A2,Roe,1981-01-01,F\n\
    A3,Doe,1980-07-15,F\n";

fn collisions(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("fhirlift-collisions.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Regression: an OMOP-style mapping whose identifier was not unique
/// (`person_id-concept_code`) reported 262 created, 208 "updated", and 262
/// stored: records overwrote each other silently. In a table this is a data
/// error: both records are rejected, each naming the other, and the pair
/// is written to the collisions file.
#[test]
fn two_rows_on_one_identifier_are_both_rejected_and_listed_as_a_collision() {
    let dir = setup(
        "collision-reject",
        &OBSERVATIONS.replace("COLLISIONS", ""),
        COLLIDING_ROWS.as_bytes(),
    );
    let check = run(&dir, "check", &[]);
    assert!(
        check
            .stdout
            .contains("1 collisions: two records of a stream write one identity"),
        "{}",
        check.stdout
    );
    let out = dir.join("out");
    let result = run(&dir, "migrate", &["--dry-run", out.to_str().unwrap()]);
    assert_eq!(result.code, 2, "{}", result.stdout);
    assert!(
        result
            .stdout
            .contains("collisions 1: identities written by two records"),
        "{}",
        result.stdout
    );
    let pairs = collisions(&out);
    assert_eq!(pairs.len(), 1);
    assert_eq!(
        pairs[0]["identity"],
        "Observation?identifier=http://clinic.example/obs|Doe"
    );
    assert_eq!(pairs[0]["first"]["key"], "A1");
    assert_eq!(pairs[0]["then"]["key"], "A3");
    assert_eq!(pairs[0]["policy"], "reject");
    let rejects: Vec<serde_json::Value> =
        std::fs::read_to_string(out.join("fhirlift-rejects.ndjson"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let keys: Vec<&str> = rejects.iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["A1", "A3"], "both, the first named by the second");
    assert!(
        rejects[0]["reason"]
            .as_str()
            .unwrap()
            .contains("patients.csv:4")
    );
    assert!(
        rejects[1]["reason"]
            .as_str()
            .unwrap()
            .contains("patients.csv:2")
    );
}

/// The same rows in a stream that says `collisions: later-wins` (an update
/// feed): both are written in order, and the pair is still listed.
#[test]
fn under_later_wins_a_collision_is_written_in_order_and_still_listed() {
    let dir = setup(
        "collision-later-wins",
        &OBSERVATIONS.replace("COLLISIONS", "collisions: later-wins"),
        COLLIDING_ROWS.as_bytes(),
    );
    let out = dir.join("out");
    let result = run(&dir, "migrate", &["--dry-run", out.to_str().unwrap()]);
    assert_eq!(result.code, 0, "{}", result.stdout);
    assert!(result.stdout.contains("1 collisions"), "{}", result.stdout);
    let pairs = collisions(&out);
    assert_eq!(pairs.len(), 1);
    assert_eq!(pairs[0]["policy"], "later-wins");
}

/// Static mistakes `check` names before any record is read.
#[test]
fn check_names_unknown_filters_stream_keys_ids_and_unwritten_references() {
    let migration = r#"source: { connector: csv, path: . }
streams:
  patients:
    from: patients.csv
    key: patient_id
    emitt: []
    emit:
      - resourceType: Patient
        id: "{{ patient_id }}"
        identifier: [{ system: "http://clinic.example/patientId", value: "{{ patient_id }}" }]
        name: [{ family: "{{ last_name | uper }}" }]
        gender: "{{ gender | regex_replace('M', 'male') }}"
        managingOrganization: "{{ ref('Organization', 'http://clinic.example/org', patient_id) }}"
"#;
    let dir = setup("check-static", migration, ONE_PATIENT.as_bytes());
    let check_says = |migration: &str, expected: &[&str]| {
        std::fs::write(dir.join("migration.yaml"), migration).unwrap();
        let check = run(&dir, "check", &["--no-count"]);
        assert_ne!(check.code, 0, "{}", check.stdout);
        let all = format!("{}{}", check.stdout, check.stderr);
        for e in expected {
            assert!(all.contains(e), "{e:?} in\n{all}");
        }
    };
    // the stream's keys are read first
    check_says(
        migration,
        &["unknown key \"emitt\" in stream patients: did you mean `emit:`?"],
    );
    // then the mapping: every error at once
    let migration = migration.replace("    emitt: []\n", "");
    check_says(
        &migration,
        &[
            "Patient.id cannot be set by a mapping",
            "unknown filter \"uper\": did you mean \"upper\"?",
            "unknown filter \"regex_replace\": did you mean \"replace\"?",
        ],
    );
    // with those fixed, the reference to a type nothing writes is named
    let fixed = migration
        .replace("        id: \"{{ patient_id }}\"\n", "")
        .replace(" | uper", "")
        .replace(" | regex_replace('M', 'male')", "");
    std::fs::write(dir.join("migration.yaml"), &fixed).unwrap();
    let check = run(&dir, "check", &[]);
    let all = format!("{}{}", check.stdout, check.stderr);
    assert!(
        all.contains("stream patients refers to Organization")
            && all.contains("target: { holds: [Organization] }"),
        "{all}"
    );
    std::fs::write(
        dir.join("migration.yaml"),
        fixed.replace("streams:", "target: { holds: [Organization] }\nstreams:"),
    )
    .unwrap();
    let check = run(&dir, "check", &["--no-count"]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
}

/// `| decimal` (issue 20): the digits go into the request as written (a
/// dry run's bundle holds `42.12345678901234567`, which `| float` would
/// cut), and text that is no number rejects its record, naming the row
/// and the mapping line.
#[test]
fn decimals_keep_their_digits_and_a_bad_one_names_its_row_and_mapping_line() {
    let dir = scratch("decimal");
    let yaml = r#"source: { connector: csv, path: . }
streams:
  places:
    from: places.csv
    key: id
    emit:
      - resourceType: Location
        identifier: [{ system: "urn:example:loc", value: "{{ id }}" }]
        position:
          latitude: "= lat | decimal"
          longitude: "= lng | decimal"
"#;
    std::fs::write(dir.join("migration.yaml"), yaml).unwrap();
    std::fs::write(
        dir.join("places.csv"),
        "id,lat,lng\n1,42.12345678901234567,-71.0\n2,\"1,5\",3\n",
    )
    .unwrap();
    let out = dir.join("out");
    let result = run(&dir, "migrate", &["--dry-run", out.to_str().unwrap()]);
    assert_eq!(result.code, 2, "{}{}", result.stdout, result.stderr);
    let bundles: String = std::fs::read_dir(out.join("phase-1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("places"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        bundles.contains("\"latitude\":42.12345678901234567,\"longitude\":-71.0"),
        "{bundles}"
    );
    let rejects = std::fs::read_to_string(out.join("fhirlift-rejects.ndjson")).unwrap();
    assert_eq!(rejects.lines().count(), 1, "{rejects}");
    assert!(
        rejects.contains("\"line\":3")
            && rejects.contains("Location.position.latitude at ")
            && rejects.contains("migration.yaml:10:")
            && rejects.contains("is not a decimal number"),
        "{rejects}"
    );
}
