//! `fhirlift schema`: the migration file's JSON Schema on standard output,
//! for a YAML language server (a file starting with
//! `# yaml-language-server: $schema=…`). It is put together from what
//! each part knows: the file's shape and the template keys from
//! `fhirlift-mapping`, each connector's settings from its registry entry
//! (plugins too), and the element names of every R4 resource type from
//! `fhirlift-fhir`'s definitions. The repository's copy,
//! `migration.schema.json`, is checked to be up to date by a test.

use std::io::Write;

use serde_json::Value;

use fhirlift_core::registry::Registry;
use fhirlift_fhir::schema::{self as fhir, TemplateKeys};
use fhirlift_mapping::schema::{self as mapping, ConnectorSettings, Resources};

/// The schema of migration files for the connectors and maps `registry` knows.
pub(crate) fn migration_schema(registry: &Registry) -> Value {
    let keys = TemplateKeys {
        object: mapping::object_keys(),
        resource: mapping::entry_keys(),
    };
    let resources = Resources {
        definitions: fhir::definitions(fhirlift_fhir::definitions::r4(), &keys),
        resource: serde_json::json!({ "$ref": format!("{}{}", fhir::DEFINITIONS, fhir::ANY_RESOURCE) }),
    };
    let connectors: Vec<ConnectorSettings<'_>> = registry
        .iter()
        .map(|c| ConnectorSettings {
            name: &c.name,
            source: &c.settings.source,
            stream: &c.settings.stream,
        })
        .collect();
    // built-in maps in Rust (hl7v2) and in the mapping language (omop)
    let mut maps: Vec<&str> = registry.maps().map(|m| m.name).collect();
    maps.extend(
        fhirlift_core::registry::template_maps()
            .iter()
            .map(|m| m.name),
    );
    maps.sort_unstable();
    mapping::migration_schema(&connectors, &maps, resources)
}

/// Prints the schema as the repository keeps it.
pub(crate) fn print(registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    out.write_all(render(&migration_schema(registry))?.as_bytes())?;
    Ok(0)
}

/// One top-level key a line and one definition a line (as `r4.json`
/// keeps one type a line): a diff names the definitions that changed, at
/// two thirds of the size of an indented file.
fn render(schema: &Value) -> serde_json::Result<String> {
    let Some(root) = schema.as_object() else {
        return serde_json::to_string_pretty(schema);
    };
    let line = |indent: &str, key: &str, value: &Value| -> serde_json::Result<String> {
        let key = serde_json::to_string(key)?;
        Ok(format!("{indent}{key}: {}", serde_json::to_string(value)?))
    };
    let mut lines = Vec::new();
    for (key, value) in root {
        match value.as_object() {
            Some(definitions) if key == "definitions" => {
                let each = definitions
                    .iter()
                    .map(|(name, def)| line("    ", name, def))
                    .collect::<serde_json::Result<Vec<_>>>()?;
                lines.push(format!("  \"{key}\": {{\n{}\n  }}", each.join(",\n")));
            }
            _ => lines.push(line("  ", key, value)?),
        }
    }
    Ok(format!("{{\n{}\n}}\n", lines.join(",\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_schema_reads_back_as_built() {
        let registry = Registry::from_inventory().unwrap();
        let schema = migration_schema(&registry);
        let text = render(&schema).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), schema);
        let definitions = schema["definitions"].as_object().unwrap();
        // the header, one line per definition, the closing lines
        let top = schema.as_object().unwrap().len();
        assert_eq!(text.lines().count(), top + definitions.len() + 3);
    }
}
