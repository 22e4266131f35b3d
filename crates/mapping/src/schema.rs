//! The migration file as JSON Schema (draft-07, the draft YAML language
//! servers support), for editors: `fhirlift schema` prints it, and a file
//! that starts with `# yaml-language-server: $schema=…` gets its keys
//! completed and checked as it is written.
//!
//! [`migration_schema`] lays out what [`crate::config`] reads (the top
//! level, `target:`, a stream's keys, lookups, `map:`) and the keys the
//! template compiler takes ([`object_keys`] on any object, [`entry_keys`]
//! on an emitted resource). The rest comes from outside, as JSON: each
//! connector's settings (from its registry entry; the source's
//! `connector:` picks them, with `if`/`then`) and the FHIR element names
//! of the emitted resources (from `fhirlift-fhir`'s definitions).
//!
//! A file the schema accepts can still fail `check` (a column the source
//! does not have, an expression that does not compile, a wrong value in an
//! element): it checks names and shapes, `check` everything.

use serde_json::{Map, Value, json};

/// The `$ref` prefix of the schema's definitions.
const DEFINITIONS: &str = "#/definitions/";

/// One connector's settings as JSON Schema, from its registry entry.
#[derive(Debug, Clone, Copy)]
pub struct ConnectorSettings<'a> {
    pub name: &'a str,
    /// What `source:` takes besides `connector`.
    pub source: &'a Value,
    /// What a stream or a lookup takes besides their own keys.
    pub stream: &'a Value,
}

/// What an `emit:` entry may hold, from outside this crate.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    /// Definitions to add to the schema's (FHIR's types, by name).
    pub definitions: Map<String, Value>,
    /// The schema of one emitted resource, usually a `$ref` into them.
    pub resource: Value,
}

/// Keys the template compiler takes on any object or list item of a
/// template, besides its elements: `$ref`s to the schema's definitions
/// of them (each object of a resource names them: one definition each
/// keeps the schema small).
pub fn object_keys() -> Map<String, Value> {
    refs(&["when"])
}

/// Keys the template compiler takes on an emitted resource (an `emit:`
/// entry), besides its elements and [`object_keys`], as `$ref`s.
pub fn entry_keys() -> Map<String, Value> {
    refs(&["as", "write", "for_each"])
}

fn refs(keys: &[&str]) -> Map<String, Value> {
    keys.iter()
        .map(|k| ((*k).to_owned(), reference(&format!("key-{k}"))))
        .collect()
}

/// The definitions [`object_keys`] and [`entry_keys`] refer to.
fn template_keys() -> [(&'static str, Value); 4] {
    [
        (
            "when",
            json!({
                "type": "string",
                "description": "an expression: this object (or list item) is left out when it is false, empty or none",
            }),
        ),
        (
            "as",
            json!({
                "type": "string",
                "description": "a name for this resource, for local('name') in the record's other resources",
            }),
        ),
        (
            "write",
            json!({
                "enum": ["update", "create"],
                "description": "update: a conditional PUT on the first identifier (the default); create: a plain POST, a duplicate on every re-run",
            }),
        ),
        (
            "for_each",
            json!({
                "type": "string",
                "pattern": "^[A-Z0-9]{3}$",
                "description": "an HL7 segment name (OBX, NK1, ...): one resource per segment of that name",
            }),
        ),
    ]
}

/// The whole schema: `connectors` are those this build knows (a
/// connector not among them gets its settings unchecked), `maps` the
/// built-in maps, `resources` what an `emit:` entry holds.
pub fn migration_schema(
    connectors: &[ConnectorSettings<'_>],
    maps: &[&str],
    resources: Resources,
) -> Value {
    let mut definitions = Map::new();
    let names: Vec<&str> = connectors.iter().map(|c| c.name).collect();
    definitions.insert("source".into(), source(&names));
    definitions.insert("target".into(), target());
    for (name, schema) in [("stream", stream(None)), ("lookup", lookup(None))] {
        definitions.extend(schema.map(|s| (name.to_owned(), s)));
    }
    definitions.insert("map".into(), builtin_map(maps));
    definitions.insert(
        "emit".into(),
        json!({
            "description": "the resources each record is mapped to: FHIR R4 JSON as YAML, with {{ expressions }} in the values",
            "type": ["array", "object"],
            "allOf": [resources.resource],
            // the server assigns ids; the first identifier finds a resource again
            "properties": { "id": { "not": {}, "description": "not set by a mapping: the server assigns ids (give an identifier)" } },
            "items": { "$ref": format!("{DEFINITIONS}emit") },
        }),
    );
    let mut by_connector = Vec::new();
    let mut checked_streams = Vec::new();
    for c in connectors {
        let mut then = Map::new();
        if let Some(schema) = with_keys(c.source, connector_key(&names)) {
            let name = format!("source-{}", c.name);
            definitions.insert(name.clone(), schema);
            then.insert("source".into(), reference(&name));
        }
        if let Some(schema) = stream(Some((c.name, c.stream))) {
            let name = format!("stream-{}", c.name);
            definitions.insert(name.clone(), schema);
            then.insert(
                "streams".into(),
                json!({ "additionalProperties": reference(&name) }),
            );
            checked_streams.push(c.name);
        }
        if !then.is_empty() {
            by_connector.push(json!({
                "if": source_is(json!({ "const": c.name })),
                "then": { "properties": then },
            }));
        }
    }
    // any other connector's streams (a plugin's, or none named yet): each
    // stream is checked once, by one definition
    by_connector.push(json!({
        "if": source_is(json!({ "enum": checked_streams })),
        "else": { "properties": { "streams": { "additionalProperties": reference("stream") } } },
    }));
    for c in connectors {
        if let Some(schema) = lookup(Some((c.name, c.stream))) {
            definitions.insert(format!("lookup-{}", c.name), schema);
        }
    }
    for (key, schema) in template_keys() {
        definitions.insert(format!("key-{key}"), schema);
    }
    definitions.extend(resources.definitions);
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "fhirlift migration file",
        "description": "A migration: a source, a target server profile, and streams mapping each source record to FHIR R4 resources. Generated by `fhirlift schema`.",
        "type": "object",
        "required": ["source", "streams"],
        "additionalProperties": false,
        "properties": {
            "source": reference("source"),
            "target": reference("target"),
            "vars": {
                "type": ["object", "null"],
                "description": "constants usable in every expression: src: http://… is {{ src }}",
            },
            "streams": {
                "type": "object",
                "description": "the streams to migrate, by name: what each reads and what it writes",
            },
        },
        "allOf": by_connector,
        "definitions": definitions,
    })
}

/// An `if` that holds when `source.connector` matches `connector`.
fn source_is(connector: Value) -> Value {
    json!({
        "properties": { "source": { "properties": { "connector": connector }, "required": ["connector"] } },
        "required": ["source"],
    })
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("{DEFINITIONS}{name}") })
}

fn props<const N: usize>(entries: [(&str, Value); N]) -> Map<String, Value> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

/// `zone:` of a source or stream.
fn zone_key() -> Value {
    json!({
        "type": "string",
        "description": "the zone of date-times written without an offset: an IANA name (America/New_York) or an offset (-05:00); fhir_datetime and built-in maps use it when they name none",
        "examples": ["America/New_York", "Europe/Paris", "-05:00"],
    })
}

/// `connector:`, naming the connectors this build knows, and `zone:`.
fn connector_key(names: &[&str]) -> Map<String, Value> {
    props([
        (
            "connector",
            json!({
                "type": "string",
                "description": "the connector that reads the source (`fhirlift connectors` lists them; plugins too)",
                "examples": names,
            }),
        ),
        ("zone", zone_key()),
    ])
}

/// A connector's settings schema with `keys` beside its own settings (an
/// object schema), or none when it leaves its settings open (`true`).
fn with_keys(settings: &Value, keys: Map<String, Value>) -> Option<Value> {
    let Value::Object(schema) = settings else {
        return None;
    };
    let mut schema = schema.clone();
    let mut properties = keys;
    if let Some(Value::Object(own)) = schema.get("properties") {
        properties.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    schema.insert("properties".into(), Value::Object(properties));
    // its own descriptions stay; a title would read as the stream's
    schema.remove("title");
    Some(Value::Object(schema))
}

fn source(names: &[&str]) -> Value {
    json!({
        "type": "object",
        "description": "where the records come from: a connector and its settings",
        "required": ["connector"],
        "properties": connector_key(names),
    })
}

fn target() -> Value {
    let mut profiles: Vec<&str> = fhirlift_core::profile::PROFILES.to_vec();
    profiles.push("auto");
    json!({
        "type": ["object", "null"],
        "description": "the FHIR server written to (the server itself is given on the command line)",
        "additionalProperties": false,
        "properties": {
            "profile": {
                "enum": profiles,
                "description": "the server's limits and write strategy; auto reads the server's /metadata",
            },
            "strategy": {
                "enum": STRATEGIES,
                "description": "conditional: every write a conditional PUT; resolve: search the identifiers, then create, update by id or skip (default: the profile's)",
            },
            "async": { "type": "boolean", "description": "batches as async jobs (Prefer: respond-async)" },
            "holds": {
                "type": ["string", "array"],
                "items": { "type": "string" },
                "description": "resource types the server already holds, that ref() may name though no stream writes them",
            },
            "validate": {
                "enum": ["reject", "warn", "off", false],
                "description": "a resource that is not valid FHIR R4: reject its record (the default), warn and send it, or off",
            },
            "batch_entries": { "type": "integer", "minimum": 1, "description": "at most this many entries a batch" },
            "body_bytes": { "type": "integer", "minimum": 1, "description": "at most this many bytes a request body" },
            "server": { "description": "accepted and not read: give --server on the command line" },
            "auth": { "description": "accepted and not read: credentials come from the command line and the environment" },
        },
    })
}

/// The write strategies `target.strategy` names.
const STRATEGIES: [&str; 2] = ["conditional", "resolve"];

/// A string, or a list of them.
fn one_or_more(description: &str) -> Value {
    json!({
        "type": ["string", "integer", "array"],
        "items": { "type": ["string", "integer"] },
        "description": description,
    })
}

/// A stream: its own keys and, with `connector`, that connector's
/// settings and no other key; none when the connector leaves its
/// settings open (the generic stream is used).
fn stream(connector: Option<(&str, &Value)>) -> Option<Value> {
    let lookup = match connector {
        Some((name, settings)) if settings.is_object() => format!("lookup-{name}"),
        _ => "lookup".to_owned(),
    };
    let keys = props([
        (
            "from",
            json!({ "type": ["string", "integer"], "description": "what to read: a file, a table or a query, as the connector defines" }),
        ),
        (
            "key",
            one_or_more("the columns whose values tell records apart (a record's stable key)"),
        ),
        (
            "transaction",
            json!({ "type": "boolean", "description": "everything one record emits is written atomically" }),
        ),
        (
            "after",
            json!({
                "type": ["string", "array"],
                "items": { "type": "string" },
                "description": "streams written before this one, beyond those its references imply",
            }),
        ),
        (
            "lookup",
            json!({
                "type": "object",
                "description": "side tables joined to each record by key, by name",
                "additionalProperties": reference(&lookup),
            }),
        ),
        ("map", reference("map")),
        ("emit", reference("emit")),
        (
            "collisions",
            json!({
                "enum": ["later-wins", "reject"],
                "description": "two records writing one identity with other content: the later is written over the earlier (an update feed), or both are rejected",
            }),
        ),
        ("zone", zone_key()),
    ]);
    let mut schema = keyed(
        keys,
        connector.map(|c| c.1),
        "one stream: what it reads (from, key, its connector's settings) and what it writes (emit, or a built-in map; a built-in map in the mapping language, such as omop, brings its own from)",
        &[],
    )?;
    schema["anyOf"] = json!([{ "required": ["emit"] }, { "required": ["map"] }]);
    Some(schema)
}

/// A lookup, as [`stream`]'s.
fn lookup(connector: Option<(&str, &Value)>) -> Option<Value> {
    let keys = props([
        (
            "from",
            json!({ "type": ["string", "integer"], "description": "the side table: a file, a table or a query" }),
        ),
        (
            "key",
            json!({ "type": ["string", "integer"], "description": "the side table's key column" }),
        ),
        (
            "by",
            json!({ "type": ["string", "integer"], "description": "the record's column holding the key (default: key)" }),
        ),
        (
            "optional",
            json!({ "type": "boolean", "description": "a record with no matching row goes on without it instead of being rejected" }),
        ),
        (
            "max_rows",
            json!({ "type": "integer", "minimum": 1, "description": "the most rows the side table may have (default 500000): a lookup is held in memory whole; join a larger table in the stream's query" }),
        ),
    ]);
    keyed(
        keys,
        connector.map(|c| c.1),
        "a side table joined to each record by key, read by the source's connector",
        &["from", "key"],
    )
}

/// An object of `keys` and, with `settings`, a connector's settings (and
/// no other key: none when the connector leaves its settings open).
fn keyed(
    keys: Map<String, Value>,
    settings: Option<&Value>,
    description: &str,
    required: &[&str],
) -> Option<Value> {
    let mut schema = match settings {
        None => json!({ "type": "object", "properties": keys }),
        Some(settings) => with_keys(settings, keys)?,
    };
    schema["description"] = description.into();
    for key in required {
        match schema.get_mut("required").and_then(Value::as_array_mut) {
            Some(list) if list.iter().any(|k| k == key) => {}
            Some(list) => list.push((*key).into()),
            None => schema["required"] = json!([key]),
        }
    }
    Some(schema)
}

/// `map: hl7v2`, or `map: {builtin: hl7v2, ...settings}`.
fn builtin_map(maps: &[&str]) -> Value {
    json!({
        "description": "a built-in map (`fhirlift connectors` lists them); emit: entries then override its resources of the same type",
        "anyOf": [
            { "type": "string", "enum": maps },
            {
                "type": "object",
                "required": ["builtin"],
                "properties": { "builtin": { "type": "string", "enum": maps } },
            },
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::STREAM_KEYS;

    fn schema() -> Value {
        let csv = json!({ "type": "object", "properties": { "delimiter": { "type": "string" } }, "additionalProperties": false });
        let open = Value::Bool(true);
        let connectors = [
            ConnectorSettings {
                name: "csv",
                source: &csv,
                stream: &csv,
            },
            ConnectorSettings {
                name: "open",
                source: &open,
                stream: &open,
            },
        ];
        let resources = Resources {
            definitions: Map::new(),
            resource: json!({ "required": ["resourceType"] }),
        };
        migration_schema(&connectors, &["hl7v2"], resources)
    }

    #[test]
    fn a_stream_holds_the_keys_the_migration_file_reads() {
        let schema = schema();
        let defs = &schema["definitions"];
        for name in ["stream", "stream-csv"] {
            let keys: Vec<&str> = defs[name]["properties"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "delimiter")
                .collect();
            assert_eq!(keys, STREAM_KEYS, "{name}");
        }
        assert_eq!(defs["stream-csv"]["additionalProperties"], json!(false));
        assert!(defs["stream"].get("additionalProperties").is_none());
        assert_eq!(
            defs["stream-csv"]["properties"]["lookup"]["additionalProperties"],
            json!({ "$ref": "#/definitions/lookup-csv" })
        );
        assert_eq!(
            defs["source-csv"]["properties"]["connector"]["examples"],
            json!(["csv", "open"])
        );
        // a connector that leaves its settings open gets the generic stream
        assert!(defs.get("stream-open").is_none() && defs.get("source-open").is_none());
        // csv's, and the generic stream for any other connector
        assert_eq!(schema["allOf"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn the_named_strategies_and_profiles_are_known() {
        for s in STRATEGIES {
            assert!(
                fhirlift_core::profile::WriteStrategy::parse(s).is_some(),
                "{s}"
            );
        }
        let profiles = schema()["definitions"]["target"]["properties"]["profile"]["enum"].clone();
        assert_eq!(profiles, json!(["generic", "medplum", "hapi", "auto"]));
    }
}
