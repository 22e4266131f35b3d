//! A stream's compiled mapping ([`StreamMapper`]): records to write groups,
//! through FHIR-shaped templates, with side tables ([`LookupTable`])
//! loaded before mapping starts.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use minijinja::Environment;

use crate::config::{ConfigError, StreamConfig};
use crate::template::{Compiler, Condition, Names, RenderBuf, Scope, ScopeShared, Tmpl};
use crate::yaml::{Node, NodeKind};
use fhirlift_core::group::{
    Identity, Method, Operation, ResourceJson, WriteGroup, conditional_url, derived_urn_uuid,
};
use fhirlift_core::mapper::{MapError, Mapped, MapperShape, ResourceMapper};
use fhirlift_core::record::{Provenance, Record, Schema, Value};
use fhirlift_core::{Pos, TemplatePlaces};

/// A side table held in memory, keyed by one column.
#[derive(Debug)]
pub struct LookupTable {
    /// The name expressions use (`condition.condition_name`).
    pub name: String,
    /// What it was read from, for messages.
    pub source: String,
    pub schema: Arc<Schema>,
    rows: HashMap<String, Arc<Vec<Value>>>,
}

impl LookupTable {
    /// Builds the table from records; a key seen twice is an error naming both places.
    pub fn build(
        name: &str,
        source: &str,
        schema: Arc<Schema>,
        key_column: &str,
        records: impl IntoIterator<Item = Record>,
    ) -> Result<LookupTable, String> {
        let key = schema.index_of(key_column).ok_or_else(|| {
            format!(
                "lookup {name}: {source} has no column {key_column:?}; its columns: {}",
                schema.columns().join(", ")
            )
        })?;
        let mut rows = HashMap::new();
        let mut seen: HashMap<String, Provenance> = HashMap::new();
        for record in records {
            let mut k = String::new();
            record.values[key].write_text(&mut k);
            if let Some(first) = seen.get(&k) {
                return Err(format!(
                    "{}: lookup {name}: key {k:?} is also at {first}; keys of a lookup table must be unique",
                    record.provenance
                ));
            }
            seen.insert(k.clone(), record.provenance.clone());
            rows.insert(k, Arc::new(record.values));
        }
        Ok(LookupTable {
            name: name.to_owned(),
            source: source.to_owned(),
            schema,
            rows,
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn get(&self, key: &str) -> Option<&Arc<Vec<Value>>> {
        self.rows.get(key)
    }
}

/// How an emitted resource is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    /// `PUT Type?identifier=…`: idempotent (the default).
    Update,
    /// A plain POST, asked for with `write: create`: duplicates on re-run.
    Create,
}

struct EmitEntry {
    resource_type: String,
    /// `for_each: OBX`: one resource per segment of that name.
    for_each: Option<String>,
    local: Option<usize>,
    when: Condition,
    write: WriteMode,
    body: Tmpl,
    /// Where each element of `body` is written in the mapping file.
    places: Arc<TemplatePlaces>,
    pos: Pos,
}

struct BoundLookup {
    /// The record column holding the key.
    on: usize,
    optional: bool,
    from: String,
}

/// The compiled mapping of one stream.
pub struct StreamMapper {
    stream: Arc<str>,
    transaction: bool,
    entries: Vec<EmitEntry>,
    lookups: Vec<BoundLookup>,
    shared: Arc<ScopeShared>,
    /// Resource types this stream writes.
    pub emitted_types: BTreeSet<String>,
    /// Resource types its references point at (`ref('Patient', …)`).
    pub referenced_types: BTreeSet<String>,
}

impl StreamMapper {
    /// The most resources one record can emit, and how many of them are
    /// idempotent writes on an identifier (PUT) rather than plain creates.
    pub fn most_emitted(&self) -> (usize, usize) {
        let puts = self
            .entries
            .iter()
            .filter(|e| e.write != WriteMode::Create)
            .count();
        (self.entries.len(), puts)
    }

    /// Whether everything one record emits is written atomically.
    pub fn is_transaction(&self) -> bool {
        self.transaction
    }

    /// Compiles a stream's emit entries against its source's columns.
    /// Every error is collected, each with its mapping file:line.
    pub fn compile(
        env: &'static Environment<'static>,
        stream: &StreamConfig,
        vars: &[(String, serde_json::Value)],
        columns: &Schema,
        lookups: Vec<Arc<LookupTable>>,
    ) -> Result<StreamMapper, Vec<ConfigError>> {
        let mut errors = Vec::new();
        // the stream's zone, for fhir_datetime without one of its own
        let mut vars = vars.to_vec();
        if let Some(zone) = &stream.zone {
            vars.push((
                crate::functions::ZONE_KEY.to_owned(),
                serde_json::Value::String(zone.clone()),
            ));
        }
        let vars = vars.as_slice();
        let mut bound = Vec::new();
        for cfg in &stream.lookups {
            match columns.index_of(&cfg.by) {
                Some(on) => bound.push(BoundLookup {
                    on,
                    optional: cfg.optional,
                    from: cfg.from.clone(),
                }),
                None => errors.push(ConfigError::at(
                    &cfg.pos,
                    format!(
                        "lookup {} joins on {:?}, which is not a column of {}; columns: {}",
                        cfg.name,
                        cfg.by,
                        stream.from,
                        columns.columns().join(", ")
                    ),
                )),
            }
        }
        for key in &stream.key {
            if columns.index_of(key).is_none() {
                errors.push(ConfigError::at(
                    &stream.pos,
                    format!(
                        "key column {key:?} is not in {}; columns: {}",
                        stream.from,
                        columns.columns().join(", ")
                    ),
                ));
            }
        }
        let local_names: Vec<String> = stream
            .emit
            .iter()
            .filter_map(|e| e.get("as").and_then(Node::as_str).map(str::to_owned))
            .collect();
        if !local_names.is_empty() && !stream.transaction {
            errors.push(ConfigError::at(
                &stream.pos,
                format!(
                    "stream {} names resources with `as:`, which only links resources inside a transaction; add `transaction: true`",
                    stream.name
                ),
            ));
        }
        let mut compiler = Compiler::new(Names {
            env,
            columns,
            vars,
            lookups: &lookups,
            locals: &local_names,
        });
        let mut entries = Vec::new();
        let mut emitted_types = BTreeSet::new();
        for node in &stream.emit {
            if let Some(entry) = compile_entry(&mut compiler, node, &local_names) {
                emitted_types.insert(entry.resource_type.clone());
                entries.push(entry);
            }
        }
        errors.append(&mut compiler.errors);
        let function_settings = match crate::functions::family_settings(vars) {
            Ok(settings) => settings,
            Err(messages) => {
                for message in messages {
                    errors.push(ConfigError::at(&stream.pos, message));
                }
                Vec::new()
            }
        };
        let referenced_types = std::mem::take(&mut compiler.referenced_types);
        drop(compiler);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(StreamMapper {
            stream: Arc::from(stream.name.as_str()),
            transaction: stream.transaction,
            entries,
            lookups: bound,
            shared: Arc::new(ScopeShared::new(
                vars,
                lookups,
                local_names,
                function_settings,
            )),
            emitted_types,
            referenced_types,
        })
    }

    /// Renders one emit entry (one iteration of a `for_each`) into an operation.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &self,
        record: &Record,
        scope: &Scope<'_>,
        entry: &EmitEntry,
        index: usize,
        iteration: Option<usize>,
        where_from: &str,
        locals: &[String],
        operations: &mut Vec<Operation>,
    ) -> Result<(), MapError> {
        if let Condition::Check(cond, pos) = &entry.when {
            match cond.truthy(scope, pos) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => return Err(self.error(record, Some((e.pos, e.path)), e.message)),
            }
        }
        let mut buf = RenderBuf {
            json: Vec::with_capacity(512),
            ..RenderBuf::default()
        };
        entry
            .body
            .write(scope, &mut buf)
            .map_err(|e| self.error(record, Some((e.pos, e.path)), e.message))?;
        let json = String::from_utf8(buf.json).expect("templates write UTF-8");
        let resource = ResourceJson::from_rendered(json);
        let identity = match buf.identity {
            [Some(system), Some(value)] => Some(Identity {
                resource_type: entry.resource_type.clone(),
                system,
                value,
            }),
            // an identifier written another way: read it back
            _ => identity_of(&entry.resource_type, &resource),
        };
        let (method, url) = match (entry.write, &identity) {
            (WriteMode::Update, Some(id)) => (
                Method::Put,
                conditional_url(&id.resource_type, &id.system, &id.value),
            ),
            (WriteMode::Update, None) => {
                return Err(self.error(
                    record,
                    Some((entry.pos.clone(), format!("{}.identifier", entry.resource_type))),
                    format!(
                        "the {} has no identifier system and value for this record (empty key column?); without one it cannot be written idempotently",
                        entry.resource_type
                    ),
                ));
            }
            (WriteMode::Create, _) => (Method::Post, entry.resource_type.clone()),
        };
        let iteration = iteration.map(|i| i.to_string()).unwrap_or_default();
        let full_url = match entry.local {
            Some(i) => Some(locals[i].clone()),
            None if self.transaction => Some(derived_urn_uuid(&[
                &self.stream,
                &record.key,
                where_from,
                &index.to_string(),
                &iteration,
            ])),
            None => None,
        };
        operations.push(Operation {
            resource_type: entry.resource_type.clone(),
            method,
            url,
            full_url,
            identity,
            resource,
            stored: None,
            mapped_hash: None,
            template: Some(entry.places.clone()),
            amends: false,
        });
        Ok(())
    }

    fn error(&self, record: &Record, at: Option<(Pos, String)>, message: String) -> MapError {
        MapError {
            stream: self.stream.clone(),
            key: record.key.clone(),
            provenance: record.provenance.clone(),
            at,
            message,
        }
    }
}

fn compile_entry(compiler: &mut Compiler<'_>, node: &Node, locals: &[String]) -> Option<EmitEntry> {
    let NodeKind::Map(fields) = &node.kind else {
        compiler.errors.push(ConfigError::at(
            &node.pos,
            format!(
                "an emit entry is a resource (a mapping), found {}",
                node.describe()
            ),
        ));
        return None;
    };
    let Some(resource_type) = node.get("resourceType").and_then(Node::as_str) else {
        compiler.errors.push(ConfigError::at(
            &node.pos,
            "an emitted resource needs `resourceType:` (Patient, Condition, ...)",
        ));
        return None;
    };
    let resource_type = resource_type.to_owned();
    let mut write = WriteMode::Update;
    let mut when = Condition::Always;
    let mut local = None;
    let mut for_each = None;
    let mut body_fields = Vec::new();
    for (k, v) in fields {
        match k.as_str() {
            Some("as") => local = v.as_str().and_then(|n| locals.iter().position(|l| l == n)),
            Some("write") => match v.as_str() {
                Some("update") => write = WriteMode::Update,
                Some("create") => write = WriteMode::Create,
                _ => compiler.errors.push(ConfigError::at(
                    &v.pos,
                    "write: is `update` (conditional PUT on the identifier, the default) or `create` (plain POST: duplicates on every re-run)",
                )),
            },
            Some("when") => match v.as_str() {
                Some(expr) => {
                    let expr = expr.trim_start_matches('=').trim();
                    when = compiler.compile_condition(expr, v);
                    if matches!(when, Condition::Never) && compiler.errors.is_empty() {
                        return None;
                    }
                }
                None => compiler
                    .errors
                    .push(ConfigError::at(&v.pos, "when: takes an expression, e.g. when: \"status != 'deleted'\"")),
            },
            Some("for_each") => match v.as_str() {
                Some(name)
                    if name.len() == 3
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) =>
                {
                    for_each = Some(name.to_owned());
                }
                _ => compiler.errors.push(ConfigError::at(
                    &v.pos,
                    "for_each: takes an HL7 segment name (OBX, NK1, DG1, ...): the entry emits one resource per segment of that name",
                )),
            },
            Some("id") => compiler.errors.push(ConfigError::at(
                &k.pos,
                format!(
                    "{resource_type}.id cannot be set by a mapping: the server assigns ids \
                     (Medplum refuses a client's id on create), and fhirlift finds the \
                     resource again by its first identifier. Put the source's id in an \
                     identifier instead: identifier: [{{ system: ..., value: ... }}]"
                ),
            )),
            _ => body_fields.push((k.clone(), v.clone())),
        }
    }
    if for_each.is_some() && local.is_some() {
        compiler.errors.push(ConfigError::at(
            &node.pos,
            "an entry with for_each: emits several resources and cannot be named with `as:`",
        ));
    }
    if write == WriteMode::Update && node.get("identifier").is_none() {
        compiler.errors.push(ConfigError::at(
            &node.pos,
            format!(
                "{resource_type} has no identifier: fhirlift writes PUT {resource_type}?identifier=system|value so that a re-run updates instead of duplicating; add an identifier (derived from the parent's key if the source has none), or `write: create` to accept a duplicate on every re-run"
            ),
        ));
    }
    let body_node = Node {
        pos: node.pos.clone(),
        kind: NodeKind::Map(body_fields),
    };
    compiler.places.clear();
    let body = compiler.compile(&body_node, &resource_type);
    let mut elements: Vec<(String, Pos)> = std::mem::take(&mut compiler.places)
        .into_iter()
        .filter_map(|(path, pos)| {
            let below = path.strip_prefix(resource_type.as_str())?;
            Some((below.strip_prefix('.').unwrap_or(below).to_owned(), pos))
        })
        .collect();
    elements.sort_by(|a, b| a.0.cmp(&b.0));
    elements.dedup_by(|a, b| a.0 == b.0);
    Some(EmitEntry {
        resource_type,
        for_each,
        local,
        when,
        write,
        body,
        places: Arc::new(TemplatePlaces {
            entry: node.pos.clone(),
            elements,
        }),
        pos: node.pos.clone(),
    })
}

/// The first identifier's system and value.
fn identity_of(resource_type: &str, resource: &ResourceJson) -> Option<Identity> {
    let (system, value) = resource.first_identifier()?;
    Some(Identity {
        resource_type: resource_type.to_owned(),
        system,
        value,
    })
}

impl ResourceMapper for StreamMapper {
    fn stream(&self) -> &str {
        &self.stream
    }

    fn shape(&self) -> MapperShape {
        MapperShape {
            emitted_types: self.emitted_types.clone(),
            referenced_types: self.referenced_types.clone(),
            most_emitted: if self.entries.iter().any(|e| e.for_each.is_some()) {
                None
            } else {
                Some(self.most_emitted())
            },
            transaction: self.transaction,
        }
    }

    fn map(&self, record: Record) -> Result<Mapped, MapError> {
        let mut hits = Vec::with_capacity(self.lookups.len());
        let mut key_text = String::new();
        for (i, lookup) in self.lookups.iter().enumerate() {
            key_text.clear();
            record.values[lookup.on].write_text(&mut key_text);
            let table = &self.shared.lookups[i];
            match table.get(&key_text) {
                Some(row) => hits.push(Some(row.clone())),
                None if lookup.optional || key_text.is_empty() => hits.push(None),
                None => {
                    return Err(self.error(
                        &record,
                        None,
                        format!(
                            "lookup {} found no row in {} whose {} is {key_text:?}; add the row, or mark the lookup `optional: true`",
                            table.name,
                            lookup.from,
                            self.shared.lookups[i].schema.columns().first().map(String::as_str).unwrap_or("key"),
                        ),
                    ));
                }
            }
        }
        // urn:uuids derive from the record, so a dry run is reproducible
        let where_from = if self.transaction {
            record.provenance.to_string()
        } else {
            String::new()
        };
        let locals: Vec<String> = self
            .shared
            .local_names
            .iter()
            .map(|n| derived_urn_uuid(&[&self.stream, &record.key, &where_from, n]))
            .collect();
        let record = Arc::new(record);
        let scope = Scope::new(&record, &hits, &locals, &self.shared);
        let mut operations = Vec::with_capacity(self.entries.len());
        for (index, entry) in self.entries.iter().enumerate() {
            let Some(segment_name) = &entry.for_each else {
                self.emit(
                    &record,
                    &scope,
                    entry,
                    index,
                    None,
                    &where_from,
                    &locals,
                    &mut operations,
                )?;
                continue;
            };
            let Some(parts) = record.values.iter().find_map(|v| match v {
                Value::Opaque(o) => Some(o.0.parts(segment_name)),
                _ => None,
            }) else {
                return Err(self.error(
                    &record,
                    Some((entry.pos.clone(), "for_each".into())),
                    "for_each: iterates over HL7 segments, and this record holds no HL7 message"
                        .into(),
                ));
            };
            for part in parts {
                let mut scope = Scope::new(&record, &hits, &locals, &self.shared);
                scope.segment = Some(part);
                self.emit(
                    &record,
                    &scope,
                    entry,
                    index,
                    Some(part),
                    &where_from,
                    &locals,
                    &mut operations,
                )?;
            }
        }
        if operations.is_empty() {
            return Ok(Mapped::Skipped(None));
        }
        Ok(Mapped::Group(WriteGroup {
            stream: self.stream.clone(),
            key: record.key.clone(),
            provenance: record.provenance.clone(),
            atomic: self.transaction && operations.len() > 1,
            may_split: false,
            seq: 0,
            operations,
        }))
    }
}
