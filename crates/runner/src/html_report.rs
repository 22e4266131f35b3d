//! `--report-html FILE`: the run (or verify) as one HTML page, with the
//! sender's counters sampled while it runs (`fhirlift-report`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use fhirlift_http::SenderStats;
use fhirlift_pipeline::RunSummary;
use fhirlift_report::{Counters, Recorder, ReportInput, Sample};

/// How often the counters are read.
const EVERY: Duration = Duration::from_millis(500);

/// Starts sampling the sender's counters.
pub(crate) fn recorder(stats: Arc<SenderStats>) -> Recorder {
    Recorder::start(EVERY, move || {
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            settled: n(&stats.settled),
            requests: n(&stats.requests),
            in_flight: n(&stats.in_flight),
            window: n(&stats.window),
            retries: n(&stats.retries),
            quota_waits: n(&stats.quota_waits),
            throttled: n(&stats.throttled),
            conflicts: n(&stats.conflicts),
            server_errors: n(&stats.server_errors),
        }
    })
}

/// The report of a `migrate` or `retry-rejects` run.
pub(crate) fn write_run(
    path: &Path,
    command: &str,
    config: &Path,
    target: &str,
    summary: &RunSummary,
    timeline: &[Sample],
    rejects: &Path,
) -> anyhow::Result<()> {
    let json = serde_json::to_value(summary)?;
    let (reasons, total) = fhirlift_report::rejects::reasons(rejects)
        .with_context(|| format!("cannot read the rejects file {}", rejects.display()))?;
    let config = config.display().to_string();
    fhirlift_report::write(
        path,
        &ReportInput {
            command,
            migration: &config,
            target,
            summary: Some(&json),
            timeline,
            rejects: &reasons,
            rejects_total: total,
            verify: None,
        },
    )?;
    Ok(())
}

/// The report of a `verify` run.
pub(crate) fn write_verify(
    path: &Path,
    config: &Path,
    target: &str,
    verify: &fhirlift_verify::VerifySummary,
) -> anyhow::Result<()> {
    let json = serde_json::to_value(verify)?;
    let config = config.display().to_string();
    fhirlift_report::write(
        path,
        &ReportInput {
            command: "verify",
            migration: &config,
            target,
            summary: None,
            timeline: &[],
            rejects: &[],
            rejects_total: 0,
            verify: Some(&json),
        },
    )?;
    Ok(())
}
