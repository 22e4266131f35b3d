//! A plugin's `config_schema`, enforced: the migration's `source:` settings
//! are checked against it before the plugin sees them, so a typo or a
//! wrong type is a `check` error naming the setting, not a plugin failure
//! in the middle of a run.
//!
//! The schema is JSON Schema; this checks the subset connector settings
//! need: `type` (one name or a list; `integer` is a number without a
//! fraction), `properties`, `required`, `additionalProperties` (`false` or
//! a schema), `items`, `enum`, `const`, `minimum`, `maximum`,
//! `minLength`, `maxLength`, `minItems` and `maxItems`. Other keywords
//! (`description`, `format`, `$ref`, ...) are read past: a schema using
//! them is checked less strictly, never refused.

use serde_json::Value as Json;

/// What in `value` does not match `schema`, one message per mismatch,
/// each naming its place under `at` (`source.columns[1].width`). Empty
/// when it matches. A schema that is not an object (`true`, `null`)
/// accepts everything; `false` accepts nothing.
pub fn violations(schema: &Json, value: &Json, at: &str) -> Vec<String> {
    let mut out = Vec::new();
    check(schema, value, at, &mut out);
    out
}

/// Whether `schema` is usable as a schema: an object or a boolean.
pub fn is_schema(schema: &Json) -> bool {
    matches!(schema, Json::Object(_) | Json::Bool(_))
}

fn check(schema: &Json, value: &Json, at: &str, out: &mut Vec<String>) {
    let rules = match schema {
        Json::Object(rules) => rules,
        Json::Bool(false) => {
            out.push(format!("{at} is not allowed here"));
            return;
        }
        _ => return,
    };
    if let Some(types) = rules.get("type") {
        let names: Vec<&str> = match types {
            Json::String(t) => vec![t.as_str()],
            Json::Array(list) => list.iter().filter_map(Json::as_str).collect(),
            _ => Vec::new(),
        };
        if !names.is_empty() && !names.iter().any(|t| has_type(value, t)) {
            out.push(format!(
                "{at} must be {}, not {}",
                names
                    .iter()
                    .map(|t| article(t))
                    .collect::<Vec<_>>()
                    .join(" or "),
                describe(value)
            ));
            // its other rules would only repeat the point
            return;
        }
    }
    if let Some(allowed) = rules.get("enum").and_then(Json::as_array)
        && !allowed.iter().any(|a| same(a, value))
    {
        let list: Vec<String> = allowed.iter().map(Json::to_string).collect();
        out.push(format!("{at} must be one of {}", list.join(", ")));
    }
    if let Some(expected) = rules.get("const")
        && !same(expected, value)
    {
        out.push(format!("{at} must be {expected}"));
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = rules.get("minimum").and_then(Json::as_f64)
            && n < min
        {
            out.push(format!("{at} must be at least {}", number(min)));
        }
        if let Some(max) = rules.get("maximum").and_then(Json::as_f64)
            && n > max
        {
            out.push(format!("{at} must be at most {}", number(max)));
        }
    }
    if let Some(text) = value.as_str() {
        let chars = text.chars().count() as u64;
        if let Some(min) = rules.get("minLength").and_then(Json::as_u64)
            && chars < min
        {
            out.push(format!("{at} must have at least {min} characters"));
        }
        if let Some(max) = rules.get("maxLength").and_then(Json::as_u64)
            && chars > max
        {
            out.push(format!("{at} must have at most {max} characters"));
        }
    }
    if let Some(items) = value.as_array() {
        let len = items.len() as u64;
        if let Some(min) = rules.get("minItems").and_then(Json::as_u64)
            && len < min
        {
            out.push(format!("{at} must have at least {min} items"));
        }
        if let Some(max) = rules.get("maxItems").and_then(Json::as_u64)
            && len > max
        {
            out.push(format!("{at} must have at most {max} items"));
        }
        if let Some(item) = rules.get("items") {
            for (i, v) in items.iter().enumerate() {
                check(item, v, &format!("{at}[{i}]"), out);
            }
        }
    }
    if let Some(fields) = value.as_object() {
        let properties = rules.get("properties").and_then(Json::as_object);
        if let Some(required) = rules.get("required").and_then(Json::as_array) {
            for name in required.iter().filter_map(Json::as_str) {
                if !fields.contains_key(name) {
                    out.push(format!("{at}.{name} is required"));
                }
            }
        }
        for (name, v) in fields {
            let place = format!("{at}.{name}");
            match properties.and_then(|p| p.get(name)) {
                Some(rule) => check(rule, v, &place, out),
                None => match rules.get("additionalProperties") {
                    Some(Json::Bool(false)) => {
                        let mut known: Vec<&str> = properties
                            .map(|p| p.keys().map(String::as_str).collect())
                            .unwrap_or_default();
                        known.sort_unstable();
                        // the rule built-in connectors follow, word for word
                        out.push(format!(
                            "{place} {}",
                            fhirlift_core::settings::unknown_setting("this plugin", name, &known)
                        ));
                    }
                    Some(rule) => check(rule, v, &place, out),
                    None => {}
                },
            }
        }
    }
}

fn has_type(value: &Json, name: &str) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        // a type this subset does not know: do not refuse on it
        _ => true,
    }
}

/// Equal as JSON values, with 1 and 1.0 the same number.
fn same(a: &Json, b: &Json) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn article(t: &str) -> String {
    match t {
        "object" | "array" | "integer" => format!("an {t}"),
        "null" => "null".to_owned(),
        _ => format!("a {t}"),
    }
}

/// What a value is, without quoting it (settings may hold paths, never
/// patient data, but a message need not repeat them).
fn describe(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(n) if n.is_f64() => "a number with a fraction",
        Json::Number(_) => "a number",
        Json::String(_) => "text",
        Json::Array(_) => "a list",
        Json::Object(_) => "a mapping",
    }
}

fn number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn layout_schema() -> Json {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["path"],
            "properties": {
                "path": { "type": "string", "minLength": 1 },
                "encoding": { "enum": ["utf-8", "windows-1252"] },
                "columns": { "type": "array", "minItems": 1, "items": {
                    "type": "object",
                    "required": ["name", "start", "width"],
                    "properties": {
                        "name": { "type": "string" },
                        "start": { "type": "integer", "minimum": 1 },
                        "width": { "type": "integer", "minimum": 1 }
                    }
                } }
            }
        })
    }

    #[test]
    fn matching_settings_have_no_violations() {
        let ok = json!({
            "path": "data/",
            "encoding": "utf-8",
            "columns": [{ "name": "mrn", "start": 1, "width": 8.0 }]
        });
        assert_eq!(
            violations(&layout_schema(), &ok, "source"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn each_mismatch_is_named_by_its_place() {
        let bad = json!({
            "pth": "data/",
            "encoding": "latin-9",
            "columns": [
                { "name": "mrn", "start": 1, "width": 8 },
                { "name": "family", "start": 0, "width": "15" },
                { "start": 2.5, "width": 3 }
            ]
        });
        let found = violations(&layout_schema(), &bad, "source");
        assert_eq!(
            found,
            [
                // in the order the settings were written
                "source.path is required",
                "source.pth is not a setting of this plugin: did you mean `path`? its settings are columns, encoding, path",
                "source.encoding must be one of \"utf-8\", \"windows-1252\"",
                "source.columns[1].start must be at least 1",
                "source.columns[1].width must be an integer, not text",
                "source.columns[2].name is required",
                "source.columns[2].start must be an integer, not a number with a fraction",
            ]
        );
    }

    #[test]
    fn type_lists_lengths_and_boolean_schemas() {
        let schema = json!({ "type": ["string", "null"], "maxLength": 3 });
        assert!(violations(&schema, &json!(null), "x").is_empty());
        assert_eq!(
            violations(&schema, &json!("abcd"), "x"),
            ["x must have at most 3 characters"]
        );
        assert_eq!(
            violations(&schema, &json!(4), "x"),
            ["x must be a string or null, not a number"]
        );
        assert!(violations(&json!(true), &json!({"any": 1}), "x").is_empty());
        assert_eq!(
            violations(&json!(false), &json!(1), "x"),
            ["x is not allowed here"]
        );
        // keywords outside the subset are read past
        assert!(violations(&json!({ "$ref": "#/x", "format": "uri" }), &json!(1), "x").is_empty());
    }
}
