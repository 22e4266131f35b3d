//! Loads connector plugins at run time and serves them as
//! [`SourceConnector`]s, selected by name like built-in connectors.
//!
//! [`scan`] loads every shared library of the platform (`.so`, `.dylib`,
//! `.dll`) in a folder with `libloading`, looks up `fhirlift_plugin_v1`,
//! refuses a plugin built for another ABI version (the error names the
//! file and both versions), and reads and checks its manifest (a name of
//! `[a-z0-9_-]`, a version). [`load_into`] adds what loaded to a
//! [`Registry`], which refuses a name already taken by a built-in
//! connector or an earlier plugin; each failure is returned as a
//! [`PluginError`] for the caller to print, and the other plugins load.
//!
//! A [`LoadedPlugin`]'s connector ([`connector`]) runs every call into the
//! plugin off the async runtime: `schema` on a short-lived thread of its
//! own, `open`, `next_batch` and `close` on the stream's reader thread
//! (`RecordStream::from_blocking`), so a blocking plugin never stalls an
//! async worker. Every buffer the plugin hands over is released with the
//! plugin's own `free_buf`. A library is never unloaded: the `Library` is
//! leaked, since code and threads of the plugin may outlive any handle.
//!
//! Loading a library runs its initialisers: the plugins folder is as
//! trusted as the fhirlift binary itself.

pub mod batch;
pub mod connector;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fhirlift_core::ConnectorContext;
use fhirlift_core::registry::{ConnectorEntry, ConnectorOrigin, Registry, RegistryError};
use fhirlift_plugin_abi::{ABI_VERSION, ENTRY_NAME, ENTRY_SYMBOL, EntryFn, PluginDescriptor};
use serde_json::Value as Json;

/// Why a plugin was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read the plugins folder {}: {message}", dir.display())]
    Folder { dir: PathBuf, message: String },
    #[error("cannot load the plugin {}: {message}", file.display())]
    Load { file: PathBuf, message: String },
    #[error(
        "{} is not a fhirlift plugin: it exports no `{ENTRY_NAME}` symbol",
        file.display()
    )]
    NoEntry { file: PathBuf },
    #[error(
        "the plugin {} speaks plugin ABI version {found}, but this fhirlift speaks version {expected}; rebuild it against fhirlift-plugin-sdk for ABI {expected}",
        file.display()
    )]
    AbiVersion {
        file: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("the plugin {} has a bad manifest: {message}", file.display())]
    Manifest { file: PathBuf, message: String },
    #[error("the plugin {} is not used: {message}", file.display())]
    Refused { file: PathBuf, message: String },
}

/// What a loaded plugin says about itself, and its functions.
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    /// The JSON Schema of its `source:` settings (null when it gives none).
    pub config_schema: Json,
    /// The stream names it knows, when it says.
    pub streams: Option<Vec<String>>,
    /// The library it was loaded from.
    pub file: PathBuf,
    pub(crate) descriptor: &'static PluginDescriptor,
}

/// A plugin that loaded and passed its checks.
#[derive(Clone)]
pub struct LoadedPlugin {
    pub info: Arc<PluginInfo>,
}

impl LoadedPlugin {
    /// Loads one library. It is never unloaded, even when refused.
    pub fn load(file: &Path) -> Result<LoadedPlugin, PluginError> {
        // SAFETY: loading runs the library's initialisers; the plugins
        // folder is trusted like the binary (see the crate docs).
        let library = unsafe { libloading::Library::new(file) }.map_err(|e| PluginError::Load {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        // SAFETY: the symbol has the ABI's entry type (checked by version next).
        let entry = unsafe { library.get::<EntryFn>(ENTRY_SYMBOL) }.map(|f| *f);
        // never unloaded: code of the plugin may run as long as the process
        std::mem::forget(library);
        let entry = entry.map_err(|_| PluginError::NoEntry {
            file: file.to_owned(),
        })?;
        // SAFETY: the entry point of a plugin takes nothing and returns a static.
        let descriptor = unsafe { entry() };
        if descriptor.is_null() {
            return Err(PluginError::Manifest {
                file: file.to_owned(),
                message: format!("`{ENTRY_NAME}` returned a null descriptor"),
            });
        }
        // SAFETY: `abi_version` is the first field of every version's descriptor.
        let found = unsafe { descriptor.cast::<u32>().read() };
        if found != ABI_VERSION {
            return Err(PluginError::AbiVersion {
                file: file.to_owned(),
                found,
                expected: ABI_VERSION,
            });
        }
        // SAFETY: same version, same layout; the descriptor is static and
        // the library is never unloaded.
        LoadedPlugin::from_descriptor(unsafe { &*descriptor }, file)
    }

    /// A plugin from a descriptor already in memory (a library loaded some
    /// other way, or linked in for tests): checks its version and manifest.
    pub fn from_descriptor(
        descriptor: &'static PluginDescriptor,
        file: &Path,
    ) -> Result<LoadedPlugin, PluginError> {
        if descriptor.abi_version != ABI_VERSION {
            return Err(PluginError::AbiVersion {
                file: file.to_owned(),
                found: descriptor.abi_version,
                expected: ABI_VERSION,
            });
        }
        let bad = |message: String| PluginError::Manifest {
            file: file.to_owned(),
            message,
        };
        let buf = connector::PluginBuf::new(descriptor, (descriptor.manifest)());
        let manifest: Json = serde_json::from_slice(buf.bytes())
            .map_err(|e| bad(format!("the manifest is not JSON ({e})")))?;
        drop(buf);
        let text = |key: &str| manifest.get(key).and_then(Json::as_str).map(str::to_owned);
        let name = text("name").ok_or_else(|| bad("it has no `name`".into()))?;
        if !valid_name(&name) {
            return Err(bad(format!(
                "its name {name:?} must be non-empty and made of a-z, 0-9, '-' and '_'"
            )));
        }
        let version = text("version")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad(format!("plugin {name:?} gives no `version`")))?;
        let config_schema = manifest.get("config_schema").cloned().unwrap_or(Json::Null);
        if !config_schema.is_null() && !schema::is_schema(&config_schema) {
            return Err(bad(format!(
                "plugin {name:?}: `config_schema` must be a JSON Schema (an object or a boolean) or null"
            )));
        }
        let streams = match manifest.get("streams") {
            None | Some(Json::Null) => None,
            Some(s) => Some(
                batch::string_list(s.clone())
                    .ok_or_else(|| bad("`streams` must be a list of names or null".into()))?,
            ),
        };
        Ok(LoadedPlugin {
            info: Arc::new(PluginInfo {
                name,
                version,
                description: text("description").unwrap_or_default(),
                config_schema,
                streams,
                file: file.to_owned(),
                descriptor,
            }),
        })
    }

    /// The registry entry: `create` builds a [`connector::PluginConnector`].
    pub fn entry(&self) -> ConnectorEntry {
        let info = self.info.clone();
        // the ABI describes `source:` only; a stream's settings stay open
        let mut settings = fhirlift_core::settings::SettingsSchema::any();
        if !info.config_schema.is_null() {
            settings.source = info.config_schema.clone();
        }
        ConnectorEntry {
            name: info.name.clone(),
            version: info.version.clone(),
            description: info.description.clone(),
            origin: ConnectorOrigin::Plugin {
                file: info.file.clone(),
            },
            create: Arc::new(move |settings: &Json, context: &ConnectorContext| {
                let wrong = schema::violations(&info.config_schema, settings, "source");
                if !wrong.is_empty() {
                    return Err(fhirlift_core::ConnectorError::Setting {
                        what: format!("plugin {}", info.name),
                        message: format!(
                            "the settings do not fit its config_schema: {}; fix them in the migration file",
                            wrong.join("; ")
                        ),
                    });
                }
                Ok(Box::new(connector::PluginConnector::new(
                    info.clone(),
                    settings.clone(),
                    context.clone(),
                ))
                    as Box<dyn fhirlift_core::SourceConnector>)
            }),
            settings,
        }
    }
}

/// A connector name: non-empty, `[a-z0-9_-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Is this file a shared library of this platform?
fn is_library(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e == std::env::consts::DLL_EXTENSION)
}

/// Loads every plugin library in `dir` (in file name order); the ones
/// that fail come back as errors beside the ones that loaded.
pub fn scan(dir: &Path) -> (Vec<LoadedPlugin>, Vec<PluginError>) {
    let mut files = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_library(p))
            .collect::<Vec<_>>(),
        Err(e) => {
            return (
                Vec::new(),
                vec![PluginError::Folder {
                    dir: dir.to_owned(),
                    message: e.to_string(),
                }],
            );
        }
    };
    files.sort();
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match LoadedPlugin::load(&file) {
            Ok(p) => {
                tracing::debug!(plugin = %p.info.name, file = %file.display(), "plugin loaded");
                loaded.push(p);
            }
            Err(e) => errors.push(e),
        }
    }
    (loaded, errors)
}

/// Scans each folder and adds its plugins to the registry. Returns what
/// went wrong, plugin by plugin: a plugin that fails, or whose name is
/// taken, is left out and the others are added.
pub fn load_into(registry: &mut Registry, dirs: &[PathBuf]) -> Vec<PluginError> {
    let mut errors = Vec::new();
    for dir in dirs {
        let (loaded, failed) = scan(dir);
        errors.extend(failed);
        for plugin in loaded {
            if let Err(e) = registry.add(plugin.entry()) {
                let message = match e {
                    RegistryError::NameTaken { name, existing, .. } => format!(
                        "its name {name:?} is taken by the {existing} connector; rename one of them"
                    ),
                    other => other.to_string(),
                };
                errors.push(PluginError::Refused {
                    file: plugin.info.file.clone(),
                    message,
                });
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_words() {
        assert!(valid_name("fixed-width"));
        assert!(valid_name("x_2"));
        assert!(!valid_name(""));
        assert!(!valid_name("Fixed"));
        assert!(!valid_name("a b"));
        assert!(!valid_name("ü"));
    }

    #[test]
    fn a_missing_folder_is_one_error() {
        let (loaded, errors) = scan(Path::new("/nonexistent/fhirlift-plugins"));
        assert!(loaded.is_empty());
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .to_string()
                .contains("/nonexistent/fhirlift-plugins")
        );
    }

    #[test]
    fn a_library_without_the_symbol_is_not_a_plugin() {
        let dir = std::env::temp_dir().join(format!("fhirlift-host-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("junk.{}", std::env::consts::DLL_EXTENSION));
        std::fs::write(&file, b"not a library").unwrap();
        std::fs::write(dir.join("notes.txt"), b"ignored").unwrap();
        let (loaded, errors) = scan(&dir);
        assert!(loaded.is_empty());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].to_string().contains("cannot load the plugin"),
            "{}",
            errors[0]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
