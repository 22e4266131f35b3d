//! Preparing a migration ([`Plan::prepare`]: connector, lookups, compiled
//! mappings, phases; everything `check` validates) and running it phase by
//! phase ([`Plan::run_observed`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::accounts::{Accounts, StreamTrack, ledger_error};
use crate::mapping_stage::RecordFilter;
use crate::progress::{LogProgress, ProgressObserver};
use crate::rejects::RejectWriter;
use crate::summary::{RunOptions, RunSummary, StreamSummary};
use fhirlift_core::connector::{ConnectorContext, SourceConnector, SourceEvent, StreamSource};
use fhirlift_core::mapper::{BuiltinMapContext, MapError, Mapped, MapperShape, ResourceMapper};
use fhirlift_core::planner::{self, Phase, StreamDeps};
use fhirlift_core::profile::ServerProfile;
use fhirlift_core::record::Schema;
use fhirlift_core::registry::Registry;
use fhirlift_core::transport::{RequestSink, SinkError};
use fhirlift_mapping::config::{
    CollisionPolicy, ConfigError, ConfigErrors, MigrationConfig, StreamConfig,
};
use fhirlift_mapping::{LookupTable, StreamMapper, WithOverrides};

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

/// Why `preview` could not show a stream.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("no stream {stream:?}; streams: {known}")]
    UnknownStream { stream: String, known: String },
    #[error(transparent)]
    Source(#[from] fhirlift_core::ConnectorError),
}

/// A validated migration: everything checked, nothing read yet.
pub struct Plan {
    pub config: MigrationConfig,
    pub profile: ServerProfile,
    pub connector_name: String,
    pub(crate) connector: Box<dyn SourceConnector>,
    pub streams: Vec<PlannedStream>,
    pub phases: Vec<Phase>,
    /// Streams of a built-in map left out because their table is absent
    /// from the source (`omop.device_exposure: table device_exposure`).
    pub absent: Vec<String>,
}

pub(crate) fn stream_source(
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

pub(crate) fn load_lookups(
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
            let mut too_many = false;
            let mut open = connector.open(&source)?;
            'read: while let Some(chunk) = open.blocking_next_chunk() {
                for event in chunk {
                    match event {
                        // held in memory whole: a table past the limit is
                        // refused before it fills memory
                        SourceEvent::Record(_) if records.len() == lookup.max_rows => {
                            too_many = true;
                            break 'read;
                        }
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
            Ok((schema, records, bad, too_many))
        });
        match result {
            Ok((_, _, _, true)) => errors.push(ConfigError::at(
                &lookup.pos,
                format!(
                    "lookup {}: {} has more than {} rows, and a lookup is held in memory whole (for each stream that uses it): join it in the stream's query instead (PostgreSQL: `from: SELECT ... FROM visits v JOIN concept c ON c.concept_id = v.visit_concept_id`), narrow it with a query, or raise `max_rows:` if memory allows",
                    lookup.name, lookup.from, lookup.max_rows
                ),
            )),
            Ok((_, _, Some(bad), _)) => errors.push(ConfigError::at(
                &lookup.pos,
                format!(
                    "lookup {}: a row of {} is unreadable: {bad}",
                    lookup.name, lookup.from
                ),
            )),
            Ok((schema, records, None, _)) => {
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

/// One stream checked against its source: its columns, lookups, built-in
/// map and compiled mapping. `None`, with the errors pushed, when any of
/// them fails: the other streams are still checked.
fn prepare_stream(
    config: &MigrationConfig,
    stream: &StreamConfig,
    connector: &dyn SourceConnector,
    registry: &Registry,
    errors: &mut Vec<ConfigError>,
) -> Option<PlannedStream> {
    let source = stream_source(&stream.name, &stream.from, &stream.key, &stream.options);
    let columns = match connector.schema(&source) {
        Ok(c) => c,
        Err(e) => {
            errors.push(ConfigError::at(
                &stream.pos,
                format!("stream {}: {e}", stream.name),
            ));
            return None;
        }
    };
    let lookups = load_lookups(connector, stream, errors);
    if lookups.len() != stream.lookups.len() {
        return None;
    }
    let counts = lookups.iter().map(|l| (l.name.clone(), l.len())).collect();
    let mapper = stream_mapper(config, stream, &columns, lookups, registry, errors)?;
    Some(PlannedStream {
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
    })
}

/// A stream's mapper: its compiled `emit:` entries, a built-in map, or a
/// built-in map with the stream's own entries laid over it (they join the
/// built-in map's transaction).
fn stream_mapper(
    config: &MigrationConfig,
    stream: &StreamConfig,
    columns: &Schema,
    lookups: Vec<Arc<LookupTable>>,
    registry: &Registry,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<dyn ResourceMapper>> {
    let compile = |stream: &StreamConfig, errors: &mut Vec<ConfigError>| {
        StreamMapper::compile(
            crate::expression_env(),
            stream,
            &config.vars,
            columns,
            lookups,
        )
        .map_err(|mut e| errors.append(&mut e))
        .ok()
    };
    let Some(map) = &stream.map else {
        return compile(stream, errors).map(|m| Arc::new(m) as Arc<dyn ResourceMapper>);
    };
    let created = registry
        .map(&map.name)
        .map_err(|e| e.to_string())
        .and_then(|r| {
            (r.create)(&BuiltinMapContext {
                stream: &stream.name,
                options: &map.options,
            })
        });
    let builtin = match created {
        Ok(m) => m,
        Err(message) => {
            errors.push(ConfigError::at(
                &map.pos,
                format!("stream {}: map {}: {message}", stream.name, map.name),
            ));
            return None;
        }
    };
    if stream.emit.is_empty() {
        return Some(Arc::from(builtin));
    }
    let mut user_stream = stream.clone();
    user_stream.transaction = builtin.shape().transaction;
    let user = compile(&user_stream, errors)?;
    Some(Arc::new(WithOverrides::new(builtin, user)))
}

/// A `ref()` to a type no stream writes points at nothing, on every
/// record: an error unless the target says it holds that type.
fn unwritten_references(deps: &[StreamDeps], config: &MigrationConfig) -> Vec<ConfigError> {
    let mut unwritten = Vec::new();
    for (d, c) in deps.iter().zip(&config.streams) {
        // a built-in map refers to what its other streams write, which a
        // source without their tables lacks: those references stay empty
        if c.generated {
            continue;
        }
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
    unwritten
}

impl PlannedStream {
    /// Whether a later record writing an identity replaces an earlier one
    /// (`collisions: later-wins`): what the server then holds is the last.
    pub fn later_wins(&self) -> bool {
        self.collisions == CollisionPolicy::LaterWins
    }
}

impl Plan {
    /// Checks a migration against its source: the connector exists, every
    /// stream opens, every column an expression uses exists, phases order.
    /// Nothing is sent anywhere.
    pub fn prepare(mut config: MigrationConfig, registry: &Registry) -> Result<Plan, ConfigErrors> {
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
        // a built-in map's stream whose table the source lacks is left out
        let mut absent = Vec::new();
        config.streams.retain(|s| {
            let Some(table) = s.optional_table.as_deref() else {
                return true;
            };
            let probe = stream_source(&s.name, table, &[], &s.options);
            let present = connector.schema(&probe).is_ok();
            if !present {
                absent.push(format!("{}: table {table}", s.name));
            }
            present
        });
        let mut errors = Vec::new();
        let streams: Vec<PlannedStream> = config
            .streams
            .iter()
            .filter_map(|stream| {
                prepare_stream(&config, stream, connector.as_ref(), registry, &mut errors)
            })
            .collect();
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
        let unwritten = unwritten_references(&deps, &config);
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
            absent,
        })
    }

    /// What the server profile will refuse in this mapping, found without
    /// reading a record: transaction streams that can emit more resources
    /// than the profile's transactions hold. Each names the stream, the
    /// limit and what to do.
    pub fn warnings(&self) -> Vec<String> {
        let p = &self.profile;
        let mut out: Vec<String> = self
            .absent
            .iter()
            .map(|a| {
                format!("stream {a} is not in the source: the built-in map's stream is left out")
            })
            .collect();
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
    ) -> Result<Vec<Result<serde_json::Value, MapError>>, PreviewError> {
        let planned = self
            .stream(stream)
            .ok_or_else(|| PreviewError::UnknownStream {
                stream: stream.to_owned(),
                known: self
                    .streams
                    .iter()
                    .map(|s| &*s.source.stream)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let mut open = self.connector.open(&planned.source)?;
        let validating = self.config.target.validate != fhirlift_mapping::config::ValidateMode::Off;
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
                                    let resource = op.resource.to_value();
                                    let mut write = serde_json::json!({
                                        "request": { "method": op.method.as_str(), "url": op.url },
                                    });
                                    // what validation finds, under the resource it is about
                                    if validating {
                                        let issues: Vec<String> =
                                            fhirlift_fhir::validate(&resource)
                                                .iter()
                                                .map(|issue| match &op.template {
                                                    Some(t) => format!(
                                                        "{issue} (at {})",
                                                        t.place_of(&issue.location)
                                                    ),
                                                    None => issue.to_string(),
                                                })
                                                .collect();
                                        if !issues.is_empty() {
                                            write["issues"] = serde_json::json!(issues);
                                        }
                                    }
                                    write["resource"] = resource;
                                    write
                                })
                                .collect();
                            serde_json::json!({ "record": provenance, "writes": resources })
                        }));
                    }
                    SourceEvent::Rejected(e) => out.push(Ok(serde_json::json!({
                        "record": e.provenance.to_string(),
                        "unreadable": e.reason,
                    }))),
                    SourceEvent::Failed(e) => return Err(e.into()),
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
            claims: fhirlift_ledger::claims::Claims::open().map_err(SinkError::from_error)?,
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
                accounts.tracks.push(StreamTrack {
                    followed: accounts.ledger.is_some(),
                    ..StreamTrack::default()
                });
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
            .map_err(|e| SinkError::caused("rejects file", e))?;
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
}
