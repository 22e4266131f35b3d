//! The ledger: crash-resume under kill -9, delta re-runs, rejects retried,
//! shards, status.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use fhirlift_ledger::Ledger;
use fhirlift_sandbox::{Faults, SandboxConfig, Store};
use fhirlift_tests::{TestServer, datagen, fhirlift, fhirlift_binary, scratch};
use serde_json::Value;

use crate::support::{migrate, report, total};

const SRC: &str = "http://your-source-system.com";
const TYPES: [&str; 4] = ["Patient", "Condition", "Encounter", "ClinicalImpression"];

/// `fhirlift migrate` as a child process, into `url`, with the ledger `state`.
fn child(config: &Path, url: &str, state: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(fhirlift_binary());
    c.args(["migrate", "-c"])
        .arg(config)
        .args([
            "--server",
            url,
            "--profile",
            "generic",
            "--max-attempts",
            "50",
        ])
        .arg("--state")
        .arg(state)
        .arg("--rejects")
        .arg(state.with_extension("rejects.ndjson"))
        .args(extra)
        .env("FHIRLIFT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// A small deterministic generator for kill times.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Rewrites every 100th patient's last name: 1% of the patients change.
fn change_one_percent(data: &Path, suffix: &str) -> Vec<String> {
    let path = data.join("patients.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut changed = Vec::new();
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        if i > 0 && i % 100 == 0 {
            let mut cells: Vec<String> = line.split(',').map(str::to_owned).collect();
            cells[2] = format!("{}{suffix}", cells[2]);
            changed.push(cells[0].clone());
            out.push_str(&cells.join(","));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    std::fs::write(&path, out).unwrap();
    changed
}

/// Every stored resource by (type, identifier value), with references
/// written as the identifier value they point at: comparable across servers.
fn contents(store: &Store) -> BTreeMap<(String, String), Value> {
    let mut by_id: HashMap<String, String> = HashMap::new();
    for t in TYPES {
        for r in store.resources(t) {
            let value = r["identifier"][0]["value"].as_str().unwrap().to_owned();
            by_id.insert(format!("{t}/{}", r["id"].as_str().unwrap()), value);
        }
    }
    fn normalise(v: &mut Value, ids: &HashMap<String, String>) {
        match v {
            Value::Object(map) => {
                map.remove("id");
                map.remove("meta");
                for (k, x) in map.iter_mut() {
                    if k == "reference"
                        && let Some(r) = x.as_str()
                        && let Some(target) = ids.get(r)
                    {
                        *x = Value::String(format!("-> {target}"));
                    } else {
                        normalise(x, ids);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|x| normalise(x, ids)),
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    for t in TYPES {
        for r in store.resources(t) {
            let value = r["identifier"][0]["value"].as_str().unwrap().to_owned();
            let mut r = r.clone();
            normalise(&mut r, &by_id);
            assert!(
                out.insert((t.to_owned(), value.clone()), r).is_none(),
                "{t} {value} is stored twice"
            );
        }
    }
    out
}

#[test]
fn killed_ten_times_a_migration_ends_with_every_identifier_once_and_the_ledger_agreeing() {
    let server = TestServer::start(SandboxConfig {
        faults: Faults {
            // faults on, few enough that backoff does not dominate the test
            rate_429: 0.005,
            rate_503: 0.005,
            seed: 7,
            ..Faults::default()
        },
        ..SandboxConfig::default()
    });
    let dir = scratch("ledger-crash");
    // about 50,000 records: a patient, ~2 conditions, ~2 encounters each
    let counts = datagen::write_example(&dir, 10_000, 99).unwrap();
    let records = counts.patients + counts.conditions + counts.encounters;
    assert!(records >= 45_000, "{records} records");
    let config = dir.join("migration.yaml");
    let mut seed = 0x5eed_1234_u64;
    let mut changed = Vec::new();
    let mut kills = 0;
    while kills < 10 {
        if kills == 5 {
            // the source moves on between runs: the latest content must win
            changed = change_one_percent(&dir.join("data"), "-v2");
        }
        let mut run = child(&config, &server.url(), &dir.join("fhirlift.state"), &[])
            .spawn()
            .unwrap();
        let wait = Duration::from_millis(300 + next(&mut seed) % 2500);
        std::thread::sleep(wait);
        if run.try_wait().unwrap().is_some() {
            // it finished before the kill: the next runs skip what it wrote
            continue;
        }
        run.kill().unwrap(); // SIGKILL: no flush, no goodbye
        run.wait().unwrap();
        kills += 1;
    }
    let last = child(&config, &server.url(), &dir.join("fhirlift.state"), &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        last.status.success(),
        "the last run ends clean: {}\n{}{}",
        last.status,
        String::from_utf8_lossy(&last.stdout),
        String::from_utf8_lossy(&last.stderr)
    );

    server.sandbox.with_store(|store| {
        // every identifier exactly once (contents() panics on a second one)
        let stored = contents(store);
        assert_eq!(store.count("Patient") as u64, counts.patients);
        assert_eq!(store.count("Condition") as u64, counts.conditions);
        assert_eq!(store.count("Encounter") as u64, counts.encounters);
        assert_eq!(store.count("ClinicalImpression") as u64, counts.encounters);
        // the latest content
        for id in &changed {
            let p = &stored[&("Patient".to_owned(), id.clone())];
            assert!(
                p["name"][0]["family"].as_str().unwrap().ends_with("-v2"),
                "{id}: {p}"
            );
        }
        // the ledger agrees with the server: the same ids for the same identifiers
        let ledger = Ledger::open(&dir.join("fhirlift.state"), &server.url()).unwrap();
        for t in TYPES {
            let known = ledger.identities(t).unwrap();
            assert_eq!(known.len(), store.count(t), "{t} in the ledger");
            for (system, value, ack) in known {
                let found = store.find(t, &system, &value);
                assert_eq!(found.len(), 1, "{t} {system}|{value}");
                if let Some(id) = &ack.server_id {
                    assert_eq!(found[0]["id"].as_str(), Some(id.as_str()), "{t} {value}");
                }
            }
        }
    });
    // and a run after the end sends nothing
    let entries = server.sandbox.stats().entries.load(Ordering::Relaxed);
    let again = child(&config, &server.url(), &dir.join("fhirlift.state"), &[])
        .status()
        .unwrap();
    assert!(again.success());
    assert_eq!(
        server.sandbox.stats().entries.load(Ordering::Relaxed),
        entries
    );
}

#[test]
fn a_re_run_after_one_percent_changed_writes_exactly_those() {
    let server = TestServer::start(SandboxConfig::default());
    let dir = scratch("ledger-delta");
    let counts = datagen::write_example(&dir, 2_000, 5).unwrap();
    let config = dir.join("migration.yaml");
    let args = ["--profile", "generic"];
    let first = migrate(&config, &server.url(), &dir, &args);
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    let all = counts.patients + counts.conditions + 2 * counts.encounters;
    assert_eq!(total(&report(&dir), "created"), all);

    let changed = change_one_percent(&dir.join("data"), "-new");
    assert_eq!(changed.len() as u64, counts.patients / 100);
    let entries = server.sandbox.stats().entries.load(Ordering::Relaxed);
    let second = migrate(&config, &server.url(), &dir, &args);
    assert_eq!(second.code, 0, "{}{}", second.stdout, second.stderr);
    let r = report(&dir);
    assert_eq!(total(&r, "created"), 0);
    assert_eq!(
        total(&r, "updated"),
        changed.len() as u64,
        "{}",
        second.stdout
    );
    assert_eq!(total(&r, "unchanged"), all - changed.len() as u64);
    // requests went only for the changed records
    let sent = server.sandbox.stats().entries.load(Ordering::Relaxed) - entries;
    assert_eq!(sent, changed.len() as u64, "entries sent on the re-run");
    server.sandbox.with_store(|store| {
        for id in &changed {
            let p = store.find("Patient", &format!("{SRC}/patientId"), id);
            assert_eq!(p.len(), 1);
            assert!(
                p[0]["name"][0]["family"]
                    .as_str()
                    .unwrap()
                    .ends_with("-new")
            );
        }
    });
    // --full sends everything again; the server keeps what did not change
    let full: Vec<&str> = args.iter().copied().chain(["--full"]).collect();
    let third = migrate(&config, &server.url(), &dir, &full);
    assert_eq!(third.code, 0);
    let r = report(&dir);
    assert_eq!(total(&r, "created"), 0);
    assert_eq!(total(&r, "updated") + total(&r, "unchanged"), all);
    let sent = server.sandbox.stats().entries.load(Ordering::Relaxed) - entries;
    assert!(sent > 100 * changed.len() as u64, "--full sent {sent}");
}

#[test]
fn two_shards_at_once_end_in_the_state_of_one_unsharded_run() {
    let dir = scratch("ledger-shards");
    datagen::write_example(&dir, 1_500, 11).unwrap();
    let config = dir.join("migration.yaml");

    let whole = TestServer::start(SandboxConfig::default());
    let one = scratch("ledger-shards-whole");
    let run = migrate(&config, &whole.url(), &one, &["--profile", "generic"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);

    // two processes, each phase on both shards before the next
    let sharded = TestServer::start(SandboxConfig::default());
    for phase in ["1", "2"] {
        let children: Vec<_> = ["0/2", "1/2"]
            .iter()
            .map(|shard| {
                let state = dir.join(format!("shard-{}.state", &shard[..1]));
                child(
                    &config,
                    &sharded.url(),
                    &state,
                    &["--shard", shard, "--phase", phase],
                )
                .spawn()
                .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success(), "phase {phase}");
        }
    }
    let want = whole.sandbox.with_store(contents);
    let got = sharded.sandbox.with_store(contents);
    assert_eq!(want.len(), got.len());
    assert!(
        want == got,
        "the sharded store differs from the unsharded one"
    );
    // each shard took about half
    let a = Ledger::open(&dir.join("shard-0.state"), &sharded.url()).unwrap();
    let patients = a.identities("Patient").unwrap().len();
    assert!(
        (500..1000).contains(&patients),
        "shard 0 wrote {patients} patients"
    );
}

/// `fhirlift status`: the patients stream's done and rejected counts.
fn patients_status(config: &Path, dir: &Path) -> (u64, u64) {
    let status = fhirlift([
        "status".into(),
        "-c".into(),
        config.as_os_str().to_owned(),
        "--state".into(),
        dir.join("fhirlift.state").into_os_string(),
    ]);
    let line = status
        .stdout
        .lines()
        .find(|l| l.starts_with("patients"))
        .unwrap_or_else(|| panic!("no patients line: {}", status.stdout));
    let cells: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(2)
        .map(|c| c.parse().unwrap())
        .collect();
    (cells[0], cells[1])
}

#[test]
fn retry_rejects_runs_only_the_rejected_records_and_clears_them() {
    let server = TestServer::start(SandboxConfig::default());
    let dir = scratch("ledger-retry");
    datagen::write_example(&dir, 300, 3).unwrap();
    let config = dir.join("migration.yaml");
    // three patients with a birth date the mapping cannot read
    let path = dir.join("data/patients.csv");
    let good = std::fs::read_to_string(&path).unwrap();
    let bad: String = good
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let mut cells: Vec<&str> = l.split(',').collect();
            if [10, 20, 30].contains(&i) {
                cells[3] = "not-a-date";
            }
            cells.join(",") + "\n"
        })
        .collect();
    std::fs::write(&path, bad).unwrap();
    let args = ["--profile", "generic"];
    let first = migrate(&config, &server.url(), &dir, &args);
    assert_eq!(first.code, 2, "{}", first.stdout);
    assert_eq!(patients_status(&config, &dir), (297, 3));

    std::fs::write(&path, good).unwrap();
    let mut retry_args = vec![
        "retry-rejects".into(),
        "-c".into(),
        config.clone().into_os_string(),
        "--server".into(),
        server.url().into(),
        "--state".into(),
        dir.join("fhirlift.state").into_os_string(),
        "--report".into(),
        dir.join("retry.json").into_os_string(),
    ];
    retry_args.extend(args.iter().map(Into::into));
    let retry = fhirlift(retry_args);
    assert_eq!(retry.code, 0, "{}{}", retry.stdout, retry.stderr);
    let r: Value = serde_json::from_slice(&std::fs::read(dir.join("retry.json")).unwrap()).unwrap();
    // the three patients, and their conditions and encounters the server
    // had refused for want of them: only what the ledger held as rejected
    assert_eq!(r["streams"][0]["records"], 3, "only the rejected records");
    let first_run: Value = report(&dir);
    let rejected_before: u64 = first_run["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rejected"].as_u64().unwrap())
        .sum();
    let retried: u64 = r["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["records"].as_u64().unwrap())
        .sum();
    assert_eq!(retried, rejected_before);
    assert_eq!(total(&r, "rejected"), 0);
    assert_eq!(patients_status(&config, &dir), (300, 0));
}

#[test]
fn ctrl_c_settles_what_is_in_flight_keeps_the_ledger_and_the_next_run_resumes() {
    let server = TestServer::start(SandboxConfig::default());
    let dir = scratch("ledger-ctrl-c");
    let counts = datagen::write_example(&dir, 6_000, 17).unwrap();
    let config = dir.join("migration.yaml");
    let state = dir.join("fhirlift.state");
    let mut run = child(&config, &server.url(), &state, &[])
        .env("FHIRLIFT_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // signal once phase 2 has begun (not after a fixed sleep, which a busy
    // machine can outlast before the handler is even installed); the log
    // keeps being drained so the child never blocks on a full pipe
    let (began, phase_two) = std::sync::mpsc::channel();
    let log = std::io::BufReader::new(run.stderr.take().unwrap());
    let drain = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut sent = false;
        for line in log.lines().map_while(Result::ok) {
            if !sent && line.contains("stream started") && line.contains("phase=2") {
                let _ = began.send(());
                sent = true;
            }
        }
    });
    phase_two
        .recv_timeout(Duration::from_secs(120))
        .expect("the run reached phase 2");
    let interrupted = Command::new("kill")
        .args(["-INT", &run.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let out = run.wait_with_output().unwrap();
    drain.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // a clean stop: the summary is printed and the exit says not everything ran
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("stopped (Ctrl-C)"), "{stdout}");
    // stopped before the end (wherever the signal landed, the encounters
    // of phase 2 cannot all be written yet)
    let encounters = server.sandbox.with_store(|s| s.count("Encounter"));
    assert!(
        encounters < counts.encounters as usize,
        "stopped before the end"
    );

    let rest = child(&config, &server.url(), &state, &[]).status().unwrap();
    assert!(rest.success());
    server.sandbox.with_store(|store| {
        contents(store); // every identifier once
        assert_eq!(store.count("Patient") as u64, counts.patients);
        assert_eq!(store.count("Encounter") as u64, counts.encounters);
    });
}

/// Regression: the check that the server still holds what the ledger says
/// made one search per type and stopped the whole run (exit 1) when one of
/// them was answered 503. It asks again after a passing failure now.
#[test]
fn a_trust_check_answered_503_is_asked_again_and_the_run_goes_on() {
    let server = TestServer::start(SandboxConfig {
        faults: Faults {
            rate_503: 0.4,
            seed: 11,
            ..Faults::default()
        },
        ..SandboxConfig::default()
    });
    let dir = scratch("ledger-probe-503");
    datagen::write_example(&dir, 50, 5).unwrap();
    let config = dir.join("migration.yaml");
    let state = dir.join("fhirlift.state");
    for run in 1..=3 {
        let out = child(&config, &server.url(), &state, &[])
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "run {run}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(server.sandbox.stats().faults.load(Ordering::Relaxed) > 0);
}

/// Regression: Ctrl-C waited for every request to be settled, and a request
/// waiting to be retried (a server answering 503) went on being retried for
/// minutes, then its records were rejected. The requests waiting are
/// dropped now (unsettled, so the next run sends them): the run ends within
/// seconds, rejecting nothing.
#[test]
fn ctrl_c_against_a_failing_server_ends_within_seconds_rejecting_nothing() {
    let server = TestServer::start(SandboxConfig {
        faults: Faults {
            rate_503: 1.0,
            ..Faults::default()
        },
        ..SandboxConfig::default()
    });
    let dir = scratch("ledger-ctrl-c-503");
    datagen::write_example(&dir, 2_000, 3).unwrap();
    let config = dir.join("migration.yaml");
    let state = dir.join("fhirlift.state");
    let mut run = child(&config, &server.url(), &state, &[])
        .env("FHIRLIFT_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (began, started) = std::sync::mpsc::channel();
    let log = std::io::BufReader::new(run.stderr.take().unwrap());
    let drain = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut sent = false;
        for line in log.lines().map_while(Result::ok) {
            if !sent && line.contains("stream started") {
                let _ = began.send(());
                sent = true;
            }
        }
    });
    started
        .recv_timeout(Duration::from_secs(60))
        .expect("the run started a stream");
    // let requests fail and wait for their retries
    std::thread::sleep(Duration::from_secs(3));
    let signalled = std::time::Instant::now();
    assert!(
        Command::new("kill")
            .args(["-INT", &run.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = run.wait().unwrap();
    let took = signalled.elapsed();
    drain.join().unwrap();
    assert_eq!(
        status.code(),
        Some(2),
        "a stopped run says not everything ran"
    );
    assert!(took < Duration::from_secs(15), "Ctrl-C took {took:?}");
    assert!(
        !state.with_extension("rejects.ndjson").exists(),
        "nothing is rejected for a stop"
    );
    eprintln!("Ctrl-C against a server answering 503: ended after {took:?}");
}
