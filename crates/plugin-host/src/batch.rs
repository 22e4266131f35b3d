//! Reads a plugin's batches: newline-delimited JSON messages (see
//! `fhirlift-plugin-abi`) into [`SourceEvent`]s.
//!
//! A `schema` message sets the columns of the records after it; a
//! `record` lays its values out by those columns (a missing column is
//! null, an unknown one an error); `reject` becomes a rejected record,
//! `log` a `tracing` event with the plugin's name, `end` the end of the
//! stream. Any line that is not one of these is malformed: the stream
//! fails with an error naming the plugin, the batch and the line.

use std::sync::Arc;

use fhirlift_core::connector::RecordError;
use fhirlift_core::{ConnectorError, Provenance, Record, Schema, SourceEvent, Value};
use serde_json::Value as Json;

/// What the reader does after a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Ask for the next batch.
    More,
    /// The stream is complete.
    End,
    /// The consumer went away: stop reading.
    Stop,
}

/// Decodes the batches of one stream, in order.
pub struct Decoder {
    plugin: Arc<str>,
    stream: Arc<str>,
    schema: Option<Arc<Schema>>,
    batches: u64,
}

impl Decoder {
    pub fn new(plugin: Arc<str>, stream: Arc<str>) -> Decoder {
        Decoder {
            plugin,
            stream,
            schema: None,
            batches: 0,
        }
    }

    /// Decodes one batch, handing each event to `emit` (false: the
    /// consumer is gone). A malformed line is an error naming the plugin,
    /// the batch and the line; the events before it were emitted.
    pub fn batch(
        &mut self,
        bytes: &[u8],
        mut emit: impl FnMut(SourceEvent) -> bool,
    ) -> Result<Flow, ConnectorError> {
        self.batches += 1;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Flow::End);
        }
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let step = self.line(line).map_err(|message| ConnectorError::Source {
                location: format!("plugin {}", self.plugin),
                message: format!(
                    "malformed output in batch {}, line {}: {message}",
                    self.batches,
                    i + 1
                ),
            })?;
            match step {
                Step::Event(event) => {
                    if !emit(event) {
                        return Ok(Flow::Stop);
                    }
                }
                Step::End => return Ok(Flow::End),
                Step::Nothing => {}
            }
        }
        Ok(Flow::More)
    }

    fn line(&mut self, line: &[u8]) -> Result<Step, String> {
        let message: Json = serde_json::from_slice(line).map_err(|e| format!("not JSON ({e})"))?;
        let Json::Object(message) = message else {
            return Err("a message must be a JSON object".into());
        };
        let mut items = message.into_iter();
        let (Some((kind, body)), None) = (items.next(), items.next()) else {
            return Err("a message has exactly one key (schema, record, reject, log, end)".into());
        };
        match kind.as_str() {
            "schema" => {
                let columns = string_list(body).ok_or("`schema` must be a list of column names")?;
                self.schema = Some(Arc::new(Schema::new(columns)));
                Ok(Step::Nothing)
            }
            "record" => self
                .record(body)
                .map(|r| Step::Event(SourceEvent::Record(r))),
            "reject" => {
                let provenance = provenance(body.get("provenance"))?;
                let text = |key: &str| body.get(key).and_then(Json::as_str).map(str::to_owned);
                let reason = text("reason").ok_or("a reject needs a `reason` string")?;
                Ok(Step::Event(SourceEvent::Rejected(RecordError {
                    provenance,
                    reason,
                    hint: text("hint").unwrap_or_default(),
                })))
            }
            "log" => {
                let level = body.get("level").and_then(Json::as_str).unwrap_or("info");
                let text = body
                    .get("message")
                    .and_then(Json::as_str)
                    .ok_or("a log needs a `message` string")?;
                log(&self.plugin, level, text);
                Ok(Step::Nothing)
            }
            "end" => Ok(Step::End),
            other => Err(format!(
                "unknown message {other:?} (schema, record, reject, log, end)"
            )),
        }
    }

    fn record(&self, body: Json) -> Result<Record, String> {
        let schema = self
            .schema
            .clone()
            .ok_or("a record came before any `schema` message")?;
        let key = match body.get("key") {
            Some(Json::String(k)) => k.clone(),
            Some(Json::Number(n)) => n.to_string(),
            _ => return Err("a record needs a `key` string".into()),
        };
        let provenance = provenance(body.get("provenance"))?;
        let mut values = vec![Value::Null; schema.len()];
        match body.get("values") {
            Some(Json::Object(fields)) => {
                for (column, v) in fields {
                    let i = schema
                        .index_of(column)
                        .ok_or_else(|| format!("column {column:?} is not in the schema"))?;
                    values[i] = value(v).map_err(|e| format!("column {column:?}: {e}"))?;
                }
            }
            _ => return Err("a record needs `values`, an object keyed by column".into()),
        }
        Ok(Record {
            stream: self.stream.clone(),
            key,
            schema,
            values,
            provenance,
        })
    }
}

enum Step {
    Event(SourceEvent),
    End,
    Nothing,
}

/// A JSON array of strings.
pub fn string_list(v: Json) -> Option<Vec<String>> {
    match v {
        Json::Array(items) => items
            .into_iter()
            .map(|c| match c {
                Json::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn provenance(v: Option<&Json>) -> Result<Provenance, String> {
    let v = v.ok_or("`provenance` is missing")?;
    serde_json::from_value(v.clone()).map_err(|e| format!("`provenance` is not one: {e}"))
}

/// A value of the ABI's JSON.
pub fn value(v: &Json) -> Result<Value, String> {
    Ok(match v {
        Json::Null => Value::Null,
        Json::String(s) => Value::Text(s.clone()),
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Decimal(n.to_string()),
        },
        Json::Array(items) => Value::List(items.iter().map(value).collect::<Result<_, _>>()?),
        Json::Object(o) if o.len() == 1 => match o.iter().next() {
            Some((k, Json::String(d))) if k == "decimal" && is_decimal(d) => {
                Value::Decimal(d.clone())
            }
            Some((k, j)) if k == "json" => Value::Json(j.clone()),
            _ => return Err(VALUE_SHAPES.into()),
        },
        Json::Object(_) => return Err(VALUE_SHAPES.into()),
    })
}

const VALUE_SHAPES: &str = "a value is null, a string, a number, a boolean, a list, {\"decimal\": \"digits\"} or {\"json\": any}";

fn is_decimal(d: &str) -> bool {
    let digits = d.strip_prefix('-').unwrap_or(d);
    let mut parts = digits.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let fraction = parts.next().unwrap_or("0");
    !whole.is_empty()
        && !fraction.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit())
}

/// A plugin's log line, as a host `tracing` event.
fn log(plugin: &str, level: &str, message: &str) {
    match level {
        "error" => tracing::error!(plugin, "{message}"),
        "warn" => tracing::warn!(plugin, "{message}"),
        "debug" => tracing::debug!(plugin, "{message}"),
        "trace" => tracing::trace!(plugin, "{message}"),
        _ => tracing::info!(plugin, "{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(batches: &[&str]) -> (Vec<SourceEvent>, Result<Flow, ConnectorError>) {
        let mut d = Decoder::new(Arc::from("fw"), Arc::from("s"));
        let mut events = Vec::new();
        let mut last = Ok(Flow::More);
        for b in batches {
            last = d.batch(b.as_bytes(), |e| {
                events.push(e);
                true
            });
            if !matches!(last, Ok(Flow::More)) {
                break;
            }
        }
        (events, last)
    }

    const PROV: &str = r#"{"kind":"file","file":"a.txt","line":2}"#;

    #[test]
    fn records_rejects_and_the_end() {
        let b1 = format!(
            "{{\"schema\":[\"id\",\"n\",\"d\"]}}\n{{\"log\":{{\"level\":\"info\",\"message\":\"hi\"}}}}\n{{\"record\":{{\"key\":\"1\",\"values\":{{\"id\":\"007\",\"n\":3,\"d\":{{\"decimal\":\"1.50\"}}}},\"provenance\":{PROV}}}}}\n"
        );
        let b2 = format!(
            "{{\"reject\":{{\"provenance\":{PROV},\"reason\":\"short\",\"hint\":\"fix\"}}}}\n{{\"record\":{{\"key\":\"2\",\"values\":{{\"id\":\"8\"}},\"provenance\":{PROV}}}}}\n{{\"end\":true}}\n"
        );
        let (events, last) = decode(&[&b1, &b2]);
        assert_eq!(last.unwrap(), Flow::End);
        assert_eq!(events.len(), 3);
        let SourceEvent::Record(r) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(r.key, "1");
        assert_eq!(r.get("id"), Some(&Value::Text("007".into())));
        assert_eq!(r.get("n"), Some(&Value::Integer(3)));
        assert_eq!(r.get("d"), Some(&Value::Decimal("1.50".into())));
        assert_eq!(r.provenance.to_string(), "a.txt:2");
        assert!(matches!(&events[1], SourceEvent::Rejected(e) if e.reason == "short"));
        let SourceEvent::Record(r) = &events[2] else {
            panic!()
        };
        assert_eq!(r.get("d"), Some(&Value::Null));
    }

    #[test]
    fn an_empty_batch_is_the_end() {
        assert_eq!(decode(&[""]).1.unwrap(), Flow::End);
    }

    #[test]
    fn malformed_lines_name_the_plugin_batch_and_line() {
        let schema = "{\"schema\":[\"id\"]}\n";
        let log = "{\"log\":{\"level\":\"debug\",\"message\":\"x\"}}\n";
        let early = format!(r#"{{"record":{{"key":"1","values":{{}},"provenance":{PROV}}}}}"#);
        for (first, bad, why) in [
            (schema, "not json", "not JSON"),
            (schema, "[1]", "JSON object"),
            (schema, r#"{"state": 1}"#, "unknown message \"state\""),
            (schema, r#"{"end": true, "log": 1}"#, "exactly one key"),
            (log, early.as_str(), "before any `schema`"),
        ] {
            let batch = format!("\n\n{bad}\n");
            let text = decode(&[first, &batch]).1.unwrap_err().to_string();
            assert!(
                text.starts_with("plugin fw: malformed output in batch 2, line 3: ")
                    && text.contains(why),
                "{text}"
            );
        }
    }

    #[test]
    fn values_are_checked() {
        assert_eq!(
            value(&json!(["a", 1, true])).unwrap(),
            Value::List(vec![
                Value::Text("a".into()),
                Value::Integer(1),
                Value::Bool(true)
            ])
        );
        assert_eq!(
            value(&json!({"json": {"a": [1]}})).unwrap(),
            Value::Json(json!({"a": [1]}))
        );
        assert!(value(&json!({"decimal": "1e5"})).is_err());
        assert!(value(&json!({"decimal": "-12.5"})).is_ok());
        assert!(value(&json!({"other": 1})).is_err());
        let err = decode(&[&format!(
            "{{\"schema\":[\"id\"]}}\n{{\"record\":{{\"key\":\"1\",\"values\":{{\"zz\":1}},\"provenance\":{PROV}}}}}\n"
        )])
        .1
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("line 2") && err.contains("\"zz\" is not in the schema"),
            "{err}"
        );
    }
}
