//! Records, rejects and logs as the batch messages of the plugin ABI.
//!
//! One message per line (see `fhirlift-plugin-abi`). Values keep their
//! types across the boundary: text stays a string, an exact decimal travels
//! as `{"decimal": "digits"}` (never through `f64`), JSON as `{"json": v}`.

use fhirlift_core::connector::RecordError;
use fhirlift_core::{Record, Schema, Value};
use serde_json::{Map, Value as Json, json};

/// A value as the ABI's JSON.
pub fn value(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Text(s) => Json::String(s.clone()),
        Value::Integer(i) => Json::from(*i),
        Value::Decimal(d) => json!({ "decimal": d }),
        Value::Bool(b) => Json::Bool(*b),
        Value::Json(j) => json!({ "json": j }),
        Value::List(items) => Json::Array(items.iter().map(value).collect()),
        // a parsed message cannot cross: its text does
        Value::Opaque(o) => Json::String(o.0.text().to_owned()),
    }
}

fn line(out: &mut Vec<u8>, message: &Json) {
    serde_json::to_writer(&mut *out, message).expect("JSON values always serialize");
    out.push(b'\n');
}

/// Appends `{"schema": [...]}`.
pub fn schema(out: &mut Vec<u8>, schema: &Schema) {
    line(out, &json!({ "schema": schema.columns() }));
}

/// Appends `{"record": ...}`; its values are keyed by the schema's columns.
pub fn record(out: &mut Vec<u8>, record: &Record) {
    let mut values = Map::with_capacity(record.values.len());
    for (column, v) in record.schema.columns().iter().zip(&record.values) {
        values.insert(column.clone(), value(v));
    }
    line(
        out,
        &json!({ "record": {
            "key": record.key,
            "values": values,
            "provenance": record.provenance,
        }}),
    );
}

/// Appends `{"reject": ...}`.
pub fn reject(out: &mut Vec<u8>, rejected: &RecordError) {
    line(
        out,
        &json!({ "reject": {
            "provenance": rejected.provenance,
            "reason": rejected.reason,
            "hint": rejected.hint,
        }}),
    );
}

/// Appends `{"log": ...}`.
pub fn log(out: &mut Vec<u8>, level: &str, message: &str) {
    line(
        out,
        &json!({ "log": { "level": level, "message": message } }),
    );
}

/// Appends `{"end": true}`.
pub fn end(out: &mut Vec<u8>) {
    line(out, &json!({ "end": true }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirlift_core::Provenance;
    use std::sync::Arc;

    #[test]
    fn values_keep_their_types() {
        let list = Value::List(vec![Value::Integer(3), Value::Null]);
        assert_eq!(value(&Value::Text("007".into())), json!("007"));
        assert_eq!(value(&Value::Integer(-4)), json!(-4));
        assert_eq!(
            value(&Value::Decimal("12.50".into())),
            json!({"decimal": "12.50"})
        );
        assert_eq!(value(&Value::Bool(true)), json!(true));
        assert_eq!(
            value(&Value::Json(json!({"a": 1}))),
            json!({"json": {"a": 1}})
        );
        assert_eq!(value(&list), json!([3, null]));
    }

    #[test]
    fn a_record_is_one_line_keyed_by_column() {
        let mut out = Vec::new();
        let record = Record {
            stream: Arc::from("s"),
            key: "k1".into(),
            schema: Arc::new(Schema::new(vec!["id".into(), "name".into()])),
            values: vec![Value::Text("1".into()), Value::Null],
            provenance: Provenance::File {
                file: Arc::from("a.txt"),
                line: 3,
            },
        };
        super::record(&mut out, &record);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n') && text.lines().count() == 1);
        let parsed: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parsed,
            json!({"record": {"key": "k1", "values": {"id": "1", "name": null},
                "provenance": {"kind": "file", "file": "a.txt", "line": 3}}})
        );
    }
}
