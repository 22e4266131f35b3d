//! The registry: connector crates register a connector factory by name with
//! [`register_connector!`](crate::register_connector), and built-in maps
//! (`map: hl7v2`) with [`register_map!`](crate::register_map); the runner
//! looks them up by the names a mapping gives. Connectors loaded at run time
//! (plugins, see `fhirlift-plugin-host`) join with [`Registry::add`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::connector::{ConnectorContext, ConnectorError, SourceConnector};
use crate::mapper::{BuiltinMapContext, ResourceMapper};
use crate::settings::SettingsSchema;

/// Builds a built-in map from the stream's `map:` settings.
pub type CreateMap = fn(&BuiltinMapContext<'_>) -> Result<Box<dyn ResourceMapper>, String>;

/// One registered built-in map.
pub struct MapRegistration {
    pub name: &'static str,
    pub description: &'static str,
    pub create: CreateMap,
}

inventory::collect!(MapRegistration);

/// Registers a built-in map under a name, for `map: <name>` in a stream.
#[macro_export]
macro_rules! register_map {
    (name: $name:expr, description: $description:expr, create: $create:expr $(,)?) => {
        $crate::inventory::submit! {
            $crate::registry::MapRegistration {
                name: $name,
                description: $description,
                create: $create,
            }
        }
    };
}

/// A built-in map written in the mapping language (`map: omop`): a
/// migration file's `streams:` (and `vars:` defaults), embedded in the
/// binary, that a stream naming it stands for. Unlike a [`MapRegistration`]
/// it is expanded when the migration file is read: each of its streams
/// becomes a stream of the migration (`<stream>.<name>`), and is then
/// checked, phased and run like any other.
pub struct TemplateMapRegistration {
    pub name: &'static str,
    pub description: &'static str,
    /// The name its positions are shown under (`omop.yaml:40:9`).
    pub file: &'static str,
    /// The YAML text.
    pub text: &'static str,
}

inventory::collect!(TemplateMapRegistration);

/// Registers a built-in map written in the mapping language.
#[macro_export]
macro_rules! register_template_map {
    (name: $name:expr, description: $description:expr, file: $file:expr, text: $text:expr $(,)?) => {
        $crate::inventory::submit! {
            $crate::registry::TemplateMapRegistration {
                name: $name,
                description: $description,
                file: $file,
                text: $text,
            }
        }
    };
}

/// The built-in map written in the mapping language called `name`, if one
/// is linked in.
pub fn template_map(name: &str) -> Option<&'static TemplateMapRegistration> {
    inventory::iter::<TemplateMapRegistration>
        .into_iter()
        .find(|m| m.name == name)
}

/// Every built-in map written in the mapping language, by name.
pub fn template_maps() -> Vec<&'static TemplateMapRegistration> {
    let mut all: Vec<_> = inventory::iter::<TemplateMapRegistration>
        .into_iter()
        .collect();
    all.sort_by_key(|m| m.name);
    all
}

/// Builds a connector from the mapping's `source:` settings.
pub type CreateConnector =
    fn(&serde_json::Value, &ConnectorContext) -> Result<Box<dyn SourceConnector>, ConnectorError>;

/// One registered connector.
pub struct ConnectorRegistration {
    pub name: &'static str,
    pub version: &'static str,
    pub description: &'static str,
    pub create: CreateConnector,
    /// Its settings as JSON Schema, for editors ([`SettingsSchema::any`]
    /// when it does not say).
    pub settings: fn() -> SettingsSchema,
}

inventory::collect!(ConnectorRegistration);

/// Registers a connector under a name. Use once per connector crate;
/// `settings` (optional) gives its settings as JSON Schema:
///
/// ```ignore
/// fhirlift_core::register_connector! {
///     name: "csv",
///     description: "a directory of CSV files",
///     create: create_csv_connector,
///     settings: csv_settings_schema,
/// }
/// ```
#[macro_export]
macro_rules! register_connector {
    (name: $name:expr, description: $description:expr, create: $create:expr $(,)?) => {
        $crate::register_connector! {
            name: $name,
            description: $description,
            create: $create,
            settings: $crate::settings::SettingsSchema::any,
        }
    };
    (name: $name:expr, description: $description:expr, create: $create:expr, settings: $settings:expr $(,)?) => {
        $crate::inventory::submit! {
            $crate::registry::ConnectorRegistration {
                name: $name,
                version: env!("CARGO_PKG_VERSION"),
                description: $description,
                create: $create,
                settings: $settings,
            }
        }
    };
}

/// Builds a connector, built-in or loaded at run time.
pub type CreateConnectorFn = Arc<
    dyn Fn(
            &serde_json::Value,
            &ConnectorContext,
        ) -> Result<Box<dyn SourceConnector>, ConnectorError>
        + Send
        + Sync,
>;

/// Where a connector comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectorOrigin {
    /// Linked into this binary (`register_connector!`).
    BuiltIn,
    /// Loaded at run time from this shared library.
    Plugin { file: PathBuf },
}

impl fmt::Display for ConnectorOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectorOrigin::BuiltIn => f.write_str("built-in"),
            ConnectorOrigin::Plugin { file } => write!(f, "plugin ({})", file.display()),
        }
    }
}

/// One connector the registry knows, whatever its origin.
#[derive(Clone)]
pub struct ConnectorEntry {
    pub name: String,
    pub version: String,
    pub description: String,
    pub origin: ConnectorOrigin,
    pub create: CreateConnectorFn,
    /// Its settings as JSON Schema (`fhirlift schema`).
    pub settings: SettingsSchema,
}

impl fmt::Debug for ConnectorEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorEntry")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl From<&'static ConnectorRegistration> for ConnectorEntry {
    fn from(r: &'static ConnectorRegistration) -> Self {
        ConnectorEntry {
            name: r.name.to_owned(),
            version: r.version.to_owned(),
            description: r.description.to_owned(),
            origin: ConnectorOrigin::BuiltIn,
            create: Arc::new(r.create),
            settings: (r.settings)(),
        }
    }
}

/// A registry that is not usable as it stands.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "two connectors are registered as {0:?}; remove one of them from the runner's dependencies"
    )]
    Duplicate(String),
    #[error(
        "the {origin} connector is named {name:?}, a name the {existing} connector already has; it is not loaded (rename it or remove one of them)"
    )]
    NameTaken {
        name: String,
        origin: ConnectorOrigin,
        existing: ConnectorOrigin,
    },
    #[error("no connector is named {name:?}; known connectors: {known}")]
    Unknown { name: String, known: String },
    #[error("no built-in map is named {name:?}; known maps: {known}")]
    UnknownMap { name: String, known: String },
}

/// Every connector this binary knows, by name.
pub struct Registry {
    entries: BTreeMap<String, ConnectorEntry>,
    maps: BTreeMap<&'static str, &'static MapRegistration>,
}

impl Registry {
    /// Everything registered through `inventory` in this binary.
    pub fn from_inventory() -> Result<Registry, RegistryError> {
        let mut registry = Registry::from_entries(inventory::iter::<ConnectorRegistration>)?;
        for map in inventory::iter::<MapRegistration> {
            if registry.maps.insert(map.name, map).is_some() {
                return Err(RegistryError::Duplicate(map.name.to_owned()));
            }
        }
        Ok(registry)
    }

    /// A registry from explicit entries; a name seen twice is an error.
    pub fn from_entries<I>(entries: I) -> Result<Registry, RegistryError>
    where
        I: IntoIterator<Item = &'static ConnectorRegistration>,
    {
        let mut map = BTreeMap::new();
        for entry in entries {
            if map
                .insert(entry.name.to_owned(), ConnectorEntry::from(entry))
                .is_some()
            {
                return Err(RegistryError::Duplicate(entry.name.to_owned()));
            }
        }
        Ok(Registry {
            entries: map,
            maps: BTreeMap::new(),
        })
    }

    /// Adds a connector known only at run time (a plugin). A name already
    /// taken, by a built-in connector or another plugin, is refused and
    /// the registry stays as it was.
    pub fn add(&mut self, entry: ConnectorEntry) -> Result<(), RegistryError> {
        if let Some(existing) = self.entries.get(&entry.name) {
            return Err(RegistryError::NameTaken {
                name: entry.name,
                origin: entry.origin,
                existing: existing.origin.clone(),
            });
        }
        self.entries.insert(entry.name.clone(), entry);
        Ok(())
    }

    /// The connector registered under `name`.
    pub fn get(&self, name: &str) -> Result<ConnectorEntry, RegistryError> {
        self.entries
            .get(name)
            .cloned()
            .ok_or_else(|| RegistryError::Unknown {
                name: name.to_owned(),
                known: self
                    .entries
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The built-in map registered under `name`.
    pub fn map(&self, name: &str) -> Result<&'static MapRegistration, RegistryError> {
        self.maps
            .get(name)
            .copied()
            .ok_or_else(|| RegistryError::UnknownMap {
                name: name.to_owned(),
                known: self.maps.keys().copied().collect::<Vec<_>>().join(", "),
            })
    }

    /// All built-in maps, sorted by name.
    pub fn maps(&self) -> impl Iterator<Item = &'static MapRegistration> + '_ {
        self.maps.values().copied()
    }

    /// All connectors, built-in and plugins, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &ConnectorEntry> + '_ {
        self.entries.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never(
        _: &serde_json::Value,
        _: &ConnectorContext,
    ) -> Result<Box<dyn SourceConnector>, ConnectorError> {
        Err(ConnectorError::Setting {
            what: "test".into(),
            message: "not a real connector".into(),
        })
    }

    static A: ConnectorRegistration = ConnectorRegistration {
        name: "same",
        version: "1",
        description: "first",
        create: never,
        settings: SettingsSchema::any,
    };
    static B: ConnectorRegistration = ConnectorRegistration {
        name: "same",
        version: "1",
        description: "second",
        create: never,
        settings: SettingsSchema::any,
    };

    #[test]
    fn a_name_registered_twice_is_an_error() {
        let err = Registry::from_entries([&A, &B])
            .err()
            .expect("duplicate refused");
        assert!(matches!(err, RegistryError::Duplicate(ref n) if n == "same"));
    }

    #[test]
    fn a_run_time_entry_cannot_take_a_name() {
        let mut registry = Registry::from_entries([&A]).unwrap();
        let plugin = |name: &str, file: &str| ConnectorEntry {
            name: name.into(),
            version: "0.1.0".into(),
            description: "a plugin".into(),
            origin: ConnectorOrigin::Plugin { file: file.into() },
            create: Arc::new(never),
            settings: SettingsSchema::any(),
        };
        let err = registry
            .add(plugin("same", "a.so"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("plugin (a.so)") && err.contains("\"same\"") && err.contains("built-in"),
            "{err}"
        );
        registry.add(plugin("other", "b.so")).unwrap();
        let err = registry
            .add(plugin("other", "c.so"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("plugin (c.so)") && err.contains("plugin (b.so)"),
            "{err}"
        );
        let found = registry.get("other").unwrap();
        assert_eq!(found.origin.to_string(), "plugin (b.so)");
        let context = ConnectorContext {
            base_dir: ".".into(),
        };
        assert!((found.create)(&serde_json::Value::Null, &context).is_err());
        assert_eq!(registry.iter().count(), 2);
    }

    #[test]
    fn an_unknown_name_lists_the_known_ones() {
        let registry = Registry::from_entries([&A]).unwrap();
        let err = registry.get("sql").err().unwrap().to_string();
        assert!(err.contains("\"sql\"") && err.contains("same"), "{err}");
    }
}
