//! `cargo xtask bench medplum --real [--patients N]` (500 by default):
//! fhirlift against the real Medplum server of the kit, next to what that
//! server takes at most.
//!
//! On guide-shaped data (`fhirlift-gen`: patients, their conditions, their
//! encounters with a ClinicalImpression note each, all streams of the
//! generated migration.yaml), each run into a FRESH `fast` project (raised
//! quota, `medplum-project --json NAME fast`):
//!
//! 1. `fhirlift migrate --strategy resolve`: a first load, then the same
//!    again with the same ledger (the unchanged re-run);
//! 2. the same with `--strategy conditional`;
//! 3. the ceiling: `fhirlift-ceiling` POSTs the same resources (from a dry
//!    run of the same migration) as plain creates, references already
//!    `Type/id`, no search, 100 entries a bundle, 8 in flight; once as
//!    batches, once as transactions.
//!
//! Then one table: time, resources/s, and fhirlift's first load as a share
//! of the ceiling. The server is started as `cargo xtask test` starts it
//! (and stopped afterwards if it was not running). Client secrets reach the
//! commands through the environment and are never printed.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::medplum::{Medplum, Project};
use crate::{build_release, interrupt, number_after, root, run, shown};
use serde_json::Value;

/// The environment variable the benchmark hands a project's secret in.
const SECRET_VAR: &str = "FHIRLIFT_BENCH_CLIENT_SECRET";

/// One line of the closing table.
struct Row {
    what: String,
    secs: f64,
    resources: u64,
}

/// `cargo xtask bench medplum --real [--patients N]`; `args` follow `medplum`.
pub fn real(args: &[String]) -> anyhow::Result<()> {
    let mut patients: u64 = 500;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--real" => {}
            "--patients" => patients = number_after(a, &mut it)?,
            other => bail!("unknown option {other:?} for `bench medplum --real`"),
        }
    }
    build_release(&[
        ("fhirlift", "fhirlift"),
        ("fhirlift-tests", "fhirlift-gen"),
        ("fhirlift-tests", "fhirlift-ceiling"),
    ])?;
    // Ctrl-C stops the step in progress; a server started here is stopped
    // when `medplum` is dropped
    interrupt::catch();
    let medplum = Medplum::for_tests()?;
    println!("medplum: the benchmark uses {}", medplum.describe());

    let dir = root().join(format!("target/bench-data/medplum-real-{patients}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot wipe {}", dir.display()))?;
    }
    let counts = generate(&dir, patients)?;
    let resources = counts.patients + counts.conditions + 2 * counts.encounters;
    println!(
        "\n== data: {} patients, {} conditions, {} encounters (each with a ClinicalImpression): \
         {resources} resources, {:.1} per patient",
        counts.patients,
        counts.conditions,
        counts.encounters,
        resources as f64 / counts.patients as f64
    );

    let mut rows = Vec::new();
    for strategy in ["resolve", "conditional"] {
        check_interrupt()?;
        let project = medplum.fresh_project(&format!("bench-{strategy}-{patients}"), "fast")?;
        let state = dir.join(format!("{strategy}.fhirlift-state"));
        for pass in ["first load", "unchanged re-run"] {
            check_interrupt()?;
            println!(
                "\n== fhirlift, strategy {strategy}, {pass} (Project/{})",
                project.id
            );
            let slug = format!("{strategy}-{}", pass.split(' ').next().unwrap_or(pass));
            let secs = migrate(&medplum, &project, &dir, strategy, &state, &slug)?;
            let report = parse_json(
                &std::fs::read_to_string(dir.join(format!("report-{slug}.json")))
                    .context("fhirlift wrote no report")?,
            )
            .context("fhirlift's report")?;
            let totals = Totals::of(&report);
            println!(
                "{strategy} {pass}: {secs:.2} s, {:.0} resources/s; created {}, updated {}, \
                 unchanged {} ({} records skipped by the ledger), rejected {}; sent {} write \
                 requests and {} searches; {} operations retried",
                totals.resources as f64 / secs,
                totals.created,
                totals.updated,
                totals.unchanged,
                totals.ledger_unchanged,
                totals.rejected,
                totals.writes,
                totals.searches,
                totals.retried
            );
            if totals.resources != resources {
                println!(
                    "note: the report counts {} resources, the data {resources}",
                    totals.resources
                );
            }
            rows.push(Row {
                what: format!("fhirlift {strategy}, {pass}"),
                secs,
                resources: totals.resources,
            });
        }
    }
    for form in ["batch", "transaction"] {
        check_interrupt()?;
        let project = medplum.fresh_project(&format!("bench-ceiling-{form}-{patients}"), "fast")?;
        println!(
            "\n== ceiling: plain POSTs as {form} bundles (Project/{})",
            project.id
        );
        let (secs, written) = ceiling(&medplum, &project, &dir, form)?;
        if written != resources {
            println!("note: the ceiling wrote {written} resources, the data has {resources}");
        }
        rows.push(Row {
            what: format!("ceiling, plain POST {form} bundles"),
            secs,
            resources: written,
        });
    }
    print_table(patients, resources, &rows);
    drop(medplum);
    Ok(())
}

/// Stops between steps after Ctrl-C.
fn check_interrupt() -> anyhow::Result<()> {
    if interrupt::requested() {
        bail!("interrupted");
    }
    Ok(())
}

/// What `fhirlift-gen` wrote.
struct Counts {
    patients: u64,
    conditions: u64,
    encounters: u64,
}

/// `fhirlift-gen --patients N DIR`, its counts read from the line it prints
/// ("wrote P patients, C conditions, E encounters to ...").
fn generate(dir: &Path, patients: u64) -> anyhow::Result<Counts> {
    let mut gen_command = Command::new(root().join("target/release/fhirlift-gen"));
    gen_command
        .args(["--patients", &patients.to_string()])
        .arg(dir);
    let output = gen_command
        .output()
        .with_context(|| format!("cannot start {}", shown(&gen_command)))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}",
            shown(&gen_command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    print!("{text}");
    // "wrote P patients, C conditions, E encounters to DIR/data, and ..."
    let words: Vec<&str> = text.split_whitespace().collect();
    let count = |word: &str| {
        words
            .windows(2)
            .find(|pair| pair[1].trim_end_matches(',') == word)
            .and_then(|pair| pair[0].parse().ok())
            .with_context(|| format!("fhirlift-gen printed no count of {word}: {text:?}"))
    };
    Ok(Counts {
        patients: count("patients")?,
        conditions: count("conditions")?,
        encounters: count("encounters")?,
    })
}

/// `fhirlift migrate` of the whole generated migration into `project`;
/// the wall-clock seconds. A run that rejected records still counts (the
/// report says how many); any other failure stops the benchmark.
fn migrate(
    medplum: &Medplum,
    project: &Project,
    dir: &Path,
    strategy: &str,
    state: &Path,
    slug: &str,
) -> anyhow::Result<f64> {
    let mut command = Command::new(root().join("target/release/fhirlift"));
    command
        .args(["migrate", "--config"])
        .arg(dir.join("migration.yaml"))
        .args(["--server", &medplum.url])
        .args(["--client-id", &project.client_id])
        .args(["--client-secret-env", SECRET_VAR])
        .args(["--strategy", strategy])
        .arg("--report")
        .arg(dir.join(format!("report-{slug}.json")))
        .arg("--state")
        .arg(state)
        .arg("--rejects")
        .arg(dir.join(format!("rejects-{slug}.ndjson")))
        .env(SECRET_VAR, &project.client_secret);
    let started = Instant::now();
    let status = command
        .status()
        .with_context(|| format!("cannot start {}", shown(&command)))?;
    let secs = started.elapsed().as_secs_f64();
    match status.code() {
        Some(0) => {}
        // fhirlift's exit code when records were rejected
        Some(2) => println!("note: fhirlift rejected records (see rejects-{slug}.ndjson)"),
        _ => bail!("{} failed ({status})", shown(&command)),
    }
    Ok(secs)
}

/// `fhirlift-ceiling` into `project` as `form` bundles; seconds and resources
/// written, from its report.
fn ceiling(
    medplum: &Medplum,
    project: &Project,
    dir: &Path,
    form: &str,
) -> anyhow::Result<(f64, u64)> {
    let report = dir.join(format!("ceiling-{form}.json"));
    let mut command = Command::new(root().join("target/release/fhirlift-ceiling"));
    command
        .args(["--server", &medplum.url])
        .args(["--client-id", &project.client_id])
        .args(["--client-secret-env", SECRET_VAR])
        .arg("--config")
        .arg(dir.join("migration.yaml"))
        .args(["--form", form, "--chunk", "100", "--concurrency", "8"])
        .arg("--work")
        .arg(dir.join("ceiling-dry-run"))
        .arg("--report")
        .arg(&report)
        .env(SECRET_VAR, &project.client_secret);
    run(command)?;
    let report =
        parse_json(&std::fs::read_to_string(&report).context("fhirlift-ceiling wrote no report")?)?;
    let secs = report
        .get("seconds")
        .and_then(Value::as_f64)
        .context("the ceiling's report has no seconds")?;
    let written = report
        .get("resources")
        .and_then(Value::as_u64)
        .context("the ceiling's report has no resources")?;
    Ok((secs, written))
}

/// JSON text as a value, or why not.
fn parse_json(text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).context("not JSON")
}

/// The totals of a `fhirlift migrate --report` file (a `RunSummary`).
#[derive(Debug, Default, PartialEq)]
struct Totals {
    resources: u64,
    created: u64,
    updated: u64,
    unchanged: u64,
    rejected: u64,
    ledger_unchanged: u64,
    retried: u64,
    writes: u64,
    searches: u64,
}

impl Totals {
    fn of(report: &Value) -> Totals {
        let n = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64).unwrap_or(0);
        let mut t = Totals::default();
        for stream in report
            .get("streams")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
        {
            t.ledger_unchanged += n(stream, "unchanged_records");
            t.retried += n(stream, "retried");
            if let Some(resources) = stream.get("resources") {
                t.resources += resources
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(_, v)| v.as_u64())
                    .sum::<u64>();
            }
            for (_, counts) in stream
                .get("written")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                t.created += n(counts, "created");
                t.updated += n(counts, "updated");
                t.unchanged += n(counts, "unchanged");
                t.rejected += n(counts, "rejected");
            }
        }
        if let Some(traffic) = report.get("traffic") {
            t.writes = n(traffic, "writes");
            t.searches = n(traffic, "searches");
        }
        t
    }
}

/// The closing table: each run's time and rate, and its share of the
/// faster ceiling.
fn print_table(patients: u64, resources: u64, rows: &[Row]) {
    let rate = |r: &Row| r.resources as f64 / r.secs.max(1e-9);
    let ceiling = rows
        .iter()
        .filter(|r| r.what.starts_with("ceiling"))
        .map(rate)
        .fold(f64::NAN, f64::max);
    println!(
        "\n== real Medplum, {patients} patients = {resources} resources, a fresh `fast` project each"
    );
    println!(
        "{:<40} {:>9} {:>13} {:>12}",
        "run", "seconds", "resources/s", "of ceiling"
    );
    for row in rows {
        // a re-run the ledger answers sends nothing: no share of a ceiling
        let share = if row.what.ends_with("re-run") {
            "-".to_owned()
        } else {
            format!("{:.0}%", 100.0 * rate(row) / ceiling)
        };
        println!(
            "{:<40} {:>9.2} {:>13.0} {:>12}",
            row.what,
            row.secs,
            rate(row),
            share
        );
    }
    for strategy in ["resolve", "conditional"] {
        let first = rows
            .iter()
            .find(|r| r.what == format!("fhirlift {strategy}, first load"));
        for form in ["batch", "transaction"] {
            let ceiling = rows
                .iter()
                .find(|r| r.what == format!("ceiling, plain POST {form} bundles"));
            if let (Some(first), Some(ceiling)) = (first, ceiling) {
                println!(
                    "fhirlift {strategy} first load / ceiling ({form}): {:.2}",
                    rate(first) / rate(ceiling)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Totals, parse_json};

    #[test]
    fn totals_of_a_report() {
        let report = parse_json(
            r#"{"streams": [
                 {"stream": "patients", "resources": {"Patient": 3}, "rejected": 1,
                  "unchanged_records": 1, "retried": 2,
                  "written": {"Patient": {"created": 1, "updated": 0, "unchanged": 1, "rejected": 1}}},
                 {"stream": "encounters", "resources": {"Encounter": 1, "ClinicalImpression": 1},
                  "rejected": 0, "unchanged_records": 0, "retried": 0,
                  "written": {"Encounter": {"created": 1, "updated": 0, "unchanged": 0, "rejected": 0},
                              "ClinicalImpression": {"created": 0, "updated": 1, "unchanged": 0, "rejected": 0}}}],
               "traffic": {"writes": 4, "searches": 2}, "elapsed": 1.5, "rejects_file": null}"#,
        )
        .unwrap();
        let t = Totals::of(&report);
        assert_eq!(
            t,
            Totals {
                resources: 5,
                created: 2,
                updated: 1,
                unchanged: 1,
                rejected: 1,
                ledger_unchanged: 1,
                retried: 2,
                writes: 4,
                searches: 2,
            }
        );
    }
}
