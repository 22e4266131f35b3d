//! fhirlift-verify: does the server hold what the source says?
//!
//! `verify` reads and maps the source exactly as `migrate` would (the
//! pipeline's [`Plan::map_each`]: same connector, lookups and mappings),
//! writes nothing, and asks the server in batched searches by identifier
//! (`Type?identifier=s|a,s|b,…`, as the resolve strategy does). Each
//! identity is then [`Kind::Equal`] (stored once, the content the mapping
//! gives now, by the comparison resolve uses: `core::content`),
//! [`Kind::Different`] (with the paths that differ), [`Kind::Missing`] or
//! [`Kind::Duplicated`]; a stored resource's reference to a resource that
//! is gone is [`Kind::Dangling`]; with `orphans`, a resource in one of the
//! migration's identifier systems that no record maps to is
//! [`Kind::Orphan`]; a record that does not map is [`Kind::Unmapped`].
//! Where a later record replaces an earlier one (`collisions:
//! later-wins`, message archives), only the last record writing an
//! identity is compared: a first pass maps the source to find it.
//!
//! It needs no ledger (another machine, a lost ledger). Data flows one
//! way: source → mapper → searches → findings; the mapping runs on the
//! calling thread while up to `concurrency` batches are searched on the
//! runtime. Memory: the batches in flight and the id cache (capped), plus,
//! with `orphans`, 16 bytes per identity mapped.

mod check;
mod findings;

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fhirlift_http::{ReadError, ServerReader};
use fhirlift_pipeline::{MappedRecord, Plan};
use tokio::task::JoinHandle;

use crate::check::{Known, Pending, Winners, check_batch, identity_key};
pub use crate::findings::{Counts, Finding, FindingWriter, Kind, VerifySummary};

/// Identities per batch (one search per type, each of at most 100).
const BATCH_IDENTITIES: usize = 100;

/// How to verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Also list the resources in the migration's identifier systems that
    /// no record maps to (a search per type and system, every page).
    pub orphans: bool,
    /// Batches searched at once.
    pub concurrency: usize,
    /// The NDJSON file of findings (every one but `equal`).
    pub out: Option<PathBuf>,
}

/// Why verify could not finish.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("verify could not read the server: {0}")]
    Read(#[from] ReadError),
    #[error("verify could not read the source: {0}")]
    Source(#[from] fhirlift_core::ConnectorError),
    #[error("verify could not write {path}: {error}")]
    Out {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Compares every record's resources with the server; writes nothing.
pub fn verify(
    plan: &Plan,
    reader: &ServerReader,
    runtime: &tokio::runtime::Runtime,
    options: &VerifyOptions,
) -> Result<VerifySummary, VerifyError> {
    let started = Instant::now();
    let out_error = |error| VerifyError::Out {
        path: options.out.clone().unwrap_or_default(),
        error,
    };
    let mut run = VerifyRun {
        summary: VerifySummary::default(),
        writer: match &options.out {
            Some(path) => Some(FindingWriter::create(path).map_err(out_error)?),
            None => None,
        },
        running: VecDeque::new(),
        failed: None,
    };
    let winners = Arc::new(winners(plan)?);
    let known = Arc::new(Mutex::new(Known::default()));
    let limit = Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1)));
    let mut systems: BTreeSet<(String, String)> = BTreeSet::new();
    let mut mapped: HashSet<u128> = HashSet::new();
    let mut batch: Vec<Pending> = Vec::new();
    let mut identities = 0;
    let dispatch = |batch: Vec<Pending>, run: &mut VerifyRun| {
        let permit = runtime
            .block_on(limit.clone().acquire_owned())
            .expect("the semaphore is never closed");
        let reader = reader.clone();
        let known = known.clone();
        let winners = winners.clone();
        run.running.push_back(runtime.spawn(async move {
            let found = check_batch(&reader, &known, &winners, batch).await;
            drop(permit);
            found
        }));
    };
    let mut ordinal = 0u64;
    plan.map_each(&mut |planned, record| {
        let stream: Arc<str> = planned.source.stream.clone();
        ordinal += 1;
        match record {
            MappedRecord::Group(group) => {
                for op in &group.operations {
                    if let Some(id) = &op.identity {
                        identities += 1;
                        if options.orphans {
                            systems.insert((id.resource_type.clone(), id.system.clone()));
                            mapped.insert(identity_key(&id.resource_type, &id.system, &id.value));
                        }
                    }
                }
                batch.push(Pending {
                    stream,
                    group,
                    ordinal,
                });
                if identities >= BATCH_IDENTITIES {
                    identities = 0;
                    dispatch(std::mem::take(&mut batch), &mut run);
                }
            }
            MappedRecord::Skipped(..) => run.summary.skipped += 1,
            MappedRecord::Failed(e) => {
                let mut finding = Finding::new(Kind::Unmapped, "-");
                finding.stream = Some(stream.to_string());
                finding.record = Some(e.provenance.to_string());
                finding.reason = Some(e.message);
                run.found(vec![finding]);
            }
            MappedRecord::Unreadable(provenance, why) => {
                let mut finding = Finding::new(Kind::Unmapped, "-");
                finding.stream = Some(stream.to_string());
                finding.record = Some(provenance.to_string());
                finding.reason = Some(why);
                run.found(vec![finding]);
            }
        }
        run.drain(runtime, false);
        if run.failed.is_some() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    if !batch.is_empty() {
        dispatch(batch, &mut run);
    }
    run.drain(runtime, true);
    if let Some(e) = run.failed.take() {
        return Err(e.into());
    }
    if options.orphans {
        for (resource_type, system) in &systems {
            let mut orphans = Vec::new();
            runtime.block_on(reader.each_in_system(resource_type, system, |resource| {
                let id = resource["id"].as_str().unwrap_or("");
                for identifier in resource["identifier"].as_array().into_iter().flatten() {
                    let (Some(s), Some(v)) =
                        (identifier["system"].as_str(), identifier["value"].as_str())
                    else {
                        continue;
                    };
                    if s == system && !mapped.contains(&identity_key(resource_type, s, v)) {
                        let mut finding = Finding::new(Kind::Orphan, resource_type.clone());
                        finding.identifier = Some(format!("{s}|{v}"));
                        finding.server = vec![format!("{resource_type}/{id}")];
                        orphans.push(finding);
                    }
                }
            }))?;
            run.found(orphans);
        }
    }
    let mut summary = run.summary;
    if let Some(writer) = run.writer {
        writer.finish().map_err(out_error)?;
    }
    summary.searches = reader.searches();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// For the streams where a later record replaces an earlier one
/// (`collisions: later-wins`, the default for message archives): the last
/// record writing each identity, from a first pass that only maps (no
/// request; 24 bytes per identity). Empty when no stream is such.
fn winners(plan: &Plan) -> Result<Winners, VerifyError> {
    let mut winners = Winners::default();
    if !plan.streams.iter().any(|s| s.later_wins()) {
        return Ok(winners);
    }
    let mut ordinal = 0u64;
    plan.map_each(&mut |planned, record| {
        ordinal += 1;
        if let (true, MappedRecord::Group(group)) = (planned.later_wins(), &record) {
            for op in &group.operations {
                let Some(id) = &op.identity else { continue };
                let key = identity_key(&id.resource_type, &id.system, &id.value);
                if !op.amends {
                    winners.last.insert(key, ordinal);
                    continue;
                }
                let names = winners.amended.entry(key).or_default();
                if let Some(obj) = op.resource.to_value().as_object() {
                    for name in obj.keys().filter(|k| *k != "resourceType") {
                        if !names.contains(name) {
                            names.push(name.clone());
                        }
                    }
                }
            }
        }
        ControlFlow::Continue(())
    })?;
    Ok(winners)
}

/// The findings so far and the batches being searched.
struct VerifyRun {
    summary: VerifySummary,
    writer: Option<FindingWriter>,
    running: VecDeque<JoinHandle<Result<Vec<Finding>, ReadError>>>,
    failed: Option<ReadError>,
}

impl VerifyRun {
    /// Counts findings and writes every one but `equal` to the file.
    fn found(&mut self, findings: Vec<Finding>) {
        for finding in findings {
            self.summary.count(&finding);
            // one finding per identity compared; dangling, orphan and
            // unmapped ones come on top
            if matches!(
                finding.finding,
                Kind::Equal | Kind::Different | Kind::Missing | Kind::Duplicated
            ) {
                self.summary.identities += 1;
            }
            if !matches!(finding.finding, Kind::Equal | Kind::Unverifiable) {
                tracing::debug!(
                    finding = finding.finding.name(),
                    resource_type = %finding.resource_type,
                    record = finding.record.as_deref().unwrap_or(""),
                    "verify"
                );
                if let Some(writer) = &mut self.writer
                    && let Err(e) = writer.write(&finding)
                {
                    self.failed
                        .get_or_insert(ReadError(format!("cannot write the findings file: {e}")));
                }
            }
        }
    }

    /// Takes the batches that are done (all of them with `wait`), in order.
    fn drain(&mut self, runtime: &tokio::runtime::Runtime, wait: bool) {
        while let Some(front) = self.running.front() {
            if !wait && !front.is_finished() {
                return;
            }
            let handle = self.running.pop_front().expect("a front exists");
            match runtime.block_on(handle) {
                Ok(Ok(findings)) => self.found(findings),
                Ok(Err(e)) => {
                    self.failed.get_or_insert(e);
                }
                Err(e) => {
                    self.failed
                        .get_or_insert(ReadError(format!("a verify task failed: {e}")));
                }
            }
        }
    }
}
