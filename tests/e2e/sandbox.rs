//! Migrations sent over real HTTP to the sandbox server.

use std::collections::HashMap;
use std::time::Duration;

use fhirlift_sandbox::{Faults, SandboxConfig};
use fhirlift_tests::{TestServer, datagen, fhirlift, fhirlift_binary, guide_example, scratch};
use serde_json::Value;

use crate::support::{id_of, migrate, report, total};

#[test]
fn the_guide_example_lands_linked_and_a_rerun_creates_nothing() {
    let server = TestServer::start(SandboxConfig::default());
    let dir = scratch("sandbox-guide");
    let run = migrate(&guide_example(), &server.url(), &dir, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(total(&report(&dir), "created"), 9);

    let src = "http://your-source-system.com";
    server.sandbox.with_store(|store| {
        assert_eq!(store.count("Patient"), 2);
        assert_eq!(store.count("Condition"), 3);
        assert_eq!(store.count("Encounter"), 2);
        assert_eq!(store.count("ClinicalImpression"), 2);
        let patient = |p: &str| {
            format!(
                "Patient/{}",
                id_of(store, "Patient", &format!("{src}/patientId"), p)
            )
        };
        for (condition, patient_id) in [("PC001", "P001"), ("PC002", "P001"), ("PC003", "P002")] {
            let c = store.find("Condition", &format!("{src}/patientConditionId"), condition)[0];
            assert_eq!(
                c["subject"]["reference"],
                patient(patient_id),
                "{condition}"
            );
        }
        for (encounter, patient_id) in [("E001", "P001"), ("E002", "P002")] {
            let enc = format!(
                "Encounter/{}",
                id_of(store, "Encounter", &format!("{src}/encounterId"), encounter)
            );
            let ci = store.find(
                "ClinicalImpression",
                &format!("{src}/encounterNoteId"),
                encounter,
            )[0];
            assert_eq!(
                ci["encounter"]["reference"], enc,
                "{encounter}'s note points at it"
            );
            assert_eq!(ci["subject"]["reference"], patient(patient_id));
        }
    });

    let again = migrate(&guide_example(), &server.url(), &dir, &[]);
    assert_eq!(again.code, 0, "{}", again.stdout);
    let second = report(&dir);
    assert_eq!(total(&second, "created"), 0, "a re-run creates nothing");
    assert_eq!(total(&second, "updated") + total(&second, "unchanged"), 9);
    server.sandbox.with_store(|store| {
        assert_eq!(store.count("Patient") + store.count("Condition"), 5);
        assert_eq!(
            store.count("Encounter") + store.count("ClinicalImpression"),
            4
        );
    });
}

#[test]
fn under_429s_503s_resets_and_latency_every_identifier_lands_exactly_once() {
    let server = TestServer::start(SandboxConfig {
        faults: Faults {
            rate_429: 0.10,
            rate_503: 0.05,
            rate_reset: 0.05,
            latency: Some((Duration::ZERO, Duration::from_millis(15))),
            seed: 20_000,
            ..Faults::default()
        },
        ..SandboxConfig::default()
    });
    let dir = scratch("sandbox-faults");
    let counts = datagen::write_example(&dir, 20_000, 11).unwrap();
    let migration = dir.join("migration.yaml");
    datagen::streams_before(&migration, "encounters", &migration).unwrap();

    let run = migrate(
        &dir.join("migration.yaml"),
        &server.url(),
        &dir,
        &["--max-attempts", "30"],
    );
    assert_eq!(
        run.code, 0,
        "nothing rejected\n{}\n{}",
        run.stdout, run.stderr
    );
    let report = report(&dir);
    assert_eq!(total(&report, "rejected"), 0);
    assert!(
        report["streams"][0]["retried"].as_u64().unwrap() > 0,
        "the faults were felt"
    );
    assert!(
        server
            .sandbox
            .stats()
            .faults
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );

    server.sandbox.with_store(|store| {
        assert_eq!(store.count("Patient") as u64, counts.patients);
        assert_eq!(store.count("Condition") as u64, counts.conditions);
        let system = "http://your-source-system.com/patientId";
        for i in (1..=counts.patients).step_by(97) {
            id_of(store, "Patient", system, &format!("P{i:07}"));
        }
        let mut seen = HashMap::new();
        for c in store.resources("Condition") {
            let value = c["identifier"][0]["value"].as_str().unwrap().to_owned();
            assert!(seen.insert(value, ()).is_none(), "a condition stored twice");
            assert!(
                c["subject"]["reference"]
                    .as_str()
                    .unwrap()
                    .starts_with("Patient/")
            );
        }
    });
}

const FAILING_TRANSACTION: &str = r#"source: { connector: csv, path: . }
target: { profile: PROFILE, holds: [Patient] }
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

#[test]
fn a_transaction_whose_second_entry_fails_leaves_nothing_and_names_its_record() {
    for profile in ["medplum", "generic"] {
        let server = TestServer::start(SandboxConfig::default());
        let dir = scratch(&format!("sandbox-tx-{profile}"));
        std::fs::write(
            dir.join("migration.yaml"),
            FAILING_TRANSACTION.replace("PROFILE", profile),
        )
        .unwrap();
        std::fs::write(
            dir.join("encounters.csv"),
            "encounter_id,patient_id\nE1,NOBODY\n",
        )
        .unwrap();
        let run = migrate(&dir.join("migration.yaml"), &server.url(), &dir, &[]);
        assert_eq!(
            run.code, 2,
            "{profile}: a reject makes the exit code non-zero\n{}",
            run.stdout
        );
        server.sandbox.with_store(|store| {
            assert_eq!(
                store.count("Encounter"),
                0,
                "{profile}: the Encounter was rolled back"
            );
            assert_eq!(store.count("ClinicalImpression"), 0);
        });
        let rejects = std::fs::read_to_string(dir.join("rejects.ndjson")).unwrap();
        let reject: Value = serde_json::from_str(rejects.lines().next().unwrap()).unwrap();
        assert_eq!(rejects.lines().count(), 1, "one line for the record");
        assert_eq!(reject["provenance"]["file"], "encounters.csv");
        assert_eq!(reject["provenance"]["line"], 2);
        assert_eq!(reject["stage"], "server");
        assert!(
            reject["reason"]
                .as_str()
                .unwrap()
                .contains("did not match any resources"),
            "{reject}"
        );
        assert!(
            reject["request"].is_object(),
            "the refused request is kept: {reject}"
        );
    }
}

#[test]
fn logs_of_a_full_run_hold_no_names_dates_or_notes() {
    let dir = scratch("sandbox-phi");
    let output = std::process::Command::new(fhirlift_binary())
        .args(["migrate", "-c"])
        .arg(guide_example())
        .arg("--sandbox")
        .arg(dir.join("store"))
        .arg("--rejects")
        .arg(dir.join("rejects.ndjson"))
        .arg("--state")
        .arg(dir.join("fhirlift.state"))
        .env("FHIRLIFT_LOG", "debug")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(logs.contains("stream=patients"), "the run logged: {logs}");
    for phi in [
        "John",
        "Doe",
        "Jane",
        "Smith",
        "1980-07-15",
        "1992-11-30",
        "2023-06-15",
        "Routine check-up",
        "severe headache",
    ] {
        assert!(!logs.contains(phi), "the logs name {phi:?}:\n{logs}");
    }
}

#[test]
fn entries_that_fail_alone_with_409_are_resent_alone_until_they_land() {
    let server = TestServer::start(SandboxConfig {
        faults: Faults {
            rate_409: 0.25,
            seed: 409,
            ..Faults::default()
        },
        ..SandboxConfig::default()
    });
    let dir = scratch("sandbox-409");
    let counts = datagen::write_example(&dir, 2_000, 5).unwrap();
    let run = migrate(
        &dir.join("migration.yaml"),
        &server.url(),
        &dir,
        &["--max-attempts", "30"],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = report(&dir);
    assert_eq!(total(&report, "rejected"), 0);
    assert_eq!(
        total(&report, "created"),
        counts.patients + counts.conditions + 2 * counts.encounters
    );
    // entries are resent alone: the requests beyond the planned ones are far
    // fewer than if every batch holding a 409 had been resent whole
    let entries = server
        .sandbox
        .stats()
        .entries
        .load(std::sync::atomic::Ordering::Relaxed);
    let planned_entries = counts.patients + counts.conditions + counts.encounters;
    assert!(
        entries < planned_entries * 3 / 2,
        "{entries} entries sent for {planned_entries}"
    );
    server.sandbox.with_store(|store| {
        assert_eq!(store.count("Patient") as u64, counts.patients);
        assert_eq!(store.count("Encounter") as u64, counts.encounters);
        assert_eq!(store.count("ClinicalImpression") as u64, counts.encounters);
    });
}

#[test]
fn profile_auto_reads_the_servers_metadata() {
    let server = TestServer::start(SandboxConfig::default());
    let dir = scratch("sandbox-auto");
    // the sandbox calls itself fhirlift-sandbox: a generic server, whose
    // transactions go one per request instead of packed in a batch
    let run = migrate(
        &guide_example(),
        &server.url(),
        &dir,
        &["--profile", "auto"],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let encounters = &report(&dir)["streams"][2];
    assert_eq!(encounters["stream"], "encounters");
    assert_eq!(encounters["requests"], 2);

    let dry = fhirlift([
        "migrate".into(),
        "-c".into(),
        guide_example().into_os_string(),
        "--profile".into(),
        "auto".into(),
        "--dry-run".into(),
        dir.join("dry").into_os_string(),
    ]);
    assert_eq!(dry.code, 1);
    assert!(
        dry.stderr
            .contains("profile auto reads the server's /metadata"),
        "{}",
        dry.stderr
    );
}

#[test]
fn a_used_up_quota_pauses_sending_and_the_429_tail_of_a_batch_is_resent() {
    // 70 writes a second: the first batch of 100 runs into the quota
    // part-way (whatever the machine's speed), and the entries from there on
    // come back 429 inside an HTTP 200 answer; in Medplum mode too, where
    // the resolve strategy writes
    for medplum in [None, Some(fhirlift_sandbox::MedplumBehaviour::default())] {
        let server = TestServer::start(SandboxConfig {
            limits: fhirlift_sandbox::Limits {
                quota: Some(fhirlift_sandbox::Quota {
                    units: 700,
                    window: Duration::from_secs(1),
                    write_cost: 10,
                }),
                ..fhirlift_sandbox::Limits::default()
            },
            medplum: medplum.clone(),
            ..SandboxConfig::default()
        });
        let dir = scratch(&format!("sandbox-quota-{}", medplum.is_some()));
        let counts = datagen::write_example(&dir, 200, 9).unwrap();
        let migration = dir.join("migration.yaml");
        datagen::streams_before(&migration, "conditions", &migration).unwrap();
        let run = migrate(
            &dir.join("migration.yaml"),
            &server.url(),
            &dir,
            &["--max-attempts", "20"],
        );
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        assert!(
            server
                .sandbox
                .stats()
                .throttled
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0,
            "the quota was hit"
        );
        let report = report(&dir);
        assert_eq!(total(&report, "rejected"), 0);
        assert_eq!(total(&report, "created"), counts.patients);
        server
            .sandbox
            .with_store(|s| assert_eq!(s.count("Patient") as u64, counts.patients));
    }
}

/// Migrates 100 generated patients into a sandbox with `faults` once per
/// entry of `runs` (each the extra arguments of a run), and checks every
/// run ends clean, faults happened, and each resource landed once.
fn lands_once_despite(faults: Faults, name: &str, seed: u64, runs: &[&[&str]]) {
    let server = TestServer::start(SandboxConfig {
        faults,
        ..SandboxConfig::default()
    });
    let dir = scratch(name);
    let counts = datagen::write_example(&dir, 100, seed).unwrap();
    for extra in runs {
        let mut args = vec!["--max-attempts", "30"];
        args.extend_from_slice(extra);
        let run = migrate(&dir.join("migration.yaml"), &server.url(), &dir, &args);
        assert_eq!(
            run.code, 0,
            "{name} {extra:?}: {}\n{}",
            run.stdout, run.stderr
        );
    }
    assert!(
        server
            .sandbox
            .stats()
            .faults
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    server.sandbox.with_store(|store| {
        assert_eq!(store.count("Patient") as u64, counts.patients, "{name}");
        assert_eq!(store.count("Condition") as u64, counts.conditions, "{name}");
        assert_eq!(store.count("Encounter") as u64, counts.encounters, "{name}");
    });
}

/// Regression: under `resolve`, a search answered 2xx with an empty body,
/// an HTML page (a proxy's login page) or JSON that is not a searchset was
/// read as "nothing stored": a `--full` re-run through such a proxy doubled
/// every resource, exit 0. Such an answer is an ambiguous failure now,
/// asked again; nothing is written blind.
#[test]
fn search_answers_that_are_not_searchsets_never_create_a_duplicate() {
    use fhirlift_sandbox::BadSearch;
    for (bad, seed) in [
        (BadSearch::Empty, 1),
        (BadSearch::Html, 2),
        (BadSearch::NotSearchset, 3),
    ] {
        let faults = Faults {
            rate_bad_search: 0.3,
            bad_search: bad,
            seed,
            ..Faults::default()
        };
        let resolve: &[&str] = &["--strategy", "resolve"];
        let full: &[&str] = &["--strategy", "resolve", "--full"];
        lands_once_despite(
            faults,
            &format!("sandbox-bad-search-{seed}"),
            seed,
            &[resolve, full],
        );
    }
}

/// A bundle written but answered 200 with a page that is not a
/// batch-response (a proxy in the way) was taken apart as if it were one.
/// It is sent again now (idempotent under conditional, searched again under
/// resolve): every resource lands once.
#[test]
fn a_written_bundle_answered_with_an_unreadable_page_is_sent_again_and_lands_once() {
    for (strategy, seed) in [("conditional", 21), ("resolve", 22)] {
        let faults = Faults {
            rate_bad_answer: 0.3,
            seed,
            ..Faults::default()
        };
        let name = format!("sandbox-bad-answer-{strategy}");
        lands_once_despite(faults, &name, seed, &[&["--strategy", strategy]]);
    }
}
