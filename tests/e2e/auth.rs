//! Authentication against the sandbox's token endpoint.

use std::sync::atomic::Ordering;
use std::time::Duration;

use fhirlift_sandbox::{SandboxAuth, SandboxConfig};
use fhirlift_tests::{TestServer, datagen, fhirlift, fhirlift_binary, scratch};

const SECRET: &str = "s3cr3t-never-printed";

/// Tokens announced for an hour that really serve `uses` requests (none: all).
fn server(uses: Option<u64>) -> TestServer {
    TestServer::start(SandboxConfig {
        auth: Some(SandboxAuth {
            client_id: "fhirlift".into(),
            client_secret: SECRET.into(),
            announced_lifetime: Duration::from_secs(3600),
            real_lifetime: Duration::from_secs(3600),
            uses,
        }),
        ..SandboxConfig::default()
    })
}

fn migrate_with_secret(
    dir: &std::path::Path,
    url: &str,
    secret_var: &str,
) -> fhirlift_tests::Outcome {
    fhirlift([
        "migrate".into(),
        "-c".into(),
        dir.join("migration.yaml").into_os_string(),
        "--server".into(),
        url.into(),
        "--client-id".into(),
        "fhirlift".into(),
        "--client-secret-env".into(),
        secret_var.into(),
        "--rejects".into(),
        dir.join("rejects.ndjson").into_os_string(),
    ])
}

#[test]
fn client_credentials_are_discovered_cached_and_renewed_after_a_401() {
    // SAFETY of set_var: only this test reads this variable
    unsafe { std::env::set_var("FHIRLIFT_TEST_SECRET_A", SECRET) };
    let cached = server(None);
    let dir = scratch("auth-cached");
    datagen::write_example(&dir, 500, 1).unwrap();
    let run = migrate_with_secret(&dir, &cached.url(), "FHIRLIFT_TEST_SECRET_A");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let stats = cached.sandbox.stats();
    assert_eq!(
        stats.tokens.load(Ordering::Relaxed),
        1,
        "one token, cached for every request"
    );
    assert_eq!(stats.unauthorized.load(Ordering::Relaxed), 0);

    // tokens that die long before their announced expiry: 401, renew, resend
    let short = server(Some(20));
    let dir = scratch("auth-short");
    let counts = datagen::write_example(&dir, 1500, 2).unwrap();
    let run = migrate_with_secret(&dir, &short.url(), "FHIRLIFT_TEST_SECRET_A");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let stats = short.sandbox.stats();
    assert!(
        stats.unauthorized.load(Ordering::Relaxed) > 0,
        "some tokens died"
    );
    assert!(stats.tokens.load(Ordering::Relaxed) > 1, "and were renewed");
    short
        .sandbox
        .with_store(|s| assert_eq!(s.count("Patient") as u64, counts.patients));
}

#[test]
fn refused_credentials_stop_the_run_with_a_clear_error_that_hides_the_secret() {
    unsafe { std::env::set_var("FHIRLIFT_TEST_SECRET_B", "wrong-secret-value") };
    let server = server(None);
    let dir = scratch("auth-refused");
    datagen::write_example(&dir, 50, 3).unwrap();
    let run = migrate_with_secret(&dir, &server.url(), "FHIRLIFT_TEST_SECRET_B");
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("refused the client credentials"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("wrong-secret-value") && !run.stdout.contains("wrong-secret-value")
    );
    server
        .sandbox
        .with_store(|s| assert_eq!(s.count("Patient"), 0));
}

#[test]
fn the_secret_is_in_no_log_line_of_a_debug_run() {
    let server = server(Some(10));
    let dir = scratch("auth-logs");
    datagen::write_example(&dir, 300, 4).unwrap();
    let output = std::process::Command::new(fhirlift_binary())
        .args(["migrate", "-c"])
        .arg(dir.join("migration.yaml"))
        .args([
            "--server",
            &server.url(),
            "--client-id",
            "fhirlift",
            "--client-secret-env",
            "SANDBOX_SECRET",
        ])
        .arg("--rejects")
        .arg(dir.join("rejects.ndjson"))
        .env("SANDBOX_SECRET", SECRET)
        .env("FHIRLIFT_LOG", "debug")
        .output()
        .unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{logs}");
    assert!(
        logs.contains("401: renewing the token"),
        "the renewal path ran: {logs}"
    );
    assert!(!logs.contains(SECRET), "the secret leaked into the logs");
    assert!(
        !logs.contains("sandbox-token-"),
        "a token leaked into the logs"
    );
}
