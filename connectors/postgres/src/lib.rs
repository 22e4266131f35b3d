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
//! A row's provenance names it by its key: the value itself for a
//! one-column key (`patients key 42`), a JSON array for more
//! (`visits key [42,"2024-03-01"]`; integers and booleans bare, everything
//! else as text), so that the key can be read back. A resumed stream
//! (`resume_after` from the ledger) reads only the rows after that key,
//! with `WHERE (k1, k2) > ($1::text::type1, $2::text::type2)`: the server's
//! own ordering and collations decide what "after" means. Key columns are
//! expected NOT NULL: rows with a NULL key are not read by a resumed run,
//! and a stream stopped on one cannot resume. A stream without `key:` has
//! no set order and cannot resume.
//!
//! | key | where | default | meaning |
//! |---|---|---|---|
//! | `url_env` | source | `FHIRLIFT_PG_URL` | environment variable holding the connection string |
//! | `url_file` | source | — | file holding the connection string (relative to the migration file) |
//! | `fetch` | source or stream | 1000 | rows per round trip |
//! | `tls_ca_file` | source | — | PEM file of the CA that signed the server's certificate |
//!
//! The connection string (`postgres://user:pass@host:5432/db` or
//! `host=… user=…`) never comes from the command line and is never printed.
//! Its `sslmode` is libpq's (`disable`, `allow`, `prefer` by default,
//! `require`, `verify-ca`, `verify-full`; see [`tls`]); a Unix socket never
//! uses TLS, and a connection off this machine that is not fully verified
//! is warned about.
//!
//! Values keep their types: integers, exact numerics (as digits, never
//! through `f64`), booleans, text, `date` (`YYYY-MM-DD`), `timestamp`
//! (`YYYY-MM-DDTHH:MM:SS`, no offset: give one in the mapping with
//! `fhir_datetime(offset=…)`), `timestamptz` (UTC, ending in `Z`), uuid,
//! json/jsonb, bytea (base64), arrays of these; NULL drops the field. Any
//! other type is a `check` error naming the column: cast it in the query.

mod settings;
mod tls;
mod types;

use std::sync::Arc;

use fhirlift_core::connector::{RecordError, RecordSender};
use fhirlift_core::{
    ConnectorContext, ConnectorError, Provenance, Record, RecordStream, Schema, SourceConnector,
    SourceEvent, StreamSource, Value,
};
use tokio_postgres::types::{Kind, ToSql, Type};
use tokio_postgres::{Client, IsolationLevel, NoTls};

use settings::{
    DEFAULT_FETCH, SOURCE_SETTINGS, STREAM_SETTINGS, SourceSettings, StreamSettings, fetch_size,
    setting,
};
use types::Raw;

fhirlift_core::register_connector! {
    name: "postgres",
    description: "tables and SQL queries of a PostgreSQL database, streamed with a server-side cursor",
    create: create,
    settings: settings::schema,
}

fn create(
    settings: &serde_json::Value,
    context: &ConnectorContext,
) -> Result<Box<dyn SourceConnector>, ConnectorError> {
    let settings: SourceSettings =
        fhirlift_core::settings::read("PostgreSQL", "source", settings, SOURCE_SETTINGS)?;
    let url = settings.connection_string(context)?;
    let (url, sslmode) = tls::take_sslmode(&url); // libpq's six sslmodes; tokio-postgres parses three
    let sslmode = match sslmode.as_deref() {
        None => tls::SslMode::Prefer,
        Some(m) => tls::SslMode::parse(m).ok_or_else(|| {
            setting(
                "source",
                &format!(
                    "sslmode={m} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ),
            )
        })?,
    };
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        // the parser's message never quotes the password
        setting(
            "source",
            &format!("the connection string is not valid: {e}"),
        )
    })?;
    settings.apply_schema(&mut config)?;
    let fetch = fetch_size(settings.fetch, "source.fetch")?.unwrap_or(DEFAULT_FETCH);
    let ca_file = settings.tls_ca_file.map(|f| context.base_dir.join(f));
    // a Unix socket never uses TLS (as libpq)
    let hosts = config.get_hosts().to_vec();
    let over_sockets = !hosts.is_empty()
        && hosts
            .iter()
            .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
    let sslmode = if over_sockets {
        tls::SslMode::Disable
    } else {
        sslmode
    };
    config.ssl_mode(sslmode.negotiation());
    let verify = sslmode.verify(ca_file.is_some());
    if sslmode != tls::SslMode::Disable && verify != tls::Verify::Full {
        let remote: Vec<String> = hosts
            .iter()
            .filter_map(|h| match h {
                tokio_postgres::config::Host::Tcp(name)
                    if !fhirlift_core::transport::is_loopback_host(name) =>
                {
                    Some(name.clone())
                }
                _ => None,
            })
            .collect();
        if !remote.is_empty() {
            tracing::warn!(
                hosts = %remote.join(", "),
                sslmode = ?sslmode,
                "the PostgreSQL server's certificate is not checked (or not its name): use sslmode=verify-full, with tls_ca_file for a private CA"
            );
        }
    }
    let tls = match sslmode {
        tls::SslMode::Disable => None,
        _ => Some(
            tls::MakeRustls::new(ca_file.as_deref(), verify)
                .map_err(|e| setting("source.tls_ca_file", &e))?,
        ),
    };
    Ok(Box::new(PostgresConnector { config, fetch, tls }))
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
    /// The SQL without its `ORDER BY`, and the quoted key columns: what
    /// a resumed stream puts its `WHERE` between.
    body: String,
    order: Vec<String>,
    /// A table's name, or the stream's for a query: what provenance names.
    table: Arc<str>,
    fetch: usize,
    /// A resumed stream: the key values of the last row acknowledged, one
    /// per key column, as text.
    resume_after: Option<Vec<String>>,
}

impl StreamQuery {
    /// The SQL of a resumed stream, given the key columns' types: rows
    /// after the mark in key order, the values as text parameters cast
    /// to the columns' types.
    fn resumed_sql(&self, key_types: &[&Type]) -> Result<String, String> {
        let params = key_types
            .iter()
            .zip(&self.order)
            .enumerate()
            .map(|(i, (ty, column))| {
                resume_param(ty, i + 1).map_err(|why| {
                    format!(
                        "key column {column} ({}): {why}; run with --full to start again",
                        ty.name()
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(format!(
            "{} WHERE ({}) > ({}) ORDER BY {}",
            self.body,
            self.order.join(", "),
            params.join(", "),
            self.order.join(", ")
        ))
    }
}

/// `$n` as a value of type `ty`, from the text of a key.
fn resume_param(ty: &Type, n: usize) -> Result<String, String> {
    match ty.kind() {
        Kind::Array(_) => Err("a stream cannot resume after an array key".into()),
        Kind::Domain(inner) => Ok(format!("({})::{}", resume_param(inner, n)?, type_name(ty))),
        _ => match *ty {
            Type::JSON | Type::JSONB => Err("a stream cannot resume after a json key".into()),
            // keys show bytea as base64
            Type::BYTEA => Ok(format!("decode(${n}::text, 'base64')")),
            _ => Ok(format!("${n}::text::{}", type_name(ty))),
        },
    }
}

/// A type's name as SQL: built-in types bare, others with their schema.
fn type_name(ty: &Type) -> String {
    if ty.schema() == "pg_catalog" {
        ty.name().to_owned()
    } else {
        format!("{}.{}", quote_part(ty.schema()), quote_part(ty.name()))
    }
}

fn quote_part(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A row's key as provenance shows it: the value of a one-column key, a
/// JSON array of the values of a longer one.
fn key_text(values: &[&Value]) -> String {
    if let [one] = values {
        let mut key = String::new();
        one.write_text(&mut key);
        return key;
    }
    let parts: Vec<serde_json::Value> = values
        .iter()
        .map(|v| match v {
            Value::Null => serde_json::Value::Null,
            Value::Integer(i) => serde_json::Value::from(*i),
            Value::Bool(b) => serde_json::Value::Bool(*b),
            other => {
                let mut text = String::new();
                other.write_text(&mut text);
                serde_json::Value::String(text)
            }
        })
        .collect();
    serde_json::Value::Array(parts).to_string()
}

/// The key values of a [`key_text`], one per key column; `Err` says why
/// the text is not a key of `columns` columns.
fn parse_key(text: &str, columns: usize) -> Result<Vec<Option<String>>, String> {
    if columns == 1 {
        return Ok(vec![Some(text.to_owned())]);
    }
    let parts: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|_| {
        format!(
            "the stream's key has {columns} columns and its key is not a list of {columns} values"
        )
    })?;
    if parts.len() != columns {
        return Err(format!(
            "the stream's key has {columns} columns, the resume point's {}",
            parts.len()
        ));
    }
    parts
        .into_iter()
        .map(|p| match p {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::String(s) => Ok(Some(s)),
            serde_json::Value::Number(n) => Ok(Some(n.to_string())),
            serde_json::Value::Bool(b) => Ok(Some(b.to_string())),
            _ => Err("a key value is neither text, a number nor a boolean".to_owned()),
        })
        .collect()
}

/// `"a"."b"` from `a.b`: names are taken exactly as written.
fn quote_name(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

impl PostgresConnector {
    /// A stream's own `fetch`, if it sets one; any other key is refused.
    fn stream_settings(&self, source: &StreamSource) -> Result<Option<usize>, ConnectorError> {
        let scope = format!("stream {}", source.stream);
        let settings: StreamSettings = fhirlift_core::settings::read(
            "PostgreSQL stream",
            &scope,
            &source.options,
            STREAM_SETTINGS,
        )?;
        fetch_size(settings.fetch, &format!("{scope}.fetch"))
    }

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
        let order: Vec<String> = source.key.iter().map(|k| quote_name(k)).collect();
        let sql = if order.is_empty() {
            body.clone()
        } else {
            format!("{body} ORDER BY {}", order.join(", "))
        };
        let table: Arc<str> = if is_query {
            Arc::from(format!("query of stream {}", source.stream).as_str())
        } else {
            Arc::from(from)
        };
        let refused = |message: String| ConnectorError::Setting {
            what: format!("stream {}", source.stream),
            message,
        };
        let resume_after = match &source.resume_after {
            None => None,
            Some(Provenance::Table { table: t, key }) if *t == table => {
                if order.is_empty() {
                    return Err(refused(
                        "the stream has no key: its rows come in no set order, so a stopped run cannot resume it; set `key:` or run with --full to start again".into(),
                    ));
                }
                let values = parse_key(key, order.len()).map_err(|why| {
                    let mark = source.resume_after.as_ref().expect("matched");
                    source.foreign_mark(mark, &table, &why)
                })?;
                let values = values
                    .into_iter()
                    .zip(&source.key)
                    .map(|(v, column)| {
                        v.ok_or_else(|| {
                            refused(format!(
                                "the ledger's resume point has a NULL in key column {column:?}: a stream cannot resume after a NULL key (key columns are expected NOT NULL); run with --full to start again"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Some(values)
            }
            Some(other) => return Err(source.foreign_mark(other, &table, "")),
        };
        Ok(StreamQuery {
            sql,
            body,
            order,
            table,
            resume_after,
            fetch: self.stream_settings(source)?.unwrap_or(self.fetch),
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
        self.stream_settings(source)?;
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

/// Types whose text may be empty: an empty one-column key is one of
/// their values, not necessarily a NULL.
fn text_like(ty: &Type) -> bool {
    match ty.kind() {
        Kind::Domain(inner) => text_like(inner),
        _ => {
            matches!(
                *ty,
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
            ) || ty.name() == "citext"
        }
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
        let (statement, params) = match &query.resume_after {
            None => (statement, Vec::new()),
            Some(values) => {
                let key_types: Vec<&Type> = key_at.iter().map(|&i| &columns[i].1).collect();
                // an empty one-column key is the empty string, or a NULL
                if let ([ty], [value]) = (&key_types[..], &values[..])
                    && value.is_empty()
                    && !text_like(ty)
                {
                    return Err(format!(
                        "the ledger's resume point has an empty key: the row had a NULL key, and a stream cannot resume after a NULL key (key columns are expected NOT NULL); run with --full to start again ({})",
                        ty.name()
                    ));
                }
                let sql = query.resumed_sql(&key_types)?;
                let resumed = runtime
                    .block_on(transaction.prepare(&sql))
                    .map_err(|e| format!("the resumed query does not prepare: {}", describe(&e)))?;
                (resumed, values.iter().map(String::as_str).collect())
            }
        };
        let params: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let portal = runtime
            .block_on(transaction.bind(&statement, &params))
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
        let (key, shown) = if key_at.is_empty() {
            (row_number.to_string(), row_number.to_string())
        } else {
            let mut key = String::new();
            for (n, &i) in key_at.iter().enumerate() {
                if n > 0 {
                    key.push('|');
                }
                values[i].write_text(&mut key);
            }
            let parts: Vec<&Value> = key_at.iter().map(|&i| &values[i]).collect();
            (key, key_text(&parts))
        };
        self.last_key = Some(shown.clone());
        let provenance = Provenance::Table {
            table: self.table.clone(),
            key: shown,
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
            resume_after: None,
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

    #[test]
    fn keys_read_back_to_their_values() {
        let values = [
            Value::Integer(42),
            Value::Text("Smith, \"Jr\" | [x]".into()),
            Value::Decimal("1.50".into()),
            Value::Bool(true),
        ];
        let refs: Vec<&Value> = values.iter().collect();
        let text = key_text(&refs);
        assert_eq!(text, r#"[42,"Smith, \"Jr\" | [x]","1.50",true]"#);
        assert_eq!(
            parse_key(&text, 4).unwrap(),
            [
                Some("42".to_owned()),
                Some("Smith, \"Jr\" | [x]".to_owned()),
                Some("1.50".to_owned()),
                Some("true".to_owned())
            ]
        );
        // one column: the value itself, whatever it holds
        assert_eq!(key_text(&[&values[1]]), "Smith, \"Jr\" | [x]");
        assert_eq!(parse_key("[1,2]", 1).unwrap(), [Some("[1,2]".to_owned())]);
        assert_eq!(
            parse_key(&key_text(&[&Value::Integer(-7), &Value::Null]), 2).unwrap(),
            [Some("-7".to_owned()), None]
        );
        assert!(parse_key("1|2", 2).is_err());
        assert!(parse_key("[1,2,3]", 2).unwrap_err().contains("3"));
    }

    #[test]
    fn a_resumed_stream_reads_after_its_key_in_sql() {
        let c = connector();
        let mut s = source("clinic.visits", &["patient", "day"]);
        s.resume_after = Some(Provenance::Table {
            table: Arc::from("clinic.visits"),
            key: r#"[7,"2024-03-01"]"#.into(),
        });
        let q = c.query(&s).unwrap();
        assert_eq!(
            q.resume_after.as_deref(),
            Some(&["7".to_owned(), "2024-03-01".to_owned()][..])
        );
        assert_eq!(
            q.resumed_sql(&[&Type::INT4, &Type::DATE]).unwrap(),
            r#"SELECT * FROM "clinic"."visits" WHERE ("patient", "day") > ($1::text::int4, $2::text::date) ORDER BY "patient", "day""#
        );
        assert!(
            q.resumed_sql(&[&Type::INT4, &Type::INT4_ARRAY])
                .unwrap_err()
                .contains("array")
        );
        assert_eq!(
            resume_param(&Type::BYTEA, 1).unwrap(),
            "decode($1::text, 'base64')"
        );

        let mut s = source("SELECT a FROM t;", &["a"]);
        s.resume_after = Some(Provenance::Table {
            table: Arc::from("query of stream s"),
            key: "Zoë".into(),
        });
        let q = c.query(&s).unwrap();
        assert_eq!(
            q.resumed_sql(&[&Type::TEXT]).unwrap(),
            r#"SELECT * FROM (SELECT a FROM t) AS fhirlift_rows WHERE ("a") > ($1::text::text) ORDER BY "a""#
        );
    }

    #[test]
    fn resume_points_that_cannot_be_resumed_from_are_refused() {
        let c = connector();
        let refused = |from: &str, key: &[&str], mark: Provenance| {
            let mut s = source(from, key);
            s.resume_after = Some(mark);
            match c.query(&s) {
                Err(e @ ConnectorError::Setting { .. }) => e.to_string(),
                Err(e) => panic!("not a setting error: {e}"),
                Ok(_) => panic!("accepted"),
            }
        };
        let table = |t: &str, k: &str| Provenance::Table {
            table: Arc::from(t),
            key: k.into(),
        };
        let other = refused("patients", &["id"], table("visits", "3"));
        assert!(
            other.contains("stream s")
                && other.contains("visits key 3")
                && other.contains("--full"),
            "{other}"
        );
        let csv = refused(
            "patients",
            &["id"],
            Provenance::File {
                file: Arc::from("p.csv"),
                line: 2,
            },
        );
        assert!(csv.contains("does not belong"), "{csv}");
        let parts = refused("visits", &["a", "b"], table("visits", "[1,2,3]"));
        assert!(parts.contains("does not belong"), "{parts}");
        let null = refused("visits", &["a", "b"], table("visits", "[1,null]"));
        assert!(
            null.contains("NULL") && null.contains("\"b\"") && null.contains("NOT NULL"),
            "{null}"
        );
        let keyless = refused("visits", &[], table("visits", "12"));
        assert!(keyless.contains("no key"), "{keyless}");
    }
}
