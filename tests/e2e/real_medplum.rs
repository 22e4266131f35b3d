//! Migrations into a REAL Medplum 5.0.10 (the kit of `../shared/medplum`,
//! which `cargo xtask test` starts), each test into a fresh project of its
//! own: both write strategies on the guide example and on generated data,
//! Medplum's default quota, atomic transactions and their 8 / 50 limits,
//! two projects behind one URL sharing one ledger, a project emptied behind
//! the ledger's back, and async batches. What the server holds is read back
//! over HTTP with the project's own client ([`fhirlift_tests::medplum`]).
//!
//! These tests need the kit: without `MEDPLUM_URL` they fail (run them
//! through `cargo xtask test`, or start the kit with `cargo xtask medplum`),
//! they never pass by skipping.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use fhirlift_tests::medplum::{Fhir, Kit, Project};
use fhirlift_tests::{Outcome, datagen, guide_example, read_table, scratch};
use serde_json::Value;

use crate::support::{migrate, report, total};

const SRC: &str = "http://your-source-system.com";

/// The example's resource types, referenced ones first.
const TYPES: [&str; 4] = ["Patient", "Condition", "Encounter", "ClinicalImpression"];

/// The longest one `fhirlift migrate` may run before the test fails (the
/// slowest, 1,050 creates under the default quota, takes 2 to 3 minutes).
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// A new, empty project on the kit's server.
fn project(test: &str, profile: &str) -> Project {
    Kit::from_env().project(&format!("fhirlift-e2e-{test}"), profile)
}

/// `fhirlift migrate` into the project with its client's credentials
/// (rejects, report and ledger in `dir`, as [`migrate`] places them);
/// fails the test when the run lasts longer than [`RUN_LIMIT`].
fn run(project: &Project, config: &Path, dir: &Path, extra: &[&str]) -> Outcome {
    let args: Vec<String> = project
        .credentials()
        .into_iter()
        .chain(extra.iter().map(|a| a.to_string()))
        .collect();
    let (config, dir, url) = (config.to_owned(), dir.to_owned(), project.url.clone());
    let shown = format!(
        "fhirlift migrate -c {} {}",
        config.display(),
        extra.join(" ")
    );
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = done.send(migrate(&config, &url, &dir, &args));
    });
    match outcome.recv_timeout(RUN_LIMIT) {
        Ok(outcome) => outcome,
        Err(RecvTimeoutError::Timeout) => panic!("{shown}: still running after {RUN_LIMIT:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("{shown}: panicked"),
    }
}

/// Identifier values a type must hold, each with the patient that
/// resource refers to (none for patients).
type Holds<'s> = HashMap<&'s str, Option<&'s str>>;

/// What the example's tables say the server must hold.
struct Source {
    patients: Vec<String>,
    /// Patient condition id and its patient's id.
    conditions: Vec<(String, String)>,
    /// Encounter id (its note's id too) and its patient's id.
    encounters: Vec<(String, String)>,
}

impl Source {
    /// Reads the tables of `data` (the example's, or generated ones).
    fn read(data: &Path) -> Source {
        let with_patient = |file: &str, id: &str| -> Vec<(String, String)> {
            read_table(&data.join(file))
                .into_iter()
                .map(|row| (row[id].clone(), row["patient_id"].clone()))
                .collect()
        };
        Source {
            patients: read_table(&data.join("patients.csv"))
                .into_iter()
                .map(|row| row["patient_id"].clone())
                .collect(),
            conditions: with_patient("patient_conditions.csv", "patient_condition_id"),
            encounters: with_patient("encounters.csv", "encounter_id"),
        }
    }

    /// Per type: its identifier system, and each identifier value it must
    /// hold with the patient that resource must refer to (none for patients).
    fn identifiers(&self) -> [(&'static str, String, Holds<'_>); 4] {
        fn of_patients(rows: &[(String, String)]) -> Holds<'_> {
            rows.iter()
                .map(|(id, patient)| (id.as_str(), Some(patient.as_str())))
                .collect()
        }
        [
            (
                "Patient",
                format!("{SRC}/patientId"),
                self.patients.iter().map(|p| (p.as_str(), None)).collect(),
            ),
            (
                "Condition",
                format!("{SRC}/patientConditionId"),
                of_patients(&self.conditions),
            ),
            (
                "Encounter",
                format!("{SRC}/encounterId"),
                of_patients(&self.encounters),
            ),
            (
                "ClinicalImpression",
                format!("{SRC}/encounterNoteId"),
                of_patients(&self.encounters),
            ),
        ]
    }

    /// Every resource the migration writes.
    fn resources(&self) -> u64 {
        (self.patients.len() + self.conditions.len() + 2 * self.encounters.len()) as u64
    }

    /// Checks the tables against what the generator said it wrote.
    fn assert_generated(&self, counts: datagen::Generated) {
        assert_eq!(self.patients.len() as u64, counts.patients);
        assert_eq!(self.conditions.len() as u64, counts.conditions);
        assert_eq!(self.encounters.len() as u64, counts.encounters);
    }
}

/// The value of the resource's identifier in `system`.
fn identifier_in<'r>(resource: &'r Value, system: &str) -> &'r str {
    resource["identifier"]
        .as_array()
        .and_then(|ids| ids.iter().find(|i| i["system"] == system))
        .and_then(|i| i["value"].as_str())
        .unwrap_or_else(|| panic!("no identifier in {system}: {resource}"))
}

/// The server holds exactly what the source says, read back in full: per
/// type every identifier once and nothing else, each subject at the patient
/// its row names, each note at its own encounter.
fn assert_server_holds(fhir: &Fhir, source: &Source, what: &str) {
    // "Type/id" → the identifier value stored there (types in TYPES order,
    // so a reference's target is read before the resource)
    let mut at: HashMap<String, String> = HashMap::new();
    for (resource_type, system, rows) in source.identifiers() {
        let listed = fhir.all(
            resource_type,
            &[("_elements", "identifier,subject,encounter")],
        );
        // identifier value → the ids holding it
        let mut seen: HashMap<String, Vec<&str>> = HashMap::new();
        let mut wrong = Vec::new();
        for r in &listed {
            let value = identifier_in(r, &system).to_owned();
            let points_at = |field: &str| {
                r[field]["reference"]
                    .as_str()
                    .and_then(|target| at.get(target))
                    .map(String::as_str)
            };
            match rows.get(value.as_str()) {
                None => wrong.push(format!("{value} is not in the source")),
                Some(patient) => {
                    if patient.is_some() && points_at("subject") != *patient {
                        wrong.push(format!("{value}: subject {}", r["subject"]));
                    }
                    if resource_type == "ClinicalImpression"
                        && points_at("encounter") != Some(value.as_str())
                    {
                        wrong.push(format!("{value}: encounter {}", r["encounter"]));
                    }
                }
            }
            let id = r["id"].as_str().unwrap_or_default();
            at.insert(format!("{resource_type}/{id}"), value.clone());
            seen.entry(value).or_default().push(id);
        }
        wrong.extend(
            seen.iter()
                .filter(|(_, ids)| ids.len() > 1)
                .map(|(v, ids)| format!("{v} stored {} times: {ids:?}", ids.len())),
        );
        wrong.extend(
            rows.keys()
                .filter(|v| !seen.contains_key(**v))
                .map(|v| format!("{v} missing")),
        );
        wrong.sort();
        assert!(
            wrong.is_empty(),
            "{what}: {} wrong {resource_type}s on the server, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(10)]
        );
        assert_eq!(
            fhir.count(resource_type),
            rows.len() as u64,
            "{what}: {resource_type}s on the server"
        );
    }
}

/// A first load into an empty project: exit 0, nothing rejected, the
/// server holding exactly the tables of `data`, every resource
/// acknowledged. Returns the client and the source read.
fn first_load(
    project: &Project,
    config: &Path,
    dir: &Path,
    data: &Path,
    extra: &[&str],
) -> (Fhir, Source) {
    let what = format!("{} {}", config.display(), extra.join(" "));
    let outcome = run(project, config, dir, extra);
    assert_eq!(
        outcome.code, 0,
        "{what}\n{}\n{}",
        outcome.stdout, outcome.stderr
    );
    let r = report(dir);
    let source = Source::read(data);
    assert_eq!(total(&r, "rejected"), 0, "{what}\n{}", outcome.stdout);
    let what = format!("{what}\n{}", outcome.stdout);
    let fhir = project.fhir();
    assert_server_holds(&fhir, &source, &what);
    let acknowledged: u64 = ["created", "updated", "unchanged"]
        .iter()
        .map(|o| total(&r, o))
        .sum();
    assert_eq!(
        acknowledged,
        source.resources(),
        "{what}: every resource acknowledged\n{}",
        outcome.stdout
    );
    (fhir, source)
}

/// Runs the migration again: exit 0, no write request sent, nothing
/// created, updated or rejected, and no type on the server changed (same
/// count, same newest `lastUpdated`).
fn assert_rerun_writes_nothing(
    fhir: &Fhir,
    project: &Project,
    config: &Path,
    dir: &Path,
    extra: &[&str],
) {
    let before: Vec<_> = TYPES.iter().map(|t| fhir.snapshot(t)).collect();
    let again = run(project, config, dir, extra);
    let what = format!("re-run of {} {}", config.display(), extra.join(" "));
    assert_eq!(again.code, 0, "{what}\n{}\n{}", again.stdout, again.stderr);
    let r = report(dir);
    assert_eq!(
        r["traffic"]["writes"], 0,
        "{what} sends no write\n{}",
        again.stdout
    );
    for outcome in ["created", "updated", "rejected"] {
        assert_eq!(total(&r, outcome), 0, "{what}: {outcome}\n{}", again.stdout);
    }
    let after: Vec<_> = TYPES.iter().map(|t| fhir.snapshot(t)).collect();
    assert_eq!(after, before, "{what} changes nothing on the server");
}

/// The guide example into a fresh `fast` project, then again.
fn guide_example_lands_exactly_and_a_rerun_writes_nothing(strategy: &str) {
    let project = project(&format!("guide-{strategy}"), "fast");
    let dir = scratch(&format!("real-medplum-guide-{strategy}"));
    let config = guide_example();
    let data = config.with_file_name("data");
    let args = ["--strategy", strategy];
    let (fhir, source) = first_load(&project, &config, &dir, &data, &args);
    // 2 patients, 3 conditions, 2 encounters with their notes
    assert_eq!(source.resources(), 9);
    assert_rerun_writes_nothing(&fhir, &project, &config, &dir, &args);
    let verified = verify_all_equal(&project, &config, &dir);
    assert!(verified.contains("9 identities verified"), "{verified}");
}

/// `fhirlift verify --orphans` on the project: everything equal (exit 0);
/// its table.
fn verify_all_equal(project: &Project, config: &Path, dir: &Path) -> String {
    let mut args: Vec<String> = vec![
        "verify".into(),
        "-c".into(),
        config.display().to_string(),
        "--server".into(),
        project.url.clone(),
        "--orphans".into(),
        "--out".into(),
        dir.join("verify.ndjson").display().to_string(),
    ];
    args.extend(project.credentials());
    let check = fhirlift_tests::fhirlift(args);
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);
    assert!(
        check
            .stdout
            .contains("the server holds what the source maps to"),
        "{}",
        check.stdout
    );
    println!("{}", check.stdout);
    check.stdout
}

#[test]
fn the_guide_example_under_resolve_lands_exactly_and_a_rerun_writes_nothing() {
    guide_example_lands_exactly_and_a_rerun_writes_nothing("resolve");
}

#[test]
fn the_guide_example_under_conditional_lands_exactly_and_a_rerun_writes_nothing() {
    guide_example_lands_exactly_and_a_rerun_writes_nothing("conditional");
}

/// A fresh project after a first load of generated patients, checked.
struct Loaded {
    project: Project,
    dir: PathBuf,
    config: PathBuf,
    fhir: Fhir,
    source: Source,
}

/// `patients` generated patients into a fresh project of `profile`: the
/// first load lands exactly (see [`first_load`]).
fn load_generated(test: &str, profile: &str, patients: u64, seed: u64, args: &[&str]) -> Loaded {
    let project = project(test, profile);
    let dir = scratch(&format!("real-medplum-{test}"));
    let counts = datagen::write_example(&dir, patients, seed).unwrap();
    let config = dir.join("migration.yaml");
    let (fhir, source) = first_load(&project, &config, &dir, &dir.join("data"), args);
    source.assert_generated(counts);
    Loaded {
        project,
        dir,
        config,
        fhir,
        source,
    }
}

impl Loaded {
    /// See [`assert_rerun_writes_nothing`].
    fn assert_rerun_writes_nothing(&self, args: &[&str]) {
        assert_rerun_writes_nothing(&self.fhir, &self.project, &self.config, &self.dir, args);
    }
}

/// [`load_generated`] under `strategy`, then a re-run that writes nothing.
fn load_and_rerun(test: &str, profile: &str, patients: u64, seed: u64, strategy: &str) {
    let args = ["--strategy", strategy];
    let loaded = load_generated(test, profile, patients, seed, &args);
    loaded.assert_rerun_writes_nothing(&args);
    // every identity verified equal (the table prints identities/s)
    let verified = verify_all_equal(&loaded.project, &loaded.config, &loaded.dir);
    let expected = format!("{} identities verified", loaded.source.resources());
    assert!(verified.contains(&expected), "{expected}\n{verified}");
}

#[test]
fn five_hundred_generated_patients_under_resolve_land_once_each_and_a_rerun_writes_nothing() {
    load_and_rerun("500-resolve", "fast", 500, 11, "resolve");
}

#[test]
fn five_hundred_generated_patients_under_conditional_land_once_each_and_a_rerun_writes_nothing() {
    load_and_rerun("500-conditional", "fast", 500, 12, "conditional");
}

#[test]
fn the_default_quota_takes_1050_resources_without_a_reject() {
    // seed 94 gives 150 patients, 294 conditions and 303 encounters with
    // their notes: 1,050 resources, over two minutes of Medplum's 50,000
    // units a minute (a create costs 100)
    let loaded = load_generated("default-quota", "default", 150, 94, &[]);
    assert_eq!(loaded.source.resources(), 1_050);
}

#[test]
fn atomic_transactions_under_resolve_write_every_encounter_with_its_note() {
    load_and_rerun("tx-resolve", "tx", 150, 21, "resolve");
}

#[test]
fn atomic_transactions_under_conditional_write_every_encounter_with_its_note() {
    load_and_rerun("tx-conditional", "tx", 150, 22, "conditional");
}

/// A migration of `visits.csv` (`id,note`) whose streams write `n`
/// Observations per record (as one transaction when `transaction`), one
/// stream per `(name, n)`; each Observation carries the record's note.
fn observations_per_record(
    dir: &Path,
    streams: &[(&str, usize)],
    transaction: bool,
    notes: &[(&str, &str)],
) {
    let mut yaml = String::from(
        "source: { connector: csv, path: . }\ntarget: { profile: medplum }\nstreams:\n",
    );
    for (name, n) in streams {
        yaml.push_str(&format!(
            "  {name}:\n    from: visits.csv\n    key: id\n    transaction: {transaction}\n    emit:\n"
        ));
        for k in 0..*n {
            yaml.push_str(&format!(
                "      - resourceType: Observation\n        identifier: [{{ system: \"http://fhirlift.test/{name}\", value: \"{{{{ id }}}}-{k}\" }}]\n        status: final\n        code: {{ text: \"item {k}\" }}\n        valueString: \"{{{{ note }}}}\"\n"
            ));
        }
    }
    std::fs::write(dir.join("migration.yaml"), yaml).unwrap();
    let mut csv = String::from("id,note\n");
    for (id, note) in notes {
        csv.push_str(&format!("{id},{note}\n"));
    }
    std::fs::write(dir.join("visits.csv"), csv).unwrap();
}

/// One stream's summary in a report.
fn stream<'r>(report: &'r Value, name: &str) -> &'r Value {
    report["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == name)
        .unwrap_or_else(|| panic!("no stream {name} in {report}"))
}

/// The rejects file of a run in `dir`.
fn rejects(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("rejects.ndjson")).unwrap_or_default()
}

#[test]
fn nine_conditional_entries_in_a_transaction_are_refused_naming_the_limit_and_go_by_id_under_resolve()
 {
    for strategy in ["conditional", "resolve"] {
        let project = project(&format!("nine-{strategy}"), "tx");
        let dir = scratch(&format!("real-medplum-nine-{strategy}"));
        observations_per_record(&dir, &[("visits", 9)], true, &[("V1", "a"), ("V2", "b")]);
        let outcome = run(
            &project,
            &dir.join("migration.yaml"),
            &dir,
            &["--strategy", strategy],
        );
        let stored = project.fhir().count("Observation");
        if strategy == "conditional" {
            // Medplum would refuse it (strict isolation, 8 entries): fhirlift
            // refuses each record itself, with the limit named, sends nothing
            assert_eq!(outcome.code, 2, "{}\n{}", outcome.stdout, outcome.stderr);
            let rejects = rejects(&dir);
            assert_eq!(rejects.lines().count(), 2, "{rejects}");
            assert!(rejects.contains("allows 8"), "{rejects}");
            assert_eq!(stored, 0);
        } else {
            // resolved to plain creates: no conditional entry, no limit of 8
            assert_eq!(outcome.code, 0, "{}\n{}", outcome.stdout, outcome.stderr);
            assert_eq!(total(&report(&dir), "created"), 18);
            assert_eq!(stored, 18);
        }
    }
}

#[test]
fn fifty_updates_in_one_transaction_are_written_and_fifty_one_entries_are_refused_by_name() {
    let project = project("fifty", "tx");
    let dir = scratch("real-medplum-fifty");
    let streams = [("fifty", 50), ("fiftyone", 51)];
    let config = dir.join("migration.yaml");
    let fhir = project.fhir();
    for (round, note) in ["first", "second"].into_iter().enumerate() {
        observations_per_record(&dir, &streams, true, &[("V1", note), ("V2", note)]);
        let outcome = run(&project, &config, &dir, &[]);
        assert_eq!(
            outcome.code, 2,
            "{note}\n{}\n{}",
            outcome.stdout, outcome.stderr
        );
        let r = report(&dir);
        // the second round updates the 50 of each record, by id, in one transaction
        let counted = if round == 0 { "created" } else { "updated" };
        assert_eq!(
            stream(&r, "fifty")["written"]["Observation"][counted],
            100,
            "{note}\n{}",
            outcome.stdout
        );
        let refused = stream(&r, "fiftyone");
        assert_eq!(refused["rejected"], 2, "{note}\n{}", outcome.stdout);
        let rejects = rejects(&dir);
        assert_eq!(rejects.lines().count(), 2, "{rejects}");
        assert!(rejects.contains("allows 50"), "{rejects}");
        assert_eq!(fhir.count("Observation"), 100, "{note}");
        for record in ["V1", "V2"] {
            for k in [0, 49] {
                let value = format!("{record}-{k}");
                let stored = fhir.find("Observation", "http://fhirlift.test/fifty", &value);
                assert_eq!(stored.len(), 1, "{value}");
                assert_eq!(stored[0]["valueString"], note, "{value}");
            }
        }
    }
}

#[test]
fn two_projects_on_one_url_from_one_migration_and_one_ledger_each_get_everything() {
    let a = project("two-a", "fast");
    let b = project("two-b", "fast");
    let dir = scratch("real-medplum-two-projects");
    let counts = datagen::write_example(&dir, 60, 31).unwrap();
    let config = dir.join("migration.yaml");
    let data = dir.join("data");
    // the same migration file and the same ledger (dir/fhirlift.state)
    let (into_a, source) = first_load(&a, &config, &dir, &data, &[]);
    source.assert_generated(counts);
    // B is not "unchanged" because A holds it all
    let (into_b, _) = first_load(&b, &config, &dir, &data, &[]);
    assert_server_holds(&into_a, &source, "project A after B");
    // and the ledger still knows what A holds
    assert_rerun_writes_nothing(&into_a, &a, &config, &dir, &[]);
    assert_rerun_writes_nothing(&into_b, &b, &config, &dir, &[]);
}

#[test]
fn a_project_emptied_behind_the_ledger_is_filled_again_by_the_next_run() {
    let loaded = load_generated("emptied", "fast", 40, 41, &[]);
    let (fhir, source) = (&loaded.fhir, &loaded.source);
    // everything fhirlift wrote is deleted; the ledger still lists it
    let mut deleted = 0;
    for resource_type in TYPES.iter().rev() {
        deleted += fhir.delete_all(resource_type);
        assert_eq!(fhir.count(resource_type), 0, "{resource_type}");
    }
    assert_eq!(deleted, source.resources());
    // the same ledger, no --full: fhirlift finds the server lost it all
    let again = run(&loaded.project, &loaded.config, &loaded.dir, &[]);
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    let r = report(&loaded.dir);
    assert_eq!(total(&r, "rejected"), 0, "{}", again.stdout);
    assert_eq!(
        total(&r, "created"),
        source.resources(),
        "every resource sent again\n{}",
        again.stdout
    );
    let what = format!("after the project was emptied\n{}", again.stdout);
    assert_server_holds(fhir, source, &what);
    loaded.assert_rerun_writes_nothing(&[]);
}

#[test]
fn async_batches_count_every_resource_created_without_a_retry() {
    let loaded = load_generated("async", "fast", 200, 51, &["--async"]);
    let r = report(&loaded.dir);
    assert_eq!(total(&r, "created"), loaded.source.resources());
    for stream in r["streams"].as_array().unwrap() {
        assert_eq!(stream["retried"], 0, "{}: no retry", stream["stream"]);
    }
}

#[test]
fn an_async_batch_over_one_megabyte_is_written_whole() {
    let project = project("async-large", "fast");
    let dir = scratch("real-medplum-async-large");
    // twelve 200 kB notes: 2.4 MB, over the 1 MB of a synchronous body
    let note = "x".repeat(200_000);
    let rows: Vec<(String, &str)> = (1..=12).map(|i| (format!("N{i}"), note.as_str())).collect();
    let rows: Vec<(&str, &str)> = rows.iter().map(|(id, n)| (id.as_str(), *n)).collect();
    observations_per_record(&dir, &[("notes", 1)], false, &rows);
    let outcome = run(&project, &dir.join("migration.yaml"), &dir, &["--async"]);
    assert_eq!(outcome.code, 0, "{}\n{}", outcome.stdout, outcome.stderr);
    let r = report(&dir);
    let stream = &r["streams"][0];
    assert_eq!(stream["requests"], 1, "one async batch\n{}", outcome.stdout);
    assert!(
        stream["bytes"].as_u64().unwrap() > 1_000_000,
        "a body over 1 MB: {}",
        stream["bytes"]
    );
    assert_eq!(total(&r, "created"), 12, "{}", outcome.stdout);
    let fhir = project.fhir();
    assert_eq!(fhir.count("Observation"), 12);
    let stored = fhir.find("Observation", "http://fhirlift.test/notes", "N7-0");
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0]["valueString"].as_str().map(str::len),
        Some(200_000)
    );
}
