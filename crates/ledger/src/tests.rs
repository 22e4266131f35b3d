//! The ledger's tests: round trips, kill -9, locks, upgrades, permissions.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use serde_json::json;

use super::*;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, params};

use crate::schema::SCHEMA;

/// A unique file under the temp dir, removed (with its WAL) on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> TempFile {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        TempFile(std::env::temp_dir().join(format!(
            "fhirlift-ledger-{name}-{}-{nanos}-{}.db",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

fn ack(id: &str, version: &str, json: &str) -> Acknowledged {
    Acknowledged {
        server_id: Some(id.to_owned()),
        version: Some(version.to_owned()),
        hash: content_hash(json),
        writer: Some(Writer {
            stream: "patients".to_owned(),
            ordinal: 41,
        }),
    }
}

const SYS: &str = "http://clinic.example/mrn";

#[test]
fn acknowledgements_round_trip() {
    let file = TempFile::new("round-trip");
    let mut ledger = Ledger::open(&file.0, "http://fhir.example/r4").unwrap();
    assert_eq!(ledger.acknowledged("Patient", SYS, "P1").unwrap(), None);

    let a1 = ack("p-1", "1", r#"{"resourceType":"Patient"}"#);
    ledger.acknowledge("Patient", SYS, "P1", a1.clone());
    // queued acknowledgements are seen by the delta check at once
    assert_eq!(
        ledger.acknowledged("Patient", SYS, "P1").unwrap(),
        Some(a1.clone())
    );
    ledger.commit().unwrap();
    assert_eq!(
        ledger.acknowledged("Patient", SYS, "P1").unwrap(),
        Some(a1.clone())
    );

    // an upsert replaces; no id nor version is kept as None; a full-width hash survives
    let a2 = Acknowledged {
        server_id: None,
        version: None,
        hash: u128::MAX - 7,
        writer: None,
    };
    ledger.acknowledge("Patient", SYS, "P1", a2.clone());
    ledger.acknowledge("Patient", SYS, "P2", a1.clone());
    ledger.acknowledge("Observation", SYS, "P1", a1.clone());
    ledger.commit().unwrap();
    assert_eq!(
        ledger.acknowledged("Patient", SYS, "P1").unwrap(),
        Some(a2.clone())
    );
    assert_eq!(ledger.acknowledged("Patient", "other", "P1").unwrap(), None);

    let ids = ledger.identities("Patient").unwrap();
    assert_eq!(
        ids,
        vec![
            (SYS.to_owned(), "P1".to_owned(), a2.clone()),
            (SYS.to_owned(), "P2".to_owned(), a1.clone()),
        ]
    );
    assert_eq!(ledger.identities("Observation").unwrap().len(), 1);
    drop(ledger);

    let ledger = Ledger::open(&file.0, "http://fhir.example/r4").unwrap();
    assert_eq!(ledger.acknowledged("Patient", SYS, "P1").unwrap(), Some(a2));
    assert_eq!(ledger.acknowledged("Patient", SYS, "P2").unwrap(), Some(a1));
}

#[test]
fn content_hash_is_deterministic() {
    assert_eq!(content_hash(r#"{"a":1}"#), content_hash(r#"{"a":1}"#));
    assert_ne!(content_hash(r#"{"a":1}"#), content_hash(r#"{"a":2}"#));
}

#[test]
fn uncommitted_queue_is_lost_on_drop_committed_data_survives() {
    let file = TempFile::new("drop");
    let mut ledger = Ledger::open(&file.0, "dry-run").unwrap();
    ledger.acknowledge("Patient", SYS, "P1", ack("1", "1", "a"));
    ledger.record_done("patients", "P1");
    ledger.set_mark(
        "patients",
        &json!({"kind": "file", "file": "p.csv", "line": 2}),
        1,
    );
    ledger.commit().unwrap();

    ledger.acknowledge("Patient", SYS, "P2", ack("2", "1", "b"));
    ledger.record_done("patients", "P2");
    ledger.set_mark(
        "patients",
        &json!({"kind": "file", "file": "p.csv", "line": 3}),
        2,
    );
    assert!(ledger.queued() > 0);
    drop(ledger); // no commit: as if killed

    let ledger = Ledger::open(&file.0, "dry-run").unwrap();
    assert!(ledger.acknowledged("Patient", SYS, "P1").unwrap().is_some());
    assert_eq!(ledger.acknowledged("Patient", SYS, "P2").unwrap(), None);
    let mark = ledger.mark("patients").unwrap().unwrap();
    assert_eq!(mark.after["line"], 2);
    assert_eq!(mark.records, 1);
    assert_eq!(ledger.status().unwrap()[0].done, 1);
}

/// The child half of `kill_9_keeps_committed_data`: commits, queues more,
/// says so, and waits to be killed.
#[test]
#[ignore = "run by kill_9_keeps_committed_data in a child process"]
fn kill_9_child() {
    let Some(path) = std::env::var_os("FHIRLIFT_LEDGER_KILL_CHILD") else {
        return;
    };
    let mut ledger = Ledger::open(Path::new(&path), "http://fhir.example/r4").unwrap();
    for i in 0..1_000 {
        ledger.acknowledge(
            "Patient",
            SYS,
            &format!("P{i}"),
            ack(&i.to_string(), "1", "c"),
        );
        ledger.record_done("patients", &format!("P{i}"));
    }
    ledger.set_mark(
        "patients",
        &json!({"kind": "table", "table": "p", "key": "999"}),
        1_000,
    );
    ledger.commit().unwrap();
    ledger.acknowledge("Patient", SYS, "Q", ack("q", "1", "c"));
    ledger.set_mark(
        "patients",
        &json!({"kind": "table", "table": "p", "key": "Q"}),
        1_001,
    );
    println!("LEDGER-CHILD-READY");
    std::thread::sleep(Duration::from_secs(60));
    std::process::exit(1);
}

#[test]
#[cfg(unix)]
fn kill_9_keeps_committed_data() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let file = TempFile::new("kill9");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "tests::kill_9_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FHIRLIFT_LEDGER_KILL_CHILD", &file.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("LEDGER-CHILD-READY"));
    assert!(ready, "the child did not get ready");
    // while the child lives, the file is held
    let held = Ledger::open(&file.0, "http://fhir.example/r4").unwrap_err();
    assert!(
        held.to_string().contains("another fhirlift run holds it"),
        "{held}"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let ledger = Ledger::open(&file.0, "http://fhir.example/r4").unwrap();
    assert_eq!(ledger.identities("Patient").unwrap().len(), 1_000);
    assert_eq!(ledger.acknowledged("Patient", SYS, "Q").unwrap(), None);
    let mark = ledger.mark("patients").unwrap().unwrap();
    assert_eq!(mark.after["key"], "999");
    assert_eq!(mark.records, 1_000);
}

#[test]
fn marks_are_set_cleared_and_finished() {
    let file = TempFile::new("marks");
    let mut ledger = Ledger::open(&file.0, "dry-run").unwrap();
    assert!(ledger.mark("patients").unwrap().is_none());

    let p = json!({"kind": "message", "file": "a.hl7", "offset": 120, "control_id": "M1"});
    ledger.set_mark("patients", &p, 10);
    // a queued mark is not on disk yet
    assert!(ledger.mark("patients").unwrap().is_none());
    ledger.commit().unwrap();
    let mark = ledger.mark("patients").unwrap().unwrap();
    assert_eq!(mark.after, p);
    assert_eq!(mark.records, 10);
    assert!(ledger.mark("visits").unwrap().is_none());

    // the last queued change of a stream wins
    ledger.set_mark(
        "patients",
        &json!({"kind": "file", "file": "x", "line": 9}),
        11,
    );
    ledger.stream_finished("patients");
    ledger.commit().unwrap();
    assert!(ledger.mark("patients").unwrap().is_none());

    ledger.set_mark("patients", &p, 3);
    ledger.set_mark("visits", &p, 4);
    ledger.commit().unwrap();
    assert!(ledger.mark("visits").unwrap().is_some());
    ledger.set_mark("visits", &p, 5); // queued, then forgotten too
    ledger.clear_marks().unwrap();
    ledger.commit().unwrap();
    assert!(ledger.mark("patients").unwrap().is_none());
    assert!(ledger.mark("visits").unwrap().is_none());
    assert!(ledger.status().unwrap().iter().all(|s| s.mark.is_none()));
}

#[test]
fn done_clears_reject_and_status_counts() {
    let file = TempFile::new("status");
    let mut ledger = Ledger::open(&file.0, "dry-run").unwrap();
    ledger.run_started().unwrap();
    let prov = |line: u64| json!({"kind": "file", "file": "p.csv", "line": line});
    for key in ["a", "b", "c"] {
        ledger.record_done("patients", key);
    }
    ledger.record_rejected("patients", "d", &prov(5), "HTTP 422: bad gender");
    ledger.record_rejected("patients", "e", &prov(6), "HTTP 400");
    ledger.record_rejected("visits", "v1", &prov(2), "no patient");
    ledger.set_pending("visits", 7);
    ledger.commit().unwrap();

    let rejected = ledger.rejected("patients").unwrap();
    assert_eq!(
        rejected.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["d", "e"]
    );
    assert_eq!(rejected[0].provenance, prov(5));
    assert_eq!(rejected[0].reason, "HTTP 422: bad gender");
    assert_eq!(rejected[0].stream, "patients");

    // d succeeds on a retry; a done again; a rejected after being done; e rejected again
    ledger.record_done("patients", "d");
    ledger.record_done("patients", "a");
    ledger.record_rejected("patients", "b", &prov(3), "HTTP 409");
    ledger.record_rejected("patients", "e", &prov(6), "HTTP 400 again");
    ledger.commit().unwrap();
    let keys: Vec<_> = ledger.rejected("patients").unwrap();
    assert_eq!(
        keys.iter()
            .map(|r| (r.key.as_str(), r.reason.as_str()))
            .collect::<Vec<_>>(),
        [("b", "HTTP 409"), ("e", "HTTP 400 again")]
    );

    let status = ledger.status().unwrap();
    assert_eq!(status.len(), 2);
    let p = &status[0];
    assert_eq!(p.stream, "patients");
    assert_eq!((p.done, p.rejected, p.pending), (4, 2, 0));
    let v = &status[1];
    assert_eq!(
        (v.stream.as_str(), v.done, v.rejected, v.pending),
        ("visits", 0, 1, 7)
    );
    let last_run = p.last_run.clone().unwrap();
    assert_eq!(last_run.len(), 20, "{last_run}");
    assert!(last_run.ends_with('Z') && last_run.as_bytes()[10] == b'T');
    assert_eq!(ledger.last_run().unwrap(), Some(last_run));

    // b done again: counted once ever
    ledger.record_done("patients", "b");
    ledger.set_pending("visits", 0);
    ledger.commit().unwrap();
    let status = ledger.status().unwrap();
    assert_eq!((status[0].done, status[0].rejected), (4, 1));
    assert_eq!(status[1].pending, 0);
}

#[test]
fn second_open_fails_fast() {
    let file = TempFile::new("lock");
    let _held = Ledger::open(&file.0, "http://fhir.example/r4").unwrap();
    let start = Instant::now();
    let err = Ledger::open(&file.0, "http://fhir.example/r4").unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let message = err.to_string();
    assert!(matches!(err, LedgerError::Open { .. }), "{message}");
    assert!(message.contains(&file.0.display().to_string()), "{message}");
    assert!(
        message.contains("another fhirlift run holds it"),
        "{message}"
    );
    // even for another target of the same file
    assert!(Ledger::open(&file.0, "dry-run").is_err());
}

#[test]
fn targets_do_not_see_each_other() {
    let file = TempFile::new("targets");
    let a = "http://a.example/fhir";
    let b = "sandbox:/tmp/x";
    let mut ledger = Ledger::open(&file.0, a).unwrap();
    ledger.acknowledge("Patient", SYS, "P1", ack("a1", "1", "x"));
    ledger.record_rejected("patients", "k", &json!({"kind": "file"}), "no");
    ledger.set_mark("patients", &json!({"kind": "file"}), 1);
    ledger.commit().unwrap();
    drop(ledger);

    let mut ledger = Ledger::open(&file.0, b).unwrap();
    assert_eq!(ledger.acknowledged("Patient", SYS, "P1").unwrap(), None);
    assert!(ledger.identities("Patient").unwrap().is_empty());
    assert!(ledger.rejected("patients").unwrap().is_empty());
    assert!(ledger.mark("patients").unwrap().is_none());
    assert!(ledger.status().unwrap().is_empty());
    ledger.acknowledge("Patient", SYS, "P1", ack("b1", "3", "y"));
    ledger.record_done("patients", "k");
    ledger.commit().unwrap();
    ledger.clear_marks().unwrap();
    assert_eq!(ledger.targets().unwrap(), [a, b]);
    drop(ledger);

    let ledger = Ledger::open(&file.0, a).unwrap();
    let ack_a = ledger.acknowledged("Patient", SYS, "P1").unwrap().unwrap();
    assert_eq!(ack_a.server_id.as_deref(), Some("a1"));
    assert_eq!(ledger.rejected("patients").unwrap().len(), 1);
    assert!(ledger.mark("patients").unwrap().is_some());
    assert_eq!(ledger.target(), a);
}

#[test]
fn newer_schema_is_refused() {
    let file = TempFile::new("schema");
    drop(Ledger::open(&file.0, "dry-run").unwrap());
    let conn = Connection::open(&file.0).unwrap();
    conn.execute("UPDATE meta SET version = 3", []).unwrap();
    drop(conn);
    let err = Ledger::open(&file.0, "dry-run").unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, LedgerError::Open { .. }), "{message}");
    assert!(message.contains("newer fhirlift"), "{message}");
    assert!(message.contains("schema version 3"), "{message}");
}

#[test]
fn a_version_1_file_is_upgraded_and_keeps_its_acknowledgements() {
    let file = TempFile::new("schema-1");
    let conn = Connection::open(&file.0).unwrap();
    let v1 = SCHEMA.replace("    writer_stream TEXT,\n    writer_ordinal INTEGER,\n", "");
    assert_ne!(v1, SCHEMA);
    conn.execute_batch(&v1).unwrap();
    conn.execute_batch(
        "INSERT INTO meta(version) VALUES (1);
         INSERT INTO targets(id, target) VALUES (1, 'dry-run');",
    )
    .unwrap();
    conn.execute(
        "INSERT INTO resources VALUES (1, 'Patient', ?1, 'P1', 'p-1', '1', ?2)",
        params![SYS, 7u128.to_be_bytes()],
    )
    .unwrap();
    drop(conn);
    let mut ledger = Ledger::open(&file.0, "dry-run").unwrap();
    let old = ledger.acknowledged("Patient", SYS, "P1").unwrap().unwrap();
    assert_eq!((old.hash, old.writer), (7, None));
    let new = ack("p-2", "1", "{}");
    ledger.acknowledge("Patient", SYS, "P2", new.clone());
    ledger.commit().unwrap();
    drop(ledger);
    let ledger = Ledger::open(&file.0, "dry-run").unwrap();
    assert_eq!(
        ledger.acknowledged("Patient", SYS, "P2").unwrap(),
        Some(new)
    );
}

#[test]
fn foreign_files_are_refused() {
    let file = TempFile::new("foreign");
    let conn = Connection::open(&file.0).unwrap();
    conn.execute_batch("CREATE TABLE t(x)").unwrap();
    drop(conn);
    let err = Ledger::open(&file.0, "dry-run").unwrap_err().to_string();
    assert!(err.contains("not a fhirlift ledger"), "{err}");

    let text = TempFile::new("text");
    std::fs::write(&text.0, "name,id\nAda,1\n".repeat(100)).unwrap();
    let err = Ledger::open(&text.0, "dry-run").unwrap_err().to_string();
    assert!(err.contains("not a fhirlift ledger"), "{err}");
}

#[test]
#[cfg(unix)]
fn new_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let file = TempFile::new("mode");
    drop(Ledger::open(&file.0, "dry-run").unwrap());
    let mode = std::fs::metadata(&file.0).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
}

#[test]
fn rfc3339_formats_utc() {
    let at = |s: u64| rfc3339_utc(UNIX_EPOCH + Duration::from_secs(s));
    assert_eq!(at(0), "1970-01-01T00:00:00Z");
    assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
    assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
}

/// `cargo test -p fhirlift-core --lib ledger::tests::bench -- --ignored --nocapture`
#[test]
#[ignore = "micro-benchmark"]
fn bench_ledger() {
    const N: u64 = 200_000;
    const BATCH: u64 = 500;
    let file = TempFile::new("bench");
    let mut ledger = Ledger::open(&file.0, "http://fhir.example/r4").unwrap();
    let value = |i: u64| format!("MRN-{:08}", i.wrapping_mul(2_654_435_761) % 100_000_000);
    let rate = |n: u64, t: Instant| n as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    for i in 0..N {
        let ack = Acknowledged {
            server_id: Some(format!("0190b7e4-{i:012}")),
            version: Some("1".to_owned()),
            hash: content_hash(&value(i)),
            writer: Some(Writer {
                stream: "patients".to_owned(),
                ordinal: i,
            }),
        };
        ledger.acknowledge("Patient", SYS, &value(i), ack);
        if (i + 1) % BATCH == 0 {
            ledger.commit().unwrap();
        }
    }
    ledger.commit().unwrap();
    println!(
        "acknowledge+commit: {:.0} acks/s ({N} in batches of {BATCH})",
        rate(N, t)
    );

    let t = Instant::now();
    for i in 0..N {
        ledger.record_done("patients", &value(i));
        if (i + 1) % BATCH == 0 {
            ledger.set_mark(
                "patients",
                &json!({"kind": "file", "file": "p.csv", "line": i}),
                i,
            );
            ledger.commit().unwrap();
        }
    }
    ledger.commit().unwrap();
    println!("record_done+commit (new keys): {:.0} records/s", rate(N, t));

    let t = Instant::now();
    for i in 0..N {
        ledger.record_done("patients", &value(i));
        if (i + 1) % BATCH == 0 {
            ledger.commit().unwrap();
        }
    }
    ledger.commit().unwrap();
    println!(
        "record_done+commit (re-run, already done): {:.0} records/s",
        rate(N, t)
    );

    let t = Instant::now();
    let mut found = 0;
    for i in 0..N {
        // another order than the inserts'
        let j = (i * 7_919) % N;
        found += ledger
            .acknowledged("Patient", SYS, &value(j))
            .unwrap()
            .is_some() as u64;
    }
    println!("acknowledged lookups (hits): {:.0} lookups/s", rate(N, t));
    assert_eq!(found, N);

    let t = Instant::now();
    for i in 0..N {
        assert!(
            ledger
                .acknowledged("Patient", SYS, &format!("none-{i}"))
                .unwrap()
                .is_none()
        );
    }
    println!("acknowledged lookups (misses): {:.0} lookups/s", rate(N, t));
    assert_eq!(ledger.status().unwrap()[0].done, N);
    let size = std::fs::metadata(&file.0).unwrap().len();
    println!("file: {:.1} MiB", size as f64 / 1_048_576.0);
}
