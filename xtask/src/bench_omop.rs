//! `cargo xtask bench omop [--persons N]` (100,000 by default): the built-in
//! OMOP map (`map: omop`) on a generated CDM 5.4 database.
//!
//! A throwaway PostgreSQL cluster gets a database loaded with
//! examples/omop/schema.sql, seed.sql (its concepts and four people) and
//! generate.sql's `cdm_generate(N)`: about 23 rows a person over the tables
//! the map reads. The release `fhirlift migrate` of
//! examples/omop/migration.yaml, pointed at that database, runs into a
//! sandbox in its own process (so the peak memory printed is fhirlift's
//! alone):
//!
//! 1. N persons into the sandbox in sink mode (it parses and counts,
//!    answering at once): fhirlift's own cost of reading, mapping, sending.
//! 2. The ledger: a first run with a fresh ledger into the sandbox proper
//!    (it validates and stores; on a small machine it shares the cores with
//!    fhirlift), then the same again unchanged: the re-run reads the source
//!    and the ledger, finds that the server still holds a sample of what
//!    the ledger says it acknowledged, and sends nothing. A sink holds
//!    nothing, so a re-run into it would be sent in full; and the sandbox
//!    holds what it stores in memory (about 8 KB a resource), so this pair
//!    reads a second database of at most [`LEDGER_PERSONS`] persons.
//!
//! A table closes: rows read, resources, seconds, rows/s, resources/s and
//! fhirlift's peak memory, per run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::bench::{migrate_into, start_sandbox};
use crate::{build_release, number_after, pg, root, run, shown};

/// Persons of the database the ledger's two runs read: the sandbox they
/// write to keeps everything in memory (2 GB for these).
const LEDGER_PERSONS: u64 = 10_000;

/// What one `fhirlift migrate` run read, wrote, took and held.
struct Pass {
    what: &'static str,
    persons: u64,
    rows: u64,
    resources: u64,
    secs: f64,
    peak_mb: Option<u64>,
}

pub fn omop(args: &[String]) -> anyhow::Result<()> {
    let mut persons: u64 = 100_000;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--persons" => persons = number_after(a, &mut it)?,
            other => bail!("unknown option {other:?}: cargo xtask bench omop [--persons N]"),
        }
    }
    build_release(&[
        ("fhirlift", "fhirlift"),
        ("fhirlift-sandbox", "fhirlift-sandbox"),
    ])?;
    let cluster = pg::Cluster::start("bench-omop")?;
    let ledger_persons = persons.min(LEDGER_PERSONS);
    let passes = database(&cluster.url, "omop", persons).and_then(|config| {
        // fresh ledgers: the sink's, and the pair's below
        let states =
            ["sink", "ledger"].map(|n| config.with_file_name(format!("{n}.fhirlift-state")));
        for state in &states {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", state.display()));
            }
        }
        let mut passes = vec![];
        // 1. fhirlift's own cost: every record to a sink
        with_sandbox("18117", &["--sink"], |port| {
            let mut send = migrate(&config, port);
            send.arg("--full").arg("--state").arg(&states[0]);
            passes.push(measure("first run, sink", persons, send)?);
            Ok(())
        })?;
        // 2. a server that keeps what it is sent, so that the re-run's
        // check of the ledger finds it there
        let config = if ledger_persons == persons {
            config
        } else {
            database(&cluster.url, "omop_ledger", ledger_persons)?
        };
        with_sandbox("18118", &[], |port| {
            for what in ["first run, sandbox", "unchanged re-run"] {
                let mut send = migrate(&config, port);
                send.arg("--state").arg(&states[1]);
                passes.push(measure(what, ledger_persons, send)?);
            }
            Ok(())
        })?;
        Ok(passes)
    });
    drop(cluster);
    let passes = passes?;

    println!(
        "\n== map: omop: fhirlift migrate (release build, {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<19} {:>8} {:>10} {:>10} {:>8} {:>9} {:>12} {:>9}",
        "run", "persons", "rows read", "resources", "seconds", "rows/s", "resources/s", "peak RSS"
    );
    for p in &passes {
        println!(
            "{:<19} {:>8} {:>10} {:>10} {:>8.1} {:>9.0} {:>12.0} {:>9}",
            p.what,
            p.persons,
            p.rows,
            p.resources,
            p.secs,
            p.rows as f64 / p.secs,
            p.resources as f64 / p.secs,
            p.peak_mb.map_or("?".into(), |mb| format!("{mb} MB")),
        );
    }
    Ok(())
}

/// A database `name` in the cluster at `url` with the CDM tables and
/// `persons` generated people, and target/bench-data/omop/NAME.yaml: the
/// example's migration reading it.
fn database(url: &str, name: &str, persons: u64) -> anyhow::Result<PathBuf> {
    let db_url = match url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => bail!("a cluster URL ends in its database: {url}"),
    };
    println!("\n== {name}: {persons} persons of OMOP CDM data (examples/omop/generate.sql)");
    let started = Instant::now();
    let mut create = psql(url);
    create.args(["-c", &format!("CREATE DATABASE {name}")]);
    run(create).context("psql creates the bench database (it comes with PostgreSQL)")?;
    let omop = Path::new("examples/omop");
    let mut fill = psql(&db_url);
    for file in ["schema.sql", "seed.sql", "generate.sql"] {
        fill.arg("-f").arg(omop.join(file));
    }
    fill.args(["-c", &format!("SELECT cdm_generate({persons})")]);
    run(fill)?;
    println!("loaded in {:.1} s", started.elapsed().as_secs_f64());

    let dir = root().join("target/bench-data/omop");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{name}.url")), &db_url)?;
    // the example's migration, reading its URL from the file beside it
    let example = std::fs::read_to_string(root().join("examples/omop/migration.yaml"))?;
    let url_env = "url_env: FHIRLIFT_PG_URL";
    if !example.contains(url_env) {
        bail!(
            "examples/omop/migration.yaml has no `{url_env}` line to point at the bench database"
        );
    }
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        example.replace(url_env, &format!("url_file: {name}.url")),
    )?;
    Ok(config)
}

/// psql on `url`, stopping at the first error, printing neither notices
/// nor query results.
fn psql(url: &str) -> Command {
    let mut psql = Command::new("psql");
    psql.args([url, "-q", "-v", "ON_ERROR_STOP=1", "-o", "/dev/null"])
        .env("PGOPTIONS", "-c client_min_messages=warning");
    psql
}

/// `f` with the sandbox (its `options`) on `port`, stopped afterwards.
fn with_sandbox(
    port: &str,
    options: &[&str],
    f: impl FnOnce(&str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut sandbox = start_sandbox(port, options)?;
    let outcome = f(port);
    let _ = sandbox.kill();
    let _ = sandbox.wait();
    outcome
}

/// The release `fhirlift migrate CONFIG` into the sandbox on `port`.
fn migrate(config: &Path, port: &str) -> Command {
    migrate_into(config, port, &config.with_extension("rejects.ndjson"))
}

/// Runs `send` on `persons` persons, timing it; what its summary says it
/// read and wrote.
fn measure(what: &'static str, persons: u64, send: Command) -> anyhow::Result<Pass> {
    println!("\n== map: omop, {persons} persons, {what}: fhirlift migrate");
    let started = Instant::now();
    let summary = run_teed(send)?;
    let secs = started.elapsed().as_secs_f64();
    let (rows, resources, peak_mb) = parse_summary(&summary)
        .with_context(|| format!("no run summary in what fhirlift printed ({what})"))?;
    Ok(Pass {
        what,
        persons,
        rows,
        resources,
        secs,
        peak_mb,
    })
}

/// Runs `command` to its end, passing its standard output through; that
/// output.
fn run_teed(mut command: Command) -> anyhow::Result<String> {
    let shown = shown(&command);
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let mut out = String::new();
    for line in BufReader::new(child.stdout.take().expect("piped above")).lines() {
        let line = line?;
        println!("{line}");
        out.push_str(&line);
        out.push('\n');
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(out)
}

/// From a `fhirlift migrate` summary: the records its streams read (the
/// table under `phase stream records ...`), the resources of its closing
/// line, and the peak memory that line gives (MB).
fn parse_summary(text: &str) -> Option<(u64, u64, Option<u64>)> {
    let mut lines = text.lines();
    lines.by_ref().find(|l| l.starts_with("phase "))?;
    let mut rows = 0;
    // a stream's row starts with its phase; the notes under it are indented
    for line in lines.take_while(|l| !l.trim().is_empty()) {
        if line.starts_with(|c: char| c.is_ascii_digit()) {
            rows += line.split_whitespace().nth(2)?.parse::<u64>().ok()?;
        }
    }
    let closing = text
        .lines()
        .rev()
        .find(|l| l.contains(" resources ") && l.contains(" requests, "))?;
    let resources = closing.split(' ').next()?.parse().ok()?;
    let peak_mb = closing
        .split_once("peak memory ")
        .and_then(|(_, mb)| mb.split(' ').next()?.parse().ok());
    Some((rows, resources, peak_mb))
}

#[cfg(test)]
mod tests {
    use super::parse_summary;

    #[test]
    fn a_run_summary_gives_rows_resources_and_memory() {
        let summary = "\
phase stream                  records  rejected   skipped  requests  resources
1     cdm.person                   4         0         0         1  Patient 4
      skipped 1: something
2     cdm.measurement             12         0         0         1  Observation 12

stream               resource                 created
16 resources accounted for in 2 requests, 0 records rejected, 0.10 s (160 resources/s), peak memory 21 MB
ledger: x
";
        assert_eq!(parse_summary(summary), Some((16, 16, Some(21))));
    }
}
