//! Records: what a source connector hands to the mapper.
//!
//! A [`Record`] is one source row or message: its stream, a stable source key,
//! typed field values laid out by a shared [`Schema`], and the [`Provenance`]
//! that every error and reject about it will quote.

use std::fmt;
use std::sync::Arc;

use crate::functions::Opaque;

/// One field value, typed as the source knew it.
///
/// Text stays text (ZIP codes keep their leading zeros); a connector converts
/// only what its source typed. `Null` drops the field in the mapped resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Integer(i64),
    /// An exact decimal, kept as its digits (never through `f64`).
    Decimal(String),
    Bool(bool),
    Json(serde_json::Value),
    List(Vec<Value>),
    /// A source-format value kept whole (the hl7v2 connector's parsed
    /// message), read by its connector's expression functions.
    Opaque(Opaque),
}

impl Value {
    /// True for `Null` and for empty text: both drop a FHIR field.
    pub fn is_empty(&self) -> bool {
        match self {
            Value::Null => true,
            Value::Text(s) => s.is_empty(),
            Value::List(items) => items.is_empty(),
            _ => false,
        }
    }

    /// Appends the value as text, the way a `{{ column }}` leaf renders it.
    pub fn write_text(&self, out: &mut String) {
        use std::fmt::Write;
        match self {
            Value::Null => {}
            Value::Text(s) => out.push_str(s),
            Value::Integer(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Decimal(d) => out.push_str(d),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Json(j) => match j {
                serde_json::Value::String(s) => out.push_str(s),
                serde_json::Value::Null => {}
                other => out.push_str(&other.to_string()),
            },
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_text(out);
                }
            }
            Value::Opaque(o) => out.push_str(o.0.text()),
        }
    }

    /// The value as JSON, for typed (`= expr`) leaves.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Text(s) => serde_json::Value::String(s.clone()),
            Value::Integer(i) => serde_json::Value::from(*i),
            Value::Decimal(d) => match d.parse::<f64>() {
                Ok(f) if d.len() <= 15 => serde_json::Value::from(f),
                _ => serde_json::Value::String(d.clone()),
            },
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Json(j) => j.clone(),
            Value::List(items) => items.iter().map(Value::to_json).collect(),
            Value::Opaque(o) => serde_json::Value::String(o.0.text().to_owned()),
        }
    }
}

/// The column names of one stream, shared by all its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    columns: Vec<String>,
}

impl Schema {
    pub fn new(columns: Vec<String>) -> Self {
        Schema { columns }
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The position of a column, by exact name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    pub fn len(&self) -> usize {
        self.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }
}

/// Where a record came from, quoted by every error and reject about it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Provenance {
    /// A line of a file (CSV): the line the record starts on, 1-based.
    File { file: Arc<str>, line: u64 },
    /// A row of a table or query, named by its key.
    Table { table: Arc<str>, key: String },
    /// A message in an archive: the file, its byte offset and control id.
    Message {
        file: Arc<str>,
        offset: u64,
        control_id: String,
    },
}

impl fmt::Display for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Provenance::File { file, line } => write!(f, "{file}:{line}"),
            Provenance::Table { table, key } => write!(f, "{table} key {key}"),
            Provenance::Message {
                file,
                offset,
                control_id,
            } if control_id.is_empty() => write!(f, "{file}@{offset} (message without control id)"),
            Provenance::Message {
                file,
                offset,
                control_id,
            } => write!(f, "{file}@{offset} (message {control_id})"),
        }
    }
}

/// One source row or message.
#[derive(Debug, Clone)]
pub struct Record {
    /// The stream (mapping entry) this record belongs to.
    pub stream: Arc<str>,
    /// A stable key from the source (key columns, or the line when none is set).
    pub key: String,
    /// The column layout of `values`.
    pub schema: Arc<Schema>,
    /// One value per schema column.
    pub values: Vec<Value>,
    pub provenance: Provenance,
}

impl Record {
    /// The value of a column by name, `None` when the schema has no such column.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.schema
            .index_of(column)
            .and_then(|i| self.values.get(i))
    }
}
