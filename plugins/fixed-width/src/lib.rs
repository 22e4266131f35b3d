//! The `fixed-width` connector, as a plugin: fhirlift loads this library
//! at run time from its plugins folder (it is not linked into the binary).
//!
//! Each stream reads one text file (`from: patients.txt`, relative to
//! `source.path`) whose columns sit at fixed character positions. The
//! layout is the stream's `columns:` option (or the source's):
//!
//! ```yaml
//! columns:
//!   - { name: mrn, start: 1, width: 8 }     # characters 1..=8
//!   - { name: family, start: 9, width: 15 }
//! ```
//!
//! Trailing spaces are trimmed; an empty field is null. A blank line is
//! skipped; a line shorter than the layout is rejected with its
//! `file:line`, and the rest of the file goes on. The key is the `key:`
//! columns joined with `|` (the line number without one). A resumed
//! stream skips the lines up to the ledger's mark.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;

use fhirlift_core::connector::RecordError;
use fhirlift_core::{
    ConnectorContext, ConnectorError, Provenance, Record, RecordStream, Schema, SourceConnector,
    SourceEvent, StreamSource, Value,
};
use serde_json::Value as Json;

fhirlift_plugin_sdk::export_connector! {
    name: "fixed-width",
    description: "fixed-width text files, one stream per file (plugin example)",
    create: create,
    config_schema: r#"{
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "path": { "type": "string", "description": "the folder holding the files" },
            "columns": { "type": "array", "items": {
                "type": "object",
                "required": ["name", "start", "width"],
                "properties": {
                    "name": { "type": "string" },
                    "start": { "type": "integer", "minimum": 1 },
                    "width": { "type": "integer", "minimum": 1 }
                }
            } }
        }
    }"#,
}

fn create(
    settings: &Json,
    context: &ConnectorContext,
) -> Result<Box<dyn SourceConnector>, ConnectorError> {
    let dir = context.source_folder(settings)?;
    let defaults = match settings.get("columns") {
        None => None,
        Some(c) => Some(Layout::read(c, "source.columns")?),
    };
    Ok(Box::new(FixedWidth { dir, defaults }))
}

/// One column: its name and its characters (0-based start, width).
#[derive(Debug, Clone)]
struct Column {
    name: String,
    start: usize,
    width: usize,
}

#[derive(Debug, Clone)]
struct Layout {
    columns: Vec<Column>,
    /// The characters a line needs: the end of the last column.
    length: usize,
}

impl Layout {
    fn read(v: &Json, what: &str) -> Result<Layout, ConnectorError> {
        let bad = |message: String| ConnectorError::Setting {
            what: what.to_owned(),
            message,
        };
        let items = v
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| bad("must be a list of {name, start, width}".into()))?;
        let mut columns: Vec<Column> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let name = item.get("name").and_then(Json::as_str).unwrap_or("");
            let number = |key: &str| item.get(key).and_then(Json::as_u64).filter(|n| *n >= 1);
            let (Some(start), Some(width)) = (number("start"), number("width")) else {
                return Err(bad(format!(
                    "column {}: `start` (1-based) and `width` must be whole numbers from 1",
                    i + 1
                )));
            };
            if name.is_empty() {
                return Err(bad(format!("column {} has no `name`", i + 1)));
            }
            if columns.iter().any(|c| c.name == name) {
                return Err(bad(format!("column {name:?} appears twice")));
            }
            columns.push(Column {
                name: name.to_owned(),
                start: start as usize - 1,
                width: width as usize,
            });
        }
        let length = columns.iter().map(|c| c.start + c.width).max().unwrap_or(0);
        Ok(Layout { columns, length })
    }

    fn schema(&self) -> Schema {
        Schema::new(self.columns.iter().map(|c| c.name.clone()).collect())
    }
}

struct FixedWidth {
    dir: PathBuf,
    defaults: Option<Layout>,
}

impl FixedWidth {
    fn layout(&self, source: &StreamSource) -> Result<Layout, ConnectorError> {
        match (source.options.get("columns"), &self.defaults) {
            (Some(c), _) => Layout::read(c, &format!("streams.{}.columns", source.stream)),
            (None, Some(d)) => Ok(d.clone()),
            (None, None) => Err(ConnectorError::Setting {
                what: format!("streams.{}", source.stream),
                message: "a fixed-width stream needs `columns: [{name, start, width}, ...]`".into(),
            }),
        }
    }
}

impl SourceConnector for FixedWidth {
    fn schema(&self, source: &StreamSource) -> Result<Arc<Schema>, ConnectorError> {
        Ok(Arc::new(self.layout(source)?.schema()))
    }

    fn open(&self, source: &StreamSource) -> Result<RecordStream, ConnectorError> {
        let layout = self.layout(source)?;
        let schema = Arc::new(layout.schema());
        let key_columns = source
            .key
            .iter()
            .map(|k| {
                schema.index_of(k).ok_or_else(|| ConnectorError::Setting {
                    what: format!("streams.{}.key", source.stream),
                    message: format!("key column {k:?} is not in `columns`"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let resume_after = match &source.resume_after {
            None => 0,
            Some(Provenance::File { file, line }) if **file == *source.from => *line,
            Some(other) => {
                return Err(ConnectorError::Setting {
                    what: format!("stream {}", source.stream),
                    message: format!(
                        "the ledger's resume point ({other}) does not belong to this stream, which reads {}; run with --full to start again",
                        source.from
                    ),
                });
            }
        };
        let path = self.dir.join(&source.from);
        let file = File::open(&path).map_err(|e| ConnectorError::Source {
            location: source.from.clone(),
            message: format!("cannot open {}: {e}", path.display()),
        })?;
        let name: Arc<str> = Arc::from(source.from.as_str());
        let stream = source.stream.clone();
        tracing::info!(stream = %stream, from = %name, resume_after, "reading a fixed-width file");
        RecordStream::from_blocking(&source.stream, move |tx| {
            let mut reader = BufReader::new(file);
            let mut bytes = Vec::new();
            let mut line_no = 0u64;
            loop {
                bytes.clear();
                match reader.read_until(b'\n', &mut bytes) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        tx.send(SourceEvent::Failed(ConnectorError::Source {
                            location: format!("{name}:{}", line_no + 1),
                            message: format!("cannot read: {e}"),
                        }));
                        return;
                    }
                }
                line_no += 1;
                if line_no <= resume_after {
                    continue;
                }
                let provenance = Provenance::File {
                    file: name.clone(),
                    line: line_no,
                };
                let text = match std::str::from_utf8(&bytes) {
                    Ok(t) => t.trim_end_matches(['\n', '\r']),
                    Err(_) => {
                        let reject = RecordError {
                            provenance,
                            reason: "the line is not valid UTF-8".into(),
                            hint: "convert the file to UTF-8 (iconv -t UTF-8)".into(),
                        };
                        if !tx.send(SourceEvent::Rejected(reject)) {
                            return;
                        }
                        continue;
                    }
                };
                if text.trim().is_empty() {
                    continue;
                }
                let event = match cut(text, &layout) {
                    Some(values) => {
                        let key = if key_columns.is_empty() {
                            line_no.to_string()
                        } else {
                            let mut key = String::new();
                            for (n, &i) in key_columns.iter().enumerate() {
                                if n > 0 {
                                    key.push('|');
                                }
                                values[i].write_text(&mut key);
                            }
                            key
                        };
                        SourceEvent::Record(Record {
                            stream: stream.clone(),
                            key,
                            schema: schema.clone(),
                            values,
                            provenance,
                        })
                    }
                    None => SourceEvent::Rejected(RecordError {
                        reason: format!(
                            "the line has {} characters; the layout needs {}",
                            text.chars().count(),
                            layout.length
                        ),
                        hint: format!(
                            "pad {provenance} to {} characters or fix the stream's `columns:`",
                            layout.length
                        ),
                        provenance,
                    }),
                };
                if !tx.send(event) {
                    return;
                }
            }
        })
    }
}

/// The line's fields, trailing spaces trimmed (empty: null); `None` when
/// the line is shorter than the layout.
fn cut(line: &str, layout: &Layout) -> Option<Vec<Value>> {
    // the byte offset of every character, and of the end
    let offsets: Vec<usize> = line
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(line.len()))
        .collect();
    if offsets.len() - 1 < layout.length {
        return None;
    }
    Some(
        layout
            .columns
            .iter()
            .map(|c| {
                let field = line[offsets[c.start]..offsets[c.start + c.width]].trim_end();
                if field.is_empty() {
                    Value::Null
                } else {
                    Value::Text(field.to_owned())
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn layout() -> Layout {
        Layout::read(
            &json!([
                {"name": "id", "start": 1, "width": 3},
                {"name": "name", "start": 4, "width": 5},
            ]),
            "columns",
        )
        .unwrap()
    }

    #[test]
    fn fields_are_cut_by_character_and_trimmed() {
        let l = layout();
        assert_eq!(l.length, 8);
        assert_eq!(
            cut("007Zoë  ", &l).unwrap(),
            vec![Value::Text("007".into()), Value::Text("Zoë".into())]
        );
        assert_eq!(
            cut("   Ann  extra", &l).unwrap(),
            vec![Value::Null, Value::Text("Ann".into())]
        );
        assert!(cut("007Zo", &l).is_none());
    }

    fn read(resume_after: Option<Provenance>) -> Result<Vec<SourceEvent>, ConnectorError> {
        let dir = std::env::temp_dir().join(format!("fhirlift-fw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("p.txt"), "001Ann  \n002Bo   \n\n003\n004Cy   \n").unwrap();
        let connector = create(
            &json!({ "columns": [
                {"name": "id", "start": 1, "width": 3},
                {"name": "name", "start": 4, "width": 5},
            ]}),
            &ConnectorContext { base_dir: dir },
        )?;
        let mut stream = connector.open(&StreamSource {
            stream: Arc::from("s"),
            from: "p.txt".into(),
            key: vec!["id".into()],
            options: json!({}),
            resume_after,
        })?;
        let mut events = Vec::new();
        while let Some(chunk) = stream.blocking_next_chunk() {
            events.extend(chunk);
        }
        Ok(events)
    }

    fn described(events: &[SourceEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                SourceEvent::Record(r) => format!("{} {}", r.key, r.provenance),
                SourceEvent::Rejected(r) => format!("reject {}", r.provenance),
                SourceEvent::Failed(e) => format!("failed {e}"),
            })
            .collect()
    }

    #[test]
    fn records_rejects_and_resume() {
        assert_eq!(
            described(&read(None).unwrap()),
            [
                "001 p.txt:1",
                "002 p.txt:2",
                "reject p.txt:4",
                "004 p.txt:5"
            ]
        );
        let mark = Provenance::File {
            file: Arc::from("p.txt"),
            line: 2,
        };
        assert_eq!(
            described(&read(Some(mark)).unwrap()),
            ["reject p.txt:4", "004 p.txt:5"]
        );
        let other = Provenance::File {
            file: Arc::from("other.txt"),
            line: 2,
        };
        let err = read(Some(other)).err().unwrap().to_string();
        assert!(err.contains("--full"), "{err}");
    }

    #[test]
    fn bad_layouts_are_setting_errors() {
        for bad in [
            json!([]),
            json!([{"name": "a", "start": 0, "width": 1}]),
            json!([{"name": "", "start": 1, "width": 1}]),
            json!([{"name": "a", "start": 1, "width": 1}, {"name": "a", "start": 2, "width": 1}]),
        ] {
            assert!(matches!(
                Layout::read(&bad, "x"),
                Err(ConnectorError::Setting { .. })
            ));
        }
    }
}
