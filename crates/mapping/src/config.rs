//! The migration file: source, target, vars and streams, read from YAML with
//! positions so that every complaint points at `file:line`.
//!
//! This module only checks the file's shape; expressions are compiled by
//! [`crate::stream`], and columns are checked against the source there.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::yaml::{self, Node, NodeKind, Pos};

/// A whole migration file.
#[derive(Debug, Clone)]
pub struct MigrationConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// Relative paths in the file resolve against this folder.
    pub base_dir: PathBuf,
    pub source: SourceConfig,
    pub target: TargetConfig,
    /// Constants usable in every expression (`{{ src }}`).
    pub vars: Vec<(String, serde_json::Value)>,
    /// Streams in file order.
    pub streams: Vec<StreamConfig>,
}

/// `source:`: which connector, and its settings.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub connector: String,
    /// `zone:`: the default zone of every stream (see [`StreamConfig::zone`]).
    pub zone: Option<String>,
    /// Everything under `source:` but `connector`, for the connector to read.
    pub settings: serde_json::Value,
    pub pos: Pos,
}

/// `target:`: the server profile and any limits the user narrows.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub profile: String,
    pub batch_entries: Option<usize>,
    pub body_bytes: Option<usize>,
    /// `conditional` or `resolve`; none: the profile's default.
    pub strategy: Option<String>,
    /// Batches go as async jobs (`Prefer: respond-async`).
    pub asynchronous: bool,
    /// Resource types the server already holds (`holds: [Organization]`):
    /// a mapping may `ref()` them though no stream writes them.
    pub holds: Vec<String>,
    /// What a resource that is not valid FHIR R4 does (`validate:`).
    pub validate: ValidateMode,
    pub pos: Pos,
}

/// `target.validate`: what happens to a record whose resources are not
/// valid FHIR R4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValidateMode {
    /// Rejected before it is packed, with the issues (the default).
    #[default]
    Reject,
    /// Sent, and its issues counted and reported.
    Warn,
    /// Not validated.
    Off,
}

/// One stream: what to read and what to emit for each record.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub name: String,
    pub pos: Pos,
    pub from: String,
    pub key: Vec<String>,
    pub lookups: Vec<LookupConfig>,
    /// Everything one record emits is written atomically.
    pub transaction: bool,
    /// Streams that must be written before this one, beyond those its references imply.
    pub after: Vec<(String, Pos)>,
    /// The `emit:` entries, compiled by the mapping module.
    pub emit: Vec<Node>,
    /// `map: name` (or `map: {builtin: name, ...settings}`): a built-in map;
    /// `emit:` entries then override its resources of the same type.
    pub map: Option<BuiltinMap>,
    /// Other keys, passed to the connector (delimiter, encoding, ...).
    pub options: serde_json::Value,
    /// What two records writing one identity with different content do
    /// (`collisions:`); none: the connector's kind decides.
    pub collisions: Option<CollisionPolicy>,
    /// `zone:` (the stream's, else the source's): the zone of date-times
    /// written without an offset, an IANA name (`America/New_York`) or a
    /// fixed offset (`-05:00`), for `fhir_datetime` without `offset=` or
    /// `zone=` and for a built-in map that names no zone of its own.
    pub zone: Option<String>,
    /// Written by a built-in map in the mapping language (`map: omop`),
    /// not by the user ([`crate::template_maps`]).
    pub generated: bool,
    /// A generated stream whose table may be absent from the source: then
    /// the stream is left out (said by `check`), not an error.
    pub optional_table: Option<String>,
}

/// What happens when two records of a run write one identity with
/// different content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CollisionPolicy {
    /// The later record is written over the earlier (an update feed: the
    /// default for message archives). Counted and named all the same.
    LaterWins,
    /// Both records are rejected, naming each other (a repeated row in a
    /// table is a data error: the default for tables).
    Reject,
}

/// A stream's built-in map and its settings.
#[derive(Debug, Clone)]
pub struct BuiltinMap {
    pub name: String,
    pub pos: Pos,
    /// The settings beside `builtin:` (an empty object for `map: name`).
    pub options: serde_json::Value,
}

/// A side table joined to each record by key.
#[derive(Debug, Clone)]
pub struct LookupConfig {
    pub name: String,
    pub pos: Pos,
    pub from: String,
    /// The side table's key column.
    pub key: String,
    /// The record's column holding the key (defaults to `key`). Not `on:`,
    /// which YAML 1.1 reads as `true`.
    pub by: String,
    /// A record with no matching row goes on without it instead of being rejected.
    pub optional: bool,
    /// The most rows the side table may have (`max_rows:`): it is held in
    /// memory whole, so a larger one is refused with what to do instead.
    pub max_rows: usize,
    pub options: serde_json::Value,
}

/// A lookup's row limit when it names none: about 100 MB of typical rows.
pub const LOOKUP_MAX_ROWS: usize = 500_000;

impl TargetConfig {
    /// What a migration file without `target:` (or with an empty one) means.
    fn unset(pos: &Pos) -> TargetConfig {
        TargetConfig {
            profile: "generic".into(),
            batch_entries: None,
            body_bytes: None,
            strategy: None,
            asynchronous: false,
            holds: Vec::new(),
            validate: ValidateMode::default(),
            pos: pos.clone(),
        }
    }

    /// The profile a target names, narrowed by the target's own limits.
    pub fn server_profile(&self) -> Result<fhirlift_core::profile::ServerProfile, String> {
        let mut p = fhirlift_core::profile::ServerProfile::named(&self.profile).ok_or_else(|| {
            if self.profile == "auto" {
                format!(
                    "{}: profile auto reads the server's /metadata: give --server URL, or name a profile ({})",
                    self.pos,
                    fhirlift_core::profile::PROFILES.join(", ")
                )
            } else {
                format!(
                    "{}: unknown server profile {:?}; known profiles: {}, or auto",
                    self.pos,
                    self.profile,
                    fhirlift_core::profile::PROFILES.join(", ")
                )
            }
        })?;
        if let Some(name) = &self.strategy {
            p.strategy = fhirlift_core::profile::WriteStrategy::parse(name).ok_or_else(|| {
                format!(
                    "{}: unknown write strategy {name:?}: conditional or resolve",
                    self.pos
                )
            })?;
        }
        if self.asynchronous {
            p.asynchronous = true;
            p.max_body_bytes = p.max_async_body_bytes;
        }
        if let Some(n) = self.batch_entries {
            p.max_batch_entries = n;
        }
        if let Some(n) = self.body_bytes {
            p.max_body_bytes = n;
        }
        Ok(p)
    }
}

/// One thing wrong with a migration file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub pos: Option<Pos>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pos {
            Some(pos) => write!(f, "{pos}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl ConfigError {
    pub fn at(pos: &Pos, message: impl Into<String>) -> ConfigError {
        ConfigError {
            pos: Some(pos.clone()),
            message: message.into(),
        }
    }
}

/// Everything wrong with a migration file, in file order.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl MigrationConfig {
    /// Reads and shape-checks a migration file.
    pub fn load(path: &Path) -> Result<MigrationConfig, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            pos: None,
            message: format!("{}: cannot read the migration file: {e}", path.display()),
        })?;
        MigrationConfig::parse(path, &text)
    }

    /// [`MigrationConfig::parse`] before built-in maps in the mapping
    /// language are expanded (`crate::template_maps`).
    pub(crate) fn parse_unexpanded(
        path: &Path,
        text: &str,
    ) -> Result<MigrationConfig, ConfigErrors> {
        let root = yaml::parse(path, text).map_err(|e| ConfigError {
            pos: None,
            message: e.to_string(),
        })?;
        let mut errors = Vec::new();
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let config = read_root(&root, path, base_dir, &mut errors);
        match config {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(ConfigErrors(errors)),
        }
    }

    pub fn stream(&self, name: &str) -> Option<&StreamConfig> {
        self.streams.iter().find(|s| s.name == name)
    }
}

pub(crate) fn map_entries<'a>(
    node: &'a Node,
    what: &str,
    errors: &mut Vec<ConfigError>,
) -> &'a [(Node, Node)] {
    match &node.kind {
        NodeKind::Map(entries) => entries,
        NodeKind::Null => &[],
        _ => {
            errors.push(ConfigError::at(
                &node.pos,
                format!("{what} must be a mapping, found {}", node.describe()),
            ));
            &[]
        }
    }
}

fn string_of(node: &Node, what: &str, errors: &mut Vec<ConfigError>) -> Option<String> {
    match &node.kind {
        NodeKind::String(s) => Some(s.clone()),
        NodeKind::Integer(i) => Some(i.to_string()),
        _ => {
            errors.push(ConfigError::at(
                &node.pos,
                format!("{what} must be a string, found {}", node.describe()),
            ));
            None
        }
    }
}

fn bool_of(node: &Node, what: &str, errors: &mut Vec<ConfigError>) -> bool {
    match node.kind {
        NodeKind::Bool(b) => b,
        _ => {
            errors.push(ConfigError::at(
                &node.pos,
                format!("{what} must be true or false, found {}", node.describe()),
            ));
            false
        }
    }
}

fn usize_of(node: &Node, what: &str, errors: &mut Vec<ConfigError>) -> Option<usize> {
    match node.kind {
        NodeKind::Integer(i) if i > 0 => Some(i as usize),
        _ => {
            errors.push(ConfigError::at(
                &node.pos,
                format!("{what} must be a positive whole number"),
            ));
            None
        }
    }
}

/// A string or a list of strings (`key: id` or `key: [a, b]`).
fn strings_of(node: &Node, what: &str, errors: &mut Vec<ConfigError>) -> Vec<String> {
    match &node.kind {
        NodeKind::Seq(items) => items
            .iter()
            .filter_map(|i| string_of(i, what, errors))
            .collect(),
        _ => string_of(node, what, errors).into_iter().collect(),
    }
}

fn read_root(
    root: &Node,
    path: &Path,
    base_dir: PathBuf,
    errors: &mut Vec<ConfigError>,
) -> Option<MigrationConfig> {
    let entries = map_entries(root, "the migration file", errors);
    let mut source = None;
    let mut target = None;
    let mut vars = Vec::new();
    let mut streams = Vec::new();
    for (k, v) in entries {
        match k.as_str() {
            Some("source") => source = read_source(v, errors),
            Some("target") => target = Some(read_target(v, errors)),
            Some("vars") => {
                for (name, value) in map_entries(v, "vars", errors) {
                    vars.push((name.key_text(), value.to_json()));
                }
            }
            Some("streams") => {
                for (name, body) in map_entries(v, "streams", errors) {
                    if let Some(s) = read_stream(name, body, errors) {
                        streams.push(s);
                    }
                }
            }
            _ => errors.push(ConfigError::at(
                &k.pos,
                format!(
                    "unknown key {:?}: the top level holds source, target, vars and streams",
                    k.key_text()
                ),
            )),
        }
    }
    if source.is_none() && errors.is_empty() {
        errors.push(ConfigError::at(
            &root.pos,
            "no source: add `source: { connector: csv, path: data/ }` (or another connector)",
        ));
    }
    if streams.is_empty() && errors.is_empty() {
        errors.push(ConfigError::at(
            &root.pos,
            "no streams: add `streams:` with at least one stream to migrate",
        ));
    }
    let target = target.unwrap_or_else(|| TargetConfig::unset(&root.pos));
    // the source's zone is every stream's default, and a built-in map's
    // when its settings name none
    let source_zone = source.as_ref().and_then(|s| s.zone.clone());
    for stream in &mut streams {
        if stream.zone.is_none() {
            stream.zone = source_zone.clone();
        }
        if let (Some(zone), Some(map)) = (&stream.zone, &mut stream.map)
            && let Some(options) = map.options.as_object_mut()
        {
            options
                .entry("zone")
                .or_insert_with(|| serde_json::Value::String(zone.clone()));
        }
    }
    Some(MigrationConfig {
        path: path.to_path_buf(),
        base_dir,
        source: source?,
        target,
        vars,
        streams,
    })
}

fn read_source(node: &Node, errors: &mut Vec<ConfigError>) -> Option<SourceConfig> {
    let mut connector = None;
    let mut zone = None;
    let mut settings = serde_json::Map::new();
    for (k, v) in map_entries(node, "source", errors) {
        if k.as_str() == Some("connector") {
            connector = string_of(v, "source.connector", errors);
        } else if k.as_str() == Some("zone") {
            zone = zone_of(v, "source.zone", errors);
        } else {
            settings.insert(k.key_text(), v.to_json());
        }
    }
    match connector {
        Some(connector) => Some(SourceConfig {
            connector,
            zone,
            settings: settings.into(),
            pos: node.pos.clone(),
        }),
        None => {
            errors.push(ConfigError::at(
                &node.pos,
                "source needs `connector:` (run `fhirlift connectors` to list them)",
            ));
            None
        }
    }
}

fn read_target(node: &Node, errors: &mut Vec<ConfigError>) -> TargetConfig {
    let mut target = TargetConfig::unset(&node.pos);
    for (k, v) in map_entries(node, "target", errors) {
        match k.as_str() {
            Some("profile") => {
                if let Some(p) = string_of(v, "target.profile", errors) {
                    target.profile = p;
                }
            }
            Some("batch_entries") => target.batch_entries = usize_of(v, "target.batch_entries", errors),
            Some("body_bytes") => target.body_bytes = usize_of(v, "target.body_bytes", errors),
            Some("strategy") => target.strategy = string_of(v, "target.strategy", errors),
            Some("async") => target.asynchronous = bool_of(v, "target.async", errors),
            Some("holds") => target.holds = strings_of(v, "target.holds", errors),
            // YAML reads a bare `off` as false
            Some("validate") if matches!(v.kind, NodeKind::Bool(false)) => {
                target.validate = ValidateMode::Off
            }
            Some("validate") => {
                target.validate = match string_of(v, "target.validate", errors).as_deref() {
                    Some("reject") => ValidateMode::Reject,
                    Some("warn") => ValidateMode::Warn,
                    Some("off") => ValidateMode::Off,
                    Some(other) => {
                        errors.push(ConfigError::at(
                            &v.pos,
                            format!("target.validate is reject, warn or off, not {other:?}"),
                        ));
                        ValidateMode::default()
                    }
                    None => ValidateMode::default(),
                }
            }
            // Server, auth and the like belong to the sender; accepted and kept for it.
            Some("server" | "auth") => {}
            _ => errors.push(ConfigError::at(
                &k.pos,
                format!(
                    "unknown target key {:?}: expected profile, strategy, async, holds, validate, batch_entries, body_bytes, server or auth",
                    k.key_text()
                ),
            )),
        }
    }
    target
}

/// The keys a stream holds besides its connector's settings.
pub(crate) const STREAM_KEYS: &[&str] = &[
    "from",
    "key",
    "transaction",
    "after",
    "lookup",
    "map",
    "emit",
    "collisions",
    "zone",
];

/// A `zone:` value: an IANA zone name or a fixed offset (`+01:00`),
/// checked now so that a typo fails `check`, not every record.
fn zone_of(v: &Node, what: &str, errors: &mut Vec<ConfigError>) -> Option<String> {
    let zone = string_of(v, what, errors)?;
    if crate::dates::is_offset(&zone) || jiff::tz::TimeZone::get(&zone).is_ok() {
        return Some(zone);
    }
    errors.push(ConfigError::at(
        &v.pos,
        format!(
            "{what}: {zone:?} is neither an IANA time zone (America/New_York, Europe/Paris) nor an offset (-05:00)"
        ),
    ));
    None
}

pub(crate) fn read_stream(
    name: &Node,
    body: &Node,
    errors: &mut Vec<ConfigError>,
) -> Option<StreamConfig> {
    let stream_name = name.key_text();
    let mut stream = StreamConfig {
        name: stream_name.clone(),
        pos: name.pos.clone(),
        from: String::new(),
        key: Vec::new(),
        lookups: Vec::new(),
        transaction: false,
        after: Vec::new(),
        emit: Vec::new(),
        map: None,
        options: serde_json::Value::Null,
        collisions: None,
        zone: None,
        generated: false,
        optional_table: None,
    };
    let mut options = serde_json::Map::new();
    let mut has_from = false;
    for (k, v) in map_entries(body, &format!("stream {stream_name}"), errors) {
        match k.as_str() {
            Some("from") => {
                if let Some(f) = string_of(v, "from", errors) {
                    stream.from = f;
                    has_from = true;
                }
            }
            Some("key") => stream.key = strings_of(v, "key", errors),
            Some("transaction") => stream.transaction = bool_of(v, "transaction", errors),
            Some("after") => {
                let items: Vec<&Node> = match &v.kind {
                    NodeKind::Seq(items) => items.iter().collect(),
                    _ => vec![v],
                };
                for item in items {
                    if let Some(s) = string_of(item, "after", errors) {
                        stream.after.push((s, item.pos.clone()));
                    }
                }
            }
            Some("lookup") => {
                for (lname, lbody) in map_entries(v, "lookup", errors) {
                    if let Some(l) = read_lookup(lname, lbody, errors) {
                        stream.lookups.push(l);
                    }
                }
            }
            Some("map") => stream.map = read_builtin_map(v, errors),
            Some("zone") => stream.zone = zone_of(v, &format!("{stream_name}.zone"), errors),
            Some("collisions") => match v.as_str() {
                Some("later-wins") => stream.collisions = Some(CollisionPolicy::LaterWins),
                Some("reject") => stream.collisions = Some(CollisionPolicy::Reject),
                _ => errors.push(ConfigError::at(
                    &v.pos,
                    "collisions: is `later-wins` (two records writing one identity: the later \
                     is written over the earlier, as in an update feed) or `reject` (both are \
                     rejected, as for a repeated row in a table)",
                )),
            },
            Some("emit") => match &v.kind {
                NodeKind::Seq(items) => stream.emit = items.clone(),
                NodeKind::Map(_) => stream.emit = vec![v.clone()],
                _ => errors.push(ConfigError::at(
                    &v.pos,
                    "emit must be a list of resources (or one resource)",
                )),
            },
            _ => {
                // the connector's own settings (encoding, delimiter, ...);
                // a near miss of a stream key is a typo, not a setting
                let key = k.key_text();
                if let Some(meant) =
                    fhirlift_core::spelling::nearest(&key, STREAM_KEYS.iter().copied())
                {
                    errors.push(ConfigError::at(
                        &k.pos,
                        format!(
                            "unknown key {key:?} in stream {stream_name}: did you mean `{meant}:`? \
                             (a stream holds {}, and its connector's settings)",
                            STREAM_KEYS.join(", ")
                        ),
                    ));
                }
                options.insert(key, v.to_json());
            }
        }
    }
    // a built-in map in the mapping language brings its own streams
    let template = stream
        .map
        .as_ref()
        .is_some_and(|m| fhirlift_core::registry::template_map(&m.name).is_some());
    if !has_from && !template {
        errors.push(ConfigError::at(
            &name.pos,
            format!("stream {stream_name} needs `from:` (the file, table or query to read)"),
        ));
    }
    if stream.emit.is_empty() && stream.map.is_none() {
        errors.push(ConfigError::at(
            &name.pos,
            format!(
                "stream {stream_name} needs `emit:` with at least one resource, or `map:` naming a built-in map (`fhirlift connectors` lists them)"
            ),
        ));
    }
    stream.options = options.into();
    Some(stream)
}

fn read_builtin_map(v: &Node, errors: &mut Vec<ConfigError>) -> Option<BuiltinMap> {
    if let Some(name) = v.as_str() {
        return Some(BuiltinMap {
            name: name.to_owned(),
            pos: v.pos.clone(),
            options: serde_json::json!({}),
        });
    }
    let mut name = None;
    let mut options = serde_json::Map::new();
    for (k, value) in map_entries(v, "map", errors) {
        match k.as_str() {
            Some("builtin") => name = string_of(value, "map.builtin", errors),
            _ => {
                options.insert(k.key_text(), value.to_json());
            }
        }
    }
    match name {
        Some(name) => Some(BuiltinMap {
            name,
            pos: v.pos.clone(),
            options: options.into(),
        }),
        None => {
            errors.push(ConfigError::at(
                &v.pos,
                "map: names a built-in map: `map: hl7v2`, or `map: {builtin: hl7v2, ...settings}`",
            ));
            None
        }
    }
}

fn read_lookup(name: &Node, body: &Node, errors: &mut Vec<ConfigError>) -> Option<LookupConfig> {
    let lookup_name = name.key_text();
    let mut from = None;
    let mut key = None;
    let mut by = None;
    let mut optional = false;
    let mut max_rows = LOOKUP_MAX_ROWS;
    let mut options = serde_json::Map::new();
    for (k, v) in map_entries(body, &format!("lookup {lookup_name}"), errors) {
        match k.as_str() {
            Some("from") => from = string_of(v, "lookup from", errors),
            Some("key") => key = string_of(v, "lookup key", errors),
            Some("by") => by = string_of(v, "lookup by", errors),
            Some("optional") => optional = bool_of(v, "lookup optional", errors),
            Some("max_rows") => {
                max_rows = usize_of(v, "lookup max_rows", errors).unwrap_or(LOOKUP_MAX_ROWS)
            }
            _ => {
                options.insert(k.key_text(), v.to_json());
            }
        }
    }
    let (Some(from), Some(key)) = (from, key) else {
        errors.push(ConfigError::at(
            &name.pos,
            format!(
                "lookup {lookup_name} needs `from:` (the side table) and `key:` (its key column)"
            ),
        ));
        return None;
    };
    Some(LookupConfig {
        name: lookup_name,
        pos: name.pos.clone(),
        from,
        by: by.unwrap_or_else(|| key.clone()),
        key,
        optional,
        max_rows,
        options: options.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_missing_parts_are_reported_with_lines() {
        let text = "source: { connector: csv }\nstreamz: {}\nstreams:\n  p:\n    emit: []\n";
        let errs = MigrationConfig::parse(Path::new("m.yaml"), text).unwrap_err();
        let all = errs.to_string();
        assert!(all.contains("m.yaml:2:1: unknown key \"streamz\""), "{all}");
        assert!(all.contains("m.yaml:4:3: stream p needs `from:`"), "{all}");
    }

    #[test]
    fn connector_options_and_lookups_are_kept() {
        let text = "source: { connector: csv, path: data }\nstreams:\n  c:\n    from: c.csv\n    delimiter: ';'\n    lookup: { cond: { from: k.csv, key: id, by: cond_id } }\n    emit: { resourceType: Condition }\n";
        let cfg = MigrationConfig::parse(Path::new("dir/m.yaml"), text).unwrap();
        assert_eq!(cfg.base_dir, PathBuf::from("dir"));
        assert_eq!(cfg.source.settings["path"], "data");
        let s = &cfg.streams[0];
        assert_eq!(s.options["delimiter"], ";");
        assert_eq!(s.lookups[0].by, "cond_id");
        assert_eq!(s.emit.len(), 1);
    }

    #[test]
    fn a_zone_is_the_streams_else_the_sources_and_a_bad_one_names_its_line() {
        let text = "source: { connector: csv, zone: Europe/Paris }\nstreams:\n  a:\n    from: a.csv\n    emit: { resourceType: Patient }\n  b:\n    from: b.csv\n    zone: '-05:00'\n    map: { builtin: hl7v2 }\n";
        let cfg = MigrationConfig::parse(Path::new("m.yaml"), text).unwrap();
        assert_eq!(cfg.source.zone.as_deref(), Some("Europe/Paris"));
        assert!(
            cfg.source.settings.get("zone").is_none(),
            "not a connector setting"
        );
        assert_eq!(cfg.streams[0].zone.as_deref(), Some("Europe/Paris"));
        assert_eq!(cfg.streams[1].zone.as_deref(), Some("-05:00"));
        let map = cfg.streams[1].map.as_ref().unwrap();
        assert_eq!(map.options["zone"], "-05:00", "a built-in map's default");
        let bad = text.replace("Europe/Paris", "Europe/Pariss");
        let e = MigrationConfig::parse(Path::new("m.yaml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m.yaml:1:") && e.contains("\"Europe/Pariss\" is neither an IANA time zone"),
            "{e}"
        );
    }

    #[test]
    fn validation_is_reject_unless_the_target_says_warn_or_off() {
        let with = |target: &str| {
            let text = format!(
                "source: {{ connector: csv }}\ntarget: {target}\nstreams:\n  c:\n    from: c.csv\n    emit: {{ resourceType: Patient }}\n"
            );
            MigrationConfig::parse(Path::new("m.yaml"), &text).map(|c| c.target.validate)
        };
        assert_eq!(with("{ profile: medplum }").unwrap(), ValidateMode::Reject);
        assert_eq!(with("{ validate: warn }").unwrap(), ValidateMode::Warn);
        // YAML reads a bare off as false
        assert_eq!(with("{ validate: off }").unwrap(), ValidateMode::Off);
        assert_eq!(with("{ validate: \"off\" }").unwrap(), ValidateMode::Off);
        let e = with("{ validate: maybe }").unwrap_err().to_string();
        assert!(e.contains("reject, warn or off"), "{e}");
    }
}
