//! The pipeline: prepares a migration (connector, lookups, compiled
//! mappings, phases) and drives it, phase by phase, to a [`RequestSink`].
//!
//! Data moves one way: connector → mapper → packer → sink. Rejects are
//! written as they happen; memory holds one open bundle per stream and the
//! bounded channels between the connector, the mapping thread and the main
//! loop, whatever the source size.
//!
//! Threads per stream: the connector's reader, the mapping thread
//! ([`MappingStage`]: filter, map, hash) and the main loop (ledger delta
//! check, packing, accounting); requests go out on the sender's runtime.

pub mod rejects;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use minijinja::Environment;
use serde::Serialize;

use crate::rejects::{Reject, RejectWriter, Stage};
use fhirlift_core::connector::{ConnectorContext, SourceConnector, SourceEvent, StreamSource};
use fhirlift_core::group::WriteGroup;
use fhirlift_core::mapper::{BuiltinMapContext, MapError, Mapped, MapperShape, ResourceMapper};
use fhirlift_core::planner::{self, Packer, Phase, Request, StreamDeps};
use fhirlift_core::profile::ServerProfile;
use fhirlift_core::record::{Provenance, Schema};
use fhirlift_core::registry::Registry;
use fhirlift_core::transport::{Outcome, RequestSink, Settled, SinkError, Traffic};
use fhirlift_ledger::Ledger;
use fhirlift_mapping::config::{
    CollisionPolicy, ConfigError, ConfigErrors, MigrationConfig, StreamConfig,
};
use fhirlift_mapping::{LookupTable, StreamMapper, WithOverrides};

/// Rejects logged per stream before the log only counts them.
const LOGGED_REJECTS: u64 = 10;

/// The expression environment: one per process, shared by every mapping.
pub fn expression_env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(fhirlift_mapping::environment)
}

/// A stream ready to run.
pub struct PlannedStream {
    pub source: StreamSource,
    pub columns: Arc<Schema>,
    pub mapper: Arc<dyn ResourceMapper>,
    /// What the mapper writes, read once.
    pub shape: MapperShape,
    /// The built-in map in use, when the stream names one.
    pub builtin: Option<String>,
    /// Lookup names with their row counts.
    pub lookups: Vec<(String, usize)>,
    /// What two records writing one identity do: the stream's
    /// `collisions:`, else later-wins for message archives (the hl7v2
    /// connector: an update feed) and reject for everything else (tables).
    pub collisions: CollisionPolicy,
}

/// A validated migration: everything checked, nothing read yet.
pub struct Plan {
    pub config: MigrationConfig,
    pub profile: ServerProfile,
    pub connector_name: String,
    connector: Box<dyn SourceConnector>,
    pub streams: Vec<PlannedStream>,
    pub phases: Vec<Phase>,
}

fn stream_source(
    name: &str,
    from: &str,
    key: &[String],
    options: &serde_json::Value,
) -> StreamSource {
    StreamSource {
        stream: Arc::from(name),
        from: from.to_owned(),
        key: key.to_vec(),
        options: options.clone(),
        resume_after: None,
    }
}

fn load_lookups(
    connector: &dyn SourceConnector,
    stream: &StreamConfig,
    errors: &mut Vec<ConfigError>,
) -> Vec<Arc<LookupTable>> {
    let mut tables = Vec::new();
    for lookup in &stream.lookups {
        let source = stream_source(
            &format!("{}.{}", stream.name, lookup.name),
            &lookup.from,
            &[],
            &lookup.options,
        );
        let result = connector.schema(&source).and_then(|schema| {
            let mut records = Vec::new();
            let mut bad = None;
            let mut open = connector.open(&source)?;
            while let Some(chunk) = open.blocking_next_chunk() {
                for event in chunk {
                    match event {
                        SourceEvent::Record(r) => records.push(r),
                        SourceEvent::Rejected(e) => {
                            bad.get_or_insert(format!(
                                "{}: {} ({})",
                                e.provenance, e.reason, e.hint
                            ));
                        }
                        SourceEvent::Failed(e) => return Err(e),
                    }
                }
            }
            Ok((schema, records, bad))
        });
        match result {
            Ok((_, _, Some(bad))) => errors.push(ConfigError::at(
                &lookup.pos,
                format!(
                    "lookup {}: a row of {} is unreadable: {bad}",
                    lookup.name, lookup.from
                ),
            )),
            Ok((schema, records, None)) => {
                match LookupTable::build(&lookup.name, &lookup.from, schema, &lookup.key, records) {
                    Ok(t) => tables.push(Arc::new(t)),
                    Err(message) => errors.push(ConfigError::at(&lookup.pos, message)),
                }
            }
            Err(e) => errors.push(ConfigError::at(
                &lookup.pos,
                format!("lookup {}: {e}", lookup.name),
            )),
        }
    }
    tables
}

impl Plan {
    /// Checks a migration against its source: the connector exists, every
    /// stream opens, every column an expression uses exists, phases order.
    /// Nothing is sent anywhere.
    pub fn prepare(config: MigrationConfig, registry: &Registry) -> Result<Plan, ConfigErrors> {
        let mut errors = Vec::new();
        let profile = config.target.server_profile().map_err(|m| ConfigError {
            pos: None,
            message: m,
        })?;
        let registration = registry
            .get(&config.source.connector)
            .map_err(|e| ConfigError::at(&config.source.pos, e.to_string()))?;
        let context = ConnectorContext {
            base_dir: config.base_dir.clone(),
        };
        let connector = (registration.create)(&config.source.settings, &context)
            .map_err(|e| ConfigError::at(&config.source.pos, format!("source: {e}")))?;
        let mut streams = Vec::new();
        for stream in &config.streams {
            let source = stream_source(&stream.name, &stream.from, &stream.key, &stream.options);
            let columns = match connector.schema(&source) {
                Ok(c) => c,
                Err(e) => {
                    errors.push(ConfigError::at(
                        &stream.pos,
                        format!("stream {}: {e}", stream.name),
                    ));
                    continue;
                }
            };
            let lookups = load_lookups(connector.as_ref(), stream, &mut errors);
            if lookups.len() != stream.lookups.len() {
                continue;
            }
            let counts = lookups.iter().map(|l| (l.name.clone(), l.len())).collect();
            let builtin = match &stream.map {
                None => None,
                Some(map) => {
                    let created =
                        registry
                            .map(&map.name)
                            .map_err(|e| e.to_string())
                            .and_then(|r| {
                                (r.create)(&BuiltinMapContext {
                                    stream: &stream.name,
                                    options: &map.options,
                                })
                            });
                    match created {
                        Ok(m) => Some(m),
                        Err(message) => {
                            errors.push(ConfigError::at(
                                &map.pos,
                                format!("stream {}: map {}: {message}", stream.name, map.name),
                            ));
                            continue;
                        }
                    }
                }
            };
            let mapper: Arc<dyn ResourceMapper> = match builtin {
                Some(b) if stream.emit.is_empty() => Arc::from(b),
                Some(b) => {
                    // the user's entries join the built-in map's transaction
                    let mut user_stream = stream.clone();
                    user_stream.transaction = b.shape().transaction;
                    match StreamMapper::compile(
                        expression_env(),
                        &user_stream,
                        &config.vars,
                        &columns,
                        lookups,
                    ) {
                        Ok(user) => Arc::new(WithOverrides::new(b, user)),
                        Err(mut e) => {
                            errors.append(&mut e);
                            continue;
                        }
                    }
                }
                None => match StreamMapper::compile(
                    expression_env(),
                    stream,
                    &config.vars,
                    &columns,
                    lookups,
                ) {
                    Ok(m) => Arc::new(m),
                    Err(mut e) => {
                        errors.append(&mut e);
                        continue;
                    }
                },
            };
            streams.push(PlannedStream {
                source,
                columns,
                shape: mapper.shape(),
                mapper,
                builtin: stream.map.as_ref().map(|m| m.name.clone()),
                lookups: counts,
                collisions: stream
                    .collisions
                    .unwrap_or(if config.source.connector == "hl7v2" {
                        CollisionPolicy::LaterWins
                    } else {
                        CollisionPolicy::Reject
                    }),
            });
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let deps: Vec<StreamDeps> = streams
            .iter()
            .zip(&config.streams)
            .map(|(s, c)| StreamDeps {
                name: c.name.clone(),
                emitted_types: s.shape.emitted_types.clone(),
                referenced_types: s.shape.referenced_types.clone(),
                after: c.after.clone(),
                pos: Some(c.pos.clone()),
            })
            .collect();
        // a ref() to a type nothing writes points at nothing, on every record
        let mut unwritten = Vec::new();
        for (d, c) in deps.iter().zip(&config.streams) {
            for t in &d.referenced_types {
                let written = deps.iter().any(|o| o.emitted_types.contains(t));
                if !written && !config.target.holds.contains(t) {
                    unwritten.push(ConfigError::at(
                        &c.pos,
                        format!(
                            "stream {} refers to {t} (ref('{t}', ...)), but no stream writes {t}: \
                             add a stream that does, or, if the server already holds them, say so \
                             with `target: {{ holds: [{t}] }}`",
                            c.name
                        ),
                    ));
                }
            }
        }
        if !unwritten.is_empty() {
            return Err(ConfigErrors(unwritten));
        }
        let phases = planner::phases(&deps).map_err(|m| ConfigError {
            pos: None,
            message: m,
        })?;
        Ok(Plan {
            connector_name: config.source.connector.clone(),
            config,
            profile,
            connector,
            streams,
            phases,
        })
    }

    /// What the server profile will refuse in this mapping, found without
    /// reading a record: transaction streams that can emit more resources
    /// than the profile's transactions hold. Each names the stream, the
    /// limit and what to do.
    pub fn warnings(&self) -> Vec<String> {
        let p = &self.profile;
        let mut out = Vec::new();
        for s in &self.streams {
            if !s.shape.transaction {
                continue;
            }
            let name = &s.source.stream;
            // how much a record emits depends on the record (one resource
            // per repeated segment): the planner judges each one
            let Some((most, puts)) = s.shape.most_emitted else {
                continue;
            };
            if most > p.max_transaction_entries {
                out.push(format!(
                    "stream {name}: a record can emit {most} resources in one transaction; the {} profile allows {}: records that emit more are rejected",
                    p.name, p.max_transaction_entries
                ));
            } else if p.transactions_are_conditional()
                && puts > 0
                && most > p.max_conditional_transaction_entries
            {
                out.push(format!(
                    "stream {name}: a record can emit {most} resources in one transaction of conditional writes; the {} profile allows {} (the server runs such transactions in strict isolation): records that emit more are rejected; the resolve strategy writes by id and lifts this limit",
                    p.name, p.max_conditional_transaction_entries
                ));
            }
            if puts > p.max_transaction_updates {
                out.push(format!(
                    "stream {name}: a record's transaction can hold {puts} updates; the {} profile allows {}: records with more are rejected",
                    p.name, p.max_transaction_updates
                ));
            }
        }
        out
    }

    pub fn stream(&self, name: &str) -> Option<&PlannedStream> {
        self.streams.iter().find(|s| &*s.source.stream == name)
    }

    /// The first `limit` records of a stream, mapped: for `preview`.
    pub fn preview(
        &self,
        stream: &str,
        limit: usize,
    ) -> Result<Vec<Result<serde_json::Value, MapError>>, String> {
        let planned = self.stream(stream).ok_or_else(|| {
            format!(
                "no stream {stream:?}; streams: {}",
                self.streams
                    .iter()
                    .map(|s| &*s.source.stream)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let mut open = self
            .connector
            .open(&planned.source)
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        'read: while let Some(chunk) = open.blocking_next_chunk() {
            for event in chunk {
                if out.len() >= limit {
                    break 'read;
                }
                match event {
                    SourceEvent::Record(record) => {
                        let provenance = record.provenance.to_string();
                        out.push(planned.mapper.map(record).map(|mapped| {
                            let group = match mapped {
                                Mapped::Group(g) => Some(g),
                                Mapped::Skipped(_) => None,
                            };
                            let resources: Vec<serde_json::Value> = group
                                .into_iter()
                                .flat_map(|g| g.operations)
                                .map(|op| {
                                    serde_json::json!({
                                        "request": { "method": op.method.as_str(), "url": op.url },
                                        "resource": op.resource.to_value(),
                                    })
                                })
                                .collect();
                            serde_json::json!({ "record": provenance, "writes": resources })
                        }));
                    }
                    SourceEvent::Rejected(e) => out.push(Ok(serde_json::json!({
                        "record": e.provenance.to_string(),
                        "unreadable": e.reason,
                    }))),
                    SourceEvent::Failed(e) => return Err(e.to_string()),
                }
            }
        }
        Ok(out)
    }

    /// Runs every phase in order into `sink`. A phase starts only when the
    /// sink has answered for every request of the phase before it.
    pub fn run(
        &self,
        sink: &mut dyn RequestSink,
        rejects: &mut RejectWriter,
    ) -> Result<RunSummary, SinkError> {
        self.run_observed(
            sink,
            rejects,
            &mut LogProgress::new(),
            RunOptions::default(),
        )
    }

    /// [`Plan::run`], reporting progress to `progress`, with a ledger.
    pub fn run_observed(
        &self,
        sink: &mut dyn RequestSink,
        rejects: &mut RejectWriter,
        progress: &mut dyn ProgressObserver,
        options: RunOptions<'_>,
    ) -> Result<RunSummary, SinkError> {
        let started = Instant::now();
        let RunOptions {
            ledger,
            full,
            shard,
            only_rejected,
            stop,
            phase: only_phase,
            full_streams,
        } = options;
        let mut accounts = Accounts {
            summaries: Vec::new(),
            rejects,
            ledger,
            tracks: Vec::new(),
            last_commit: Instant::now(),
            marks: !only_rejected,
            overwritten: Default::default(),
            claims: fhirlift_ledger::claims::Claims::open()
                .map_err(|e| SinkError(e.to_string()))?,
            condemned: HashMap::new(),
        };
        if let Some(ledger) = accounts.ledger.as_deref_mut() {
            if full {
                ledger.clear_marks().map_err(ledger_error)?;
            }
            ledger.run_started().map_err(ledger_error)?;
        }
        let filter = RecordFilter {
            full,
            full_streams,
            shard,
            only_rejected,
            stop,
        };
        for phase in &self.phases {
            for name in &phase.streams {
                accounts.summaries.push(StreamSummary {
                    stream: name.clone(),
                    phase: phase.number,
                    ..StreamSummary::default()
                });
                accounts.tracks.push(StreamTrack::default());
            }
        }
        let mut index = 0;
        for phase in &self.phases {
            if only_phase.is_some_and(|p| p != phase.number) {
                index += phase.streams.len();
                continue;
            }
            for name in &phase.streams {
                let planned = self.stream(name).expect("phases name planned streams");
                if filter.stopped() {
                    accounts.summaries[index].failed =
                        Some("not started: stopped (Ctrl-C); the next run starts it".into());
                } else {
                    self.run_stream(index, planned, sink, &mut accounts, progress, &filter)?;
                }
                index += 1;
            }
            sink.end_phase(phase.number)?;
            accounts.absorb(sink.settled())?;
            accounts.phase_settled(phase.number)?;
            for summary in accounts
                .summaries
                .iter()
                .filter(|s| s.phase == phase.number)
            {
                progress.stream_done(summary);
            }
        }
        if let Some(ledger) = accounts.ledger.as_deref_mut() {
            ledger.commit().map_err(ledger_error)?;
        }
        let rejects = accounts.rejects;
        rejects
            .flush()
            .map_err(|e| SinkError(format!("rejects file: {e}")))?;
        Ok(RunSummary {
            streams: accounts.summaries,
            traffic: sink.traffic(),
            elapsed: started.elapsed(),
            rejects_file: rejects
                .path()
                .filter(|_| rejects.count() > 0)
                .map(Path::to_path_buf),
            collisions_file: rejects
                .collisions_path()
                .filter(|_| rejects.collision_count() > 0),
            first_rejects: rejects.first_reasons().to_vec(),
        })
    }

    fn run_stream(
        &self,
        index: usize,
        planned: &PlannedStream,
        sink: &mut dyn RequestSink,
        accounts: &mut Accounts<'_>,
        progress: &mut dyn ProgressObserver,
        filter: &RecordFilter,
    ) -> Result<(), SinkError> {
        let name = planned.source.stream.clone();
        let full = filter.full(&name);
        let phase = accounts.summaries[index].phase;
        let started = Instant::now();
        let mut packer = Packer::new(self.profile.clone(), phase, name.clone());
        let mut ready: Vec<Request> = Vec::new();
        progress.stream_started(&accounts.summaries[index]);
        tracing::info!(stream = %name, phase, "stream started");
        let mut source = planned.source.clone();
        let mut retry: Option<std::collections::HashSet<String>> = None;
        if let Some(ledger) = accounts.ledger.as_deref() {
            if filter.only_rejected {
                retry = Some(
                    ledger
                        .rejected(&name)
                        .map_err(ledger_error)?
                        .into_iter()
                        .map(|r| r.key)
                        .collect(),
                );
            } else if !full && let Some(mark) = ledger.mark(&name).map_err(ledger_error)? {
                match serde_json::from_value::<Provenance>(mark.after) {
                    Ok(after) => {
                        tracing::info!(stream = %name, after = %after, "resuming after the ledger's mark");
                        accounts.summaries[index].resumed_after = Some(after.to_string());
                        accounts.tracks[index].base = mark.records;
                        source.resume_after = Some(after);
                    }
                    Err(e) => {
                        return Err(SinkError(format!(
                            "ledger: stream {name}'s resume point does not read ({e}); run with --full"
                        )));
                    }
                }
            }
        }
        let has_rejects = match accounts.ledger.as_deref() {
            Some(ledger) => ledger.has_rejects(&name).map_err(ledger_error)?,
            None => false,
        };
        if retry.as_ref().is_some_and(|keys| keys.is_empty()) {
            tracing::info!(stream = %name, "no rejected records to retry");
            return Ok(());
        }
        let open = match self.connector.open(&source) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(stream = %name, error = %e, "stream could not be opened");
                accounts.summaries[index].failed = Some(e.to_string());
                return Ok(());
            }
        };
        let mapped = MappingStage {
            mapper: planned.mapper.clone(),
            stream: name.clone(),
            shard: filter.shard,
            retry,
            first_ordinal: accounts.tracks[index].base,
        }
        .spawn(open)?;
        let mut ended = false;
        'read: for chunk in mapped.iter() {
            if filter.stopped() {
                accounts.summaries[index].failed =
                    Some("stopped (Ctrl-C): the ledger resumes after what was acknowledged".into());
                ended = true;
                sink.stop();
                break 'read;
            }
            for event in chunk {
                match event {
                    Prepared::End => ended = true,
                    Prepared::Record {
                        key,
                        provenance,
                        ordinal,
                        hashes,
                        mapped,
                    } => {
                        accounts.summaries[index].records += 1;
                        let seq = accounts.tracks[index].begin(key, provenance, ordinal);
                        match mapped {
                            Ok(Mapped::Group(mut group)) => {
                                let claimed =
                                    accounts.claim(index, planned.collisions, &group, &hashes)?;
                                if let Claimed::Repeat(first) = claimed {
                                    tracing::debug!(stream = %name, record = %group.provenance, first = %first, "a repeated record: skipped");
                                    let summary = &mut accounts.summaries[index];
                                    summary.skipped += 1;
                                    *summary
                                        .skipped_because
                                        .entry(
                                            "repeats an earlier record (same key, same content)"
                                                .into(),
                                        )
                                        .or_default() += 1;
                                    accounts.settle_record(index, seq, None, false)?;
                                    continue;
                                }
                                if let Claimed::Rejected(reason) = claimed {
                                    accounts.complete(index, seq, Some(&reason))?;
                                    accounts.reject(
                                        index,
                                        Reject {
                                            stream: &name,
                                            key: Some(&group.key),
                                            provenance: &group.provenance,
                                            stage: Stage::Collision,
                                            mapping: None,
                                            reason: &reason,
                                            request: None,
                                            outcome: None,
                                        },
                                    )?;
                                    continue;
                                }
                                if !full {
                                    match accounts.delta(&group, &hashes, (&name, ordinal))? {
                                        Delta::Unchanged => {
                                            accounts.unchanged(index, &group);
                                            // done before, as the ledger knows: only the
                                            // mark moves, unless the record was rejected
                                            // (it maps now to what the server holds: fixed)
                                            let fixed = has_rejects
                                                && accounts.was_rejected(&name, &group.key)?;
                                            accounts.settle_record(index, seq, None, fixed)?;
                                            continue;
                                        }
                                        Delta::Changed(stored) => {
                                            for (op, at) in group.operations.iter_mut().zip(stored)
                                            {
                                                op.stored = at;
                                            }
                                        }
                                    }
                                }
                                group.seq = seq;
                                for (op, &hash) in group.operations.iter_mut().zip(&hashes) {
                                    op.mapped_hash = Some(hash);
                                }
                                accounts.tracks[index].expect(seq, group.operations.len());
                                let summary = &mut accounts.summaries[index];
                                for op in &group.operations {
                                    count(&mut summary.resources, &op.resource_type, 1);
                                }
                                if let Err(e) = packer.push(group, &mut |r| ready.push(r)) {
                                    let summary = &mut accounts.summaries[index];
                                    for t in &e.resource_types {
                                        count(&mut summary.resources, t, -1);
                                    }
                                    accounts.refused(
                                        index,
                                        seq,
                                        e.resource_types.len(),
                                        &e.message,
                                    )?;
                                    accounts.reject(
                                        index,
                                        Reject {
                                            stream: &name,
                                            key: Some(&e.key),
                                            provenance: &e.provenance,
                                            stage: Stage::Plan,
                                            mapping: None,
                                            reason: &e.message,
                                            request: None,
                                            outcome: None,
                                        },
                                    )?;
                                }
                            }
                            Ok(Mapped::Skipped(reason)) => {
                                let summary = &mut accounts.summaries[index];
                                summary.skipped += 1;
                                if let Some(reason) = reason {
                                    *summary.skipped_because.entry(reason).or_default() += 1;
                                }
                                accounts.complete(index, seq, None)?;
                            }
                            Err(e) => {
                                accounts.complete(index, seq, Some(&e.message))?;
                                accounts.reject(
                                    index,
                                    Reject {
                                        stream: &name,
                                        key: Some(&e.key),
                                        provenance: &e.provenance,
                                        stage: Stage::Map,
                                        mapping: e
                                            .at
                                            .as_ref()
                                            .map(|(pos, field)| format!("{field} at {pos}")),
                                        reason: &e.message,
                                        request: None,
                                        outcome: None,
                                    },
                                )?;
                            }
                        }
                    }
                    Prepared::Rejected(e, ordinal) => {
                        let key = e.provenance.to_string();
                        accounts.summaries[index].records += 1;
                        let reason = format!("{} ({})", e.reason, e.hint);
                        let seq = accounts.tracks[index].begin(key, e.provenance.clone(), ordinal);
                        accounts.complete(index, seq, Some(&reason))?;
                        accounts.reject(
                            index,
                            Reject {
                                stream: &name,
                                key: None,
                                provenance: &e.provenance,
                                stage: Stage::Source,
                                mapping: None,
                                reason: &reason,
                                request: None,
                                outcome: None,
                            },
                        )?;
                    }
                    Prepared::Failed(e) => {
                        let summary = &mut accounts.summaries[index];
                        tracing::error!(stream = %name, error = %e, records = summary.records, "stream stopped");
                        summary.failed = Some(e);
                        ended = true;
                        break 'read;
                    }
                }
                submit_ready(&mut ready, &mut accounts.summaries[index], sink)?;
            }
            accounts.absorb(sink.settled())?;
            accounts.commit_now_and_then(false)?;
            progress.update(&accounts.summaries[index], sink.activity());
        }
        drop(mapped);
        if !ended {
            // the mapping thread went away without saying the stream ended
            // (it panicked): what was read counts, the rest is not "done"
            let summary = &mut accounts.summaries[index];
            tracing::error!(stream = %name, records = summary.records, "the mapping stopped unexpectedly");
            summary.failed = Some(
                "the mapping stopped unexpectedly (a bug in a mapper: please report it); \
                 the ledger resumes after what was acknowledged"
                    .into(),
            );
        }
        packer.finish(&mut |r| ready.push(r));
        submit_ready(&mut ready, &mut accounts.summaries[index], sink)?;
        accounts.absorb(sink.settled())?;
        let summary = &mut accounts.summaries[index];
        summary.elapsed = started.elapsed();
        tracing::info!(
            stream = %name,
            records = summary.records,
            rejected = summary.rejected,
            requests = summary.requests,
            "stream read"
        );
        Ok(())
    }
}

fn claims_error(e: fhirlift_ledger::claims::ClaimsError) -> SinkError {
    SinkError(e.to_string())
}

/// The claim a record makes with content `hash`.
fn claim_of(
    stream: &str,
    group: &WriteGroup,
) -> impl Fn(u128) -> fhirlift_ledger::claims::Claim + use<> {
    let stream = stream.to_owned();
    let key = group.key.clone();
    let at = serde_json::to_string(&group.provenance).unwrap_or_default();
    move |hash| fhirlift_ledger::claims::Claim {
        stream: stream.clone(),
        key: key.clone(),
        at: at.clone(),
        hash,
    }
}

/// What the run's claims say of a record ([`Accounts::claim`]).
enum Claimed {
    /// Its key and identities are its own (or a collision the stream lets
    /// the later record win): it goes on.
    Clear,
    /// Rejected, with why.
    Rejected(String),
    /// The same key with the same content as the record at this place:
    /// written already, skipped.
    Repeat(String),
}

/// A provenance kept as JSON, as displayed (`file:line`, `table key`, ...).
fn shown(json: &str) -> String {
    serde_json::from_str::<Provenance>(json)
        .map(|p| p.to_string())
        .unwrap_or_else(|_| json.to_owned())
}

/// What the ledger says of a mapped record.
enum Delta {
    /// Every resource acknowledged with this content: nothing to send.
    Unchanged,
    /// To send; per operation, where the target stores it, if known.
    Changed(Vec<Option<fhirlift_core::group::StoredAt>>),
}

/// Where outcomes are counted, rejects written and the ledger kept.
struct Accounts<'a> {
    summaries: Vec<StreamSummary>,
    rejects: &'a mut RejectWriter,
    ledger: Option<&'a mut Ledger>,
    /// Per stream (same index as `summaries`): the records not yet settled.
    tracks: Vec<StreamTrack>,
    last_commit: Instant,
    /// Whether low-water marks move (not when retrying rejects).
    marks: bool,
    /// Identities an earlier record overwrote in this run although a later
    /// record of its stream wrote them last ([`Accounts::delta`]): sent
    /// again by the next record that writes them, whatever the ledger says.
    overwritten: std::collections::HashSet<fhirlift_core::group::Identity>,
    /// Which record of this run used each key and wrote each identity.
    claims: fhirlift_ledger::claims::Claims,
    /// Records still in flight (stream index, sequence number) that a later
    /// record's collision rejected: they settle rejected, with this reason.
    condemned: HashMap<(usize, u64), String>,
}

/// Which records a run takes, and whether it should stop.
struct RecordFilter {
    full: bool,
    /// Streams taken in full in a delta run.
    full_streams: std::collections::BTreeSet<String>,
    shard: Option<(u64, u64)>,
    only_rejected: bool,
    stop: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl RecordFilter {
    /// Whether `stream` starts at its beginning and sends every record.
    fn full(&self, stream: &str) -> bool {
        self.full || self.full_streams.contains(stream)
    }

    fn stopped(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// The shard (of `n`) a record belongs to: a stable hash of its stream and key.
pub fn shard_of(stream: &str, key: &str, n: u64) -> u64 {
    (fhirlift_core::group::stable_hash128(&[stream, key]) % u128::from(n.max(1))) as u64
}

fn ledger_error(e: fhirlift_ledger::LedgerError) -> SinkError {
    SinkError(e.to_string())
}

/// The records of one stream between its low-water mark and what was read.
#[derive(Default)]
struct StreamTrack {
    /// The last sequence number given (records are numbered from 1).
    next: u64,
    /// Records at or before the mark in earlier runs (from the ledger):
    /// the ordinal of the first record this run reads.
    base: u64,
    /// The mark: every record up to it is settled.
    mark: u64,
    /// Records sent and not yet settled: operations left, and a reason
    /// once one of them was rejected.
    open: BTreeMap<u64, OpenRecord>,
    /// Settled records above the mark, with their provenance and ordinal.
    settled: BTreeMap<u64, (Provenance, u64)>,
    /// Key, provenance and ordinal ([`fhirlift_ledger::Writer`]) of the
    /// records not yet settled (read, being mapped, or with operations in
    /// flight).
    names: BTreeMap<u64, (String, Provenance, u64)>,
    /// A key repeated in this run: the mark stays where it is (a resume by
    /// key could skip or repeat records).
    keys_repeat: bool,
}

struct OpenRecord {
    ops_left: usize,
    rejected: Option<String>,
}

impl StreamTrack {
    fn begin(&mut self, key: String, provenance: Provenance, ordinal: u64) -> u64 {
        self.next += 1;
        self.names.insert(self.next, (key, provenance, ordinal));
        self.next
    }

    fn expect(&mut self, seq: u64, ops: usize) {
        self.open.insert(
            seq,
            OpenRecord {
                ops_left: ops,
                rejected: None,
            },
        );
    }
}

impl Accounts<'_> {
    /// The delta check: whether the ledger holds every operation of the
    /// group as acknowledged with this very content, and if not, where the
    /// target stores those it knows.
    ///
    /// An operation also counts as unchanged when the ledger's content for
    /// its identity was written by a later record of the same stream
    /// (this record's `ordinal` is lower): that record overwrites it again, so
    /// re-sending the earlier content could only move the server back. If
    /// the record is sent anyway (another of its operations changed), the
    /// identity is marked overwritten, and its later writer is sent too.
    fn delta(
        &mut self,
        group: &WriteGroup,
        hashes: &[u128],
        (stream, ordinal): (&str, u64),
    ) -> Result<Delta, SinkError> {
        let Some(ledger) = self.ledger.as_deref() else {
            return Ok(Delta::Changed(Vec::new()));
        };
        let mut same = !group.operations.is_empty();
        let mut stored = Vec::with_capacity(group.operations.len());
        let mut superseded = Vec::new();
        // overwritten identities this record writes as their last writer
        // (or a later one) does
        let mut restored = Vec::new();
        for (op, &hash) in group.operations.iter().zip(hashes) {
            let Some(id) = &op.identity else {
                same = false;
                stored.push(None);
                continue;
            };
            let known = ledger
                .acknowledged(&id.resource_type, &id.system, &id.value)
                .map_err(ledger_error)?;
            let overwritten = !self.overwritten.is_empty() && self.overwritten.contains(id);
            if overwritten
                && known.as_ref().is_none_or(|a| {
                    a.writer
                        .as_ref()
                        .is_none_or(|w| w.stream != stream || w.ordinal <= ordinal)
                })
            {
                restored.push(id.clone());
            }
            match known {
                // acknowledged with this content: left for the resolver to
                // compare (it skips it), not to overwrite by id
                Some(a) if a.hash == hash && !overwritten => stored.push(None),
                Some(a)
                    if !overwritten
                        && a.writer
                            .as_ref()
                            .is_some_and(|w| w.stream == stream && w.ordinal > ordinal) =>
                {
                    superseded.push(id);
                    stored.push(a.server_id.map(|id| fhirlift_core::group::StoredAt {
                        id,
                        version: a.version,
                    }));
                }
                Some(a) => {
                    if same {
                        tracing::debug!(
                            record = %group.provenance,
                            identity = %id.search_url(),
                            overwritten,
                            writer = ?a.writer,
                            ordinal,
                            "changed since the ledger's acknowledgement"
                        );
                    }
                    same = false;
                    stored.push(a.server_id.map(|id| fhirlift_core::group::StoredAt {
                        id,
                        version: a.version,
                    }));
                }
                None => {
                    // new to the target: so, most likely, are the ones after
                    // it (a first run looks each record up once)
                    same = false;
                    break;
                }
            }
        }
        stored.resize(group.operations.len(), None);
        if same {
            return Ok(Delta::Unchanged);
        }
        let superseded: Vec<_> = superseded.into_iter().cloned().collect();
        for id in restored {
            self.overwritten.remove(&id);
        }
        self.overwritten.extend(superseded);
        Ok(Delta::Changed(stored))
    }

    /// Claims the record's key and identities for this run ([`crate::claims`]).
    /// Returns why the record is rejected: its key repeats an earlier
    /// record's, or it writes an identity an earlier record wrote with other
    /// content and the stream's policy is to reject (then the earlier record
    /// is rejected too). Every collision is counted and written down.
    fn claim(
        &mut self,
        index: usize,
        policy: CollisionPolicy,
        group: &WriteGroup,
        hashes: &[u128],
    ) -> Result<Claimed, SinkError> {
        let me = claim_of(&self.summaries[index].stream, group);
        // the whole record's content, to tell a repeat from a conflict
        let content = hashes.iter().fold(0u128, |acc, h| acc.rotate_left(5) ^ h);
        if let Some(first) = self.claims.key(me(content)).map_err(claims_error)? {
            if first.hash == content {
                return Ok(Claimed::Repeat(shown(&first.at)));
            }
            if policy == CollisionPolicy::LaterWins {
                // a feed that reuses an id (a corrected message resent, an
                // archive of several senders): counted, written in order
                self.summaries[index].repeated_keys += 1;
                return self.claim_identities(index, policy, group, hashes);
            }
            if !self.tracks[index].keys_repeat {
                tracing::warn!(stream = %self.summaries[index].stream, "a key repeats in this stream: its resume point stays where it was");
            }
            self.tracks[index].keys_repeat = true;
            return Ok(Claimed::Rejected(format!(
                "key {:?} repeats: {} has the same key; keys must be unique within a stream \
                 (the ledger follows each record by its key, and a stopped run resumes by it): \
                 remove the repeated row, or make `key:` name the columns that tell the \
                 records apart",
                group.key,
                shown(&first.at)
            )));
        }
        self.claim_identities(index, policy, group, hashes)
    }

    /// The identity half of [`Accounts::claim`].
    fn claim_identities(
        &mut self,
        index: usize,
        policy: CollisionPolicy,
        group: &WriteGroup,
        hashes: &[u128],
    ) -> Result<Claimed, SinkError> {
        let me = claim_of(&self.summaries[index].stream, group);
        for (op, &hash) in group.operations.iter().zip(hashes) {
            let Some(id) = &op.identity else {
                continue;
            };
            let Some(first) = self
                .claims
                .identity(id, me(hash), policy == CollisionPolicy::LaterWins)
                .map_err(claims_error)?
            else {
                continue;
            };
            self.summaries[index].collisions += 1;
            let search = id.search_url();
            let side = |c: &fhirlift_ledger::claims::Claim| {
                serde_json::json!({
                    "stream": c.stream,
                    "key": c.key,
                    "provenance": serde_json::from_str::<serde_json::Value>(&c.at).unwrap_or_default(),
                })
            };
            self.rejects
                .write_collision(&crate::rejects::Collision {
                    identity: &search,
                    first: &side(&first),
                    then: &side(&me(hash)),
                    policy,
                })
                .map_err(|e| SinkError(format!("collisions file: {e}")))?;
            if policy == CollisionPolicy::LaterWins {
                continue;
            }
            let why = "two records of a table on one identifier is a data error (a repeated row), \
                       so both are rejected: merge the rows at the source, or give the mapping an \
                       identifier that tells them apart; `collisions: later-wins` on the stream \
                       writes the later over the earlier instead";
            self.condemn(
                &first,
                format!(
                    "{search} is written again, with other content, by {} (key {:?}); {why}. \
                     This record was sent before the repeat was seen: the server holds its content",
                    group.provenance, group.key
                ),
            )?;
            return Ok(Claimed::Rejected(format!(
                "{search} was written, with other content, by {} (key {:?}) earlier in this run; {why}",
                shown(&first.at),
                first.key
            )));
        }
        Ok(Claimed::Clear)
    }

    /// Rejects the earlier record of a collision: settled now if it was,
    /// or when it settles.
    fn condemn(
        &mut self,
        first: &fhirlift_ledger::claims::Claim,
        reason: String,
    ) -> Result<(), SinkError> {
        let Some(index) = self.summaries.iter().position(|s| s.stream == first.stream) else {
            return Ok(());
        };
        let provenance: Provenance = match serde_json::from_str(&first.at) {
            Ok(p) => p,
            Err(_) => return Ok(()),
        };
        let open = self.tracks[index]
            .names
            .iter()
            .find(|(_, (key, p, _))| *key == first.key && *p == provenance)
            .map(|(&seq, _)| seq);
        match open {
            Some(seq) => {
                self.condemned.insert((index, seq), reason.clone());
            }
            None => {
                if let Some(ledger) = self.ledger.as_deref_mut() {
                    ledger.record_rejected(
                        &first.stream,
                        &first.key,
                        &serde_json::to_value(&provenance).unwrap_or_default(),
                        &reason,
                    );
                }
            }
        }
        let stream = self.summaries[index].stream.clone();
        self.reject(
            index,
            Reject {
                stream: &stream,
                key: Some(&first.key),
                provenance: &provenance,
                stage: Stage::Collision,
                mapping: None,
                reason: &reason,
                request: None,
                outcome: None,
            },
        )
    }

    /// Whether the ledger holds the record as rejected.
    fn was_rejected(&self, stream: &str, key: &str) -> Result<bool, SinkError> {
        match self.ledger.as_deref() {
            Some(ledger) => ledger.is_rejected(stream, key).map_err(ledger_error),
            None => Ok(false),
        }
    }

    /// Counts a group the ledger knew unchanged.
    fn unchanged(&mut self, index: usize, group: &WriteGroup) {
        let summary = &mut self.summaries[index];
        summary.unchanged_records += 1;
        for op in &group.operations {
            // accounted for like a written one, so the totals add up
            count(&mut summary.resources, &op.resource_type, 1);
            // the type is known after the first record: no String per op
            match summary.written.get_mut(op.resource_type.as_str()) {
                Some(counts) => counts.unchanged += 1,
                None => {
                    summary.written.insert(
                        op.resource_type.clone(),
                        OutcomeCounts {
                            unchanged: 1,
                            ..OutcomeCounts::default()
                        },
                    );
                }
            }
        }
    }

    /// The planner refused `ops` operations of a record.
    fn refused(
        &mut self,
        index: usize,
        seq: u64,
        ops: usize,
        reason: &str,
    ) -> Result<(), SinkError> {
        let track = &mut self.tracks[index];
        let Some(open) = track.open.get_mut(&seq) else {
            return Ok(());
        };
        open.ops_left = open.ops_left.saturating_sub(ops);
        open.rejected.get_or_insert_with(|| reason.to_owned());
        if open.ops_left == 0 {
            let reason = open.rejected.clone();
            track.open.remove(&seq);
            self.complete(index, seq, reason.as_deref())?;
        }
        Ok(())
    }

    /// A record is settled: done, or rejected with a reason. The stream's
    /// mark moves up to the first record still open.
    fn complete(
        &mut self,
        index: usize,
        seq: u64,
        rejected: Option<&str>,
    ) -> Result<(), SinkError> {
        self.settle_record(index, seq, rejected, true)
    }

    /// [`Accounts::complete`]; `remember: false` leaves the record's row in
    /// the ledger alone (a record the ledger already holds as done).
    fn settle_record(
        &mut self,
        index: usize,
        seq: u64,
        rejected: Option<&str>,
        remember: bool,
    ) -> Result<(), SinkError> {
        let condemned = self.condemned.remove(&(index, seq));
        let rejected = rejected.or(condemned.as_deref());
        let track = &mut self.tracks[index];
        track.open.remove(&seq);
        let Some((key, provenance, ordinal)) = track.names.remove(&seq) else {
            return Ok(());
        };
        let stream = self.summaries[index].stream.clone();
        if remember && let Some(ledger) = self.ledger.as_deref_mut() {
            match rejected {
                None => ledger.record_done(&stream, &key),
                Some(reason) => ledger.record_rejected(
                    &stream,
                    &key,
                    &serde_json::to_value(&provenance).unwrap_or_default(),
                    reason,
                ),
            }
        }
        track.settled.insert(seq, (provenance, ordinal));
        // the mark: the last record before the first one not yet settled
        let new_mark = match track.names.keys().next() {
            Some(first_unsettled) => first_unsettled - 1,
            None => track.next,
        };
        if new_mark > track.mark
            && !track.keys_repeat
            && let Some((provenance, ordinal)) = track.settled.get(&new_mark).cloned()
        {
            track.settled = track.settled.split_off(&(new_mark + 1));
            track.mark = new_mark;
            if self.marks
                && let Some(ledger) = self.ledger.as_deref_mut()
            {
                ledger.set_mark(
                    &stream,
                    &serde_json::to_value(&provenance).unwrap_or_default(),
                    // records at or before it, counted from the stream's start
                    ordinal + 1,
                );
            }
        }
        Ok(())
    }

    /// Writes the ledger's queue now and then (every second), or now.
    fn commit_now_and_then(&mut self, now: bool) -> Result<(), SinkError> {
        if !now && self.last_commit.elapsed() < Duration::from_secs(1) {
            return Ok(());
        }
        self.last_commit = Instant::now();
        if let Some(ledger) = self.ledger.as_deref_mut() {
            ledger.commit().map_err(ledger_error)?;
        }
        Ok(())
    }

    /// Every request of a phase is settled: streams read to their end
    /// start from the beginning next time (the delta check skips what did
    /// not change); stopped ones keep their mark and count what was open.
    fn phase_settled(&mut self, phase: usize) -> Result<(), SinkError> {
        for (summary, track) in self.summaries.iter().zip(&self.tracks) {
            if summary.phase != phase || track.next == 0 && summary.records == 0 {
                continue;
            }
            let Some(ledger) = self.ledger.as_deref_mut() else {
                continue;
            };
            if !self.marks {
                continue;
            }
            if summary.failed.is_none() && track.open.is_empty() {
                ledger.stream_finished(&summary.stream);
            } else {
                ledger.set_pending(&summary.stream, track.open.len() as u64);
            }
        }
        self.commit_now_and_then(true)
    }

    fn reject(&mut self, index: usize, r: Reject<'_>) -> Result<(), SinkError> {
        let summary = &mut self.summaries[index];
        summary.rejected += 1;
        if summary.rejected <= LOGGED_REJECTS {
            tracing::warn!(
                stream = %summary.stream,
                record = %r.provenance,
                mapping = r.mapping.as_deref().unwrap_or(""),
                stage = ?r.stage,
                "record rejected; the reason is in the rejects file"
            );
        }
        self.rejects
            .write(&r)
            .map_err(|e| SinkError(format!("rejects file: {e}")))
    }

    /// Counts what the server answered for, and writes its rejects.
    fn absorb(&mut self, settled: Vec<Settled>) -> Result<(), SinkError> {
        for s in settled {
            let Some(index) = self.summaries.iter().position(|x| *x.stream == *s.stream) else {
                continue;
            };
            if s.outcome != Outcome::Rejected
                && let (Some(ledger), Some(id)) = (self.ledger.as_deref_mut(), &s.identity)
            {
                ledger.acknowledge(
                    &id.resource_type,
                    &id.system,
                    &id.value,
                    fhirlift_ledger::Acknowledged {
                        server_id: s.server_id.clone(),
                        version: s.version.clone(),
                        hash: s.hash,
                        writer: self.tracks[index].names.get(&s.seq).map(|(_, _, ordinal)| {
                            fhirlift_ledger::Writer {
                                stream: s.stream.to_string(),
                                ordinal: *ordinal,
                            }
                        }),
                    },
                );
            }
            let track = &mut self.tracks[index];
            if let Some(open) = track.open.get_mut(&s.seq) {
                open.ops_left = open.ops_left.saturating_sub(1);
                if s.outcome == Outcome::Rejected {
                    open.rejected.get_or_insert_with(|| s.reason.clone());
                }
                if open.ops_left == 0 {
                    let reason = open.rejected.clone();
                    self.complete(index, s.seq, reason.as_deref())?;
                }
            }
            let counts = self.summaries[index]
                .written
                .entry(s.resource_type)
                .or_default();
            match s.outcome {
                Outcome::Created => counts.created += 1,
                Outcome::Updated => counts.updated += 1,
                Outcome::Unchanged => counts.unchanged += 1,
                Outcome::Rejected => counts.rejected += 1,
            }
            if s.retries > 0 {
                self.summaries[index].retried += 1;
            }
            if s.outcome == Outcome::Rejected && s.reject_line {
                let request = s
                    .entry
                    .as_deref()
                    .and_then(|e| serde_json::from_str(e).ok());
                let reason = match s.status {
                    Some(status) => format!("the server refused it ({status}): {}", s.reason),
                    None => s.reason.clone(),
                };
                self.reject(
                    index,
                    Reject {
                        stream: &s.stream,
                        key: Some(&s.key),
                        provenance: &s.provenance,
                        stage: Stage::Server,
                        mapping: None,
                        reason: &reason,
                        request,
                        outcome: s.server_outcome,
                    },
                )?;
            }
        }
        Ok(())
    }
}

/// Watches a run: called as streams start, after every chunk of records,
/// and when a phase is answered. Counts only, never record data.
pub trait ProgressObserver {
    fn stream_started(&mut self, _summary: &StreamSummary) {}
    /// `activity`: requests in flight and retries so far, when sending.
    fn update(&mut self, summary: &StreamSummary, activity: Option<(u64, u64)>);
    fn stream_done(&mut self, _summary: &StreamSummary) {}
}

/// Progress as a log line every few seconds (when not on a terminal).
pub struct LogProgress {
    last: Instant,
    last_records: u64,
}

impl LogProgress {
    const EVERY: Duration = Duration::from_secs(5);

    pub fn new() -> LogProgress {
        LogProgress {
            last: Instant::now(),
            last_records: 0,
        }
    }
}

impl Default for LogProgress {
    fn default() -> Self {
        LogProgress::new()
    }
}

impl ProgressObserver for LogProgress {
    fn stream_started(&mut self, _summary: &StreamSummary) {
        self.last = Instant::now();
        self.last_records = 0;
    }

    fn update(&mut self, summary: &StreamSummary, activity: Option<(u64, u64)>) {
        let elapsed = self.last.elapsed();
        if elapsed < Self::EVERY {
            return;
        }
        let rate = (summary.records - self.last_records) as f64 / elapsed.as_secs_f64();
        let (in_flight, retries) = activity.unwrap_or_default();
        tracing::info!(
            stream = %summary.stream,
            records = summary.records,
            records_per_s = rate.round() as u64,
            requests = summary.requests,
            in_flight,
            retries,
            written = summary.written_count(),
            rejected = summary.rejected,
            "progress"
        );
        self.last = Instant::now();
        self.last_records = summary.records;
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

/// Adds `delta` to a per-type count without allocating for known types.
fn count(counts: &mut BTreeMap<String, u64>, resource_type: &str, delta: i64) {
    match counts.get_mut(resource_type) {
        Some(n) => *n = n.saturating_add_signed(delta),
        None => {
            counts.insert(resource_type.to_owned(), delta.max(0) as u64);
        }
    }
}

/// Writes every request bundle as a numbered JSON file per phase:
/// `DIR/phase-1/000001-patients.json`, exactly the bytes that would be sent.
pub struct DryRunSink {
    dir: PathBuf,
    numbers: BTreeMap<usize, u64>,
}

impl DryRunSink {
    /// Empties (or creates) `dir` for a fresh set of bundles.
    pub fn create(dir: &Path) -> Result<DryRunSink, SinkError> {
        let io = |e: std::io::Error| SinkError(format!("{}: {e}", dir.display()));
        if dir.exists() {
            for entry in std::fs::read_dir(dir).map_err(io)? {
                let path = entry.map_err(io)?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if path.is_dir() && name.starts_with("phase-") {
                    std::fs::remove_dir_all(&path).map_err(io)?;
                }
            }
        }
        std::fs::create_dir_all(dir).map_err(io)?;
        Ok(DryRunSink {
            dir: dir.to_path_buf(),
            numbers: BTreeMap::new(),
        })
    }
}

impl RequestSink for DryRunSink {
    fn submit(&mut self, request: Request) -> Result<(), SinkError> {
        let n = self.numbers.entry(request.phase).or_default();
        *n += 1;
        let dir = self.dir.join(format!("phase-{}", request.phase));
        let path = dir.join(format!("{:06}-{}.json", n, request.stream));
        // bundles hold names and birth dates: readable by their owner only
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut file = crate::rejects::create_private(&path)?;
            file.write_all(&request.body)?;
            file.flush()
        };
        write().map_err(|e| SinkError(format!("{}: {e}", path.display())))
    }
}

/// How a run uses the ledger, and which records it takes.
#[derive(Default)]
pub struct RunOptions<'l> {
    /// The state store: resume marks, delta, rejects. `None`: no memory
    /// between runs (dry runs, previews).
    pub ledger: Option<&'l mut Ledger>,
    /// `--full`: start every stream at its beginning and send every
    /// record, whatever the ledger says.
    pub full: bool,
    /// `--shard K/N`: only the records whose key hashes to K of N.
    pub shard: Option<(u64, u64)>,
    /// `retry-rejects`: only the records the ledger holds as rejected.
    pub only_rejected: bool,
    /// Set (by Ctrl-C) to stop reading; what is in flight is settled.
    pub stop: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// `--phase N`: run only this phase (shards run a phase each, all of
    /// them, before any starts the next).
    pub phase: Option<usize>,
    /// Streams sent in full although the run is a delta: the server lost
    /// resources the ledger says it acknowledged (see the runner's probe).
    pub full_streams: std::collections::BTreeSet<String>,
}

/// What happened to one stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamSummary {
    pub stream: String,
    pub phase: usize,
    /// Records read from the source (rejected ones included).
    pub records: u64,
    /// Resources planned, by type.
    pub resources: BTreeMap<String, u64>,
    /// Records that write nothing: every emit entry skipped by `when:`, or
    /// not covered by the built-in map.
    pub skipped: u64,
    /// The reasons given for skipped records (message types without a map), counted.
    pub skipped_because: BTreeMap<String, u64>,
    pub rejected: u64,
    pub requests: u64,
    pub bytes: u64,
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
    /// Set when the stream stopped early (the source failed, or Ctrl-C).
    pub failed: Option<String>,
    /// Where reading started: after this record, from the ledger's mark.
    pub resumed_after: Option<String>,
    /// Records the ledger knew unchanged: no request was sent for them.
    pub unchanged_records: u64,
    /// What the server answered, by resource type (empty in a dry run).
    pub written: BTreeMap<String, OutcomeCounts>,
    /// Operations that needed more than one attempt.
    pub retried: u64,
    /// Identities written by two records of this run with different
    /// content (each pair is a line of the collisions file).
    pub collisions: u64,
    /// Records whose key an earlier record of the run had, with other
    /// content, written all the same (`collisions: later-wins`).
    pub repeated_keys: u64,
}

impl StreamSummary {
    /// Operations the server acknowledged (created, updated or unchanged).
    pub fn written_count(&self) -> u64 {
        self.written
            .values()
            .map(|c| c.created + c.updated + c.unchanged)
            .sum()
    }
}

/// Server outcomes of one resource type.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct OutcomeCounts {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: u64,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What happened in a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub streams: Vec<StreamSummary>,
    /// Requests really sent, when writing to a server.
    pub traffic: Option<Traffic>,
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
    pub rejects_file: Option<PathBuf>,
    /// The collisions file, when a collision was written to it.
    pub collisions_file: Option<PathBuf>,
    /// The first rejects (up to five), as `provenance: reason`.
    pub first_rejects: Vec<String>,
}

impl RunSummary {
    /// Identities written by two records with different content.
    pub fn collisions(&self) -> u64 {
        self.streams.iter().map(|s| s.collisions).sum()
    }

    pub fn rejected(&self) -> u64 {
        self.streams.iter().map(|s| s.rejected).sum()
    }

    pub fn failed(&self) -> bool {
        self.streams.iter().any(|s| s.failed.is_some())
    }

    pub fn resources(&self) -> u64 {
        self.streams.iter().flat_map(|s| s.resources.values()).sum()
    }

    pub fn requests(&self) -> u64 {
        self.streams.iter().map(|s| s.requests).sum()
    }
}

/// Mapped chunks waiting between the mapping thread and the main loop: a
/// bound, so memory stays flat when the sender is the slow part.
const MAPPED_CHUNKS_AHEAD: usize = 4;

/// What the mapping thread hands the main loop, in source order.
enum Prepared {
    Record {
        key: String,
        provenance: Provenance,
        /// Its place in the stream ([`fhirlift_ledger::Writer::ordinal`]).
        ordinal: u64,
        /// [`fhirlift_core::group::content_hash`] of each operation, for the delta.
        hashes: Vec<u128>,
        mapped: Result<Mapped, MapError>,
    },
    /// A record the connector could not read, and its ordinal.
    Rejected(fhirlift_core::connector::RecordError, u64),
    /// The stream cannot go on.
    Failed(String),
    /// The stream was read to its end (or failed): the last event sent.
    End,
}

/// Refuses a record that writes two resources on one identity (the
/// second would silently overwrite the first), naming both.
fn one_identity_each(
    mapped: Mapped,
    stream: &Arc<str>,
    key: &str,
    provenance: &Provenance,
) -> Result<Mapped, MapError> {
    let Mapped::Group(group) = &mapped else {
        return Ok(mapped);
    };
    let Some((first, second)) = group.shared_identity() else {
        return Ok(mapped);
    };
    let ops = &group.operations;
    let id = ops[second]
        .identity
        .as_ref()
        .expect("shared_identity found it");
    Err(MapError {
        stream: stream.clone(),
        key: key.to_owned(),
        provenance: provenance.clone(),
        at: None,
        message: format!(
            "two resources of this record are written on one identifier, {}?identifier={}|{}: resource {} ({}) and resource {} ({}); \
             the second would overwrite the first. Give each its own identifier (derive one from the record's key or a column that tells them apart)",
            id.resource_type,
            id.system,
            id.value,
            first + 1,
            ops[first].resource_type,
            second + 1,
            ops[second].resource_type,
        ),
    })
}

/// One stream's mapping, on its own thread: the connector's records are
/// filtered (shard, retried keys), mapped and hashed there, while the main
/// loop checks the ledger, packs and sends. Mapping is pure (no I/O, no
/// shared state), so it moves off the main loop without changing any
/// outcome; order is kept.
struct MappingStage {
    mapper: Arc<dyn ResourceMapper>,
    stream: Arc<str>,
    shard: Option<(u64, u64)>,
    retry: Option<std::collections::HashSet<String>>,
    /// The ordinal of the first record the connector yields (the records a
    /// resumed run skips are counted in it).
    first_ordinal: u64,
}

impl MappingStage {
    fn takes(&self, key: &str) -> bool {
        self.shard
            .is_none_or(|(k, n)| shard_of(&self.stream, key, n) == k)
            && self.retry.as_ref().is_none_or(|keys| keys.contains(key))
    }

    /// Starts the thread. It stops when the stream ends or the receiver is
    /// dropped; it ends with [`Prepared::End`] unless it panicked.
    fn spawn(
        self,
        mut open: fhirlift_core::connector::RecordStream,
    ) -> Result<std::sync::mpsc::Receiver<Vec<Prepared>>, SinkError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(MAPPED_CHUNKS_AHEAD);
        std::thread::Builder::new()
            .name(format!("map-{}", self.stream))
            .spawn(move || {
                let mut ordinal = self.first_ordinal;
                while let Some(chunk) = open.blocking_next_chunk() {
                    let mut out = Vec::with_capacity(chunk.len());
                    let mut failed = false;
                    for event in chunk {
                        match event {
                            SourceEvent::Record(record) => {
                                ordinal += 1;
                                if !self.takes(&record.key) {
                                    continue;
                                }
                                let key = record.key.clone();
                                let provenance = record.provenance.clone();
                                let mapped = self.mapper.map(record).and_then(|m| {
                                    one_identity_each(m, &self.stream, &key, &provenance)
                                });
                                let hashes = match &mapped {
                                    Ok(Mapped::Group(g)) => g
                                        .operations
                                        .iter()
                                        .map(|o| {
                                            fhirlift_core::group::content_hash(o.resource.as_str())
                                        })
                                        .collect(),
                                    _ => Vec::new(),
                                };
                                out.push(Prepared::Record {
                                    key,
                                    provenance,
                                    ordinal: ordinal - 1,
                                    hashes,
                                    mapped,
                                });
                            }
                            SourceEvent::Rejected(e) => {
                                ordinal += 1;
                                if self.takes(&e.provenance.to_string()) {
                                    out.push(Prepared::Rejected(e, ordinal - 1));
                                }
                            }
                            SourceEvent::Failed(e) => {
                                out.push(Prepared::Failed(e.to_string()));
                                failed = true;
                                break;
                            }
                        }
                    }
                    if failed {
                        out.push(Prepared::End);
                        let _ = tx.send(out);
                        return;
                    }
                    if tx.send(out).is_err() {
                        return;
                    }
                }
                let _ = tx.send(vec![Prepared::End]);
            })
            .map_err(|e| SinkError(format!("cannot start the mapping thread: {e}")))?;
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirlift_core::connector::RecordStream;
    use fhirlift_core::record::{Record, Schema, Value};

    /// Maps every record to nothing, and panics on the key "boom".
    struct PanicsOnBoom;

    impl ResourceMapper for PanicsOnBoom {
        fn stream(&self) -> &str {
            "s"
        }
        fn map(&self, record: Record) -> Result<Mapped, MapError> {
            if record.key == "boom" {
                panic!("a mapper bug");
            }
            Ok(Mapped::Skipped(None))
        }
        fn shape(&self) -> MapperShape {
            MapperShape::default()
        }
    }

    fn records(keys: &'static [&'static str]) -> RecordStream {
        RecordStream::from_blocking("s", move |tx| {
            let schema = Arc::new(Schema::new(vec!["c".into()]));
            for (n, key) in keys.iter().enumerate() {
                tx.send(SourceEvent::Record(Record {
                    stream: "s".into(),
                    key: (*key).to_owned(),
                    schema: schema.clone(),
                    values: vec![Value::Null],
                    provenance: Provenance::File {
                        file: "s.csv".into(),
                        line: n as u64 + 2,
                    },
                }));
            }
        })
        .unwrap()
    }

    fn stage(retry: Option<&[&str]>) -> MappingStage {
        MappingStage {
            mapper: Arc::new(PanicsOnBoom),
            stream: "s".into(),
            shard: None,
            retry: retry.map(|keys| keys.iter().map(|k| (*k).to_owned()).collect()),
            first_ordinal: 0,
        }
    }

    fn keys_and_end(rx: std::sync::mpsc::Receiver<Vec<Prepared>>) -> (Vec<String>, bool) {
        let mut keys = Vec::new();
        let mut ended = false;
        for event in rx.iter().flatten() {
            match event {
                Prepared::Record { key, .. } => keys.push(key),
                Prepared::End => ended = true,
                _ => {}
            }
        }
        (keys, ended)
    }

    #[test]
    fn the_mapping_stage_keeps_order_and_ends_with_its_marker() {
        let rx = stage(None).spawn(records(&["a", "b", "c"])).unwrap();
        let (keys, ended) = keys_and_end(rx);
        assert_eq!(keys, ["a", "b", "c"]);
        assert!(ended);
    }

    #[test]
    fn the_mapping_stage_takes_only_the_retried_keys() {
        let rx = stage(Some(&["b"]))
            .spawn(records(&["a", "b", "c"]))
            .unwrap();
        assert_eq!(keys_and_end(rx).0, ["b"]);
    }

    #[test]
    fn a_mapper_panic_leaves_no_end_marker_so_the_stream_is_not_finished() {
        let rx = stage(None).spawn(records(&["a", "boom", "c"])).unwrap();
        let (keys, ended) = keys_and_end(rx);
        // the chunk being mapped is lost with the thread; nothing says "done"
        assert!(keys.is_empty(), "{keys:?}");
        assert!(!ended);
    }
}
