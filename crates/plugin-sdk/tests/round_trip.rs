//! The SDK's exported functions driven by the host's connector, in one
//! process (no library loading): records of every value type, rejects,
//! resume points, settings errors and panics cross the ABI intact.

use std::sync::Arc;

use fhirlift_core::connector::RecordError;
use fhirlift_core::{
    ConnectorContext, ConnectorError, Provenance, Record, RecordStream, Schema, SourceConnector,
    SourceEvent, StreamSource, Value,
};
use fhirlift_plugin_host::LoadedPlugin;
use serde_json::json;

fhirlift_plugin_sdk::export_connector! {
    name: "round-trip",
    description: "every value type",
    create: create,
    config_schema: r#"{"type": "object"}"#,
    streams: ["values"],
}

fn create(
    settings: &serde_json::Value,
    _: &ConnectorContext,
) -> Result<Box<dyn SourceConnector>, ConnectorError> {
    if settings.get("refuse").is_some() {
        return Err(ConnectorError::Setting {
            what: "source.refuse".into(),
            message: "refused".into(),
        });
    }
    Ok(Box::new(Values))
}

struct Values;

fn columns() -> Arc<Schema> {
    Arc::new(Schema::new(
        ["text", "int", "dec", "bool", "json", "list", "null"]
            .map(String::from)
            .to_vec(),
    ))
}

impl SourceConnector for Values {
    fn schema(&self, _: &StreamSource) -> Result<Arc<Schema>, ConnectorError> {
        Ok(columns())
    }

    fn open(&self, source: &StreamSource) -> Result<RecordStream, ConnectorError> {
        let mode = source.options["mode"].as_str().unwrap_or("").to_owned();
        if mode == "panic-open" {
            panic!("open blew up");
        }
        let after = match &source.resume_after {
            Some(Provenance::Table { key, .. }) => key.parse::<u64>().unwrap(),
            _ => 0,
        };
        let stream = source.stream.clone();
        RecordStream::from_blocking("rt", move |tx| {
            let schema = columns();
            for n in (after + 1)..=600 {
                if mode == "panic" && n == 300 {
                    panic!("reader blew up at {n}");
                }
                let provenance = Provenance::Table {
                    table: Arc::from("t"),
                    key: n.to_string(),
                };
                if n % 100 == 0 {
                    tx.send(SourceEvent::Rejected(RecordError {
                        provenance,
                        reason: format!("record {n} is round"),
                        hint: "none".into(),
                    }));
                    continue;
                }
                let values = vec![
                    Value::Text(format!("00{n}")),
                    Value::Integer(-(n as i64)),
                    Value::Decimal("12.50".into()),
                    Value::Bool(n % 2 == 0),
                    Value::Json(json!({"n": n})),
                    Value::List(vec![Value::Text("a".into()), Value::Integer(1)]),
                    Value::Null,
                ];
                tx.send(SourceEvent::Record(Record {
                    stream: stream.clone(),
                    key: n.to_string(),
                    schema: schema.clone(),
                    values,
                    provenance,
                }));
            }
            if mode == "fail" {
                tx.send(SourceEvent::Failed(ConnectorError::Source {
                    location: "t".into(),
                    message: "gone".into(),
                }));
            }
        })
    }
}

unsafe extern "C" {
    // exported by the macro above, found by its symbol name like a host would
    fn fhirlift_plugin_v1() -> *const fhirlift_plugin_sdk::abi::PluginDescriptor;
}

fn connector(settings: serde_json::Value) -> Box<dyn SourceConnector> {
    let descriptor = unsafe { &*fhirlift_plugin_v1() };
    let plugin = LoadedPlugin::from_descriptor(descriptor, "in-process".as_ref()).unwrap();
    assert_eq!(plugin.info.name, "round-trip");
    assert_eq!(plugin.info.streams, Some(vec!["values".to_owned()]));
    assert_eq!(plugin.info.config_schema, json!({"type": "object"}));
    (plugin.entry().create)(
        &settings,
        &ConnectorContext {
            base_dir: ".".into(),
        },
    )
    .unwrap()
}

fn source(mode: &str, resume_after: Option<Provenance>) -> StreamSource {
    StreamSource {
        stream: Arc::from("values"),
        from: "t".into(),
        key: vec![],
        options: json!({ "mode": mode }),
        resume_after,
    }
}

fn drain(mut stream: RecordStream) -> Vec<SourceEvent> {
    let mut events = Vec::new();
    while let Some(chunk) = stream.blocking_next_chunk() {
        events.extend(chunk);
    }
    events
}

#[test]
fn records_and_rejects_cross_intact() {
    let c = connector(json!({}));
    assert_eq!(c.schema(&source("", None)).unwrap(), columns());
    let events = drain(c.open(&source("", None)).unwrap());
    assert_eq!(events.len(), 600);
    let rejects = events
        .iter()
        .filter(|e| matches!(e, SourceEvent::Rejected(r) if r.reason.ends_with("is round")))
        .count();
    assert_eq!(rejects, 6);
    let SourceEvent::Record(r) = &events[1] else {
        panic!("{:?}", events[1])
    };
    assert_eq!(r.stream.as_ref(), "values");
    assert_eq!(r.key, "2");
    assert_eq!(r.provenance.to_string(), "t key 2");
    assert_eq!(
        r.values,
        vec![
            Value::Text("002".into()),
            Value::Integer(-2),
            Value::Decimal("12.50".into()),
            Value::Bool(true),
            Value::Json(json!({"n": 2})),
            Value::List(vec![Value::Text("a".into()), Value::Integer(1)]),
            Value::Null,
        ]
    );
}

#[test]
fn a_resumed_stream_starts_after_its_mark() {
    let c = connector(json!({}));
    let mark = Provenance::Table {
        table: Arc::from("t"),
        key: "590".into(),
    };
    let events = drain(c.open(&source("", Some(mark))).unwrap());
    assert_eq!(events.len(), 10);
}

#[test]
fn errors_keep_their_kind_and_name_the_plugin() {
    let c = connector(json!({"refuse": true}));
    let err = c.schema(&source("", None)).unwrap_err();
    assert!(matches!(err, ConnectorError::Setting { .. }), "{err}");
    assert_eq!(err.to_string(), "plugin round-trip: source.refuse: refused");

    let c = connector(json!({}));
    let events = drain(c.open(&source("fail", None)).unwrap());
    assert_eq!(events.len(), 601);
    let Some(SourceEvent::Failed(e)) = events.last() else {
        panic!()
    };
    assert_eq!(e.to_string(), "plugin round-trip: t: gone");
}

#[test]
fn panics_become_errors() {
    let c = connector(json!({}));
    let err = c
        .open(&source("panic-open", None))
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        "plugin round-trip: the plugin panicked in open: open blew up"
    );
    let events = drain(c.open(&source("panic", None)).unwrap());
    let Some(SourceEvent::Failed(e)) = events.last() else {
        panic!()
    };
    let text = e.to_string();
    assert!(
        text.starts_with(
            "plugin round-trip: the plugin panicked in next_batch: reader blew up at 300"
        ),
        "{text}"
    );
    // records read before the panic made it; none after
    assert!(events.len() < 300, "{}", events.len());
}
