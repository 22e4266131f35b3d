//! One stream's run ([`StreamRun`]): opened at its resume point, mapped on
//! its own thread, each record claimed, checked against the ledger and
//! packed, the closed requests handed to the sink.
//!
//! The record's way through, in order: [`StreamRun::record`] counts it and
//! gives it a sequence number; a mapped group is claimed (repeated keys and
//! collisions, [`StreamRun::group`]), checked against the ledger (delta),
//! then packed ([`StreamRun::pack`]); a record that maps to nothing, fails
//! to map, or that the connector could not read is settled at once.

use std::collections::HashSet;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use fhirlift_core::connector::{RecordError, StreamSource};
use fhirlift_core::group::WriteGroup;
use fhirlift_core::mapper::{MapError, Mapped};
use fhirlift_core::planner::{Packer, Request};
use fhirlift_core::record::Provenance;
use fhirlift_core::transport::{RequestSink, SinkError};

use crate::accounts::{Accounts, Claimed, Delta, ledger_error};
use crate::mapping_stage::{MappingStage, Prepared, RecordFilter};
use crate::plan::{Plan, PlannedStream};
use crate::progress::ProgressObserver;
use crate::rejects::{Reject, Stage};
use crate::summary::{StreamSummary, count};

impl Plan {
    /// Runs one stream of the plan to its end (or its failure, or a stop).
    /// An error stops the whole run (the sink or the ledger failed); a
    /// stream that cannot be read fails alone, in its summary.
    pub(crate) fn run_stream(
        &self,
        index: usize,
        planned: &PlannedStream,
        sink: &mut dyn RequestSink,
        accounts: &mut Accounts<'_>,
        progress: &mut dyn ProgressObserver,
        filter: &RecordFilter,
    ) -> Result<(), SinkError> {
        let started = Instant::now();
        let mut run = StreamRun::new(self, index, planned, filter, accounts)?;
        progress.stream_started(&accounts.summaries[index]);
        tracing::info!(stream = %run.name, phase = run.phase, "stream started");
        let Some(start) = run.start(accounts, filter)? else {
            tracing::info!(stream = %run.name, "no rejected records to retry");
            return Ok(());
        };
        let open = match self.connector.open(&start.source) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(stream = %run.name, error = %e, "stream could not be opened");
                accounts.summaries[index].failed = Some(e.to_string());
                return Ok(());
            }
        };
        let mapped = MappingStage {
            mapper: planned.mapper.clone(),
            stream: run.name.clone(),
            shard: filter.shard,
            retry: start.retry,
            first_ordinal: accounts.tracks[index].base,
            validate: self.config.target.validate,
        }
        .spawn(open)?;
        let ended = run.read(mapped, sink, accounts, progress, filter)?;
        run.finish(ended, started, sink, accounts)
    }
}

/// Where a stream starts: its source (resumed after the ledger's mark, or
/// from the beginning) and, when retrying rejects, the keys to take.
struct Start {
    source: StreamSource,
    retry: Option<HashSet<String>>,
}

/// What reading goes on to do after an event.
enum Flow {
    Go,
    /// The mapping stage said the stream ended.
    Ended,
    /// The source failed: stop reading.
    Failed,
}

/// One stream of a run, from its first record to its last request.
struct StreamRun<'p> {
    index: usize,
    name: std::sync::Arc<str>,
    phase: usize,
    planned: &'p PlannedStream,
    /// Every record is sent (no delta check): `--full` or a stream the
    /// server has lost.
    full: bool,
    /// The ledger holds rejects of this stream (an unchanged record may
    /// be one of them, now fixed).
    has_rejects: bool,
    packer: Packer,
    /// Requests the packer closed, not yet handed to the sink.
    ready: Vec<Request>,
}

impl<'p> StreamRun<'p> {
    fn new(
        plan: &Plan,
        index: usize,
        planned: &'p PlannedStream,
        filter: &RecordFilter,
        accounts: &Accounts<'_>,
    ) -> Result<StreamRun<'p>, SinkError> {
        let name = planned.source.stream.clone();
        let phase = accounts.summaries[index].phase;
        let has_rejects = match accounts.ledger.as_deref() {
            Some(ledger) => ledger.has_rejects(&name).map_err(ledger_error)?,
            None => false,
        };
        Ok(StreamRun {
            index,
            full: filter.full(&name),
            phase,
            packer: Packer::new(plan.profile.clone(), phase, name.clone()),
            name,
            planned,
            has_rejects,
            ready: Vec::new(),
        })
    }

    /// Where to start, from the ledger: the rejected keys when retrying
    /// them (`None` when there are none), else after the stream's mark
    /// unless it runs in full.
    fn start(
        &self,
        accounts: &mut Accounts<'_>,
        filter: &RecordFilter,
    ) -> Result<Option<Start>, SinkError> {
        let mut start = Start {
            source: self.planned.source.clone(),
            retry: None,
        };
        let Some(ledger) = accounts.ledger.as_deref() else {
            return Ok(Some(start));
        };
        let name = &self.name;
        if filter.only_rejected {
            let keys: HashSet<String> = ledger
                .rejected(name)
                .map_err(ledger_error)?
                .into_iter()
                .map(|r| r.key)
                .collect();
            if keys.is_empty() {
                return Ok(None);
            }
            start.retry = Some(keys);
        } else if !self.full
            && let Some(mark) = ledger.mark(name).map_err(ledger_error)?
        {
            let after = serde_json::from_value::<Provenance>(mark.after).map_err(|e| {
                SinkError::new(format!(
                    "ledger: stream {name}'s resume point does not read ({e}); run with --full"
                ))
            })?;
            tracing::info!(stream = %name, after = %after, "resuming after the ledger's mark");
            accounts.summaries[self.index].resumed_after = Some(after.to_string());
            accounts.tracks[self.index].base = mark.records;
            start.source.resume_after = Some(after);
        }
        Ok(Some(start))
    }

    /// Reads the mapped records to the end; whether the mapping stage said
    /// the stream ended (a stop or a source failure counts as an end).
    fn read(
        &mut self,
        mapped: Receiver<Vec<Prepared>>,
        sink: &mut dyn RequestSink,
        accounts: &mut Accounts<'_>,
        progress: &mut dyn ProgressObserver,
        filter: &RecordFilter,
    ) -> Result<bool, SinkError> {
        let mut ended = false;
        for chunk in mapped.iter() {
            if filter.stopped() {
                accounts.summaries[self.index].failed =
                    Some("stopped (Ctrl-C): the ledger resumes after what was acknowledged".into());
                sink.stop();
                return Ok(true);
            }
            for event in chunk {
                match self.event(event, accounts)? {
                    Flow::Go => {}
                    Flow::Ended => ended = true,
                    Flow::Failed => return Ok(true),
                }
                submit_ready(&mut self.ready, &mut accounts.summaries[self.index], sink)?;
            }
            accounts.absorb(sink.settled())?;
            accounts.commit_now_and_then(false)?;
            progress.update(&accounts.summaries[self.index], sink.activity());
        }
        Ok(ended)
    }

    fn event(&mut self, event: Prepared, accounts: &mut Accounts<'_>) -> Result<Flow, SinkError> {
        match event {
            Prepared::End => return Ok(Flow::Ended),
            Prepared::Record {
                key,
                provenance,
                ordinal,
                hashes,
                mapped,
                findings,
            } => {
                self.count_findings(accounts, &findings, &provenance);
                let stage = if !findings.any_error() {
                    Stage::Map
                } else {
                    Stage::Validate
                };
                self.record(accounts, (key, provenance, ordinal), hashes, mapped, stage)?
            }
            Prepared::Rejected(e, ordinal) => self.unreadable(accounts, e, ordinal)?,
            Prepared::Failed(e) => {
                let summary = &mut accounts.summaries[self.index];
                tracing::error!(stream = %self.name, error = %e, records = summary.records, "stream stopped");
                summary.failed = Some(e);
                return Ok(Flow::Failed);
            }
        }
        Ok(Flow::Go)
    }

    /// A record read and mapped (or not): counted, numbered, and sent on.
    fn record(
        &mut self,
        accounts: &mut Accounts<'_>,
        (key, provenance, ordinal): (String, Provenance, u64),
        hashes: Vec<u128>,
        mapped: Result<Mapped, MapError>,
        failed_stage: Stage,
    ) -> Result<(), SinkError> {
        accounts.summaries[self.index].records += 1;
        let seq = accounts.tracks[self.index].begin(key, provenance, ordinal);
        match mapped {
            Ok(Mapped::Group(group)) => self.group(accounts, seq, ordinal, group, hashes),
            Ok(Mapped::Skipped(reason)) => {
                let summary = &mut accounts.summaries[self.index];
                summary.skipped += 1;
                if let Some(reason) = reason {
                    *summary.skipped_because.entry(reason).or_default() += 1;
                }
                accounts.complete(self.index, seq, None)
            }
            Err(e) => {
                accounts.complete(self.index, seq, Some(&e.message))?;
                let mapping =
                    e.at.as_ref()
                        .map(|(pos, field)| format!("{field} at {pos}"));
                self.reject(
                    accounts,
                    Some(&e.key),
                    &e.provenance,
                    failed_stage,
                    mapping,
                    &e.message,
                )
            }
        }
    }

    /// Counts a record's FHIR R4 issues by rule, place and mapping line,
    /// keeping the first record of each: errors and information apart.
    fn count_findings(
        &self,
        accounts: &mut Accounts<'_>,
        findings: &crate::validation::Findings,
        provenance: &Provenance,
    ) {
        let summary = &mut accounts.summaries[self.index];
        if findings.any_error() {
            summary.invalid_records += 1;
        }
        for (error, issue) in &findings.issues {
            let counts = if *error {
                &mut summary.invalid
            } else {
                &mut summary.information
            };
            let slot = counts
                .entry(issue.clone())
                .or_insert_with(|| (0, provenance.to_string()));
            slot.0 += 1;
        }
    }

    /// A record the connector could not read.
    fn unreadable(
        &mut self,
        accounts: &mut Accounts<'_>,
        e: RecordError,
        ordinal: u64,
    ) -> Result<(), SinkError> {
        let key = e.provenance.to_string();
        accounts.summaries[self.index].records += 1;
        let reason = format!("{} ({})", e.reason, e.hint);
        let seq = accounts.tracks[self.index].begin(key, e.provenance.clone(), ordinal);
        accounts.complete(self.index, seq, Some(&reason))?;
        self.reject(accounts, None, &e.provenance, Stage::Source, None, &reason)
    }

    /// A mapped group: claimed against the run's other records, checked
    /// against the ledger, then packed.
    fn group(
        &mut self,
        accounts: &mut Accounts<'_>,
        seq: u64,
        ordinal: u64,
        mut group: WriteGroup,
        hashes: Vec<u128>,
    ) -> Result<(), SinkError> {
        let index = self.index;
        match accounts.claim(index, self.planned.collisions, &group, &hashes)? {
            Claimed::Clear => {}
            Claimed::Repeat(first) => {
                tracing::debug!(stream = %self.name, record = %group.provenance, first = %first, "a repeated record: skipped");
                let summary = &mut accounts.summaries[index];
                summary.skipped += 1;
                *summary
                    .skipped_because
                    .entry("repeats an earlier record (same key, same content)".into())
                    .or_default() += 1;
                return accounts.settle_record(index, seq, None, false);
            }
            Claimed::Rejected(reason) => {
                accounts.complete(index, seq, Some(&reason))?;
                let (key, provenance) = (group.key, group.provenance);
                return self.reject(
                    accounts,
                    Some(&key),
                    &provenance,
                    Stage::Collision,
                    None,
                    &reason,
                );
            }
        }
        if !self.full {
            match accounts.delta(&group, &hashes, (&self.name, ordinal))? {
                Delta::Unchanged => {
                    accounts.unchanged(index, &group);
                    // done before, as the ledger knows: only the mark
                    // moves, unless the record was rejected (it maps now to
                    // what the server holds: fixed)
                    let fixed =
                        self.has_rejects && accounts.was_rejected(&self.name, &group.key)?;
                    return accounts.settle_record(index, seq, None, fixed);
                }
                Delta::Changed(stored) => {
                    for (op, at) in group.operations.iter_mut().zip(stored) {
                        op.stored = at;
                    }
                }
            }
        }
        self.pack(accounts, seq, group, &hashes)
    }

    /// Hands a group to the packer; one the profile cannot carry is
    /// rejected with the planner's reason.
    fn pack(
        &mut self,
        accounts: &mut Accounts<'_>,
        seq: u64,
        mut group: WriteGroup,
        hashes: &[u128],
    ) -> Result<(), SinkError> {
        let index = self.index;
        group.seq = seq;
        for (op, &hash) in group.operations.iter_mut().zip(hashes) {
            op.mapped_hash = Some(hash);
        }
        accounts.tracks[index].expect(seq, group.operations.len());
        let summary = &mut accounts.summaries[index];
        for op in &group.operations {
            count(&mut summary.resources, &op.resource_type, 1);
        }
        let ready = &mut self.ready;
        let Err(e) = self.packer.push(group, &mut |r| ready.push(r)) else {
            return Ok(());
        };
        let summary = &mut accounts.summaries[index];
        for t in &e.resource_types {
            count(&mut summary.resources, t, -1);
        }
        accounts.refused(index, seq, e.resource_types.len(), &e.message)?;
        self.reject(
            accounts,
            Some(&e.key),
            &e.provenance,
            Stage::Plan,
            None,
            &e.message,
        )
    }

    /// Writes a reject of this stream (the accounts count it).
    fn reject(
        &self,
        accounts: &mut Accounts<'_>,
        key: Option<&str>,
        provenance: &Provenance,
        stage: Stage,
        mapping: Option<String>,
        reason: &str,
    ) -> Result<(), SinkError> {
        accounts.reject(
            self.index,
            Reject {
                stream: &self.name,
                key,
                provenance,
                stage,
                mapping,
                reason,
                request: None,
                outcome: None,
            },
        )
    }

    /// The last requests out, and the stream's summary closed. A mapping
    /// thread that went away without saying the stream ended (it panicked)
    /// fails the stream: what was read counts, the rest is not "done".
    fn finish(
        mut self,
        ended: bool,
        started: Instant,
        sink: &mut dyn RequestSink,
        accounts: &mut Accounts<'_>,
    ) -> Result<(), SinkError> {
        if !ended {
            let summary = &mut accounts.summaries[self.index];
            tracing::error!(stream = %self.name, records = summary.records, "the mapping stopped unexpectedly");
            summary.failed = Some(
                "the mapping stopped unexpectedly (a bug in a mapper: please report it); \
                 the ledger resumes after what was acknowledged"
                    .into(),
            );
        }
        let ready = &mut self.ready;
        self.packer.finish(&mut |r| ready.push(r));
        submit_ready(&mut self.ready, &mut accounts.summaries[self.index], sink)?;
        accounts.absorb(sink.settled())?;
        let summary = &mut accounts.summaries[self.index];
        summary.elapsed = started.elapsed();
        tracing::info!(
            stream = %self.name,
            records = summary.records,
            rejected = summary.rejected,
            requests = summary.requests,
            "stream read"
        );
        Ok(())
    }
}

/// Hands the requests the packer closed to the sink, counting them.
fn submit_ready(
    ready: &mut Vec<Request>,
    summary: &mut StreamSummary,
    sink: &mut dyn RequestSink,
) -> Result<(), SinkError> {
    for request in ready.drain(..) {
        summary.requests += 1;
        summary.bytes += request.body.len() as u64;
        sink.submit(request)?;
    }
    Ok(())
}
