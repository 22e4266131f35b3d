//! fhirlift-report: a run as one self-contained HTML file (`--report-html`
//! on `migrate`, `retry-rejects` and `verify`), readable on a laptop
//! screen with no network: per phase and stream what was read and what
//! became of it, the traffic over time ([`timeline`], sampled while the
//! run goes), the rejects by reason ([`rejects`]), and verify's findings.
//!
//! The numbers come from the same summary `--report` writes as JSON, so
//! the two always agree. Charts are inline SVG ([`chart`]); the page is a
//! minijinja template (`templates/report.html`). It quotes no value: the
//! rejects' reasons are folded (`"…"`), and the file is written
//! readable by its owner only all the same.

pub mod chart;
pub mod rejects;
pub mod timeline;

use std::path::Path;

use minijinja::value::Serde;
use minijinja::{Environment, Value as Mj, context};
use serde::Serialize;
use serde_json::Value;

use crate::chart::{Series, line_chart};
pub use crate::rejects::Reason;
pub use crate::timeline::{Counters, Recorder, Sample};

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the report template failed: {0}")]
    Template(#[from] minijinja::Error),
    #[error("cannot write the report {path}: {error}")]
    Write { path: String, error: std::io::Error },
}

/// What a report shows.
pub struct ReportInput<'a> {
    /// The command (`migrate`, `retry-rejects`, `verify`).
    pub command: &'a str,
    pub migration: &'a str,
    /// Where it wrote or read (a URL, a sandbox folder, a dry-run folder).
    pub target: &'a str,
    /// The run's summary as `--report` writes it.
    pub summary: Option<&'a Value>,
    pub timeline: &'a [Sample],
    pub rejects: &'a [Reason],
    pub rejects_total: u64,
    /// verify's summary (its counts).
    pub verify: Option<&'a Value>,
}

#[derive(Serialize)]
struct TypeRow {
    resource_type: String,
    created: u64,
    updated: u64,
    unchanged: u64,
    rejected: u64,
}

#[derive(Serialize)]
struct StreamRow {
    phase: u64,
    stream: String,
    records: u64,
    rejected: u64,
    skipped: u64,
    seconds: String,
    rate: String,
    types: Vec<TypeRow>,
}

/// The report as HTML.
pub fn render(input: &ReportInput<'_>) -> Result<String, ReportError> {
    let mut env = Environment::new();
    env.add_template("report.html", include_str!("../templates/report.html"))?;
    let mut rows = Vec::new();
    let mut totals = [0u64; 4];
    let mut collisions = 0;
    if let Some(summary) = input.summary {
        for s in summary["streams"].as_array().into_iter().flatten() {
            let mut types = Vec::new();
            let mut settled = 0;
            for (resource_type, counts) in s["written"].as_object().into_iter().flatten() {
                let n = |k: &str| counts[k].as_u64().unwrap_or(0);
                let row = TypeRow {
                    resource_type: resource_type.clone(),
                    created: n("created"),
                    updated: n("updated"),
                    unchanged: n("unchanged"),
                    rejected: n("rejected"),
                };
                settled += row.created + row.updated + row.unchanged;
                for (total, n) in
                    totals
                        .iter_mut()
                        .zip([row.created, row.updated, row.unchanged, row.rejected])
                {
                    *total += n;
                }
                types.push(row);
            }
            collisions += s["collisions"].as_u64().unwrap_or(0);
            let seconds = s["elapsed"].as_f64().unwrap_or(0.0);
            rows.push(StreamRow {
                phase: s["phase"].as_u64().unwrap_or(0),
                stream: s["stream"].as_str().unwrap_or("").to_owned(),
                records: s["records"].as_u64().unwrap_or(0),
                rejected: s["rejected"].as_u64().unwrap_or(0),
                skipped: s["skipped"].as_u64().unwrap_or(0),
                seconds: format!("{seconds:.2}"),
                rate: rate(settled, seconds),
                types,
            });
        }
    }
    let elapsed = input
        .summary
        .and_then(|s| s["elapsed"].as_f64())
        .or_else(|| input.verify.and_then(|v| v["seconds"].as_f64()))
        .unwrap_or(0.0);
    let settled: u64 = totals[..3].iter().sum();
    let charts: Vec<Mj> = charts(input.timeline)
        .into_iter()
        .map(Mj::from_safe_string)
        .collect();
    let verify_rows: Vec<Value> = input
        .verify
        .and_then(|v| v["counts"].as_object())
        .into_iter()
        .flatten()
        .flat_map(|(stream, types)| {
            types.as_object().into_iter().flatten().map(move |(t, c)| {
                let mut row = c.clone();
                row["stream"] = Value::from(stream.clone());
                row["resource_type"] = Value::from(t.clone());
                row
            })
        })
        .collect();
    let html = env.get_template("report.html")?.render(context! {
        command => input.command,
        migration => input.migration,
        target => input.target,
        elapsed => format!("{elapsed:.1}"),
        rate => rate(settled, elapsed),
        created => totals[0],
        updated => totals[1],
        unchanged => totals[2],
        rejected_resources => totals[3],
        records => rows.iter().map(|r| r.records).sum::<u64>(),
        rejected_records => rows.iter().map(|r| r.rejected).sum::<u64>(),
        collisions => collisions,
        rows => Mj::from(Serde(&rows)),
        charts => Mj::from(charts),
        traffic => Mj::from(Serde(input.summary.map(|s| &s["traffic"]))),
        rejects => Mj::from(Serde(input.rejects)),
        rejects_total => input.rejects_total,
        verify => Mj::from(Serde(input.verify)),
        verify_equal => verify_rows.iter().all(|r| {
            ["different", "missing", "duplicated", "dangling", "orphan", "unmapped"]
                .iter()
                .all(|k| r[k].as_u64().unwrap_or(0) == 0)
        }),
        verify_rows => Mj::from(Serde(&verify_rows)),
    })?;
    Ok(html)
}

/// Renders and writes the report, readable by its owner only.
pub fn write(path: &Path, input: &ReportInput<'_>) -> Result<(), ReportError> {
    let html = render(input)?;
    let failed = |error| ReportError::Write {
        path: path.display().to_string(),
        error,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(failed)?;
    std::io::Write::write_all(&mut file, html.as_bytes()).map_err(failed)
}

fn rate(n: u64, seconds: f64) -> String {
    if seconds > 0.0 {
        format!("{:.0}", n as f64 / seconds)
    } else {
        "-".into()
    }
}

/// The three charts of the traffic over time (none without samples).
fn charts(samples: &[Sample]) -> Vec<String> {
    if samples.len() < 2 {
        return Vec::new();
    }
    // per second between samples, plotted at the later one
    let per_second = |pick: fn(&Counters) -> u64| -> Vec<(f64, f64)> {
        samples
            .windows(2)
            .map(|w| {
                let dt = (w[1].t - w[0].t).max(1e-3);
                let dv = pick(&w[1].counters).saturating_sub(pick(&w[0].counters));
                (w[1].t, dv as f64 / dt)
            })
            .collect()
    };
    let level = |pick: fn(&Counters) -> u64| -> Vec<(f64, f64)> {
        samples
            .iter()
            .map(|s| (s.t, pick(&s.counters) as f64))
            .collect()
    };
    type Pick = fn(&Counters) -> u64;
    let lines = |picks: &[(&'static str, &'static str, Pick)], level_not_rate: bool| {
        picks
            .iter()
            .map(|&(name, color, pick)| Series {
                name,
                color,
                points: if level_not_rate {
                    level(pick)
                } else {
                    per_second(pick)
                },
            })
            .collect::<Vec<Series>>()
    };
    vec![
        line_chart(
            "resources settled per second",
            "resources/s",
            &lines(&[("resources/s", "#2563eb", |c| c.settled)], false),
        ),
        line_chart(
            "requests in flight and the window",
            "requests",
            &lines(
                &[
                    ("in flight", "#16a34a", |c| c.in_flight),
                    ("window", "#9333ea", |c| c.window),
                ],
                true,
            ),
        ),
        line_chart(
            "retries and refusals per second",
            "per second",
            &lines(
                &[
                    ("retries", "#f59e0b", |c| c.retries),
                    ("429", "#dc2626", |c| c.throttled),
                    ("409", "#0891b2", |c| c.conflicts),
                    ("5xx", "#7c2d12", |c| c.server_errors),
                    ("quota waits", "#64748b", |c| c.quota_waits),
                ],
                false,
            ),
        ),
    ]
}
