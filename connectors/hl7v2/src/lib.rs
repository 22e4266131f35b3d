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
//!
//! A resumed stream (`resume_after: file@offset` from the ledger) leaves out
//! the files that sort before the mark's file (by path, as they are read)
//! and, in the mark's file, the messages at or before its offset, without
//! parsing them. When the mark's file is gone, reading resumes at the first
//! file that sorts after it.

mod expressions;
pub mod maps;

pub use expressions::ParsedMessage;
use fhirlift_core::functions::Opaque;
mod read;
mod register;

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
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
    settings: settings_schema,
}

/// The columns of every hl7v2 stream.
pub const COLUMNS: [&str; 5] = ["message", "message_type", "control_id", "file", "offset"];

fn create(
    settings: &serde_json::Value,
    context: &ConnectorContext,
) -> Result<Box<dyn SourceConnector>, ConnectorError> {
    let dir = context.source_folder(settings)?;
    let _: SourceSettings = fhirlift_core::settings::read("hl7v2", "source", settings, &["path"])
        .map_err(map_settings_go_under_map)?;
    Ok(Box::new(Hl7Connector { dir }))
}

/// `source:` as written: the archive's folder only.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceSettings {
    #[allow(dead_code)]
    path: Option<serde_json::Value>,
}

/// A stream takes no settings of the connector's.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamSettings {}

/// [`SourceSettings`] and [`StreamSettings`] as JSON Schema.
fn settings_schema() -> fhirlift_core::settings::SettingsSchema {
    use fhirlift_core::settings::SettingsSchema;
    let path = serde_json::json!({
        "type": "string",
        "description": "the folder `from:` resolves against, relative to the migration file; default its folder",
    });
    SettingsSchema {
        source: SettingsSchema::object(&[("path", path)]),
        stream: SettingsSchema::object(&[]),
    }
}

/// An unknown setting, with where the map's settings go.
fn map_settings_go_under_map(e: ConnectorError) -> ConnectorError {
    match e {
        ConnectorError::Setting { what, message } => ConnectorError::Setting {
            what,
            message: format!(
                "{message}; the map's settings (authorities, default_authority) go under map: in the stream (zone: may also be the stream's or the source's)"
            ),
        },
        other => other,
    }
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
        let _: StreamSettings = fhirlift_core::settings::read(
            "hl7v2 stream",
            &format!("stream {}", source.stream),
            &source.options,
            &[],
        )
        .map_err(map_settings_go_under_map)?;
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
        let mark = resume_point(source)?;
        let files = resume(self.files(source)?, &self.dir, mark);
        let stream = source.stream.clone();
        RecordStream::from_blocking(&source.stream, move |tx| {
            let schema = schema();
            for (path, shown, skip_to) in files {
                let mut reading = Reading {
                    tx: &mut *tx,
                    schema: schema.clone(),
                    stream: stream.clone(),
                    file: shown.clone(),
                    going: true,
                };
                let read = read::messages(&path, |offset, bytes| {
                    // a resumed stream: messages up to the mark were acknowledged
                    if skip_to.is_some_and(|last| offset <= last) {
                        return true;
                    }
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

/// The mark a resumed stream starts after: a file as provenance shows it
/// and a byte offset in it.
fn resume_point(source: &StreamSource) -> Result<Option<(Arc<str>, u64)>, ConnectorError> {
    match &source.resume_after {
        None => Ok(None),
        Some(Provenance::Message { file, offset, .. }) => Ok(Some((file.clone(), *offset))),
        Some(other) => {
            Err(source.foreign_mark(other, &format!("HL7 v2 messages from {}", source.from), ""))
        }
    }
}

/// The files still to read, each with the name provenance shows (its path
/// below the source folder) and, for the mark's file, the offset up to
/// which messages are skipped. Files are compared as paths, the order
/// [`read::files`] sorts them in, so the ones before the mark are left out
/// even when the mark's file no longer exists.
fn resume(
    files: Vec<PathBuf>,
    base: &Path,
    mark: Option<(Arc<str>, u64)>,
) -> Vec<(PathBuf, Arc<str>, Option<u64>)> {
    files
        .into_iter()
        .filter_map(|path| {
            let shown: Arc<str> = Arc::from(
                path.strip_prefix(base)
                    .unwrap_or(&path)
                    .display()
                    .to_string()
                    .as_str(),
            );
            let skip_to = match &mark {
                None => None,
                Some((file, offset)) => match Path::new(&*shown).cmp(Path::new(&**file)) {
                    Ordering::Less => return None,
                    Ordering::Equal => Some(*offset),
                    Ordering::Greater => None,
                },
            };
            Some((path, shown, skip_to))
        })
        .collect()
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
                        Value::Opaque(Opaque::new(ParsedMessage(message.into_owned()))),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str) -> String {
        format!("MSH|^~\\&|A|B|C|D|20230101||ADT^A01|{id}|P|2.5\rPID|1||{id}\r")
    }

    /// `a.hl7` (A1, a damaged message, A2), `b.hl7` (B1, B2), `x/c.hl7`
    /// (C1) and `x-y.hl7` (D1): by path `x/c.hl7` comes before `x-y.hl7`,
    /// by text after it.
    fn archive(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fhirlift-hl7-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("x")).unwrap();
        let a = format!("{}MSH|\rPID|1\r{}", message("A1"), message("A2"));
        std::fs::write(dir.join("a.hl7"), a).unwrap();
        std::fs::write(dir.join("b.hl7"), message("B1") + &message("B2")).unwrap();
        std::fs::write(dir.join("x/c.hl7"), message("C1")).unwrap();
        std::fs::write(dir.join("x-y.hl7"), message("D1")).unwrap();
        dir
    }

    fn read(dir: &Path, resume_after: Option<Provenance>) -> Result<Vec<String>, ConnectorError> {
        let c = create(
            &serde_json::json!({}),
            &ConnectorContext {
                base_dir: dir.to_path_buf(),
            },
        )
        .unwrap();
        let source = StreamSource {
            stream: Arc::from("s"),
            from: ".".into(),
            key: vec![],
            options: serde_json::json!({}),
            resume_after,
        };
        let mut open = c.open(&source)?;
        let mut out = Vec::new();
        while let Some(chunk) = open.blocking_next_chunk() {
            for event in chunk {
                out.push(match event {
                    SourceEvent::Record(r) => r.provenance.to_string(),
                    SourceEvent::Rejected(e) => format!("rejected {}", e.provenance),
                    SourceEvent::Failed(e) => panic!("failed: {e}"),
                });
            }
        }
        Ok(out)
    }

    fn at(file: &str, offset: u64) -> Option<Provenance> {
        Some(Provenance::Message {
            file: Arc::from(file),
            offset,
            control_id: String::new(),
        })
    }

    /// The offset of a message in the full reading, from its provenance.
    fn offset_of(all: &[String], id: &str) -> (String, u64) {
        let line = all
            .iter()
            .find(|l| l.ends_with(&format!("(message {id})")))
            .unwrap();
        let (file, rest) = line.split_once('@').unwrap();
        let offset = rest.split_once(' ').unwrap().0.parse().unwrap();
        (file.to_owned(), offset)
    }

    #[test]
    fn a_resumed_stream_starts_right_after_the_mark_in_path_order() {
        let dir = archive("resume");
        let all = read(&dir, None).unwrap();
        assert_eq!(
            all,
            [
                "a.hl7@0 (message A1)",
                "rejected a.hl7@54 (message without control id)",
                "a.hl7@65 (message A2)",
                "b.hl7@0 (message B1)",
                "b.hl7@54 (message B2)",
                "x/c.hl7@0 (message C1)",
                "x-y.hl7@0 (message D1)",
            ]
        );

        let (file, offset) = offset_of(&all, "B1");
        assert_eq!(file, "b.hl7");
        assert_eq!(read(&dir, at(&file, offset)).unwrap(), all[4..]);
        // the mark on the damaged message: it is not read again
        assert_eq!(read(&dir, at("a.hl7", 54)).unwrap(), all[2..]);
        // an offset inside a message: the next one is the first read
        assert_eq!(read(&dir, at("a.hl7", 60)).unwrap(), all[2..]);
        // the mark before the damaged message: the reject comes again
        let (_, a1) = offset_of(&all, "A1");
        assert_eq!(read(&dir, at("a.hl7", a1)).unwrap(), all[1..]);
        // in a folder: `x-y.hl7` sorts after `x/c.hl7` as a path
        let (file, offset) = offset_of(&all, "C1");
        assert_eq!(file, "x/c.hl7");
        assert_eq!(read(&dir, at(&file, offset)).unwrap(), all[6..]);
    }

    #[test]
    fn a_stream_resumed_after_its_last_message_reads_nothing() {
        let dir = archive("resume-end");
        let all = read(&dir, None).unwrap();
        let (file, offset) = offset_of(&all, "D1");
        assert_eq!(file, "x-y.hl7");
        assert!(read(&dir, at(&file, offset)).unwrap().is_empty());
    }

    #[test]
    fn a_mark_whose_file_is_gone_resumes_at_the_next_file() {
        let dir = archive("resume-gone");
        let all = read(&dir, None).unwrap();
        let (_, b1) = offset_of(&all, "B1");
        std::fs::remove_file(dir.join("b.hl7")).unwrap();
        let rest = read(&dir, at("b.hl7", b1)).unwrap();
        assert_eq!(rest, all[5..], "starts at x/c.hl7");
        // a name between two files, at any offset
        let rest = read(&dir, at("a2.hl7", 1_000_000)).unwrap();
        assert_eq!(rest, all[5..]);
        let rest = read(&dir, at("x", 0)).unwrap();
        assert_eq!(rest, all[5..], "a folder sorts before the files in it");
        assert!(read(&dir, at("z.hl7", 0)).unwrap().is_empty());
    }

    #[test]
    fn a_resume_point_of_another_kind_is_refused() {
        let dir = archive("resume-kind");
        let err = read(
            &dir,
            Some(Provenance::File {
                file: Arc::from("a.csv"),
                line: 3,
            }),
        )
        .unwrap_err();
        assert!(matches!(err, ConnectorError::Setting { .. }));
        let message = err.to_string();
        assert!(
            message.contains("stream s")
                && message.contains("a.csv:3")
                && message.contains("--full"),
            "{message}"
        );
    }
}
