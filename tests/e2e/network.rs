//! Failing safely on a bad network day: servers of our own on loopback that
//! redirect, so that nothing fhirlift sends can leave the machine.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fhirlift_tests::{TestServer, fhirlift, scratch};

/// A migration of `rows` generated patients from a CSV file, in `dir`.
fn write_patients(dir: &std::path::Path, rows: usize) {
    std::fs::write(
        dir.join("migration.yaml"),
        r#"source: { connector: csv, path: . }
streams:
  patients:
    from: patients.csv
    key: id
    emit:
      - resourceType: Patient
        identifier: [{ system: "http://clinic.example/patientId", value: "{{ id }}" }]
        name: [{ family: "{{ family }}" }]
"#,
    )
    .unwrap();
    let mut csv = String::from("id,family\n");
    for i in 0..rows {
        csv.push_str(&format!("P{i},Family{i}\n"));
    }
    std::fs::write(dir.join("patients.csv"), csv).unwrap();
}

/// A listener that counts the connections it accepts and answers nothing.
fn counting_listener() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counted.fetch_add(1, Ordering::Relaxed);
            drop(stream);
        }
    });
    (url, hits)
}

/// A server answering every request `307` to the same path on `to`.
fn redirecting_server(to: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let to = to.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    // the request head, then its body by Content-Length
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        if header == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let answer = format!(
                        "HTTP/1.1 307 Temporary Redirect\r\nLocation: {to}{path}\r\nContent-Length: 0\r\n\r\n"
                    );
                    if stream.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// Regression: a 307 to another host was followed and the request body
/// (patient data) sent there. A redirect is not followed: the run stops,
/// naming it, and the other host sees no connection.
#[test]
fn a_redirect_to_another_host_is_not_followed_and_stops_the_run() {
    let (elsewhere, hits) = counting_listener();
    let server = redirecting_server(elsewhere);
    let dir = scratch("network-redirect");
    write_patients(&dir, 300);
    let run = fhirlift([
        "migrate".into(),
        "-c".into(),
        dir.join("migration.yaml").into_os_string(),
        "--server".into(),
        format!("{server}/fhir/R4").into(),
        "--profile".into(),
        "generic".into(),
        "--state".into(),
        dir.join("fhirlift.state").into_os_string(),
    ]);
    assert_ne!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("does not follow redirects"), "{all}");
    assert_eq!(
        hits.load(Ordering::Relaxed),
        0,
        "nothing reached the other host"
    );
}

/// Regression: a bearer token went over plain http:// to a host that is not
/// this machine. Without `--allow-insecure-http` the run refuses before it
/// reads or sends anything. Run in a network namespace of its own (`unshare
/// -n`), with no network at all, so that a bug cannot send anything off the
/// machine.
#[test]
fn plain_http_to_another_host_is_refused_before_anything_is_sent() {
    let dir = scratch("network-insecure");
    write_patients(&dir, 1);
    let run = |server: &str, extra: &[&str]| {
        let out = std::process::Command::new("unshare")
            .arg("-n")
            .arg(fhirlift_tests::fhirlift_binary())
            .args(["migrate", "-c"])
            .arg(dir.join("migration.yaml"))
            .args(["--server", server, "--profile", "generic"])
            .args([
                "--client-id",
                "fhirlift",
                "--client-secret-env",
                "NETWORK_TEST_SECRET",
            ])
            .args(["--token-url", "https://auth.example.org/oauth2/token"])
            .args(extra)
            .env("NETWORK_TEST_SECRET", "not-a-real-secret")
            .env("FHIRLIFT_LOG", "warn")
            .output()
            .expect("unshare (util-linux) runs fhirlift without a network; the test needs it");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !stderr.contains("unshare failed") && !stderr.contains("Operation not permitted"),
            "unshare -n could not make a network namespace: {stderr}"
        );
        (out.status.code(), stderr)
    };
    for server in [
        "http://fhir.example.org/fhir/R4",
        "http://10.20.30.40:8103/fhir/R4",
    ] {
        let (code, stderr) = run(server, &[]);
        assert_eq!(code, Some(1), "{server}: {stderr}");
        assert!(
            stderr.contains("refusing to send credentials and patient data over plain http://"),
            "{server}: {stderr}"
        );
        assert!(
            !stderr.contains("not-a-real-secret"),
            "the secret is never printed"
        );
    }
    // the flag lets it try: in the empty namespace it cannot reach anything
    let (code, stderr) = run(
        "http://10.20.30.40:8103/fhir/R4",
        &["--allow-insecure-http", "--max-attempts", "1"],
    );
    assert_ne!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("refusing to send"), "{stderr}");
}

fn migrate_to(
    dir: &std::path::Path,
    server: &str,
    extra: &[&str],
) -> (fhirlift_tests::Outcome, std::time::Duration) {
    let started = std::time::Instant::now();
    let mut args: Vec<std::ffi::OsString> = vec![
        "migrate".into(),
        "-c".into(),
        dir.join("migration.yaml").into_os_string(),
        "--server".into(),
        server.into(),
        "--profile".into(),
        "generic".into(),
        "--state".into(),
        dir.join("fhirlift.state").into_os_string(),
        "--rejects".into(),
        dir.join("rejects.ndjson").into_os_string(),
    ];
    args.extend(extra.iter().map(Into::into));
    let out = fhirlift(args);
    (out, started.elapsed())
}

/// Regression: with the server gone, each batch was tried 12 times and its
/// records rejected, through the whole source. Now the run stops (exit 1)
/// once no request has been answered for `--give-up-after`, rejects
/// nothing, and the same command completes once the server is back.
#[test]
fn a_dead_server_stops_the_run_without_rejects_and_the_next_run_completes() {
    let dir = scratch("network-dead");
    write_patients(&dir, 2_000);
    // a port nothing listens on: every connection is refused
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("http://127.0.0.1:{port}/fhir/R4");
    let (run, took) = migrate_to(&dir, &server, &["--give-up-after", "3"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("has not answered"), "{}", run.stderr);
    assert!(
        run.stderr.contains("resumes once the server is back"),
        "{}",
        run.stderr
    );
    assert!(
        !dir.join("rejects.ndjson").exists(),
        "nothing rejected for a dead server"
    );
    assert!(
        took < std::time::Duration::from_secs(30),
        "stopped after {took:?}"
    );
    eprintln!("a dead server stopped the run after {took:?} (--give-up-after 3)");
    // the server is back on that port: the same command completes
    let back = TestServer::start(fhirlift_sandbox::SandboxConfig {
        port,
        ..Default::default()
    });
    let (run, _) = migrate_to(&dir, &server, &[]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    back.sandbox
        .with_store(|s| assert_eq!(s.count("Patient"), 2_000));
}

/// A server that takes connections and never answers: the run stops once
/// the requests have timed out for `--give-up-after`, rejecting nothing.
#[test]
fn a_silent_server_stops_the_run_without_rejects() {
    let dir = scratch("network-silent");
    write_patients(&dir, 500);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("http://{}/fhir/R4", listener.local_addr().unwrap());
    // accept and hold every connection, answering nothing
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let (run, took) = migrate_to(
        &dir,
        &server,
        &["--give-up-after", "3", "--request-timeout", "2"],
    );
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("has not answered"), "{}", run.stderr);
    assert!(
        !dir.join("rejects.ndjson").exists(),
        "nothing rejected for a silent server"
    );
    assert!(
        took < std::time::Duration::from_secs(30),
        "stopped after {took:?}"
    );
    eprintln!(
        "a silent server stopped the run after {took:?} (--request-timeout 2, --give-up-after 3)"
    );
}
