//! The benchmarks behind `cargo xtask bench`: map + plan throughput and
//! memory, sending to a sink sandbox, the write strategies against the
//! sandbox in Medplum mode, the ledger, PostgreSQL and HL7 v2; the run
//! against the real Medplum server is in `bench_medplum.rs`, the OMOP map's
//! in `bench_omop.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::{build_release, cargo, number_after, pg, root, run};

/// `cargo xtask bench [medplum [--real] | postgres | ledger | hl7v2] [--patients N]`.
pub fn bench(args: &[String]) -> anyhow::Result<()> {
    if args.first().is_some_and(|a| a == "hl7v2") {
        return bench_hl7v2(&args[1..]);
    }
    if args.iter().any(|a| a == "--real") {
        if args.first().is_none_or(|a| a != "medplum") {
            bail!(
                "--real goes with `bench medplum`: cargo xtask bench medplum --real [--patients N]"
            );
        }
        return crate::bench_medplum::real(&args[1..]);
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
            "--patients" => patients = number_after(a, &mut it)?,
            other => bail!("unknown bench option {other:?}"),
        }
    }
    build_release(&[
        ("fhirlift", "fhirlift"),
        ("fhirlift-tests", "fhirlift-gen"),
        ("fhirlift-sandbox", "fhirlift-sandbox"),
    ])?;
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
    start_sandbox(port, &["--sink"])
}

/// The release sandbox with `options` in its own process on `port`.
pub fn start_sandbox(port: &str, options: &[&str]) -> anyhow::Result<std::process::Child> {
    let mut sandbox = Command::new(root().join("target/release/fhirlift-sandbox"))
        .args(options)
        .args(["--port", port])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("cannot start the sandbox")?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    if let Some(status) = sandbox.try_wait()? {
        bail!("the sandbox stopped at once ({status})");
    }
    Ok(sandbox)
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
/// `port`, every record sent whatever an earlier bench left in the ledger.
fn send_to_sink(config: &Path, port: &str, dir: &Path) -> anyhow::Result<()> {
    let mut send = migrate_into(config, port, &dir.join("bench-rejects.ndjson"));
    send.arg("--full");
    run(send)
}

/// The release `fhirlift migrate CONFIG` into the sandbox on `port`, its
/// rejects in `rejects`. A sink answers no searches: the conditional
/// strategy measures the planned bundles.
pub fn migrate_into(config: &Path, port: &str, rejects: &Path) -> Command {
    let mut send = Command::new(root().join("target/release/fhirlift"));
    send.args(["migrate", "--config"])
        .arg(config)
        .args(["--server", &format!("http://127.0.0.1:{port}/fhir/R4")])
        .args(["--strategy", "conditional"])
        .arg("--rejects")
        .arg(rejects);
    send
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
