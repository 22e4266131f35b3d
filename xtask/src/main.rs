//! `cargo xtask`: every chore of the project, in Rust, with no tools beyond cargo.
//!
//! - `cargo xtask migrate [ARGS]`: runs `fhirlift migrate` on the bundled
//!   example (examples/medplum-guide) unless ARGS name another migration;
//!   without a server it starts the embedded sandbox, whose store lives in
//!   target/fhirlift-demo/ between runs.
//! - `cargo xtask sandbox [ARGS]`: the sandbox server on its own.
//! - `cargo xtask test [ARGS]`: starts what the tests need and runs them all.
//! - `cargo xtask gen --patients N DIR`: the example's tables at any size.
//! - `cargo xtask bench [--patients N]`: map + plan throughput and peak memory
//!   of the release build on generated data, sending to a sink sandbox, the
//!   two write strategies against the sandbox in Medplum mode, then the
//!   criterion benchmarks. `cargo xtask bench medplum [--patients N]` runs
//!   only the strategy comparison.

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
                 gen --patients N DIR     write the example's tables at any size\n  \
                 sandbox [ARGS]           run the sandbox FHIR server (--help for its knobs)\n  \
                 bench [--patients N]     measure map + plan throughput and memory\n  \
                 bench medplum            compare the write strategies against Medplum mode"
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
    }
    command.args(args);
    run(command)
}

fn test(args: &[String]) -> anyhow::Result<()> {
    // Nothing to start beforehand: the tests start their own sandbox servers
    // on loopback. Some spawn the fhirlift binary (to read its real logs):
    // build the binaries first, which `cargo test` alone does not.
    let mut bins = cargo();
    bins.args(["build", "--workspace", "--bins"]);
    run(bins)?;
    // --all-targets: benchmarks run once on small data, so they cannot rot.
    let mut all = cargo();
    all.args(["test", "--workspace", "--all-targets"])
        .args(args);
    let mut doc = cargo();
    doc.args(["test", "--workspace", "--doc"]);
    let mut tally = Tally::default();
    let outcome = tally.run(all).and_then(|()| tally.run(doc));
    // one closing line for the whole suite, whatever the last binary was
    println!("tests: {} passed, {} failed", tally.passed, tally.failed);
    outcome
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
    let mut patients: u64 = 1_000_000;
    let mut strategies_only = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "medplum" => strategies_only = true,
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
    let mut sink = Command::new(root().join("target/release/fhirlift-sandbox"))
        .args(["--sink", "--port", port])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("cannot start the sandbox")?;
    std::thread::sleep(std::time::Duration::from_millis(500));
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
        let mut send = Command::new(root().join("target/release/fhirlift"));
        send.args(["migrate", "--config"])
            .arg(file)
            .args(["--server", &format!("http://127.0.0.1:{port}/fhir/R4")])
            // the sink answers no searches: measure the planned bundles
            .args(["--strategy", "conditional"])
            .arg("--rejects")
            .arg(dir.join("bench-rejects.ndjson"));
        outcome = outcome.and(run(send));
    }
    let _ = sink.kill();
    let _ = sink.wait();
    outcome?;
    bench_strategies(20_000)?;
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

/// The two write strategies against the sandbox in Medplum mode: each write
/// holds one of 4 server workers for 4 ms, each search 2 ms, and concurrent
/// conditional writes conflict (409) as on Medplum. Patients with 3
/// conditions each; a first load, then an unchanged re-run.
fn bench_strategies(patients: u64) -> anyhow::Result<()> {
    let dir = root().join(format!("target/bench-data/strategies-{patients}"));
    if !dir.join("patients-conditions.yaml").exists() {
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
            dir.join("patients-conditions.yaml"),
            &text[..text.find("\n  encounters:").unwrap_or(text.len())],
        )?;
    }
    let mut results = Vec::new();
    for (n, strategy) in ["conditional", "resolve"].into_iter().enumerate() {
        let port = (18120 + n).to_string();
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
            .args(["--port", &port])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("cannot start the sandbox")?;
        std::thread::sleep(std::time::Duration::from_millis(500));
        if let Some(status) = server.try_wait()? {
            bail!("the sandbox stopped at once ({status})");
        }
        let mut outcome = Ok(());
        for pass in ["first load", "unchanged re-run"] {
            println!(
                "\n== {patients} patients + {} conditions, strategy {strategy}, {pass}: into the sandbox in Medplum mode",
                patients * 3
            );
            let mut send = Command::new(root().join("target/release/fhirlift"));
            send.args(["migrate", "--config"])
                .arg(dir.join("patients-conditions.yaml"))
                .args(["--server", &format!("http://127.0.0.1:{port}/fhir/R4")])
                .args([
                    "--strategy",
                    strategy,
                    "--concurrency",
                    "4",
                    "--max-attempts",
                    "50",
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
