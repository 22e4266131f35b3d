//! fhirlift-connector-hl7v2: archives of HL7 v2 messages.
//!
//! - The connector (`connector: hl7v2`) reads the files a stream names
//!   (`from:` a file, a folder, or `archive/*.hl7`) and hands each message
//!   to the mapper as one record, in file order. Columns: `message` (the
//!   parsed message, read with `hl7('PID-5.1')` and friends),
//!   `message_type` (`ADT^A01`), `control_id` (MSH-10), `file`, `offset`.
//!   The record's key is the control id; its provenance is
//!   `file@offset (message control-id)`.
//! - A message that cannot be read (no MSH, unreadable delimiters or
//!   character set) is rejected with its file, byte offset and control id;
//!   the rest of the file goes on.
//! - [`maps`] holds the built-in v2-to-FHIR maps (ADT, ORU^R01, VXU^V04),
//!   registered as the map `hl7v2` (`map: hl7v2` in a stream).
//!
//! Settings under `source:`: `path`, the folder `from:` resolves against
//! (default: the migration file's folder).

pub mod maps;
mod read;
mod register;

use std::path::PathBuf;
use std::sync::Arc;

use fhirlift_core::connector::{RecordError, RecordSender};
use fhirlift_core::{
    ConnectorContext, ConnectorError, Provenance, Record, RecordStream, Schema, SourceConnector,
    SourceEvent, StreamSource, Value,
};
use fhirlift_hl7v2::Message;

pub use maps::{MapFailure, MapOptions, MappedResource, MessageMap, map_message};
pub use read::messages as read_messages;
pub use register::read_options;

fhirlift_core::register_connector! {
    name: "hl7v2",
    description: "archives of HL7 v2 messages (plain, batch FHS/BHS or MLLP files), one record per message",
    create: create,
}

/// The columns of every hl7v2 stream.
pub const COLUMNS: [&str; 5] = ["message", "message_type", "control_id", "file", "offset"];

fn create(
    settings: &serde_json::Value,
    context: &ConnectorContext,
) -> Result<Box<dyn SourceConnector>, ConnectorError> {
    let dir = context.source_folder(settings)?;
    if let Some(obj) = settings.as_object() {
        for key in obj.keys() {
            if key != "path" {
                return Err(ConnectorError::Setting {
                    what: format!("source.{key}"),
                    message: "is not an hl7v2 setting (settings: path); mapping settings (zone, authorities) go under the stream's map:".into(),
                });
            }
        }
    }
    Ok(Box::new(Hl7Connector { dir }))
}

struct Hl7Connector {
    dir: PathBuf,
}

impl Hl7Connector {
    fn files(&self, source: &StreamSource) -> Result<Vec<PathBuf>, ConnectorError> {
        read::files(&self.dir, &source.from).map_err(|message| ConnectorError::Source {
            location: source.from.clone(),
            message,
        })
    }
}

impl SourceConnector for Hl7Connector {
    fn schema(&self, source: &StreamSource) -> Result<Arc<Schema>, ConnectorError> {
        self.files(source)?;
        if !source.key.is_empty() {
            return Err(ConnectorError::Setting {
                what: format!("stream {}: key", source.stream),
                message: "an hl7v2 record's key is its message control id (MSH-10); remove `key:`"
                    .into(),
            });
        }
        Ok(schema())
    }

    fn open(&self, source: &StreamSource) -> Result<RecordStream, ConnectorError> {
        let files = self.files(source)?;
        let stream = source.stream.clone();
        let base = self.dir.clone();
        RecordStream::from_blocking(&source.stream, move |tx| {
            let schema = schema();
            for path in files {
                let shown: Arc<str> = Arc::from(
                    path.strip_prefix(&base)
                        .unwrap_or(&path)
                        .display()
                        .to_string()
                        .as_str(),
                );
                let mut reading = Reading {
                    tx: &mut *tx,
                    schema: schema.clone(),
                    stream: stream.clone(),
                    file: shown.clone(),
                    going: true,
                };
                let read = read::messages(&path, |offset, bytes| {
                    reading.message(offset, bytes);
                    reading.going
                });
                if !reading.going {
                    return;
                }
                if let Err(e) = read {
                    tx.send(SourceEvent::Failed(ConnectorError::Source {
                        location: shown.to_string(),
                        message: format!("cannot read: {e}"),
                    }));
                    return;
                }
            }
        })
    }
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(
        COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
    ))
}

struct Reading<'t> {
    tx: &'t mut RecordSender,
    schema: Arc<Schema>,
    stream: Arc<str>,
    file: Arc<str>,
    going: bool,
}

impl Reading<'_> {
    fn message(&mut self, offset: u64, bytes: &[u8]) {
        let event = match Message::parse(bytes, offset) {
            Ok(message) => {
                let control_id = message.control_id().unwrap_or_default();
                let message_type = message
                    .message_type()
                    .map(|(t, e)| if e.is_empty() { t } else { format!("{t}^{e}") })
                    .unwrap_or_default();
                let provenance = Provenance::Message {
                    file: self.file.clone(),
                    offset,
                    control_id: control_id.clone(),
                };
                let key = if control_id.is_empty() {
                    format!("{}@{offset}", self.file)
                } else {
                    control_id.clone()
                };
                SourceEvent::Record(Record {
                    stream: self.stream.clone(),
                    key,
                    schema: self.schema.clone(),
                    values: vec![
                        Value::Message(fhirlift_core::record::Hl7Message(Arc::new(
                            message.into_owned(),
                        ))),
                        Value::Text(message_type),
                        if control_id.is_empty() {
                            Value::Null
                        } else {
                            Value::Text(control_id)
                        },
                        Value::Text(self.file.to_string()),
                        Value::Integer(offset as i64),
                    ],
                    provenance,
                })
            }
            Err(e) => SourceEvent::Rejected(RecordError {
                provenance: Provenance::Message {
                    file: self.file.clone(),
                    offset,
                    control_id: e.control_id.clone().unwrap_or_default(),
                },
                reason: e.message,
                hint: "fix or remove this message in the archive (the other messages are read); \
                       a message starts with an MSH segment whose MSH-1 and MSH-2 give its delimiters"
                    .into(),
            }),
        };
        self.going = self.tx.send(event);
    }
}
