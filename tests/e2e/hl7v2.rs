//! HL7 v2 archives into the sandbox: the bundled example with the
//! built-in map, replays, damaged messages, unmapped types, user overrides,
//! and the shared corpus read end to end.

use std::path::{Path, PathBuf};

use fhirlift_sandbox::{MedplumBehaviour, SandboxConfig};
use fhirlift_tests::{TestServer, fhirlift, scratch, workspace};
use serde_json::Value;

use crate::support::{corpus, corpus_migration, id_of, migrate, report, total};

const NORTH: &str = "urn:oid:2.16.840.1.113883.3.9999";

fn example() -> PathBuf {
    workspace().join("examples/hl7v2/migration.yaml")
}

fn rejects(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("rejects.ndjson"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_example_archive_is_written_linked_and_a_replay_changes_nothing() {
    let server = TestServer::start(SandboxConfig::default());
    let dir = scratch("hl7v2-example");
    let run = migrate(&example(), &server.url(), &dir, &[]);
    assert_eq!(
        run.code, 2,
        "one damaged message is rejected: {}{}",
        run.stdout, run.stderr
    );
    assert!(!run.stdout.contains("no built-in map"), "{}", run.stdout);
    server.sandbox.with_store(|store| {
        // the MDM^T02: a DocumentReference (its TXA names no document
        // number: the message control id), typed by table 0270
        let documents = store.resources("DocumentReference");
        assert_eq!(documents.len(), 1);
        assert_eq!(documents[0]["identifier"][0]["value"], "DOC4001-TXA");
        assert_eq!(documents[0]["type"]["coding"][0]["code"], "DS");
        // two patients; the A08 and the A03 update the first one in place
        assert_eq!(store.count("Patient"), 2);
        let patient = store.find("Patient", NORTH, "MRN1001")[0].clone();
        assert_eq!(patient["name"][0]["family"], "Müller^Jörg");
        assert_eq!(
            patient["address"][0]["line"][0], "Lindenweg 9",
            "the later message wins"
        );
        assert_eq!(patient["birthDate"], "1970-04-12");
        let patient_id = id_of(store, "Patient", NORTH, "MRN1001");
        let encounter = store.find("Encounter", NORTH, "V5001")[0].clone();
        assert_eq!(encounter["status"], "finished", "the A03 discharged it");
        assert_eq!(encounter["class"]["code"], "IMP");
        assert_eq!(encounter["period"]["start"], "2024-03-01T08:00:00-05:00");
        assert_eq!(
            encounter["subject"]["reference"],
            format!("Patient/{patient_id}")
        );
        // ORU: one report, four observations on the filler order number
        let lab = "urn:fhirlift:hl7v2:authority:LABSYS";
        let report = store.find("DiagnosticReport", lab, "FL9901")[0].clone();
        assert_eq!(report["result"].as_array().unwrap().len(), 4);
        let glucose = store.find("Observation", lab, "FL9901-OBX-1")[0].clone();
        assert_eq!(glucose["valueQuantity"]["value"], 182);
        assert_eq!(
            glucose["valueQuantity"]["system"],
            "http://unitsofmeasure.org"
        );
        assert_eq!(glucose["note"][0]["text"], "Patient was not fasting.");
        // a time without an offset takes the configured zone (Chicago, CST)
        assert_eq!(glucose["effectiveDateTime"], "2024-03-02T12:00:00-06:00");
        let potassium = store.find("Observation", lab, "FL9901-OBX-4")[0].clone();
        assert_eq!(potassium["valueQuantity"]["comparator"], "<");
        // VXU
        let shot = store.find("Immunization", NORTH, "IZ-77001")[0].clone();
        assert_eq!(
            shot["vaccineCode"]["coding"][0]["system"],
            "http://hl7.org/fhir/sid/cvx"
        );
        assert_eq!(shot["status"], "completed");
        assert_eq!(store.count("RelatedPerson"), 2);
        assert_eq!(store.count("AllergyIntolerance"), 1);
        assert_eq!(store.count("Condition"), 1);
    });
    let bad = rejects(&dir);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0]["provenance"]["kind"], "message");
    assert!(
        bad[0]["provenance"]["file"]
            .as_str()
            .unwrap()
            .ends_with("2024-03.hl7")
    );
    assert!(
        bad[0]["reason"].as_str().unwrap().contains("MSH"),
        "{:?}",
        bad[0]
    );

    let again = scratch("hl7v2-example-again");
    let rerun = migrate(&example(), &server.url(), &again, &[]);
    assert_eq!(rerun.code, 2, "{}", rerun.stderr);
    let r = report(&again);
    assert_eq!(
        total(&r, "created"),
        0,
        "a replay creates nothing: {}",
        rerun.stdout
    );
    // the server found nothing new in the lab and vaccine messages: no new versions
    server.sandbox.with_store(|store| {
        assert_eq!(store.count("Patient"), 2);
        assert_eq!(store.count("Observation"), 5);
        for obs in store.resources("Observation") {
            assert_eq!(obs["meta"]["versionId"], "1", "{obs}");
        }
    });
}

#[test]
fn medplum_mode_writes_the_archive_by_id_without_conflicts() {
    let server = TestServer::start(SandboxConfig {
        medplum: Some(MedplumBehaviour::default()),
        ..SandboxConfig::default()
    });
    let dir = scratch("hl7v2-medplum");
    let run = migrate(&example(), &server.url(), &dir, &["--profile", "medplum"]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        rejects(&dir).len(),
        1,
        "only the damaged message: {:?}",
        rejects(&dir)
    );
    server.sandbox.with_store(|store| {
        assert_eq!(store.count("Patient"), 2);
        assert_eq!(store.find("Encounter", NORTH, "V5001").len(), 1);
    });
}

#[test]
fn a_user_entry_overrides_the_builtin_patient_and_reads_hl7_paths() {
    let dir = scratch("hl7v2-override");
    std::fs::create_dir_all(dir.join("archive")).unwrap();
    std::fs::copy(
        workspace().join("examples/hl7v2/archive/2024-03.hl7"),
        dir.join("archive/a.hl7"),
    )
    .unwrap();
    let config = dir.join("migration.yaml");
    std::fs::write(
        &config,
        r#"
source:
  connector: hl7v2
vars:
  hl7_zone: "-05:00"
streams:
  messages:
    from: archive/*.hl7
    map: hl7v2
    emit:
      - resourceType: Patient
        identifier: "= hl7_identifier('PID-3')"
        name: "= hl7_name('PID-5')"
        gender: "{{ hl7('PID-8') | code(M='male', F='female', _default='unknown') }}"
        active: true
      - resourceType: Observation
        for_each: OBX
        when: "message_type == 'ORU^R01'"
        identifier:
          - system: urn:example:obx
            value: "{{ control_id }}-{{ hl7('OBX-1') }}"
        status: final
        code: "= hl7_codeable('OBX-3')"
        effectiveDateTime: "= hl7_datetime('OBX-14')"
        subject: "= ref('Patient', 'urn:fhirlift:hl7v2:authority:NORTHCLINIC', hl7('PID-3.1'))"
        note: [{ text: "{{ hl7('OBR-3.1') }}" }]
"#,
    )
    .unwrap();
    let server = TestServer::start(SandboxConfig::default());
    let run = migrate(&config, &server.url(), &dir, &[]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    server.sandbox.with_store(|store| {
        let system = "urn:fhirlift:hl7v2:authority:NORTHCLINIC";
        let p = store.find("Patient", system, "MRN1001");
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0]["active"], true,
            "the user's Patient replaced the built-in one"
        );
        // the built-in resources point at the user's Patient
        let patient_id = p[0]["id"].as_str().unwrap();
        let encounter = &store.find("Encounter", system, "V5001")[0];
        assert_eq!(
            encounter["subject"]["reference"],
            format!("Patient/{patient_id}")
        );
        let obs = store.find("Observation", "urn:example:obx", "LAB7001-2");
        assert_eq!(obs.len(), 1);
        assert_eq!(obs[0]["code"]["coding"][0]["code"], "2160-0");
        assert_eq!(
            obs[0]["note"][0]["text"], "FL9901",
            "OBR of the OBX's group"
        );
        assert_eq!(obs[0]["effectiveDateTime"], "2024-03-02T12:00:00-05:00");
        // the user's Observations replaced the built-in ones of the ORU;
        // the VXU's OBX, which the user's entry skips, keeps the built-in one
        assert_eq!(store.count("Observation"), 5);
        let report = &store.find(
            "DiagnosticReport",
            "urn:fhirlift:hl7v2:authority:LABSYS",
            "FL9901",
        )[0];
        let results: std::collections::BTreeSet<&str> = report["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["reference"].as_str().unwrap())
            .collect();
        assert_eq!(
            results.len(),
            4,
            "each result follows its own OBX: {results:?}"
        );
    });
}

#[test]
fn check_names_the_map_and_preview_shows_mapped_messages() {
    let check = fhirlift(["check".into(), "-c".into(), example().into_os_string()]);
    assert_eq!(
        check.code, 2,
        "the damaged message: {}{}",
        check.stdout, check.stderr
    );
    assert!(
        check.stdout.contains("1 records would be rejected"),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains("DocumentReference 1"),
        "the MDM^T02 is mapped: {}",
        check.stdout
    );
    let preview = fhirlift([
        "preview".into(),
        "-c".into(),
        example().into_os_string(),
        "--stream".into(),
        "messages".into(),
        "--limit".into(),
        "3".into(),
    ]);
    assert_eq!(preview.code, 0, "{}", preview.stderr);
    assert!(
        preview.stdout.contains("Patient?identifier="),
        "{}",
        preview.stdout
    );
    assert!(preview.stdout.contains("ADT0001"), "{}", preview.stdout);
    let list = fhirlift(["connectors"]);
    assert!(list.stdout.contains("hl7v2"), "{}", list.stdout);
    assert!(list.stdout.contains("built-in maps"), "{}", list.stdout);
}

#[test]
fn every_corpus_archive_runs_through_the_builtin_map_without_a_panic() {
    let Some(corpus) = corpus() else {
        eprintln!("the shared corpus is not beside the workspace: skipped");
        return;
    };
    let dir = scratch("hl7v2-corpus");
    let config = corpus_migration(&corpus, &dir);
    let out = dir.join("out");
    let run = fhirlift([
        "migrate".into(),
        "-c".into(),
        config.into_os_string(),
        "--dry-run".into(),
        out.into_os_string(),
        "--rejects".into(),
        dir.join("rejects.ndjson").into_os_string(),
        "--report".into(),
        dir.join("report.json").into_os_string(),
    ]);
    assert!(
        run.code == 0 || run.code == 2,
        "{}{}",
        run.stdout,
        run.stderr
    );
    let r = report(&dir);
    let stream = &r["streams"][0];
    let records = stream["records"].as_u64().unwrap();
    let rejected = stream["rejected"].as_u64().unwrap();
    let skipped = stream["skipped"].as_u64().unwrap();
    assert!(records > 300, "{records} messages read");
    let mapped = records - rejected - skipped;
    assert!(mapped > 100, "{mapped} mapped of {records}: {}", run.stdout);
    // every reject names a message and says why
    for reject in rejects(&dir) {
        assert_eq!(reject["provenance"]["kind"], "message", "{reject}");
        assert!(!reject["reason"].as_str().unwrap().is_empty());
    }
    eprintln!(
        "corpus: {records} messages, {mapped} mapped, {skipped} skipped, {rejected} rejected"
    );
}

/// An ORU^R01 with `results` OBX under one OBR.
fn big_oru(control_id: &str, results: usize) -> String {
    let mut m = format!(
        "MSH|^~\\&|LABSYS|NORTHLAB|EPIC|NORTHCLINIC|20240302143000-0500||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r\
         PID|1||MRN2001^^^NORTHCLINIC^MR||Tanaka^Yui||19880203|F\r\
         OBR|1|PL1^EPIC|FL{control_id}^LABSYS|24323-8^Panel^LN|||20240302120000-0500||||||||||||||||CH|F\r"
    );
    for i in 1..=results {
        m.push_str(&format!(
            "OBX|{i}|NM|{}-1^Analyte {i}^LN||{}.5|mg/dL^mg/dL^UCUM|||||F|||20240302120000-0500\r",
            10_000 + i,
            i
        ));
    }
    m
}

#[test]
fn a_message_larger_than_a_transaction_is_written_in_parts_in_order() {
    let dir = scratch("hl7v2-split");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("big.hl7"), big_oru("BIG1", 120)).unwrap();
    let config = dir.join("migration.yaml");
    std::fs::write(
        &config,
        "source:\n  connector: hl7v2\nstreams:\n  labs:\n    from: big.hl7\n    map: hl7v2\n",
    )
    .unwrap();
    for medplum in [false, true] {
        let server = TestServer::start(SandboxConfig {
            medplum: medplum.then(MedplumBehaviour::default),
            ..SandboxConfig::default()
        });
        let out = scratch("hl7v2-split-run");
        let profile = if medplum { "medplum" } else { "generic" };
        let run = migrate(&config, &server.url(), &out, &["--profile", profile]);
        assert_eq!(run.code, 0, "{profile}: {}{}", run.stdout, run.stderr);
        // 122 resources: more than one transaction holds on either profile
        assert!(report(&out)["streams"][0]["requests"].as_u64().unwrap() >= 2);
        server.sandbox.with_store(|store| {
            assert_eq!(store.count("Observation"), 120, "{profile}");
            let patient = id_of(
                store,
                "Patient",
                "urn:fhirlift:hl7v2:authority:NORTHCLINIC",
                "MRN2001",
            );
            let lab = "urn:fhirlift:hl7v2:authority:LABSYS";
            let report = &store.find("DiagnosticReport", lab, "FLBIG1")[0];
            let results = report["result"].as_array().unwrap();
            assert_eq!(results.len(), 120, "{profile}");
            for r in results {
                let reference = r["reference"].as_str().unwrap();
                let (t, id) = reference.split_once('/').unwrap();
                assert_eq!(t, "Observation", "{profile}: {reference}");
                assert!(
                    store.get(t, id).is_some(),
                    "{profile}: {reference} is stored"
                );
            }
            for obs in store.resources("Observation") {
                assert_eq!(obs["subject"]["reference"], format!("Patient/{patient}"));
            }
        });
    }
}

#[test]
fn messages_about_one_patient_are_applied_in_file_order() {
    let dir = scratch("hl7v2-order");
    std::fs::create_dir_all(&dir).unwrap();
    // 200 updates of the same patient, each with a new address; the last wins
    let mut archive = String::new();
    for i in 0..200 {
        archive.push_str(&format!(
            "MSH|^~\\&|EPIC|NORTHCLINIC|LAB|NORTHCLINIC|20240301081500-0500||ADT^A08^ADT_A01|U{i}|P|2.5.1\r\
             PID|1||MRN3001^^^NORTHCLINIC^MR||Silva^Ana||19900101|F|||{i} Rua Nova^^Lisboa^^1000^PRT^H\r\
             PV1|1|O|||||||||||||||||V3001^^^NORTHCLINIC^VN\r"
        ));
    }
    std::fs::write(dir.join("updates.hl7"), archive).unwrap();
    let config = dir.join("migration.yaml");
    std::fs::write(
        &config,
        "source:\n  connector: hl7v2\nstreams:\n  adt:\n    from: updates.hl7\n    map: hl7v2\n",
    )
    .unwrap();
    let server = TestServer::start(SandboxConfig {
        medplum: Some(MedplumBehaviour {
            workers: 4,
            ..MedplumBehaviour::default()
        }),
        ..SandboxConfig::default()
    });
    let out = scratch("hl7v2-order-run");
    let run = migrate(&config, &server.url(), &out, &["--profile", "medplum"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(rejects(&out).is_empty(), "{:?}", rejects(&out));
    server.sandbox.with_store(|store| {
        let system = "urn:fhirlift:hl7v2:authority:NORTHCLINIC";
        let patient = &store.find("Patient", system, "MRN3001");
        assert_eq!(patient.len(), 1);
        assert_eq!(patient[0]["address"][0]["line"][0], "199 Rua Nova");
        assert_eq!(store.find("Encounter", system, "V3001").len(), 1);
    });
}

/// The example archive copied into a scratch folder (to be edited) and
/// migrated once into a sandbox in Medplum mode (transactions not atomic):
/// the server, the folder, the migration file and the archive.
fn example_in_medplum(name: &str) -> (TestServer, PathBuf, PathBuf, PathBuf) {
    let server = TestServer::start(SandboxConfig {
        medplum: Some(MedplumBehaviour::default()),
        ..SandboxConfig::default()
    });
    let dir = scratch(name);
    std::fs::create_dir_all(dir.join("archive")).unwrap();
    let from = workspace().join("examples/hl7v2");
    std::fs::copy(from.join("migration.yaml"), dir.join("migration.yaml")).unwrap();
    let archive = dir.join("archive/2024-03.hl7");
    std::fs::copy(from.join("archive/2024-03.hl7"), &archive).unwrap();
    let config = dir.join("migration.yaml");
    let first = migrate(&config, &server.url(), &dir, &["--profile", "medplum"]);
    assert_eq!(first.code, 2, "the damaged message only: {}", first.stdout);
    (server, dir, config, archive)
}

/// Regression: a changed message whose transaction writes by a ledger id
/// the server no longer has (the patient was deleted by hand), on a
/// Medplum without atomic transactions: the refused write must not leave
/// the record partially written and rejected; it is sent again, searched.
#[test]
fn a_stale_ledger_id_in_a_non_atomic_transaction_resends_the_message() {
    let (server, dir, config, archive) = example_in_medplum("hl7v2-stale-ledger");

    let old_id = server
        .sandbox
        .with_store(|s| id_of(s, "Patient", NORTH, "MRN1002"));
    assert!(
        server
            .sandbox
            .with_store_mut(|s| s.remove("Patient", &old_id))
    );
    // the VXU changes twice: the patient's name and its OBX
    let text = std::fs::read(&archive).unwrap();
    let text = String::from_utf8(text).unwrap();
    let changed = text
        .replacen("O'Brien^Siobhán", "O'Brien^Sinéad", 1)
        .replacen(
            "V02^VFC eligible - Medicaid",
            "V03^VFC eligible - Uninsured",
            1,
        );
    assert_ne!(changed, text);
    std::fs::write(&archive, changed).unwrap();

    let second = migrate(&config, &server.url(), &dir, &["--profile", "medplum"]);
    assert_eq!(second.code, 2, "{}", second.stdout);
    let left = rejects(&dir);
    assert_eq!(left.len(), 1, "only the damaged message: {left:?}");
    server.sandbox.with_store(|store| {
        let found = store.find("Patient", NORTH, "MRN1002");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0]["name"][0]["given"][0], "Sinéad");
        let patient = format!("Patient/{}", found[0]["id"].as_str().unwrap());
        // what refers to the patient follows it to its new id
        for immunization in store.resources("Immunization") {
            assert_eq!(immunization["patient"]["reference"], patient);
        }
    });
}

/// A changed message rewrites only what changed in it: the ledger's ids
/// are used for the changed resources alone, the others are compared.
#[test]
fn a_message_with_one_changed_resource_writes_only_that_one() {
    let (server, dir, config, archive) = example_in_medplum("hl7v2-one-changed");
    let text = String::from_utf8(std::fs::read(&archive).unwrap()).unwrap();
    let changed = text.replacen(
        "V02^VFC eligible - Medicaid",
        "V03^VFC eligible - Uninsured",
        1,
    );
    std::fs::write(&archive, changed).unwrap();
    let second = migrate(&config, &server.url(), &dir, &["--profile", "medplum"]);
    assert_eq!(second.code, 2, "{}", second.stdout);
    let r = report(&dir);
    assert_eq!(total(&r, "created"), 0);
    // no write by a ledger id met a version moved on by this run's own
    // earlier write (MRN1001's four messages replay in file order)
    assert_eq!(r["streams"][0]["retried"], 0, "{}", second.stdout);
    server.sandbox.with_store(|store| {
        let version = |t: &str, v: &str| {
            let id = id_of(store, t, NORTH, v);
            store.get(t, &id).unwrap().version
        };
        assert_eq!(version("Observation", "IZ-77001-OBX-1.1"), 2);
        assert_eq!(version("Patient", "MRN1002"), 1);
        assert_eq!(version("Immunization", "IZ-77001"), 1);
    });
}

/// A map setting written on the stream instead of under `map:` was passed
/// to the connector and ignored: the archive's times took no zone. Now a
/// stream's `zone:` is the map's (issue 20), and another map setting there
/// is named by check.
#[test]
fn a_map_setting_on_the_stream_is_named_by_check() {
    let dir = scratch("hl7v2-stream-setting");
    std::fs::write(dir.join("a.hl7"), "").unwrap();
    let config = dir.join("migration.yaml");
    let write = |setting: &str| {
        std::fs::write(
            &config,
            format!("source:\n  connector: hl7v2\nstreams:\n  adt:\n    from: a.hl7\n    {setting}\n    map: hl7v2\n"),
        )
        .unwrap();
        fhirlift(["check".into(), "-c".into(), config.clone().into_os_string()])
    };
    let zone = write("zone: America/New_York");
    assert_eq!(zone.code, 0, "{}{}", zone.stdout, zone.stderr);
    // and the map reads the archive's times in it
    std::fs::write(
        dir.join("a.hl7"),
        "MSH|^~\\&|EHR|FAC|||202401011200||ADT^A01|Z1|P|2.5.1\rPID|1||123^^^FAC^MR||Doe^Jane\rPV1|1|I|||||||||||||||||V1^^^FAC|||||||||||||||||||||||||202401011200\r",
    )
    .unwrap();
    let out = dir.join("out");
    let run = fhirlift([
        "migrate".into(),
        "-c".into(),
        config.clone().into_os_string(),
        "--dry-run".into(),
        out.clone().into_os_string(),
    ]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let bundle = std::fs::read_to_string(out.join("phase-1/000001-adt.json")).unwrap();
    assert!(
        bundle.contains("\"start\":\"2024-01-01T12:00:00-05:00\""),
        "{bundle}"
    );
    let misplaced = write("default_authority: urn:oid:1.2.3");
    assert_eq!(misplaced.code, 1, "{}", misplaced.stdout);
    assert!(
        misplaced.stderr.contains("stream adt.default_authority")
            && misplaced.stderr.contains("go under map:"),
        "{}",
        misplaced.stderr
    );
}
