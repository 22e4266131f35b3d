//! `fhirlift verify` against the sandbox over real HTTP: what the source
//! maps to now, compared with what the server holds, and never a write.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use fhirlift_sandbox::SandboxConfig;
use fhirlift_tests::{Outcome, TestServer, fhirlift, scratch, workspace};
use serde_json::{Value, json};

use crate::support::{id_of, migrate};

const SRC: &str = "http://your-source-system.com";

/// The guide example (migration and data) copied to `dir`, to edit.
fn guide_copy(dir: &Path) -> PathBuf {
    let example = workspace().join("examples/medplum-guide");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    for entry in std::fs::read_dir(example.join("data")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join("data").join(path.file_name().unwrap())).unwrap();
    }
    let config = dir.join("migration.yaml");
    std::fs::copy(example.join("migration.yaml"), &config).unwrap();
    config
}

/// `fhirlift verify --orphans --out OUT --report-html OUT.html`.
fn verify(config: &Path, url: &str, out: &Path) -> Outcome {
    fhirlift([
        "verify".into(),
        "-c".into(),
        config.as_os_str().to_owned(),
        "--server".into(),
        url.into(),
        "--orphans".into(),
        "--out".into(),
        out.as_os_str().to_owned(),
        "--report-html".into(),
        out.with_extension("html").into_os_string(),
    ])
}

/// Every stored resource of the guide's types, as JSON text: what a write
/// would change.
fn snapshot(server: &TestServer) -> BTreeSet<String> {
    server.sandbox.with_store(|store| {
        ["Patient", "Condition", "Encounter", "ClinicalImpression"]
            .iter()
            .flat_map(|t| store.resources(t))
            .map(Value::to_string)
            .collect()
    })
}

/// One request to the sandbox: its status and JSON answer.
fn send(method: reqwest::Method, url: String, body: &Value) -> (u16, Value) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .request(method, &url)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    })
}

#[test]
fn after_a_clean_migration_everything_is_equal_and_verify_writes_nothing() {
    let server = TestServer::start(SandboxConfig::default());
    let dir = scratch("verify-clean");
    let config = guide_copy(&dir);
    let run = migrate(&config, &server.url(), &dir, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let before = snapshot(&server);
    let entries = server
        .sandbox
        .stats()
        .entries
        .load(std::sync::atomic::Ordering::Relaxed);
    let out = dir.join("verify.ndjson");
    let check = verify(&config, &server.url(), &out);
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);
    for expected in [
        "patients             Patient                        2         0         0          0        0        0        0",
        "encounters           Encounter                      2         0",
        "9 identities verified",
        "the server holds what the source maps to",
    ] {
        assert!(
            check.stdout.contains(expected),
            "{expected}\n{}",
            check.stdout
        );
    }
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "");
    assert_eq!(snapshot(&server), before, "verify wrote to the server");
    assert_eq!(
        server
            .sandbox
            .stats()
            .entries
            .load(std::sync::atomic::Ordering::Relaxed),
        entries,
        "verify sent bundle entries"
    );
}

#[test]
fn a_deleted_an_edited_a_duplicated_and_an_orphaned_resource_are_named_with_their_records() {
    let server = TestServer::start(SandboxConfig::default());
    let dir = scratch("verify-drift");
    let config = guide_copy(&dir);
    let run = migrate(&config, &server.url(), &dir, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let base = server.url();
    // deleted: E001's note (nothing refers to it)
    let note = server.sandbox.with_store(|s| {
        id_of(
            s,
            "ClinicalImpression",
            &format!("{SRC}/encounterNoteId"),
            "E001",
        )
    });
    assert!(
        server
            .sandbox
            .with_store_mut(|s| s.remove("ClinicalImpression", &note))
    );
    // edited by another writer: P001's birth date
    let (patient_id, mut patient) = server.sandbox.with_store(|s| {
        let id = id_of(s, "Patient", &format!("{SRC}/patientId"), "P001");
        (id.clone(), s.get("Patient", &id).unwrap().resource.clone())
    });
    patient["birthDate"] = json!("1980-07-16");
    let (status, answer) = send(
        reqwest::Method::PUT,
        format!("{base}/Patient/{patient_id}"),
        &patient,
    );
    assert!(status < 300, "{status} {answer}");
    // duplicated: a second Condition with PC003's identifier
    let mut copy = server.sandbox.with_store(|s| {
        s.find("Condition", &format!("{SRC}/patientConditionId"), "PC003")[0].clone()
    });
    copy.as_object_mut().unwrap().remove("id");
    copy.as_object_mut().unwrap().remove("meta");
    let (status, answer) = send(reqwest::Method::POST, format!("{base}/Condition"), &copy);
    assert!(status < 300, "{status} {answer}");
    // removed at the source: PC002's row
    let conditions = dir.join("data/patient_conditions.csv");
    let text = std::fs::read_to_string(&conditions).unwrap();
    std::fs::write(
        &conditions,
        text.lines()
            .filter(|l| !l.starts_with("PC002,"))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    )
    .unwrap();

    let before = snapshot(&server);
    let out = dir.join("verify.ndjson");
    let check = verify(&config, &server.url(), &out);
    assert_eq!(check.code, 2, "{}\n{}", check.stdout, check.stderr);
    assert_eq!(snapshot(&server), before, "verify wrote to the server");
    let findings: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let shown: BTreeSet<String> = findings
        .iter()
        .map(|f| {
            format!(
                "{} {} {} {} {}",
                f["finding"].as_str().unwrap(),
                f["resource_type"].as_str().unwrap(),
                f["identifier"].as_str().unwrap(),
                f["record"].as_str().unwrap_or("-"),
                f["paths"]
            )
        })
        .collect();
    assert_eq!(
        shown,
        BTreeSet::from([
            format!("missing ClinicalImpression {SRC}/encounterNoteId|E001 encounters.csv:2 null"),
            format!("different Patient {SRC}/patientId|P001 patients.csv:2 [\"birthDate\"]"),
            format!(
                "duplicated Condition {SRC}/patientConditionId|PC003 patient_conditions.csv:3 null"
            ),
            format!("orphan Condition {SRC}/patientConditionId|PC002 - null"),
        ]),
        "{}",
        check.stdout
    );
    // the values that differ are in the file, not on the terminal
    let different = findings
        .iter()
        .find(|f| f["finding"] == "different")
        .unwrap();
    assert_eq!(
        different["values"]["birthDate"],
        json!({ "source": "1980-07-15", "server": "1980-07-16" })
    );
    assert!(!check.stdout.contains("1980-07-1"), "{}", check.stdout);
    // the HTML report: the same counts, and no value
    let html = std::fs::read_to_string(out.with_extension("html")).unwrap();
    assert!(html.contains("<section id=\"verify\">"));
    let patients = &html[html
        .find("data-stream=\"patients\" data-type=\"Patient\"")
        .expect("a Patient row")..];
    let patients = &patients[..patients.find("</tr>").unwrap()];
    assert!(
        patients.contains("<td class=\"equal\">1</td>"),
        "{patients}"
    );
    assert!(
        patients.contains("<td class=\"different bad\">1</td>"),
        "{patients}"
    );
    assert!(!html.contains("1980-07-1"));
    assert!(
        check
            .stdout
            .contains("the server does NOT hold exactly what the source maps to"),
        "{}",
        check.stdout
    );
}

/// A resource without an identifier (`write: create`) cannot be found
/// again: verify counts it as unverifiable, says so, and does not fail.
#[test]
fn resources_without_an_identifier_are_counted_as_unverifiable() {
    let server = TestServer::start(SandboxConfig::default());
    let dir = scratch("verify-unverifiable");
    let config = guide_copy(&dir);
    let text = std::fs::read_to_string(&config).unwrap();
    let extra = "      - resourceType: Basic\n        write: create\n        code:\n          text: imported\n\n  conditions:";
    std::fs::write(
        &config,
        text.replacen("\n  conditions:", &format!("\n{extra}"), 1),
    )
    .unwrap();
    let run = migrate(&config, &server.url(), &dir, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let check = verify(&config, &server.url(), &dir.join("verify.ndjson"));
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);
    assert!(
        check.stdout.contains(
            "2 resources are written with write: create: no identifier finds them, so they are not verified"
        ),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains("9 identities verified"),
        "{}",
        check.stdout
    );
}

/// Regression: in a message archive a later message about a patient
/// replaces the earlier one (`later-wins`). verify compared every message
/// with what the server holds and called the earlier ones `different`
/// (48 Patients of the shared corpus on the real Medplum); only the last
/// record writing an identity is what the server should hold.
#[test]
fn in_an_update_feed_only_the_last_record_of_an_identity_is_compared() {
    let server = TestServer::start(SandboxConfig::default());
    let dir = scratch("verify-later-wins");
    std::fs::create_dir_all(dir.join("archive")).unwrap();
    std::fs::write(
        dir.join("archive/feed.hl7"),
        "MSH|^~\\&|EHR|FAC|||20240101120000||ADT^A08^ADT_A01|M1|P|2.5.1\r\
         PID|1||MRN1^^^FAC^MR||Old^Name||19800101|F\r\
         MSH|^~\\&|EHR|FAC|||20240101130000||ADT^A08^ADT_A01|M2|P|2.5.1\r\
         PID|1||MRN1^^^FAC^MR||New^Name||19800101|F\r",
    )
    .unwrap();
    let config = dir.join("migration.yaml");
    std::fs::write(
        &config,
        "source:\n  connector: hl7v2\nstreams:\n  adt:\n    from: archive/*.hl7\n    map: hl7v2\n",
    )
    .unwrap();
    let run = migrate(&config, &server.url(), &dir, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let check = verify(&config, &server.url(), &dir.join("verify.ndjson"));
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);
    assert!(
        check.stdout.contains("1 identities verified"),
        "{}",
        check.stdout
    );
    // and a later edit on the server is still found
    let (id, mut patient) = server.sandbox.with_store(|s| {
        let p = s.resources("Patient")[0].clone();
        (p["id"].as_str().unwrap().to_owned(), p)
    });
    patient["gender"] = json!("male");
    let (status, _) = send(
        reqwest::Method::PUT,
        format!("{}/Patient/{id}", server.url()),
        &patient,
    );
    assert!(status < 300);
    let check = verify(&config, &server.url(), &dir.join("verify.ndjson"));
    assert_eq!(check.code, 2, "{}", check.stdout);
}
