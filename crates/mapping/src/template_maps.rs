//! Built-in maps written in the mapping language (`map: omop`), expanded
//! when the migration file is read.
//!
//! Such a map ([`fhirlift_core::registry::TemplateMapRegistration`]) is the
//! `vars:` and `streams:` of a migration file, embedded in the binary. A
//! stream that names it (`cdm: { map: omop }`) is replaced by the map's
//! streams, named `cdm.<name>`, which are then checked, phased and run as
//! if the user had written them; errors in them point at the map's own
//! file and line (`omop.yaml:40:9`). The stream lends them its connector
//! settings, `zone:`, `collisions:` and `after:`. Its `map:` settings set
//! the map's vars (`system_base: ...` sets `omop_system_base`), and its
//! `emit:` entries replace the map's entries of the same resource type
//! in every stream that writes that type.

use std::path::Path;

use fhirlift_core::registry::{TemplateMapRegistration, template_map};

use crate::config::{
    ConfigError, ConfigErrors, MigrationConfig, StreamConfig, map_entries, read_stream,
};
use crate::yaml::{self, Node};

impl MigrationConfig {
    /// Shape-checks migration YAML; `path` names it in errors and sets the
    /// base folder. A stream naming a built-in map in the mapping language
    /// (`map: omop`) is replaced by the map's streams.
    pub fn parse(path: &Path, text: &str) -> Result<MigrationConfig, ConfigErrors> {
        let mut config = MigrationConfig::parse_unexpanded(path, text)?;
        let mut errors = Vec::new();
        let streams = std::mem::take(&mut config.streams);
        config.streams = expand(streams, &mut config.vars, &mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// The settings every template map takes besides its vars.
const COMMON_SETTINGS: &[&str] = &["zone"];

/// Replaces each stream naming a template map by the map's streams; the
/// map's vars join `vars` (user settings first).
pub(crate) fn expand(
    streams: Vec<StreamConfig>,
    vars: &mut Vec<(String, serde_json::Value)>,
    errors: &mut Vec<ConfigError>,
) -> Vec<StreamConfig> {
    let mut out = Vec::with_capacity(streams.len());
    for stream in streams {
        let template = stream.map.as_ref().and_then(|m| template_map(&m.name));
        match template {
            Some(t) => out.extend(expand_one(&stream, t, vars, errors)),
            None => out.push(stream),
        }
    }
    out
}

fn expand_one(
    parent: &StreamConfig,
    template: &'static TemplateMapRegistration,
    vars: &mut Vec<(String, serde_json::Value)>,
    errors: &mut Vec<ConfigError>,
) -> Vec<StreamConfig> {
    let map = parent.map.as_ref().expect("only streams with a map expand");
    let root = match yaml::parse(Path::new(template.file), template.text) {
        Ok(root) => root,
        Err(e) => {
            errors.push(ConfigError::at(
                &map.pos,
                format!("the built-in map {} does not read: {e}", template.name),
            ));
            return Vec::new();
        }
    };
    // its vars: defaults, set by the stream's map settings
    let mut known = Vec::new();
    let mut zone = parent.zone.clone();
    let settings = map.options.as_object().cloned().unwrap_or_default();
    for (k, v) in map_entries(&root, template.file, errors) {
        match k.as_str() {
            Some("vars") => {
                for (name, default) in map_entries(v, "vars", errors) {
                    let name = name.key_text();
                    let value = settings
                        .get(&name)
                        .cloned()
                        .unwrap_or_else(|| default.to_json());
                    vars.push((format!("{}_{name}", template.name), value));
                    known.push(name);
                }
            }
            Some("streams") => {}
            _ => errors.push(ConfigError::at(
                &k.pos,
                "a built-in map holds vars and streams",
            )),
        }
    }
    for (key, value) in &settings {
        if key == "zone" {
            zone = value.as_str().map(str::to_owned).or(zone);
        } else if !known.contains(key) {
            errors.push(ConfigError::at(
                &map.pos,
                format!(
                    "map {}: unknown setting {key:?}; its settings are {}",
                    template.name,
                    known
                        .iter()
                        .map(String::as_str)
                        .chain(COMMON_SETTINGS.iter().copied())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    let Some(body) = root.get("streams") else {
        errors.push(ConfigError::at(
            &map.pos,
            format!("the built-in map {} has no streams", template.name),
        ));
        return Vec::new();
    };
    let mut generated = Vec::new();
    for (name, body) in map_entries(body, "streams", errors) {
        let Some(mut s) = read_stream(name, body, errors) else {
            continue;
        };
        s.name = format!("{}.{}", parent.name, s.name);
        s.generated = true;
        if let Some(obj) = s.options.as_object_mut() {
            s.optional_table = obj
                .remove("optional_table")
                .and_then(|t| t.as_str().map(str::to_owned));
            // the stream's connector settings (fetch, ...) where the map sets none
            if let Some(lent) = parent.options.as_object() {
                for (k, v) in lent {
                    obj.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        // the stream's (or source's) zone, else the map's own default
        if zone.is_some() {
            s.zone = zone.clone();
        }
        s.collisions = s.collisions.or(parent.collisions);
        s.after.extend(parent.after.iter().cloned());
        generated.push(s);
    }
    override_entries(parent, template, &mut generated, errors);
    generated
}

/// The stream's own `emit:` entries in place of the map's of their type.
fn override_entries(
    parent: &StreamConfig,
    template: &TemplateMapRegistration,
    generated: &mut [StreamConfig],
    errors: &mut Vec<ConfigError>,
) {
    let type_of = |n: &Node| {
        n.get("resourceType")
            .and_then(Node::as_str)
            .map(str::to_owned)
    };
    for entry in &parent.emit {
        let Some(wanted) = type_of(entry) else {
            errors.push(ConfigError::at(
                &entry.pos,
                "an emit entry that replaces a built-in map's needs its resourceType",
            ));
            continue;
        };
        let mut replaced = false;
        for s in generated.iter_mut() {
            for e in &mut s.emit {
                if type_of(e).as_deref() == Some(wanted.as_str()) {
                    *e = entry.clone();
                    replaced = true;
                }
            }
        }
        if !replaced {
            let written: std::collections::BTreeSet<String> = generated
                .iter()
                .flat_map(|s| s.emit.iter().filter_map(type_of))
                .collect();
            errors.push(ConfigError::at(
                &entry.pos,
                format!(
                    "map {} writes no {wanted} (it writes {}): an emit entry here replaces one of its resources; write a stream of your own to add {wanted}",
                    template.name,
                    written.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
}
