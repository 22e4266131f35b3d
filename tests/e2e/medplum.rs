//! Migrations into the sandbox in Medplum mode: both write strategies, the
//! server's conflicts, limits, quota and async jobs, as ../shared/MEDPLUM.md
//! measured them.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fhirlift_sandbox::{Faults, MedplumBehaviour, SandboxConfig};
use fhirlift_tests::{TestServer, datagen, fhirlift, read_table as table, scratch};
use serde_json::Value;

use crate::support::{id_of, migrate, report, total};

const SRC: &str = "http://your-source-system.com";

fn medplum(behaviour: MedplumBehaviour) -> SandboxConfig {
    SandboxConfig {
        medplum: Some(behaviour),
        ..SandboxConfig::default()
    }
}

/// Medplum mode with injected faults.
fn medplum_with(faults: Faults) -> SandboxConfig {
    SandboxConfig {
        faults,
        ..medplum(MedplumBehaviour::default())
    }
}

/// Every identifier stored exactly once, every reference at the resource
/// the source row names.
fn assert_store_matches_source(server: &TestServer, data: &Path, counts: datagen::Generated) {
    let conditions = table(&data.join("patient_conditions.csv"));
    let encounters = table(&data.join("encounters.csv"));
    server.sandbox.with_store(|store| {
        assert_eq!(store.count("Patient") as u64, counts.patients);
        assert_eq!(store.count("Condition") as u64, counts.conditions);
        assert_eq!(store.count("Encounter") as u64, counts.encounters);
        assert_eq!(store.count("ClinicalImpression") as u64, counts.encounters);
        let patient = |p: &str| {
            format!(
                "Patient/{}",
                id_of(store, "Patient", &format!("{SRC}/patientId"), p)
            )
        };
        for row in &conditions {
            let id = id_of(
                store,
                "Condition",
                &format!("{SRC}/patientConditionId"),
                &row["patient_condition_id"],
            );
            let c = &store.get("Condition", &id).unwrap().resource;
            assert_eq!(c["subject"]["reference"], patient(&row["patient_id"]));
        }
        for row in &encounters {
            let eid = &row["encounter_id"];
            let enc = id_of(store, "Encounter", &format!("{SRC}/encounterId"), eid);
            let note = id_of(
                store,
                "ClinicalImpression",
                &format!("{SRC}/encounterNoteId"),
                eid,
            );
            let e = &store.get("Encounter", &enc).unwrap().resource;
            let n = &store.get("ClinicalImpression", &note).unwrap().resource;
            assert_eq!(e["subject"]["reference"], patient(&row["patient_id"]));
            assert_eq!(n["subject"]["reference"], patient(&row["patient_id"]));
            assert_eq!(n["encounter"]["reference"], format!("Encounter/{enc}"));
        }
    });
}

fn stat(
    server: &TestServer,
    which: fn(&fhirlift_sandbox::Stats) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    which(server.sandbox.stats()).load(Ordering::Relaxed)
}

#[test]
fn both_strategies_load_the_example_with_every_identifier_once_and_links_right() {
    for strategy in ["conditional", "resolve"] {
        let server = TestServer::start(medplum(MedplumBehaviour {
            transaction_bundles: true,
            ..MedplumBehaviour::default()
        }));
        let dir = scratch(&format!("medplum-both-{strategy}"));
        let counts = datagen::write_example(&dir, 300, 21).unwrap();
        let config = dir.join("migration.yaml");
        let args = [
            "--strategy",
            strategy,
            "--concurrency",
            "4",
            "--max-attempts",
            "30",
        ];
        let run = migrate(&config, &server.url(), &dir, &args);
        assert_eq!(run.code, 0, "{strategy}\n{}\n{}", run.stdout, run.stderr);
        let all = counts.patients + counts.conditions + 2 * counts.encounters;
        assert_eq!(total(&report(&dir), "created"), all, "{strategy}");
        assert_store_matches_source(&server, &dir.join("data"), counts);

        // a re-run changes nothing; the resolve strategy sends no write at
        // all (--full: the strategy is under test, not the ledger's delta)
        let entries = stat(&server, |s| &s.entries);
        let full: Vec<&str> = args.iter().copied().chain(["--full"]).collect();
        let again = migrate(&config, &server.url(), &dir, &full);
        assert_eq!(again.code, 0, "{strategy}\n{}", again.stdout);
        let second = report(&dir);
        assert_eq!(total(&second, "created"), 0, "{strategy}");
        assert_eq!(total(&second, "rejected"), 0, "{strategy}");
        if strategy == "resolve" {
            assert_eq!(total(&second, "unchanged"), all);
            assert_eq!(
                stat(&server, |s| &s.entries),
                entries,
                "an unchanged re-run under resolve writes nothing"
            );
            assert_eq!(second["traffic"]["writes"], 0, "{}", again.stdout);
            assert!(second["traffic"]["searches"].as_u64().unwrap() > 0);
        } else {
            assert_eq!(total(&second, "unchanged") + total(&second, "updated"), all);
        }
        assert_store_matches_source(&server, &dir.join("data"), counts);
    }
}

#[test]
fn a_first_load_under_resolve_counts_each_empty_system_once_instead_of_searching() {
    let server = TestServer::start(medplum(MedplumBehaviour::default()));
    let dir = scratch("medplum-empty-systems");
    datagen::write_example(&dir, 250, 4).unwrap();
    let run = migrate(&dir.join("migration.yaml"), &server.url(), &dir, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    // one count per identifier system written (Patient, Condition,
    // Encounter, ClinicalImpression), no per-batch search: every
    // reference came from the ids created in this run
    assert_eq!(stat(&server, |s| &s.searches), 4);
    // the second run searches, one search per batch and type (--full:
    // without it the ledger knows every record unchanged and sends nothing)
    let again = migrate(
        &dir.join("migration.yaml"),
        &server.url(),
        &dir,
        &["--full"],
    );
    assert_eq!(again.code, 0, "{}", again.stdout);
    assert!(stat(&server, |s| &s.searches) > 4);
}

#[test]
fn a_changed_row_is_updated_by_id_with_if_match_and_the_rest_skipped() {
    let server = TestServer::start(medplum(MedplumBehaviour::default()));
    let dir = scratch("medplum-delta");
    let counts = datagen::write_example(&dir, 120, 8).unwrap();
    let migration = dir.join("migration.yaml");
    datagen::streams_before(&migration, "conditions", &migration).unwrap();
    let run = migrate(&migration, &server.url(), &dir, &[]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let patients = dir.join("data/patients.csv");
    let text = std::fs::read_to_string(&patients).unwrap();
    let changed = text.replacen("P0000007,", "P0000007,Zed", 1);
    assert_ne!(text, changed);
    std::fs::write(&patients, changed).unwrap();
    let entries = stat(&server, |s| &s.entries);
    let searches = stat(&server, |s| &s.searches);
    let again = migrate(&migration, &server.url(), &dir, &[]);
    assert_eq!(again.code, 0, "{}", again.stdout);
    let second = report(&dir);
    assert_eq!(total(&second, "updated"), 1);
    assert_eq!(total(&second, "unchanged"), counts.patients - 1);
    assert_eq!(stat(&server, |s| &s.entries), entries + 1, "one write");
    // the ledger knew its id and version: no search before the update,
    // only the one that checks the server still holds a sample of Patients
    assert_eq!(
        stat(&server, |s| &s.searches),
        searches + 1,
        "only the ledger's check"
    );
    server.sandbox.with_store(|store| {
        let id = id_of(store, "Patient", &format!("{SRC}/patientId"), "P0000007");
        let stored = store.get("Patient", &id).unwrap();
        assert_eq!(stored.version, 2);
        assert!(
            stored.resource["name"][0]["given"][0]
                .as_str()
                .unwrap()
                .starts_with("Zed")
        );
    });
}

#[test]
fn two_stored_resources_with_one_identifier_stop_that_record_with_a_clear_reject() {
    let server = TestServer::start(medplum(MedplumBehaviour::default()));
    let dir = scratch("medplum-ambiguous");
    datagen::write_example(&dir, 30, 2).unwrap();
    let migration = dir.join("migration.yaml");
    datagen::streams_before(&migration, "conditions", &migration).unwrap();
    // someone created P0000003 twice by hand
    let body = serde_json::json!({
        "resourceType": "Patient",
        "identifier": [{ "system": format!("{SRC}/patientId"), "value": "P0000003" }]
    });
    for _ in 0..2 {
        post(&format!("{}/Patient", server.url()), &body);
    }
    let run = migrate(&migration, &server.url(), &dir, &[]);
    assert_eq!(run.code, 2, "{}", run.stdout);
    let rejects = std::fs::read_to_string(dir.join("rejects.ndjson")).unwrap();
    assert_eq!(rejects.lines().count(), 1, "{rejects}");
    let reject: Value = serde_json::from_str(rejects.lines().next().unwrap()).unwrap();
    assert_eq!(reject["provenance"]["line"], 4);
    let reason = reject["reason"].as_str().unwrap();
    assert!(reason.contains("never picks one"), "{reason}");
    assert!(reason.contains("P0000003"), "{reason}");
    server.sandbox.with_store(|store| {
        assert_eq!(
            store.count("Patient"),
            31,
            "29 written, the 2 duplicates left alone"
        );
    });
}

/// A plain POST with a JSON body over loopback, without a client crate.
fn post(url: &str, body: &Value) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    let body = body.to_string();
    write!(
        stream,
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
}

#[test]
fn concurrent_conditional_writes_conflict_and_are_retried_while_resolve_never_conflicts() {
    for strategy in ["conditional", "resolve"] {
        let server = TestServer::start(medplum(MedplumBehaviour {
            conflict_rate: 0.15,
            write_cost: Duration::from_micros(200),
            ..MedplumBehaviour::default()
        }));
        let dir = scratch(&format!("medplum-conflicts-{strategy}"));
        let counts = datagen::write_example(&dir, 600, 3).unwrap();
        let migration = dir.join("migration.yaml");
        datagen::streams_before(&migration, "encounters", &migration).unwrap();
        let run = migrate(
            &migration,
            &server.url(),
            &dir,
            &[
                "--strategy",
                strategy,
                "--concurrency",
                "4",
                "--max-attempts",
                "40",
            ],
        );
        assert_eq!(run.code, 0, "{strategy}\n{}\n{}", run.stdout, run.stderr);
        assert_eq!(total(&report(&dir), "rejected"), 0);
        let conflicts = stat(&server, |s| &s.conflicts);
        if strategy == "conditional" {
            assert!(
                conflicts > 0,
                "conditional writes in flight together conflict"
            );
        } else {
            assert_eq!(conflicts, 0, "creates and updates by id never conflict");
        }
        server.sandbox.with_store(|store| {
            assert_eq!(store.count("Patient") as u64, counts.patients);
            assert_eq!(store.count("Condition") as u64, counts.conditions);
        });
    }
}

#[test]
fn resets_after_the_write_are_resolved_again_and_never_duplicate_a_create() {
    let server = TestServer::start(medplum_with(Faults {
        rate_reset: 0.15,
        seed: 77,
        ..Faults::default()
    }));
    let dir = scratch("medplum-resets");
    let counts = datagen::write_example(&dir, 1_500, 12).unwrap();
    let run = migrate(
        &dir.join("migration.yaml"),
        &server.url(),
        &dir,
        &["--strategy", "resolve", "--max-attempts", "40"],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(stat(&server, |s| &s.faults) > 0, "resets happened");
    assert_store_matches_source(&server, &dir.join("data"), counts);
}

const NOTE_TRANSACTION: &str = r#"source: { connector: csv, path: . }
target: { profile: medplum, holds: [Patient] }
streams:
  encounters:
    from: encounters.csv
    key: encounter_id
    transaction: true
    emit:
      - as: encounter
        resourceType: Encounter
        identifier: [{ system: "http://s/encounter", value: "{{ encounter_id }}" }]
        status: finished
        class: { system: "http://terminology.hl7.org/CodeSystem/v3-ActCode", code: AMB }
      - resourceType: ClinicalImpression
        identifier: [{ system: "http://s/note", value: "{{ encounter_id }}" }]
        status: completed
        encounter: "= local('encounter')"
        subject: "= ref('Patient', 'http://s/patient', patient_id)"
"#;

/// Regression: on a real Medplum 5.0.10, 161 of 1,000 encounter records
/// were rejected "partially written" because one entry of their
/// transaction lost a serialization race (409), a passing failure.
#[test]
fn an_encounter_whose_note_lost_a_serialization_race_is_sent_again_not_rejected() {
    let server = TestServer::start(medplum(MedplumBehaviour {
        conflict_rate: 0.3,
        write_cost: Duration::from_micros(200),
        ..MedplumBehaviour::default()
    }));
    let dir = scratch("medplum-409-in-transactions");
    let counts = datagen::write_example(&dir, 300, 2).unwrap();
    let run = migrate(
        &dir.join("migration.yaml"),
        &server.url(),
        &dir,
        &[
            "--strategy",
            "conditional",
            "--concurrency",
            "8",
            "--max-attempts",
            "40",
        ],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = report(&dir);
    assert_eq!(total(&r, "rejected"), 0);
    assert!(stat(&server, |s| &s.conflicts) > 0, "the model conflicted");
    // what the first answer wrote is counted created, though the resend found it
    assert_eq!(total(&r, "created"), counts.resources());
    server.sandbox.with_store(|store| {
        assert_eq!(store.count("Encounter") as u64, counts.encounters);
        assert_eq!(store.count("ClinicalImpression") as u64, counts.encounters);
    });
}

#[test]
fn a_transaction_run_as_a_batch_is_reported_partially_written() {
    for strategy in ["conditional", "resolve"] {
        // no transaction-bundles feature: Medplum runs transactions as batches
        let server = TestServer::start(medplum(MedplumBehaviour::default()));
        let dir = scratch(&format!("medplum-partial-{strategy}"));
        std::fs::write(dir.join("migration.yaml"), NOTE_TRANSACTION).unwrap();
        std::fs::write(
            dir.join("encounters.csv"),
            "encounter_id,patient_id\nE1,NOBODY\n",
        )
        .unwrap();
        let run = migrate(
            &dir.join("migration.yaml"),
            &server.url(),
            &dir,
            &["--strategy", strategy],
        );
        assert_eq!(run.code, 2, "{strategy}\n{}", run.stdout);
        let r = report(&dir);
        assert_eq!(
            total(&r, "created"),
            1,
            "{strategy}: the Encounter was written"
        );
        assert_eq!(total(&r, "rejected"), 1, "{strategy}");
        let rejects = std::fs::read_to_string(dir.join("rejects.ndjson")).unwrap();
        let reject: Value = serde_json::from_str(rejects.lines().next().unwrap()).unwrap();
        let reason = reject["reason"].as_str().unwrap();
        assert!(reason.contains("partially written"), "{strategy}: {reason}");
        assert!(reason.contains("its ClinicalImpression failed"), "{reason}");
        server.sandbox.with_store(|store| {
            assert_eq!(store.count("Encounter"), 1);
            assert_eq!(store.count("ClinicalImpression"), 0);
        });
    }
}

/// A transaction stream whose records emit nine resources.
fn nine_per_record(dir: &Path) -> std::path::PathBuf {
    let mut yaml = String::from(
        "source: { connector: csv, path: . }\ntarget: { profile: medplum }\nstreams:\n  visits:\n    from: visits.csv\n    key: id\n    transaction: true\n    emit:\n",
    );
    for k in 0..9 {
        yaml.push_str(&format!(
            "      - resourceType: Observation\n        identifier: [{{ system: \"http://s/obs\", value: \"{{{{ id }}}}-{k}\" }}]\n        status: final\n        code: {{ text: \"item {k}\" }}\n"
        ));
    }
    std::fs::write(dir.join("visits.csv"), "id\nV1\nV2\n").unwrap();
    let path = dir.join("migration.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn the_eight_entry_limit_binds_conditional_transactions_only_and_check_warns() {
    let dir = scratch("medplum-eight");
    let config = nine_per_record(&dir);
    let check = fhirlift([
        "check",
        "-c",
        config.to_str().unwrap(),
        "--strategy",
        "conditional",
    ]);
    assert!(
        check
            .stdout
            .contains("profile medplum: strategy conditional"),
        "{}",
        check.stdout
    );
    assert!(
        check
            .stdout
            .contains("warning: stream visits: a record can emit 9 resources"),
        "{}",
        check.stdout
    );
    let check = fhirlift(["check", "-c", config.to_str().unwrap()]);
    assert!(
        check.stdout.contains("strategy resolve"),
        "{}",
        check.stdout
    );
    assert!(!check.stdout.contains("warning:"), "{}", check.stdout);

    for strategy in ["conditional", "resolve"] {
        let server = TestServer::start(medplum(MedplumBehaviour {
            transaction_bundles: true,
            ..MedplumBehaviour::default()
        }));
        let run = migrate(&config, &server.url(), &dir, &["--strategy", strategy]);
        let written = server.sandbox.with_store(|s| s.count("Observation"));
        if strategy == "conditional" {
            assert_eq!(run.code, 2, "{}", run.stdout);
            assert_eq!(written, 0);
            let rejects = std::fs::read_to_string(dir.join("rejects.ndjson")).unwrap();
            assert!(rejects.contains("allows 8"), "{rejects}");
        } else {
            assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
            assert_eq!(written, 18);
        }
    }
}

/// Regression: on a real Medplum at its default quota, the quota ran out
/// inside an Encounter + note transaction; the resend of the note created
/// the Encounter a second time (a first load skips searching an empty
/// system, and nothing told the resolver the Encounter now existed).
#[test]
fn a_transaction_cut_short_by_the_quota_is_finished_without_a_second_encounter() {
    let server = TestServer::start(SandboxConfig {
        limits: fhirlift_sandbox::Limits {
            // 45 writes a window: transactions are cut part-way
            quota: Some(fhirlift_sandbox::Quota {
                units: 450,
                window: Duration::from_millis(700),
                write_cost: 10,
            }),
            ..fhirlift_sandbox::Limits::default()
        },
        ..medplum(MedplumBehaviour::default())
    });
    let dir = scratch("medplum-quota-in-transactions");
    let counts = datagen::write_example(&dir, 60, 12).unwrap();
    let run = migrate(&dir.join("migration.yaml"), &server.url(), &dir, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(stat(&server, |s| &s.throttled) > 0, "the quota was hit");
    let r = report(&dir);
    assert_eq!(total(&r, "rejected"), 0);
    assert_eq!(total(&r, "created"), counts.resources());
    assert_store_matches_source(&server, &dir.join("data"), counts);
}

#[test]
fn async_batches_are_polled_and_their_results_read_from_the_binary() {
    // a quota the synchronous way would run into: async jobs wait for it
    let server = TestServer::start(SandboxConfig {
        limits: fhirlift_sandbox::Limits {
            quota: Some(fhirlift_sandbox::Quota {
                units: 3_000,
                window: Duration::from_secs(1),
                write_cost: 10,
            }),
            ..fhirlift_sandbox::Limits::default()
        },
        ..medplum(MedplumBehaviour {
            transaction_bundles: false,
            ..MedplumBehaviour::default()
        })
    });
    let dir = scratch("medplum-async");
    let counts = datagen::write_example(&dir, 200, 6).unwrap();
    let run = migrate(
        &dir.join("migration.yaml"),
        &server.url(),
        &dir,
        &["--async"],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = report(&dir);
    assert_eq!(
        total(&r, "created"),
        counts.patients + counts.conditions + 2 * counts.encounters
    );
    assert_eq!(
        stat(&server, |s| &s.throttled),
        0,
        "the jobs waited instead"
    );
    assert_store_matches_source(&server, &dir.join("data"), counts);
}

#[test]
fn bodies_stay_under_medplums_one_megabyte_and_nothing_is_too_large() {
    let server = TestServer::start(medplum(MedplumBehaviour::default()));
    let dir = scratch("medplum-large");
    let note = "x".repeat(200_000);
    let mut csv = String::from("encounter_id,patient_id,note\n");
    for i in 0..12 {
        csv.push_str(&format!("E{i},P1,{note}\n"));
    }
    std::fs::write(dir.join("encounters.csv"), csv).unwrap();
    std::fs::write(
        dir.join("migration.yaml"),
        r#"source: { connector: csv, path: . }
target: { profile: medplum }
streams:
  notes:
    from: encounters.csv
    key: encounter_id
    emit:
      - resourceType: ClinicalImpression
        identifier: [{ system: "http://s/note", value: "{{ encounter_id }}" }]
        status: completed
        subject: { reference: "Patient/p1" }
        summary: "{{ note }}"
"#,
    )
    .unwrap();
    let run = migrate(&dir.join("migration.yaml"), &server.url(), &dir, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        server.sandbox.with_store(|s| s.count("ClinicalImpression")),
        12
    );
}

#[test]
fn a_server_that_resolves_conditional_references_only_in_transactions_gets_ids_instead() {
    for (profile, strategy, ok) in [
        ("generic", "conditional", true),
        ("medplum", "conditional", false),
    ] {
        let server = TestServer::start(SandboxConfig {
            limits: fhirlift_sandbox::Limits {
                conditional_references_in_transactions_only: true,
                ..fhirlift_sandbox::Limits::default()
            },
            ..SandboxConfig::default()
        });
        let dir = scratch(&format!("strict-references-{profile}"));
        let counts = datagen::write_example(&dir, 150, 31).unwrap();
        let migration = dir.join("migration.yaml");
        datagen::streams_before(&migration, "encounters", &migration).unwrap();
        let run = migrate(
            &migration,
            &server.url(),
            &dir,
            &["--profile", profile, "--strategy", strategy],
        );
        if ok {
            // the generic profile knows R4 servers resolve them in transactions only
            assert_eq!(run.code, 0, "{profile}\n{}\n{}", run.stdout, run.stderr);
            server.sandbox.with_store(|store| {
                assert_eq!(store.count("Condition") as u64, counts.conditions);
                for c in store.resources("Condition") {
                    let r = c["subject"]["reference"].as_str().unwrap();
                    assert!(r.starts_with("Patient/"), "{r}");
                }
            });
        } else {
            // Medplum resolves them anywhere: sent as they are, refused here
            assert_eq!(run.code, 2, "{profile}\n{}", run.stdout);
            let rejects = std::fs::read_to_string(dir.join("rejects.ndjson")).unwrap();
            assert!(rejects.contains("only inside transactions"), "{rejects}");
        }
    }
}

#[test]
fn an_update_that_meets_412_is_resolved_again_and_lands_on_the_newer_version() {
    let server = TestServer::start(medplum_with(Faults {
        rate_412: 0.3,
        seed: 412,
        ..Faults::default()
    }));
    let dir = scratch("medplum-412");
    let counts = datagen::write_example(&dir, 200, 14).unwrap();
    let migration = dir.join("migration.yaml");
    datagen::streams_before(&migration, "conditions", &migration).unwrap();
    let first = migrate(&migration, &server.url(), &dir, &[]);
    assert_eq!(first.code, 0, "{}", first.stdout);
    // every patient changes: each update goes by id with If-Match on the
    // version a search read (--full: not by the ledger's ids, which carry
    // no If-Match), and another writer moves some of them on just before
    let patients = dir.join("data/patients.csv");
    let text = std::fs::read_to_string(&patients).unwrap();
    let changed: String = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("{l}\n")
            } else {
                format!("{}\n", l.replacen(",", ",New", 1))
            }
        })
        .collect();
    std::fs::write(&patients, changed).unwrap();
    let second = migrate(
        &migration,
        &server.url(),
        &dir,
        &["--max-attempts", "30", "--full"],
    );
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    let r = report(&dir);
    assert_eq!(total(&r, "updated"), counts.patients);
    assert_eq!(total(&r, "rejected"), 0);
    assert!(
        r["streams"][0]["retried"].as_u64().unwrap() > 0,
        "412s were met"
    );
    server.sandbox.with_store(|store| {
        assert_eq!(store.count("Patient") as u64, counts.patients);
        for p in store.resources("Patient") {
            let given = p["name"][0]["given"][0].as_str().unwrap();
            assert!(given.starts_with("New"), "{given}");
            assert!(
                store
                    .get("Patient", p["id"].as_str().unwrap())
                    .unwrap()
                    .version
                    >= 2
            );
        }
    });
}

#[test]
fn profile_auto_recognises_medplum_and_takes_its_strategy() {
    let server = TestServer::start(medplum(MedplumBehaviour::default()));
    let dir = scratch("medplum-auto");
    datagen::write_example(&dir, 20, 1).unwrap();
    let run = migrate(
        &dir.join("migration.yaml"),
        &server.url(),
        &dir,
        &["--profile", "auto"],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    // the first load under resolve counts each system instead of searching
    assert_eq!(stat(&server, |s| &s.searches), 4);
}

#[test]
fn a_resource_deleted_on_the_server_since_the_last_run_is_written_again_not_lost() {
    let server = TestServer::start(medplum(MedplumBehaviour::default()));
    let dir = scratch("medplum-stale-ledger");
    datagen::write_example(&dir, 40, 9).unwrap();
    let migration = dir.join("migration.yaml");
    datagen::streams_before(&migration, "conditions", &migration).unwrap();
    let run = migrate(&migration, &server.url(), &dir, &[]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    // someone deletes P0000007 by hand; then the clinic changes its row
    let system = format!("{SRC}/patientId");
    let old_id = server
        .sandbox
        .with_store(|s| id_of(s, "Patient", &system, "P0000007"));
    assert!(
        server
            .sandbox
            .with_store_mut(|s| s.remove("Patient", &old_id))
    );
    let patients = dir.join("data/patients.csv");
    let text = std::fs::read_to_string(&patients).unwrap();
    std::fs::write(&patients, text.replacen("P0000007,", "P0000007,Zed", 1)).unwrap();
    let again = migrate(&migration, &server.url(), &dir, &[]);
    // the write by the ledger's id is refused; sent again after a search,
    // it creates the patient anew
    assert_eq!(again.code, 0, "{}", again.stdout);
    let second = report(&dir);
    assert_eq!(total(&second, "created"), 1, "{}", again.stdout);
    assert_eq!(total(&second, "rejected"), 0);
    server.sandbox.with_store(|store| {
        let found = store.find("Patient", &system, "P0000007");
        assert_eq!(found.len(), 1);
        assert!(
            found[0]["name"][0]["given"][0]
                .as_str()
                .unwrap()
                .starts_with("Zed")
        );
    });
    // and the ledger follows: a third run has nothing to send
    let entries = stat(&server, |s| &s.entries);
    let third = migrate(&migration, &server.url(), &dir, &[]);
    assert_eq!(third.code, 0, "{}", third.stdout);
    assert_eq!(stat(&server, |s| &s.entries), entries);
}
