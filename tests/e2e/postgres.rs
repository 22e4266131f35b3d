//! The PostgreSQL connector against a real server (started by `cargo xtask
//! test`): every column type, check-time errors, failures mid-stream, and
//! a migration into the sandbox.

use std::path::Path;
use std::sync::Arc;

use fhirlift_core::registry::Registry;
use fhirlift_core::{ConnectorContext, Provenance, SourceEvent, StreamSource, Value};
use fhirlift_sandbox::SandboxConfig;
use fhirlift_tests::pg::TestDb;
use fhirlift_tests::{TestServer, fhirlift, scratch};

use crate::support::{migrate, report, total};

/// Reads a whole stream through the registered connector.
fn read(db: &TestDb, dir: &Path, from: &str, key: &[&str], fetch: u64) -> Vec<SourceEvent> {
    read_after(db, dir, from, key, fetch, None)
}

/// Reads a stream, resumed after a record when `resume_after` is given.
fn read_after(
    db: &TestDb,
    dir: &Path,
    from: &str,
    key: &[&str],
    fetch: u64,
    resume_after: Option<Provenance>,
) -> Vec<SourceEvent> {
    std::fs::write(dir.join("pg.url"), &db.url).unwrap();
    let registry = Registry::from_inventory().unwrap();
    let connector = (registry.get("postgres").unwrap().create)(
        &serde_json::json!({ "url_file": "pg.url", "fetch": fetch }),
        &ConnectorContext {
            base_dir: dir.to_path_buf(),
        },
    )
    .unwrap();
    let source = StreamSource {
        stream: Arc::from("s"),
        from: from.into(),
        key: key.iter().map(|k| k.to_string()).collect(),
        options: serde_json::json!({}),
        resume_after,
    };
    connector.schema(&source).unwrap();
    let mut stream = connector.open(&source).unwrap();
    let mut events = Vec::new();
    while let Some(chunk) = stream.blocking_next_chunk() {
        events.extend(chunk);
    }
    events
}

fn records(events: &[SourceEvent]) -> Vec<&fhirlift_core::Record> {
    events
        .iter()
        .map(|e| match e {
            SourceEvent::Record(r) => r,
            other => panic!("not a record: {other:?}"),
        })
        .collect()
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

#[test]
fn every_common_type_becomes_a_value_without_loss() {
    let db = TestDb::create("types");
    let dir = scratch("pg-types");
    db.execute(
        r#"
        SET TIME ZONE 'America/New_York';
        CREATE TABLE matrix (
            id int PRIMARY KEY,
            t text, v varchar(10), c char(5),
            i2 smallint, i4 int, i8 bigint,
            n numeric, n2 numeric(12,2), f8 double precision, b boolean,
            d date, ts timestamp, tz timestamptz,
            u uuid, j json, jb jsonb,
            ai int[], at text[], a2 int[][], by bytea
        );
        INSERT INTO matrix VALUES (
            1, 'Müller\Jörg', 'abc', 'ab',
            -32768, 2147483647, 9223372036854775807,
            12345678901234567890.123456789, -0.50, 0.1, true,
            '2024-02-29', '2024-03-10 01:30:00.25', '2024-03-10 01:30:00-05',
            '0f8fad5b-d9cb-469f-a165-70867728950e', '{"a": [1, 2.5]}', '{"b": null}',
            '{1,NULL,3}', '{"x, y",NULL}', '{{1,2},{3,4}}', '\x4d616e'
        );
        INSERT INTO matrix (id) VALUES (2);
        INSERT INTO matrix (id, tz, n) VALUES (3, '2024-07-01 12:00:00+02', 'NaN');
        "#,
    );
    let events = read(&db, &dir, "matrix", &["id"], 2);
    let rows = records(&events);
    assert_eq!(rows.len(), 3);
    let get = |row: usize, col: &str| rows[row].get(col).unwrap().clone();
    assert_eq!(get(0, "t"), text("Müller\\Jörg"));
    assert_eq!(get(0, "v"), text("abc"));
    assert_eq!(get(0, "c"), text("ab"), "char(n) padding is dropped");
    assert_eq!(get(0, "i2"), Value::Integer(-32768));
    assert_eq!(get(0, "i4"), Value::Integer(2147483647));
    assert_eq!(get(0, "i8"), Value::Integer(i64::MAX));
    assert_eq!(
        get(0, "n"),
        Value::Decimal("12345678901234567890.123456789".into())
    );
    assert_eq!(get(0, "n2"), Value::Decimal("-0.50".into()));
    assert_eq!(get(0, "f8"), Value::Decimal("0.1".into()));
    assert_eq!(get(0, "b"), Value::Bool(true));
    assert_eq!(get(0, "d"), text("2024-02-29"));
    assert_eq!(get(0, "ts"), text("2024-03-10T01:30:00.25"));
    // -05 is 06:30 UTC, whatever the session's zone
    assert_eq!(get(0, "tz"), text("2024-03-10T06:30:00Z"));
    assert_eq!(get(2, "tz"), text("2024-07-01T10:00:00Z"));
    assert_eq!(get(0, "u"), text("0f8fad5b-d9cb-469f-a165-70867728950e"));
    assert_eq!(
        get(0, "j"),
        Value::Json(serde_json::json!({ "a": [1, 2.5] }))
    );
    assert_eq!(get(0, "jb"), Value::Json(serde_json::json!({ "b": null })));
    assert_eq!(
        get(0, "ai"),
        Value::List(vec![Value::Integer(1), Value::Null, Value::Integer(3)])
    );
    assert_eq!(get(0, "at"), Value::List(vec![text("x, y"), Value::Null]));
    assert_eq!(
        get(0, "a2"),
        Value::List(vec![
            Value::List(vec![Value::Integer(1), Value::Integer(2)]),
            Value::List(vec![Value::Integer(3), Value::Integer(4)]),
        ])
    );
    assert_eq!(get(0, "by"), text("TWFu"));
    // NULL everywhere drops the field
    for col in ["t", "n", "d", "tz", "u", "jb", "ai", "by"] {
        assert_eq!(get(1, col), Value::Null, "{col}");
    }
    assert_eq!(get(2, "n"), text("NaN"));
    assert_eq!(rows[1].key, "2");
    assert_eq!(rows[0].provenance.to_string(), "matrix key 1");
}

fn write_migration(dir: &Path, db: &TestDb, streams: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("pg.url"), &db.url).unwrap();
    let path = dir.join("migration.yaml");
    std::fs::write(
        &path,
        format!(
            "source: {{ connector: postgres, url_file: pg.url, fetch: 100 }}\ntarget: {{ profile: medplum }}\nstreams:\n{streams}"
        ),
    )
    .unwrap();
    path
}

const PATIENTS_FROM_QUERY: &str = r#"  patients:
    from: |
      SELECT id, 'P' || id AS pid, 1 / (id - FAIL_AT) AS boom FROM ids
    key: id
    emit:
      - resourceType: Patient
        identifier: [{ system: "http://s/p", value: "{{ pid }}" }]
"#;

#[test]
fn a_query_failing_mid_stream_names_the_stream_and_last_key_and_keeps_what_came_before() {
    let db = TestDb::create("midstream");
    let dir = scratch("pg-midstream");
    // a table with a key index: rows flow in key order without a sort, so
    // the failure comes part-way, as a bad row or a lost disk would
    db.execute(
        "CREATE TABLE ids (id int PRIMARY KEY); INSERT INTO ids SELECT generate_series(1, 1000);",
    );
    let config = write_migration(&dir, &db, &PATIENTS_FROM_QUERY.replace("FAIL_AT", "450"));
    let server = TestServer::start(SandboxConfig::default());
    let run = migrate(&config, &server.url(), &dir, &[]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("stream patients"), "{all}");
    assert!(all.contains("after key 400"), "{all}");
    assert!(all.contains("division by zero"), "{all}");
    let r = report(&dir);
    assert_eq!(
        total(&r, "created"),
        400,
        "the rows before the failure were written"
    );
    assert!(r["streams"][0]["failed"].is_string());
    server
        .sandbox
        .with_store(|s| assert_eq!(s.count("Patient"), 400));
}

#[test]
fn a_connection_lost_mid_stream_names_the_last_key_delivered() {
    let db = TestDb::create("killed");
    let dir = scratch("pg-killed");
    // row 250 waits until the test ends the connection from the server
    // side (a stable function, so the planner still streams in index order)
    db.execute(
        "CREATE TABLE ids (id int PRIMARY KEY); INSERT INTO ids SELECT generate_series(1, 1000);
         CREATE FUNCTION wait_at(i int) RETURNS text STABLE LANGUAGE plpgsql AS $$
         BEGIN IF i = 250 THEN PERFORM pg_sleep(60); END IF; RETURN NULL; END $$;",
    );
    let streams = r#"  patients:
    from: |
      SELECT id, 'P' || id AS pid,
             wait_at(id) AS wait
      FROM ids
    key: id
    emit:
      - resourceType: Patient
        identifier: [{ system: "http://s/p", value: "{{ pid }}" }]
"#;
    let config = write_migration(&dir, &db, streams);
    std::fs::write(
        dir.join("pg.url"),
        format!("{}&application_name=fhirlift_kill_me", db.url),
    )
    .unwrap();
    let killer_url = db.url.clone();
    let killer = std::thread::spawn(move || {
        for _ in 0..600 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let done = fhirlift_tests::pg::try_execute(
                &killer_url,
                "DO $$ BEGIN IF (SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fhirlift_kill_me' AND wait_event = 'PgSleep') = 0 THEN RAISE EXCEPTION 'not yet'; END IF; PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'fhirlift_kill_me'; END $$;",
            );
            if done.is_ok() {
                return true;
            }
        }
        false
    });
    let server = TestServer::start(SandboxConfig::default());
    let run = migrate(&config, &server.url(), &dir, &[]);
    assert!(
        killer.join().unwrap(),
        "the reading connection was found and ended"
    );
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("stream patients"), "{all}");
    assert!(all.contains("after key 200"), "{all}");
    server
        .sandbox
        .with_store(|s| assert_eq!(s.count("Patient"), 200));
}

#[test]
fn check_prepares_each_query_and_names_missing_columns_and_unsupported_types() {
    let db = TestDb::create("check");
    let dir = scratch("pg-check");
    db.execute("CREATE TABLE people (id int PRIMARY KEY, name text, span interval);");
    let missing = write_migration(
        &dir,
        &db,
        r#"  people:
    from: SELECT id, name FROM people
    key: id
    emit:
      - resourceType: Patient
        identifier: [{ system: "http://s/p", value: "{{ id }}" }]
        name: [{ text: "{{ nickname }}" }]
"#,
    );
    let check = fhirlift(["check", "-c", missing.to_str().unwrap()]);
    assert_eq!(check.code, 1, "{}", check.stdout);
    assert!(check.stderr.contains("nickname"), "{}", check.stderr);
    let unsupported = write_migration(
        &dir,
        &db,
        r#"  people:
    from: people
    key: id
    emit:
      - resourceType: Patient
        identifier: [{ system: "http://s/p", value: "{{ id }}" }]
"#,
    );
    let check = fhirlift(["check", "-c", unsupported.to_str().unwrap()]);
    assert_eq!(check.code, 1, "{}", check.stdout);
    assert!(
        check.stderr.contains("\"span\"") && check.stderr.contains("interval"),
        "{}",
        check.stderr
    );
    let bad_sql = write_migration(
        &dir,
        &db,
        r#"  people:
    from: SELECT id FROM no_such_table
    key: id
    emit:
      - resourceType: Patient
        identifier: [{ system: "http://s/p", value: "{{ id }}" }]
"#,
    );
    let check = fhirlift(["check", "-c", bad_sql.to_str().unwrap()]);
    assert_eq!(check.code, 1);
    assert!(check.stderr.contains("no_such_table"), "{}", check.stderr);
    // a misspelled stream setting is named, not passed over
    let misspelled = write_migration(
        &dir,
        &db,
        r#"  people:
    from: SELECT id FROM people
    key: id
    fecth: 50
    emit:
      - resourceType: Patient
        identifier: [{ system: "http://s/p", value: "{{ id }}" }]
"#,
    );
    let check = fhirlift(["check", "-c", misspelled.to_str().unwrap()]);
    assert_eq!(check.code, 1);
    assert!(
        check.stderr.contains("stream people.fecth")
            && check.stderr.contains("did you mean `fetch`?"),
        "{}",
        check.stderr
    );
}

#[test]
fn the_clinic_example_migrates_from_postgres_with_joins_done_in_sql() {
    let db = TestDb::create("example");
    let example = fhirlift_tests::workspace().join("examples/postgres");
    for file in ["schema.sql", "seed.sql"] {
        db.execute(&std::fs::read_to_string(example.join(file)).unwrap());
    }
    let dir = scratch("pg-example");
    std::fs::write(dir.join("pg.url"), &db.url).unwrap();
    // the example reads its connection string from FHIRLIFT_PG_URL; tests
    // run side by side in one process, so this copy names a file instead
    let text = std::fs::read_to_string(example.join("migration.yaml")).unwrap();
    assert!(text.contains("url_env: FHIRLIFT_PG_URL"));
    let config = dir.join("migration.yaml");
    std::fs::write(
        &config,
        text.replace("url_env: FHIRLIFT_PG_URL", "url_file: pg.url"),
    )
    .unwrap();

    let check = fhirlift(["check", "-c", config.to_str().unwrap()]); // validates every resource
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr); // 2: a reject, invalid R4 too
    let server = TestServer::start(SandboxConfig::default());
    let run = migrate(&config, &server.url(), &dir, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    server.sandbox.with_store(|store| {
        assert_eq!(store.count("Patient"), 5);
        assert_eq!(store.count("Condition"), 6);
        let anna = &store.find("Patient", "http://example-clinic.org/patientId", "P001")[0];
        assert_eq!(anna["name"][0]["family"], "Müller");
        assert_eq!(anna["birthDate"], "1984-03-12");
        let c = &store.find("Condition", "http://example-clinic.org/conditionId", "1005")[0];
        assert_eq!(
            c["code"]["coding"][0]["display"], "Generalized anxiety disorder",
            "a code missing from the lookup table keeps its description"
        );
        let subject = c["subject"]["reference"].as_str().unwrap();
        let p004 = &store.find("Patient", "http://example-clinic.org/patientId", "P004")[0];
        assert_eq!(subject, format!("Patient/{}", p004["id"].as_str().unwrap()));
        assert!(store.count("Encounter") > 0);
    });
    // a second run writes nothing
    let again = migrate(&config, &server.url(), &dir, &[]);
    assert_eq!(again.code, 0, "{}", again.stdout);
    assert_eq!(report(&dir)["traffic"]["writes"], 0, "{}", again.stdout);
}

/// Runs a command, failing the test with its output when it fails.
fn sh(program: &str, args: &[&str], dir: &Path) {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tls_modes_are_libpqs_over_tcp_by_address_and_name_and_over_the_unix_socket() {
    let server = fhirlift_tests::pg::server_url();
    assert!(
        server.contains("@127.0.0.1:") || server.contains("@localhost:"),
        "this test configures TLS on the server: it needs the local one cargo xtask test starts"
    );
    // a private CA and a server certificate it signs, as a clinic's would be
    let certs = std::path::PathBuf::from(format!("/tmp/fhirlift-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&certs);
    std::fs::create_dir_all(&certs).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&certs, std::fs::Permissions::from_mode(0o755)).unwrap();
    let openssl = |args: &[&str]| sh("openssl", args, &certs);
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=fhirlift test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        certs.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ]);
    std::fs::set_permissions(
        certs.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(
        certs.join("server.crt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // as root (CI) the server runs as postgres: the key must be its own
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .unwrap()
        .stdout
        == b"0\n";
    if root {
        sh("chown", &["postgres", "server.key", "server.crt"], &certs);
    }
    let set = |sql: &str| fhirlift_tests::pg::execute(&server, sql);
    set(&format!(
        "ALTER SYSTEM SET ssl_cert_file = '{}'",
        certs.join("server.crt").display()
    ));
    set(&format!(
        "ALTER SYSTEM SET ssl_key_file = '{}'",
        certs.join("server.key").display()
    ));
    set("ALTER SYSTEM SET ssl = on");
    set("SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(500));

    let db = TestDb::create("tls");
    let dir = scratch("pg-tls");
    std::fs::copy(certs.join("ca.crt"), dir.join("ca.pem")).unwrap();
    let socket_dir = {
        let out = std::process::Command::new("psql")
            .args([&server, "-XAtc", "SHOW unix_socket_directories"])
            .output();
        out.ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|d| !d.is_empty())
    };
    let query = "SELECT 1 AS id, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let registry = Registry::from_inventory().unwrap();
    let create = registry.get("postgres").unwrap().create;
    let context = ConnectorContext {
        base_dir: dir.clone(),
    };
    let source = StreamSource {
        stream: Arc::from("s"),
        from: query.into(),
        key: vec!["id".into()],
        options: serde_json::json!({}),
        resume_after: None,
    };
    // whether the connection is encrypted, or why it was refused
    let ssl_of = |url: &str, ca: bool| -> Result<bool, String> {
        std::fs::write(dir.join("pg.url"), url).unwrap();
        let settings = if ca {
            serde_json::json!({ "url_file": "pg.url", "tls_ca_file": "ca.pem" })
        } else {
            serde_json::json!({ "url_file": "pg.url" })
        };
        let connector = create(&settings, &context).map_err(|e| e.to_string())?;
        connector.schema(&source).map_err(|e| e.to_string())?;
        let mut stream = connector.open(&source).map_err(|e| e.to_string())?;
        let mut events = Vec::new();
        while let Some(chunk) = stream.blocking_next_chunk() {
            events.extend(chunk);
        }
        Ok(records(&events)[0].get("ssl") == Some(&Value::Bool(true)))
    };
    let mode = |m: &str| db.url.replace("sslmode=disable", &format!("sslmode={m}"));
    let by_name = |m: &str| mode(m).replace("127.0.0.1", "localhost");
    let results = [
        (
            "require, no CA (libpq: encrypted, not verified)",
            ssl_of(&mode("require"), false),
        ),
        (
            "prefer, the default",
            ssl_of(
                &db.url
                    .replace("?sslmode=disable", "")
                    .replace(" sslmode=disable", ""),
                false,
            ),
        ),
        (
            "verify-full with the CA, 127.0.0.1",
            ssl_of(&mode("verify-full"), true),
        ),
        (
            "verify-full with the CA, localhost",
            ssl_of(&by_name("verify-full"), true),
        ),
        ("verify-ca with the CA", ssl_of(&mode("verify-ca"), true)),
        (
            "verify-full without the CA",
            ssl_of(&mode("verify-full"), false),
        ),
        (
            "require with the CA (libpq: the chain is checked)",
            ssl_of(&mode("require"), true),
        ),
    ];
    let socket = socket_dir.as_ref().map(|d| {
        let port = db
            .url
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .unwrap_or("5432")
            .to_owned();
        let user = db
            .url
            .split("://")
            .nth(1)
            .and_then(|r| r.split('@').next())
            .unwrap_or("postgres")
            .to_owned();
        let url = format!(
            "host={d} port={port} user={user} dbname={} sslmode=require",
            db.name
        );
        ssl_of(&url, false)
    });
    // the shared server goes back to plain connections
    set("ALTER SYSTEM RESET ssl");
    set("SELECT pg_reload_conf()");
    let _ = std::fs::remove_dir_all(&certs);

    for (what, result) in &results[..5] {
        assert_eq!(result, &Ok(true), "{what}: the server saw TLS");
    }
    let err = results[5]
        .1
        .clone()
        .expect_err("an unknown CA is refused under verify-full");
    assert!(
        err.contains("UnknownIssuer") || err.contains("certificate"),
        "{err}"
    );
    assert_eq!(results[6].1, Ok(true), "{}", results[6].0);
    let socket =
        socket.expect("the test server has a Unix socket (cargo xtask test starts it with one)");
    assert_eq!(
        socket,
        Ok(false),
        "a Unix socket never uses TLS, whatever sslmode says"
    );
}

/// The provenance keys of a stream's records, in order.
fn keys(events: &[SourceEvent]) -> Vec<String> {
    records(events)
        .iter()
        .map(|r| match &r.provenance {
            Provenance::Table { key, .. } => key.clone(),
            other => panic!("not a row: {other}"),
        })
        .collect()
}

#[test]
fn a_resumed_stream_reads_exactly_the_rows_after_its_key_in_the_servers_order() {
    let db = TestDb::create("resume");
    let dir = scratch("pg-resume");
    // an ICU collation orders case-insensitively first ("a" < "B" < "c"),
    // unlike bytes; the "C" collation where the server has no ICU
    db.execute(
        r#"
        CREATE TABLE nums (id int PRIMARY KEY, v text);
        INSERT INTO nums SELECT i, 'v' || i FROM generate_series(1, 25) AS i WHERE i <> 11;
        DO $$ BEGIN
          IF EXISTS (SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu') THEN
            CREATE TABLE names (name text COLLATE "und-x-icu" PRIMARY KEY);
          ELSE
            CREATE TABLE names (name text COLLATE "C" PRIMARY KEY);
          END IF;
        END $$;
        INSERT INTO names VALUES ('a'), ('B'), ('c'), ('D'), ('e'), ('é'), ('Z'), ('b');
        CREATE TABLE events (at timestamptz, tag bytea, PRIMARY KEY (at, tag));
        INSERT INTO events VALUES
          ('2024-03-01 10:00:00.000001+00', '\x00'), ('2024-03-01 10:00:00.000001+00', '\x0001'),
          ('2024-03-01 10:00:00.000002+00', '\xff'), ('2024-03-01 05:00:00.5-05', '\x01');
        CREATE TABLE visits (patient text, day date, note text, PRIMARY KEY (patient, day));
        INSERT INTO visits VALUES
          ('x', '2024-03-02', 'x2'), ('x', '2024-03-01', 'x1'),
          ('x,1', '2024-03-01', 'c1'), ('x,1', '2024-03-02', 'c2'),
          ('x|1', '2024-03-01', 'p1'), ('x', '2024-03-03', 'x3');
        "#,
    );
    let table = |t: &str, key: &str| {
        Some(Provenance::Table {
            table: Arc::from(t),
            key: key.into(),
        })
    };

    // an integer key, across fetches: after 10 (11 is gone, so after 7
    // and after a missing key work the same way)
    let all = keys(&read(&db, &dir, "nums", &["id"], 4));
    assert_eq!(all.len(), 24);
    let rest = read_after(&db, &dir, "nums", &["id"], 4, table("nums", "10"));
    let expected: Vec<String> = (12..=25).map(|i| i.to_string()).collect();
    assert_eq!(keys(&rest), expected);
    assert_eq!(records(&rest)[0].get("v"), Some(&text("v12")));
    let rest = read_after(&db, &dir, "nums", &["id"], 4, table("nums", "11"));
    assert_eq!(keys(&rest), expected);
    assert!(read_after(&db, &dir, "nums", &["id"], 4, table("nums", "25")).is_empty());

    // a text key through a query: the server's collation decides "after"
    let query = "SELECT name, length(name) AS n FROM names";
    let stream = "query of stream s";
    let all = keys(&read(&db, &dir, query, &["name"], 3));
    let icu = read(
        &db,
        &dir,
        "SELECT collname::text AS c FROM pg_collation WHERE collname = 'und-x-icu'",
        &["c"],
        10,
    )
    .len()
        == 1;
    if icu {
        assert_eq!(all, ["a", "b", "B", "c", "D", "e", "é", "Z"]);
    } else {
        assert_eq!(all, ["B", "D", "Z", "a", "b", "c", "e", "é"]);
    }
    let at = all.iter().position(|k| k == "c").unwrap();
    let rest = read_after(&db, &dir, query, &["name"], 3, table(stream, "c"));
    assert_eq!(keys(&rest), all[at + 1..], "icu: {icu}");
    if icu {
        // byte order would have given e and é only
        assert_eq!(keys(&rest), ["D", "e", "é", "Z"]);
    }

    // a two-column key, values holding the separators of a naive format
    let all = keys(&read(&db, &dir, "visits", &["patient", "day"], 2));
    assert_eq!(
        all,
        [
            r#"["x","2024-03-01"]"#,
            r#"["x","2024-03-02"]"#,
            r#"["x","2024-03-03"]"#,
            r#"["x,1","2024-03-01"]"#,
            r#"["x,1","2024-03-02"]"#,
            r#"["x|1","2024-03-01"]"#,
        ]
    );
    for (i, mark) in all.iter().enumerate() {
        let rest = read_after(
            &db,
            &dir,
            "visits",
            &["patient", "day"],
            2,
            table("visits", mark),
        );
        assert_eq!(keys(&rest), all[i + 1..], "after {mark}");
    }
    let rest = read_after(
        &db,
        &dir,
        "visits",
        &["patient", "day"],
        2,
        table("visits", r#"["x","2024-03-02"]"#),
    );
    let notes: Vec<&Value> = records(&rest)
        .iter()
        .map(|r| r.get("note").unwrap())
        .collect();
    assert_eq!(notes, [&text("x3"), &text("c1"), &text("c2"), &text("p1")]);

    // key values whose text the server must read back exactly: instants
    // to the microsecond, bytes as base64
    let all = keys(&read(&db, &dir, "events", &["at", "tag"], 3));
    assert_eq!(
        all,
        [
            r#"["2024-03-01T10:00:00.000001Z","AA=="]"#,
            r#"["2024-03-01T10:00:00.000001Z","AAE="]"#,
            r#"["2024-03-01T10:00:00.000002Z","/w=="]"#,
            r#"["2024-03-01T10:00:00.5Z","AQ=="]"#,
        ]
    );
    for (i, mark) in all.iter().enumerate() {
        let rest = read_after(
            &db,
            &dir,
            "events",
            &["at", "tag"],
            3,
            table("events", mark),
        );
        assert_eq!(keys(&rest), all[i + 1..], "after {mark}");
    }
}

/// Regression: with a non-unique `key:` on a PostgreSQL stream, `status`
/// said "done 26, pending 441, resumes after key 1" and each re-run
/// accounted for fewer records. A repeated key now rejects the later row,
/// naming the first; the mark does not move past a repeated key, and a
/// re-run accounts for every row again.
#[test]
fn a_non_unique_key_rejects_the_later_rows_and_reruns_account_for_every_row() {
    let db = TestDb::create("dupkey");
    let dir = scratch("pg-dupkey");
    // 30 visits keyed by patient: patients 1..10, three visits each
    db.execute(
        "CREATE TABLE visits (patient int, visit int, PRIMARY KEY (patient, visit));
         INSERT INTO visits SELECT p, v FROM generate_series(1, 10) p, generate_series(1, 3) v;",
    );
    let config = write_migration(
        &dir,
        &db,
        r#"  visits:
    from: visits
    key: patient
    emit:
      - resourceType: Encounter
        identifier: [{ system: "http://s/visit", value: "{{ patient }}-{{ visit }}" }]
        status: finished
        class: { code: AMB }
"#,
    );
    let server = TestServer::start(SandboxConfig::default());
    for run in 1..=2 {
        let out = migrate(&config, &server.url(), &dir, &[]);
        assert_eq!(out.code, 2, "run {run}: {}\n{}", out.stdout, out.stderr);
        let r = report(&dir);
        let stream = &r["streams"][0];
        assert_eq!(stream["records"], 30, "run {run}: every row read");
        assert_eq!(stream["rejected"], 20, "run {run}: {}", out.stdout);
        let rejects = std::fs::read_to_string(dir.join("rejects.ndjson")).unwrap();
        let first: serde_json::Value =
            serde_json::from_str(rejects.lines().next().unwrap()).unwrap();
        assert!(
            first["reason"]
                .as_str()
                .unwrap()
                .contains("key \"1\" repeats: visits key 1 has the same key"),
            "{first}"
        );
        let status = fhirlift([
            "status".into(),
            "-c".into(),
            config.clone().into_os_string(),
            "--state".into(),
            dir.join("fhirlift.state").into_os_string(),
        ]);
        let line = status
            .stdout
            .lines()
            .find(|l| l.starts_with("visits"))
            .unwrap_or_else(|| panic!("{}", status.stdout));
        assert!(
            line.contains("(starts at the beginning)"),
            "no resume point past a repeated key: {line}"
        );
    }
    server
        .sandbox
        .with_store(|s| assert_eq!(s.count("Encounter"), 10, "the first row of each key"));
}
