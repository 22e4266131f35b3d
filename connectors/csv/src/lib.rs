//! The `csv` source connector: a directory of delimited text files.
//!
//! Each stream reads one file (`from: patients.csv`), streaming it record by
//! record: a 10-million-row file never sits in memory. Values stay text
//! (ZIP codes keep their leading zeros); an empty cell is null and drops
//! its field. Settings, under `source:` or per stream:
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `path` | `.` | the folder holding the files (source only) |
//! | `delimiter` | `,` | one ASCII character (`"\t"` for tab) |
//! | `quote` | `"` | one ASCII character |
//! | `header` | `true` | the first row names the columns |
//! | `columns` | — | column names when `header: false` |
//! | `encoding` | `utf-8` | `utf-8` (a BOM is skipped), `latin1`, `windows-1252`, or any WHATWG label |
//!
//! A row that cannot be read (bad UTF-8, wrong field count) is rejected with
//! its `file:line`; the rest of the file goes on.
//!
//! A resumed stream (`resume_after: file:line` from the ledger) reads from
//! the start of the file but skips, without decoding them, the rows (and
//! rejected rows) that start on or before that line.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::sync::Arc;

use encoding_rs::Encoding;
use fhirlift_core::connector::{RecordError, RecordSender};
use fhirlift_core::{
    ConnectorContext, ConnectorError, Provenance, Record, RecordStream, Schema, SourceConnector,
    SourceEvent, StreamSource, Value,
};

fhirlift_core::register_connector! {
    name: "csv",
    description: "a directory of CSV (or other delimited) files, one stream per file",
    create: create,
    settings: settings_schema,
}

fn create(
    settings: &serde_json::Value,
    context: &ConnectorContext,
) -> Result<Box<dyn SourceConnector>, ConnectorError> {
    let dir = context.source_folder(settings)?;
    let defaults = Options::read(settings, &Options::default(), "source")?;
    Ok(Box::new(CsvConnector { dir, defaults }))
}

fn setting(what: &str, message: &str) -> ConnectorError {
    ConnectorError::Setting {
        what: what.to_owned(),
        message: message.to_owned(),
    }
}

/// The settings a CSV source or stream takes.
const SETTINGS: &[&str] = &["delimiter", "quote", "header", "columns", "encoding"];

/// Reading options, from `source:` and overridden per stream.
#[derive(Debug, Clone)]
struct Options {
    delimiter: u8,
    quote: u8,
    header: bool,
    columns: Option<Vec<String>>,
    encoding: &'static Encoding,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            delimiter: b',',
            quote: b'"',
            header: true,
            columns: None,
            encoding: encoding_rs::UTF_8,
        }
    }
}

fn one_ascii_char(v: &str, what: &str) -> Result<u8, ConnectorError> {
    let s = if v == "\\t" { "\t" } else { v };
    if s.len() == 1 && s.is_ascii() {
        Ok(s.as_bytes()[0])
    } else {
        Err(setting(
            what,
            "must be one ASCII character, e.g. ',' or ';' or '\\t'",
        ))
    }
}

/// The settings as written, under `source:` (where they are the defaults)
/// or a stream (where they override them).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CsvSettings {
    delimiter: Option<String>,
    quote: Option<String>,
    header: Option<bool>,
    columns: Option<Vec<String>>,
    encoding: Option<String>,
    /// `source:` only: the folder (read by the connector context) and the
    /// connector's name.
    #[allow(dead_code)]
    path: Option<serde_json::Value>,
    #[allow(dead_code)]
    connector: Option<serde_json::Value>,
}

/// What `source:` takes besides [`SETTINGS`].
const SOURCE_ONLY: &[&str] = &["connector", "path"];

/// [`SETTINGS`] as JSON Schema (the table of the crate docs), and `path`
/// for `source:`.
fn settings_schema() -> fhirlift_core::settings::SettingsSchema {
    use serde_json::json;
    let text = |what: &str| json!({ "type": "string", "description": what });
    let stream = [
        (
            "delimiter",
            text("one ASCII character (\"\\t\" for tab); default ,"),
        ),
        ("quote", text("one ASCII character; default \"")),
        (
            "header",
            json!({ "type": "boolean", "description": "the first row names the columns; default true" }),
        ),
        (
            "columns",
            json!({ "type": "array", "items": { "type": "string" }, "description": "column names when header: false" }),
        ),
        (
            "encoding",
            text(
                "utf-8 (the default; a BOM is skipped), latin1, windows-1252, or any WHATWG label",
            ),
        ),
    ];
    let path = (
        "path",
        text("the folder holding the files, relative to the migration file; default its folder"),
    );
    let source: Vec<_> = stream.iter().cloned().chain([path]).collect();
    fhirlift_core::settings::SettingsSchema {
        source: fhirlift_core::settings::SettingsSchema::object(&source),
        stream: fhirlift_core::settings::SettingsSchema::object(&stream),
    }
}

impl Options {
    fn read(
        settings: &serde_json::Value,
        base: &Options,
        scope: &str,
    ) -> Result<Options, ConnectorError> {
        let known: Vec<&str> = if scope == "source" {
            SETTINGS.iter().chain(SOURCE_ONLY).copied().collect()
        } else {
            SETTINGS.to_vec()
        };
        let written: CsvSettings = fhirlift_core::settings::read("CSV", scope, settings, &known)?;
        let mut o = base.clone();
        if let Some(v) = &written.delimiter {
            o.delimiter = one_ascii_char(v, &format!("{scope}.delimiter"))?;
        }
        if let Some(v) = &written.quote {
            o.quote = one_ascii_char(v, &format!("{scope}.quote"))?;
        }
        if let Some(header) = written.header {
            o.header = header;
        }
        if let Some(columns) = written.columns {
            o.columns = Some(columns);
        }
        if let Some(label) = &written.encoding {
            let label = if label.eq_ignore_ascii_case("latin1") {
                "iso-8859-1"
            } else {
                label
            };
            let enc = Encoding::for_label(label.as_bytes()).ok_or_else(|| {
                setting(
                    &format!("{scope}.encoding"),
                    &format!(
                        "{label:?} is not an encoding name (utf-8, latin1, windows-1252, ...)"
                    ),
                )
            })?;
            if enc == encoding_rs::UTF_16LE || enc == encoding_rs::UTF_16BE {
                return Err(setting(
                    &format!("{scope}.encoding"),
                    "UTF-16 files are not read; convert them to UTF-8 first (iconv -f UTF-16 -t UTF-8)",
                ));
            }
            o.encoding = enc;
        }
        Ok(o)
    }
}

struct CsvConnector {
    dir: PathBuf,
    defaults: Options,
}

impl CsvConnector {
    fn prepare(&self, source: &StreamSource) -> Result<(PathBuf, Options), ConnectorError> {
        let options = Options::read(
            &source.options,
            &self.defaults,
            &format!("streams.{}", source.stream),
        )?;
        Ok((self.dir.join(&source.from), options))
    }
}

/// The line a resumed stream starts after (0: read everything), checked to
/// belong to this stream's file.
fn resume_line(source: &StreamSource) -> Result<u64, ConnectorError> {
    match &source.resume_after {
        None => Ok(0),
        Some(Provenance::File { file, line }) if **file == *source.from => Ok(*line),
        Some(other) => Err(source.foreign_mark(other, &source.from, "")),
    }
}

fn reader(
    path: &PathBuf,
    o: &Options,
    from: &str,
) -> Result<csv::Reader<BufReader<File>>, ConnectorError> {
    let file = File::open(path).map_err(|e| ConnectorError::Source {
        location: from.to_owned(),
        message: format!("cannot open {}: {e}", path.display()),
    })?;
    Ok(csv::ReaderBuilder::new()
        .delimiter(o.delimiter)
        .quote(o.quote)
        .has_headers(false)
        .flexible(true)
        .from_reader(BufReader::with_capacity(256 * 1024, file)))
}

/// Decodes one field; `None` when it is not valid in the file's encoding.
fn decode<'a>(bytes: &'a [u8], encoding: &'static Encoding) -> Option<std::borrow::Cow<'a, str>> {
    if encoding == encoding_rs::UTF_8 {
        std::str::from_utf8(bytes)
            .ok()
            .map(std::borrow::Cow::Borrowed)
    } else {
        let (text, had_errors) = encoding.decode_without_bom_handling(bytes);
        (!had_errors).then_some(text)
    }
}

/// Reads the header row (or the configured columns) of a file.
fn read_schema(
    rdr: &mut csv::Reader<BufReader<File>>,
    o: &Options,
    from: &str,
) -> Result<(Schema, Option<csv::ByteRecord>), ConnectorError> {
    let source_err = |message: String| ConnectorError::Source {
        location: format!("{from}:1"),
        message,
    };
    let mut first = csv::ByteRecord::new();
    let has_row = rdr
        .read_byte_record(&mut first)
        .map_err(|e| source_err(format!("cannot read: {e}")))?;
    let columns: Vec<String> = if let Some(cols) = &o.columns {
        cols.clone()
    } else if !has_row {
        return Err(source_err("the file is empty: it has no header row".into()));
    } else if o.header {
        let mut names = Vec::with_capacity(first.len());
        for (i, field) in first.iter().enumerate() {
            let field = if i == 0 {
                field.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(field)
            } else {
                field
            };
            let name = decode(field, o.encoding).ok_or_else(|| {
                source_err(format!(
                    "header column {} is not valid {}; set `encoding:`",
                    i + 1,
                    o.encoding.name()
                ))
            })?;
            names.push(name.trim().to_owned());
        }
        names
    } else {
        (1..=first.len()).map(|i| format!("column_{i}")).collect()
    };
    for (i, c) in columns.iter().enumerate() {
        if c.is_empty() {
            return Err(source_err(format!(
                "header column {} has no name; name it or set `columns:`",
                i + 1
            )));
        }
        if columns[..i].contains(c) {
            return Err(source_err(format!(
                "column {c:?} appears twice in the header; rename one"
            )));
        }
    }
    // the first row is data unless it is a header
    let pending = (!o.header && has_row).then_some(first);
    Ok((Schema::new(columns), pending))
}

impl SourceConnector for CsvConnector {
    fn schema(&self, source: &StreamSource) -> Result<Arc<Schema>, ConnectorError> {
        let (path, o) = self.prepare(source)?;
        let mut rdr = reader(&path, &o, &source.from)?;
        let (schema, _) = read_schema(&mut rdr, &o, &source.from)?;
        Ok(Arc::new(schema))
    }

    fn open(&self, source: &StreamSource) -> Result<RecordStream, ConnectorError> {
        let (path, o) = self.prepare(source)?;
        let resume_after = resume_line(source)?;
        let mut rdr = reader(&path, &o, &source.from)?;
        let (schema, pending) = read_schema(&mut rdr, &o, &source.from)?;
        let schema = Arc::new(schema);
        let key_columns: Vec<usize> = source
            .key
            .iter()
            .map(|k| {
                schema.index_of(k).ok_or_else(|| ConnectorError::Source {
                    location: source.from.clone(),
                    message: format!("key column {k:?} is not in the header"),
                })
            })
            .collect::<Result<_, _>>()?;
        let file: Arc<str> = Arc::from(source.from.as_str());
        let stream = source.stream.clone();
        RecordStream::from_blocking(&source.stream, move |tx| {
            let mut reading = Reading {
                tx,
                schema,
                file,
                stream,
                key_columns,
                encoding: o.encoding,
            };
            if let Some(first) = pending
                && resume_after < 1
                && !reading.emit(&first, 1)
            {
                return;
            }
            let mut row = csv::ByteRecord::new();
            loop {
                match rdr.read_byte_record(&mut row) {
                    Ok(true) => {
                        let line = row.position().map(|p| p.line()).unwrap_or(0);
                        // a resumed stream: rows up to the mark were acknowledged
                        if line <= resume_after {
                            continue;
                        }
                        if !reading.emit(&row, line) {
                            return;
                        }
                    }
                    Ok(false) => return,
                    Err(e) => {
                        let line = e.position().map(|p| p.line()).unwrap_or(0);
                        reading.tx.send(SourceEvent::Failed(ConnectorError::Source {
                            location: format!("{}:{line}", reading.file),
                            message: format!("reading stopped: {e}"),
                        }));
                        return;
                    }
                }
            }
        })
    }
}

/// The state of one file being read.
struct Reading<'a> {
    tx: &'a mut RecordSender,
    schema: Arc<Schema>,
    file: Arc<str>,
    stream: Arc<str>,
    key_columns: Vec<usize>,
    encoding: &'static Encoding,
}

impl Reading<'_> {
    /// Sends one row as a record or a reject; false when the consumer is gone.
    fn emit(&mut self, row: &csv::ByteRecord, line: u64) -> bool {
        let provenance = Provenance::File {
            file: self.file.clone(),
            line,
        };
        if row.len() == 1 && row.get(0).is_some_and(<[u8]>::is_empty) {
            return true; // a blank line
        }
        if row.len() != self.schema.len() {
            return self.tx.send(SourceEvent::Rejected(RecordError {
                provenance,
                reason: format!(
                    "the row has {} fields, the header has {}",
                    row.len(),
                    self.schema.len()
                ),
                hint: "check the quoting and the delimiter of this line".into(),
            }));
        }
        let mut values = Vec::with_capacity(row.len());
        for (i, field) in row.iter().enumerate() {
            match decode(field, self.encoding) {
                Some(text) if text.is_empty() => values.push(Value::Null),
                Some(text) => values.push(Value::Text(text.into_owned())),
                None => {
                    return self.tx.send(SourceEvent::Rejected(RecordError {
                        provenance,
                        reason: format!(
                            "column {} is not valid {}",
                            self.schema.columns()[i],
                            self.encoding.name()
                        ),
                        hint: "set `encoding:` on the stream to the file's encoding (e.g. windows-1252)".into(),
                    }));
                }
            }
        }
        let key = if self.key_columns.is_empty() {
            line.to_string()
        } else {
            let mut key = String::new();
            for (n, &i) in self.key_columns.iter().enumerate() {
                if n > 0 {
                    key.push('|');
                }
                values[i].write_text(&mut key);
            }
            key
        };
        self.tx.send(SourceEvent::Record(Record {
            stream: self.stream.clone(),
            key,
            schema: self.schema.clone(),
            values,
            provenance,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_schema_names_the_settings_read() {
        use fhirlift_core::settings::SettingsSchema;
        let schema = settings_schema();
        assert_eq!(SettingsSchema::names(&schema.stream), SETTINGS);
        // `connector` is the migration file's, never handed to the connector
        let source: Vec<&str> = SETTINGS
            .iter()
            .chain(SOURCE_ONLY)
            .copied()
            .filter(|k| *k != "connector")
            .collect();
        assert_eq!(SettingsSchema::names(&schema.source), source);
    }

    fn read_all(dir: &std::path::Path, file: &str, options: serde_json::Value) -> Vec<SourceEvent> {
        read_from(dir, file, options, None).unwrap()
    }

    fn read_from(
        dir: &std::path::Path,
        file: &str,
        options: serde_json::Value,
        resume_after: Option<Provenance>,
    ) -> Result<Vec<SourceEvent>, ConnectorError> {
        let c = create(
            &serde_json::json!({}),
            &ConnectorContext {
                base_dir: dir.to_path_buf(),
            },
        )
        .unwrap();
        let source = StreamSource {
            stream: Arc::from("s"),
            from: file.into(),
            key: vec![],
            options,
            resume_after,
        };
        let mut open = c.open(&source)?;
        let mut out = Vec::new();
        while let Some(chunk) = open.blocking_next_chunk() {
            out.extend(chunk);
        }
        Ok(out)
    }

    fn at(file: &str, line: u64) -> Option<Provenance> {
        Some(Provenance::File {
            file: Arc::from(file),
            line,
        })
    }

    fn lines(events: &[SourceEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                SourceEvent::Record(r) => r.provenance.to_string(),
                SourceEvent::Rejected(e) => format!("rejected {}", e.provenance),
                SourceEvent::Failed(e) => panic!("failed: {e}"),
            })
            .collect()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fhirlift-csv-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn text(ev: &SourceEvent, col: usize) -> String {
        match ev {
            SourceEvent::Record(r) => match &r.values[col] {
                Value::Text(t) => t.clone(),
                Value::Null => "<null>".into(),
                other => format!("{other:?}"),
            },
            other => panic!("not a record: {other:?}"),
        }
    }

    #[test]
    fn bom_quotes_leading_zeros_and_empty_cells() {
        let dir = temp_dir("bom");
        std::fs::write(
            dir.join("a.csv"),
            "\u{feff}id,zip,note\n1,01234,\"a, \"\"quoted\"\"\nline\"\n2,,x\n",
        )
        .unwrap();
        let ev = read_all(&dir, "a.csv", serde_json::json!({}));
        assert_eq!(ev.len(), 2);
        let SourceEvent::Record(r) = &ev[0] else {
            panic!()
        };
        assert_eq!(r.schema.columns(), ["id", "zip", "note"]);
        assert_eq!(text(&ev[0], 1), "01234");
        assert_eq!(text(&ev[0], 2), "a, \"quoted\"\nline");
        assert_eq!(text(&ev[1], 1), "<null>");
        let SourceEvent::Record(r2) = &ev[1] else {
            panic!()
        };
        assert_eq!(r2.provenance.to_string(), "a.csv:4");
    }

    #[test]
    fn a_misspelled_setting_is_an_error_naming_the_nearest() {
        let err = Options::read(
            &serde_json::json!({ "delimeter": ";" }),
            &Options::default(),
            "streams.patients",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("streams.patients.delimeter"), "{err}");
        assert!(err.contains("did you mean `delimiter`?"), "{err}");
        let source = serde_json::json!({ "connector": "csv", "path": ".", "header": false });
        assert!(Options::read(&source, &Options::default(), "source").is_ok());
    }

    #[test]
    fn windows_1252_and_semicolons() {
        let dir = temp_dir("1252");
        std::fs::write(dir.join("b.csv"), b"name;city\nM\xfcller;K\xf6ln\n").unwrap();
        let ev = read_all(
            &dir,
            "b.csv",
            serde_json::json!({"delimiter": ";", "encoding": "windows-1252"}),
        );
        assert_eq!(text(&ev[0], 0), "Müller");
        assert_eq!(text(&ev[0], 1), "Köln");
    }

    #[test]
    fn bad_rows_are_rejected_with_their_line_and_the_rest_goes_on() {
        let dir = temp_dir("bad");
        std::fs::write(dir.join("c.csv"), b"a,b\n1,2\n3\nM\xfcller,4\n5,6\n").unwrap();
        let ev = read_all(&dir, "c.csv", serde_json::json!({}));
        assert_eq!(ev.len(), 4);
        let SourceEvent::Rejected(e) = &ev[1] else {
            panic!("{:?}", ev[1])
        };
        assert_eq!(e.provenance.to_string(), "c.csv:3");
        assert!(e.reason.contains("1 fields, the header has 2"));
        let SourceEvent::Rejected(e) = &ev[2] else {
            panic!()
        };
        assert_eq!(e.provenance.to_string(), "c.csv:4");
        assert!(e.hint.contains("encoding"));
        assert_eq!(text(&ev[3], 0), "5");
    }

    #[test]
    fn duplicate_header_names_are_refused() {
        let dir = temp_dir("dup");
        std::fs::write(dir.join("d.csv"), "a,b,a\n1,2,3\n").unwrap();
        let c = create(
            &serde_json::json!({}),
            &ConnectorContext {
                base_dir: dir.clone(),
            },
        )
        .unwrap();
        let source = StreamSource {
            stream: Arc::from("s"),
            from: "d.csv".into(),
            key: vec![],
            options: serde_json::json!({}),
            resume_after: None,
        };
        let err = c.schema(&source).unwrap_err().to_string();
        assert!(
            err.contains("d.csv:1") && err.contains("\"a\" appears twice"),
            "{err}"
        );
    }

    #[test]
    fn a_resumed_stream_skips_rows_and_rejects_up_to_the_mark() {
        let dir = temp_dir("resume");
        // line 3 is a reject, line 4-5 one quoted record over two lines,
        // line 7 a reject after the mark
        std::fs::write(
            dir.join("r.csv"),
            "a,b\n1,x\n2\n3,\"two\nlines\"\n4,y\n5\n6,z\n",
        )
        .unwrap();
        let all = read_all(&dir, "r.csv", serde_json::json!({}));
        assert_eq!(
            lines(&all),
            [
                "r.csv:2",
                "rejected r.csv:3",
                "r.csv:4",
                "r.csv:6",
                "rejected r.csv:7",
                "r.csv:8"
            ]
        );
        let after_reject = read_from(&dir, "r.csv", serde_json::json!({}), at("r.csv", 3)).unwrap();
        assert_eq!(
            lines(&after_reject),
            ["r.csv:4", "r.csv:6", "rejected r.csv:7", "r.csv:8"]
        );
        let after_multiline =
            read_from(&dir, "r.csv", serde_json::json!({}), at("r.csv", 4)).unwrap();
        assert_eq!(
            lines(&after_multiline),
            ["r.csv:6", "rejected r.csv:7", "r.csv:8"]
        );
        assert_eq!(text(&after_multiline[0], 0), "4");
        let after_last = read_from(&dir, "r.csv", serde_json::json!({}), at("r.csv", 8)).unwrap();
        assert!(after_last.is_empty(), "{after_last:?}");
    }

    #[test]
    fn a_resumed_headerless_stream_skips_its_first_row_too() {
        let dir = temp_dir("resume-noheader");
        std::fs::write(dir.join("n.csv"), "1,x\n2,y\n3,z\n").unwrap();
        let options = serde_json::json!({ "header": false });
        let all = read_from(&dir, "n.csv", options.clone(), at("n.csv", 0)).unwrap();
        assert_eq!(lines(&all), ["n.csv:1", "n.csv:2", "n.csv:3"]);
        let rest = read_from(&dir, "n.csv", options.clone(), at("n.csv", 1)).unwrap();
        assert_eq!(lines(&rest), ["n.csv:2", "n.csv:3"]);
        let none = read_from(&dir, "n.csv", options, at("n.csv", 3)).unwrap();
        assert!(none.is_empty(), "{none:?}");
    }

    #[test]
    fn a_resume_point_of_another_stream_is_refused() {
        let dir = temp_dir("resume-other");
        std::fs::write(dir.join("mine.csv"), "a\n1\n").unwrap();
        let other_file =
            read_from(&dir, "mine.csv", serde_json::json!({}), at("theirs.csv", 2)).unwrap_err();
        let message = other_file.to_string();
        assert!(matches!(other_file, ConnectorError::Setting { .. }));
        assert!(
            message.contains("stream s")
                && message.contains("theirs.csv:2")
                && message.contains("does not belong to this stream")
                && message.contains("--full"),
            "{message}"
        );
        let other_kind = read_from(
            &dir,
            "mine.csv",
            serde_json::json!({}),
            Some(Provenance::Table {
                table: Arc::from("patients"),
                key: "7".into(),
            }),
        )
        .unwrap_err()
        .to_string();
        assert!(
            other_kind.contains("patients key 7") && other_kind.contains("--full"),
            "{other_kind}"
        );
    }
}
