//! What the command prints: the connectors, the plan, and the summary of a run.
//!
//! Only counts, stream names and provenance are printed: never record data.

use std::io::Write;

use fhirlift_core::registry::Registry;
use fhirlift_pipeline::{Plan, RunSummary};

/// The connectors (built in and plugins) and built-in maps a registry knows.
pub fn write_connectors(out: &mut dyn Write, registry: &Registry) -> std::io::Result<()> {
    let rows: Vec<_> = registry.iter().map(|c| (c, c.origin.to_string())).collect();
    let name_w = rows.iter().map(|(c, _)| c.name.len()).fold(12, usize::max);
    let origin_w = rows.iter().map(|(_, o)| o.len()).fold(10, usize::max);
    writeln!(
        out,
        "{:<name_w$} {:<origin_w$} {:<9} description",
        "name", "origin", "version"
    )?;
    for (c, origin) in rows {
        writeln!(
            out,
            "{:<name_w$} {:<origin_w$} {:<9} {}",
            c.name, origin, c.version, c.description
        )?;
    }
    // in Rust (hl7v2) and in the mapping language (omop)
    let mut maps: Vec<(&str, &str)> = registry.maps().map(|m| (m.name, m.description)).collect();
    maps.extend(
        fhirlift_core::registry::template_maps()
            .iter()
            .map(|m| (m.name, m.description)),
    );
    maps.sort_unstable();
    if !maps.is_empty() {
        writeln!(out, "\nbuilt-in maps (a stream's `map:`):")?;
        for (name, description) in maps {
            writeln!(out, "{name:<12} {description}")?;
        }
    }
    Ok(())
}

/// The phases and streams of a plan.
pub fn write_plan(out: &mut dyn Write, plan: &Plan) -> std::io::Result<()> {
    let p = &plan.profile;
    writeln!(
        out,
        "migration {} (connector {})",
        plan.config.path.display(),
        plan.connector_name,
    )?;
    writeln!(
        out,
        "profile {}: strategy {}{}{}; batches of at most {} entries and {} bytes; transactions of at most {} entries ({} with conditional writes) and {} updates{}",
        p.name,
        p.strategy.as_str(),
        if p.resolves_references_itself() {
            " (references resolved by fhirlift)"
        } else {
            ""
        },
        if p.asynchronous {
            ", async batches"
        } else {
            ""
        },
        p.max_batch_entries,
        p.max_body_bytes,
        p.max_transaction_entries,
        p.max_conditional_transaction_entries,
        p.max_transaction_updates,
        if p.atomic_transactions {
            ""
        } else {
            "; transactions checked for partial writes"
        }
    )?;
    for warning in plan.warnings() {
        writeln!(out, "warning: {warning}")?;
    }
    for phase in &plan.phases {
        writeln!(out, "phase {}:", phase.number)?;
        for name in &phase.streams {
            let s = plan.stream(name).expect("phases name planned streams");
            let config = plan
                .config
                .stream(name)
                .expect("planned streams are configured");
            let writes: Vec<&str> = s.shape.emitted_types.iter().map(String::as_str).collect();
            let refs: Vec<&str> = s
                .shape
                .referenced_types
                .iter()
                .map(String::as_str)
                .collect();
            write!(
                out,
                "  {name}: {} ({} columns) -> {}",
                s.source.from,
                s.columns.len(),
                writes.join(", ")
            )?;
            if config.transaction {
                write!(out, " as one transaction per record")?;
            }
            if !refs.is_empty() {
                write!(out, "; references {}", refs.join(", "))?;
            }
            for (lookup, rows) in &s.lookups {
                write!(out, "; lookup {lookup} ({rows} rows)")?;
            }
            writeln!(out)?;
        }
    }
    Ok(())
}

/// Peak resident memory of this process, from /proc (Linux), in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The per-stream table and the totals.
/// Kinds of FHIR R4 issue listed per stream in a summary.
const MOST_ISSUES_SHOWN: usize = 20;

pub fn write_summary(out: &mut dyn Write, summary: &RunSummary, verb: &str) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<5} {:<20} {:>10} {:>9} {:>9} {:>9}  resources",
        "phase", "stream", "records", "rejected", "skipped", "requests"
    )?;
    for s in &summary.streams {
        let types: Vec<String> = s
            .resources
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        writeln!(
            out,
            "{:<5} {:<20} {:>10} {:>9} {:>9} {:>9}  {}",
            s.phase,
            s.stream,
            s.records,
            s.rejected,
            s.skipped,
            s.requests,
            types.join(", ")
        )?;
        for (why, n) in &s.skipped_because {
            writeln!(out, "      skipped {n}: {why}")?;
        }
        if s.repeated_keys > 0 {
            writeln!(
                out,
                "      repeated keys {}: records with an earlier record's key and other content, written in order",
                s.repeated_keys
            )?;
        }
        if s.collisions > 0 {
            writeln!(
                out,
                "      collisions {}: identities written by two records with different content",
                s.collisions
            )?;
        }
        if s.invalid_records > 0 {
            writeln!(
                out,
                "      not valid FHIR R4 {}: records with an invalid resource, by rule, place and mapping line:",
                s.invalid_records
            )?;
            issue_lines(out, &s.invalid, "(the rejects file has every one)")?;
        }
        if !s.information.is_empty() {
            writeln!(
                out,
                "      information (sent all the same): codes outside an extensible or preferred binding:"
            )?;
            issue_lines(out, &s.information, "")?;
        }
        if let Some(why) = &s.failed {
            writeln!(out, "      stopped early: {why}")?;
        }
    }
    let sent = summary.streams.iter().any(|s| !s.written.is_empty());
    if sent {
        writeln!(
            out,
            "\n{:<20} {:<22} {:>9} {:>9} {:>9} {:>9} {:>8}",
            "stream", "resource", "created", "updated", "unchanged", "rejected", "retried"
        )?;
        for s in &summary.streams {
            for (i, (t, c)) in s.written.iter().enumerate() {
                writeln!(
                    out,
                    "{:<20} {:<22} {:>9} {:>9} {:>9} {:>9} {:>8}",
                    if i == 0 { s.stream.as_str() } else { "" },
                    t,
                    c.created,
                    c.updated,
                    c.unchanged,
                    c.rejected,
                    if i == 0 {
                        s.retried.to_string()
                    } else {
                        String::new()
                    }
                )?;
            }
        }
    }
    let secs = summary.elapsed.as_secs_f64();
    let resources = summary.resources();
    write!(
        out,
        "{resources} resources {verb} in {} requests, {} records rejected, {:.2} s ({:.0} resources/s)",
        summary.requests(),
        summary.rejected(),
        secs,
        resources as f64 / secs.max(1e-9)
    )?;
    if let Some(rss) = peak_rss() {
        write!(out, ", peak memory {} MB", rss / (1024 * 1024))?;
    }
    writeln!(out)?;
    if let Some(t) = summary.traffic {
        writeln!(
            out,
            "sent to the server: {} write requests, {} searches",
            t.writes, t.searches
        )?;
        if t.quota_waits > 0 {
            writeln!(
                out,
                "waited for the server's quota window {} times (a quota wait is not a failed attempt)",
                t.quota_waits
            )?;
        }
    }
    Ok(())
}

/// `fhirlift status`: what the ledger knows per stream.
pub fn write_status(
    out: &mut dyn Write,
    target: &str,
    streams: &[fhirlift_ledger::StreamStatus],
) -> std::io::Result<()> {
    writeln!(out, "\ntarget {target}")?;
    if streams.is_empty() {
        writeln!(out, "no stream has run yet")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<20} {:>10} {:>9} {:>8}  {:<22} resumes after",
        "stream", "done", "rejected", "pending", "last run"
    )?;
    for s in streams {
        writeln!(
            out,
            "{:<20} {:>10} {:>9} {:>8}  {:<22} {}",
            s.stream,
            s.done,
            s.rejected,
            s.pending,
            s.last_run.as_deref().unwrap_or("-"),
            s.mark
                .as_ref()
                .and_then(|m| serde_json::from_value::<fhirlift_core::Provenance>(m.clone()).ok())
                .map(|p| p.to_string())
                .unwrap_or_else(|| "- (starts at the beginning)".into())
        )?;
    }
    Ok(())
}

/// Issues counted by kind, the most frequent first, each with its count
/// and first record; at most [`MOST_ISSUES_SHOWN`] of them.
fn issue_lines(
    out: &mut dyn Write,
    counted: &std::collections::BTreeMap<String, (u64, String)>,
    where_the_rest_are: &str,
) -> std::io::Result<()> {
    let mut issues: Vec<(&String, &(u64, String))> = counted.iter().collect();
    issues.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
    for (issue, (n, first)) in issues.iter().take(MOST_ISSUES_SHOWN) {
        writeln!(out, "        {n:>8}  {issue} (first: {first})")?;
    }
    if issues.len() > MOST_ISSUES_SHOWN {
        writeln!(
            out,
            "        ... and {} more {where_the_rest_are}",
            issues.len() - MOST_ISSUES_SHOWN
        )?;
    }
    Ok(())
}
