//! The `postgres` source connector: tables and queries of a PostgreSQL
//! database, streamed through a server-side cursor.
//!
//! Each stream reads a table (`from: patients`) or a query (`from:` any
//! text with a space in it, e.g. a `SELECT … JOIN …`). Rows are fetched
//! `fetch` at a time from a portal inside one read-only, repeatable-read
//! transaction, so a 10-million-row table never sits in memory, the first
//! rows flow at once, and the stream sees one consistent snapshot. Rows come
//! in key order (`ORDER BY` the stream's `key:` columns): the order a
//! resumed run continues from.
//!
//! | key | where | default | meaning |
//! |---|---|---|---|
//! | `url_env` | source | `FHIRLIFT_PG_URL` | environment variable holding the connection string |
//! | `url_file` | source | — | file holding the connection string (relative to the migration file) |
//! | `fetch` | source or stream | 1000 | rows per round trip |
//!
//! | `tls_ca_file` | source | — | PEM file of the CA that signed the server's certificate |
//!
//! The connection string (`postgres://user:pass@host:5432/db` or
//! `host=… user=…`) never comes from the command line and is never printed.
//! Its `sslmode` decides TLS: `disable` never, `prefer` (the default) when
//! the server offers it, `require` always; the certificate is verified
//! whenever TLS is used (see [`tls`]).
//!
//! Values keep their types: integers, exact numerics (as digits, never
//! through `f64`), booleans, text, `date` (`YYYY-MM-DD`), `timestamp`
//! (`YYYY-MM-DDTHH:MM:SS`, no offset: give one in the mapping with
//! `fhir_datetime(offset=…)`), `timestamptz` (UTC, ending in `Z`), uuid,
//! json/jsonb, bytea (base64), arrays of these; NULL drops the field. Any
//! other type is a `check` error naming the column: cast it in the query.

mod tls;
mod types;

use std::sync::Arc;

use fhirlift_core::connector::{RecordError, RecordSender};
use fhirlift_core::{
    ConnectorContext, ConnectorError, Provenance, Record, RecordStream, Schema, SourceConnector,
    SourceEvent, StreamSource, Value,
};
use tokio_postgres::config::SslMode;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, IsolationLevel, NoTls};

use types::Raw;

fhirlift_core::register_connector! {
    name: "postgres",
    description: "tables and SQL queries of a PostgreSQL database, streamed with a server-side cursor",
    create: create,
}

const DEFAULT_URL_ENV: &str = "FHIRLIFT_PG_URL";
const DEFAULT_FETCH: usize = 1000;

fn create(
    settings: &serde_json::Value,
    context: &ConnectorContext,
) -> Result<Box<dyn SourceConnector>, ConnectorError> {
    let url = match (settings.get("url_env"), settings.get("url_file")) {
        (Some(_), Some(_)) => {
            return Err(setting("source", "give url_env or url_file, not both"));
        }
        (_, Some(serde_json::Value::String(file))) => {
            let path = context.base_dir.join(file);
            std::fs::read_to_string(&path)
                .map_err(|e| {
                    setting(
                        "source.url_file",
                        &format!("cannot read {}: {e}", path.display()),
                    )
                })?
                .trim()
                .to_owned()
        }
        (_, Some(_)) => return Err(setting("source.url_file", "must be a file path")),
        (env, None) => {
            let var = match env {
                None => DEFAULT_URL_ENV,
                Some(serde_json::Value::String(v)) => v.as_str(),
                Some(_) => {
                    return Err(setting(
                        "source.url_env",
                        "must name an environment variable",
                    ));
                }
            };
            std::env::var(var).map_err(|_| {
                setting(
                    "source.url_env",
                    &format!(
                        "the environment variable {var} is not set: put the connection string (postgres://user@host/db) in it, or name a file with url_file"
                    ),
                )
            })?
        }
    };
    let config: tokio_postgres::Config = url.parse().map_err(|e| {
        // the parser's message never quotes the password
        setting(
            "source",
            &format!("the connection string is not valid: {e}"),
        )
    })?;
    let fetch = fetch_size(settings, "source.fetch")?.unwrap_or(DEFAULT_FETCH);
    let ca_file = match settings.get("tls_ca_file") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(f)) => Some(context.base_dir.join(f)),
        Some(_) => return Err(setting("source.tls_ca_file", "must be a file path")),
    };
    let tls = match config.get_ssl_mode() {
        SslMode::Disable => None,
        _ => Some(
            tls::MakeRustls::new(ca_file.as_deref())
                .map_err(|e| setting("source.tls_ca_file", &e))?,
        ),
    };
    Ok(Box::new(PostgresConnector { config, fetch, tls }))
}

fn setting(what: &str, message: &str) -> ConnectorError {
    ConnectorError::Setting {
        what: what.to_owned(),
        message: message.to_owned(),
    }
}

fn fetch_size(settings: &serde_json::Value, what: &str) -> Result<Option<usize>, ConnectorError> {
    match settings.get("fetch") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=1_000_000).contains(&n) => Ok(Some(n as usize)),
            _ => Err(setting(
                what,
                "must be a number of rows between 1 and 1000000",
            )),
        },
    }
}

/// A PostgreSQL database: one connection per stream.
struct PostgresConnector {
    config: tokio_postgres::Config,
    fetch: usize,
    /// None under `sslmode=disable`.
    tls: Option<tls::MakeRustls>,
}

/// What one stream reads: its SQL, with the key order.
struct StreamQuery {
    sql: String,
    /// A table's name, or the stream's for a query: what provenance names.
    table: Arc<str>,
    fetch: usize,
}

/// `"a"."b"` from `a.b`: names are taken exactly as written.
fn quote_name(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

impl PostgresConnector {
    fn query(&self, source: &StreamSource) -> Result<StreamQuery, ConnectorError> {
        let from = source.from.trim();
        if from.is_empty() {
            return Err(setting(
                &format!("stream {}", source.stream),
                "from: names a table or holds a query",
            ));
        }
        let is_query = from.contains(char::is_whitespace);
        let body = if is_query {
            format!(
                "SELECT * FROM ({}) AS fhirlift_rows",
                from.trim_end_matches(';')
            )
        } else {
            format!("SELECT * FROM {}", quote_name(from))
        };
        let sql = if source.key.is_empty() {
            body
        } else {
            let order: Vec<String> = source.key.iter().map(|k| quote_name(k)).collect();
            format!("{body} ORDER BY {}", order.join(", "))
        };
        let table = if is_query {
            Arc::from(format!("query of stream {}", source.stream).as_str())
        } else {
            Arc::from(from)
        };
        Ok(StreamQuery {
            sql,
            table,
            fetch: fetch_size(&source.options, &format!("stream {}.fetch", source.stream))?
                .unwrap_or(self.fetch),
        })
    }

    /// Runs `work` with a connected client on a runtime of its own thread,
    /// whatever thread the caller is on.
    fn with_client<T: Send + 'static>(
        &self,
        stream: &str,
        work: impl FnOnce(&tokio::runtime::Runtime, &mut Client) -> Result<T, ConnectorError>
        + Send
        + 'static,
    ) -> Result<T, ConnectorError> {
        let config = self.config.clone();
        let tls = self.tls.clone();
        let stream = stream.to_owned();
        let name = stream.clone();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let (runtime, mut client) = connect(&config, tls.as_ref(), &name)?;
                    work(&runtime, &mut client)
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(ConnectorError::Source {
                        location: format!("stream {stream}"),
                        message: "the PostgreSQL reader stopped unexpectedly".into(),
                    })
                })
        })
    }
}

/// Connects on a fresh current-thread runtime; the connection task runs
/// whenever the runtime is driven.
fn connect(
    config: &tokio_postgres::Config,
    tls: Option<&tls::MakeRustls>,
    stream: &str,
) -> Result<(tokio::runtime::Runtime, Client), ConnectorError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ConnectorError::Source {
            location: format!("stream {stream}"),
            message: format!("cannot start a runtime: {e}"),
        })?;
    let failed = |e: tokio_postgres::Error| ConnectorError::Source {
        location: "PostgreSQL".into(),
        message: format!("cannot connect: {}", describe(&e)),
    };
    let client = match tls {
        Some(tls) => {
            let (client, connection) = runtime
                .block_on(config.connect(tls.clone()))
                .map_err(failed)?;
            runtime.spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %describe(&e), "PostgreSQL connection closed");
                }
            });
            client
        }
        None => {
            let (client, connection) = runtime.block_on(config.connect(NoTls)).map_err(failed)?;
            runtime.spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %describe(&e), "PostgreSQL connection closed");
                }
            });
            client
        }
    };
    Ok((runtime, client))
}

/// An error in words: the server's message and detail, never the query's values.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            // data and constraint errors quote the offending value: it may
            // be patient data, and this text reaches logs
            let message = if code.starts_with("22") || code.starts_with("23") {
                redact_quoted(db.message())
            } else {
                db.message().to_owned()
            };
            let mut out = format!("{message} ({code})");
            if let Some(hint) = db.hint() {
                out.push_str("; hint: ");
                out.push_str(hint);
            }
            out
        }
        None => {
            let mut out = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                out = format!("{out}: {s}");
                source = s.source();
            }
            out
        }
    }
}

/// `invalid input syntax for type date: "1980-13-45"` without the value.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    for c in message.chars() {
        if c == '"' {
            if !inside {
                out.push_str("\"…");
            } else {
                out.push('"');
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

impl SourceConnector for PostgresConnector {
    fn schema(&self, source: &StreamSource) -> Result<Arc<Schema>, ConnectorError> {
        let query = self.query(source)?;
        let stream = source.stream.to_string();
        let key = source.key.clone();
        let sql = query.sql.clone();
        self.with_client(&stream.clone(), move |runtime, client| {
            let statement =
                runtime
                    .block_on(client.prepare(&sql))
                    .map_err(|e| ConnectorError::Source {
                        location: "PostgreSQL".into(),
                        message: format!("the query does not prepare: {}", describe(&e)),
                    })?;
            let mut names = Vec::new();
            for column in statement.columns() {
                types::supported(column.type_()).map_err(|why| ConnectorError::Source {
                    location: "PostgreSQL".into(),
                    message: format!("column {:?}: {why}", column.name()),
                })?;
                if names.iter().any(|n| n == column.name()) {
                    return Err(ConnectorError::Source {
                        location: "PostgreSQL".into(),
                        message: format!(
                            "two columns are named {:?}: alias one in the query (AS other_name)",
                            column.name()
                        ),
                    });
                }
                names.push(column.name().to_owned());
            }
            for k in &key {
                if !names.contains(k) {
                    return Err(ConnectorError::Source {
                        location: "PostgreSQL".into(),
                        message: format!(
                            "key column {k:?} is not in the result; columns: {}",
                            names.join(", ")
                        ),
                    });
                }
            }
            Ok(Arc::new(Schema::new(names)))
        })
    }

    fn open(&self, source: &StreamSource) -> Result<RecordStream, ConnectorError> {
        let query = self.query(source)?;
        let config = self.config.clone();
        let tls = self.tls.clone();
        let stream = source.stream.clone();
        let key = source.key.clone();
        RecordStream::from_blocking(&source.stream, move |tx| {
            let mut reading = Reading {
                tx,
                stream: stream.clone(),
                table: query.table.clone(),
                last_key: None,
                delivered: 0,
            };
            if let Err(message) = reading.run(&config, tls.as_ref(), &query, &key) {
                let after = match &reading.last_key {
                    Some(k) => format!(
                        "after key {k} ({} rows delivered before it)",
                        reading.delivered
                    ),
                    None => "before the first row".to_owned(),
                };
                reading.tx.send(SourceEvent::Failed(ConnectorError::Source {
                    location: format!("stream {stream} ({})", query.table),
                    message: format!("reading stopped {after}: {message}"),
                }));
            }
        })
    }
}

/// The state of one stream being read.
struct Reading<'a> {
    tx: &'a mut RecordSender,
    stream: Arc<str>,
    table: Arc<str>,
    /// The key of the last row delivered, for the error that stops a stream.
    last_key: Option<String>,
    delivered: u64,
}

impl Reading<'_> {
    /// Reads every row; `Err` when the stream cannot go on.
    fn run(
        &mut self,
        config: &tokio_postgres::Config,
        tls: Option<&tls::MakeRustls>,
        query: &StreamQuery,
        key: &[String],
    ) -> Result<(), String> {
        let (runtime, mut client) =
            connect(config, tls, &self.stream).map_err(|e| e.to_string())?;
        let transaction = runtime
            .block_on(
                client
                    .build_transaction()
                    .isolation_level(IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start(),
            )
            .map_err(|e| format!("cannot begin a read-only transaction: {}", describe(&e)))?;
        let statement = runtime
            .block_on(transaction.prepare(&query.sql))
            .map_err(|e| format!("the query does not prepare: {}", describe(&e)))?;
        let columns: Vec<(String, Type)> = statement
            .columns()
            .iter()
            .map(|c| (c.name().to_owned(), c.type_().clone()))
            .collect();
        for (name, ty) in &columns {
            types::supported(ty).map_err(|why| format!("column {name:?}: {why}"))?;
        }
        let schema = Arc::new(Schema::new(
            columns.iter().map(|(n, _)| n.clone()).collect(),
        ));
        let key_at: Vec<usize> = key
            .iter()
            .map(|k| {
                schema
                    .index_of(k)
                    .ok_or_else(|| format!("key column {k:?} is not in the result"))
            })
            .collect::<Result<_, _>>()?;
        let portal = runtime
            .block_on(transaction.bind(&statement, &[]))
            .map_err(|e| format!("cannot open a cursor: {}", describe(&e)))?;
        let fetch = i32::try_from(query.fetch).unwrap_or(i32::MAX);
        loop {
            // rows are sent outside the runtime: sending may block on a slow consumer
            let rows = runtime
                .block_on(transaction.query_portal(&portal, fetch))
                .map_err(|e| describe(&e))?;
            for row in &rows {
                self.delivered += 1;
                let row_number = self.delivered;
                let record = self.record(row, &columns, &schema, &key_at, row_number);
                if !self.tx.send(record) {
                    return Ok(());
                }
            }
            if rows.len() < query.fetch {
                break;
            }
        }
        // a read-only transaction: ending it changes nothing
        let _ = runtime.block_on(transaction.rollback());
        Ok(())
    }

    /// One row as a record, or a reject naming its key.
    fn record(
        &mut self,
        row: &tokio_postgres::Row,
        columns: &[(String, Type)],
        schema: &Arc<Schema>,
        key_at: &[usize],
        row_number: u64,
    ) -> SourceEvent {
        let mut values = Vec::with_capacity(columns.len());
        let mut bad = None;
        for (i, (name, ty)) in columns.iter().enumerate() {
            let value = match row.try_get::<_, Option<Raw>>(i) {
                Ok(None) => Value::Null,
                Ok(Some(raw)) => match types::decode(ty, raw.0) {
                    Ok(v) => v,
                    Err(why) => {
                        bad.get_or_insert(format!("column {name:?} ({}): {why}", ty.name()));
                        Value::Null
                    }
                },
                Err(e) => {
                    bad.get_or_insert(format!("column {name:?}: {e}"));
                    Value::Null
                }
            };
            values.push(value);
        }
        let key = if key_at.is_empty() {
            row_number.to_string()
        } else {
            let mut key = String::new();
            for (n, &i) in key_at.iter().enumerate() {
                if n > 0 {
                    key.push('|');
                }
                values[i].write_text(&mut key);
            }
            key
        };
        self.last_key = Some(key.clone());
        let provenance = Provenance::Table {
            table: self.table.clone(),
            key: key.clone(),
        };
        match bad {
            Some(reason) => SourceEvent::Rejected(RecordError {
                provenance,
                reason,
                hint: "cast the column in the query to a type fhirlift reads (e.g. ::text)".into(),
            }),
            None => SourceEvent::Record(Record {
                stream: self.stream.clone(),
                key,
                schema: schema.clone(),
                values,
                provenance,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(from: &str, key: &[&str]) -> StreamSource {
        StreamSource {
            stream: Arc::from("s"),
            from: from.into(),
            key: key.iter().map(|k| k.to_string()).collect(),
            options: serde_json::json!({}),
        }
    }

    fn connector() -> PostgresConnector {
        PostgresConnector {
            config: "host=localhost".parse().unwrap(),
            fetch: 10,
            tls: None,
        }
    }

    #[test]
    fn quoted_values_leave_data_errors() {
        assert_eq!(
            redact_quoted(r#"invalid input syntax for type date: "Müller""#),
            r#"invalid input syntax for type date: "…""#
        );
        assert_eq!(redact_quoted("division by zero"), "division by zero");
    }

    #[test]
    fn tables_are_quoted_and_queries_wrapped_in_key_order() {
        let c = connector();
        let q = c.query(&source("clinic.patients", &["id"])).unwrap();
        assert_eq!(q.sql, r#"SELECT * FROM "clinic"."patients" ORDER BY "id""#);
        assert_eq!(&*q.table, "clinic.patients");
        let q = c
            .query(&source("SELECT a, b FROM t JOIN u USING (a);", &["a", "b"]))
            .unwrap();
        assert_eq!(
            q.sql,
            r#"SELECT * FROM (SELECT a, b FROM t JOIN u USING (a)) AS fhirlift_rows ORDER BY "a", "b""#
        );
        assert_eq!(&*q.table, "query of stream s");
        assert!(c.query(&source("  ", &[])).is_err());
    }
}
