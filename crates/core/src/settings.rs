//! Connector settings: one rule for every connector, built in or loaded as
//! a plugin. A key the connector does not know is refused, with the
//! nearest known name and the whole list ([`unknown_setting`]); the known
//! ones are read into the connector's own type with serde ([`read`]), a
//! `#[serde(deny_unknown_fields)]` struct whose fields are all optional,
//! and a value of the wrong type names its setting. [`SettingsSchema`] is
//! the same settings as JSON Schema, for editors (`fhirlift schema`).

use serde::de::DeserializeOwned;

use crate::connector::ConnectorError;
use crate::spelling::nearest;

/// A connector's settings as JSON Schema: what `source:` takes (besides
/// `connector`) and what a stream or a lookup takes (besides the keys
/// every stream has: `from`, `key`, `emit`, ...). `fhirlift schema` puts
/// them in the migration file's schema under the connector's name.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingsSchema {
    pub source: serde_json::Value,
    pub stream: serde_json::Value,
}

impl SettingsSchema {
    /// Any settings: what a connector that describes none takes.
    pub fn any() -> SettingsSchema {
        SettingsSchema {
            source: serde_json::Value::Bool(true),
            stream: serde_json::Value::Bool(true),
        }
    }

    /// An object of these settings and no other (`name`, its schema).
    pub fn object(settings: &[(&str, serde_json::Value)]) -> serde_json::Value {
        let properties: serde_json::Map<String, serde_json::Value> = settings
            .iter()
            .map(|(name, schema)| ((*name).to_owned(), schema.clone()))
            .collect();
        serde_json::json!({
            "type": "object",
            "properties": properties,
            "additionalProperties": false,
        })
    }

    /// The setting names a schema made by [`SettingsSchema::object`]
    /// lists, for a connector's test that they are the ones it reads.
    pub fn names(schema: &serde_json::Value) -> Vec<&str> {
        schema
            .get("properties")
            .and_then(serde_json::Value::as_object)
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }
}

/// The message for a setting `key` that `connector` does not know.
pub fn unknown_setting(connector: &str, key: &str, known: &[&str]) -> String {
    if known.is_empty() {
        return format!("is not a setting of {connector}: it takes none");
    }
    let hint = nearest(key, known.iter().copied())
        .map(|n| format!("did you mean `{n}`? "))
        .unwrap_or_default();
    format!(
        "is not a setting of {connector}: {hint}its settings are {}",
        known.join(", ")
    )
}

/// Reads the settings under `scope` (`source`, `stream patients`) into
/// `T`, after refusing any key not in `known` (the fields of `T`).
pub fn read<T: DeserializeOwned + Default>(
    connector: &str,
    scope: &str,
    settings: &serde_json::Value,
    known: &[&str],
) -> Result<T, ConnectorError> {
    let map = match settings {
        serde_json::Value::Null => return Ok(T::default()),
        serde_json::Value::Object(map) => map,
        other => {
            return Err(ConnectorError::Setting {
                what: scope.to_owned(),
                message: format!("must be a mapping of settings, not {other}"),
            });
        }
    };
    if let Some(key) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ConnectorError::Setting {
            what: format!("{scope}.{key}"),
            message: unknown_setting(connector, key, known),
        });
    }
    serde_json::from_value(settings.clone()).map_err(|e| {
        // name the setting: the first that does not read alone
        let key = map.iter().find(|(k, v)| {
            let alone =
                serde_json::Value::Object([((*k).clone(), (*v).clone())].into_iter().collect());
            serde_json::from_value::<T>(alone).is_err()
        });
        ConnectorError::Setting {
            what: key.map_or_else(|| scope.to_owned(), |(k, _)| format!("{scope}.{k}")),
            message: e.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Example {
        delimiter: Option<String>,
        header: Option<bool>,
    }

    const KNOWN: &[&str] = &["delimiter", "header"];

    fn read_example(settings: serde_json::Value) -> Result<Example, String> {
        read::<Example>("CSV", "source", &settings, KNOWN).map_err(|e| e.to_string())
    }

    #[test]
    fn known_settings_read_and_unknown_ones_are_named_with_the_nearest() {
        let ok = read_example(serde_json::json!({ "delimiter": ";", "header": false })).unwrap();
        assert_eq!(ok.delimiter.as_deref(), Some(";"));
        assert_eq!(ok.header, Some(false));
        assert!(
            read_example(serde_json::Value::Null)
                .unwrap()
                .header
                .is_none()
        );
        let e = read_example(serde_json::json!({ "delimeter": ";" })).unwrap_err();
        assert!(e.contains("source.delimeter"), "{e}");
        assert!(e.contains("did you mean `delimiter`?"), "{e}");
        assert!(e.contains("its settings are delimiter, header"), "{e}");
    }

    #[test]
    fn a_wrong_type_names_its_setting() {
        let e = read_example(serde_json::json!({ "delimiter": ";", "header": "yes" })).unwrap_err();
        assert!(e.contains("source.header"), "{e}");
        assert!(e.contains("expected a boolean"), "{e}");
        let e = read_example(serde_json::json!(["header"])).unwrap_err();
        assert!(e.contains("must be a mapping"), "{e}");
    }
}
