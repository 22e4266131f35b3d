//! The connector's settings, as written under `source:` and under a
//! stream, read with core's one rule for settings; [`schema`] is the same
//! settings as JSON Schema, for editors.

use fhirlift_core::ConnectorContext;
use fhirlift_core::connector::ConnectorError;
use fhirlift_core::settings::SettingsSchema;
use serde_json::json;

/// A setting the user must fix.
pub(crate) fn setting(what: &str, message: &str) -> ConnectorError {
    ConnectorError::Setting {
        what: what.to_owned(),
        message: message.to_owned(),
    }
}

/// Where the connection string is when `source:` does not say.
pub(crate) const DEFAULT_URL_ENV: &str = "FHIRLIFT_PG_URL";
/// Rows per round trip when neither `source:` nor the stream says.
pub(crate) const DEFAULT_FETCH: usize = 1000;

/// `source:` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourceSettings {
    /// The environment variable holding the connection string.
    pub(crate) url_env: Option<String>,
    /// A file holding it (relative to the migration file).
    pub(crate) url_file: Option<String>,
    /// Rows per round trip.
    pub(crate) fetch: Option<u64>,
    /// A CA certificate file for a private CA.
    pub(crate) tls_ca_file: Option<String>,
    /// The schema unqualified table names are looked up in first (the
    /// connection's `search_path`: the schema, then `public`).
    pub(crate) schema: Option<String>,
    #[allow(dead_code)]
    connector: Option<serde_json::Value>,
}

pub(crate) const SOURCE_SETTINGS: &[&str] = &[
    "url_env",
    "url_file",
    "fetch",
    "tls_ca_file",
    "schema",
    "connector",
];

/// A stream's settings as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamSettings {
    pub(crate) fetch: Option<u64>,
}

pub(crate) const STREAM_SETTINGS: &[&str] = &["fetch"];

/// [`SourceSettings`] and [`StreamSettings`] as JSON Schema.
pub(crate) fn schema() -> SettingsSchema {
    let text = |what: &str| json!({ "type": "string", "description": what });
    let fetch = (
        "fetch",
        json!({
            "type": "integer", "minimum": 1, "maximum": 1_000_000,
            "description": format!("rows per round trip (a server-side cursor); default {DEFAULT_FETCH}"),
        }),
    );
    let source = [
        (
            "url_env",
            text(&format!(
                "the environment variable holding the connection string; default {DEFAULT_URL_ENV}"
            )),
        ),
        (
            "url_file",
            text("a file holding the connection string, relative to the migration file"),
        ),
        fetch.clone(),
        (
            "tls_ca_file",
            text("a PEM file of the CA that signed the server's certificate"),
        ),
        (
            "schema",
            text("the schema unqualified table names are looked up in first (then public)"),
        ),
    ];
    SettingsSchema {
        source: SettingsSchema::object(&source),
        stream: SettingsSchema::object(&[fetch]),
    }
}

pub(crate) fn fetch_size(fetch: Option<u64>, what: &str) -> Result<Option<usize>, ConnectorError> {
    match fetch {
        None => Ok(None),
        Some(n) if (1..=1_000_000).contains(&n) => Ok(Some(n as usize)),
        Some(_) => Err(setting(
            what,
            "must be a number of rows between 1 and 1000000",
        )),
    }
}

impl SourceSettings {
    /// Sets `search_path` for every connection when `schema:` names one
    /// (as a server option at connection start, after any the connection
    /// string gives): `cdm.person` can then be written `person`.
    pub(crate) fn apply_schema(
        &self,
        config: &mut tokio_postgres::Config,
    ) -> Result<(), ConnectorError> {
        let Some(schema) = &self.schema else {
            return Ok(());
        };
        let plain = !schema.is_empty()
            && schema
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '$'));
        if !plain {
            return Err(setting(
                "source.schema",
                "names one schema: letters, digits, _ and $ (write cdm, not cdm.person or a list)",
            ));
        }
        let option = format!("-c search_path={schema},public");
        let options = match config.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {option}"),
            _ => option,
        };
        config.options(&options);
        Ok(())
    }

    /// The connection string: from the file `url_file` names (relative to
    /// the migration file), else from the environment variable `url_env`
    /// names (`FHIRLIFT_PG_URL` by default). Never printed.
    pub(crate) fn connection_string(
        &self,
        context: &ConnectorContext,
    ) -> Result<String, ConnectorError> {
        Ok(match (&self.url_env, &self.url_file) {
            (Some(_), Some(_)) => {
                return Err(setting("source", "give url_env or url_file, not both"));
            }
            (_, Some(file)) => {
                let path = context.base_dir.join(file);
                std::fs::read_to_string(&path)
                    .map_err(|e| {
                        setting(
                            "source.url_file",
                            &format!("cannot read {}: {e}", path.display()),
                        )
                    })?
                    .trim()
                    .to_owned()
            }
            (env, None) => {
                let var = env.as_deref().unwrap_or(DEFAULT_URL_ENV);
                std::env::var(var).map_err(|_| {
                    setting(
                        "source.url_env",
                        &format!(
                            "the environment variable {var} is not set: put the connection string (postgres://user@host/db) in it, or name a file with url_file"
                        ),
                    )
                })?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_names_the_settings_read() {
        let schema = schema();
        // `connector` is the migration file's, never handed to the connector
        let source: Vec<&str> = SOURCE_SETTINGS
            .iter()
            .copied()
            .filter(|k| *k != "connector")
            .collect();
        assert_eq!(SettingsSchema::names(&schema.source), source);
        assert_eq!(SettingsSchema::names(&schema.stream), STREAM_SETTINGS);
    }
}
