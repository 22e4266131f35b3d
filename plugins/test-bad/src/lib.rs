//! A plugin that misbehaves on request, for the host's tests (not an
//! example to follow). Its streams yield `records` records (default 3;
//! column `id`, provenance `table <from> key <n>`), and fail as the
//! stream's `fail:` option says:
//!
//! - `panic`: the reader thread panics after two records;
//! - `panic-open`: `open` itself panics;
//! - `error`: the stream fails (a source error) after two records;
//! - `bad-value`: a record carries a decimal that is not digits, which the
//!   host refuses as malformed output;
//! - `setting`: `schema` and `open` refuse the stream's settings.
//!
//! The examples are other plugin libraries: `wrong_abi` (ABI version
//! 999), `named_csv` (takes the built-in name `csv`), `malformed` (written
//! by hand against the ABI; its batches are not JSON).

use std::sync::Arc;

use fhirlift_core::{
    ConnectorContext, ConnectorError, Provenance, Record, RecordStream, Schema, SourceConnector,
    SourceEvent, StreamSource, Value,
};
use serde_json::Value as Json;

fhirlift_plugin_sdk::export_connector! {
    name: "test-bad",
    description: "misbehaves as its stream options say (tests only)",
    create: create,
    streams: ["any"],
}

fn create(_: &Json, _: &ConnectorContext) -> Result<Box<dyn SourceConnector>, ConnectorError> {
    Ok(Box::new(Bad))
}

struct Bad;

fn fail(source: &StreamSource) -> String {
    source
        .options
        .get("fail")
        .and_then(Json::as_str)
        .unwrap_or("")
        .to_owned()
}

fn refuse(source: &StreamSource) -> Result<(), ConnectorError> {
    if fail(source) == "setting" {
        return Err(ConnectorError::Setting {
            what: format!("streams.{}.fail", source.stream),
            message: "refused as asked".into(),
        });
    }
    Ok(())
}

impl SourceConnector for Bad {
    fn schema(&self, source: &StreamSource) -> Result<Arc<Schema>, ConnectorError> {
        refuse(source)?;
        Ok(Arc::new(Schema::new(vec!["id".into()])))
    }

    fn open(&self, source: &StreamSource) -> Result<RecordStream, ConnectorError> {
        refuse(source)?;
        let fail = fail(source);
        if fail == "panic-open" {
            panic!("boom in open");
        }
        let count = source
            .options
            .get("records")
            .and_then(Json::as_u64)
            .unwrap_or(3);
        let schema = Arc::new(Schema::new(vec!["id".into()]));
        let stream = source.stream.clone();
        let table: Arc<str> = Arc::from(source.from.as_str());
        tracing::warn!(fail = %fail, "test-bad opens a stream");
        RecordStream::from_blocking(&source.stream, move |tx| {
            for n in 1..=count {
                if n == 3 {
                    match fail.as_str() {
                        "panic" => panic!("boom in the reader"),
                        "error" => {
                            tx.send(SourceEvent::Failed(ConnectorError::Source {
                                location: format!("{table} key {n}"),
                                message: "the source went away".into(),
                            }));
                            return;
                        }
                        _ => {}
                    }
                }
                let value = if fail == "bad-value" && n == 2 {
                    Value::Decimal("twelve".into())
                } else {
                    Value::Text(n.to_string())
                };
                let record = Record {
                    stream: stream.clone(),
                    key: n.to_string(),
                    schema: schema.clone(),
                    values: vec![value],
                    provenance: Provenance::Table {
                        table: table.clone(),
                        key: n.to_string(),
                    },
                };
                if !tx.send(SourceEvent::Record(record)) {
                    return;
                }
            }
        })
    }
}
