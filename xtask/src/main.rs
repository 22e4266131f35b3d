//! `cargo xtask`: every chore of the project, in Rust, with no tools beyond cargo.
//!
//! - `cargo xtask migrate [ARGS]`: runs `fhirlift migrate` on the bundled
//!   example (examples/medplum-guide) unless ARGS name another migration;
//!   without a server it starts the embedded sandbox, whose store lives in
//!   target/fhirlift-demo/ between runs.
//! - `cargo xtask sandbox [ARGS]`: the sandbox server on its own.
//! - `cargo xtask test [ARGS]`: starts what the tests need and runs them all:
//!   a throwaway PostgreSQL cluster on a free loopback port (data in
//!   target/pg-test/test/, stopped afterwards, also when tests fail), whose
//!   URL the tests read from `FHIRLIFT_TEST_PG_URL`. When that variable is
//!   already set, its server is used and nothing is started. As root the
//!   cluster runs as the `postgres` user (initdb refuses root); without
//!   PostgreSQL installed, root installs it with apt-get.
//! - `cargo xtask pg`: such a cluster on its own (data in target/pg-test/pg/),
//!   printing its URL, until Ctrl-C: for trying examples/postgres by hand.
//! - `cargo xtask gen --patients N DIR`: the example's tables at any size.
//! - `cargo xtask bench [--patients N]`: map + plan throughput and peak memory
//!   of the release build on generated data, sending to a sink sandbox, the
//!   two write strategies against the sandbox in Medplum mode, then the
//!   PostgreSQL connector's throughput, then the criterion benchmarks.
//!   `cargo xtask bench medplum [--patients N]` runs only the strategy
//!   comparison, `cargo xtask bench postgres [--patients N]` only the
//!   PostgreSQL one (1M rows by default). `cargo xtask bench hl7v2 [N]`
//!   times parse + map of N generated ORU^R01 messages (100,000 by default).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = root();
    std::env::set_current_dir(&root)?;
    match task.as_str() {
        "migrate" => migrate(&rest),
        "test" => test(&rest),
        "pg" => pg(&rest),
        "gen" => generate(&rest),
        "sandbox" => {
            let mut command = cargo();
            command
                .args([
                    "run",
                    "--quiet",
                    "--release",
                    "--package",
                    "fhirlift-sandbox",
                    "--",
                ])
                .args(&rest);
            run(command)
        }
        "bench" => bench(&rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n\
                 tasks:\n  \
                 migrate [ARGS]           run the bundled example (ARGS go to `fhirlift migrate`)\n  \
                 test [ARGS]              start what the tests need and run them all\n  \
                 pg                       a throwaway PostgreSQL, printing its URL, until Ctrl-C\n  \
                 gen --patients N DIR     write the example's tables at any size\n  \
                 sandbox [ARGS]           run the sandbox FHIR server (--help for its knobs)\n  \
                 bench [--patients N]     measure map + plan throughput and memory\n  \
                 bench medplum            compare the write strategies against Medplum mode\n  \
                 bench postgres           PostgreSQL rows through the connector to a sink\n  \
                 bench hl7v2 [N]          parse + map N generated ORU^R01 messages\n  \
                 bench ledger             a first run and an unchanged re-run of 1M records"
            );
            if task.is_empty() || task == "help" || task == "--help" {
                Ok(())
            } else {
                bail!("unknown task {task:?}")
            }
        }
    }
}

/// The workspace root (xtask/ sits in it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(mut command: Command) -> anyhow::Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn migrate(args: &[String]) -> anyhow::Result<()> {
    let mut command = cargo();
    command.args(["run", "--quiet", "--package", "fhirlift", "--", "migrate"]);
    let has = |flags: &[&str]| {
        args.iter().any(|a| {
            flags
                .iter()
                .any(|f| a == f || a.starts_with(&format!("{f}=")))
        })
    };
    if !has(&["-c", "--config"]) {
        command.args(["--config", "examples/medplum-guide/migration.yaml"]);
    }
    if !has(&["--dry-run", "--server", "--sandbox"]) {
        // the embedded sandbox, keeping its store between runs: a second
        // run shows idempotency (nothing created, nothing duplicated)
        command.args(["--sandbox", "target/fhirlift-demo"]);
        if !has(&["--state"]) {
            command.args(["--state", "target/fhirlift-demo.fhirlift-state"]);
        }
    }
    command.args(args);
    run(command)
}

fn test(args: &[String]) -> anyhow::Result<()> {
    // The PostgreSQL the connector's tests read from FHIRLIFT_TEST_PG_URL:
    // the one named there, or a throwaway cluster started first (so that a
    // missing PostgreSQL fails fast), stopped when `cluster` is dropped,
    // whatever happens below.
    let (url, cluster) = match std::env::var(TEST_PG_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => {
            println!(
                "postgres: {TEST_PG_URL_VAR} is set: the tests use {}, nothing started",
                redact_password(&url)
            );
            (url, None)
        }
        _ => {
            let cluster = pg::Cluster::start("test")?;
            // Ctrl-C stops the tests (they share the terminal), not this
            // process: the cluster is stopped on the way out
            interrupt::catch();
            (cluster.url.clone(), Some(cluster))
        }
    };
    // The other tests start their own sandbox servers on loopback. Some
    // spawn the fhirlift binary (to read its real logs): build the binaries
    // first, which `cargo test` alone does not.
    let mut bins = cargo();
    bins.args(["build", "--workspace", "--bins"]);
    // --all-targets: benchmarks run once on small data, so they cannot rot.
    let mut all = cargo();
    all.args(["test", "--workspace", "--all-targets"])
        .args(args)
        .env(TEST_PG_URL_VAR, &url);
    let mut doc = cargo();
    doc.args(["test", "--workspace", "--doc"])
        .env(TEST_PG_URL_VAR, &url);
    run(bins)?;
    let mut tally = Tally::default();
    let outcome = tally.run(all).and_then(|()| tally.run(doc));
    drop(cluster);
    // one closing line for the whole suite, whatever the last binary was
    println!("tests: {} passed, {} failed", tally.passed, tally.failed);
    outcome
}

/// Where the tests find their PostgreSQL server.
const TEST_PG_URL_VAR: &str = "FHIRLIFT_TEST_PG_URL";

/// `cargo xtask pg`: a throwaway cluster until Ctrl-C.
fn pg(args: &[String]) -> anyhow::Result<()> {
    if let Some(arg) = args.first() {
        bail!("`cargo xtask pg` takes no arguments (got {arg:?})");
    }
    let cluster = pg::Cluster::start("pg")?;
    interrupt::catch();
    let url = &cluster.url;
    println!(
        "\nready: {url}\n\n  \
         export FHIRLIFT_PG_URL='{url}'       # examples/postgres\n  \
         export {TEST_PG_URL_VAR}='{url}'  # cargo test\n  \
         psql \"$FHIRLIFT_PG_URL\" -f examples/postgres/schema.sql -f examples/postgres/seed.sql\n\n\
         Ctrl-C stops it (the data goes with the next start)."
    );
    while !interrupt::requested() {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if !cluster.running() {
            bail!(
                "the server stopped on its own; its log is {}",
                cluster.log().display()
            );
        }
    }
    drop(cluster);
    println!("\npostgres: stopped");
    Ok(())
}

/// `postgres://user:secret@host/db` as `postgres://user:***@host/db`; a
/// key=value connection string with a password is not shown at all.
fn redact_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return if url.to_ascii_lowercase().contains("password") {
            "its server (connection string not shown: it holds a password)".into()
        } else {
            url.to_owned()
        };
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?'])
        .map_or(url.len(), |i| scheme_end + i);
    let at = url[scheme_end..authority_end].rfind('@');
    let url = match at.and_then(|at| Some((at, url[scheme_end..scheme_end + at].find(':')?))) {
        Some((at, colon)) => format!(
            "{}:***{}",
            &url[..scheme_end + colon],
            &url[scheme_end + at..]
        ),
        None => url.to_owned(),
    };
    match url.find('?') {
        Some(q) if url[q..].to_ascii_lowercase().contains("password") => {
            format!("{}?...", &url[..q])
        }
        _ => url,
    }
}

/// Counts `test result:` lines while passing the output through.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    fn run(&mut self, mut command: Command) -> anyhow::Result<()> {
        use std::io::{BufRead, BufReader};
        let shown = format!("{command:?}");
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {shown}"))?;
        let stdout = child.stdout.take().expect("piped above");
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                self.passed += count_before(rest, " passed");
                self.failed += count_before(rest, " failed");
            }
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("{shown} failed ({status})");
        }
        Ok(())
    }
}

/// The number just before `word` in `ok. 14 passed; 0 failed; ...`.
fn count_before(text: &str, word: &str) -> u64 {
    text.find(word)
        .and_then(|end| text[..end].rsplit([' ', '.']).next()?.parse().ok())
        .unwrap_or(0)
}

fn generate(args: &[String]) -> anyhow::Result<()> {
    let mut command = cargo();
    command.args([
        "run",
        "--quiet",
        "--release",
        "--package",
        "fhirlift-tests",
        "--bin",
        "fhirlift-gen",
        "--",
    ]);
    command.args(args);
    run(command)
}

fn bench(args: &[String]) -> anyhow::Result<()> {
    if args.first().is_some_and(|a| a == "hl7v2") {
        return bench_hl7v2(&args[1..]);
    }
    let mut patients: u64 = 1_000_000;
    let mut strategies_only = false;
    let mut postgres_only = false;
    let mut ledger_only = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "medplum" => strategies_only = true,
            "postgres" => postgres_only = true,
            "ledger" => ledger_only = true,
            "--patients" => {
                patients = it
                    .next()
                    .and_then(|n| n.replace('_', "").parse().ok())
                    .context("--patients takes a number")?
            }
            other => bail!("unknown bench option {other:?}"),
        }
    }
    let mut build = cargo();
    build.args([
        "build",
        "--release",
        "--package",
        "fhirlift",
        "--package",
        "fhirlift-tests",
        "--bin",
        "fhirlift",
        "--bin",
        "fhirlift-gen",
        "--package",
        "fhirlift-sandbox",
        "--bin",
        "fhirlift-sandbox",
    ]);
    run(build)?;
    if postgres_only {
        return bench_postgres(if args.iter().any(|a| a == "--patients") {
            patients
        } else {
            1_000_000
        });
    }
    if ledger_only {
        return bench_ledger(if args.iter().any(|a| a == "--patients") {
            patients
        } else {
            1_000_000
        });
    }
    if strategies_only {
        return bench_strategies(if args.iter().any(|a| a == "--patients") {
            patients
        } else {
            20_000
        });
    }
    // Two sizes: throughput from the large one, flat memory from comparing both.
    for n in [patients / 10, patients] {
        let dir = root().join(format!("target/bench-data/{n}"));
        if !dir.join("migration.yaml").exists() {
            let mut g = Command::new(root().join("target/release/fhirlift-gen"));
            g.args(["--patients", &n.to_string()]).arg(&dir);
            run(g)?;
        }
        println!("\n== {n} patients: fhirlift check (map + plan every record, no network)");
        let mut check = Command::new(root().join("target/release/fhirlift"));
        check
            .args(["check", "--config"])
            .arg(dir.join("migration.yaml"));
        run(check)?;
    }
    // sending: the sandbox in sink mode (parses and counts) in its own process,
    // so the peak memory printed is fhirlift's alone
    let port = "18113";
    let mut sink = start_sink(port)?;
    if let Some(status) = sink.try_wait()? {
        bail!("the sandbox stopped at once ({status})");
    }
    let dir = root().join(format!("target/bench-data/{patients}"));
    let config = dir.join("migration.yaml");
    let text = std::fs::read_to_string(&config)?;
    let patients_only = dir.join("patients-only.yaml");
    std::fs::write(
        &patients_only,
        &text[..text.find("\n  conditions:").unwrap_or(text.len())],
    )?;
    let mut outcome = Ok(());
    for (what, file) in [
        ("the patients stream", &patients_only),
        ("the whole example", &config),
    ] {
        println!(
            "\n== {patients} patients, {what}: fhirlift migrate into the sandbox in sink mode over loopback"
        );
        outcome = outcome.and(send_to_sink(file, port, &dir));
    }
    let _ = sink.kill();
    let _ = sink.wait();
    outcome?;
    bench_strategies(20_000)?;
    bench_postgres(patients)?;
    println!("\n== criterion: map + plan of the patients stream");
    let mut criterion = cargo();
    criterion.args([
        "bench",
        "--package",
        "fhirlift-tests",
        "--bench",
        "map_plan",
    ]);
    run(criterion)
}

/// The sandbox in sink mode (parses and counts) in its own process on
/// `port`, so the peak memory a run prints is fhirlift's alone.
fn start_sink(port: &str) -> anyhow::Result<std::process::Child> {
    let mut sink = Command::new(root().join("target/release/fhirlift-sandbox"))
        .args(["--sink", "--port", port])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("cannot start the sandbox")?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    if let Some(status) = sink.try_wait()? {
        bail!("the sandbox stopped at once ({status})");
    }
    Ok(sink)
}

/// The ledger: what an unchanged re-run costs next to the first run.
///
/// 1. `patients` records sent to a sink sandbox (it answers at once, so the
///    first run is fhirlift's own cost: reading, mapping, sending and the
///    ledger's acknowledgements), then again unchanged: the second run
///    reads the source and the ledger and sends nothing.
/// 2. The same against the sandbox in Medplum mode (the server costs of
///    `bench medplum`), 20,000 patients with 3 conditions each under the
///    resolve strategy: what a re-run saves when the server is the slow part.
fn bench_ledger(patients: u64) -> anyhow::Result<()> {
    let dir = root().join(format!("target/bench-data/{patients}"));
    if !dir.join("migration.yaml").exists() {
        let mut g = Command::new(root().join("target/release/fhirlift-gen"));
        g.args(["--patients", &patients.to_string()]).arg(&dir);
        run(g)?;
    }
    let text = std::fs::read_to_string(dir.join("migration.yaml"))?;
    let config = dir.join("patients-only.yaml");
    std::fs::write(
        &config,
        &text[..text.find("\n  conditions:").unwrap_or(text.len())],
    )?;
    let port = "18114";
    let mut sink = start_sink(port)?;
    let into_sink = ledger_passes(
        &format!("{patients} patients into the sink sandbox"),
        &config,
        &format!("http://127.0.0.1:{port}/fhir/R4"),
        &["--strategy", "conditional", "--profile", "generic"],
    );
    let _ = sink.kill();
    let _ = sink.wait();
    let into_sink = into_sink?;

    let medplum_patients = 20_000;
    let config = strategies_data(medplum_patients)?;
    let port = "18115";
    let mut server = start_medplum_model(port)?;
    let into_medplum = ledger_passes(
        &format!(
            "{medplum_patients} patients + {} conditions into the sandbox in Medplum mode",
            medplum_patients * 3
        ),
        &config,
        &format!("http://127.0.0.1:{port}/fhir/R4"),
        &[
            "--profile",
            "medplum",
            "--concurrency",
            "4",
            "--max-attempts",
            "50",
        ],
    );
    let _ = server.kill();
    let _ = server.wait();
    let into_medplum = into_medplum?;

    println!("\n== the ledger: unchanged re-run next to the first run");
    for (what, [first, again]) in [
        (format!("{patients} patients, sink"), into_sink),
        (
            format!("{} resources, Medplum mode", medplum_patients * 4),
            into_medplum,
        ),
    ] {
        println!(
            "{what:<34} first run {:>7.1} s   unchanged re-run {:>6.1} s   ({:.1}% of the first)",
            first.as_secs_f64(),
            again.as_secs_f64(),
            100.0 * again.as_secs_f64() / first.as_secs_f64()
        );
    }
    Ok(())
}

/// A first run (with a fresh ledger) and an unchanged re-run of `config`
/// into `server`; their wall-clock times.
fn ledger_passes(
    what: &str,
    config: &Path,
    server: &str,
    options: &[&str],
) -> anyhow::Result<[std::time::Duration; 2]> {
    let dir = config.parent().context("a config has a folder")?;
    let state = dir.join("bench-ledger.fhirlift-state");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", state.display()));
    }
    let mut took = [std::time::Duration::ZERO; 2];
    for (n, pass) in ["first run", "unchanged re-run"].into_iter().enumerate() {
        println!("\n== {what}, {pass}, with the ledger");
        let started = std::time::Instant::now();
        let mut send = Command::new(root().join("target/release/fhirlift"));
        send.args(["migrate", "--config"])
            .arg(config)
            .args(["--server", server])
            .args(options)
            .arg("--state")
            .arg(&state)
            .arg("--rejects")
            .arg(dir.join("bench-rejects.ndjson"));
        run(send)?;
        took[n] = started.elapsed();
        println!("{pass}: {:.1} s wall clock", took[n].as_secs_f64());
    }
    Ok(took)
}

/// The HL7 v2 maps: parse + map of N generated ORU^R01 messages, by the
/// connector's `bench_map` example (its output passes through).
fn bench_hl7v2(args: &[String]) -> anyhow::Result<()> {
    let mut command = cargo();
    command
        .args([
            "run",
            "--quiet",
            "--release",
            "--package",
            "fhirlift-connector-hl7v2",
            "--example",
            "bench_map",
            "--",
        ])
        .args(args);
    run(command)
}

/// `fhirlift migrate CONFIG` (release build) into the sink sandbox on
/// `port`. The sink answers no searches: the conditional strategy measures
/// the planned bundles.
fn send_to_sink(config: &Path, port: &str, dir: &Path) -> anyhow::Result<()> {
    let mut send = Command::new(root().join("target/release/fhirlift"));
    send.args(["migrate", "--config"])
        .arg(config)
        .args(["--server", &format!("http://127.0.0.1:{port}/fhir/R4")])
        .args(["--strategy", "conditional"])
        // every record sent, whatever an earlier bench left in the ledger
        .arg("--full")
        .arg("--rejects")
        .arg(dir.join("bench-rejects.ndjson"));
    run(send)
}

/// The PostgreSQL connector: `rows` patients in a table of a throwaway
/// cluster, read through the cursor, mapped, and sent to a sink sandbox;
/// a tenth of them first, to show memory does not grow with the table.
fn bench_postgres(rows: u64) -> anyhow::Result<()> {
    let cluster = pg::Cluster::start("bench")?;
    let dir = root().join("target/bench-data/postgres");
    std::fs::create_dir_all(&dir)?;
    println!("\n== loading {rows} patients into PostgreSQL");
    let load = format!(
        "CREATE TABLE bench_patients (patient_id text PRIMARY KEY, first_name text, last_name text, birth_date date, gender char(1), updated_at timestamptz);
         INSERT INTO bench_patients
         SELECT 'P' || lpad(i::text, 8, '0'), (ARRAY['Anna','Jörg','Łukasz','Mary'])[1 + i % 4],
                (ARRAY['Müller','O''Brien','Smith'])[1 + i % 3], date '1930-01-01' + (i % 30000),
                (ARRAY['M','F','O','U'])[1 + i % 4], timestamptz '2020-01-01 00:00:00+00' + i * interval '1 minute'
           FROM generate_series(1, {rows}) AS i;
         ANALYZE bench_patients;"
    );
    let mut psql = Command::new("psql");
    psql.args([&cluster.url, "-q", "-v", "ON_ERROR_STOP=1", "-c", &load]);
    run(psql).context("psql loads the benchmark table (it comes with PostgreSQL)")?;
    std::fs::write(dir.join("pg.url"), &cluster.url)?;
    let mapping = |from: &str| {
        format!(
            "source: {{ connector: postgres, url_file: pg.url, fetch: 2000 }}
target: {{ profile: medplum }}
streams:
  patients:
    from: {from}
    key: patient_id
    emit:
      - resourceType: Patient
        identifier: [{{ system: \"http://example-clinic.org/patientId\", value: \"{{{{ patient_id }}}}\" }}]
        name: [{{ given: [\"{{{{ first_name }}}}\"], family: \"{{{{ last_name }}}}\" }}]
        birthDate: \"{{{{ birth_date | fhir_date }}}}\"
        gender: \"{{{{ gender | code(M='male', F='female', O='other', U='unknown') }}}}\"
        meta: {{ lastUpdated: \"{{{{ updated_at }}}}\" }}
"
        )
    };
    let tenth = format!("'P{:08}'", rows / 10);
    std::fs::write(
        dir.join("tenth.yaml"),
        mapping(&format!(
            "SELECT * FROM bench_patients WHERE patient_id <= {tenth}"
        )),
    )?;
    std::fs::write(dir.join("all.yaml"), mapping("bench_patients"))?;
    let port = "18114";
    let mut sink = start_sink(port)?;
    let mut outcome = Ok(());
    for (what, file) in [(rows / 10, "tenth.yaml"), (rows, "all.yaml")] {
        println!("\n== {what} PostgreSQL rows: fhirlift migrate into the sandbox in sink mode");
        outcome = outcome.and(send_to_sink(&dir.join(file), port, &dir));
    }
    let _ = sink.kill();
    let _ = sink.wait();
    drop(cluster);
    outcome
}

/// `patients` generated patients with 3 conditions each, and a config of
/// those two streams; generated once, kept under target/bench-data.
fn strategies_data(patients: u64) -> anyhow::Result<PathBuf> {
    let dir = root().join(format!("target/bench-data/strategies-{patients}"));
    let config = dir.join("patients-conditions.yaml");
    if !config.exists() {
        let mut g = Command::new(root().join("target/release/fhirlift-gen"));
        g.args([
            "--patients",
            &patients.to_string(),
            "--conditions-each",
            "3",
        ])
        .arg(&dir);
        run(g)?;
        let text = std::fs::read_to_string(dir.join("migration.yaml"))?;
        std::fs::write(
            &config,
            &text[..text.find("\n  encounters:").unwrap_or(text.len())],
        )?;
    }
    Ok(config)
}

/// The sandbox in Medplum mode in its own process on `port`, with the
/// server costs of MEDPLUM.md: each write holds one of 4 workers for 4 ms,
/// each search 2 ms, and concurrent conditional writes conflict (409).
fn start_medplum_model(port: &str) -> anyhow::Result<std::process::Child> {
    let mut server = Command::new(root().join("target/release/fhirlift-sandbox"))
        .args(["--medplum", "--transaction-bundles", "--workers", "4"])
        .args([
            "--write-cost-ms",
            "4",
            "--search-cost-ms",
            "2",
            "--conflict-rate",
            "0.05",
        ])
        .args(["--port", port])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("cannot start the sandbox")?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    if let Some(status) = server.try_wait()? {
        bail!("the sandbox stopped at once ({status})");
    }
    Ok(server)
}

/// The two write strategies against the sandbox in Medplum mode: each write
/// holds one of 4 server workers for 4 ms, each search 2 ms, and concurrent
/// conditional writes conflict (409) as on Medplum. Patients with 3
/// conditions each; a first load, then an unchanged re-run.
fn bench_strategies(patients: u64) -> anyhow::Result<()> {
    let config = strategies_data(patients)?;
    let dir = config.parent().context("a config has a folder")?.to_owned();
    let mut results = Vec::new();
    for (n, strategy) in ["conditional", "resolve"].into_iter().enumerate() {
        let port = (18120 + n).to_string();
        let mut server = start_medplum_model(&port)?;
        let mut outcome = Ok(());
        for pass in ["first load", "unchanged re-run"] {
            println!(
                "\n== {patients} patients + {} conditions, strategy {strategy}, {pass}: into the sandbox in Medplum mode",
                patients * 3
            );
            let mut send = Command::new(root().join("target/release/fhirlift"));
            send.args(["migrate", "--config"])
                .arg(&config)
                .args(["--server", &format!("http://127.0.0.1:{port}/fhir/R4")])
                .args([
                    "--strategy",
                    strategy,
                    "--concurrency",
                    "4",
                    "--max-attempts",
                    "50",
                    // the strategies themselves are measured: no ledger delta
                    "--full",
                ])
                .arg("--rejects")
                .arg(dir.join("bench-rejects.ndjson"));
            let started = std::time::Instant::now();
            outcome = outcome.and(run(send));
            results.push((strategy, pass, started.elapsed()));
        }
        let _ = server.kill();
        let _ = server.wait();
        outcome?;
    }
    let resources = (patients * 4) as f64;
    println!("\n== write strategies, {} resources", patients * 4);
    for (strategy, pass, took) in &results {
        println!(
            "{strategy:<12} {pass:<17} {:>8.1} s {:>8.0} resources/s",
            took.as_secs_f64(),
            resources / took.as_secs_f64()
        );
    }
    for pass in ["first load", "unchanged re-run"] {
        let time = |s: &str| {
            results
                .iter()
                .find(|r| r.0 == s && r.1 == pass)
                .map(|r| r.2.as_secs_f64())
                .unwrap_or(f64::NAN)
        };
        println!(
            "resolve is {:.1}x faster than conditional on the {pass}",
            time("conditional") / time("resolve")
        );
    }
    Ok(())
}

/// Throwaway PostgreSQL clusters for the tests and for trying examples.
mod pg {
    use std::ffi::{OsStr, OsString};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    use anyhow::{Context, bail};

    /// A running cluster of our own: `pg_ctl -m immediate stop` when dropped.
    pub struct Cluster {
        /// postgres://postgres@127.0.0.1:PORT/postgres (trust authentication)
        pub url: String,
        tools: Tools,
        data: PathBuf,
        /// a directory of ours under /tmp holding `data`, removed once stopped
        temp: Option<PathBuf>,
    }

    impl Cluster {
        /// Wipes target/pg-test/NAME, then initdb and pg_ctl start there (or
        /// in a fresh directory under /tmp when the postgres user cannot
        /// reach the workspace, or the socket path would be too long).
        pub fn start(name: &str) -> anyhow::Result<Cluster> {
            let root_user = is_root();
            let tools = Tools::find(root_user)?;
            let version = tools.version()?;
            let base = crate::root().join("target/pg-test").join(name);
            // a cluster left running by a run that was killed outright
            if base.join("data/postmaster.pid").exists() {
                let _ = tools
                    .command("pg_ctl", ["-D".as_ref(), base.join("data").as_os_str()])
                    .args(["-m", "immediate", "stop"])
                    .output();
            }
            if base.exists() {
                std::fs::remove_dir_all(&base)
                    .with_context(|| format!("cannot wipe {}", base.display()))?;
            }
            std::fs::create_dir_all(&base)
                .with_context(|| format!("cannot create {}", base.display()))?;
            let mut cluster = Cluster {
                url: String::new(),
                data: base.join("data"),
                temp: None,
                tools,
            };
            if root_user {
                // parents inside the workspace must let postgres through
                let target = crate::root().join("target");
                for dir in [&target, &target.join("pg-test"), &base] {
                    chmod_o_x(dir)?;
                }
            }
            if !socket_fits(&cluster.data) || (root_user && !cluster.tools.can_enter(&base)) {
                let temp = temp_dir()?;
                if root_user {
                    chown_postgres(&temp)?;
                }
                cluster.data = temp.join("data");
                cluster.temp = Some(temp);
            }
            cluster.init()?;
            let port = cluster.launch()?;
            cluster.url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
            println!(
                "postgres: {version} from {}, throwaway cluster at {} (data in {}{})",
                cluster.tools.bin.display(),
                cluster.url,
                cluster.data.display(),
                if root_user {
                    ", run as user postgres"
                } else {
                    ""
                },
            );
            Ok(cluster)
        }

        /// Whether the postmaster is still up (its pid file is there).
        pub fn running(&self) -> bool {
            self.data.join("postmaster.pid").exists()
        }

        pub fn log(&self) -> PathBuf {
            self.data.join("log")
        }

        /// initdb with `--locale=C.UTF-8`, or `C` where that locale is missing.
        fn init(&self) -> anyhow::Result<()> {
            let mut failures = String::new();
            for locale in ["C.UTF-8", "C"] {
                self.fresh_data_dir()?;
                let output = self
                    .tools
                    .command("initdb", ["-D".as_ref(), self.data.as_os_str()])
                    .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
                    .arg(format!("--locale={locale}"))
                    .output()
                    .context("cannot run initdb")?;
                if output.status.success() {
                    return Ok(());
                }
                failures += &format!("--locale={locale}: {}\n", text(&output));
            }
            bail!("initdb -D {} failed:\n{failures}", self.data.display())
        }

        /// An empty data directory, owned by whoever runs the server.
        fn fresh_data_dir(&self) -> anyhow::Result<()> {
            if self.data.exists() {
                std::fs::remove_dir_all(&self.data)?;
            }
            std::fs::create_dir_all(&self.data)
                .with_context(|| format!("cannot create {}", self.data.display()))?;
            if self.tools.as_postgres.is_some() {
                chown_postgres(&self.data)?;
            }
            Ok(())
        }

        /// pg_ctl start on a free port; another port if that one was taken
        /// in the meantime.
        fn launch(&self) -> anyhow::Result<u16> {
            let log = self.log();
            for _attempt in 0..3 {
                let port = std::net::TcpListener::bind(("127.0.0.1", 0))
                    .and_then(|listener| listener.local_addr())
                    .context("cannot find a free port on 127.0.0.1")?
                    .port();
                // pg_ctl hands -o to /bin/sh: quote the socket directory
                let options = format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                     -c synchronous_commit=off -c full_page_writes=off",
                    sh_quote(&self.data.to_string_lossy())
                );
                let output = self
                    .tools
                    .command("pg_ctl", ["-D".as_ref(), self.data.as_os_str()])
                    .arg("-l")
                    .arg(&log)
                    .arg("-o")
                    .arg(options)
                    .args(["-w", "-t", "60", "start"])
                    .output()
                    .context("cannot run pg_ctl")?;
                if output.status.success() {
                    return Ok(port);
                }
                let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                if !log_text.contains("could not bind") {
                    bail!(
                        "pg_ctl start failed: {}\n--- {} ---\n{}",
                        text(&output),
                        log.display(),
                        tail(&log_text, 30)
                    );
                }
            }
            bail!(
                "pg_ctl start failed three times: ports taken; see {}",
                log.display()
            )
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            // always: even without its pid file a postmaster may be running
            let was_running = self.running();
            let stop = self
                .tools
                .command("pg_ctl", ["-D".as_ref(), self.data.as_os_str()])
                .args(["-m", "immediate", "stop"])
                .output();
            match stop {
                Ok(output) if output.status.success() || !was_running => {}
                Ok(output) => eprintln!(
                    "postgres: pg_ctl stop -D {} failed: {}",
                    self.data.display(),
                    text(&output)
                ),
                Err(e) => eprintln!("postgres: cannot run pg_ctl stop: {e}"),
            }
            if let Some(temp) = &self.temp {
                let _ = std::fs::remove_dir_all(temp);
            }
        }
    }

    /// The server's programs, and how to run them.
    struct Tools {
        /// the directory holding initdb, pg_ctl and postgres
        bin: PathBuf,
        /// as root: runuser (or su) to the postgres user
        as_postgres: Option<Switch>,
    }

    enum Switch {
        Runuser(PathBuf),
        Su,
    }

    impl Tools {
        fn find(root_user: bool) -> anyhow::Result<Tools> {
            let bin = match find_bin() {
                Some(bin) => bin,
                None if root_user => {
                    install_postgresql()?;
                    find_bin().context(
                        "apt-get installed postgresql, yet no initdb is on PATH or in \
                         /usr/lib/postgresql/*/bin",
                    )?
                }
                None => bail!(
                    "PostgreSQL not found: no initdb on PATH or in /usr/lib/postgresql/*/bin. \
                     Install it (Debian: `sudo apt-get install postgresql`), or set \
                     {} to a server the tests may use",
                    crate::TEST_PG_URL_VAR
                ),
            };
            let as_postgres = if root_user {
                ensure_postgres_user()?;
                Some(match which("runuser") {
                    Some(runuser) => Switch::Runuser(runuser),
                    None => Switch::Su,
                })
            } else {
                None
            };
            Ok(Tools { bin, as_postgres })
        }

        fn version(&self) -> anyhow::Result<String> {
            let output = Command::new(self.bin.join("postgres"))
                .arg("--version")
                .output()
                .context("cannot run postgres --version")?;
            let version = String::from_utf8_lossy(&output.stdout);
            // "postgres (PostgreSQL) 15.18 (Debian ...)"
            Ok(version
                .trim()
                .strip_prefix("postgres (PostgreSQL) ")
                .map_or_else(|| version.trim().to_owned(), |v| format!("PostgreSQL {v}")))
        }

        /// `bin/TOOL FIRST_ARGS...`, as the postgres user when we are root.
        fn command<'a>(&self, tool: &str, first: impl IntoIterator<Item = &'a OsStr>) -> Command {
            let program = self.bin.join(tool);
            let first: Vec<&OsStr> = first.into_iter().collect();
            let mut command = match &self.as_postgres {
                None => Command::new(program),
                Some(Switch::Runuser(runuser)) => {
                    let mut c = Command::new(runuser);
                    c.args(["-u", "postgres", "--"]).arg(program);
                    c
                }
                Some(Switch::Su) => return SuCommand::new(program).args(first).into(),
            };
            command.args(first).current_dir("/");
            command
        }

        /// Whether the postgres user can traverse to `dir`.
        fn can_enter(&self, dir: &Path) -> bool {
            let mut command = match &self.as_postgres {
                None => return true,
                Some(Switch::Runuser(runuser)) => {
                    let mut c = Command::new(runuser);
                    c.args(["-u", "postgres", "--", "test", "-x"]).arg(dir);
                    c
                }
                Some(Switch::Su) => SuCommand::new("test".into())
                    .args(["-x".as_ref(), dir.as_os_str()])
                    .into(),
            };
            command
                .current_dir("/")
                .output()
                .is_ok_and(|o| o.status.success())
        }
    }

    /// `su postgres -s /bin/sh -c 'PROGRAM ARGS...'`, arguments added later
    /// are quoted into the one command line as well: see `Into<Command>`.
    struct SuCommand {
        words: Vec<OsString>,
    }

    impl SuCommand {
        fn new(program: PathBuf) -> SuCommand {
            SuCommand {
                words: vec![program.into_os_string()],
            }
        }

        fn args<'a>(mut self, args: impl IntoIterator<Item = &'a OsStr>) -> SuCommand {
            self.words.extend(args.into_iter().map(OsStr::to_owned));
            self
        }
    }

    impl From<SuCommand> for Command {
        fn from(su: SuCommand) -> Command {
            // The program and the first arguments go into the -c script;
            // further arguments reach it as "$@" (su passes them on after
            // `--`, with $0 named by the first one).
            let mut script: Vec<String> = su
                .words
                .iter()
                .map(|w| sh_quote(&w.to_string_lossy()))
                .collect();
            script.push("\"$@\"".into());
            let mut c = Command::new("su");
            c.args(["postgres", "-s", "/bin/sh", "-c"])
                .arg(script.join(" "))
                .args(["--", "sh"])
                .current_dir("/");
            c
        }
    }

    /// initdb's directory: from PATH (symlinks followed), else the newest
    /// /usr/lib/postgresql/VERSION/bin.
    fn find_bin() -> Option<PathBuf> {
        let complete = |dir: &Path| {
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|t| dir.join(t).is_file())
        };
        if let Some(initdb) = which("initdb")
            && let Some(dir) = initdb.canonicalize().ok()?.parent()
            && complete(dir)
        {
            return Some(dir.to_path_buf());
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                complete(&bin).then_some((version, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    }

    fn install_postgresql() -> anyhow::Result<()> {
        println!("postgres: no PostgreSQL found; installing it with apt-get");
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        };
        if apt(&["install", "-y", "postgresql"]) {
            return Ok(());
        }
        // a fresh machine may have no package lists yet
        if apt(&["update"]) && apt(&["install", "-y", "postgresql"]) {
            return Ok(());
        }
        bail!(
            "`apt-get install -y postgresql` failed: install PostgreSQL, or set {} \
             to a server the tests may use",
            crate::TEST_PG_URL_VAR
        )
    }

    /// initdb and postgres refuse root: they run as `postgres`, which the
    /// Debian package creates; create it when only the binaries are there.
    fn ensure_postgres_user() -> anyhow::Result<()> {
        let exists = || {
            Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if exists() {
            return Ok(());
        }
        println!("postgres: creating the system user postgres to run the server");
        let created = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .args(["--shell", "/bin/sh", "postgres"])
            .status()
            .is_ok_and(|s| s.success());
        if !created || !exists() {
            bail!(
                "running as root, and there is no user postgres to run PostgreSQL as \
                 (useradd failed): create one, or set {}",
                crate::TEST_PG_URL_VAR
            );
        }
        Ok(())
    }

    /// `id -u` says 0.
    fn is_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
    }

    fn which(name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    }

    fn chmod_o_x(dir: &Path) -> anyhow::Result<()> {
        let status = Command::new("chmod")
            .arg("o+x")
            .arg(dir)
            .status()
            .context("cannot run chmod")?;
        if !status.success() {
            bail!("chmod o+x {} failed", dir.display());
        }
        Ok(())
    }

    fn chown_postgres(dir: &Path) -> anyhow::Result<()> {
        let status = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(dir)
            .status()
            .context("cannot run chown")?;
        if !status.success() {
            bail!("chown -R postgres: {} failed", dir.display());
        }
        Ok(())
    }

    /// A new, private directory under /tmp.
    fn temp_dir() -> anyhow::Result<PathBuf> {
        use std::time::{SystemTime, UNIX_EPOCH};
        for n in 0..100u32 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let dir = PathBuf::from(format!(
                "/tmp/fhirlift-pg-{}-{nanos:08x}{n}",
                std::process::id()
            ));
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    let status = Command::new("chmod").arg("700").arg(&dir).status()?;
                    if !status.success() {
                        bail!("chmod 700 {} failed", dir.display());
                    }
                    return Ok(dir);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).context(format!("cannot create {}", dir.display())),
            }
        }
        bail!("cannot create a directory under /tmp")
    }

    /// Unix socket paths hold at most 107 bytes.
    fn socket_fits(data: &Path) -> bool {
        data.join(".s.PGSQL.65535.lock").as_os_str().len() < 100
    }

    fn sh_quote(word: &str) -> String {
        format!("'{}'", word.replace('\'', r"'\''"))
    }

    fn text(output: &Output) -> String {
        let mut all = String::from_utf8_lossy(&output.stderr).into_owned();
        all += &String::from_utf8_lossy(&output.stdout);
        let all = all.trim();
        if all.is_empty() {
            format!("{}", output.status)
        } else {
            all.to_owned()
        }
    }

    fn tail(text: &str, lines: usize) -> String {
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Ctrl-C (and SIGTERM, SIGHUP) noted rather than fatal, so that what was
/// started gets stopped.
mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    static REQUESTED: AtomicBool = AtomicBool::new(false);

    pub fn requested() -> bool {
        REQUESTED.load(Ordering::SeqCst)
    }

    #[cfg(unix)]
    pub fn catch() {
        // signal(2) of the C library std links anyway (no crate needed)
        unsafe extern "C" {
            fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
        }
        extern "C" fn note(_: i32) {
            REQUESTED.store(true, Ordering::SeqCst);
        }
        // SIGHUP, SIGINT, SIGTERM: the same numbers on every Unix
        for signum in [1, 2, 15] {
            // SAFETY: the handler only stores to an atomic
            unsafe {
                signal(signum, note);
            }
        }
    }

    #[cfg(not(unix))]
    pub fn catch() {}
}

#[cfg(test)]
mod tests {
    use super::redact_password;

    #[test]
    fn passwords_are_not_printed() {
        let shown = |url| redact_password(url);
        assert_eq!(shown("postgres://u:sec@h:5/db"), "postgres://u:***@h:5/db");
        assert_eq!(shown("postgres://u:sec@h"), "postgres://u:***@h");
        assert_eq!(shown("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            shown("postgres://h/db?password=x&a=b"),
            "postgres://h/db?..."
        );
        assert!(!shown("host=h password=sec").contains("sec"));
        assert_eq!(shown("host=h user=u"), "host=h user=u");
    }
}
