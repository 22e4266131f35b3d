//! Re-runs converge: a re-run of an unchanged source writes nothing and
//! leaves the server as one run in source order would; a re-run after an
//! append writes only what changes the final state. Regressions from
//! archives that said the same thing about one patient more than once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fhirlift_tests::{Outcome, fhirlift, scratch};
use serde_json::Value;

use crate::support::{corpus, total};

/// `fhirlift migrate` into the embedded sandbox saved in `dir/store`, with
/// the ledger, report and rejects in `dir`.
fn migrate_into_store(config: &Path, dir: &Path) -> Outcome {
    migrate_into_store_with(config, dir, &[])
}

/// [`migrate_into_store`] with more arguments.
pub(crate) fn migrate_into_store_with(config: &Path, dir: &Path, extra: &[&str]) -> Outcome {
    let mut args: Vec<std::ffi::OsString> = vec![
        "migrate".into(),
        "-c".into(),
        config.as_os_str().to_owned(),
        "--sandbox".into(),
        dir.join("store").into_os_string(),
        "--state".into(),
        dir.join("fhirlift.state").into_os_string(),
        "--report".into(),
        dir.join("report.json").into_os_string(),
        "--rejects".into(),
        dir.join("rejects.ndjson").into_os_string(),
    ];
    args.extend(extra.iter().map(Into::into));
    fhirlift(args)
}

fn report(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
}

/// Writes the last run made (created + updated, every stream and type).
fn writes(dir: &Path) -> u64 {
    let r = report(dir);
    total(&r, "created") + total(&r, "updated")
}

/// Every stored file of the sandbox store, by name, as bytes.
fn store_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir.join("store"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// The stored resources of a type, by id, as JSON.
pub(crate) fn stored(dir: &Path, resource_type: &str) -> BTreeMap<String, Value> {
    let Ok(text) = std::fs::read_to_string(dir.join(format!("store/{resource_type}.ndjson")))
    else {
        return BTreeMap::new();
    };
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|r| (r["id"].as_str().unwrap().to_owned(), r))
        .collect()
}

fn a08(control_id: &str, family: &str) -> String {
    format!(
        "MSH|^~\\&|EPIC|NORTHCLINIC|LAB|NORTHCLINIC|20240301081500-0500||ADT^A08^ADT_A01|{control_id}|P|2.5.1\r\
         PID|1||MRN3001^^^NORTHCLINIC^MR||{family}^Ana||19900101|F\r\
         PV1|1|O|||||||||||||||||V3001^^^NORTHCLINIC^VN\r"
    )
}

pub(crate) fn hl7_migration(dir: &Path, from: &str) -> PathBuf {
    let config = dir.join("migration.yaml");
    std::fs::write(
        &config,
        format!(
            "source:\n  connector: hl7v2\nstreams:\n  adt:\n    from: {from}\n    map:\n      builtin: hl7v2\n      default_authority: urn:example:corpus\n"
        ),
    )
    .unwrap();
    config
}

fn family(dir: &Path) -> String {
    let patients = stored(dir, "Patient");
    assert_eq!(patients.len(), 1, "{patients:?}");
    let patient = patients.values().next().unwrap();
    patient["name"][0]["family"].as_str().unwrap().to_owned()
}

/// Regression: two A08 for one patient, OLD then NEW. The second run sent
/// the first message again as "changed" (its content differs from what the
/// ledger held, the second's) and skipped the second as "unchanged": the
/// server went back to OLD, the third run to NEW.
#[test]
fn two_a08_for_one_patient_keep_the_later_name_on_every_rerun() {
    let dir = scratch("rerun-two-a08");
    std::fs::write(
        dir.join("updates.hl7"),
        a08("A1", "Old") + &a08("A2", "New"),
    )
    .unwrap();
    let config = hl7_migration(&dir, "updates.hl7");
    for run in 1..=3 {
        let out = migrate_into_store(&config, &dir);
        assert_eq!(out.code, 0, "run {run}: {}{}", out.stdout, out.stderr);
        assert_eq!(family(&dir), "New", "after run {run}");
        if run > 1 {
            assert_eq!(writes(&dir), 0, "run {run}: {}", out.stdout);
        }
    }
    // a third message appended: it alone is written, and wins
    let mut archive = std::fs::read_to_string(dir.join("updates.hl7")).unwrap();
    archive.push_str(&a08("A3", "Newer"));
    std::fs::write(dir.join("updates.hl7"), archive).unwrap();
    let out = migrate_into_store(&config, &dir);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(family(&dir), "Newer");
    let r = report(&dir);
    assert_eq!(total(&r, "created"), 0, "{}", out.stdout);
    // the new message alone: its Patient and its Encounter
    assert_eq!(total(&r, "updated"), 2, "{}", out.stdout);
    assert_eq!(
        report(&dir)["streams"][0]["unchanged_records"],
        2,
        "{}",
        out.stdout
    );
}

/// An earlier message sent again because another of its resources changed
/// overwrites the patient with older content: the later message that wrote
/// the patient last is sent again in the same run, so the server still
/// ends with the later name.
#[test]
fn an_earlier_message_changed_elsewhere_does_not_leave_its_older_patient_behind() {
    let dir = scratch("rerun-earlier-changed");
    let write = |first_visit: &str| {
        let first = a08("A1", "Old").replace("V3001^", &format!("{first_visit}^"));
        std::fs::write(dir.join("updates.hl7"), first + &a08("A2", "New")).unwrap();
    };
    write("V3001");
    let config = hl7_migration(&dir, "updates.hl7");
    let out = migrate_into_store(&config, &dir);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(family(&dir), "New");
    // the first message now names another visit: its Encounter is new, and
    // its Patient (older than the ledger's) goes with it in one request
    write("V3000");
    let out = migrate_into_store(&config, &dir);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(family(&dir), "New", "{}", out.stdout);
    assert_eq!(stored(&dir, "Encounter").len(), 2);
    let out = migrate_into_store(&config, &dir);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(writes(&dir), 0, "{}", out.stdout);
    assert_eq!(family(&dir), "New");
}

/// Copies every `*.hl7` below `from` into `to`, keeping the relative paths.
fn copy_archives(from: &Path, to: &Path) -> usize {
    let mut copied = 0;
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copied += copy_archives(&path, &target);
        } else if path.extension().is_some_and(|e| e == "hl7") {
            std::fs::copy(&path, &target).unwrap();
            copied += 1;
        }
    }
    copied
}

/// The whole shared HL7v2 corpus, replayed twice into one sandbox store:
/// the second run writes nothing and the store is byte-identical; one
/// message appended changes only its own resources.
#[test]
fn the_corpus_replayed_writes_nothing_and_an_appended_message_changes_only_its_resources() {
    let corpus = corpus().expect(
        "the shared corpus (../shared/corpus beside the workspace, or FHIRLIFT_CORPUS) is needed",
    );
    let dir = scratch("rerun-corpus");
    let archive = dir.join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let files = copy_archives(&corpus.join("hl7v2"), &archive);
    assert!(files > 300, "{files} archive files");
    let config = hl7_migration(&dir, "archive/**/*.hl7");

    let first = migrate_into_store(&config, &dir);
    assert!(
        first.code == 0 || first.code == 2,
        "{}{}",
        first.stdout,
        first.stderr
    );
    let first_writes = writes(&dir);
    let before = store_files(&dir);
    assert!(
        first_writes > 1000,
        "{first_writes} writes: {}",
        first.stdout
    );

    let second = migrate_into_store(&config, &dir);
    assert_eq!(second.code, first.code, "{}", second.stdout);
    assert_eq!(writes(&dir), 0, "the replay wrote: {}", second.stdout);
    let after = store_files(&dir);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &before {
        assert!(after[name] == *bytes, "{name} changed on a replay");
    }

    // one new message about a new patient, appended to the last file
    let appended = "MSH|^~\\&|EPIC|NORTHCLINIC|LAB|NORTHCLINIC|20241201081500-0500||ADT^A04^ADT_A01|RERUN-APPENDED-1|P|2.5.1\r\
         PID|1||RERUN-MRN-1^^^NORTHCLINIC^MR||Appended^Ana||19900101|F\r\
         PV1|1|O|||||||||||||||||RERUN-V-1^^^NORTHCLINIC^VN\r";
    let mut last = walk(&archive);
    last.sort();
    let last = last.pop().unwrap();
    let mut text = std::fs::read(&last).unwrap();
    if !text.ends_with(b"\r") && !text.ends_with(b"\n") {
        text.push(b'\r');
    }
    text.extend_from_slice(appended.as_bytes());
    std::fs::write(&last, text).unwrap();
    let third = migrate_into_store(&config, &dir);
    assert_eq!(third.code, first.code, "{}", third.stdout);
    let r = report(&dir);
    assert_eq!(total(&r, "updated"), 0, "{}", third.stdout);
    let created = total(&r, "created");
    assert!(
        (1..=3).contains(&created),
        "{created} created: {}",
        third.stdout
    );
    let after = store_files(&dir);
    let changed: Vec<&String> = after
        .iter()
        .filter(|(name, bytes)| before.get(*name) != Some(*bytes))
        .map(|(name, _)| name)
        .collect();
    for name in &changed {
        let resource_type = name.trim_end_matches(".ndjson");
        let old: BTreeMap<String, Value> = before
            .get(*name)
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|r| (r["id"].as_str().unwrap().to_owned(), r))
            .collect();
        let new = stored(&dir, resource_type);
        let added: Vec<_> = new.keys().filter(|id| !old.contains_key(*id)).collect();
        assert_eq!(
            new.len(),
            old.len() + added.len(),
            "{name}: nothing removed"
        );
        for (id, resource) in &old {
            assert_eq!(&new[id], resource, "{name} {id} changed");
        }
    }
    eprintln!(
        "corpus re-run: {files} files, first run {first_writes} writes, replay 0, append {created} created"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Regression: one patient named by two messages with different first
/// identifiers (ReportStream's ORM lists `Patidlist~PID123~test`, its ORU
/// `test~PID123`). The ORU's conditional write lands on the ORM's
/// resource and leaves `Patidlist` off it, so the ledger's identity is
/// no longer on the server although its resource is. The next run's
/// probe took that for a server that lost data and sent the stream in
/// full, flipping the resource back and forth; the resource still being
/// there by id, it is now said and not re-sent.
#[test]
fn an_identity_rewritten_by_another_record_of_the_run_is_not_taken_for_a_loss() {
    let dir = scratch("rerun-two-identities");
    std::fs::create_dir_all(dir.join("archive")).unwrap();
    std::fs::write(
        dir.join("archive/both.hl7"),
        "MSH|^~\\&|LIS|LAB|EHR|FAC|20240101120000||ADT^A04^ADT_A01|M1|P|2.5.1\r\
         PID|1||Patidlist^^^STAR^PI~test^^^STAR^PI||Doe^Jane||19800101|F\r\
         MSH|^~\\&|LIS|LAB|EHR|FAC|20240101130000||ADT^A08^ADT_A01|M2|P|2.5.1\r\
         PID|1||test^^^STAR^PI||Doe^Jane||19800101|F\r",
    )
    .unwrap();
    let config = hl7_migration(&dir, "archive/*.hl7");
    let first = migrate_into_store(&config, &dir);
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    // one resource, carrying the later message's identifier only
    let patients = stored(&dir, "Patient");
    assert_eq!(patients.len(), 1, "{patients:?}");
    let again = migrate_into_store(&config, &dir);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert!(
        !again.stdout.contains("sending stream adt in full"),
        "{}",
        again.stdout
    );
    assert_eq!(writes(&dir), 0, "{}", again.stdout);
}
