//! The source side: the [`SourceConnector`] trait and the record stream.
//!
//! A connector opens one named stream at a time. Records flow through a
//! bounded channel in chunks, so a slow consumer holds the producer back
//! (back-pressure) and memory stays flat whatever the source size.

use std::path::PathBuf;
use std::sync::Arc;

use std::sync::mpsc;

use crate::record::{Provenance, Record, Schema};

/// Records per chunk sent through the channel.
pub const CHUNK: usize = 256;
/// Chunks buffered between a connector and its consumer.
pub const CHANNEL_CHUNKS: usize = 8;

/// What the mapping asks a connector to read for one stream.
#[derive(Debug, Clone)]
pub struct StreamSource {
    /// The stream's name in the mapping (goes into every record).
    pub stream: Arc<str>,
    /// What to read: a file name, a table or a query, as the connector defines.
    pub from: String,
    /// Columns whose values make the record's stable key (empty: the connector's default).
    pub key: Vec<String>,
    /// Connector-specific settings for this stream (delimiter, encoding, ...).
    pub options: serde_json::Value,
    /// Resume: start after this record (the provenance of the last record
    /// of an acknowledged prefix, from the ledger). The connector skips
    /// every record at or before it, in its own reading order: a CSV line,
    /// a PostgreSQL key, an HL7 file and byte offset.
    pub resume_after: Option<Provenance>,
}

impl StreamSource {
    /// The error for a ledger mark this stream cannot resume after (another
    /// file, table or kind of record): `reads` says what the stream reads,
    /// `why` (when not empty) what is wrong with the mark.
    pub fn foreign_mark(&self, mark: &Provenance, reads: &str, why: &str) -> ConnectorError {
        let why = if why.is_empty() {
            String::new()
        } else {
            format!(" ({why})")
        };
        ConnectorError::Setting {
            what: format!("stream {}", self.stream),
            message: format!(
                "the ledger's resume point ({mark}) does not belong to this stream, which reads {reads}{why}; run with --full to start again"
            ),
        }
    }
}

/// Where a migration runs from: relative paths in settings resolve against `base_dir`.
#[derive(Debug, Clone)]
pub struct ConnectorContext {
    pub base_dir: PathBuf,
}

impl ConnectorContext {
    /// The folder a `source.path` setting names (the migration file's
    /// folder when unset), checked to exist.
    pub fn source_folder(&self, settings: &serde_json::Value) -> Result<PathBuf, ConnectorError> {
        let bad = |message: String| ConnectorError::Setting {
            what: "source.path".into(),
            message,
        };
        let dir = match settings.get("path") {
            None | Some(serde_json::Value::Null) => self.base_dir.clone(),
            Some(serde_json::Value::String(p)) => self.base_dir.join(p),
            Some(_) => return Err(bad("must be a folder path".into())),
        };
        if !dir.is_dir() {
            return Err(bad(format!(
                "{} is not a folder (paths resolve against the migration file's folder)",
                dir.display()
            )));
        }
        Ok(dir)
    }
}

/// A source system: opens named streams of records.
pub trait SourceConnector: Send + Sync {
    /// The columns the stream will yield, read without streaming the data
    /// (a header row, a prepared query). `check` uses it to validate mappings.
    fn schema(&self, source: &StreamSource) -> Result<Arc<Schema>, ConnectorError>;

    /// Starts reading the stream. Records arrive in order through the
    /// returned [`RecordStream`]; reading stops when the stream is dropped.
    fn open(&self, source: &StreamSource) -> Result<RecordStream, ConnectorError>;
}

/// An error that stops a stream (or prevents opening it).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectorError {
    #[error("{what}: {message}")]
    Setting { what: String, message: String },
    #[error("{location}: {message}")]
    Source { location: String, message: String },
}

/// One record the connector could not turn into a [`Record`]; the stream goes on.
#[derive(Debug, Clone)]
pub struct RecordError {
    pub provenance: Provenance,
    /// What is wrong, without the record's data.
    pub reason: String,
    /// What to do about it.
    pub hint: String,
}

/// What a record stream yields.
#[derive(Debug)]
pub enum SourceEvent {
    Record(Record),
    /// A bad record: reject it and go on.
    Rejected(RecordError),
    /// The stream cannot go on (I/O error, lost connection).
    Failed(ConnectorError),
}

/// The consumer's end of an open stream.
pub struct RecordStream {
    rx: mpsc::Receiver<Vec<SourceEvent>>,
}

impl RecordStream {
    /// Runs `produce` on its own thread, feeding a bounded channel.
    /// The producer blocks while the consumer is behind.
    pub fn from_blocking<F>(name: &str, produce: F) -> Result<RecordStream, ConnectorError>
    where
        F: FnOnce(&mut RecordSender) + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(CHANNEL_CHUNKS);
        std::thread::Builder::new()
            .name(format!("source-{name}"))
            .spawn(move || {
                let mut sender = RecordSender {
                    tx,
                    buf: Vec::with_capacity(CHUNK),
                    closed: false,
                };
                produce(&mut sender);
                sender.flush();
            })
            .map_err(|e| ConnectorError::Setting {
                what: format!("stream {name}"),
                message: format!("cannot start a reader thread: {e}"),
            })?;
        Ok(RecordStream { rx })
    }

    /// The next chunk of events, waiting for the producer; `None` at the
    /// end of the stream.
    pub fn blocking_next_chunk(&mut self) -> Option<Vec<SourceEvent>> {
        self.rx.recv().ok()
    }
}

/// The producer's end of a stream, used inside [`RecordStream::from_blocking`].
pub struct RecordSender {
    tx: mpsc::SyncSender<Vec<SourceEvent>>,
    buf: Vec<SourceEvent>,
    closed: bool,
}

impl RecordSender {
    /// Queues an event. Returns false once the consumer has gone away:
    /// the producer should stop reading.
    pub fn send(&mut self, event: SourceEvent) -> bool {
        if self.closed {
            return false;
        }
        self.buf.push(event);
        if self.buf.len() >= CHUNK {
            self.flush();
        }
        !self.closed
    }

    fn flush(&mut self) {
        if self.buf.is_empty() || self.closed {
            return;
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        if self.tx.send(chunk).is_err() {
            self.closed = true;
        }
    }
}
