//! The built-in OMOP CDM 5.4 map (`map: omop`) end to end, on a database
//! built from `examples/omop` (the CDM 5.4 DDL's columns for the tables the
//! map reads, and rows of our own: NULLs, a death, concepts of several
//! vocabularies): one resource per row and type, every reference resolves,
//! a re-run sends nothing; in the sandbox and in the real Medplum of the
//! kit; and the generated data of `cargo xtask bench omop`, row for row.
//! Also: a user's `emit:` replaces the map's resource of its type, an
//! absent table leaves its stream out, and a misspelled setting is named.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use fhirlift_tests::medplum::Kit;
use fhirlift_tests::pg::TestDb;
use fhirlift_tests::{fhirlift, scratch, workspace};
use serde_json::Value;

use crate::rerun::{migrate_into_store_with, stored};
use crate::support::{migrate, report, total};

/// What the seed's rows must become, by resource type.
const EXPECTED: &[(&str, usize)] = &[
    ("Organization", 2),
    ("Practitioner", 2),
    ("Patient", 4),
    ("Encounter", 4),
    ("Condition", 3),
    ("Observation", 7),
    ("MedicationRequest", 2),
    ("MedicationStatement", 1),
    ("Procedure", 2),
    ("Device", 2),
    ("DeviceUseStatement", 2),
];

/// A database loaded with the example's schema and seed.
fn omop_db(tag: &str) -> TestDb {
    let db = TestDb::create(tag);
    let example = workspace().join("examples/omop");
    for file in ["schema.sql", "seed.sql"] {
        db.execute(&std::fs::read_to_string(example.join(file)).unwrap());
    }
    db
}

/// The example's migration, reading `db` through a URL file, with `extra`
/// appended under the `cdm` stream.
fn migration(db: &TestDb, dir: &Path, extra: &str) -> PathBuf {
    std::fs::write(dir.join("pg.url"), &db.url).unwrap();
    let text = std::fs::read_to_string(workspace().join("examples/omop/migration.yaml"))
        .unwrap()
        .replace("url_env: FHIRLIFT_PG_URL", "url_file: pg.url");
    let path = dir.join("migration.yaml");
    std::fs::write(&path, format!("{text}{extra}")).unwrap();
    path
}

/// Checks the counts per type (`expected`) and that every `Type/id`
/// reference of every resource names a resource of the set; `all(type)`
/// lists a type.
fn assert_landed(
    expected: &[(&str, usize)],
    all: &dyn Fn(&str) -> Vec<Value>,
) -> BTreeMap<String, Vec<Value>> {
    let mut held = BTreeMap::new();
    let mut ids = HashSet::new();
    for (t, n) in expected {
        let resources = all(t);
        assert_eq!(resources.len(), *n, "{t}: {resources:#?}");
        for r in &resources {
            ids.insert(format!("{t}/{}", r["id"].as_str().unwrap()));
        }
        held.insert(t.to_string(), resources);
    }
    fn references(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("reference") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| references(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| references(v, out)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    held.values()
        .flatten()
        .for_each(|r| references(r, &mut refs));
    assert!(refs.len() > 40, "{} references", refs.len());
    for r in refs {
        assert!(ids.contains(&r), "{r} points at nothing the map wrote");
    }
    held
}

/// What the map wrote for the seed's particular rows.
fn assert_mapped_as_documented(held: &BTreeMap<String, Vec<Value>>) {
    // a row's resource: its table's identifier system and the row's id
    let by = |t: &str, value: &str| {
        let table = match t {
            "Patient" => "person",
            "Encounter" => "visit_occurrence",
            "Condition" => "condition_occurrence",
            "Practitioner" => "provider",
            "MedicationStatement" => "drug_exposure",
            _ => "measurement",
        };
        let system = format!("https://example-hospital.org/omop/{table}");
        held[t]
            .iter()
            .find(|r| {
                r["identifier"][0]["value"] == value && r["identifier"][0]["system"] == system
            })
            .unwrap_or_else(|| panic!("{t} {system}|{value}"))
            .clone()
    };
    let ada = by("Patient", "1");
    assert_eq!(
        ada["identifier"][0]["system"],
        "https://example-hospital.org/omop/person"
    );
    assert_eq!(ada["gender"], "female");
    assert_eq!(ada["birthDate"], "1980-02-29");
    assert_eq!(
        ada["extension"][0]["extension"][0]["valueCoding"]["code"],
        "2106-3"
    );
    assert_eq!(
        ada["extension"][1]["extension"][0]["valueCoding"]["code"],
        "2186-5"
    );
    // NULL race and ethnicity: no extension; year of birth alone
    let p3 = by("Patient", "3");
    assert_eq!(p3["birthDate"], "1950");
    assert!(p3.get("extension").is_none(), "{p3}");
    assert_eq!(p3["deceasedDateTime"], "2021-03-04");
    assert_eq!(by("Patient", "2")["birthDate"], "1975-06");
    // the source zone applies to CDM datetimes
    assert_eq!(
        by("Patient", "4")["deceasedDateTime"],
        "2022-07-19T23:40:00-04:00"
    );
    let visit = by("Encounter", "1");
    assert_eq!(visit["class"]["code"], "IMP");
    assert_eq!(visit["period"]["start"], "2023-01-10T09:00:00-05:00");
    assert_eq!(by("Encounter", "4")["class"]["code"], "UNK");
    let sbp = by("Observation", "1");
    assert_eq!(sbp["code"]["coding"][0]["system"], "http://loinc.org");
    assert_eq!(sbp["valueQuantity"]["code"], "mm[Hg]");
    let covid = by("Observation", "3");
    assert_eq!(
        covid["valueCodeableConcept"]["coding"][0]["code"],
        "10828004"
    );
    let condition = by("Condition", "2");
    assert_eq!(
        condition["code"]["coding"][0]["system"],
        "http://hl7.org/fhir/sid/icd-10-cm"
    );
    assert_eq!(condition["clinicalStatus"]["coding"][0]["code"], "resolved");
    let specialty = &by("Practitioner", "1")["qualification"][0]["code"]["coding"][0];
    assert_eq!(
        specialty["system"],
        "urn:fhirlift:omop:vocabulary:Medicare_Specialty"
    );
    assert_eq!(
        by("MedicationStatement", "2")["dosage"][0]["route"]["coding"][0]["code"],
        "26643006"
    );
}

#[test]
fn the_omop_map_writes_one_resource_per_row_and_a_rerun_sends_nothing() {
    let db = omop_db("omop_sandbox");
    let dir = scratch("omop-sandbox");
    let config = migration(&db, &dir, "");
    let check = fhirlift(["check", "-c", config.to_str().unwrap()]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    let run = || migrate_into_store_with(&config, &dir, &[]);
    let first = run();
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    let held = assert_landed(EXPECTED, &|t| stored(&dir, t).into_values().collect());
    assert_mapped_as_documented(&held);
    let again = run();
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    let r = report(&dir);
    assert_eq!(r["traffic"]["writes"], 0, "{}", again.stdout);
    assert_eq!(total(&r, "unchanged"), 31, "{}", again.stdout);
}

#[test]
fn the_omop_map_lands_in_real_medplum_and_a_rerun_sends_nothing() {
    let db = omop_db("omop_medplum");
    let project = Kit::from_env().project("fhirlift-e2e-omop", "fast");
    let dir = scratch("omop-medplum");
    let config = migration(&db, &dir, "");
    let args = project.credentials();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = migrate(&config, &project.url, &dir, &args);
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    let fhir = project.fhir();
    let held = assert_landed(EXPECTED, &|t| fhir.all(t, &[]));
    assert_mapped_as_documented(&held);
    let again = migrate(&config, &project.url, &dir, &args);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert_eq!(report(&dir)["traffic"]["writes"], 0, "{}", again.stdout);
}

/// `examples/omop/generate.sql` (the data of `cargo xtask bench omop`)
/// gives the rows its header promises, and every one of them maps to valid
/// R4: per type, the seed's resources plus the generated ones, nothing
/// rejected, every reference resolving; a re-run sends nothing.
#[test]
fn every_generated_cdm_row_maps_and_lands() {
    const PERSONS: usize = 50;
    let db = omop_db("omop_generated");
    let generate = workspace().join("examples/omop/generate.sql");
    db.execute(&std::fs::read_to_string(generate).unwrap());
    db.execute(&format!("SELECT cdm_generate({PERSONS})"));
    let dir = scratch("omop-generated");
    let config = migration(&db, &dir, "");
    let run = || migrate_into_store_with(&config, &dir, &[]);
    let first = run();
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    let r = report(&dir);
    assert_eq!(total(&r, "rejected"), 0, "{}", first.stdout);
    let n = PERSONS;
    // generate.sql: 100 care sites, 400 providers; per person 3 visits, 3
    // conditions, 10 measurements, 3 observations, 2 drug exposures (a
    // prescription and a record of use), 1 procedure, a device for 1 in 5
    let generated = [
        ("Organization", 100),
        ("Practitioner", 400),
        ("Patient", n),
        ("Encounter", 3 * n),
        ("Condition", 3 * n),
        ("Observation", 13 * n),
        ("MedicationRequest", n),
        ("MedicationStatement", n),
        ("Procedure", n),
        ("Device", n / 5),
        ("DeviceUseStatement", n / 5),
    ];
    let expected: Vec<(&str, usize)> = EXPECTED
        .iter()
        .zip(generated)
        .map(|((t, seeded), (t2, more))| {
            assert_eq!(*t, t2);
            (*t, seeded + more)
        })
        .collect();
    assert_landed(&expected, &|t| stored(&dir, t).into_values().collect());
    let created: usize = expected.iter().map(|(_, n)| n).sum();
    assert_eq!(total(&r, "created"), created as u64, "{}", first.stdout);
    let again = run();
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert_eq!(report(&dir)["traffic"]["writes"], 0, "{}", again.stdout);
}

/// Regression: the birth date was built with SQL's make_date(), so one
/// person with an impossible day (a CDM column is a plain integer) failed
/// the whole person query. Now that row alone is rejected, named by its
/// key, and the others are mapped.
#[test]
fn an_impossible_birth_date_rejects_its_person_alone() {
    let db = omop_db("omop_bad_birth");
    db.execute(
        "INSERT INTO cdm.person (person_id, gender_concept_id, year_of_birth, month_of_birth,
             day_of_birth, race_concept_id, ethnicity_concept_id)
         VALUES (99, 8507, 1980, 2, 30, 0, 0), (98, 8507, 1980, 13, NULL, 0, 0);",
    );
    let dir = scratch("omop-bad-birth");
    let config = migration(&db, &dir, "");
    let check = fhirlift(["check", "-c", config.to_str().unwrap()]);
    assert_eq!(check.code, 2, "{}{}", check.stdout, check.stderr);
    let out = &check.stdout;
    assert!(out.contains("2 records would be rejected"), "{out}");
    assert!(out.contains("bad-format Patient.birthDate"), "{out}");
    assert!(out.contains("cdm.person"), "{out}");
    assert!(out.contains("99") && out.contains("98"), "{out}");
    let stream = out.lines().find(|l| l.contains(" cdm.person ")).unwrap();
    assert!(
        stream.split_whitespace().any(|w| w == "6"),
        "six persons read: {stream}"
    );
}

/// A stream's `emit:` entry replaces the map's resource of its type (in
/// each stream writing it), an absent table leaves its stream out, and a
/// misspelled setting is named with the settings there are.
#[test]
fn overrides_absent_tables_and_unknown_settings() {
    let db = omop_db("omop_override");
    db.execute("DROP TABLE cdm.device_exposure;");
    let dir = scratch("omop-override");
    let override_practitioner = "    emit:
      - resourceType: Practitioner
        identifier:
          - system: \"{{ omop_system_base }}provider\"
            value: \"{{ provider_id }}\"
        name: [{ text: \"{{ provider_name or 'unnamed' }}\" }]
";
    let config = migration(&db, &dir, override_practitioner);
    let check = fhirlift(["check", "-c", config.to_str().unwrap()]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    assert!(
        format!("{}{}", check.stdout, check.stderr)
            .contains("cdm.device_exposure: table device_exposure is not in the source"),
        "{}{}",
        check.stdout,
        check.stderr
    );
    let first = migrate_into_store_with(&config, &dir, &[]);
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    assert!(stored(&dir, "Device").is_empty());
    let practitioners: Vec<Value> = stored(&dir, "Practitioner").into_values().collect();
    assert_eq!(practitioners.len(), 2);
    assert!(
        practitioners
            .iter()
            .all(|p| p.get("qualification").is_none())
    );
    assert!(
        practitioners
            .iter()
            .any(|p| p["name"][0]["text"] == "unnamed")
    );

    let misspelled = migration(&db, &dir, "").to_str().unwrap().to_owned();
    let text = std::fs::read_to_string(&misspelled)
        .unwrap()
        .replace("system_base:", "sytem_base:");
    std::fs::write(&misspelled, text).unwrap();
    let check = fhirlift(["check", "-c", &misspelled]);
    assert_eq!(check.code, 1);
    assert!(
        check
            .stderr
            .contains("map omop: unknown setting \"sytem_base\"")
            && check.stderr.contains("system_base, vocabulary_base, zone"),
        "{}",
        check.stderr
    );
}
